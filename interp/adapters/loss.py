"""The adapter training loss (METHODS.md §1), term by term.

    L = λ_adapt · KL(p_ref || p_adapt)
      + l1 · Σ_layers mean_tokens Σ_i f_i · ||W_dec[i, :]||_2
      + λ_nmse · mean over (embedding + each layer's output) of NMSE(h_adapt, h_ref)
      + λ_bridge · mean[ KL(p_ref || p_a2r(k)), KL(p_ref || p_r2a(k)) ]

Conventions: KL is next-token, in nats, summed over the vocabulary and averaged over every
non-padding position (prompt included); ``valid [b, pos]`` marks those positions.
NMSE per residual site is ``Σ_tokens ||h_adapt − h_ref||² / Σ_tokens ||h_ref||²`` over
valid tokens; the sites are ``resid[0..L]`` (embedding, then each block's output; the
embedding term is 0 by construction: embeddings are shared). One cutoff ``k`` is drawn
per step (uniform in ``0..L``); the bridged term can be estimated on a random subset of
the batch's sequences (``bridge_rows``), an unbiased estimate of the full-batch term at a
fraction of the cost; the bridged rows ride along in the adapter model's own pass from
layer ``k`` on (:meth:`AdapterModel.forward_bridged`), reusing its residuals and kernel
launches. At ``k = 0`` and ``k = L`` one bridged run is the adapter model and the other
the reference, so the term is ``KL_main / 2`` with no extra work.

Data-parallel training (``reduce``, a sum over the ranks): each rank passes only its own
sequences and every denominator above (valid tokens, bridged tokens, each site's
``Σ ||h_ref||²``) is first summed over the ranks, so a rank's loss and parts are its
*share* of the global batch's values: summed over the ranks they are the single-process
values, and so are the summed gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .model import AdapterModel, ForwardTrace


@dataclass
class LossWeights:
    lambda_adapt: float = 1.0
    l1: float = 1e-3
    lambda_nmse: float = 1.0
    lambda_bridge: float = 2.0


def token_kl(logp_ref: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``KL(p_ref || softmax(logits))`` per position, ``[b, pos]`` (float32 math)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return (logp_ref.exp() * (logp_ref - logp)).sum(-1)


Reduce = Callable[[torch.Tensor], torch.Tensor]


def masked_mean(x: torch.Tensor, valid: torch.Tensor, denom: torch.Tensor | None = None
                ) -> torch.Tensor:
    """``Σ x · valid / Σ valid``; ``denom`` replaces the denominator (e.g. the count over
    all ranks)."""
    v = valid.to(x.dtype)
    return (x * v).sum() / (v.sum().clamp_min(1.0) if denom is None else denom)


def global_count(valid: torch.Tensor, reduce: Reduce | None) -> torch.Tensor | None:
    """The number of valid positions summed over the ranks (clamped at 1), or None
    without ``reduce`` (each mean then uses its own count)."""
    if reduce is None:
        return None
    return reduce(valid.sum().double()).clamp_min(1.0).float()


def kl_loss(logp_ref: torch.Tensor, logits: torch.Tensor, valid: torch.Tensor,
            denom: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token KL over valid positions (a scalar)."""
    return masked_mean(token_kl(logp_ref, logits), valid, denom)


def l1_penalty(model: AdapterModel, acts: list[torch.Tensor | None], valid: torch.Tensor,
               denom: torch.Tensor | None = None) -> torch.Tensor:
    """``Σ_layers mean_tokens Σ_i f_i ||W_dec[i]||``: decoder-norm-weighted L1."""
    total = torch.zeros((), device=valid.device)
    for layer, f in enumerate(acts):
        if f is None:
            continue
        norms = model.adapters[layer].decoder_norms().to(f.dtype)
        total = total + masked_mean((f * norms).sum(-1).float(), valid, denom)
    return total


def nmse_per_site(resid_a: list[torch.Tensor], resid_r: list[torch.Tensor],
                  valid: torch.Tensor, reduce: Reduce | None = None) -> torch.Tensor:
    """``[L+1]``: NMSE of the adapter model's residuals against the reference's (with
    ``reduce``, each site's denominator is summed over the ranks first)."""
    v = valid.unsqueeze(-1).float()
    if reduce is not None:
        nums = [((ha.float() - hr.float()).pow(2) * v).sum() for ha, hr in zip(resid_a, resid_r)]
        dens = reduce(torch.stack([(hr.float().pow(2) * v).sum().detach() for hr in resid_r]))
        return torch.stack(nums) / dens.clamp_min(1e-12)
    out = []
    for ha, hr in zip(resid_a, resid_r):
        num = ((ha.float() - hr.float()).pow(2) * v).sum()
        den = (hr.float().pow(2) * v).sum().clamp_min(1e-12)
        out.append(num / den)
    return torch.stack(out)


