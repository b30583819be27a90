"""Weight differences between two checkpoints, in the original HF parameter space.

:func:`weight_diff_table` compares two transformers checkpoints tensor by tensor,
straight from their safetensors files (``safe_open``; sharded checkpoints via
``model.safetensors.index.json``). Only one pair of tensors is in memory at a time, and
large tensors are reduced in row chunks, so a 1.5B pair needs no more than a few
hundred MB. Norms are Frobenius norms accumulated in float64.

Conventions:

* ``Δθ = θ_b − θ_a`` (a = base, b = fine-tune); ``relative = ||Δθ|| / ||θ_a||``;
  ``cosine = <θ_a, θ_b> / (||θ_a|| ||θ_b||)``.
* Tied embeddings are counted once: when ``tie_word_embeddings`` is set, the
  ``lm_head`` tensor (if a checkpoint stores it at all) is skipped and the shared
  matrix appears once, as ``embed``.
* ``module`` is one of :data:`MODULE_ORDER`; ``layer`` is the block index, or
  ``None`` for tensors outside the blocks (embedding, final norm, unembedding).
"""

from __future__ import annotations

import json
import math
import os
import re
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .errors import ModelLoadError, PairMismatchError

MODULE_ORDER = ("embed", "attn_q", "attn_k", "attn_v", "attn_o", "attn_qkv",
                "mlp_gate", "mlp_up", "mlp_down", "mlp_in", "mlp_out", "norm", "unembed",
                "other")

_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.")
# (pattern on the part of the name after the layer index, module); first match wins
_MODULE_RULES: tuple[tuple[str, str], ...] = (
    (r"(self_attn|attention|attn)\.(q_proj|query|wq)\b", "attn_q"),
    (r"(self_attn|attention|attn)\.(k_proj|key|wk)\b", "attn_k"),
    (r"(self_attn|attention|attn)\.(v_proj|value|wv)\b", "attn_v"),
    (r"(self_attn|attention|attn)\.(o_proj|dense|out_proj|wo|c_proj)\b", "attn_o"),
    (r"(self_attn|attention|attn)\.(qkv_proj|c_attn|query_key_value|Wqkv)\b", "attn_qkv"),
    (r"(mlp|feed_forward)\.(gate_proj|w1)\b", "mlp_gate"),
    (r"(mlp|feed_forward)\.(up_proj|w3)\b", "mlp_up"),
    (r"(mlp|feed_forward)\.(down_proj|w2)\b", "mlp_down"),
    (r"(mlp|feed_forward)\.(c_fc|fc1|dense_h_to_4h|gate_up_proj)\b", "mlp_in"),
    (r"(mlp|feed_forward)\.(c_proj|fc2|dense_4h_to_h)\b", "mlp_out"),
    (r"(norm|ln_\d|ln_f|layernorm)", "norm"),
)
_CHUNK_ELEMENTS = 1 << 22  # rows are reduced in chunks of about 4M elements


def classify_parameter(name: str) -> tuple[int | None, str]:
    """``(layer, module)`` of an HF parameter name, e.g.
    ``model.layers.3.mlp.down_proj.weight`` -> ``(3, "mlp_down")``."""
    m = _LAYER_RE.search(name)
    if m is None:
        if re.search(r"(embed_tokens|wte|word_embeddings|tok_embeddings)\.", name):
            return None, "embed"
        if name.startswith(("lm_head.", "embed_out.", "output.")):
            return None, "unembed"
        if re.search(r"(norm|ln_f)\.", name):
            return None, "norm"
        if re.search(r"(wpe|position_embeddings)\.", name):
            return None, "embed"
        return None, "other"
    rest = name[m.end():]
    for pattern, module in _MODULE_RULES:
        if re.search(pattern, rest):
            return int(m.group(1)), module
    return int(m.group(1)), "other"


def _tensor_index(path: Path) -> dict[str, Path]:
    """Parameter name -> safetensors file holding it."""
    if not path.is_dir():
        raise ModelLoadError(f"checkpoint folder not found: {path}")
    index = path / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {k: path / v for k, v in weight_map.items()}
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{path} holds no safetensors weights")
    from safetensors import safe_open

    out: dict[str, Path] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            for k in h.keys():
                out[k] = f
    return out


