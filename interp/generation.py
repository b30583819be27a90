"""Batched generation on a HookedTransformer, with a KV cache and hooks.

Prompts of different lengths are left-padded and masked; TransformerLens offsets the
rotary positions by the mask, so a padded row generates exactly what it would alone
(tested). A row that emits a stop token leaves the batch (and the KV cache), so a chunk's
later steps only compute the rows still generating. Hooks given in ``fwd_hooks`` are
active for the prompt pass and for every decoding step, and are always removed
afterwards, also when an exception is raised.

``fwd_hooks`` is either a list of ``(hook_name, fn)`` pairs, or a callable
``factory(state) -> list`` called once per batch chunk; ``state`` is a
:class:`GenState` whose ``rows`` are the indices of the chunk's prompts in the full
prompt list and whose ``tokens`` / ``positions`` hold what the model is processing in the
current forward pass (the whole prompt first, then one new token per step). Hooks can
read them at call time to steer per row (an α sweep as one batch) or only at chosen
tokens (separator-conditional steering).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .errors import ConfigError, PromptError

Hook = tuple[str, Callable[..., Any]]
# (logits of the model, logits of the partner model) -> logits to sample from, [b, vocab]
Combine = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# finished rows leave the batch once they are this share of it (their outputs are
# ignored until then)
COMPACT_SHARE = 0.25
ProgressFn = Callable[..., None]


@dataclass
class Generation:
    """One prompt's result. ``output_ids`` excludes the prompt and padding; it ends with
    the EOS/stop token when generation stopped on one (``finished``)."""

    prompt_ids: list[int]
    output_ids: list[int]
    text: str
    finished: bool
    row: int = 0
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class GenState:
    """What hooks may read while a chunk is generated (updated before each forward)."""

    rows: torch.Tensor                  # [b] indices into the full prompt list
    tokens: torch.Tensor | None = None  # [b, pos] tokens of the current forward pass
    positions: torch.Tensor | None = None  # [b, pos] absolute positions (pad-aware)
    step: int = -1                      # -1 for the prompt pass, then 0, 1, ...
    history: torch.Tensor | None = None  # [b, pos_so_far] all tokens so far (incl. pads)


def _hooked(model):
    return getattr(model, "hooked", model)


def _tokenizer(model):
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        tok = getattr(_hooked(model), "tokenizer", None)
    return tok


def encode_prompts(model, prompts: Sequence[str] | Sequence[Sequence[int]],
                   max_prompt_tokens: int | None = None) -> list[list[int]]:
    """Token ids for each prompt (strings via the model's tokenizer, specials added)."""
    if len(prompts) == 0:
        raise PromptError("no prompts given")
    out: list[list[int]] = []
    tok = _tokenizer(model)
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            if not p.strip():
                raise PromptError(f"prompt {i} is empty")
            ids = tok(p, add_special_tokens=True)["input_ids"]
        else:
            ids = [int(t) for t in p]
        if not ids:
            raise PromptError(f"prompt {i} has no tokens")
        if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
            raise PromptError(
                f"prompt {i} has {len(ids)} tokens; the limit is {max_prompt_tokens}")
        out.append(ids)
    return out


def context_size(model) -> int | None:
    """The model's context length in tokens (positions it can embed), if it has one."""
    cfg = getattr(_hooked(model), "cfg", None)
    n = getattr(cfg, "n_ctx", None)
    return int(n) if n else None


def check_tokens(model, seqs: Sequence[Sequence[int]], extra: int = 0,
                 what: str = "prompt") -> None:
    """Raise PromptError (one line) when a token sequence plus ``extra`` more positions
    does not fit the model's context, or holds ids outside its vocabulary; the model
    would otherwise fail deep inside with an IndexError."""
    n_ctx = context_size(model)
    cfg = getattr(_hooked(model), "cfg", None)
    vocab = getattr(cfg, "d_vocab", None)
    for i, ids in enumerate(seqs):
        n = len(ids)
        if n_ctx is not None and n + extra > n_ctx:
            label = f"{what} {i}" if len(seqs) > 1 else what
            if extra:
                raise PromptError(
                    f"{label} has {n} tokens; with {extra + 1} new tokens it needs "
                    f"{n + extra} positions, more than the model's context of {n_ctx}: "
                    "shorten it or ask for fewer new tokens")
            raise PromptError(f"{label} has {n} tokens, more than the model's context of "
                              f"{n_ctx} tokens: shorten it")
        if vocab is not None and ids and (min(ids) < 0 or max(ids) >= vocab):
            bad = next(t for t in ids if t < 0 or t >= vocab)
            raise PromptError(f"{what} {i} holds token id {bad}, outside the model's "
                              f"vocabulary of {vocab} tokens")


def encode_user_prompt(tokenizer, prompt: str, chat: bool = False,
                       max_chars: int | None = None, max_new_tokens: int = 0,
                       n_ctx: int | None = None) -> list[int]:
    """Token ids of a prompt typed by a person, through the tokenizer's chat template
    when ``chat`` (a single user turn plus the generation prompt). Raises PromptError
    when the prompt is empty, longer than ``max_chars`` characters, or leaves no room
    for ``max_new_tokens`` in a context of ``n_ctx`` tokens."""
    if not prompt.strip():
        raise PromptError("The prompt is empty: type something to generate from.")
    if max_chars is not None and len(prompt) > max_chars:
        raise PromptError(f"The prompt has {len(prompt)} characters; this demo accepts at "
                          f"most {max_chars}.")
    if chat:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                             add_generation_prompt=True, tokenize=False)
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    else:
        ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    if n_ctx is not None and len(ids) + max_new_tokens > n_ctx:
        raise PromptError(f"The prompt has {len(ids)} tokens; with {max_new_tokens} new "
                          f"tokens that exceeds the model's context of {n_ctx} tokens.")
    return ids