def l0_per_layer(acts: list[torch.Tensor | None], valid: torch.Tensor,
                 denom: torch.Tensor | None = None) -> torch.Tensor:
    """``[L]``: mean number of active features per valid token, per layer."""
    return torch.stack([masked_mean((f > 0).float().sum(-1), valid, denom)
                        for f in acts if f is not None])


@torch.no_grad()
def reference_pass(model: AdapterModel, tokens: torch.Tensor) -> tuple[ForwardTrace, torch.Tensor]:
    """The reasoning model's pass (no grad) and its next-token log-probs (float32)."""
    ref = model(tokens, "ref")
    return ref, torch.log_softmax(ref.logits.float(), dim=-1)


def adapter_loss(model: AdapterModel, tokens: torch.Tensor, valid: torch.Tensor,
                 w: LossWeights, k: int, bridge_rows: torch.Tensor | None = None,
                 ref: tuple[ForwardTrace, torch.Tensor] | None = None,
                 reduce: Reduce | None = None
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and its (detached) parts for one batch.

    ``k`` is the bridge cutoff in ``0..L``; ``bridge_rows`` the sequence indices used for
    the bridged term (None: all). ``ref`` may pass a precomputed :func:`reference_pass`.
    Parts: ``loss kl l1 nmse bridge l0`` (scalars), ``nmse_layers`` ``[L+1]``,
    ``l0_layers`` ``[L]``, ``fired`` ``[L, d_sae]`` (bool, any activation this batch).
    With ``reduce`` (data-parallel, see the module docstring) the loss and every part but
    ``fired`` are this rank's shares (:func:`reduce_parts` sums them).
    """
    L = model.n_layers
    ref_trace, logp_ref = ref if ref is not None else reference_pass(model, tokens)
    fused = bool(w.lambda_bridge) and 0 < k < L
    if fused:
        rows = bridge_rows if bridge_rows is not None else torch.arange(
            tokens.shape[0], device=tokens.device)
        ad, la, lr = model.forward_bridged(tokens, k, rows, ref_trace.resid[k][rows])
    else:
        ad = model(tokens, "adapt")
    n_tok = global_count(valid, reduce)
    kl = kl_loss(logp_ref, ad.logits, valid, n_tok)
    l1 = l1_penalty(model, ad.acts, valid, n_tok) if w.l1 else torch.zeros((), device=kl.device)
    nmse_l = nmse_per_site(ad.resid, ref_trace.resid, valid, reduce)
    nmse = nmse_l.mean()
    loss = w.lambda_adapt * kl + w.l1 * l1 + w.lambda_nmse * nmse
    bridge = torch.zeros((), device=kl.device)
    if w.lambda_bridge:
        if not fused:  # k = 0 or L: one bridged model is the adapter model, one the ref
            bridge = 0.5 * kl
        else:
            vr, pr = valid[rows], logp_ref[rows]
            n_br = global_count(vr, reduce)
            bridge = 0.5 * (kl_loss(pr, la, vr, n_br) + kl_loss(pr, lr, vr, n_br))
        loss = loss + w.lambda_bridge * bridge
    with torch.no_grad():
        l0_l = l0_per_layer(ad.acts, valid, n_tok)
        vb = valid.unsqueeze(-1)
        fired = torch.stack([((f > 0) & vb).flatten(0, 1).any(0) for f in ad.acts])
    parts = {"loss": loss.detach(), "kl": kl.detach(), "l1": l1.detach(),
             "nmse": nmse.detach(), "bridge": bridge.detach(), "l0": l0_l.mean(),
             "nmse_layers": nmse_l.detach(), "l0_layers": l0_l, "fired": fired}
    return loss, parts


def reduce_parts(parts: dict[str, torch.Tensor], reduce: Reduce) -> dict[str, torch.Tensor]:
    """The global batch's parts from every rank's shares (one reduction, in float64):
    shares are summed, ``fired`` is or-ed."""
    names = [k for k in parts if k != "fired"]
    flat = torch.cat([parts[k].detach().double().reshape(-1) for k in names]
                     + [parts["fired"].double().reshape(-1)])
    flat = reduce(flat)
    out, i = {}, 0
    for k in names + ["fired"]:
        n = parts[k].numel()
        v = flat[i:i + n].view(parts[k].shape)
        out[k] = v > 0 if k == "fired" else v.to(parts[k].dtype)
        i += n
    return out
