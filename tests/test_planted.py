"""Planted directions: every steering hook and vector is checked for *what* it adds,
*where* and *with which sign*, against an independent reading of the activations; and
the quantities the earlier tests left unchecked (sweep positions, held-out separability,
entropy in bits, the mean token rule, the weighted adapter loss, the final-norm lens)
against their definitions.

A test here fails when a sign is flipped, two sets are swapped, a position moves by one
or a fit sees the evaluation data (each was checked by planting that bug).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from interp.generation import GenState
from interp.models import load_model
from interp.steering import add_vector, n_active_hooks, project_out, steered

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def lm(tiny_qwen_dir):
    return load_model(str(tiny_qwen_dir), device="cpu", dtype="float32")


def _ids(lm, text: str) -> list[int]:
    return lm.tokenizer(text, add_special_tokens=False)["input_ids"]


def _around(lm, hooks, hook_names, toks):
    """Run ``hooks`` with a recorder just before and just after them at each name:
    ``{name: (before, after)}``."""
    rec: dict[str, list[torch.Tensor]] = {n: [] for n in hook_names}

    def spy(name):
        def fn(act, hook=None):
            rec[name].append(act.detach().clone())
            return act
        return fn

    pre = [(n, spy(n)) for n in hook_names]
    post = [(n, spy(n)) for n in hook_names]
    with steered(lm, pre + list(hooks) + post):
        lm.hooked(toks)
    assert n_active_hooks(lm) == 0
    return {n: (v[0], v[1]) for n, v in rec.items()}


TOKS_TEXT = ["1 2 + 3 4 = <think>", "5 + 6 = <think> 1 1"]


# ------------------------------------------------------------------ generic hooks
def test_add_vector_adds_plus_alpha_v_where_asked(lm):
    toks = torch.tensor([_ids(lm, TOKS_TEXT[1])])
    g = torch.Generator().manual_seed(0)
    v = torch.randn(lm.cfg.d_model, generator=g)
    (b, a), = _around(lm, [add_vector(HOOK, v, -0.75)], [HOOK], toks).values()
    torch.testing.assert_close(a - b, (-0.75 * v).expand_as(a), rtol=0, atol=1e-6)
    # per-row α read through state.rows: row i uses alpha[rows[i]]
    toks2 = torch.tensor([_ids(lm, TOKS_TEXT[1])] * 2)
    alpha = torch.tensor([0.5, -2.0, 3.0])
    st = GenState(rows=torch.tensor([2, 1]))
    (b, a), = _around(lm, [add_vector(HOOK, v, alpha, state=st)], [HOOK], toks2).values()
    torch.testing.assert_close(a[0] - b[0], (3.0 * v).expand_as(a[0]), rtol=0, atol=1e-5)
    torch.testing.assert_close(a[1] - b[1], (-2.0 * v).expand_as(a[1]), rtol=0, atol=1e-5)
    # only where the mask says
    where = lambda state, act: torch.arange(act.shape[1])[None].expand(act.shape[0], -1) == 2  # noqa: E731
    (b, a), = _around(lm, [add_vector(HOOK, v, 1.0, where=where)], [HOOK], toks).values()
    d = (a - b)[0]
    torch.testing.assert_close(d[2], v, rtol=0, atol=1e-6)
    assert float(d[[0, 1, 3]].abs().max()) == 0.0


def test_project_out_removes_exactly_the_component(lm):
    toks = torch.tensor([_ids(lm, TOKS_TEXT[0])])
    d = torch.randn(lm.cfg.d_model, generator=torch.Generator().manual_seed(1))
    (b, a), = _around(lm, [project_out(HOOK, 3 * d)], [HOOK], toks).values()
    u = d / d.norm()
    torch.testing.assert_close(a, b - (b @ u)[..., None] * u, rtol=0, atol=1e-5)


# ------------------------------------------------------------------ length steering
@pytest.mark.parametrize("site", ["resid_mid", "resid_post"])
def test_length_steering_adds_alpha_dir_of_each_layer_at_its_site(lm, site):
    from interp.length.steer import steering_hooks

    L = lm.cfg.n_layers
    dirs = torch.randn(L, lm.cfg.d_model, generator=torch.Generator().manual_seed(2))
    names = [f"blocks.{ly}.hook_{site}" for ly in range(L)]
    toks = torch.tensor([_ids(lm, TOKS_TEXT[0])])
    rec = _around(lm, steering_hooks(dirs, site, -0.4), names, toks)
    for ly, n in enumerate(names):
        b, a = rec[n]
        torch.testing.assert_close(a - b, (-0.4 * dirs[ly]).expand_as(a), rtol=0, atol=1e-5)
    rec = _around(lm, steering_hooks(dirs, site, 2.0, layers=[1]), names, toks)
    assert float((rec[names[0]][1] - rec[names[0]][0]).abs().max()) == 0.0
    torch.testing.assert_close(rec[names[1]][1] - rec[names[1]][0],
                               (2.0 * dirs[1]).expand_as(rec[names[1]][0]), rtol=0, atol=1e-5)


def test_seal_hook_adds_plus_alpha_vector_only_at_open_separators(lm):
    from interp.length.data import ThinkMarkers
    from interp.length.seal import seal_hooks

    mk = ThinkMarkers("<think>", "</think>", True, "+", "wait")
    sep = lm.tokenizer.convert_tokens_to_ids("+")
    close = lm.tokenizer.convert_tokens_to_ids("</think>")
    vec = torch.randn(lm.cfg.d_model, generator=torch.Generator().manual_seed(3))
    toks = torch.tensor([_ids(lm, "1 + 2 + 3"), _ids(lm, "4 + 5 + 6")])
    hist = torch.cat([toks, torch.tensor([[1], [close]])], dim=1)   # row 1 has closed
    st = GenState(rows=torch.arange(2), tokens=toks, step=0, history=hist)
    hooks = seal_hooks(lm, vec, 0, mk, alpha=-0.5)(st)
    (b, a), = _around(lm, hooks, [HOOK], toks).values()
    d = a - b
    is_sep = toks[0] == sep
    torch.testing.assert_close(d[0][is_sep], (-0.5 * vec).expand(int(is_sep.sum()), -1),
                               rtol=0, atol=1e-6)
    assert float(d[0][~is_sep].abs().max()) == 0.0 and float(d[1].abs().max()) == 0.0


# ------------------------------------------------------------------ control vectors
def _last_and_mean(lm, prompts, layer, site="resid_post"):
    """Independent reading: one unpadded forward per prompt."""
    last, mean = [], []
    for p in prompts:
        _, cache = lm.hooked.run_with_cache(torch.tensor([_ids(lm, p)]))
        a = cache[f"blocks.{layer}.hook_{site}"][0]
        last.append(a[-1])
        mean.append(a.mean(0))
    return torch.stack(last), torch.stack(mean)


def test_control_vector_is_positives_minus_negatives(lm):
    """R-C from the model equals mean(positive) - mean(negative) read one prompt at a
    time (padding, batching and the set order checked); PCA-C points the same way; the
    mean token rule averages every real token of a prompt."""
    from interp.vectors.control import build_control_vector

    pos = ["1 2 + 3 = <think>", "4 + 5 6 7 = <think> 1", "8 = <think>"]
    neg = ["1 2 + 3 = answer", "4 + 5 = answer is", "8 8 8 8 = answer"]
    layer = 1
    lp, mp = _last_and_mean(lm, pos, layer)
    ln, mn = _last_and_mean(lm, neg, layer)
    cv = build_control_vector(lm, pos, neg, layer, kind="R-C", batch_size=2)
    torch.testing.assert_close(cv.vector, lp.mean(0) - ln.mean(0), rtol=1e-4, atol=1e-5)
    cvm = build_control_vector(lm, pos, neg, layer, kind="R-C", token_rule="mean")
    torch.testing.assert_close(cvm.vector, mp.mean(0) - mn.mean(0), rtol=1e-4, atol=1e-5)
    r = build_control_vector(lm, pos, None, layer, kind="R")
    torch.testing.assert_close(r.vector, lp.mean(0), rtol=1e-4, atol=1e-5)
    pc = build_control_vector(lm, pos, neg, layer, kind="PCA-C")
    d = (lp - ln).double()
    u = torch.linalg.svd(d, full_matrices=False)[2][0]
    u = u if float(u @ (lp.mean(0) - ln.mean(0)).double()) >= 0 else -u
    torch.testing.assert_close(pc.vector.double(), u * float(d.mean(0) @ u), rtol=1e-4,
                               atol=1e-5)
    rc = (lp.mean(0) - ln.mean(0)).double()
    assert math.isclose(pc.info["cos_with_rc"], float(u @ rc / rc.norm()), rel_tol=1e-4)
    assert pc.info["cos_with_rc"] > 0
    # applied with +α at its own hook
    (b, a), = _around(lm, cv.hooks(0.3), [cv.hook],
                      torch.tensor([_ids(lm, pos[0])])).values()
    torch.testing.assert_close(a - b, (0.3 * cv.vector).expand_as(a), rtol=0, atol=1e-5)


# ------------------------------------------------------------------ sweep positions
def _np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_sweep_metrics_sit_at_the_documented_positions(lm):
    """kl_last at the last prompt token, kl_trace / entropy_trace averaged over the last
    prompt token .. the token before the end, p_correct the product over the answer
    positions: recomputed from one unpadded forward per sequence (batched sweep rows
    are left-padded to different offsets)."""
    from interp.vectors.sweep import SweepBatch, alpha_sweep

    seqs = [_ids(lm, "1 2 + 3 = <think> 4 5 </think> answer 7"),
            _ids(lm, "9 = <think> 1 </think> 2"), _ids(lm, "4 4 + 5 = <think> 9 9 9 </think> 0")]
    pls = [5, 3, 5]
    aps = [[len(s) - 3, len(s) - 2] for s in seqs]
    batch = SweepBatch(seqs, pls, aps)
    v = torch.randn(lm.cfg.d_model, generator=torch.Generator().manual_seed(4))

    def mod(a):
        return steered(lm, [add_vector(HOOK, v, a)])

    res = alpha_sweep(lm, mod, [0.0, 1.5], batch, batch_size=3)
    for i, (s, pl, ap) in enumerate(zip(seqs, pls, aps)):
        t = torch.tensor([s])
        with torch.no_grad():
            lo = lm.hooked(t)[0].double().numpy()
            with mod(1.5):
                lmod = lm.hooked(t)[0].double().numpy()
        P, Q = _np_softmax(lo), _np_softmax(lmod)
        kl = (P * np.log(P / Q)).sum(-1)
        ent = -(Q * np.log(Q)).sum(-1)
        span = slice(pl - 1, len(s) - 1)
        assert math.isclose(res["kl_last"][1, i], kl[pl - 1], rel_tol=1e-3, abs_tol=1e-6)
        assert math.isclose(res["kl_trace"][1, i], kl[span].mean(), rel_tol=1e-3, abs_tol=1e-6)
        assert math.isclose(res["entropy_last"][1, i], ent[pl - 1], rel_tol=1e-3)
        assert math.isclose(res["entropy_trace"][1, i], ent[span].mean(), rel_tol=1e-3)
        want = float(np.prod([Q[p, s[p + 1]] for p in ap]))
        assert math.isclose(res["p_correct"][1, i], want, rel_tol=1e-3)
        assert res["kl_last"][0, i] == 0.0


# ------------------------------------------------------------------ separability
def test_separability_is_measured_on_held_out_examples():
    """On pure noise (d_model 64, 60 examples) a direction fitted and scored on the same
    examples separates them almost perfectly; scored on held-out examples it cannot. A
    planted layer is still found."""
    from interp.length.directions import thinking_length_direction

    g = torch.Generator().manual_seed(0)
    n, L, d = 60, 4, 64
    x = torch.randn(n, L, d, generator=g)
    y = np.array([1] * 30 + [0] * 30)
    x[:30, 2, 5] += 4.0
    dirs = thinking_length_direction({"resid_mid": x}, y, test_fraction=0.3, seed=1)
    au = dirs.auroc["resid_mid"]
    assert au[2] > 0.95
    noise = [au[i] for i in (0, 1, 3)]
    assert max(noise) < 0.85 and np.mean(noise) < 0.75, au


# ------------------------------------------------------------------ units and lenses
def test_entropy_and_kl_in_bits_are_nats_over_ln2():
    from interp.vectors.lens import entropy, kl_div

    uniform = torch.zeros(8)
    assert math.isclose(float(entropy(uniform, "bits")), 3.0, rel_tol=1e-6)
    assert math.isclose(float(entropy(uniform, "nats")), math.log(8), rel_tol=1e-6)
    g = torch.Generator().manual_seed(0)
    p, q = torch.randn(5, 11, generator=g) * 2, torch.randn(5, 11, generator=g) * 2
    P = _np_softmax(p.double().numpy())
    torch.testing.assert_close(entropy(p, "bits").double(),
                               torch.tensor(-(P * np.log2(P)).sum(-1)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kl_div(p, q, "bits"), kl_div(p, q) / math.log(2))


def test_final_norm_lens_values(lm, tiny_qwen_dir):
    """``ln_final(c) @ W_U`` against the checkpoint's own RMSNorm gain and lm_head."""
    from safetensors.torch import load_file

    from interp.vectors.lens import vector_logit_lens

    sd = load_file(str(tiny_qwen_dir / "model.safetensors"))
    w, W = sd["model.norm.weight"].double(), sd["lm_head.weight"].double()
    eps = lm.hooked.cfg.eps
    c = torch.randn(lm.cfg.d_model, generator=torch.Generator().manual_seed(5)) * 3
    cd = c.double()
    want = ((cd / torch.sqrt((cd ** 2).mean() + eps)) * w) @ W.T
    got = vector_logit_lens(lm, c, k=3, final_norm=True)
    torch.testing.assert_close(got["logits"].double(), want, rtol=1e-4, atol=1e-5)
    raw = vector_logit_lens(lm, c, k=3, final_norm=False)
    torch.testing.assert_close(raw["logits"].double(), cd @ W.T, rtol=1e-4, atol=1e-5)
    assert got["top"][0][0] == lm.tokenizer.convert_ids_to_tokens(int(want.argmax()))


