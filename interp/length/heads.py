"""Short-thinking heads: each attention head's mean write onto the unit short direction.

For head ``h`` of layer ``l`` the write at a position is ``z_h · W_O[h]`` (``hook_z``
``[batch, pos, n_heads, d_head]`` times ``W_O [n_heads, d_head, d_model]``; the bias
``b_O`` belongs to no head). Its score is that write dotted with ``u_l``, the *unit short
direction* of layer ``l`` (``-dir_l / ||dir_l||`` of the ``resid_mid`` direction: the
attention output of layer ``l`` is added into ``resid_mid`` of the same layer), averaged
over the thinking positions of each *short* example (positions rule of
:mod:`interp.length.data`) and then over examples. Positive = the head pushes the
residual stream towards short thinking.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from .data import ThinkExample, batches, pad_id_of


@torch.no_grad()
def head_short_scores(model, examples: Sequence[ThinkExample], unit_short: torch.Tensor,
                      batch_size: int = 64, progress: Callable[..., None] | None = None
                      ) -> torch.Tensor:
    """``Float[Tensor, "n_layers n_heads"]``: mean per-example write onto ``unit_short[l]``.

    ``unit_short``: ``[n_layers, d_model]`` unit vectors (one per layer).
    """
    hooked = model.hooked
    L, H = hooked.cfg.n_layers, hooked.cfg.n_heads
    dev = next(hooked.parameters()).device
    total = torch.zeros(L, H, dtype=torch.float64)
    cur: dict[str, Any] = {}

    def make(layer: int):
        W_O = hooked.blocks[layer].attn.W_O.float()                  # [H, d_head, d]
        wu = W_O @ unit_short[layer].to(W_O.device).float()          # [H, d_head]

        def fn(z, hook=None):
            pm = cur["pm"]                                           # [b, pos]
            proj = torch.einsum("bphd,hd->bph", z.float(), wu)       # [b, pos, H]
            per_ex = (proj * pm.unsqueeze(-1)).sum(1) / pm.sum(1, keepdim=True).clamp_min(1)
            total[layer] += per_ex.sum(0).double().cpu()
            return z
        return fn

    hooks = [(f"blocks.{ly}.attn.hook_z", make(ly)) for ly in range(L)]
    for rows, toks, mask, pm in batches(examples, batch_size, pad_id_of(model), dev):
        cur["pm"] = pm
        with hooked.hooks(fwd_hooks=hooks):
            hooked(toks, attention_mask=mask, stop_at_layer=L)
        if progress is not None:
            progress(rows[-1] + 1, len(examples))
    return (total / max(len(examples), 1)).float()


def top_heads(scores: torch.Tensor, k: int = 5) -> list[dict[str, Any]]:
    """The ``k`` heads with the largest scores: ``[{"layer", "head", "score", "rank"}]``."""
    flat = scores.flatten()
    k = min(k, flat.numel())
    vals, idx = flat.topk(k)
    H = scores.shape[1]
    return [{"rank": i + 1, "layer": int(j) // H, "head": int(j) % H, "score": float(v)}
            for i, (v, j) in enumerate(zip(vals.tolist(), idx.tolist()))]