def left_pad(batch: Sequence[Sequence[int]], pad_id: int,
             device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens, attention_mask)``, both [b, max_len], padded on the left."""
    n = max(len(x) for x in batch)
    toks = torch.full((len(batch), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for i, ids in enumerate(batch):
        toks[i, n - len(ids):] = torch.tensor(ids, dtype=torch.long)
        mask[i, n - len(ids):] = 1
    return toks.to(device), mask.to(device)


def sample_next(logits: torch.Tensor, temperature: float, top_p: float,
                generator: torch.Generator | None) -> torch.Tensor:
    """Greedy when ``temperature == 0``; else temperature + nucleus (top-p) sampling:
    ``p = softmax(logits / temperature)``, then only the smallest set of most probable
    tokens whose mass reaches ``top_p`` is kept (tokens sorted by ``p``; a token is kept
    when the mass of the tokens before it is ``< top_p``, so the top token always is),
    renormalised, and one token drawn from it."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sp, si = probs.sort(dim=-1, descending=True)
        keep = sp.cumsum(-1) - sp < top_p  # always keeps the top token
        sp = sp * keep
        probs = torch.zeros_like(probs).scatter(-1, si, sp)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
    fwd_hooks: Sequence[Hook] | Callable[[GenState], Sequence[Hook]] = (),
    stop_at_eos: bool = True,
    stop_token_ids: Sequence[int] | None = None,
    max_prompt_tokens: int | None = None,
    use_kv_cache: bool = True,
    progress: ProgressFn | None = None,
    first_row: int = 0,
    partner: Any = None,
    combine: Combine | None = None,
) -> list[Generation]:
    """Generate continuations for many prompts in batches (see the module docstring).

    Sampling is seeded per chunk from ``seed``, so a run is reproducible for a given
    batch size. ``first_row``: the index of ``prompts[0]`` in a larger prompt list this
    call is one shard of (chunk seeds, ``GenState.rows`` and ``Generation.row`` count from
    it), so shards cut at multiples of ``batch_size`` generate exactly what one call on
    the whole list does. ``progress(done_prompts, total_prompts)`` is called after each chunk.
    Raises PromptError when a prompt plus ``max_new_tokens`` does not fit the model's
    context (the last new token is never fed back, so ``len(prompt) + max_new_tokens - 1``
    positions are needed), ConfigError for impossible sampling settings.

    ``partner`` (a second model with the same vocabulary, e.g. the base of a fine-tune)
    is stepped on the same tokens with its own KV cache, without ``fwd_hooks``, and the
    next token is drawn from ``combine(logits, partner_logits)`` (both ``[b, vocab]``
    float32, at the last position) instead of ``logits``: logit-diff amplification is
    ``combine = lambda f, b: f + α (f − b)`` (:mod:`interp.amplify`). Rows, seeds and
    stopping are as without a partner, so a ``combine`` that returns ``logits`` unchanged
    generates exactly what the model alone does.
    """
    from .validate import number

    if (partner is None) != (combine is None):
        raise ConfigError("partner and combine go together: give both or neither")
    max_new_tokens = number(max_new_tokens, "max_new_tokens", lo=1, integer=True)
    temperature = number(temperature, "temperature", lo=0)
    top_p = number(top_p, "top_p", lo=0, hi=1, lo_open=True)
    batch_size = number(batch_size, "batch_size", lo=1, integer=True)
    hooked = _hooked(model)
    other = _hooked(partner) if partner is not None else None
    tok = _tokenizer(model)
    ids = encode_prompts(model, prompts, max_prompt_tokens)
    check_tokens(model, ids, max_new_tokens - 1)
    if other is not None:
        check_tokens(partner, ids, max_new_tokens - 1)
        if other.cfg.d_vocab != hooked.cfg.d_vocab:
            raise ConfigError(f"the partner model's vocabulary ({other.cfg.d_vocab}) is not "
                              f"the model's ({hooked.cfg.d_vocab})")
    device = next(hooked.parameters()).device
    pad_id = tok.pad_token_id if tok is not None and tok.pad_token_id is not None else 0
    stops = set(stop_token_ids or [])
    if stop_at_eos and tok is not None and tok.eos_token_id is not None:
        stops.add(int(tok.eos_token_id))
    stop_t = torch.tensor(sorted(stops), device=device, dtype=torch.long)
    results: list[Generation] = []
    total = len(ids)
    for start in range(0, total, batch_size):
        chunk = ids[start:start + batch_size]
        b = len(chunk)
        rows = torch.arange(first_row + start, first_row + start + b, device=device)
        toks, mask = left_pad(chunk, pad_id, device)
        state = GenState(rows=rows)
        hooks = list(fwd_hooks(state) if callable(fwd_hooks) else fwd_hooks)
        gen = torch.Generator(device=device).manual_seed(seed * 100003 + first_row + start)
        out = torch.full((b, max_new_tokens), pad_id, dtype=torch.long, device=device)
        n_out = torch.zeros(b, dtype=torch.long, device=device)
        act = torch.arange(b, device=device)  # chunk rows still generating
        pos0 = (mask.cumsum(-1) - 1).clamp(min=0)
        with _pair_locks(hooked, other), hooked.hooks(fwd_hooks=hooks), \
                contextlib.ExitStack() as stack:
            cache = (init_kv_cache(hooked, b, toks.shape[1] + max_new_tokens, device)
                     if use_kv_cache else None)
            state.tokens, state.positions, state.step, state.history = toks, pos0, -1, toks
            stack.enter_context(fast_rotary(hooked, cache))
            logits = hooked(toks, attention_mask=mask, past_kv_cache=cache)
            pcache = None
            if other is not None:
                pdev = next(other.parameters()).device
                pcache = (init_kv_cache(other, b, toks.shape[1] + max_new_tokens, pdev)
                          if use_kv_cache else None)
                stack.enter_context(fast_rotary(other, pcache))
                plogits = other(toks.to(pdev), attention_mask=mask.to(pdev),
                                past_kv_cache=pcache)
            seq, seq_mask = toks, mask
            next_pos = mask.sum(-1)
            done = torch.zeros(b, dtype=torch.bool, device=device)  # finished, still batched
            for step in range(max_new_tokens):
                last = logits[:, -1, :]
                if other is not None:
                    last = combine(last.float(), plogits[:, -1, :].to(last.device).float())
                nxt = sample_next(last, temperature, top_p, gen)
                live = act[~done]
                out[live, step] = nxt[~done]
                n_out[live] += 1
                if step == max_new_tokens - 1:
                    break
                if len(stop_t):
                    done |= torch.isin(nxt, stop_t)
                    n_done = int(done.sum())
                    if n_done == len(done):
                        break
                    if n_done and n_done >= COMPACT_SHARE * len(done):
                        # finished rows leave the batch (and the KV cache) once they are a
                        # quarter of it: later steps cost what the unfinished rows need,
                        # without copying the cache every time one row stops
                        keep = ~done
                        act, nxt, seq, seq_mask = act[keep], nxt[keep], seq[keep], seq_mask[keep]
                        next_pos, state.rows, done = next_pos[keep], state.rows[keep], done[keep]
                        if cache is not None:
                            _keep_cache_rows(cache, keep)
                        if pcache is not None:
                            _keep_cache_rows(pcache, keep)
                seq = torch.cat([seq, nxt[:, None]], dim=1)
                seq_mask = torch.cat([seq_mask, torch.ones_like(nxt)[:, None]], dim=1)
                state.step, state.history = step, seq
                if use_kv_cache:
                    state.tokens, state.positions = nxt[:, None], next_pos[:, None]
                    logits = hooked(nxt[:, None], attention_mask=torch.ones_like(nxt)[:, None],
                                    past_kv_cache=cache)
                    if other is not None:
                        plogits = other(nxt[:, None].to(pdev),
                                        attention_mask=torch.ones_like(nxt)[:, None].to(pdev),
                                        past_kv_cache=pcache)
                else:
                    state.tokens = seq
                    state.positions = (seq_mask.cumsum(-1) - 1).clamp(min=0)
                    logits = hooked(seq, attention_mask=seq_mask)
                    if other is not None:
                        plogits = other(seq.to(pdev), attention_mask=seq_mask.to(pdev))
                next_pos = next_pos + 1
        for i in range(b):
            o = out[i, : int(n_out[i])].tolist()
            fin = bool(o) and o[-1] in stops
            body = o[:-1] if fin else o
            text = tok.decode(body, skip_special_tokens=False) if tok is not None else ""
            results.append(Generation(prompt_ids=list(chunk[i]), output_ids=o, text=text,
                                      finished=fin, row=first_row + start + i))
        if progress is not None:
            progress(min(start + b, total), total)
    return results


