"""One recorded forward pass: everything the linear model of a prompt needs.

:func:`record` runs the *true* model once (a HookedTransformer, with optional extra
forward hooks, e.g. the adapters that turn the hybrid into the adapter model) and keeps,
per layer, only what is small: the rotated queries and keys (patterns are recomputed
from them in blocks), the norm scales, the MLP input where the MLP is kept, the active
features (positions, indices, activations) and the error vectors. Nothing of size
``P x P`` is stored.

Conventions: ``tokens [P]`` of one prompt; ``embed [P, d]`` is
``blocks.0.hook_resid_pre`` (token + position embedding: the token nodes' vectors);
position 0 holds no feature nodes when ``skip_bos`` (the default), and its error
vector is zero: with causal attention the BOS position computes the same thing for
every prompt, so its MLP output is a constant like a bias (circuit-tracer's convention;
BOS is an attention sink whose activations dictionaries model badly anyway).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from ..errors import ConfigError
from .linear import FrozenNorm, LinearAttention, LinearMLP, frozen_norm
from .replacement import Replacement

PATTERN_CHECK_ROWS = 16


@dataclass
class LayerRecord:
    """What one layer contributes to the linear model (module docstring)."""

    attn: LinearAttention
    ln1: FrozenNorm
    ln1_post: FrozenNorm | None
    ln2: FrozenNorm                       # the MLP input norm (with its gain)
    mlp: LinearMLP | None                 # the kept, linearised MLP (None: replaced)
    ln2_post: FrozenNorm | None           # post-norm of the kept MLP's output
    feat_pos: torch.Tensor                # [n] positions of active features
    feat_idx: torch.Tensor                # [n] feature indices
    feat_act: torch.Tensor                # [n] activations
    error: torch.Tensor                   # [P, d]
    site: str                             # encoder site of this layer's features


@dataclass
class Recording:
    """A recorded prompt (see the module docstring)."""

    tokens: torch.Tensor                  # [P]
    embed: torch.Tensor                   # [P, d]
    layers: list[LayerRecord]
    ln_final: FrozenNorm
    W_U: torch.Tensor                     # [d, vocab]
    logits_at: dict[int, torch.Tensor]    # position -> logits [vocab] (float32, CPU)
    replacement: Replacement
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_pos(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_model(self) -> int:
        return int(self.embed.shape[1])

    def logits(self, pos: int) -> torch.Tensor:
        """The true model's logits at ``pos`` (negative counts from the end)."""
        p = pos % self.n_pos
        if p not in self.logits_at:
            raise ConfigError(f"logits at position {p} were not recorded")
        return self.logits_at[p]

    def site_norm(self, layer: int) -> FrozenNorm | None:
        """The linear map from ``resid_mid`` to the layer's encoder site (None: identity)."""
        lr = self.layers[layer]
        if lr.site == "resid_mid":
            return None
        if lr.site == "normalized":
            return lr.ln2.without_gain()
        return lr.ln2


def _norm_scale(cache: dict, name: str) -> torch.Tensor:
    return cache[name].reshape(-1)


def norm_scale(module: Any, x: torch.Tensor) -> torch.Tensor:
    """The scale a TransformerLens norm module computes for ``x [P, d]`` (``[P]``)."""
    if type(module).__name__.startswith("LayerNorm"):
        x = x - x.mean(-1, keepdim=True)
    return (x.pow(2).mean(-1) + module.eps).sqrt()