# ------------------------------------------------------------------ adapter loss
def test_adapter_loss_total_is_the_weighted_sum_of_independent_terms(tiny_pair_dirs):
    """loss = λ_adapt·KL + l1·L1 + λ_nmse·NMSE + λ_bridge·bridge with four different
    weights; KL and NMSE recomputed from the two models' own passes; at k = 0 the
    bridge term is KL / 2."""
    from interp.adapters.loss import LossWeights, adapter_loss
    from interp.adapters.model import AdapterModel, build_hybrid
    from interp.adapters.module import AdapterSet

    base = load_model(str(tiny_pair_dirs[0]), device="cpu", dtype="float32")
    fine = load_model(str(tiny_pair_dirs[1]), device="cpu", dtype="float32")
    ad = AdapterSet(fine.n_layers, fine.cfg.d_model, 12, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for a in ad.layers:
            a.W_dec.copy_(0.2 * torch.randn(a.W_dec.shape, generator=g))
    m = AdapterModel(build_hybrid(base, fine), fine, ad)
    t = torch.randint(4, 30, (2, 9), generator=g)
    valid = torch.ones_like(t, dtype=torch.bool)
    valid[1, 6:] = False
    w = LossWeights(lambda_adapt=2.0, l1=3.0, lambda_nmse=5.0, lambda_bridge=7.0)
    for k in (0, 1):
        loss, parts = adapter_loss(m, t, valid, w, k)
        total = 2 * parts["kl"] + 3 * parts["l1"] + 5 * parts["nmse"] + 7 * parts["bridge"]
        torch.testing.assert_close(loss.detach(), total, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        ref, ada = m(t, "ref"), m(t, "adapt")
        P = torch.log_softmax(ref.logits.double(), -1)
        Q = torch.log_softmax(ada.logits.double(), -1)
        kl_tok = (P.exp() * (P - Q)).sum(-1)
        kl = float(kl_tok[valid].mean())
        v = valid[..., None].double()
        nmse = np.mean([float((((a.double() - r.double()) ** 2) * v).sum()
                              / ((r.double() ** 2) * v).sum())
                        for a, r in zip(ada.resid, ref.resid)])
    _, parts = adapter_loss(m, t, valid, w, 0)
    assert math.isclose(float(parts["kl"]), kl, rel_tol=1e-4)
    assert math.isclose(float(parts["nmse"]), nmse, rel_tol=1e-4, abs_tol=1e-9)
    assert math.isclose(float(parts["bridge"]), kl / 2, rel_tol=1e-4)
