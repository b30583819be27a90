"""Task vectors in weight space: ``v = θ_A − θ_B`` and ``θ_target + α · (m ⊙ v)``.

Conventions
-----------
* ``v`` is computed tensor by tensor from the two donor checkpoints' safetensors files
  (in float32, or float64 for float64 files), in the **HF parameter space** (names such
  as ``model.layers.3.mlp.down_proj.weight``). Default donors: organisms ``grpo`` (A)
  minus ``sft`` (B).
* ``m`` is a per-tensor 0/1 mask (:class:`Mask`): module groups (``embed``, ``norm``,
  ``attn``, ``mlp``, ``unembed``, ``other``) and an inclusive block range
  ``layers=(lo, hi)`` for tensors inside the blocks. Tensors outside the blocks
  (embedding, final norm, unembedding) are governed by their group alone.
* **Tied embeddings** (``tie_word_embeddings``): the shared matrix is one tensor,
  ``model.embed_tokens.weight``; a stored ``lm_head.weight`` is ignored. It counts once
  in every norm and is included only when both ``embed`` and ``unembed`` are selected
  (excluding either excludes the shared matrix). When applied to a HookedTransformer,
  whose ``W_E`` and ``W_U`` are separate copies of the tied matrix, the same delta goes
  to both (``W_U = W_E.T`` stays true).
* An edit is computed as ``(θ.float() + α · v).to(θ.dtype)`` (:func:`edit_tensor`), the
  same expression for the in-place edit of a loaded model and for the exported
  checkpoint, so both give the same bits.
* **Memory.** :func:`apply_task_vector` edits the loaded target's parameters in place,
  streaming one donor tensor pair at a time, and restores the exact original bits on
  exit, either by re-reading them from the target's own checkpoint file
  (``restore="file"``, no extra copy) or from a copy of the touched tensors
  (``restore="backup"``). :class:`TaskVectorSweeper` holds ``v`` and the originals of
  the included tensors (two extra copies of the masked parameters) for fast α sweeps.

Only llama-family checkpoints (Qwen2, Llama, Mistral: ``q/k/v/o_proj``,
``gate/up/down_proj``, RMSNorm weights) can be applied to a HookedTransformer here;
statistics and checkpoint export work for any architecture whose tensors match.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pandas as pd
import torch

from ..errors import ConfigError, PairMismatchError
from ..validate import finite, finite_tensors
from ..weights import TensorFiles, _tensor_index, _tied, classify_parameter, tensor_differences

GROUPS = ("embed", "norm", "attn", "mlp", "unembed", "other")
DEFAULT_DONORS = ("organism:grpo", "organism:sft")
TIED_NAME = "model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"


def group_of(module: str) -> str:
    """Mask group of a :func:`interp.weights.classify_parameter` module label."""
    if module.startswith("attn"):
        return "attn"
    if module.startswith("mlp"):
        return "mlp"
    return module if module in GROUPS else "other"


@dataclass(frozen=True)
class Mask:
    """Which tensors of ``v`` are applied (``m`` is 1 on them, 0 elsewhere).

    ``groups``: module groups to include (see :data:`GROUPS`); ``layers``: inclusive
    ``(lo, hi)`` block range for block tensors, ``None`` for all blocks.
    """

    groups: tuple[str, ...] = ("embed", "norm", "attn", "mlp", "unembed", "other")
    layers: tuple[int, int] | None = None

    def __post_init__(self):
        bad = [g for g in self.groups if g not in GROUPS]
        if bad:
            raise ConfigError(f"unknown mask groups {bad}; choose from {', '.join(GROUPS)}")
        if self.layers is not None:
            lo, hi = self.layers
            if lo > hi or lo < 0:
                raise ConfigError(f"layer range {self.layers} is empty or negative")
        object.__setattr__(self, "groups", tuple(g for g in GROUPS if g in self.groups))
        if self.layers is not None:
            object.__setattr__(self, "layers", (int(self.layers[0]), int(self.layers[1])))

    def includes(self, name: str, tied: bool = False) -> bool:
        layer, module = classify_parameter(name)
        group = group_of(module)
        if tied and name == TIED_NAME:
            return "embed" in self.groups and "unembed" in self.groups
        if group not in self.groups:
            return False
        if layer is not None and self.layers is not None:
            return self.layers[0] <= layer <= self.layers[1]
        return True

    def to_config(self) -> dict[str, Any]:
        return {"groups": list(self.groups),
                "layers": list(self.layers) if self.layers is not None else None}

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None) -> Mask:
        if not cfg:
            return cls()
        layers = cfg.get("layers")
        return cls(tuple(cfg.get("groups", GROUPS)), tuple(layers) if layers else None)


FULL_MASK = Mask()


def edit_tensor(theta: torch.Tensor, v: torch.Tensor, alpha: float) -> torch.Tensor:
    """``θ + α·v`` computed in float32 (float64 if θ is float64), cast back to θ's dtype.

    The one expression every edit uses (in place or exported), so both agree bit for bit.
    """
    alpha = finite(alpha, "α")
    acc = torch.float64 if theta.dtype == torch.float64 else torch.float32
    return (theta.to(acc) + float(alpha) * v.to(theta.device, acc)).to(theta.dtype)


# --------------------------------------------------------------------------- task vector
@dataclass
class TaskVector:
    """``v = θ_A − θ_B`` over two comparable checkpoint folders (read lazily, per tensor)."""

    path_a: Path
    path_b: Path
    spec_a: str = ""
    spec_b: str = ""
    tied: bool = False
    names: list[str] = field(default_factory=list)
    _index_a: dict[str, Path] = field(default_factory=dict, repr=False)
    _index_b: dict[str, Path] = field(default_factory=dict, repr=False)

    @classmethod
    def from_paths(cls, path_a: str | os.PathLike, path_b: str | os.PathLike,
                   spec_a: str = "", spec_b: str = "") -> TaskVector:
        """Check the pair (config, tokenizer, tensor names and shapes) and index it.

        Raises :class:`PairMismatchError` listing every difference.
        """
        from ..models import pair_differences

        pa, pb = Path(path_a), Path(path_b)
        diffs = pair_differences(pa, pb)
        ia, ib = _tensor_index(pa), _tensor_index(pb)
        tied = _tied(pa) and _tied(pb)
        if tied:
            ia.pop(LM_HEAD, None)
            ib.pop(LM_HEAD, None)
        diffs += tensor_differences(ia, ib)
        if diffs:
            raise PairMismatchError(
                f"{spec_a or pa.name} and {spec_b or pb.name} cannot form a task vector:",
                diffs)
        return cls(pa, pb, spec_a or str(pa), spec_b or str(pb), tied,
                   _model_order(list(ia)), ia, ib)

    @classmethod
    def from_specs(cls, spec_a: str = DEFAULT_DONORS[0], spec_b: str = DEFAULT_DONORS[1]
                   ) -> TaskVector:
        from ..models import local_checkpoint

        _, pa = local_checkpoint(spec_a)
        _, pb = local_checkpoint(spec_b)
        return cls.from_paths(pa, pb, spec_a, spec_b)

    def describe(self) -> dict[str, Any]:
        from ..models import files_hash

        return {"a": {"id": self.spec_a, "weight_hash": files_hash(self.path_a)},
                "b": {"id": self.spec_b, "weight_hash": files_hash(self.path_b)},
                "tied_embeddings": self.tied, "n_tensors": len(self.names)}

    def check_target(self, target_path: str | os.PathLike, spec: str = "") -> None:
        """Raise PairMismatchError if the target cannot receive this vector."""
        from ..models import pair_differences

        tp = Path(target_path)
        diffs = pair_differences(self.path_a, tp)
        it = _tensor_index(tp)
        if self.tied:
            it.pop(LM_HEAD, None)
        diffs += tensor_differences(self._index_a, it)
        if diffs:
            raise PairMismatchError(
                f"the task vector {self.spec_a} − {self.spec_b} cannot be applied to "
                f"{spec or tp.name}:", diffs)

    def iter_deltas(self, mask: Mask | None = None, include_excluded: bool = False
                    ) -> Iterator[tuple[str, bool, torch.Tensor]]:
        """``(hf_name, included, v)`` per tensor in model order; one pair in memory."""
        mask = mask or FULL_MASK
        with TensorFiles() as h:
            for name in self.names:
                inc = mask.includes(name, self.tied)
                if not inc and not include_excluded:
                    continue
                a = h(self._index_a[name]).get_tensor(name)
                b = h(self._index_b[name]).get_tensor(name)
                acc = torch.float64 if a.dtype == torch.float64 else torch.float32
                yield name, inc, a.to(acc) - b.to(acc)
                del a, b


def _model_order(names: Sequence[str]) -> list[str]:
    def key(n: str):
        layer, module = classify_parameter(n)
        if layer is None:
            return (0 if module == "embed" else 2, 0, n)
        return (1, layer, n)

    return sorted(names, key=key)


# --------------------------------------------------------------------------- statistics
def task_vector_stats(tv: TaskVector, target: str | os.PathLike | None = None,
                      reference: str | os.PathLike | None = None,
                      mask: Mask | None = None) -> pd.DataFrame:
    """One row per tensor of ``v`` (tied matrix once), streamed, float64 sums.

    Columns: ``name, layer (Int64), module, group, numel, included`` (under ``mask``),
    ``v_norm`` = ||v||, ``target_norm`` = ||θ_target|| (NaN without a target),
    ``relative`` = ||v|| / ||θ_target||, ``d_norm`` = ||θ_target − θ_reference||,
    ``cosine`` = cos(v, θ_target − θ_reference) (NaN without both, or when a norm is 0),
    and the raw sums ``vv, dd, vd`` used by :func:`aggregate_stats`.
    """

    mask = mask or FULL_MASK
    it = _tensor_index(Path(target)) if target is not None else {}
    ir = _tensor_index(Path(reference)) if reference is not None else {}
    rows = []
    with TensorFiles() as h:
        for name, inc, v in tv.iter_deltas(mask, include_excluded=True):
            v = v.to(torch.float64)
            layer, module = classify_parameter(name)
            vv = float((v * v).sum())
            tn = dd = vd = float("nan")
            if name in it:
                t = h(it[name]).get_tensor(name).to(torch.float64)
                tn = math.sqrt(float((t * t).sum()))
                if name in ir:
                    d = t - h(ir[name]).get_tensor(name).to(torch.float64)
                    dd, vd = float((d * d).sum()), float((v * d).sum())
                    del d
                del t
            vn = math.sqrt(vv)
            rows.append({
                "name": name, "layer": layer, "module": module, "group": group_of(module),
                "numel": v.numel(), "included": inc, "v_norm": vn, "target_norm": tn,
                "relative": vn / tn if tn and tn > 0 else float("nan"),
                "d_norm": math.sqrt(dd) if dd == dd else float("nan"),
                "cosine": vd / math.sqrt(vv * dd) if vv > 0 and dd == dd and dd > 0
                else float("nan"),
                "vv": vv, "dd": dd, "vd": vd,
            })
    df = pd.DataFrame(rows)
    df["layer"] = df["layer"].astype("Int64")
    return df


def aggregate_stats(table: pd.DataFrame, by: str = "layer") -> pd.DataFrame:
    """Per-layer (``by="layer"``; non-block tensors as ``embed`` / ``final`` rows) or
    per-group (``by="group"``) totals: ``v_norm`` = sqrt(Σ||v||²), ``cosine`` =
    Σ<v,d> / sqrt(Σ||v||² Σ||d||²), ``numel``, ``n_included``."""
    t = table.copy()
    if by == "layer":
        def label(r):
            if pd.isna(r["layer"]):
                return "embed" if r["group"] == "embed" else (
                    "unembed" if r["group"] == "unembed" else "final norm")
            return f"layer {int(r['layer'])}"
        t["key"] = t.apply(label, axis=1)
        order = (["embed"] + [f"layer {int(x)}" for x in sorted(t["layer"].dropna().unique())]
                 + ["final norm", "unembed"])
    elif by == "group":
        t["key"] = t["group"]
        order = [g for g in GROUPS]
    else:
        raise ConfigError(f"aggregate by 'layer' or 'group', not {by!r}")
    out = []
    for k in order:
        g = t[t["key"] == k]
        if not len(g):
            continue
        vv, dd, vd = g["vv"].sum(), g["dd"].sum(min_count=1), g["vd"].sum(min_count=1)
        out.append({"key": k, "v_norm": math.sqrt(vv), "numel": int(g["numel"].sum()),
                    "n_tensors": len(g), "n_included": int(g["included"].sum()),
                    "cosine": float(vd / math.sqrt(vv * dd))
                    if vv > 0 and dd == dd and dd > 0 else float("nan")})
    return pd.DataFrame(out)


# --------------------------------------------------------------------------- HF -> TL map
_LAYER_NAME = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def _tl_targets(name: str, tl_keys: set[str], cfg, tied: bool
                ) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
    """HookedTransformer parameters an HF tensor maps to, with the reshape that maps it
    (llama family, unprocessed weights). Raises ConfigError for an unknown tensor."""
    ident = lambda t: t  # noqa: E731
    T = lambda t: t.T  # noqa: E731
    if name == TIED_NAME:
        return [("embed.W_E", ident)] + ([("unembed.W_U", T)] if tied else [])
    if name == LM_HEAD:
        return [] if tied else [("unembed.W_U", T)]
    if name == "model.norm.weight":
        return [("ln_final.w", ident)]
    m = _LAYER_NAME.match(name)
    if m is None:
        raise ConfigError(f"no HookedTransformer parameter for {name!r}")
    layer, rest = int(m.group(1)), m.group(2)
    p = f"blocks.{layer}."
    n, h, d = cfg.n_heads, cfg.d_head, cfg.d_model
    nkv = getattr(cfg, "n_key_value_heads", None) or n

    def kv(base: str) -> str:
        return p + "attn._" + base if (p + "attn._" + base) in tl_keys else p + "attn." + base

    table: dict[str, tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = {
        "input_layernorm.weight": (p + "ln1.w", ident),
        "post_attention_layernorm.weight": (p + "ln2.w", ident),
        "self_attn.q_proj.weight": (p + "attn.W_Q", lambda t: t.reshape(n, h, d).permute(0, 2, 1)),
        "self_attn.k_proj.weight": (kv("W_K"), lambda t: t.reshape(nkv, h, d).permute(0, 2, 1)),
        "self_attn.v_proj.weight": (kv("W_V"), lambda t: t.reshape(nkv, h, d).permute(0, 2, 1)),
        "self_attn.o_proj.weight": (p + "attn.W_O", lambda t: t.reshape(d, n, h).permute(1, 2, 0)),
        "self_attn.q_proj.bias": (p + "attn.b_Q", lambda t: t.reshape(n, h)),
        "self_attn.k_proj.bias": (kv("b_K"), lambda t: t.reshape(nkv, h)),
        "self_attn.v_proj.bias": (kv("b_V"), lambda t: t.reshape(nkv, h)),
        "self_attn.o_proj.bias": (p + "attn.b_O", ident),
        "mlp.gate_proj.weight": (p + "mlp.W_gate", T),
        "mlp.up_proj.weight": (p + "mlp.W_in", T),
        "mlp.down_proj.weight": (p + "mlp.W_out", T),
        "mlp.up_proj.bias": (p + "mlp.b_in", ident),
        "mlp.down_proj.bias": (p + "mlp.b_out", ident),
    }
    if rest not in table:
        raise ConfigError(
            f"cannot apply {name!r} to a HookedTransformer: only llama-family tensors "
            "(q/k/v/o_proj, gate/up/down_proj, RMSNorm weights) are mapped")
    tl, fn = table[rest]
    if tl not in tl_keys:
        raise ConfigError(f"{name!r} maps to {tl!r}, which this HookedTransformer lacks")
    return [(tl, fn)]


def hf_to_tl(hooked, name: str, tensor: torch.Tensor, tied: bool
             ) -> list[tuple[str, torch.Tensor]]:
    """``[(tl_param_name, tensor in TL layout)]`` for one HF tensor (views, no copy)."""
    keys = set(dict(hooked.named_parameters()))
    return [(k, fn(tensor)) for k, fn in _tl_targets(name, keys, hooked.cfg, tied)]


def _hooked(model):
    return getattr(model, "hooked", model)


def _mark(hooked, on: bool) -> None:
    if on and getattr(hooked, "_interp_task_edit", False):
        raise ConfigError("a task-vector edit is already active on this model; "
                          "nested edits are not supported")
    hooked._interp_task_edit = on


@contextlib.contextmanager
def apply_task_vector(model, tv: TaskVector, alpha: float = 1.0, mask: Mask | None = None,
                      restore: str = "file", progress: Callable[[int, int], None] | None = None):
    """Edit ``model`` (LoadedModel or HookedTransformer) in place to
    ``θ + α · (m ⊙ v)`` for the body of the ``with``; restore the exact original bits on
    exit (also on an exception).

    ``restore="file"`` re-reads the touched tensors from the target's checkpoint
    (``model.path``; requires that the loaded weights are that file's, cast to the
    model's dtype) and holds no extra copy; ``restore="backup"`` keeps a copy of the
    touched parameters instead (works for any in-memory model). ``α = 0`` touches
    nothing. Tensors outside the mask are never written.
    """
    hooked = _hooked(model)
    mask = mask or FULL_MASK
    alpha = finite(alpha, "α")
    path = getattr(model, "path", None)
    if restore == "file" and path is None:
        raise ConfigError("restore='file' needs a LoadedModel with a checkpoint path; "
                          "use restore='backup'")
    if restore not in ("file", "backup"):
        raise ConfigError(f"restore must be 'file' or 'backup', not {restore!r}")
    if path is not None:
        tv.check_target(path, getattr(model, "spec", ""))
    params = dict(hooked.named_parameters())
    _mark(hooked, True)
    touched: list[str] = []
    backup: dict[str, torch.Tensor] = {}
    try:
        if float(alpha) != 0.0:
            total = sum(1 for n in tv.names if mask.includes(n, tv.tied))
            with torch.no_grad():
                for i, (name, _, v) in enumerate(tv.iter_deltas(mask)):
                    targets = hf_to_tl(hooked, name, v, tv.tied)
                    for tl, _ in targets:
                        if restore == "backup":
                            backup[tl] = params[tl].detach().clone()
                    touched.append(name)
                    for tl, vt in targets:
                        p = params[tl]
                        p.copy_(edit_tensor(p, vt, alpha))
                    if progress is not None:
                        progress(i + 1, total)
        yield model
    finally:
        with torch.no_grad():
            if restore == "backup":
                for tl, orig in backup.items():
                    params[tl].copy_(orig)
            elif touched:
                _restore_from_file(hooked, Path(path), touched, tv.tied, params)
        _mark(hooked, False)


def _restore_from_file(hooked, path: Path, names: list[str], tied: bool,
                       params: dict[str, torch.nn.Parameter]) -> None:
    index = _tensor_index(path)
    with TensorFiles() as h:
        for name in names:
            t = h(index[name]).get_tensor(name)
            for tl, tt in hf_to_tl(hooked, name, t, tied):
                p = params[tl]
                p.copy_(tt.to(p.dtype))


class TaskVectorSweeper:
    """Fast repeated edits of one model for an α sweep.

    Holds ``v`` (masked, in TL layout, float32 on the model's device) and the originals
    of the included parameters; :meth:`set_alpha` writes ``edit_tensor(θ₀, v, α)``
    (always from the originals, so nothing accumulates; ``α = 0`` writes θ₀ itself) and
    :meth:`restore` / leaving the ``with`` writes θ₀ back bit for bit.
    """

    def __init__(self, model, tv: TaskVector, mask: Mask | None = None):
        self.hooked = _hooked(model)
        path = getattr(model, "path", None)
        if path is not None:
            tv.check_target(path, getattr(model, "spec", ""))
        self.params = dict(self.hooked.named_parameters())
        self.delta: dict[str, torch.Tensor] = {}
        self.orig: dict[str, torch.Tensor] = {}
        for name, _, v in tv.iter_deltas(mask or FULL_MASK):
            for tl, vt in hf_to_tl(self.hooked, name, v, tv.tied):
                p = self.params[tl]
                self.delta[tl] = vt.to(p.device).contiguous()
                self.orig[tl] = p.detach().clone()
        self.alpha = 0.0

    def __enter__(self) -> TaskVectorSweeper:
        _mark(self.hooked, True)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.restore()
        finally:
            _mark(self.hooked, False)

    @torch.no_grad()
    def set_alpha(self, alpha: float) -> None:
        alpha = finite(alpha, "α")
        for tl, v in self.delta.items():
            p = self.params[tl]
            p.copy_(self.orig[tl] if float(alpha) == 0.0 else edit_tensor(self.orig[tl], v, alpha))
        self.alpha = float(alpha)

    def restore(self) -> None:
        self.set_alpha(0.0)


# --------------------------------------------------------------------------- export
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def check_export_dir(out: Path, overwrite: bool, sources: Sequence[Path] = ()) -> None:
    """Refuse an output folder that is a file, one of the ``sources`` (or inside one), or
    a folder that already holds something, unless ``overwrite`` (``--force``)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is a file, not a folder")
    r = out.resolve()
    for src in sources:
        s = Path(src).resolve()
        if r == s or s in r.parents or r in s.parents:
            raise ConfigError(f"the output folder {out} is (or contains, or is inside) the "
                              f"checkpoint {src} it is made from; choose another folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} already exists and is not empty; nothing was written. "
                          "Choose a new folder, or replace it with --force (overwrite=True)")


def export_edited_checkpoint(target: str | os.PathLike, tv: TaskVector, alpha: float,
                             out_dir: str | os.PathLike, mask: Mask | None = None,
                             provenance: dict[str, Any] | None = None,
                             overwrite: bool = False) -> Path:
    """Write ``θ_target + α·(m ⊙ v)`` as a transformers checkpoint folder.

    Streams the target tensor by tensor (the output dict holds one copy of the model);
    copies config, generation config and tokenizer files; adds ``interp_edit.json``
    (donors, α, mask, provenance). Written into a temporary folder and put in place in
    one step. Loadable with ``interp.models.load_model(str(out_dir))``.

    An existing non-empty ``out_dir`` is refused unless ``overwrite`` (then replaced as a
    whole, atomically); α must be finite and so must every edited tensor (a huge α can
    overflow): NonFiniteError, and nothing is written.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    from ..store import exchange, storage_error, tmp_sibling

    mask = mask or FULL_MASK
    alpha = finite(alpha, "α")
    tp, out = Path(target), Path(out_dir)
    check_export_dir(out, overwrite, [tp, tv.path_a, tv.path_b])
    tv.check_target(tp)
    index = _tensor_index(tp)
    included = {n for n in tv.names if mask.includes(n, tv.tied)}
    tensors: dict[str, torch.Tensor] = {}
    deltas = {n: v for n, _, v in tv.iter_deltas(mask)} if included else {}
    with TensorFiles() as h:
        for name, f in index.items():
            t = h(f).get_tensor(name)
            key = TIED_NAME if (tv.tied and name == LM_HEAD) else name
            if key in deltas and float(alpha) != 0.0:
                t = edit_tensor(t, deltas[key], alpha)
                finite_tensors({name: t}, f"the edited checkpoint (α = {alpha:g})")
            tensors[name] = t.contiguous()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(out)
    try:
        tmp.mkdir(parents=True)
        for f in tp.iterdir():
            if f.is_file() and not f.name.endswith(_WEIGHT_SUFFIXES) \
                    and f.name != "model.safetensors.index.json":
                shutil.copy2(f, tmp / f.name)
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "interp_edit.json").write_text(json.dumps({
            "edit": "task_vector", "alpha": float(alpha), "mask": mask.to_config(),
            "donor_a": tv.spec_a, "donor_b": tv.spec_b, "target": str(tp.name),
            "tied_embeddings": tv.tied, **(provenance or {})}, indent=1, default=str))
        if out.exists():
            check_export_dir(out, overwrite)      # it may have appeared meanwhile
            if not exchange(tmp, out):
                trash = tmp_sibling(out)
                os.rename(out, trash)
                try:
                    os.rename(tmp, out)
                except OSError:
                    os.rename(trash, out)   # keep the old folder rather than nothing
                    raise
                tmp = trash
        else:
            os.rename(tmp, out)
    except (OSError, SafetensorError) as e:
        raise storage_error(e, f"writing the edited checkpoint {out}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)   # the temp folder, or the replaced one
    return out
