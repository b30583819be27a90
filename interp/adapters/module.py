"""The adapter: a sparse ReLU branch added beside one layer's (base) MLP.

Per layer ``l``, with ``x`` the normalised MLP input (``blocks.{l}.ln2.hook_normalized``:
after the pre-MLP norm, before its learned gain; see :mod:`interp.adapters.model`)::

    y_l(x) = MLP_base,l(x) + W_dec,l^T · ReLU(W_enc,l^T · x + b_enc,l) + b_dec,l

Weights use the SAELens layout so that saving is a plain copy: ``W_enc [d_in, d_sae]``,
``b_enc [d_sae]``, ``W_dec [d_sae, d_out]``, ``b_dec [d_out]`` (``d_in = d_out =
d_model``). Initialisation: ``W_enc ~ U(±1/sqrt(d_model))``, ``b_enc = 0``, ``W_dec = 0``,
``b_dec = 0``, so a fresh adapter is a no-op.

:class:`FeatureMask` edits feature activations: per layer ``f' = f * scale + value``
(keep: scale 1, value 0; zero: scale 0, value 0; clamp to ``v``: scale 0, value ``v``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch
from torch import nn

from ..errors import ConfigError


class Adapter(nn.Module):
    """One layer's sparse branch (see the module docstring for shapes and init)."""

    def __init__(self, d_in: int, d_sae: int, d_out: int | None = None,
                 generator: torch.Generator | None = None,
                 device: torch.device | str | None = None):
        super().__init__()
        d_out = d_in if d_out is None else d_out
        if d_in <= 0 or d_sae <= 0 or d_out <= 0:
            raise ConfigError(f"adapter sizes must be positive (d_in={d_in}, d_sae={d_sae})")
        self.d_in, self.d_sae, self.d_out = d_in, d_sae, d_out
        bound = 1.0 / math.sqrt(d_in)
        w = torch.rand(d_in, d_sae, generator=generator) * (2 * bound) - bound
        self.W_enc = nn.Parameter(w.to(device) if device is not None else w)
        self.b_enc = nn.Parameter(torch.zeros(d_sae, device=device))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_out, device=device))
        self.b_dec = nn.Parameter(torch.zeros(d_out, device=device))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations ``f = ReLU(x @ W_enc + b_enc)``: ``[..., d_in] -> [..., d_sae]``."""
        return torch.relu(x @ self.W_enc.to(x.dtype) + self.b_enc.to(x.dtype))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """``f @ W_dec + b_dec``: ``[..., d_sae] -> [..., d_out]``."""
        return f @ self.W_dec.to(f.dtype) + self.b_dec.to(f.dtype)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(branch output [..., d_out], feature activations [..., d_sae])``."""
        f = self.encode(x)
        return self.decode(f), f

    def decoder_norms(self) -> torch.Tensor:
        """``||W_dec[i, :]||_2`` per feature, ``[d_sae]`` (differentiable)."""
        return self.W_dec.norm(dim=-1)


class AdapterSet(nn.Module):
    """One :class:`Adapter` per layer (``adapters[l]`` sits at layer ``l``)."""

    def __init__(self, n_layers: int, d_model: int, d_sae: int, seed: int = 0,
                 device: torch.device | str | None = None):
        super().__init__()
        g = torch.Generator().manual_seed(int(seed))
        self.layers = nn.ModuleList(
            [Adapter(d_model, d_sae, generator=g, device=device) for _ in range(n_layers)])
        self.n_layers, self.d_model, self.d_sae = n_layers, d_model, d_sae

    def __getitem__(self, layer: int) -> Adapter:
        return self.layers[layer]

    def __len__(self) -> int:
        return self.n_layers

    def tensors(self) -> dict[str, torch.Tensor]:
        """Flat ``{"{l}.W_enc": ...}`` dict (detached), e.g. for hashing or checkpoints."""
        return {f"{i}.{k}": v.detach() for i, a in enumerate(self.layers)
                for k, v in a.state_dict().items()}

    def load_tensors(self, tensors: Mapping[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for i, a in enumerate(self.layers):
                for k, p in a.named_parameters():
                    name = f"{i}.{k}"
                    if name not in tensors:
                        raise ConfigError(f"adapter tensors lack {name}")
                    t = tensors[name]
                    if tuple(t.shape) != tuple(p.shape):
                        raise ConfigError(
                            f"{name} has shape {tuple(t.shape)}, expected {tuple(p.shape)}")
                    p.copy_(t.to(p.device, p.dtype))


@dataclass
class FeatureMask:
    """Per-layer edits of feature activations: ``f' = f * scale + value``.

    ``scale`` / ``value`` map a layer to a ``[d_sae]`` tensor; layers not listed are
    untouched. Build with :meth:`zero`, :meth:`clamp` and :meth:`keep_only`.
    """

    d_sae: int
    scale: dict[int, torch.Tensor] = field(default_factory=dict)
    value: dict[int, torch.Tensor] = field(default_factory=dict)

    def _ensure(self, layer: int) -> None:
        if layer not in self.scale:
            self.scale[layer] = torch.ones(self.d_sae)
            self.value[layer] = torch.zeros(self.d_sae)

    def _idx(self, features: Iterable[int]) -> torch.Tensor:
        idx = torch.as_tensor(list(features), dtype=torch.long)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.d_sae):
            raise ConfigError(f"feature index out of range 0..{self.d_sae - 1}")
        return idx

    def zero(self, layer: int, features: Iterable[int]) -> FeatureMask:
        """Ablate: the features' activations become 0."""
        self._ensure(layer)
        i = self._idx(features)
        self.scale[layer][i] = 0.0
        self.value[layer][i] = 0.0
        return self

    def clamp(self, layer: int, features: Iterable[int], value: float) -> FeatureMask:
        """The features' activations are set to ``value`` (at every masked position)."""
        self._ensure(layer)
        i = self._idx(features)
        self.scale[layer][i] = 0.0
        self.value[layer][i] = float(value)
        return self

    def keep_only(self, layer: int, features: Iterable[int]) -> FeatureMask:
        """Zero every feature of the layer except ``features``."""
        self._ensure(layer)
        i = self._idx(features)
        keep = torch.zeros(self.d_sae)
        keep[i] = 1.0
        self.scale[layer] = keep
        self.value[layer] = torch.zeros(self.d_sae)
        return self

    def apply(self, layer: int, f: torch.Tensor) -> torch.Tensor:
        """Edited activations for ``layer`` (``f`` unchanged when the layer has no edit)."""
        if layer not in self.scale:
            return f
        s = self.scale[layer].to(f.device, f.dtype)
        v = self.value[layer].to(f.device, f.dtype)
        return f * s + v

    def to_json(self) -> dict:
        """Sparse JSON form: per layer, the indices that are not plain "keep"."""
        out = {}
        for layer in sorted(self.scale):
            s, v = self.scale[layer], self.value[layer]
            changed = ((s != 1) | (v != 0)).nonzero().flatten().tolist()
            out[str(layer)] = {str(i): [float(s[i]), float(v[i])] for i in changed}
        return {"d_sae": self.d_sae, "layers": out}
