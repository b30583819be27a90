"""Reasoning vectors: task-vector arithmetic, control vectors and lenses on tiny models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from interp.errors import PairMismatchError
from interp.models import load_model
from interp.vectors.control import build_control_vector, control_vector, hook_name
from interp.vectors.lens import entropy, kl_div, layer_token_kl, trace_lens, vector_logit_lens
from interp.vectors.task import (
    Mask,
    TaskVector,
    TaskVectorSweeper,
    aggregate_stats,
    apply_task_vector,
    export_edited_checkpoint,
    hf_to_tl,
    task_vector_stats,
)
from tests.conftest import make_tiny_checkpoint, perturbed_copy


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.hooked.named_parameters()}


def _hf(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.fixture(scope="module")
def tied_pair(tmp_path_factory):
    """Two tied-embedding Qwen2 checkpoints (b = a + noise) and a tied target."""
    root = tmp_path_factory.mktemp("tied")
    a = make_tiny_checkpoint(root / "a", "qwen2", seed=3, tie_word_embeddings=True)
    b = perturbed_copy(a, root / "b", seed=4)
    t = make_tiny_checkpoint(root / "t", "qwen2", seed=5, tie_word_embeddings=True)
    return a, b, t


@pytest.mark.parametrize("which", ["qwen", "llama", "tied"])
def test_hf_to_tl_mapping_reproduces_hooked_weights(which, tiny_qwen_dir, tiny_llama_dir,
                                                    tied_pair):
    path = {"qwen": tiny_qwen_dir, "llama": tiny_llama_dir, "tied": tied_pair[2]}[which]
    m = load_model(str(path), device="cpu", dtype="float32")
    params = dict(m.hooked.named_parameters())
    seen = set()
    tied = which == "tied"
    for name, t in _hf(path).items():
        for tl, tt in hf_to_tl(m.hooked, name, t, tied):
            assert torch.equal(params[tl], tt), (name, tl)
            seen.add(tl)
    # every non-zero parameter is covered by the mapping (the rest are TL's zero biases)
    for k, p in params.items():
        assert k in seen or not p.any(), k


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_apply_restore_is_bit_exact(tiny_pair_dirs, tiny_qwen_dir, dtype):
    tv = TaskVector.from_paths(*tiny_pair_dirs)
    m = load_model(str(tiny_qwen_dir), device="cpu", dtype=dtype)
    before = _state(m)
    for restore in ("file", "backup"):
        with apply_task_vector(m, tv, alpha=1.0, restore=restore):
            changed = _state(m)
            assert any(not torch.equal(before[k], changed[k]) for k in before)
        after = _state(m)
        for k in before:
            assert torch.equal(before[k], after[k]), (restore, k)
    # θ + v − v = θ: +1 then −1 nested via a sweeper ends exactly at θ
    with TaskVectorSweeper(m, tv) as sw:
        sw.set_alpha(1.0)
        sw.set_alpha(-1.0)
        sw.set_alpha(0.0)
        for k in before:
            assert torch.equal(before[k], dict(m.hooked.named_parameters())[k])
    for k in before:
        assert torch.equal(before[k], _state(m)[k])


def test_edit_matches_independent_hf_arithmetic(tiny_pair_dirs, tiny_qwen_dir):
    a, b = _hf(tiny_pair_dirs[1]), _hf(tiny_pair_dirs[0])
    t = _hf(tiny_qwen_dir)
    tv = TaskVector.from_paths(tiny_pair_dirs[1], tiny_pair_dirs[0])
    m = load_model(str(tiny_qwen_dir), device="cpu", dtype="float32")
    alpha = 0.7
    with apply_task_vector(m, tv, alpha=alpha):
        params = dict(m.hooked.named_parameters())
        for name in t:
            want = t[name] + alpha * (a[name] - b[name])
            for tl, tt in hf_to_tl(m.hooked, name, want, False):
                torch.testing.assert_close(params[tl], tt, rtol=0, atol=1e-6)


def test_mask_leaves_excluded_tensors_bit_identical(tiny_pair_dirs, tiny_qwen_dir):
    tv = TaskVector.from_paths(*tiny_pair_dirs)
    m = load_model(str(tiny_qwen_dir), device="cpu", dtype="float32")
    before = _state(m)
    mask = Mask(groups=("mlp",), layers=(1, 1))
    with apply_task_vector(m, tv, alpha=2.0, mask=mask):
        now = _state(m)
        for k in before:
            changed = not torch.equal(before[k], now[k])
            should = k.startswith("blocks.1.mlp.W_")
            assert changed == should, k
    mask2 = Mask(groups=("attn", "norm"))
    with apply_task_vector(m, tv, alpha=2.0, mask=mask2):
        now = _state(m)
        for k in before:
            should = (".attn.W_" in k or ".attn._W_" in k or ".attn.b_Q" in k
                      or ".attn._b_" in k or ".ln" in k or k.startswith("ln_final"))
            assert (not torch.equal(before[k], now[k])) == should, k


def test_tied_embeddings_get_the_delta_once(tied_pair):
    a, b, t = tied_pair
    tv = TaskVector.from_paths(a, b)
    assert tv.tied and "lm_head.weight" not in tv.names
    m = load_model(str(t), device="cpu", dtype="float32")
    W_E0 = m.hooked.W_E.detach().clone()
    va = _hf(a)["model.embed_tokens.weight"] - _hf(b)["model.embed_tokens.weight"]
    with apply_task_vector(m, tv, alpha=1.0):
        torch.testing.assert_close(m.hooked.W_E, W_E0 + va, rtol=0, atol=1e-6)
        assert torch.equal(m.hooked.W_U, m.hooked.W_E.T)
    stats = task_vector_stats(tv, target=t)
    assert (stats["name"] == "model.embed_tokens.weight").sum() == 1
    total = math.sqrt(sum(float(((_hf(a)[n] - _hf(b)[n]).double() ** 2).sum())
                          for n in _hf(a)))
    assert math.isclose(math.sqrt(stats["vv"].sum()), total, rel_tol=1e-9)
    # excluding either embed or unembed excludes the shared matrix
    with apply_task_vector(m, tv, alpha=1.0, mask=Mask(groups=("embed", "attn"))):
        assert torch.equal(m.hooked.W_E, W_E0)


def test_export_roundtrip_and_stats(tiny_pair_dirs, tiny_qwen_dir, tmp_path):
    tv = TaskVector.from_paths(*tiny_pair_dirs)
    mask = Mask(groups=("attn", "mlp"))
    out = export_edited_checkpoint(tiny_qwen_dir, tv, 1.5, tmp_path / "edited", mask=mask)
    e = load_model(str(out), device="cpu", dtype="float32")
    m = load_model(str(tiny_qwen_dir), device="cpu", dtype="float32")
    with apply_task_vector(m, tv, alpha=1.5, mask=mask):
        live = _state(m)
    for k, v in _state(e).items():
        assert torch.equal(v, live[k]), k
    stats = task_vector_stats(tv, target=tiny_qwen_dir, reference=tiny_pair_dirs[0],
                              mask=mask)
    a, b, t = _hf(tiny_pair_dirs[0]), _hf(tiny_pair_dirs[1]), _hf(tiny_qwen_dir)
    row = stats.set_index("name").loc["model.layers.0.mlp.up_proj.weight"]
    n = "model.layers.0.mlp.up_proj.weight"
    v = (a[n] - b[n]).double()  # v is the float32 difference, as applied
    d = t[n].double() - a[n].double()
    assert math.isclose(row["v_norm"], float(v.norm()), rel_tol=1e-9)
    assert math.isclose(row["cosine"], float((v * d).sum() / v.norm() / d.norm()), rel_tol=1e-9)
    per_layer = aggregate_stats(stats, "layer")
    assert list(per_layer["key"]) == ["embed", "layer 0", "layer 1", "final norm", "unembed"]
    assert bool(row["included"]) and not bool(
        stats.set_index("name").loc["model.norm.weight"]["included"])


def test_mismatched_pair_raises(tiny_qwen_dir, tiny_llama_dir, tmp_path, tiny_pair_dirs):
    with pytest.raises(PairMismatchError) as e:
        TaskVector.from_paths(tiny_qwen_dir, tiny_llama_dir)
    assert e.value.differences
    wide = make_tiny_checkpoint(tmp_path / "wide", "qwen2", seed=2, intermediate_size=96)
    with pytest.raises(PairMismatchError) as e:
        TaskVector.from_paths(tiny_qwen_dir, wide)
    assert any("intermediate_size" in d for d in e.value.differences)
    tv = TaskVector.from_paths(*tiny_pair_dirs)
    m = load_model(str(wide), device="cpu", dtype="float32")
    with pytest.raises(PairMismatchError):
        with apply_task_vector(m, tv, 1.0):
            pass


# ------------------------------------------------------------------------- lenses
def _np_softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def test_kl_and_entropy_match_direct_softmax():
    g = torch.Generator().manual_seed(0)
    p = torch.randn(3, 7, 50, generator=g) * 3
    q = torch.randn(3, 7, 50, generator=g) * 3
    P, Q = _np_softmax(p.double().numpy()), _np_softmax(q.double().numpy())
    kl_ref = (P * np.log(P / Q)).sum(-1)
    h_ref = -(P * np.log(P)).sum(-1)
    np.testing.assert_allclose(kl_div(p, q).numpy(), kl_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(kl_div(p, q, unit="bits").numpy(), kl_ref / math.log(2),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(entropy(p).numpy(), h_ref, rtol=1e-4, atol=1e-5)
    assert torch.equal(kl_div(p, p), torch.zeros(3, 7))
    assert (kl_div(p, q) >= 0).all()


def test_trace_lens_and_layer_kl(tiny_pair_dirs, tiny_qwen_dir):
    tv = TaskVector.from_paths(*tiny_pair_dirs)
    m = load_model(str(tiny_qwen_dir), device="cpu", dtype="float32")
    toks = m.tokenizer("1 2 + 3 4 = <think> 4 6 </think> answer", add_special_tokens=True)[
        "input_ids"]
    zero = trace_lens(m, toks, lambda: apply_task_vector(m, tv, 0.0))
    assert torch.equal(zero.kl, torch.zeros(len(toks)))
    lens = trace_lens(m, toks, lambda: apply_task_vector(m, tv, 1.0), k=3)
    assert (lens.kl > 0).all()
    # independent: logits of an exported edited checkpoint
    with torch.no_grad():
        lo = m.hooked(torch.tensor([toks]))[0]
        with apply_task_vector(m, tv, 1.0):
            lm = m.hooked(torch.tensor([toks]))[0]
    P, Q = _np_softmax(lo.double().numpy()), _np_softmax(lm.double().numpy())
    np.testing.assert_allclose(lens.kl.numpy(), (P * np.log(P / Q)).sum(-1), rtol=1e-4,
                               atol=1e-6)
    dlp = np.log(Q) - np.log(P)
    assert (lens.top["promoted_logprob"][:, 0].numpy() == dlp.argmax(-1)).all()
    assert (lens.top["suppressed_logprob"][:, 0].numpy() == dlp.argmin(-1)).all()
    heat = layer_token_kl(m, toks, lambda: apply_task_vector(m, tv, 1.0))
    assert heat.shape == (m.n_layers, len(toks))
    torch.testing.assert_close(heat[-1], lens.kl, rtol=1e-4, atol=1e-6)
    recs = lens.to_records(m.tokenizer)
    assert recs[0]["token"] == "1" or recs[0]["token"] == m.tokenizer.convert_ids_to_tokens(
        toks[0])


# ------------------------------------------------------------------------- control vectors
def test_control_vector_kinds():
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(16, generator=g)
    neg = torch.randn(40, 16, generator=g)
    pos = neg + direction + 0.05 * torch.randn(40, 16, generator=g)
    r, _ = control_vector(pos, kind="R")
    torch.testing.assert_close(r, pos.mean(0))
    rc, info = control_vector(pos, neg, kind="R-C")
    torch.testing.assert_close(rc, pos.mean(0) - neg.mean(0))
    assert math.isclose(info["norm"], float(rc.norm()), rel_tol=1e-5)
    pc, pinfo = control_vector(-pos, -neg, kind="PCA-C")  # sign follows R-C
    assert float(pc @ -rc) > 0
    d = (pos - neg).double().numpy()
    u = np.linalg.svd(d, full_matrices=False)[2][0]
    cos = float(np.abs(u @ pc.double().numpy()) / np.linalg.norm(pc.double().numpy()))
    assert cos > 1 - 1e-6 and pinfo["explained"] > 0.9


def test_control_vector_read_apply_round_trip(tiny_qwen_dir):
    from interp.steering import n_active_hooks, steered

    m = load_model(str(tiny_qwen_dir), device="cpu", dtype="float32")
    pos = ["1 2 + 3 4 = <think>", "5 6 + 7 8 = <think>", "9 + 1 = <think> 1"]
    neg = ["1 2 + 3 4 = answer", "5 6 + 7 8 = answer", "9 + 1 = answer is"]
    layer, alpha = 0, 0.8
    cv = build_control_vector(m, pos, neg, layer, kind="R-C")
    assert cv.hook == hook_name(0, "resid_post") and cv.info["n_pos"] == 3
    from interp.vectors.control import read_activations

    before = read_activations(m, pos, layer)
    with steered(m, cv.hooks(alpha)):
        after = read_activations(m, pos, layer)
        later = read_activations(m, pos, 1)
    assert n_active_hooks(m) == 0
    torch.testing.assert_close(after - before, alpha * cv.vector.expand_as(before),
                               rtol=0, atol=1e-5)
    assert not torch.allclose(later, read_activations(m, pos, 1))
    lens_raw = vector_logit_lens(m, cv.vector, k=3)
    lens_norm = vector_logit_lens(m, cv.vector, k=3, final_norm=True)
    assert "raw" in lens_raw["mode"] and "final norm" in lens_norm["mode"]
    torch.testing.assert_close(lens_raw["logits"], (cv.vector @ m.hooked.W_U).float())