@contextlib.contextmanager
def _pair_locks(hooked, other):
    """With a partner model: hold both models' locks (:func:`interp.serving.model_lock`)
    for the chunk, always in the same order, so two sessions stepping the same two
    shared models in opposite roles cannot wait on each other."""
    if other is None:
        yield
        return
    from .serving import model_lock

    with contextlib.ExitStack() as stack:
        for m in sorted((hooked, other), key=id):
            stack.enter_context(model_lock(m))
        yield


class PreallocatedKVEntry:
    """One layer's KV-cache entry with room for the whole generation.

    Same interface as TransformerLens' ``TransformerLensKeyValueCacheEntry`` (``past_keys``,
    ``past_values``, ``frozen``, ``append``), but ``append`` writes the new keys and values
    into a buffer allocated once instead of concatenating: the TransformerLens entry
    copies the whole cache at every decoding step, a cost that grows with the batch."""

    def __init__(self, like: torch.Tensor, capacity: int):
        b, _, h, d = like.shape
        self._k = like.new_empty((b, capacity, h, d))
        self._v = like.new_empty((b, capacity, h, d))
        self._n = 0
        self.frozen = False
        # keys with the rotary embedding applied, for positions < _n_rot (see fast_rotary)
        self._rk: torch.Tensor | None = None
        self._n_rot = 0
        self.last_keys: torch.Tensor | None = None

    @property
    def past_keys(self) -> torch.Tensor:
        return self._k[:, : self._n]

    @property
    def past_values(self) -> torch.Tensor:
        return self._v[:, : self._n]

    def append(self, new_keys: torch.Tensor, new_values: torch.Tensor):
        n, m = self._n, new_keys.shape[1]
        if n + m > self._k.shape[1]:
            raise RuntimeError("KV cache capacity exceeded")
        if new_keys.dtype != self._k.dtype:
            self._k, self._v = self._k.to(new_keys.dtype), self._v.to(new_keys.dtype)
        self._k[:, n: n + m] = new_keys
        self._v[:, n: n + m] = new_values
        if not self.frozen:
            self._n = n + m
        self.last_keys = self._k[:, : n + m]
        return self.last_keys, self._v[:, : n + m]

    def rotated_keys(self, keys: torch.Tensor, rotate: Callable[..., torch.Tensor],
                     attention_mask: torch.Tensor) -> torch.Tensor:
        """``rotate(keys, 0, attention_mask)`` for the keys :meth:`append` returned,
        rotating only the positions not rotated at an earlier step (a key's rotary
        angle depends on its own position only, so the result is the same tensor)."""
        total = keys.shape[1]
        if self._rk is None or self._rk.dtype != keys.dtype:
            self._rk, self._n_rot = self._k.new_empty(self._k.shape, dtype=keys.dtype), 0
        start = min(self._n_rot, total)
        self._rk[:, start:total] = rotate(keys[:, start:], start, attention_mask)
        if not self.frozen:
            self._n_rot = total
        return self._rk[:, :total]

    def keep_rows(self, keep: torch.Tensor) -> None:
        """Keep the rows where ``keep`` is True (copies only the filled positions)."""
        def rows(buf: torch.Tensor, n: int) -> torch.Tensor:
            out = buf.new_empty((int(keep.sum()), *buf.shape[1:]))
            out[:, :n] = buf[keep, :n]
            return out

        self._k, self._v = rows(self._k, self._n), rows(self._v, self._n)
        if self._rk is not None:
            self._rk = rows(self._rk, self._n_rot)
        self.last_keys = None


