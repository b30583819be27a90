"""Feature sources of an attribution graph: adapters or plain per-layer transcoders.

A *replacement* says, per layer ``l``, how the MLP output at each position is written
as graph nodes::

    mlp_out_l = [J~_l · x]  +  sum_f a_f · W_dec[f]  +  b_dec  +  err_l
                 (kept MLP)     (feature nodes)                   (error node)

* **adapters** (``keep_mlp=True``): the base model's MLP stays in the model and is
  *linearised* (its paths are folded into edges, see :mod:`interp.attribution.linear`);
  the adapter features are the nodes. This is the adapter model of
  :mod:`interp.adapters.model`: reasoner attention/norms/embeddings + base MLPs +
  adapters.
* **transcoders** (``keep_mlp=False``): the MLP is replaced by the transcoder; no
  gradient flows through the MLP, only through feature nodes (circuit-tracer's local
  replacement model).

``err_l`` is whatever the true model's MLP output at that position is and the
replacement does not produce (constant, no incoming edges): the transcoder's
reconstruction error, or for adapters the reasoner MLP's difference to base + adapter
(graphs of the reasoner) plus the linearisation's remainder (the MLP biases).

Feature activations: ``a = act(W_enc^T · site(x) + b_enc)`` with ReLU (optionally a
JumpReLU threshold). The encoder reads one of three sites of layer ``l``:

* ``normalized``: ``blocks.{l}.ln2.hook_normalized`` (after the pre-MLP norm, before
  its learned gain; the adapters' site);
* ``ln2_out``: the MLP's own input (after the gain; circuit-tracer's ``mlp.hook_in``);
* ``resid_mid``: ``blocks.{l}.hook_resid_mid`` (before the norm).

Decoders write to ``blocks.{l}.hook_mlp_out`` (the residual stream).

**Transcoders on a slice of layers.** :func:`transcoder_replacement` accepts folders for
only some layers (``n_layers`` gives the model's depth). A layer without a transcoder is
an empty dictionary (:meth:`FeatureLayer.empty`: no features, ``b_dec = 0``), so its
whole MLP output is that layer's error node at each position: a fixed path, constant in
the frozen model like every error node (no gradient flows through that MLP). Every edge
is still exactly the effect of zeroing its source in the frozen model; only the graph's
completeness is lower, by what those MLPs write. ``Replacement.covered`` lists the layers
that have features.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import ConfigError

SITES = ("normalized", "ln2_out", "resid_mid")

# SAELens hook names (or circuit-tracer's) -> our encoder site
_SITE_OF_HOOK = {
    "ln2.hook_normalized": "normalized",
    "mlp.hook_in": "ln2_out",
    "hook_resid_mid": "resid_mid",
    "hook_mlp_in": "resid_mid",
}


@dataclass
class FeatureLayer:
    """One layer's sparse dictionary (SAELens layout): ``W_enc [d, n]``, ``b_enc [n]``,
    ``W_dec [n, d]``, ``b_dec [d]``; ``threshold [n]`` for JumpReLU (None: ReLU)."""

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    site: str = "normalized"
    threshold: torch.Tensor | None = None

    def __post_init__(self):
        if self.site not in SITES:
            raise ConfigError(f"unknown encoder site {self.site!r}; choose from {SITES}")
        d, n = self.W_enc.shape
        if tuple(self.W_dec.shape) != (n, d) or self.b_enc.shape[0] != n:
            raise ConfigError(
                f"transcoder shapes do not fit: W_enc {tuple(self.W_enc.shape)}, W_dec "
                f"{tuple(self.W_dec.shape)}, b_enc {tuple(self.b_enc.shape)}")

    @property
    def n_features(self) -> int:
        return int(self.W_enc.shape[1])

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations ``[..., n]`` of the site values ``x [..., d]``."""
        return x @ self.W_enc.to(x.dtype) + self.b_enc.to(x.dtype)

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pre(x)
        a = torch.relu(p)
        if self.threshold is not None:
            a = torch.where(p > self.threshold.to(p.dtype), a, torch.zeros_like(a))
        return a

    @classmethod
    def empty(cls, d_model: int, dtype: torch.dtype = torch.float32) -> FeatureLayer:
        """A layer without features (no transcoder there): its MLP output is all error."""
        return cls(torch.zeros(d_model, 0, dtype=dtype), torch.zeros(0, dtype=dtype),
                   torch.zeros(0, d_model, dtype=dtype), torch.zeros(d_model, dtype=dtype))

    def to(self, device=None, dtype=None) -> FeatureLayer:
        def mv(t):
            return None if t is None else t.to(device=device, dtype=dtype)
        return FeatureLayer(mv(self.W_enc), mv(self.b_enc), mv(self.W_dec), mv(self.b_dec),
                            self.site, mv(self.threshold))


@dataclass
class Replacement:
    """Per-layer feature dictionaries plus how the MLP is treated (module docstring).

    ``mlp_model``: the HookedTransformer whose MLP modules are the kept, linearised
    MLPs (the hybrid for adapters); None for transcoders. ``source`` describes the
    dictionaries (artifact key, kind, files) for provenance and labels.
    """

    layers: list[FeatureLayer]
    keep_mlp: bool
    mlp_model: Any = None
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.keep_mlp and self.mlp_model is None:
            raise ConfigError("a replacement that keeps the MLPs needs the model they come from")
        if not self.layers:
            raise ConfigError("a replacement needs at least one layer")

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def kind(self) -> str:
        return "adapters" if self.keep_mlp else "transcoders"

    @property
    def key(self) -> str:
        return str(self.source.get("key", ""))

    def n_features(self) -> int:
        return sum(fl.n_features for fl in self.layers)

    @property
    def covered(self) -> list[int]:
        """The layers that have features (the others' MLP output is all error)."""
        return [i for i, fl in enumerate(self.layers) if fl.n_features > 0]

    def check_model(self, model: Any) -> None:
        """Raise ConfigError unless the dictionaries fit ``model``'s depth and width."""
        cfg = getattr(model, "hooked", model).cfg
        if cfg.n_layers != self.n_layers:
            raise ConfigError(
                f"the {self.kind} have {self.n_layers} layers but the model has {cfg.n_layers}")
        for i, fl in enumerate(self.layers):
            if fl.W_enc.shape[0] != cfg.d_model:
                raise ConfigError(
                    f"layer {i} {self.kind} read width {fl.W_enc.shape[0]}, the model's "
                    f"d_model is {cfg.d_model}")


