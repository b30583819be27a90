"""Additive length steering and the batched α sweep.

Hook sites: a ``resid_mid`` direction of layer ``l`` is added at
``blocks.{l}.hook_resid_mid`` (equivalent to adding it to that layer's attention
output), a ``resid_post`` direction at ``blocks.{l}.hook_resid_post`` (equivalent to the
MLP output). The edit is ``act <- act + α · dir_l`` at **every position** of the prompt
pass and of every decoding step (KV cache on); hooks are removed afterwards, also when an
exception is raised (:func:`interp.generation.generate`).

α grid, relative to the direction: α is in units of ``dir_l`` itself (``dir_l`` is the
unnormalised long − short mean difference, so α = 1 at one layer shifts an activation by
the full class separation at that layer). Steering *all* layers accumulates the shift
through the residual stream (the directions of neighbouring layers are nearly parallel),
so the default all-layer grid is ``±scale / n_layers`` with ``scale = 2`` (for a 28-layer
model this is ±0.07, close to ThinkEdit's ±0.08), and the single-layer grid is ±1 (as in
ThinkEdit's layer-wise variant). Negative α points towards short thinking.

The sweep runs every α as **one** batched generation: prompts are repeated once per α and
each row reads its own α through ``GenState.rows``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..generation import GenState, Hook
from ..steering import add_vector
from .data import ThinkMarkers, generate_thinking, hook_name
from .stats import proportion


def alpha_grid(n_layers: int, n: int = 9, layers: str | int = "all", scale: float = 2.0
               ) -> list[float]:
    """Symmetric grid of ``n`` α values (see the module docstring for the scale)."""
    from ..validate import number

    n = number(n, "n_alpha", lo=2, integer=True)
    scale = number(scale, "alpha_scale", lo=0, lo_open=True)
    a_max = scale / n_layers if layers == "all" else 1.0
    return [round(float(a), 6) for a in np.linspace(-a_max, a_max, n)]


def steering_hooks(dirs: torch.Tensor, site: str, alpha: float | torch.Tensor,
                   layers: Sequence[int] | None = None, state: GenState | None = None
                   ) -> list[Hook]:
    """``act += α · dirs[ly]`` at ``blocks.{l}.hook_{site}`` for each layer in ``layers``
    (all when None). ``dirs``: ``Float[Tensor, "n_layers d_model"]``; ``alpha`` a float or
    a per-row tensor (indexed by ``state.rows``)."""
    layers = range(dirs.shape[0]) if layers is None else layers
    return [add_vector(hook_name(site, int(ly)), dirs[int(ly)], alpha, state=state)
            for ly in layers]


def short_flags(records: Sequence[dict[str, Any]], short_max_tokens: float = 0) -> list[bool]:
    """Per response: the think block closed with at most ``short_max_tokens`` thinking
    tokens (the one definition of a *short* response)."""
    return [bool(r["closed"] and r["think_tokens"] <= short_max_tokens) for r in records]


def summarize(records: Sequence[dict[str, Any]], short_max_tokens: float = 0) -> dict[str, Any]:
    """Length and accuracy summary of generation records.

    ``short``: the think block closed with at most ``short_max_tokens`` thinking tokens.
    """
    n = len(records)
    lengths = np.array([r["think_tokens"] for r in records], dtype=float)
    short = short_flags(records, short_max_tokens)
    out: dict[str, Any] = {
        "n": n, "mean_think_tokens": float(lengths.mean()) if n else float("nan"),
        "sem_think_tokens": float(lengths.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
        "median_think_tokens": float(np.median(lengths)) if n else float("nan"),
        "short_fraction": proportion(short),
        "unclosed_fraction": float(np.mean([not r["closed"] for r in records])) if n else 0.0,
    }
    if records and "correct" in records[0]:
        out["accuracy"] = proportion([r["correct"] for r in records])
    return out


def compact(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-response fields kept in artifacts (no token ids)."""
    keep = ("row", "think_tokens", "closed", "correct", "answer", "finished", "n_output")
    return [{k: r[k] for k in keep if k in r} for r in records]


def alpha_sweep(model, prompts: Sequence[str], dirs: torch.Tensor, alphas: Sequence[float], *,
                site: str = "resid_mid", layers: Sequence[int] | None = None,
                markers: ThinkMarkers | None = None,
                scorer: Callable[[int, str], dict[str, Any]] | None = None,
                short_max_tokens: float = 0, max_new_tokens: int = 96,
                temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                batch_size: int = 512, batched: bool = True,
                progress: Callable[..., None] | None = None,
                make_hooks: Callable[[Any, GenState], list[Hook]] | None = None
                ) -> dict[str, Any]:
    """Generate every prompt under every α; summary per α plus per-response records.

    ``make_hooks(alpha, state)`` replaces the additive steering of ``dirs`` when given
    (``alpha`` is a float, or a per-row tensor read through ``state.rows``): any steering
    rule runs as the same batched sweep (e.g. SEAL's separator-conditional steering).

    ``batched=True``: one generation over ``len(alphas) * len(prompts)`` rows (row
    ``k * n + i`` is prompt ``i`` under ``alphas[k]``). ``batched=False``: one generation
    per α (the baseline of the benchmark). ``scorer(i, text)`` gets the prompt index.
    """
    from ..validate import finite_values

    alphas = finite_values(list(alphas), "α")
    if not alphas:
        raise ConfigError("the α grid is empty")
    markers = markers or ThinkMarkers()
    n = len(prompts)
    rows = [p for _ in alphas for p in prompts]
    row_scorer = (lambda r, t: scorer(r % n, t)) if scorer is not None else None
    if make_hooks is None:
        def make_hooks(a, st):
            return steering_hooks(dirs, site, a, layers, st)
    if batched:
        a_rows = torch.tensor([a for a in alphas for _ in prompts], dtype=torch.float32)
        recs = generate_thinking(
            model, rows, markers, max_new_tokens=max_new_tokens, temperature=temperature,
            top_p=top_p, seed=seed, batch_size=batch_size, scorer=row_scorer,
            fwd_hooks=lambda st: make_hooks(a_rows, st),
            progress=progress)
    else:
        recs = []
        for k, a in enumerate(alphas):
            part = generate_thinking(
                model, prompts, markers, max_new_tokens=max_new_tokens,
                temperature=temperature, top_p=top_p, seed=seed, batch_size=batch_size,
                scorer=scorer, fwd_hooks=lambda st, a=float(a): make_hooks(a, st),
                progress=None)
            for r in part:
                r["row"] += k * n
            recs += part
            if progress is not None:
                progress((k + 1) * n, len(rows))
    per_alpha = []
    for k, a in enumerate(alphas):
        s = summarize(recs[k * n:(k + 1) * n], short_max_tokens)
        per_alpha.append({"alpha": float(a), **s})
    return {"alphas": [float(a) for a in alphas], "per_alpha": per_alpha, "records": recs,
            "site": site, "layers": list(layers) if layers is not None else "all"}
