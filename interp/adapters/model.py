"""The adapter model: the hybrid backbone plus one :class:`Adapter` per layer.

Three models share everything except their MLPs:

* **reference** (the reasoning model): reasoner embeddings, attention, norms, unembedding
  and **reasoner** MLPs;
* **hybrid**: the same with the **base** model's MLPs (adapters off);
* **adapter model**: the hybrid with ``adapter_l(x)`` added to each layer's MLP output
  (``blocks.{l}.hook_mlp_out``), ``x`` = ``blocks.{l}.ln2.hook_normalized``.

Input convention: TransformerLens' ``ln2.hook_normalized`` is the pre-MLP norm's output
*before* its learned gain (RMSNorm: ``x / rms(x)``; the MLP itself reads ``x * w``). The
adapter reads the hooked value, so its SAELens ``hook_name`` is exact; this is the paper's
"MLP input after the norm" up to the fixed diagonal gain, which the learned ``W_enc``
absorbs (same expressivity).

:class:`AdapterModel` runs them with its own layer loop over the hybrid's
TransformerLens blocks (same modules, same numerics as ``HookedTransformer.forward``;
tested), choosing the MLP per layer, which makes the bridged runs cheap: a bridged pass
starts from a residual already computed and can run the a2r and r2a halves as one batch
(attention is shared; only the MLP differs per half).

Residual convention: ``resid[l]`` is ``blocks.{l}.hook_resid_pre`` for ``l < L`` and
``resid[L]`` the final ``hook_resid_post``; ``resid[0]`` is the embedding.

For generation or any ``HookedTransformer`` call, :func:`adapter_hooks` gives the same
adapter model as ``fwd_hooks`` on the hybrid (with optional :class:`FeatureMask`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .module import AdapterSet, FeatureMask

MLP_IN_HOOK = "blocks.{layer}.ln2.hook_normalized"
MLP_OUT_HOOK = "blocks.{layer}.hook_mlp_out"


def _hooked(m: Any):
    return getattr(m, "hooked", m)


def build_hybrid(base: Any, reasoner: Any):
    """Reasoner's embeddings/attention/norms/unembedding + base MLPs (a HookedTransformer).

    Uses :func:`interp.hybrid.build_hybrid` when available; otherwise copies the
    reasoner's HookedTransformer and loads each block's MLP weights from the base.
    """
    try:
        from ..hybrid import build_hybrid as shared_build
    except ImportError:
        shared_build = None
    if shared_build is not None:
        return _hooked(shared_build(base, reasoner))
    b, r = _hooked(base), _hooked(reasoner)
    if b.cfg.n_layers != r.cfg.n_layers or b.cfg.d_model != r.cfg.d_model:
        raise ConfigError("base and reasoner differ in depth or width; no hybrid possible")
    hybrid = copy.deepcopy(r)
    with torch.no_grad():
        for hb, bb in zip(hybrid.blocks, b.blocks):
            hb.mlp.load_state_dict(bb.mlp.state_dict())
    for p in hybrid.parameters():
        p.requires_grad_(False)
    return hybrid.eval()


def check_supported(cfg: Any) -> None:
    """Raise ConfigError for block layouts the layer loop does not reproduce."""
    bad = []
    if getattr(cfg, "parallel_attn_mlp", False):
        bad.append("parallel attention/MLP")
    if getattr(cfg, "attn_only", False):
        bad.append("attention-only blocks")
    if getattr(cfg, "use_attn_in", False) or getattr(cfg, "use_split_qkv_input", False):
        bad.append("use_attn_in / use_split_qkv_input")
    if getattr(cfg, "positional_embedding_type", "rotary") not in ("rotary", "standard"):
        bad.append(f"{cfg.positional_embedding_type} positions")
    try:
        from transformer_lens.components.transformer_block import POST_NORM_ARCHITECTURES
    except ImportError:
        POST_NORM_ARCHITECTURES = ()
    if cfg.original_architecture in POST_NORM_ARCHITECTURES:
        bad.append("post-norm blocks")
    if bad:
        raise ConfigError("adapters do not support this architecture yet: " + ", ".join(bad))


@dataclass
class ForwardTrace:
    """A forward pass: ``logits [b, pos, vocab]``; ``resid`` (L+1 tensors ``[b, pos,
    d_model]``, see the module docstring); ``acts`` per layer ``[b, pos, d_sae]`` (only
    where an adapter ran, else None)."""

    logits: torch.Tensor
    resid: list[torch.Tensor]
    acts: list[torch.Tensor | None] = field(default_factory=list)


MlpFn = Callable[[int, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


def split_norm(ln: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(normalized, output)`` of a TransformerLens norm module: ``normalized`` is what
    its ``hook_normalized`` sees (before the learned gain/bias), ``output`` what the
    module returns. Same operations as the module's own forward (bit-identical)."""
    name = type(ln).__name__
    dtype = ln.cfg.dtype
    if dtype not in (torch.float32, torch.float64):
        x = x.to(torch.float32)
    if name in ("LayerNorm", "LayerNormPre"):
        x = x - x.mean(-1, keepdim=True)
    elif name not in ("RMSNorm", "RMSNormPre"):
        raise ConfigError(f"adapters do not support the norm {name}")
    scale = (x.pow(2).mean(-1, keepdim=True) + ln.eps).sqrt()
    n = (x / scale).to(dtype)
    if name == "RMSNorm":
        return n, n * ln.w
    if name == "LayerNorm":
        return n, n * ln.w + ln.b
    return n, n


