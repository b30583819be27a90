"""weight_diff_table against a direct computation on two tiny random checkpoints."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from interp.bench_app import make_tiny_checkpoint, make_tiny_pair
from interp.errors import PairMismatchError
from interp.weights import (
    classify_parameter,
    weight_diff_groups,
    weight_diff_pivot,
    weight_diff_table,
)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_tiny_pair(tmp_path_factory.mktemp("pair"))


def _state(path):
    m = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return {k: v.detach().double() for k, v in m.state_dict().items()}


def test_table_matches_direct_computation(pair):
    a, b = pair
    df = weight_diff_table(a, b)
    sa, sb = _state(a), _state(b)
    # tied embeddings: the shared matrix appears once, as embed; no lm_head row
    assert "lm_head.weight" not in set(df["name"])
    assert (df["module"] == "embed").sum() == 1
    expected = {k for k in sa if k != "lm_head.weight"}
    assert set(df["name"]) == expected
    for row in df.itertuples():
        x, y = sa[row.name], sb[row.name]
        d = torch.linalg.vector_norm(y - x).item()
        na = torch.linalg.vector_norm(x).item()
        cos = torch.nn.functional.cosine_similarity(x.flatten(), y.flatten(), dim=0).item()
        assert row.numel == x.numel()
        assert row.delta_norm == pytest.approx(d, rel=1e-9)
        assert row.norm_a == pytest.approx(na, rel=1e-9)
        assert row.relative == pytest.approx(d / na, rel=1e-9)
        assert row.cosine == pytest.approx(cos, rel=1e-9)
    assert df["relative"].gt(0).all()


def test_pivot_and_groups_aggregate_sums_of_squares(pair):
    a, b = pair
    df = weight_diff_table(a, b)
    sa, sb = _state(a), _state(b)
    pv = weight_diff_pivot(df)
    assert list(pv.index) == [0, 1]
    assert list(pv.columns) == ["attn_q", "attn_k", "attn_v", "attn_o", "mlp_gate",
                                "mlp_up", "mlp_down", "norm"]
    # layer 1, attn_q = weight and bias together
    names = ["model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.q_proj.bias"]
    num = math.sqrt(sum(torch.sum((sb[n] - sa[n]) ** 2).item() for n in names))
    den = math.sqrt(sum(torch.sum(sa[n] ** 2).item() for n in names))
    assert pv.loc[1, "attn_q"] == pytest.approx(num / den, rel=1e-9)
    groups = weight_diff_groups(df)
    assert list(groups["group"]) == ["embed", "layer 0", "layer 1", "final norm"]
    layer0 = [k for k in sa if k.startswith("model.layers.0.")]
    num = math.sqrt(sum(torch.sum((sb[n] - sa[n]) ** 2).item() for n in layer0))
    den = math.sqrt(sum(torch.sum(sa[n] ** 2).item() for n in layer0))
    assert groups.set_index("group").loc["layer 0", "relative"] == pytest.approx(num / den)


def test_identical_checkpoints_have_zero_difference(pair):
    a, _ = pair
    df = weight_diff_table(a, a)
    assert df["delta_norm"].eq(0).all()
    assert df["cosine"].to_numpy() == pytest.approx(1.0)


def test_shape_mismatch_raises(pair, tmp_path):
    a, _ = pair
    other = make_tiny_checkpoint(tmp_path / "wide", hidden_size=48)
    with pytest.raises(PairMismatchError, match="shape"):
        weight_diff_table(a, other)


def test_chunked_reduction_matches(pair, monkeypatch):
    import interp.weights as w

    a, b = pair
    full = weight_diff_table(a, b)
    monkeypatch.setattr(w, "_CHUNK_ELEMENTS", 7)  # many tiny chunks
    chunked = weight_diff_table(a, b)
    assert chunked["delta_norm"].to_numpy() == pytest.approx(full["delta_norm"].to_numpy())


@pytest.mark.parametrize("name,expected", [
    ("model.embed_tokens.weight", (None, "embed")),
    ("model.layers.3.self_attn.k_proj.bias", (3, "attn_k")),
    ("model.layers.0.self_attn.o_proj.weight", (0, "attn_o")),
    ("model.layers.11.mlp.gate_proj.weight", (11, "mlp_gate")),
    ("model.layers.2.post_attention_layernorm.weight", (2, "norm")),
    ("model.layers.2.self_attn.q_norm.weight", (2, "norm")),
    ("model.norm.weight", (None, "norm")),
    ("lm_head.weight", (None, "unembed")),
    ("transformer.h.4.attn.c_attn.weight", (4, "attn_qkv")),
    ("transformer.h.4.mlp.c_proj.weight", (4, "mlp_out")),
])
def test_classify_parameter(name, expected):
    assert classify_parameter(name) == expected


def test_untied_pair_has_unembed_row(tiny_pair_dirs):
    a, b = tiny_pair_dirs
    df = weight_diff_table(a, b)
    sa, sb = _state(a), _state(b)
    row = df[df["module"] == "unembed"].iloc[0]
    assert row["name"] == "lm_head.weight" and pd.isna(row["layer"])
    d = torch.linalg.vector_norm(sb["lm_head.weight"] - sa["lm_head.weight"]).item()
    assert row["delta_norm"] == pytest.approx(d, rel=1e-9)
    groups = weight_diff_groups(df)
    assert list(groups["group"]) == ["embed", "layer 0", "layer 1", "final norm", "unembed"]
