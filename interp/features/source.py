"""Feature sources: where feature activations come from.

One small interface (:class:`FeatureSource`) serves both kinds of features the explorer
shows:

* :class:`AdapterSource`: the transcoder adapters of an ``adapters`` artifact on the
  reasoner-backbone hybrid (:class:`interp.adapters.model.AdapterModel`); the features
  are part of the model (the adapter model's MLP output includes their decoder writes);
* :class:`TranscoderSource`: plain per-layer transcoders of one model (SAELens folders,
  ``sae_lens.Transcoder.load_from_disk``; ``cfg.json`` names ``hook_name`` (input) and
  ``hook_name_out`` (output)). They only *read* the model; an edit adds the change of the
  edited features' decoder writes to the output hook.

Either way a feature is ``(layer, index)``; an *edit* sets chosen features to a value
(0 = ablate, v = clamp): the output hook receives ``(f' - f) @ W_dec`` on top of what it
had, which for adapters is exactly running the adapter model with the edited
activations. Per-row edits (:class:`RowEdit`, one feature per batch row) let one forward
pass measure many features' ablation effects.

Logit lens convention: :meth:`FeatureSource.unembed` is ``diag(g) · W_U`` with ``g`` the
final norm's gain (TransformerLens' ``fold_ln`` would put it there; the weights here are
unprocessed), so ``W_dec[i] @ unembed()`` are the logits the direction writes, up to the
norm's positive scale.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..errors import ArtifactError, ConfigError
from ..store import Store

Hook = tuple[str, Callable[..., Any]]


@dataclass
class RowEdit:
    """Per-row feature edit at one layer: row ``b`` sets feature ``features[b]`` to
    ``values[b]`` at every position (``features[b] = -1``: row unedited)."""

    layer: int
    features: torch.Tensor  # [b] long
    values: torch.Tensor    # [b] float


def _delta_for_rows(f: torch.Tensor, edit: RowEdit, W_dec: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(edited f, (f' - f) @ W_dec)`` for a :class:`RowEdit` (``f [b, pos, d_sae]``)."""
    feats = edit.features.to(f.device)
    rows = (feats >= 0).nonzero().flatten()
    delta = torch.zeros(*f.shape[:2], W_dec.shape[1], dtype=f.dtype, device=f.device)
    if rows.numel() == 0:
        return f, delta
    fi = feats[rows]
    cur = f[rows, :, fi]  # [n, pos] (advanced indices around a slice go first)
    new = edit.values.to(f.device, f.dtype)[rows][:, None].expand_as(cur)
    delta[rows] = (new - cur)[..., None] * W_dec[fi].to(f.dtype)[:, None, :]
    f = f.clone()
    f[rows, :, fi] = new
    return f, delta