# ---------------------------------------------------------------------- builders
def adapter_replacement(adapters: Any, hybrid: Any, key: str = "",
                        source: dict[str, Any] | None = None) -> Replacement:
    """Adapters (:class:`interp.adapters.module.AdapterSet`) on the hybrid's base MLPs."""
    layers = []
    for a in adapters.layers:
        layers.append(FeatureLayer(a.W_enc.detach(), a.b_enc.detach(), a.W_dec.detach(),
                                   a.b_dec.detach(), site="normalized"))
    return Replacement(layers, keep_mlp=True, mlp_model=getattr(hybrid, "hooked", hybrid),
                       source={"kind": "adapters", "key": key, **(source or {})})


def _site_of_hook(hook_name: str, layer: int) -> str:
    prefix = f"blocks.{layer}."
    if not hook_name.startswith(prefix):
        raise ConfigError(f"transcoder hook {hook_name!r} is not in layer {layer}")
    rest = hook_name[len(prefix):]
    if rest not in _SITE_OF_HOOK:
        raise ConfigError(
            f"transcoder input hook {hook_name!r} is not supported; use one of "
            + ", ".join(f"blocks.{{l}}.{k}" for k in _SITE_OF_HOOK))
    return _SITE_OF_HOOK[rest]


def transcoder_layer_from_folder(folder: str | Path) -> tuple[int, FeatureLayer]:
    """One SAELens transcoder folder (``cfg.json`` + ``sae_weights.safetensors``) as
    ``(layer, FeatureLayer)``; the layer and input site come from the config's hooks."""
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        cfg = json.loads((folder / "cfg.json").read_text())
        w = load_file(str(folder / "sae_weights.safetensors"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{folder} is not a readable SAELens transcoder folder: {e}") from e
    meta = cfg.get("metadata") or {}
    hook_in = meta.get("hook_name") or cfg.get("hook_name")
    hook_out = meta.get("hook_name_out") or cfg.get("hook_name_out")
    layer = meta.get("hook_layer", cfg.get("hook_layer"))
    if hook_in is None or layer is None:
        raise ConfigError(f"{folder}/cfg.json names no input hook or layer")
    layer = int(layer)
    if hook_out not in (None, f"blocks.{layer}.hook_mlp_out", f"blocks.{layer}.mlp.hook_out"):
        raise ConfigError(f"transcoder output hook {hook_out!r} is not the layer's MLP output")
    if "W_skip" in w:
        raise ConfigError("skip transcoders are not supported yet")
    arch = cfg.get("architecture", "transcoder")
    thr = w.get("threshold") if "jumprelu" in str(arch).lower() else None
    missing = [k for k in ("W_enc", "b_enc", "W_dec", "b_dec") if k not in w]
    if missing:
        raise ConfigError(f"{folder} lacks tensors {missing}")
    return layer, FeatureLayer(w["W_enc"].float(), w["b_enc"].float(), w["W_dec"].float(),
                               w["b_dec"].float(), site=_site_of_hook(hook_in, layer),
                               threshold=None if thr is None else thr.float())


def transcoder_replacement(folders: Sequence[str | Path], key: str = "",
                           source: dict[str, Any] | None = None,
                           n_layers: int | None = None) -> Replacement:
    """Plain per-layer transcoders of one model, one SAELens folder per layer.

    ``n_layers`` (the model's depth): transcoders may cover any subset of the layers; a
    layer without one gets :meth:`FeatureLayer.empty` (module docstring). Without it the
    folders must cover every layer from 0 to the highest one."""
    by_layer: dict[int, FeatureLayer] = {}
    names: dict[int, str] = {}
    for f in folders:
        layer, fl = transcoder_layer_from_folder(f)
        if layer in by_layer:
            raise ConfigError(f"two transcoders for layer {layer}")
        by_layer[layer] = fl
        names[layer] = Path(f).name
    if not by_layer:
        raise ConfigError("no transcoder folders given")
    if n_layers is None:
        n = max(by_layer) + 1
        gaps = [i for i in range(n) if i not in by_layer]
        if gaps:
            raise ConfigError(f"transcoders must cover every layer from 0; missing {gaps} "
                              "(give the model's depth to leave layers without one)")
    else:
        n = int(n_layers)
        beyond = sorted(i for i in by_layer if not 0 <= i < n)
        if beyond:
            raise ConfigError(f"transcoders for layers {beyond} but the model has {n} "
                              f"layers (0..{n - 1})")
    widths = {fl.W_enc.shape[0] for fl in by_layer.values()}
    if len(widths) > 1:
        raise ConfigError(f"the transcoders read different widths {sorted(widths)}")
    d = widths.pop()
    layers = [by_layer[i] if i in by_layer else FeatureLayer.empty(d) for i in range(n)]
    return Replacement(layers, keep_mlp=False,
                       source={"kind": "transcoders", "key": key,
                               "folders": [names[i] for i in sorted(names)],
                               "layers": sorted(by_layer), **(source or {})})