@torch.no_grad()
def record(model: Any, tokens: torch.Tensor | Sequence[int], replacement: Replacement,
           fwd_hooks: Sequence[tuple[str, Callable]] = (), skip_bos: bool = True,
           check_patterns: bool = True, dtype: torch.dtype = torch.float32,
           logit_positions: Sequence[int] | None = None) -> Recording:
    """Run ``model`` on one prompt and record its linear model (module docstring).

    ``model``: a HookedTransformer or a ``LoadedModel``; ``fwd_hooks`` run before the
    recording hooks on the same hook points (so the recorded MLP output includes, e.g.,
    an adapter added at ``hook_mlp_out``). Logits are kept at ``logit_positions``
    (default: every position of a short prompt, else the last one).
    """
    hooked = getattr(model, "hooked", model)
    cfg = hooked.cfg
    replacement.check_model(hooked)
    from ..adapters.model import check_supported

    check_supported(cfg)
    toks = torch.as_tensor(tokens, dtype=torch.long).flatten()
    if toks.numel() == 0:
        raise ConfigError("the prompt is empty")
    if toks.numel() > cfg.n_ctx:
        raise ConfigError(f"the prompt has {toks.numel()} tokens; the model's context is "
                          f"{cfg.n_ctx}")
    dev = next(hooked.parameters()).device
    rotary = cfg.positional_embedding_type == "rotary"
    post = bool(getattr(cfg, "use_normalization_before_and_after", False))
    cache: dict[str, torch.Tensor] = {}
    mlp_in: dict[int, torch.Tensor] = {}

    def keep(name):
        def hook(act, hook=None):
            cache[name] = act[0].detach()
            return act
        return hook

    def keep_pattern(name):
        def hook(act, hook=None):
            cache[name] = act[0, :, -PATTERN_CHECK_ROWS:].detach().clone()
            return act
        return hook

    names = ["blocks.0.hook_resid_pre", "ln_final.hook_scale"]
    for layer in range(cfg.n_layers):
        b = f"blocks.{layer}."
        names += [b + "ln1.hook_scale", b + "ln2.hook_scale", b + "ln2.hook_normalized",
                  b + "hook_resid_mid", b + "hook_mlp_out",
                  b + ("attn.hook_rot_q" if rotary else "attn.hook_q"),
                  b + ("attn.hook_rot_k" if rotary else "attn.hook_k")]
        if post:
            names += [b + "ln1_post.hook_scale", b + "ln2_post.hook_scale"]
    hooks = list(fwd_hooks) + [(n, keep(n)) for n in names]
    if check_patterns:
        hooks += [(f"blocks.{layer}.attn.hook_pattern", keep_pattern(f"pattern.{layer}"))
                  for layer in range(cfg.n_layers)]
    handles = []

    def grab_mlp_in(layer):
        def pre_hook(module, args):
            mlp_in[layer] = args[0][0].detach()
        return pre_hook

    from ..serving import model_lock

    with contextlib.ExitStack() as stack:
        # one recording at a time per model: the MLP pre-hooks below are plain torch
        # hooks, which another thread's forward pass on a shared model would also fire
        stack.enter_context(model_lock(hooked))
        for layer, blk in enumerate(hooked.blocks):
            handles.append(blk.mlp.register_forward_pre_hook(grab_mlp_in(layer)))
        stack.callback(lambda: [h.remove() for h in handles])
        logits = hooked.run_with_hooks(toks[None].to(dev), fwd_hooks=hooks)[0]

    P = toks.numel()
    layers: list[LayerRecord] = []
    for layer, blk in enumerate(hooked.blocks):
        b = f"blocks.{layer}."
        fl = replacement.layers[layer].to(dev, dtype)
        ln1 = frozen_norm(blk.ln1, _norm_scale(cache, b + "ln1.hook_scale"), dtype)
        ln2 = frozen_norm(blk.ln2, _norm_scale(cache, b + "ln2.hook_scale"), dtype)
        ln1_post = frozen_norm(blk.ln1_post, _norm_scale(cache, b + "ln1_post.hook_scale"),
                               dtype) if post else None
        q = cache[b + ("attn.hook_rot_q" if rotary else "attn.hook_q")]
        k = cache[b + ("attn.hook_rot_k" if rotary else "attn.hook_k")]
        attn = LinearAttention(blk.attn, q, k, dtype)
        if check_patterns:
            _check_pattern(attn, cache[f"pattern.{layer}"], P, layer)
        site = {"normalized": cache[b + "ln2.hook_normalized"],
                "ln2_out": mlp_in[layer],
                "resid_mid": cache[b + "hook_resid_mid"]}[fl.site].to(dtype)
        acts = fl.activations(site)  # [P, n]
        if skip_bos:
            acts[0] = 0.0
        pos, idx = acts.nonzero(as_tuple=True)
        recon = acts @ fl.W_dec + fl.b_dec
        x_mlp = mlp_in[layer].to(dtype)
        kept_mlp, ln2_post = None, None
        if replacement.keep_mlp:
            kmlp = replacement.mlp_model.blocks[layer].mlp
            kept_mlp = LinearMLP(kmlp, x_mlp, dtype)
            lin = kept_mlp.apply(x_mlp)
            if post:
                raw = kmlp(x_mlp.to(next(kmlp.parameters()).dtype)).to(dtype)
                pnorm = replacement.mlp_model.blocks[layer].ln2_post
                ln2_post = frozen_norm(pnorm, norm_scale(pnorm, raw), dtype)
                lin = ln2_post.apply(lin)
            recon = recon + lin
        error = cache[b + "hook_mlp_out"].to(dtype) - recon
        if skip_bos:
            error[0] = 0.0
        layers.append(LayerRecord(attn, ln1, ln1_post, ln2, kept_mlp, ln2_post,
                                  pos, idx, acts[pos, idx], error, fl.site))
    W_U = hooked.W_U.detach().to(dtype)
    ln_final = frozen_norm(hooked.ln_final, _norm_scale(cache, "ln_final.hook_scale"), dtype)
    if logit_positions is None:
        logit_positions = range(P) if P * logits.shape[-1] <= 1 << 22 else [P - 1]
    logits_at = {int(p) % P: logits[int(p) % P].detach().float().cpu()
                 for p in logit_positions}
    return Recording(tokens=toks.cpu(), embed=cache["blocks.0.hook_resid_pre"].to(dtype),
                     layers=layers, ln_final=ln_final, W_U=W_U,
                     logits_at=logits_at, replacement=replacement,
                     meta={"skip_bos": skip_bos})


def _check_pattern(attn: LinearAttention, recorded: torch.Tensor, P: int, layer: int) -> None:
    """The recomputed pattern rows equal the ones the forward pass used."""
    n = recorded.shape[1]
    mine = attn.pattern(P - n, P)
    err = float((mine - recorded.to(mine.dtype)).abs().max())
    if err > 1e-3:
        raise ConfigError(
            f"layer {layer}: the attention pattern recomputed from queries and keys differs "
            f"from the model's by {err:.2g}; this attention variant is not supported")