@contextlib.contextmanager
def fast_rotary(hooked, cache):
    """While generating with a :func:`init_kv_cache` cache: TransformerLens caches keys
    before the rotary embedding and rotates the *whole* key cache again at every step;
    this rotates each key once (per-instance override of ``attn.apply_rotary``, removed
    on exit; other calls go to the original method)."""
    cfg = hooked.cfg
    if (cfg.positional_embedding_type != "rotary" or getattr(cfg, "use_dynamic_ntk_rope", False)
            or cache is None):
        yield
        return
    patched = []
    try:
        for blk, entry in zip(hooked.blocks, cache.entries):
            attn = blk.attn
            if not isinstance(entry, PreallocatedKVEntry) or "apply_rotary" in vars(attn):
                continue
            orig = attn.apply_rotary

            def rotary(x, past_kv_pos_offset=0, attention_mask=None, _o=orig, _e=entry):
                if x is _e.last_keys and past_kv_pos_offset == 0 and attention_mask is not None:
                    return _e.rotated_keys(x, _o, attention_mask)
                return _o(x, past_kv_pos_offset, attention_mask)

            attn.apply_rotary = rotary
            patched.append(attn)
        yield
    finally:
        for attn in patched:
            del attn.apply_rotary


def init_kv_cache(hooked, batch_size: int, capacity: int, device):
    """A TransformerLens KV cache whose entries are :class:`PreallocatedKVEntry`."""
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    cache = TransformerLensKeyValueCache.init_cache(hooked.cfg, device, batch_size)
    cache.entries = [PreallocatedKVEntry(e.past_keys, capacity) for e in cache.entries]
    return cache