class AdapterModel(nn.Module):
    """Hybrid backbone (frozen) + reference MLPs (frozen) + trainable adapters."""

    def __init__(self, hybrid: Any, reference: Any, adapters: AdapterSet):
        super().__init__()
        self.hybrid = _hooked(hybrid)
        self.reference = _hooked(reference)
        check_supported(self.hybrid.cfg)
        if adapters.n_layers != self.hybrid.cfg.n_layers or \
                adapters.d_model != self.hybrid.cfg.d_model:
            raise ConfigError(
                f"adapter set ({adapters.n_layers} layers, d_model {adapters.d_model}) does "
                f"not fit the model ({self.hybrid.cfg.n_layers}, {self.hybrid.cfg.d_model})")
        self.adapters = adapters
        for p in list(self.hybrid.parameters()) + list(self.reference.parameters()):
            p.requires_grad_(False)

    # ------------------------------------------------------------------ pieces
    @property
    def n_layers(self) -> int:
        return self.hybrid.cfg.n_layers

    @property
    def device(self) -> torch.device:
        return self.adapters.layers[0].W_enc.device

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens [b, pos] -> resid[0] [b, pos, d_model]``."""
        h = self.hybrid
        x = h.embed(tokens)
        if h.cfg.positional_embedding_type == "standard":
            x = x + h.pos_embed(tokens)
        return x

    def head(self, resid: torch.Tensor) -> torch.Tensor:
        """Final norm + unembedding: ``[b, pos, d_model] -> logits [b, pos, vocab]``."""
        h = self.hybrid
        if getattr(h.cfg, "normalization_type", None) is not None:
            resid = h.ln_final(resid)
        logits = h.unembed(resid)
        cap = getattr(h.cfg, "output_logits_soft_cap", -1.0) or -1.0
        if cap > 0:
            logits = cap * torch.tanh(logits / cap)
        return logits

    def mlp_base(self, layer: int, mlp_in: torch.Tensor) -> torch.Tensor:
        return self._post(layer, self.hybrid.blocks[layer].mlp(mlp_in))

    def mlp_ref(self, layer: int, mlp_in: torch.Tensor) -> torch.Tensor:
        return self._post(layer, self.reference.blocks[layer].mlp(mlp_in))

    def _post(self, layer: int, out: torch.Tensor) -> torch.Tensor:
        if self.hybrid.cfg.use_normalization_before_and_after:
            out = self.hybrid.blocks[layer].ln2_post(out)
        return out

    def mlp_adapt(self, layer: int, x: torch.Tensor, mlp_in: torch.Tensor,
                  mask: FeatureMask | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Base MLP (on ``mlp_in``) + adapter branch (on ``x`` =
        ``ln2.hook_normalized``): ``(mlp_out, feature activations)``."""
        a = self.adapters[layer]
        f = a.encode(x)
        if mask is not None:
            f = mask.apply(layer, f)
        return self.mlp_base(layer, mlp_in) + a.decode(f), f

    def block(self, layer: int, resid: torch.Tensor, mlp: MlpFn
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One block with a chosen MLP: ``(resid_post, acts or None)``."""
        blk = self.hybrid.blocks[layer]
        a_in = blk.ln1(resid)
        attn = blk.attn(query_input=a_in, key_input=a_in, value_input=a_in)
        if self.hybrid.cfg.use_normalization_before_and_after:
            attn = blk.ln1_post(attn)
        mid = resid + attn
        out, acts = mlp(layer, *split_norm(blk.ln2, mid))
        return mid + out, acts

    def mlp_fn(self, which: str, mask: FeatureMask | None = None) -> MlpFn:
        """``which``: "ref" (reasoner MLPs), "base" (hybrid) or "adapt" (adapter model)."""
        if which == "ref":
            return lambda i, x, m: (self.mlp_ref(i, m), None)
        if which == "base":
            return lambda i, x, m: (self.mlp_base(i, m), None)
        if which == "adapt":
            return lambda i, x, m: self.mlp_adapt(i, x, m, mask)
        raise ConfigError(f"unknown MLP choice {which!r}")

    def run_layers(self, resid: torch.Tensor, start: int, stop: int, mlp: MlpFn
                   ) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
        """Run layers ``start .. stop-1`` from ``resid`` (= ``resid[start]``); returns
        the residuals ``resid[start+1 .. stop]`` and each layer's activations."""
        res, acts = [], []
        for layer in range(start, stop):
            resid, a = self.block(layer, resid, mlp)
            res.append(resid)
            acts.append(a)
        return res, acts

    # ------------------------------------------------------------------ whole passes
    def forward(self, tokens: torch.Tensor, which: str = "adapt",
                mask: FeatureMask | None = None) -> ForwardTrace:
        """A full pass of the ``which`` model ("adapt", "base" = hybrid, "ref")."""
        r0 = self.embed(tokens)
        res, acts = self.run_layers(r0, 0, self.n_layers, self.mlp_fn(which, mask))
        resid = [r0] + res
        return ForwardTrace(self.head(resid[-1]), resid, acts)

    def forward_bridged(self, tokens: torch.Tensor, k: int, rows: torch.Tensor,
                        resid_ref_k: torch.Tensor
                        ) -> tuple[ForwardTrace, torch.Tensor, torch.Tensor]:
        """The adapter model's pass with the bridged runs fused into it (``0 < k < L``).

        At layer ``k`` the batch grows by ``2n`` rows (``n = len(rows)``): the adapter
        model's own ``resid[k][rows]`` (a2r: reference MLPs from here on) and
        ``resid_ref_k`` (``[n, pos, d_model]``, the reference's ``resid[k][rows]``; r2a:
        adapters from here on). Layers ``k..L-1`` then run once for all rows, so the
        bridged terms add only their FLOPs, not another pass of kernel launches. Returns
        ``(trace of the adapter model (original rows only), logits_a2r, logits_r2a)``;
        equal to :meth:`forward` + :meth:`bridged_logits` (tested).
        """
        L = self.n_layers
        if not 0 < k < L:
            raise ConfigError(f"fused bridging needs 0 < k < {L}, got {k}")
        B, n = tokens.shape[0], rows.numel()
        mlp_adapt = self.mlp_fn("adapt")
        r0 = self.embed(tokens)
        res, acts = self.run_layers(r0, 0, k, mlp_adapt)
        resid = [r0] + res
        x = torch.cat([resid[k], resid[k][rows], resid_ref_k.to(resid[k].dtype)], dim=0)
        ad_rows = torch.cat([torch.arange(B, device=x.device),
                             torch.arange(B + n, B + 2 * n, device=x.device)])

        def mixed(layer: int, xn: torch.Tensor, m: torch.Tensor):
            out_a, f = self.mlp_adapt(layer, xn[ad_rows], m[ad_rows])
            out_r = self.mlp_ref(layer, m[B:B + n])
            out = torch.cat([out_a[:B], out_r, out_a[B:]], dim=0)
            return out, f[:B]

        res2, acts2 = self.run_layers(x, k, L, mixed)
        resid += [r[:B] for r in res2]
        logits = self.head(res2[-1])
        trace = ForwardTrace(logits[:B], resid, acts + acts2)
        return trace, logits[B:B + n], logits[B + n:]

    def bridged_logits(self, resid_adapt: torch.Tensor, resid_ref: torch.Tensor, k: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits_a2r, logits_r2a)`` for cutoff ``k`` in ``0..L``.

        a2r: adapter-model layers ``< k`` (their result ``resid_adapt`` = ``resid[k]`` of
        the adapter model), then reference layers ``>= k``; r2a: reference layers ``< k``
        (``resid_ref`` = the reference's ``resid[k]``), then adapter layers ``>= k``. Both
        halves run as one batch through layers ``k..L-1``.
        """
        L = self.n_layers
        if not 0 <= k <= L:
            raise ConfigError(f"bridge cutoff {k} outside 0..{L}")
        n = resid_adapt.shape[0]
        x = torch.cat([resid_adapt, resid_ref], dim=0)

        def split(layer: int, x: torch.Tensor, m: torch.Tensor):
            ref_out = self.mlp_ref(layer, m[:n])
            ad_out, _ = self.mlp_adapt(layer, x[n:], m[n:])
            return torch.cat([ref_out, ad_out], dim=0), None

        if k < L:
            res, _ = self.run_layers(x, k, L, split)
            x = res[-1]
        logits = self.head(x)
        return logits[:n], logits[n:]


# ---------------------------------------------------------------------- hooks
def adapter_hooks(adapters: AdapterSet, mask: FeatureMask | None = None,
                  layers: Sequence[int] | None = None,
                  record: dict[int, list[torch.Tensor]] | None = None,
                  where: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
                  state: Any = None) -> list[tuple[str, Callable]]:
    """``fwd_hooks`` turning the hybrid HookedTransformer into the adapter model.

    For each layer (``layers``, default all): a hook on ``blocks.{l}.ln2.hook_normalized``
    keeps ``x`` (normalised MLP input, before the gain), and a hook on
    ``blocks.{l}.hook_mlp_out`` adds
    ``adapter_l(x)``. ``mask`` edits feature activations; with ``where(state, act) ->
    bool [b, pos]`` the mask applies only at those positions (elsewhere the features are
    unedited; see :func:`interp.steering.at_tokens`). ``record``, if given, receives each
    layer's (edited) activations ``[b, pos, d_sae]`` per forward pass (detached).
    Use as ``generate(hybrid, prompts, fwd_hooks=adapter_hooks(...))``; an empty
    ``layers`` list gives the hybrid (adapters off).
    """
    layers = list(range(adapters.n_layers)) if layers is None else list(layers)
    slot: dict[int, torch.Tensor] = {}
    hooks: list[tuple[str, Callable]] = []
    for layer in layers:
        ad = adapters[layer]

        def keep_x(act, hook=None, _l=layer):
            slot[_l] = act
            return act

        def add(act, hook=None, _l=layer, _a=ad):
            x = slot.pop(_l)
            f = _a.encode(x.to(_a.W_enc.dtype))
            if mask is not None:
                fm = mask.apply(_l, f)
                if where is not None:
                    m = where(state, act).to(f.device).unsqueeze(-1)
                    fm = torch.where(m, fm, f)
                f = fm
            if record is not None:
                record.setdefault(_l, []).append(f.detach())
            return act + _a.decode(f).to(act.dtype)

        hooks.append((MLP_IN_HOOK.format(layer=layer), keep_x))
        hooks.append((MLP_OUT_HOOK.format(layer=layer), add))
    return hooks
