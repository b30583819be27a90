"""Lenses on an original vs a modified model over the same tokens.

Conventions
-----------
* Position ``i`` of every per-token quantity is the next-token distribution computed
  *at* token ``i`` (it predicts token ``i + 1``): ``logits[:, i]``.
* ``KL(P_orig ‖ P_mod) = Σ_v p_orig(v) (log p_orig(v) − log p_mod(v))`` from
  ``log_softmax`` in float32 (float64 for float64 logits); entropy
  ``H(P) = −Σ p log p``. Units: ``"nats"`` (default) or ``"bits"`` (÷ ln 2). No smoothing
  unless ``eps`` is given (then ``p ← (p + eps) / (1 + V·eps)`` on both sides, the 1e-8
  smoothing of Højer et al.). Identical logits give exactly 0.
* A *modification* is a zero-argument callable returning a context manager that makes the
  model the modified one for its body, e.g. ``lambda: apply_task_vector(m, tv, 1.0)`` or
  ``lambda: steered(m, [add_vector(...)])``.
* Logit lens at a layer: ``unembed(ln_final(resid_post_l))`` (the model's own final
  norm and unembedding, bias included), so the last layer's lens is the output itself.
* The logit lens of a *vector* is ``c @ W_U`` (no bias) "raw", or ``ln_final(c) @ W_U``
  "with the final norm"; each result says which.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Sequence

import torch

from ..errors import ConfigError

Modify = Callable[[], ContextManager[Any]]
UNITS = ("nats", "bits")


def _scale(unit: str) -> float:
    if unit not in UNITS:
        raise ConfigError(f"unit must be one of {UNITS}, not {unit!r}")
    return 1.0 if unit == "nats" else 1.0 / math.log(2.0)


def log_probs(logits: torch.Tensor, eps: float | None = None) -> torch.Tensor:
    """``log softmax`` over the last axis in float32 (float64 stays float64)."""
    x = logits if logits.dtype == torch.float64 else logits.float()
    lp = torch.log_softmax(x, dim=-1)
    if eps:
        v = x.shape[-1]
        lp = torch.log((lp.exp() + eps) / (1.0 + v * eps))
    return lp


def kl_div(logits_p: torch.Tensor, logits_q: torch.Tensor, unit: str = "nats",
           eps: float | None = None) -> torch.Tensor:
    """``KL(P ‖ Q)`` per leading index: ``[..., vocab] -> [...]``."""
    lp, lq = log_probs(logits_p, eps), log_probs(logits_q, eps)
    return (lp.exp() * (lp - lq)).sum(-1) * _scale(unit)


def entropy(logits: torch.Tensor, unit: str = "nats") -> torch.Tensor:
    """``H(P)`` per leading index: ``[..., vocab] -> [...]``."""
    lp = log_probs(logits)
    return -(lp.exp() * lp).sum(-1) * _scale(unit)


def _hooked(model):
    return getattr(model, "hooked", model)


def _tokens(tokens) -> torch.Tensor:
    t = torch.as_tensor(tokens, dtype=torch.long)
    return t[None] if t.ndim == 1 else t


@dataclass
class TraceLens:
    """Per-token comparison of two models on one token sequence ``[pos]``.

    ``kl[i]``, ``entropy_orig[i]``, ``entropy_mod[i]`` describe the distributions at
    token ``i``; ``promoted_*`` / ``suppressed_*`` hold ``[pos, k]`` token ids and their
    Δ (mod − orig) in log-prob (``*_logprob``) or raw logit (``*_logit``; a logit shift
    common to all tokens cancels in the log-prob but not here).
    """

    tokens: list[int]
    kl: torch.Tensor
    entropy_orig: torch.Tensor
    entropy_mod: torch.Tensor
    unit: str = "nats"
    top: dict[str, torch.Tensor] = field(default_factory=dict)
    label: str = ""

    def to_records(self, tokenizer=None) -> list[dict[str, Any]]:
        """One dict per position: token, next token, kl, entropies, top tokens."""
        dec = (lambda i: tokenizer.convert_ids_to_tokens(int(i))) if tokenizer else str
        out = []
        for i, t in enumerate(self.tokens):
            r = {"pos": i, "token": dec(t),
                 "next_token": dec(self.tokens[i + 1]) if i + 1 < len(self.tokens) else "",
                 f"kl_{self.unit}": float(self.kl[i]),
                 f"entropy_orig_{self.unit}": float(self.entropy_orig[i]),
                 f"entropy_mod_{self.unit}": float(self.entropy_mod[i])}
            for key in ("promoted_logprob", "suppressed_logprob", "promoted_logit",
                        "suppressed_logit"):
                if key in self.top:
                    ids, vals = self.top[key][i], self.top[key + "_value"][i]
                    r[key] = ", ".join(f"{dec(a)} ({float(b):+.3g})" for a, b in zip(ids, vals))
            out.append(r)
        return out


def top_changes(logits_orig: torch.Tensor, logits_mod: torch.Tensor, k: int = 5
                ) -> dict[str, torch.Tensor]:
    """Top-``k`` promoted / suppressed tokens per position, ``[pos, vocab] -> [pos, k]``
    ids and values, by Δlog-prob and by Δlogit (mod − orig)."""
    k = min(k, logits_orig.shape[-1])
    out: dict[str, torch.Tensor] = {}
    for kind, d in (("logprob", log_probs(logits_mod) - log_probs(logits_orig)),
                    ("logit", logits_mod.float() - logits_orig.float())):
        up = d.topk(k, dim=-1)
        down = (-d).topk(k, dim=-1)
        out[f"promoted_{kind}"], out[f"promoted_{kind}_value"] = up.indices, up.values
        out[f"suppressed_{kind}"], out[f"suppressed_{kind}_value"] = down.indices, -down.values
    return out


def _check(model, tokens: torch.Tensor) -> None:
    from ..generation import check_tokens

    check_tokens(model, tokens.tolist(), what="text")


@torch.no_grad()
def _logits(model, tokens: torch.Tensor) -> torch.Tensor:
    h = _hooked(model)
    dev = next(h.parameters()).device
    return h(tokens.to(dev)).float()


@torch.no_grad()
def trace_lens(model, tokens: Sequence[int] | torch.Tensor, modify: Modify, k: int = 5,
               unit: str = "nats", label: str = "") -> TraceLens:
    """Teacher-force one sequence through the original and the modified model."""
    t = _tokens(tokens)
    if t.shape[0] != 1:
        raise ConfigError("trace_lens takes one sequence")
    _check(model, t)
    lo = _logits(model, t)[0]
    with modify():
        lm = _logits(model, t)[0]
    top = {key: val.cpu() for key, val in top_changes(lo, lm, k).items()}
    return TraceLens(tokens=t[0].tolist(), kl=kl_div(lo, lm, unit).cpu(),
                     entropy_orig=entropy(lo, unit).cpu(), entropy_mod=entropy(lm, unit).cpu(),
                     unit=unit, top=top, label=label)


@torch.no_grad()
def generation_lens(model, prompt: str | Sequence[int], modify: Modify,
                    max_new_tokens: int = 64, k: int = 5, unit: str = "nats",
                    temperature: float = 0.0, seed: int = 0) -> dict[str, Any]:
    """Each model generates from ``prompt``; each trace is then lensed (both models
    teacher-forced on it). Returns ``{"orig": {generation, lens}, "mod": {...}}``."""
    from ..generation import generate

    out: dict[str, Any] = {}
    for key, ctx in (("orig", contextlib.nullcontext), ("mod", modify)):
        with ctx():
            g = generate(model, [prompt], max_new_tokens=max_new_tokens,
                         temperature=temperature, seed=seed, batch_size=1)[0]
        seq = g.prompt_ids + g.output_ids
        out[key] = {"generation": g, "prompt_len": len(g.prompt_ids),
                    "lens": trace_lens(model, seq, modify, k, unit,
                                       label=f"{key} model's own generation")}
    return out


@torch.no_grad()
def _resid_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    """Logit lens of every block's ``hook_resid_post``: ``[n_layers, pos, vocab]``."""
    h = _hooked(model)
    dev = next(h.parameters()).device
    names = [f"blocks.{i}.hook_resid_post" for i in range(h.cfg.n_layers)]
    _, cache = h.run_with_cache(tokens.to(dev), names_filter=lambda n: n in names)
    out = []
    for n in names:
        out.append(h.unembed(h.ln_final(cache[n])).float()[0])
    return torch.stack(out)