class FeatureSource:
    """Interface of a feature source (see the module docstring).

    Attributes: ``key`` (stable identity, used to key artifacts and labels), ``kind``
    (``"adapters"`` | ``"transcoders"``), ``layers`` (model layers with features, in
    order), ``d_sae`` (``{layer: n_features}``), ``tokenizer``, ``model`` (the
    HookedTransformer that :func:`interp.generation.generate` runs, with
    :meth:`edit_hooks`), ``device``.
    """

    key: str
    kind: str
    layers: list[int]
    d_sae: dict[int, int]
    tokenizer: Any
    model: Any
    device: torch.device

    # -- shapes --------------------------------------------------------------------
    @property
    def n_features(self) -> int:
        return sum(self.d_sae[layer] for layer in self.layers)

    def offsets(self) -> dict[int, int]:
        """Global index of each layer's feature 0 (features numbered layer by layer)."""
        out, o = {}, 0
        for layer in self.layers:
            out[layer] = o
            o += self.d_sae[layer]
        return out

    # -- to implement ----------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, edit: RowEdit | None = None,
                need_logits: bool = True) -> tuple[torch.Tensor | None, dict[int, torch.Tensor]]:
        """``(logits [b, pos, vocab] or None, {layer: acts [b, pos, d_sae]})``."""
        raise NotImplementedError

    def decoder(self, layer: int) -> torch.Tensor:
        """``W_dec [d_sae, d_model]`` of ``layer`` (float32, CPU)."""
        raise NotImplementedError

    def unembed(self) -> torch.Tensor:
        """``diag(g) · W_U [d_model, vocab]`` (float32, CPU; see the module docstring)."""
        raise NotImplementedError

    def edit_hooks(self, edits: dict[int, dict[int, float]], where: Any = None,
                   state: Any = None) -> list[Hook]:
        """``fwd_hooks`` for :attr:`model` that run the source's model with features set:
        ``edits = {layer: {feature: value}}`` (0 ablates). ``where`` (see
        :func:`interp.steering.at_tokens`) limits the edit to positions. With empty
        ``edits`` the hooks give the unedited model."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        raise NotImplementedError


def _final_gain_unembed(hooked: Any) -> torch.Tensor:
    W_U = hooked.W_U.detach().float().cpu()
    ln = getattr(hooked, "ln_final", None)
    w = getattr(ln, "w", None) if ln is not None else None
    if w is not None:
        W_U = w.detach().float().cpu()[:, None] * W_U
    return W_U


def _mask_from(edits: dict[int, dict[int, float]], d_sae: int, layer: int):
    from ..adapters.module import FeatureMask

    m = FeatureMask(d_sae)
    for f, v in edits.get(layer, {}).items():
        m.clamp(layer, [int(f)], float(v))
    return m


class AdapterSource(FeatureSource):
    """The adapters of an ``adapters`` artifact on their hybrid backbone."""

    kind = "adapters"

    def __init__(self, art: Any, model: Any, base: Any = None, reasoner: Any = None):
        self.art, self.am = art, model
        self.base, self.reasoner = base, reasoner
        self.key = art.key
        self.layers = list(range(model.n_layers))
        self.d_sae = {layer: model.adapters.d_sae for layer in self.layers}
        self.tokenizer = getattr(reasoner, "tokenizer", None) or model.hybrid.tokenizer
        self.model = model.hybrid
        self.device = model.device

    @classmethod
    def from_artifact(cls, art: Any, device: str | torch.device = "auto") -> AdapterSource:
        from ..adapters.evaluate import load_adapter_model

        model, base, reasoner = load_adapter_model(art, device)
        model.eval()
        return cls(art, model, base, reasoner)

    @torch.no_grad()
    def forward(self, tokens, edit=None, need_logits=True):
        am = self.am
        if edit is None and need_logits:
            tr = am(tokens.to(self.device), "adapt")
            return tr.logits, dict(enumerate(tr.acts))
        if edit is None:
            # without logits nothing reads the last layer's MLP output: its adapters are
            # encoded and the base MLP and the decoder are skipped
            last, adapt = am.n_layers - 1, am.mlp_fn("adapt")

            def mlp_or_encode(layer, x, m):
                if layer < last:
                    return adapt(layer, x, m)
                return torch.zeros((), dtype=m.dtype, device=m.device), \
                    am.adapters[layer].encode(x)

            r0 = am.embed(tokens.to(self.device))
            _, acts = am.run_layers(r0, 0, am.n_layers, mlp_or_encode)
            return None, dict(enumerate(acts))

        def mlp(layer, x, m):
            out, f = am.mlp_adapt(layer, x, m)
            if layer == edit.layer:
                f, delta = _delta_for_rows(f, edit, am.adapters[layer].W_dec)
                out = out + delta.to(out.dtype)
            return out, f

        r0 = am.embed(tokens.to(self.device))
        res, acts = am.run_layers(r0, 0, am.n_layers, mlp)
        logits = am.head(res[-1]) if need_logits else None
        return logits, dict(enumerate(acts))

    def decoder(self, layer):
        return self.am.adapters[layer].W_dec.detach().float().cpu()

    def unembed(self):
        return _final_gain_unembed(self.am.hybrid)

    def edit_hooks(self, edits, where=None, state=None):
        from ..adapters.model import adapter_hooks
        from ..adapters.module import FeatureMask

        mask = FeatureMask(self.am.adapters.d_sae)
        for layer, fv in edits.items():
            for f, v in fv.items():
                mask.clamp(int(layer), [int(f)], float(v))
        return adapter_hooks(self.am.adapters, mask if edits else None, where=where,
                             state=state)

    def describe(self):
        return {"kind": self.kind, "key": self.key, "d_sae": self.am.adapters.d_sae,
                "n_layers": self.am.n_layers,
                "pair": {k: v.get("id") for k, v in self.art.meta.get("pair", {}).items()},
                "pair_hashes": self.art.config.get("pair_hashes")}


_LAYER_RE = re.compile(r"blocks\.(\d+)\.")


class TranscoderSource(FeatureSource):
    """Per-layer SAELens transcoders reading and writing hooks of one model."""

    kind = "transcoders"

    def __init__(self, model: Any, transcoders: dict[int, Any], key: str | None = None,
                 paths: Sequence[str] | None = None):
        if not transcoders:
            raise ConfigError("no transcoders given")
        self.loaded = model
        self.model = getattr(model, "hooked", model)
        self.tokenizer = getattr(model, "tokenizer", None) or self.model.tokenizer
        self.device = next(self.model.parameters()).device
        self.tc = {int(k): v.to(self.device).eval() for k, v in sorted(transcoders.items())}
        self.layers = list(self.tc)
        self.d_sae = {layer: int(t.cfg.d_sae) for layer, t in self.tc.items()}
        self.hooks_in = {layer: t.cfg.metadata.hook_name for layer, t in self.tc.items()}
        self.hooks_out = {layer: getattr(t.cfg.metadata, "hook_name_out", None)
                          for layer, t in self.tc.items()}
        for layer, h in self.hooks_out.items():
            if not h:
                raise ConfigError(f"the transcoder of layer {layer} has no hook_name_out")
        names = set(dict(self.model.hook_dict))
        for h in list(self.hooks_in.values()) + list(self.hooks_out.values()):
            if h not in names:
                raise ConfigError(f"the model has no hook {h!r}")
        self.paths = list(paths or [])
        self.key = key or self._key()

    def _key(self) -> str:
        h = hashlib.sha256()
        h.update(str(getattr(self.loaded, "weight_hash", "")).encode())
        for layer in self.layers:
            t = self.tc[layer]
            h.update(f"{layer}:{self.hooks_in[layer]}>{self.hooks_out[layer]}".encode())
            for name, p in sorted(t.state_dict().items()):
                h.update(name.encode())
                h.update(p.detach().float().cpu().numpy().tobytes())
        return "tc-" + h.hexdigest()[:16]

    @classmethod
    def from_dirs(cls, model: Any, dirs: Sequence[str | Path]) -> TranscoderSource:
        """Load SAELens transcoder folders (each with ``cfg.json``); the layer comes from
        ``hook_layer`` or the ``blocks.<l>.`` part of ``hook_name``."""
        try:
            from sae_lens import Transcoder
        except ImportError as e:  # pragma: no cover - a dependency
            raise ConfigError(f"sae-lens is needed for transcoder folders: {e}") from e
        dev = next(getattr(model, "hooked", model).parameters()).device
        out: dict[int, Any] = {}
        for d in dirs:
            p = Path(d).expanduser()
            if not (p / "cfg.json").exists():
                raise ConfigError(f"{p} is not a SAELens folder (no cfg.json)")
            try:
                tc = Transcoder.load_from_disk(str(p), device=str(dev))
            except Exception as e:  # noqa: BLE001 - any loader failure is the user's file
                raise ConfigError(f"cannot load the transcoder in {p}: {e}") from e
            md = tc.cfg.metadata
            layer = getattr(md, "hook_layer", None)
            if layer is None:
                m = _LAYER_RE.search(md.hook_name or "")
                if not m:
                    raise ConfigError(f"cannot tell the layer of {p} from {md.hook_name!r}")
                layer = int(m.group(1))
            if int(layer) in out:
                raise ConfigError(f"two transcoders for layer {layer}")
            out[int(layer)] = tc
        return cls(model, out, paths=[str(d) for d in dirs])

    @torch.no_grad()
    def forward(self, tokens, edit=None, need_logits=True):
        acts: dict[int, torch.Tensor] = {}
        hooks: list[Hook] = []
        for layer in self.layers:
            tc = self.tc[layer]

            def enc(x, hook=None, _l=layer, _t=tc):
                acts[_l] = _t.encode(x.to(_t.W_enc.dtype))
                return x

            hooks.append((self.hooks_in[layer], enc))
            if edit is not None and layer == edit.layer:
                def add(out, hook=None, _l=layer, _t=tc):
                    f, delta = _delta_for_rows(acts[_l], edit, _t.W_dec)
                    acts[_l] = f
                    return out + delta.to(out.dtype)

                hooks.append((self.hooks_out[layer], add))
        kw: dict[str, Any] = {}
        if not need_logits:
            kw["stop_at_layer"] = max(self.layers) + 1
        logits = self.model.run_with_hooks(tokens.to(self.device), fwd_hooks=hooks, **kw)
        return (logits if need_logits else None), acts

    def decoder(self, layer):
        return self.tc[layer].W_dec.detach().float().cpu()

    def unembed(self):
        return _final_gain_unembed(self.model)

    def edit_hooks(self, edits, where=None, state=None):
        hooks: list[Hook] = []
        slot: dict[int, torch.Tensor] = {}
        for layer, fv in edits.items():
            layer = int(layer)
            if layer not in self.tc:
                raise ConfigError(f"no transcoder at layer {layer}")
            tc = self.tc[layer]
            mask = _mask_from({layer: fv}, self.d_sae[layer], layer)

            def keep(x, hook=None, _l=layer):
                slot[_l] = x
                return x

            def add(out, hook=None, _l=layer, _t=tc, _m=mask):
                f = _t.encode(slot.pop(_l).to(_t.W_enc.dtype))
                fm = _m.apply(_l, f)
                if where is not None:
                    w = where(state, out).to(f.device).unsqueeze(-1)
                    fm = torch.where(w, fm, f)
                return out + ((fm - f) @ _t.W_dec).to(out.dtype)

            hooks += [(self.hooks_in[layer], keep), (self.hooks_out[layer], add)]
        return hooks

    def describe(self):
        return {"kind": self.kind, "key": self.key,
                "model": getattr(self.loaded, "spec", None),
                "weight_hash": getattr(self.loaded, "weight_hash", None),
                "layers": self.layers, "d_sae": {str(k): v for k, v in self.d_sae.items()},
                "hooks_in": {str(k): v for k, v in self.hooks_in.items()},
                "hooks_out": {str(k): v for k, v in self.hooks_out.items()},
                "paths": self.paths}


# ------------------------------------------------------------------ from a JSON spec
SOURCE_KINDS = ("adapters", "transcoders")


def source_stores() -> dict[str, Store]:
    """The named stores a source spec may point at: ``demo`` (committed, read-only)
    and ``main`` (the local cache)."""
    from ..adapters.report import demo_store

    return {"demo": demo_store(), "main": Store()}


def load_source(spec: dict[str, Any], device: str | torch.device = "auto") -> FeatureSource:
    """A source from its JSON spec.

    * ``{"kind": "adapters", "key": KEY, "store": "demo" | "main"}`` (``key`` omitted:
      the newest adapters artifact of that store);
    * ``{"kind": "transcoders", "model": SPEC, "dirs": [FOLDER, ...]}`` or
      ``"dir": FOLDER`` holding ``layer_*`` / any sub-folders with a ``cfg.json``.
    """
    kind = spec.get("kind", "adapters")
    if kind == "adapters":
        from ..adapters.io import find_adapters

        stores = source_stores()
        sname = spec.get("store", "demo")
        if sname not in stores:
            raise ConfigError(f"unknown store {sname!r}; choose from {', '.join(stores)}")
        art = find_adapters(stores[sname], spec.get("key"))
        return AdapterSource.from_artifact(art, device)
    if kind == "transcoders":
        from ..models import load_model

        if not spec.get("model"):
            raise ConfigError("a transcoder source needs the 'model' they read")
        dirs = list(spec.get("dirs") or [])
        if spec.get("dir"):
            root = Path(spec["dir"]).expanduser()
            dirs += sorted(str(p.parent) for p in root.glob("*/cfg.json"))
            if (root / "cfg.json").exists():
                dirs.append(str(root))
        if not dirs:
            raise ConfigError("no transcoder folders (each needs a cfg.json) were found")
        model = load_model(spec["model"], device=device, dtype=torch.float32)
        return TranscoderSource.from_dirs(model, dirs)
    raise ArtifactError(f"unknown feature source kind {kind!r}; choose from "
                        f"{', '.join(SOURCE_KINDS)}")
