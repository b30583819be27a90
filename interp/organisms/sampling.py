"""Small, dependency-free completion loops for the organisms (greedy or sampled).

Prompts are grouped by length (all prompts of one organism format have the same length),
so batches need no padding.
``complete`` takes a transformers causal LM or a HookedTransformer / ``LoadedModel``
(both decode with a KV cache).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch

from .task import TOKEN_ID

ProgressFn = Callable[..., None]


def _is_hooked(m) -> bool:
    return hasattr(m, "run_with_hooks")


@torch.no_grad()
def complete(model, prompts: Sequence[Sequence[int]], max_new_tokens: int = 80, *,
             temperature: float = 0.0, generator: torch.Generator | None = None,
             batch_size: int = 256, progress: ProgressFn | None = None) -> list[list[int]]:
    """Continue each prompt (token ids, ``<bos>`` included) until ``<eos>`` or the limit.

    Returns the new token ids per prompt (``<eos>`` included when reached). Prompts of
    different lengths are grouped by length. ``temperature=0`` is greedy.
    """
    m = getattr(model, "hooked", model)
    dev = next(m.parameters()).device
    eos, pad = TOKEN_ID["<eos>"], TOKEN_ID["<pad>"]
    out: list[list[int] | None] = [None] * len(prompts)
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(len(p), []).append(i)
    done_n = 0
    for _, idx in sorted(groups.items()):
        for s in range(0, len(idx), batch_size):
            rows = idx[s: s + batch_size]
            x = torch.tensor([list(prompts[i]) for i in rows], dtype=torch.long, device=dev)
            new = _run(m, x, max_new_tokens, temperature, generator, eos, pad)
            for r, i in enumerate(rows):
                seq = new[r].tolist()
                if eos in seq:
                    seq = seq[: seq.index(eos) + 1]
                else:
                    seq = [t for t in seq if t != pad]
                out[i] = seq
            done_n += len(rows)
            if progress is not None:
                progress(done_n, len(prompts))
    return [o or [] for o in out]


def _pick(logits: torch.Tensor, temperature: float, generator) -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, -1)
    return torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0].to(logits.device)


def _run(m, x: torch.Tensor, max_new: int, temperature: float, generator, eos: int,
         pad: int) -> torch.Tensor:
    b = x.shape[0]
    done = torch.zeros(b, dtype=torch.bool, device=x.device)
    toks: list[torch.Tensor] = []
    if _is_hooked(m):
        from ..generation import fast_rotary, init_kv_cache

        cache = init_kv_cache(m, b, x.shape[1] + max_new, x.device)
        context = fast_rotary(m, cache)

        def last_logits(ids: torch.Tensor) -> torch.Tensor:
            return m(ids, attention_mask=torch.ones_like(ids), past_kv_cache=cache)[:, -1]
    else:
        context, past = contextlib.nullcontext(), None

        def last_logits(ids: torch.Tensor) -> torch.Tensor:
            nonlocal past
            o = m(input_ids=ids, past_key_values=past, use_cache=True)
            past = o.past_key_values
            return o.logits[:, -1]
    with context:
        logits = last_logits(x)
        for _ in range(max_new):
            nxt = _pick(logits, temperature, generator)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            toks.append(nxt)
            done |= nxt == eos
            if bool(done.all()):
                break
            logits = last_logits(nxt[:, None])
    if not toks:
        return torch.empty(b, 0, dtype=torch.long)
    return torch.stack(toks, 1).cpu()