@torch.no_grad()
def layer_token_kl(model, tokens: Sequence[int] | torch.Tensor, modify: Modify,
                   unit: str = "nats") -> torch.Tensor:
    """``[n_layers, pos]``: KL(P_orig,l ‖ P_mod,l) of the logit lens at each block output
    (``blocks.{l}.hook_resid_post`` through ``ln_final`` and ``unembed``); the last row
    equals the output KL of :func:`trace_lens`."""
    t = _tokens(tokens)
    _check(model, t)
    lo = _resid_logits(model, t)
    with modify():
        lm = _resid_logits(model, t)
    return kl_div(lo, lm, unit).cpu()


@torch.no_grad()
def vector_logit_lens(model, vector: torch.Tensor, k: int = 10, final_norm: bool = False
                      ) -> dict[str, Any]:
    """Tokens a residual-stream vector ``[d_model]`` promotes / suppresses.

    ``final_norm=False``: ``vector @ W_U`` (raw); ``True``: ``ln_final(vector) @ W_U``
    (the final RMSNorm/LayerNorm with its gain, as the model would read it). The
    unembedding bias is left out in both.
    """
    from ..steering import check_vector

    check_vector(vector, "vector")
    h = _hooked(model)
    W_U = h.W_U
    v = vector.to(W_U.device, W_U.dtype)
    if final_norm:
        v = h.ln_final(v[None, None])[0, 0]
    logits = (v @ W_U).float().cpu()
    k = min(k, logits.numel())
    up, down = logits.topk(k), (-logits).topk(k)
    tok = getattr(model, "tokenizer", None) or getattr(h, "tokenizer", None)
    dec = (lambda i: tok.convert_ids_to_tokens(int(i))) if tok is not None else str
    return {
        "mode": "with final norm (ln_final(c) @ W_U, no bias)" if final_norm
        else "raw (c @ W_U, no final norm, no bias)",
        "final_norm": final_norm, "logits": logits,
        "top": [(dec(i), float(x)) for i, x in zip(up.indices, up.values)],
        "bottom": [(dec(i), float(-x)) for i, x in zip(down.indices, down.values)],
    }
