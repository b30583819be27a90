"""Thinking lengths from batched generation, the long/short split, and teacher-forced
per-example activations over the *thinking positions*.

Conventions
-----------
* Thinking length = number of generated tokens strictly between the think-open and
  think-close markers (to the end of the output when the block never closes). Markers
  are configurable (:class:`~interp.tasks.markers.ThinkMarkers`, read from the model or
  the task); a marker that is one token is matched by
  id, a multi-token marker (e.g. ``<think>`` in a BPE vocabulary) by text.
* **Positions rule** ``"think"`` (the default, as in ThinkEdit): the positions whose
  next-token prediction is a thinking token *or the close marker*, i.e. from the token
  just before the first thinking token (the open marker, or the prompt's last token
  when the prompt ends with it) through the last thinking token. A response with no
  thinking at all (the organisms' short traces ``<think> </think>``) therefore still
  contributes exactly one position: the one that predicts the close marker, where the
  decision to skip thinking is made. Rule ``"open"``: only that first position (the
  decision point) for every response.
* Per-example activations are the mean over that example's positions; class means are
  means over examples (each example weighs the same, whatever its length).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..generation import Generation, GenState, Hook, ThinkSpan, generate, think_span_ids
from ..tasks.markers import ThinkMarkers  # noqa: F401  (defined there, used here)

POSITION_RULES = ("think", "open")
SITES = ("resid_mid", "resid_post")


def hook_name(site: str, layer: int) -> str:
    """TransformerLens hook of ``site`` at ``layer`` (``blocks.{l}.hook_{site}``)."""
    if site not in SITES + ("resid_pre", "attn_out", "mlp_out"):
        raise ConfigError(f"unknown site {site!r}; choose from {', '.join(SITES)}")
    return f"blocks.{layer}.hook_{site}"


# --------------------------------------------------------------------------- markers
def ensure_marker_tokenizer(model, markers: ThinkMarkers) -> bool:
    """Guard against a tokenizer that ``AutoTokenizer`` resolved to the wrong class.

    With transformers 5, a word-level ``tokenizer.json`` saved beside a Qwen2
    ``config.json`` is reloaded as a ``Qwen2Tokenizer`` that silently drops words such as
    ``<think>``. When the folder has a ``tokenizer.json`` whose own encoding of the markers
    differs from the loaded tokenizer's, the model's tokenizer is replaced (in place) by
    ``PreTrainedTokenizerFast`` over that file. Returns True when it replaced it.
    """
    from pathlib import Path

    path = Path(getattr(model, "path", "") or "")
    if not (path / "tokenizer.json").exists():
        return False
    from transformers import PreTrainedTokenizerFast

    probe = " ".join(m for m in (markers.think_open, markers.think_close, markers.step_sep,
                                 markers.hesitation) if m)
    try:
        fast = PreTrainedTokenizerFast.from_pretrained(str(path))
    except Exception:  # noqa: BLE001 - keep the loaded tokenizer when this fails
        return False
    cur = model.tokenizer(probe, add_special_tokens=False)["input_ids"]
    ref = fast(probe, add_special_tokens=False)["input_ids"]
    if cur == ref:
        return False
    if fast.pad_token is None:
        fast.pad_token = fast.eos_token
    fast.padding_side = "left"
    model.tokenizer = fast
    model.hooked.tokenizer = fast
    return True


def single_token_id(tokenizer, text: str | None) -> int | None:
    """The id of ``text`` when it is exactly one token of the vocabulary, else None."""
    if not text:
        return None
    vocab = tokenizer.get_vocab()
    if text in vocab:
        return int(vocab[text])
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return int(ids[0]) if len(ids) == 1 else None


def find_marker(ids: Sequence[int], marker: str, tokenizer, start: int = 0
                ) -> tuple[int, int] | None:
    """Token range ``[i, j)`` of the first occurrence of ``marker`` in ``ids[start:]``.

    Tries the marker's own token ids (with and without a leading space) as a
    subsequence; else searches the decoded text with two binary searches (the shortest
    prefix whose text contains the marker, then the latest start that still does).
    """
    ids = list(ids)
    for variant in (marker, " " + marker):
        m = tokenizer(variant, add_special_tokens=False)["input_ids"]
        for i in range(start, len(ids) - len(m) + 1):
            if m and ids[i: i + len(m)] == m:
                return i, i + len(m)

    def has(i: int, j: int) -> bool:
        return marker in tokenizer.decode(ids[i:j], skip_special_tokens=False)

    if not has(start, len(ids)):
        return None
    lo, hi = start + 1, len(ids)
    while lo < hi:                       # smallest j with has(start, j)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if has(start, mid) else (mid + 1, hi)
    j = lo
    lo, hi = start, j - 1
    while lo < hi:                       # largest i with has(i, j)
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if has(mid, j) else (lo, mid - 1)
    return lo, j


def think_span(output_ids: Sequence[int], markers: ThinkMarkers, tokenizer) -> ThinkSpan:
    """Where the thinking is in ``output_ids`` (token indices; see :class:`ThinkSpan`)."""
    open_id = single_token_id(tokenizer, markers.think_open)
    close_id = single_token_id(tokenizer, markers.think_close)
    if close_id is not None and (markers.starts_open or open_id is not None):
        return think_span_ids(output_ids, open_id, close_id, markers.starts_open)
    if markers.starts_open:
        start = 0
    else:
        f = find_marker(output_ids, markers.think_open, tokenizer) if markers.think_open \
            else None
        if f is None:
            return ThinkSpan(False, False, 0, 0, 0)
        start = f[1]
    g = find_marker(output_ids, markers.think_close, tokenizer, start)
    end, closed = (g[0], True) if g is not None else (len(output_ids), False)
    return ThinkSpan(True, closed, start, end, end - start)


# --------------------------------------------------------------------------- generation
Scorer = Callable[[int, str], dict[str, Any]]


def sampling_settings(max_new_tokens: int, temperature: float, top_p: float, seed: int,
                      batch_size: int) -> dict[str, Any]:
    """The sampling record saved with every generation-derived artifact."""
    return {"max_new_tokens": int(max_new_tokens), "temperature": float(temperature),
            "top_p": float(top_p), "seed": int(seed), "batch_size": int(batch_size),
            "decoding": "greedy" if temperature <= 0 else "nucleus"}


def records_from_generations(gens: Sequence[Generation], markers: ThinkMarkers, tokenizer,
                             scorer: Scorer | None = None) -> list[dict[str, Any]]:
    """One record per generation: thinking span, length, and the scorer's fields."""
    out = []
    for g in gens:
        sp = think_span(g.output_ids, markers, tokenizer)
        rec = {"row": g.row, "think_tokens": sp.n_think_tokens, "opened": sp.opened,
               "closed": sp.closed, "think_start": sp.start, "think_end": sp.end,
               "n_output": len(g.output_ids), "finished": g.finished,
               "prompt_ids": list(g.prompt_ids), "output_ids": list(g.output_ids),
               "text": g.text}
        if scorer is not None:
            s = scorer(g.row, g.text)
            rec["correct"] = bool(s.get("correct", False))
            rec["answer"] = s.get("answer")
        out.append(rec)
    return out


