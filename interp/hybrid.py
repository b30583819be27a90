"""The hybrid model and next-token KL between two models.

The *hybrid* is the reasoning model with its MLPs replaced by the base model's: the
reasoner's embeddings, attention, norms (``ln1``, ``ln2``, ``ln_final``) and unembedding,
with ``blocks.{l}.mlp.*`` copied from the base model. The MLP inputs are not modified:
the base MLP reads the reasoner's ``ln2`` output (``blocks.{l}.ln2.hook_normalized``
times the reasoner's ``ln2.w``; TransformerLens hooks RMSNorm before the gain). The gap between
the hybrid and the reasoner is what MLP-replacing adapters have to close.
"""

from __future__ import annotations

import copy
from typing import Iterable, Sequence

import torch

from .errors import PairMismatchError


def _hooked(model):
    return getattr(model, "hooked", model)


def build_hybrid(base, reasoner):
    """A new HookedTransformer: ``reasoner`` everywhere except base's MLP weights.

    ``base`` and ``reasoner`` are ``LoadedModel`` s (or HookedTransformers) of the same
    architecture. Both inputs are left unchanged (the result owns copies).
    """
    hb, hr = _hooked(base), _hooked(reasoner)
    sb, sr = hb.state_dict(), hr.state_dict()
    mlp_keys = [k for k in sr if ".mlp." in k]
    diffs = [k for k in mlp_keys if k not in sb or sb[k].shape != sr[k].shape]
    if hb.cfg.n_layers != hr.cfg.n_layers or diffs or not mlp_keys:
        raise PairMismatchError("the base and reasoning models cannot be combined into a "
                                "hybrid:", diffs[:5] or [
                                    f"{hb.cfg.n_layers} vs {hr.cfg.n_layers} layers"])
    hybrid = copy.deepcopy(hr)
    with torch.no_grad():
        new_sd = {k: (sb[k] if k in mlp_keys else v).detach().clone() for k, v in sr.items()}
        hybrid.load_state_dict(new_sd, strict=True)
    hybrid.eval()
    for p in hybrid.parameters():
        p.requires_grad_(False)
    return hybrid


def _logits(model, tokens: torch.Tensor) -> torch.Tensor:
    m = _hooked(model)
    if hasattr(m, "run_with_hooks"):
        return m(tokens)
    return m(input_ids=tokens).logits


def _device(model) -> torch.device:
    return next(_hooked(model).parameters()).device


@torch.no_grad()
def next_token_kl(p_model, q_model, tokens: torch.Tensor) -> torch.Tensor:
    """``kl [b, pos]``: KL(p(.|tokens[:, :i+1]) || q(.|tokens[:, :i+1])) in nats."""
    dp, dq = _device(p_model), _device(q_model)
    lp = torch.log_softmax(_logits(p_model, tokens.to(dp)).double(), -1).cpu()
    lq = torch.log_softmax(_logits(q_model, tokens.to(dq)).double(), -1).cpu()
    return (lp.exp() * (lp - lq)).sum(-1)


@torch.no_grad()
def mean_next_token_kl(p_model, q_model, token_batches: Iterable[torch.Tensor],
                       masks: Sequence[torch.Tensor] | None = None,
                       pad_token_id: int | None = None) -> float:
    """Mean next-token KL(p || q) in nats over all counted positions of all batches.

    ``token_batches``: tensors ``[b, pos]``. A position counts when its ``masks`` entry is
    True (same shapes), else when its token is not ``pad_token_id`` (default: the p
    model's tokenizer's pad id, if it has one), else always.
    """
    if pad_token_id is None:
        tok = getattr(p_model, "tokenizer", None) or getattr(_hooked(p_model), "tokenizer", None)
        pad_token_id = getattr(tok, "pad_token_id", None)
    total, count = 0.0, 0
    for i, toks in enumerate(token_batches):
        kl = next_token_kl(p_model, q_model, toks)
        if masks is not None:
            m = masks[i].bool().cpu()
        elif pad_token_id is not None:
            m = toks.cpu() != pad_token_id
        else:
            m = torch.ones_like(kl, dtype=torch.bool)
        total += float(kl[m].sum())
        count += int(m.sum())
    if count == 0:
        raise ValueError("no positions to average over")
    return total / count