def _keep_cache_rows(cache, keep: torch.Tensor) -> None:
    """Drop the rows of an :func:`init_kv_cache` cache where ``keep`` is False."""
    for e in cache.entries:
        e.keep_rows(keep.to(e.past_keys.device))
    m = cache.previous_attention_mask
    cache.previous_attention_mask = m[keep.to(m.device)]


# ------------------------------------------------------------------ think spans
@dataclass
class ThinkSpan:
    """Where the thinking is in a continuation. Counts are in tokens of ``output_ids``.

    ``opened``: a think-open marker was seen (or the prompt already ended inside one);
    ``closed``: the close marker was generated; ``n_think_tokens``: tokens strictly
    between the markers (to the end of the output when never closed).
    """

    opened: bool
    closed: bool
    start: int
    end: int
    n_think_tokens: int


def think_span_ids(output_ids: Sequence[int], open_id: int | None, close_id: int,
                   starts_open: bool = False) -> ThinkSpan:
    """Locate the think span in token ids (``starts_open`` when the prompt ends with
    the open marker, as in the organisms' think format)."""
    ids = list(output_ids)
    if starts_open:
        start = 0
    elif open_id is not None and open_id in ids:
        start = ids.index(open_id) + 1
    else:
        return ThinkSpan(False, False, 0, 0, 0)
    try:
        end = ids.index(close_id, start)
        closed = True
    except ValueError:
        end, closed = len(ids), False
    return ThinkSpan(True, closed, start, end, end - start)


def parse_think_text(text: str, open_marker: str = "<think>", close_marker: str = "</think>",
                     starts_open: bool = False) -> dict[str, Any]:
    """Split a decoded continuation into thinking and answer text (marker-agnostic)."""
    if starts_open:
        head, rest = "", text
    else:
        m = re.search(re.escape(open_marker), text)
        if not m:
            return {"opened": False, "closed": False, "thinking": "", "answer": text}
        head, rest = text[: m.start()], text[m.end():]
    m2 = re.search(re.escape(close_marker), rest)
    if not m2:
        return {"opened": True, "closed": False, "thinking": rest, "answer": ""}
    return {"opened": True, "closed": True, "thinking": rest[: m2.start()],
            "answer": rest[m2.end():], "before": head}