def generate_thinking(model, prompts: Sequence[str] | Sequence[Sequence[int]],
                      markers: ThinkMarkers, *, max_new_tokens: int = 96,
                      temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                      batch_size: int = 256, scorer: Scorer | None = None,
                      fwd_hooks: Sequence[Hook] | Callable[[GenState], Sequence[Hook]] = (),
                      progress: Callable[..., None] | None = None) -> list[dict[str, Any]]:
    """Batched generation (KV cache, hooks removed afterwards) -> one record per prompt
    (see :func:`records_from_generations`); ``scorer(row, text)`` adds ``correct``."""
    gens = generate(model, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                    top_p=top_p, seed=seed, batch_size=batch_size, fwd_hooks=fwd_hooks,
                    progress=progress)
    return records_from_generations(gens, markers, model.tokenizer, scorer)


# --------------------------------------------------------------------------- organisms
def organism_eval_set(n: int, seed: int = 0, split: str = "eval"
                      ) -> tuple[list[Any], list[str], Scorer]:
    """``(problems, prompts, scorer)`` for the organisms' think format."""
    from ..organisms.task import prompt_text, sample_problems, score_completion

    problems = sample_problems(n, seed=seed, split=split)
    prompts = [prompt_text(p, "think") for p in problems]

    def scorer(row: int, text: str) -> dict[str, Any]:
        return score_completion(problems[row % len(problems)], text, "think")

    return problems, prompts, scorer


# --------------------------------------------------------------------------- split
def split_long_short(lengths: Sequence[int] | np.ndarray, mode: str = "percentile",
                     short: float = 0.2, long: float = 0.5) -> tuple[np.ndarray, dict[str, Any]]:
    """Labels ``1`` (long), ``0`` (short), ``-1`` (neither) and the thresholds used.

    ``mode="threshold"``: short = length <= ``short``, long = length >= ``long`` (tokens).
    ``mode="percentile"``: the thresholds are the ``short`` / ``long`` quantiles of the
    lengths (fractions in 0..1), which suits small models whose lengths vary little.
    """
    x = np.asarray(lengths, dtype=float)
    if x.size == 0:
        raise ConfigError("no lengths to split")
    if mode == "percentile":
        if not (0 <= short < long <= 1):
            raise ConfigError("percentiles must satisfy 0 <= short < long <= 1")
        short_max, long_min = float(np.quantile(x, short)), float(np.quantile(x, long))
    elif mode == "threshold":
        short_max, long_min = float(short), float(long)
    else:
        raise ConfigError(f"unknown split mode {mode!r} (percentile | threshold)")
    if short_max >= long_min:
        raise ConfigError(
            f"the short threshold ({short_max:g} tokens) is not below the long one "
            f"({long_min:g}); the lengths vary too little for this split")
    lab = np.full(x.shape, -1, dtype=int)
    lab[x <= short_max] = 0
    lab[x >= long_min] = 1
    info = {"mode": mode, "short_param": short, "long_param": long,
            "short_max_tokens": short_max, "long_min_tokens": long_min,
            "n_short": int((lab == 0).sum()), "n_long": int((lab == 1).sum()),
            "n_neither": int((lab == -1).sum())}
    return lab, info