def _tied(path: Path) -> bool:
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        return False
    cfg = json.loads(cfg_file.read_text())
    tied = cfg.get("tie_word_embeddings")
    if tied is None and isinstance(cfg.get("text_config"), dict):
        tied = cfg["text_config"].get("tie_word_embeddings")
    return bool(tied)


def _sums(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, float, float]:
    """(Σ(b−a)², Σa², Σb², Σab) in float64, over row chunks of the flattened tensors."""
    a = a.reshape(a.shape[0], -1) if a.dim() > 1 else a.reshape(1, -1)
    b = b.reshape(a.shape)
    rows = max(1, _CHUNK_ELEMENTS // max(1, a.shape[1]))
    dd = aa = bb = ab = 0.0
    for i in range(0, a.shape[0], rows):
        x = a[i:i + rows].to(torch.float64)
        y = b[i:i + rows].to(torch.float64)
        dd += float(((y - x) ** 2).sum())
        aa += float((x * x).sum())
        bb += float((y * y).sum())
        ab += float((x * y).sum())
    return dd, aa, bb, ab


class TensorFiles:
    """Safetensors files opened lazily and closed together: ``with TensorFiles() as h:``
    then ``h(path).get_tensor(name)`` (each file is opened once)."""

    def __init__(self) -> None:
        self._stack = ExitStack()
        self._handles: dict[Path, Any] = {}

    def __enter__(self) -> TensorFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def __call__(self, f: Path) -> Any:
        from safetensors import safe_open

        if f not in self._handles:
            self._handles[f] = self._stack.enter_context(safe_open(str(f), framework="pt"))
        return self._handles[f]


def tensor_differences(ia: dict[str, Path], ib: dict[str, Path]) -> list[str]:
    """What keeps two tensor indexes (name -> file) from matching: names only in one,
    and shared names with different shapes (read from the headers only)."""
    diffs = []
    if set(ia) != set(ib):
        only_a, only_b = sorted(set(ia) - set(ib)), sorted(set(ib) - set(ia))
        if only_a:
            diffs.append(f"tensors only in the first checkpoint: {only_a[:5]}")
        if only_b:
            diffs.append(f"tensors only in the second checkpoint: {only_b[:5]}")
    with TensorFiles() as h:
        for name in sorted(set(ia) & set(ib)):
            sa = list(h(ia[name]).get_slice(name).get_shape())
            sb = list(h(ib[name]).get_slice(name).get_shape())
            if sa != sb:
                diffs.append(f"{name}: shape {tuple(sa)} vs {tuple(sb)}")
    return diffs


def weight_diff_table(path_a: str | os.PathLike, path_b: str | os.PathLike) -> pd.DataFrame:
    """One row per parameter tensor of checkpoint ``a`` (base) vs ``b`` (fine-tune).

    Columns: ``layer`` (Int64, <NA> outside blocks), ``module``, ``name``, ``shape``,
    ``numel``, ``delta_norm`` = ||θ_b − θ_a||, ``norm_a`` = ||θ_a||, ``norm_b``,
    ``relative`` = delta_norm / norm_a, ``cosine``. Rows are in the file order of
    block index then module (see :data:`MODULE_ORDER`). Raises PairMismatchError when
    the two checkpoints do not hold the same tensor names and shapes.
    """

    pa, pb = Path(path_a), Path(path_b)
    ia, ib = _tensor_index(pa), _tensor_index(pb)
    tied = _tied(pa) and _tied(pb)
    if tied:
        for idx in (ia, ib):
            idx.pop("lm_head.weight", None)
    diffs = tensor_differences(ia, ib)
    if diffs:
        raise PairMismatchError(
            f"{pa.name} and {pb.name} do not hold the same parameters:", diffs)
    rows = []
    with TensorFiles() as handle:
        for name in sorted(ia):
            sa = handle(ia[name]).get_slice(name).get_shape()
            a = handle(ia[name]).get_tensor(name)
            b = handle(ib[name]).get_tensor(name)
            dd, aa, bb, ab = _sums(a, b)
            del a, b
            layer, module = classify_parameter(name)
            na, nb = math.sqrt(aa), math.sqrt(bb)
            rows.append({
                "layer": layer, "module": module, "name": name, "shape": tuple(sa),
                "numel": int(math.prod(sa)), "delta_norm": math.sqrt(dd), "norm_a": na,
                "norm_b": nb, "relative": math.sqrt(dd) / na if na > 0 else float("nan"),
                "cosine": ab / (na * nb) if na > 0 and nb > 0 else float("nan"),
            })
    order = {m: i for i, m in enumerate(MODULE_ORDER)}

    def model_order(r: dict) -> tuple:
        if r["layer"] is not None:
            return (1, r["layer"], order[r["module"]], r["name"])
        return (0 if r["module"] == "embed" else 2, 0, order[r["module"]], r["name"])

    rows.sort(key=model_order)
    df = pd.DataFrame(rows, columns=["layer", "module", "name", "shape", "numel",
                                     "delta_norm", "norm_a", "norm_b", "relative",
                                     "cosine"])
    df["layer"] = df["layer"].astype("Int64")
    return df.reset_index(drop=True)


def _aggregate(group: pd.DataFrame) -> float:
    """Relative change of a group of tensors: sqrt(Σ||Δ||²) / sqrt(Σ||θ_a||²)."""
    den = math.sqrt(float((group["norm_a"] ** 2).sum()))
    num = math.sqrt(float((group["delta_norm"] ** 2).sum()))
    return num / den if den > 0 else float("nan")


def weight_diff_pivot(table: pd.DataFrame, value: str = "relative") -> pd.DataFrame:
    """Layer x module matrix of the block tensors (rows: layers 0..L-1).

    ``value="relative"`` aggregates a cell's tensors as sqrt(Σ||Δθ||²)/sqrt(Σ||θ_a||²)
    (the relative change of the cell's parameters taken together);
    ``value="delta_norm"`` gives sqrt(Σ||Δθ||²). Modules absent from the model are
    left out; columns follow :data:`MODULE_ORDER`.
    """
    blocks = table[table["layer"].notna()]
    if value == "relative":
        agg = blocks.groupby(["layer", "module"]).apply(_aggregate, include_groups=False)
    elif value == "delta_norm":
        agg = blocks.groupby(["layer", "module"])["delta_norm"].apply(
            lambda s: math.sqrt(float((s ** 2).sum())))
    else:
        raise ValueError(f"unknown value {value!r}: use 'relative' or 'delta_norm'")
    pivot = agg.unstack("module")
    pivot = pivot[[m for m in MODULE_ORDER if m in pivot.columns]]
    pivot.index = pivot.index.astype(int)
    pivot.index.name = "layer"
    return pivot


def weight_diff_groups(table: pd.DataFrame) -> pd.DataFrame:
    """Relative change per group: the embedding, each block (all its tensors), the
    final norm and the unembedding, in model order. Columns: group, relative,
    delta_norm, norm_a, numel."""
    out = []

    def add(label: str, g: pd.DataFrame) -> None:
        if len(g):
            out.append({"group": label, "relative": _aggregate(g),
                        "delta_norm": math.sqrt(float((g["delta_norm"] ** 2).sum())),
                        "norm_a": math.sqrt(float((g["norm_a"] ** 2).sum())),
                        "numel": int(g["numel"].sum())})

    outside = table[table["layer"].isna()]
    add("embed", outside[outside["module"] == "embed"])
    for layer, g in table[table["layer"].notna()].groupby("layer"):
        add(f"layer {int(layer)}", g)
    add("final norm", outside[outside["module"] == "norm"])
    add("unembed", outside[outside["module"] == "unembed"])
    add("other", outside[outside["module"] == "other"])
    return pd.DataFrame(out, columns=["group", "relative", "delta_norm", "norm_a", "numel"])


# ------------------------------------------------------------------ per attention head
HEAD_MATRICES = {"attn_q": "Q", "attn_k": "K", "attn_v": "V", "attn_o": "O"}


def _head_dim(path: Path) -> int | None:
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        return None
    cfg = json.loads(cfg_file.read_text())
    if isinstance(cfg.get("text_config"), dict):
        cfg = {**cfg, **cfg["text_config"]}
    if cfg.get("head_dim"):
        return int(cfg["head_dim"])
    heads, d = cfg.get("num_attention_heads"), cfg.get("hidden_size")
    return int(d) // int(heads) if heads and d else None


def head_diff_table(path_a: str | os.PathLike, path_b: str | os.PathLike) -> pd.DataFrame:
    """One row per attention head and projection of checkpoint ``a`` (base) vs ``b``.

    Heads are slices of the separate projection weights in HF layout: ``q_proj``,
    ``k_proj``, ``v_proj`` are ``[n_heads · d_head, d_model]`` and head ``h`` owns rows
    ``h·d_head … (h+1)·d_head − 1``; ``o_proj`` is ``[d_model, n_heads · d_head]`` and head
    ``h`` owns those *columns*. K and V count key-value heads (fewer than query heads
    under grouped-query attention). Biases are left out. Columns: ``layer``, ``matrix``
    (``Q``, ``K``, ``V``, ``O``), ``head``, ``delta_norm`` = ‖ΔW_h‖, ``norm_a`` = ‖W_h,a‖,
    ``relative`` = delta_norm / norm_a (Frobenius norms, float64). Empty when the model
    has no separate q/k/v/o projections (a fused ``qkv``). Raises PairMismatchError when
    the checkpoints do not hold the same tensors.
    """
    pa, pb = Path(path_a), Path(path_b)
    ia, ib = _tensor_index(pa), _tensor_index(pb)
    d_head = _head_dim(pa)
    picked = []
    for name in sorted(ia):
        layer, module = classify_parameter(name)
        if module in HEAD_MATRICES and layer is not None and name.endswith("weight"):
            picked.append((layer, module, name))
    columns = ["layer", "matrix", "head", "delta_norm", "norm_a", "relative"]
    if not picked or not d_head:
        return pd.DataFrame(columns=columns)
    diffs = tensor_differences({n: ia[n] for _, _, n in picked if n in ia},
                               {n: ib[n] for _, _, n in picked if n in ib})
    missing = [n for _, _, n in picked if n not in ib]
    if diffs or missing:
        raise PairMismatchError(
            f"{pa.name} and {pb.name} do not hold the same attention weights:",
            diffs or [f"only in the first checkpoint: {missing[:5]}"])
    rows = []
    with TensorFiles() as handle:
        for layer, module, name in picked:
            a = handle(ia[name]).get_tensor(name).to(torch.float64)
            b = handle(ib[name]).get_tensor(name).to(torch.float64)
            if module == "attn_o":
                a, b = a.T, b.T   # heads own the input columns of o_proj
            if a.dim() != 2 or a.shape[0] % d_head:
                raise ModelLoadError(f"{name}: shape {tuple(a.shape)} does not split into "
                                     f"heads of {d_head}")
            a = a.reshape(a.shape[0] // d_head, -1)
            b = b.reshape(a.shape)
            dn = torch.linalg.vector_norm(b - a, dim=1)
            na = torch.linalg.vector_norm(a, dim=1)
            for h in range(a.shape[0]):
                rows.append({"layer": layer, "matrix": HEAD_MATRICES[module], "head": h,
                             "delta_norm": float(dn[h]), "norm_a": float(na[h]),
                             "relative": float(dn[h] / na[h]) if na[h] > 0 else float("nan")})
    order = {m: i for i, m in enumerate(HEAD_MATRICES.values())}
    rows.sort(key=lambda r: (r["layer"], order[r["matrix"]], r["head"]))
    return pd.DataFrame(rows, columns=columns)


def head_diff_pivot(table: pd.DataFrame, value: str = "relative") -> pd.DataFrame:
    """Layer x head matrix of :func:`head_diff_table`: columns ``Q h0 … Q h{H−1}``, then
    ``K``, ``V`` (key-value heads) and ``O``; ``value`` is ``relative`` or ``delta_norm``."""
    if value not in ("relative", "delta_norm"):
        raise ValueError(f"unknown value {value!r}: use 'relative' or 'delta_norm'")
    if table.empty:
        return pd.DataFrame()
    t = table.assign(column=table["matrix"] + " h" + table["head"].astype(str))
    pivot = t.pivot(index="layer", columns="column", values=value)
    cols = t.drop_duplicates("column").sort_values(
        ["matrix", "head"], key=lambda s: s.map({m: i for i, m in enumerate("QKVO")})
        if s.name == "matrix" else s)["column"]
    pivot = pivot[list(cols)]
    pivot.index = pivot.index.astype(int)
    pivot.index.name = "layer"
    pivot.columns.name = None
    return pivot
