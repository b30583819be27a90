"""Control vectors in activation space (representation engineering).

Conventions
-----------
* **Hook site and layer.** Activations are read at ``blocks.{layer}.hook_{site}`` with
  ``site`` one of ``resid_pre`` (block input), ``resid_mid`` (after attention),
  ``resid_post`` (block output, the default); ``layer`` is the 0-based block index, so
  ``resid_post`` of layer ``l`` is ``resid_pre`` of layer ``l + 1``.
* **Token rule.** ``"last"`` (default): the last prompt token; ``"mean"``: the mean over
  the prompt's non-pad tokens. Prompts are left-padded, so "last" is index ``-1``.
* **Kinds.** ``R`` = mean of positives; ``R-C`` = mean(pos) − mean(neg); ``PCA-C`` = the
  first principal direction ``u`` of the paired differences ``D = pos − neg`` (uncentred:
  the top right-singular vector of ``D``; ``center=True`` subtracts mean(D) first), its
  sign chosen so that ``u · (R-C) ≥ 0``, scaled to the mean projection
  ``c = u · (mean(D) · u)`` so that it lives in activation units like R-C. Every vector
  records its raw norm ``||c||``.
* **Applying.** ``act ← act + α · c`` at the same hook, all positions by default
  (:func:`control_hooks`, built on :func:`interp.steering.add_vector`), in a forward pass
  or during generation (``generate(..., fwd_hooks=...)``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from ..errors import ConfigError, NonFiniteError, PromptError
from ..steering import Where, add_vector

SITES = ("resid_pre", "resid_mid", "resid_post")
KINDS = ("R", "R-C", "PCA-C")
TOKEN_RULES = ("last", "mean")


def hook_name(layer: int, site: str = "resid_post") -> str:
    if site not in SITES:
        raise ConfigError(f"hook site must be one of {SITES}, not {site!r}")
    return f"blocks.{int(layer)}.hook_{site}"


def _hooked(model):
    return getattr(model, "hooked", model)


@torch.no_grad()
def read_activations(model, prompts: Sequence[str] | Sequence[Sequence[int]], layer: int,
                     site: str = "resid_post", token_rule: str = "last",
                     batch_size: int = 64, progress: Callable[[int, int], None] | None = None
                     ) -> torch.Tensor:
    """``[n_prompts, d_model]`` float32 activations at ``hook_name(layer, site)``."""
    from ..generation import _tokenizer, check_tokens, encode_prompts, left_pad

    if token_rule not in TOKEN_RULES:
        raise ConfigError(f"token rule must be one of {TOKEN_RULES}, not {token_rule!r}")
    h = _hooked(model)
    from ..validate import number

    layer = number(layer, "layer", integer=True)
    if not 0 <= layer < h.cfg.n_layers:
        raise ConfigError(f"layer {layer} is outside 0..{h.cfg.n_layers - 1}")
    name = hook_name(layer, site)
    ids = encode_prompts(model, prompts)
    check_tokens(model, ids)
    tok = _tokenizer(model)
    pad = tok.pad_token_id if tok is not None and tok.pad_token_id is not None else 0
    dev = next(h.parameters()).device
    out = []
    for s in range(0, len(ids), batch_size):
        toks, mask = left_pad(ids[s:s + batch_size], pad, dev)
        got: dict[str, torch.Tensor] = {}

        def grab(act, hook=None, got=got):
            got["a"] = act.detach()
            return act

        h.run_with_hooks(toks, attention_mask=mask, fwd_hooks=[(name, grab)],
                         stop_at_layer=layer + 1)
        a = got["a"].float()
        if token_rule == "last":
            out.append(a[:, -1])
        else:
            m = mask.to(a.dtype)[..., None]
            out.append((a * m).sum(1) / m.sum(1))
        if progress is not None:
            progress(min(s + batch_size, len(ids)), len(ids))
    return torch.cat(out).cpu()


def control_vector(pos: torch.Tensor, neg: torch.Tensor | None = None, kind: str = "R-C",
                   center: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
    """Build a control vector ``[d_model]`` from ``pos`` / ``neg`` ``[n, d_model]``.

    Returns ``(c, info)``; ``info`` has ``kind, norm`` (raw ||c||), counts and, for PCA-C,
    ``explained`` (share of Σ||D_i||² along u; of the centred total when ``center``),
    ``center`` and ``cos_with_rc``.
    """
    if kind not in KINDS:
        raise ConfigError(f"vector kind must be one of {KINDS}, not {kind!r}")
    if pos.ndim != 2 or len(pos) == 0:
        raise PromptError("no positive activations")
    pos = pos.double()
    info: dict[str, Any] = {"kind": kind, "n_pos": len(pos), "n_neg": 0}
    if kind == "R":
        c = pos.mean(0)
    else:
        if neg is None or len(neg) == 0:
            raise PromptError(f"{kind} needs negative examples")
        neg = neg.double()
        info["n_neg"] = len(neg)
        rc = pos.mean(0) - neg.mean(0)
        if kind == "R-C":
            c = rc
        else:
            if len(pos) != len(neg):
                raise PromptError(f"PCA-C needs paired examples: {len(pos)} positives vs "
                                  f"{len(neg)} negatives")
            d = pos - neg
            dm = d - d.mean(0) if center else d
            _, s, vh = torch.linalg.svd(dm, full_matrices=False)
            u = vh[0]
            if float(u @ rc) < 0:
                u = -u
            c = u * float(d.mean(0) @ u)
            info.update(center=center, explained=float(s[0] ** 2 / (s ** 2).sum()),
                        cos_with_rc=float(u @ rc / rc.norm().clamp_min(1e-30)))
    info["norm"] = float(c.norm())
    if not bool(torch.isfinite(c).all()):
        raise NonFiniteError("the control vector holds NaN or infinite values (the model's "
                             "activations are not finite)")
    return c.float(), info


def control_hooks(vector: torch.Tensor, layer: int, alpha: float | torch.Tensor = 1.0,
                  site: str = "resid_post", where: Where | None = None, state=None
                  ) -> list[tuple[str, Callable]]:
    """``[(hook, fn)]`` adding ``α · c`` at ``hook_name(layer, site)`` (see steering)."""
    return [add_vector(hook_name(layer, site), vector, alpha, state=state, where=where)]


@dataclass
class ControlVector:
    """A control vector with everything needed to reuse it correctly."""

    vector: torch.Tensor
    layer: int
    site: str = "resid_post"
    token_rule: str = "last"
    kind: str = "R-C"
    model: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    pos_mean: torch.Tensor | None = None
    neg_mean: torch.Tensor | None = None

    @property
    def hook(self) -> str:
        return hook_name(self.layer, self.site)

    def hooks(self, alpha: float | torch.Tensor = 1.0, where: Where | None = None, state=None):
        return control_hooks(self.vector, self.layer, alpha, self.site, where, state)

    def config(self) -> dict[str, Any]:
        return {"model": self.model.get("id"), "weight_hash": self.model.get("weight_hash"),
                "layer": self.layer, "site": self.site, "hook": self.hook,
                "layer_convention": "0-based block index; resid_post = block output",
                "token_rule": self.token_rule, "kind": self.kind,
                "prompts_hash": self.info.get("prompts_hash"),
                "center": self.info.get("center", False)}

    def save(self, store, seed: int | None = None, meta: dict[str, Any] | None = None):
        """Save as a ``vectors.control`` artifact (config-derived key)."""
        from ..store import provenance

        tensors = {"vector": self.vector}
        if self.pos_mean is not None:
            tensors["pos_mean"] = self.pos_mean
        if self.neg_mean is not None:
            tensors["neg_mean"] = self.neg_mean
        return store.save("vectors.control", self.config(), tensors,
                          provenance=provenance(models={"model": self.model}, seed=seed),
                          meta={**self.info, **(meta or {})}, finite=True)

    @classmethod
    def from_artifact(cls, art) -> ControlVector:
        c = art.config
        t = art.tensors
        return cls(vector=t["vector"], layer=int(c["layer"]), site=c["site"],
                   token_rule=c["token_rule"], kind=c["kind"],
                   model=art.provenance.get("models", {}).get("model", {}),
                   info=dict(art.meta), pos_mean=t.get("pos_mean"), neg_mean=t.get("neg_mean"))


def _prompts_hash(pos: Sequence, neg: Sequence | None) -> str:
    h = hashlib.sha256()
    for group in (pos, neg or []):
        for p in group:
            h.update(repr(p).encode())
        h.update(b"|")
    return h.hexdigest()[:16]


def build_control_vector(model, positives: Sequence, negatives: Sequence | None, layer: int,
                         kind: str = "R-C", site: str = "resid_post", token_rule: str = "last",
                         batch_size: int = 64, center: bool = False,
                         progress: Callable[[int, int], None] | None = None) -> ControlVector:
    """Read both sets on ``model`` and build a :class:`ControlVector` (not saved)."""
    n_total = len(positives) + len(negatives or [])

    def prog(off):
        return (lambda d, t: progress(off + d, n_total)) if progress else None

    pos = read_activations(model, positives, layer, site, token_rule, batch_size, prog(0))
    neg = (read_activations(model, negatives, layer, site, token_rule, batch_size,
                            prog(len(positives))) if negatives else None)
    c, info = control_vector(pos, neg, kind, center)
    info["prompts_hash"] = _prompts_hash(positives, negatives)
    desc = model.describe() if hasattr(model, "describe") else {"id": "in-memory model"}
    return ControlVector(c, layer, site, token_rule, kind, desc, info, pos.mean(0),
                         neg.mean(0) if neg is not None else None)