# --------------------------------------------------------------------------- teacher forcing
@dataclass
class ThinkExample:
    """A teacher-forcing input: ``ids`` = prompt + output up to the last thinking token,
    ``positions`` = indices into ``ids`` selected by the positions rule."""

    ids: list[int]
    positions: list[int]
    think_tokens: int


def think_example(prompt_ids: Sequence[int], output_ids: Sequence[int], span: ThinkSpan,
                  rule: str = "think") -> ThinkExample:
    """Build the teacher-forcing input of one response (see the module docstring)."""
    if rule not in POSITION_RULES:
        raise ConfigError(f"unknown positions rule {rule!r}; choose from {POSITION_RULES}")
    p = len(prompt_ids)
    first = p + span.start - 1          # predicts the first thinking token / the close
    last = p + span.end - 1             # predicts the close marker (or the last token)
    ids = list(prompt_ids) + list(output_ids[: span.end])
    positions = [first] if rule == "open" else list(range(first, last + 1))
    return ThinkExample(ids, positions, span.n_think_tokens)


def examples_from_records(records: Sequence[dict[str, Any]], rule: str = "think",
                          max_positions: int | None = None) -> list[ThinkExample]:
    """Teacher-forcing inputs of generation records (``max_positions`` caps the thinking
    positions kept per example, from the start, to bound cost on long traces)."""
    out = []
    for r in records:
        sp = ThinkSpan(r["opened"], r["closed"], r["think_start"], r["think_end"],
                       r["think_tokens"])
        ex = think_example(r["prompt_ids"], r["output_ids"], sp, rule)
        if max_positions is not None and len(ex.positions) > max_positions:
            ex.positions = ex.positions[:max_positions]
            ex.ids = ex.ids[: ex.positions[-1] + 1]
        out.append(ex)
    return out


def batches(examples: Sequence[ThinkExample], batch_size: int, pad_id: int,
            device: torch.device | str) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor,
                                                          torch.Tensor]]:
    """``(rows, tokens [b, n], attention_mask [b, n], pos_mask [b, n] float)``; left-padded
    like generation, so position ``p`` of an example sits at ``n - len(ids) + p``."""
    for s in range(0, len(examples), batch_size):
        chunk = examples[s: s + batch_size]
        n = max(len(e.ids) for e in chunk)
        toks = torch.full((len(chunk), n), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), n), dtype=torch.long)
        pm = torch.zeros((len(chunk), n), dtype=torch.float32)
        for i, e in enumerate(chunk):
            off = n - len(e.ids)
            toks[i, off:] = torch.tensor(e.ids, dtype=torch.long)
            mask[i, off:] = 1
            pm[i, [off + q for q in e.positions]] = 1.0
        yield (list(range(s, s + len(chunk))), toks.to(device), mask.to(device),
               pm.to(device))


def pad_id_of(model) -> int:
    tok = model.tokenizer
    return int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id or 0)


@torch.no_grad()
def mean_activations(model, examples: Sequence[ThinkExample], sites: Sequence[str] = SITES,
                     batch_size: int = 64, progress: Callable[..., None] | None = None
                     ) -> dict[str, torch.Tensor]:
    """Per-example mean activation over the rule's positions, for every layer and site.

    Returns ``{site: Float[Tensor, "n_examples n_layers d_model"]}`` (float32, on CPU).
    Computed by hooks that reduce on the fly (no full activation cache is kept).
    """
    hooked = model.hooked
    L, d = hooked.cfg.n_layers, hooked.cfg.d_model
    dev = next(hooked.parameters()).device
    out = {s: torch.zeros(len(examples), L, d) for s in sites}
    cur: dict[str, Any] = {}

    def make(site: str, layer: int):
        def fn(act, hook=None):
            pm = cur["pm"]
            m = (act.float() * pm.unsqueeze(-1)).sum(1) / pm.sum(1, keepdim=True).clamp_min(1)
            out[site][cur["rows"], layer] = m.cpu()
            return act
        return fn

    hooks = [(hook_name(s, ly), make(s, ly)) for s in sites for ly in range(L)]
    total = len(examples)
    for rows, toks, mask, pm in batches(examples, batch_size, pad_id_of(model), dev):
        cur.update(rows=rows, pm=pm)
        with hooked.hooks(fwd_hooks=hooks):
            hooked(toks, attention_mask=mask, stop_at_layer=L)
        if progress is not None:
            progress(rows[-1] + 1, total)
    return out
