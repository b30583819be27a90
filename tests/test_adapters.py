"""Transcoder adapters: the math against independent computations, saving, training jobs.

Tiny random Qwen2 pairs (conftest); every reference value is computed a second way
(TransformerLens hooks on the real modules, plain softmax, explicit loops), not by the
code under test.
"""

from __future__ import annotations

import json

import pytest
import torch

from interp.adapters.loss import LossWeights, adapter_loss, l1_penalty, token_kl
from interp.adapters.model import AdapterModel, adapter_hooks, build_hybrid
from interp.adapters.module import AdapterSet, FeatureMask


@pytest.fixture(scope="module")
def pair(tiny_pair_dirs):
    from interp.models import load_model

    b, f = tiny_pair_dirs
    return (load_model(str(b), device="cpu", dtype="float32"),
            load_model(str(f), device="cpu", dtype="float32"))


def make_model(pair, d_sae=24, seed=0, random_decoder=False):
    base, reasoner = pair
    ad = AdapterSet(reasoner.n_layers, reasoner.cfg.d_model, d_sae, seed=seed)
    if random_decoder:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for a in ad.layers:
                a.W_dec.copy_(0.3 * torch.randn(a.W_dec.shape, generator=g))
                a.b_dec.copy_(0.05 * torch.randn(a.b_dec.shape, generator=g))
                a.b_enc.copy_(0.1 * torch.randn(a.b_enc.shape, generator=g))
    return AdapterModel(build_hybrid(base, reasoner), reasoner, ad)


def tokens(b=3, pos=10, seed=0, vocab=30):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, vocab, (b, pos), generator=g)


def mlp_swap_hooks(model, layers, source):
    """Independent construction: at ``layers``, replace the hybrid's MLP output with
    ``source``'s MLP applied to the same (gain-scaled) MLP input."""
    slot = {}
    hooks = []
    for layer in layers:
        def keep(act, hook=None, _l=layer):
            slot[_l] = act
            return act

        def swap(act, hook=None, _l=layer):
            ln2 = model.hybrid.blocks[_l].ln2
            return source.blocks[_l].mlp(slot.pop(_l) * ln2.w)

        hooks += [(f"blocks.{layer}.ln2.hook_normalized", keep),
                  (f"blocks.{layer}.hook_mlp_out", swap)]
    return hooks


# ------------------------------------------------------------------ model
def test_init_follows_the_method(pair):
    ad = AdapterSet(2, 32, 500, seed=3)
    a = ad[0]
    assert torch.all(a.W_dec == 0) and torch.all(a.b_enc == 0) and torch.all(a.b_dec == 0)
    bound = 1 / 32 ** 0.5
    wmax = float(a.W_enc.detach().abs().max())
    assert 0.9 * bound < wmax <= bound
    assert abs(float(a.W_enc.detach().mean())) < 0.01


def test_zero_decoder_equals_hybrid_exactly(pair):
    base, reasoner = pair
    m = make_model(pair)
    t = tokens()
    with torch.no_grad():
        hyb = m.hybrid(t)
        assert torch.equal(m(t, "adapt").logits, hyb)
        assert torch.equal(m.hybrid.run_with_hooks(t, fwd_hooks=adapter_hooks(m.adapters)), hyb)
        # the reference path is the reasoning model itself
        assert torch.equal(m(t, "ref").logits, reasoner.hooked(t))
        # and the hybrid is the reasoner with the base MLPs swapped in
        swapped = reasoner.hooked.run_with_hooks(
            t, fwd_hooks=mlp_swap_hooks(m, range(m.n_layers), base.hooked))
        torch.testing.assert_close(hyb, swapped, atol=1e-5, rtol=1e-5)


def test_layer_loop_matches_hooked_adapter_model(pair):
    m = make_model(pair, random_decoder=True)
    t = tokens()
    with torch.no_grad():
        loop = m(t, "adapt").logits
        hooked = m.hybrid.run_with_hooks(t, fwd_hooks=adapter_hooks(m.adapters))
        assert torch.equal(loop, hooked)
        assert not torch.allclose(loop, m.hybrid(t))


def test_gradients_reach_adapter_parameters_only(pair):
    m = make_model(pair, random_decoder=True)
    t = tokens()
    valid = torch.ones_like(t, dtype=torch.bool)
    loss, _ = adapter_loss(m, t, valid, LossWeights(), k=1)
    loss.backward()
    for name, p in list(m.hybrid.named_parameters()) + list(m.reference.named_parameters()):
        assert not p.requires_grad and p.grad is None, name
    for name, p in m.adapters.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


def test_kl_matches_direct_softmax():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    pa, pb = a.softmax(-1), b.softmax(-1)
    direct = (pa * (pa.log() - pb.log())).sum(-1)
    torch.testing.assert_close(token_kl(a.log_softmax(-1), b), direct)


def test_l1_term_equals_direct_computation(pair):
    m = make_model(pair, random_decoder=True)
    t = tokens()
    valid = torch.ones_like(t, dtype=torch.bool)
    valid[0, 7:] = False
    with torch.no_grad():
        acts = m(t, "adapt").acts
        got = l1_penalty(m, acts, valid)
        # the features again, read by hooks on the hybrid (the adapter model's other path)
        rec = {}
        hooks = adapter_hooks(m.adapters, record=rec)
        m.hybrid.run_with_hooks(t, fwd_hooks=hooks)
        want = 0.0
        for layer in range(m.n_layers):
            f = rec[layer][0]
            torch.testing.assert_close(f, acts[layer], rtol=1e-5, atol=1e-6)
            W = m.adapters[layer].W_dec
            per_tok = []
            for bi in range(t.shape[0]):
                for p in range(t.shape[1]):
                    if valid[bi, p]:
                        per_tok.append(sum(float(f[bi, p, i]) * float(W[i].norm())
                                           for i in range(W.shape[0])))
            want += sum(per_tok) / len(per_tok)
    assert abs(float(got) - want) < 1e-4 * max(1.0, abs(want))


def test_bridging_endpoints_reduce_to_pure_models(pair):
    m = make_model(pair, random_decoder=True)
    t = tokens()
    L = m.n_layers
    with torch.no_grad():
        ref, ad = m(t, "ref"), m(t, "adapt")
        a2r, r2a = m.bridged_logits(ad.resid[0], ref.resid[0], 0)
        torch.testing.assert_close(a2r, ref.logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(r2a, ad.logits, atol=1e-5, rtol=1e-5)
        a2r, r2a = m.bridged_logits(ad.resid[L], ref.resid[L], L)
        assert torch.equal(a2r, ad.logits) and torch.equal(r2a, ref.logits)


def test_bridging_midpoint_matches_hooked_construction(pair):
    m = make_model(pair, random_decoder=True)
    t = tokens()
    k = 1
    with torch.no_grad():
        ref, ad = m(t, "ref"), m(t, "adapt")
        a2r, r2a = m.bridged_logits(ad.resid[k], ref.resid[k], k)
        # a2r: adapters on layers < k, reasoner MLPs on layers >= k
        want_a2r = m.hybrid.run_with_hooks(t, fwd_hooks=adapter_hooks(m.adapters, layers=range(k))
                                           + mlp_swap_hooks(m, range(k, m.n_layers), m.reference))
        # r2a: reasoner MLPs on layers < k, adapters on layers >= k
        want_r2a = m.hybrid.run_with_hooks(
            t, fwd_hooks=mlp_swap_hooks(m, range(k), m.reference)
            + adapter_hooks(m.adapters, layers=range(k, m.n_layers)))
    torch.testing.assert_close(a2r, want_a2r, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(r2a, want_r2a, atol=1e-5, rtol=1e-5)


def test_bridge_term_at_endpoints_is_half_the_main_kl(pair):
    m = make_model(pair, random_decoder=True)
    t = tokens()
    valid = torch.ones_like(t, dtype=torch.bool)
    w = LossWeights(lambda_adapt=1, l1=0, lambda_nmse=0, lambda_bridge=1)
    for k in (0, m.n_layers):
        _, parts = adapter_loss(m, t, valid, w, k=k)
        torch.testing.assert_close(parts["bridge"], parts["kl"] / 2)
    # and the row-subset estimate at a midpoint uses only the chosen rows
    _, full = adapter_loss(m, t, valid, w, k=1)
    _, sub = adapter_loss(m, t[:1], valid[:1], w, k=1)
    _, part = adapter_loss(m, t, valid, w, k=1, bridge_rows=torch.tensor([0]))
    torch.testing.assert_close(part["bridge"], sub["bridge"], atol=1e-6, rtol=1e-5)
    assert float(full["bridge"]) > 0


def test_nmse_and_l0_against_direct(pair):
    from interp.adapters.loss import l0_per_layer, nmse_per_site

    m = make_model(pair, random_decoder=True)
    t = tokens()
    valid = torch.ones_like(t, dtype=torch.bool)
    with torch.no_grad():
        ref, ad = m(t, "ref"), m(t, "adapt")
        nm = nmse_per_site(ad.resid, ref.resid, valid)
        assert float(nm[0]) == 0.0  # shared embeddings
        for s in range(1, m.n_layers + 1):
            d = (ad.resid[s] - ref.resid[s]).flatten()
            assert abs(float(nm[s]) - float(d @ d / (ref.resid[s].flatten() @ ref.resid[s]
                                                      .flatten()))) < 1e-5
        l0 = l0_per_layer(ad.acts, valid)
        for layer, f in enumerate(ad.acts):
            assert abs(float(l0[layer]) - (f > 0).sum().item() / t.numel()) < 1e-6


# ------------------------------------------------------------------ masks in generation
def test_masks_zero_and_clamp_during_generation(pair):
    from interp.generation import generate

    m = make_model(pair, random_decoder=True)
    with torch.no_grad():
        for a in m.adapters.layers:
            a.b_dec.zero_()
    prompts = [[2, 10, 11, 12], [2, 13, 14]]
    # zeroing every feature of every layer (b_dec = 0) gives the hybrid exactly
    mask = FeatureMask(m.adapters.d_sae)
    for layer in range(m.n_layers):
        mask.zero(layer, range(m.adapters.d_sae))
    rec: dict = {}
    g_zero = generate(m.hybrid, prompts, max_new_tokens=6,
                      fwd_hooks=adapter_hooks(m.adapters, mask=mask, record=rec))
    g_hyb = generate(m.hybrid, prompts, max_new_tokens=6)
    assert [g.output_ids for g in g_zero] == [g.output_ids for g in g_hyb]
    assert all(float(f.abs().max()) == 0 for fs in rec.values() for f in fs)
    g_on = generate(m.hybrid, prompts, max_new_tokens=6, fwd_hooks=adapter_hooks(m.adapters),
                    stop_at_eos=False)
    with torch.no_grad():      # the same greedy tokens from the adapter model's own forward
        for p, g in zip(prompts, g_on):
            seq = list(p)
            for _ in range(6):
                seq.append(int(m(torch.tensor([seq]), "adapt").logits[0, -1].argmax()))
            assert g.output_ids == seq[len(p):]
    # clamp: feature 3 of layer 1 reads exactly 2.5 at every position and step
    cm = FeatureMask(m.adapters.d_sae).clamp(1, [3], 2.5).zero(0, [0, 1])
    rec2: dict = {}
    generate(m.hybrid, prompts, max_new_tokens=6,
             fwd_hooks=adapter_hooks(m.adapters, mask=cm, record=rec2))
    assert len(rec2[1]) >= 2  # prompt pass + decoding steps
    assert all(torch.all(f[..., 3] == 2.5) for f in rec2[1])
    assert all(torch.all(f[..., :2] == 0) for f in rec2[0])
    # a clamp applied as a forward pass equals adding value * W_dec[3] by hand
    t = torch.tensor([prompts[0]])
    with torch.no_grad():
        clamped = m.hybrid.run_with_hooks(
            t, fwd_hooks=adapter_hooks(m.adapters, mask=FeatureMask(m.adapters.d_sae)
                                       .clamp(1, [3], 2.5)))
        ad = m.adapters[1]

        def by_hand(act, hook=None):
            return act + (2.5 - f1[..., 3:4]) * ad.W_dec[3]

        rec3: dict = {}
        m.hybrid.run_with_hooks(t, fwd_hooks=adapter_hooks(m.adapters, record=rec3))
        f1 = rec3[1][0]
        want = m.hybrid.run_with_hooks(
            t, fwd_hooks=adapter_hooks(m.adapters) + [("blocks.1.hook_mlp_out", by_hand)])
    torch.testing.assert_close(clamped, want, atol=1e-5, rtol=1e-5)
    # hooks are always removed afterwards
    from interp.steering import n_active_hooks

    assert n_active_hooks(m.hybrid) == 0


# ------------------------------------------------------------------ saving
def test_save_load_roundtrip_bit_exact_and_saelens(pair, tmp_cache):
    from sae_lens import Transcoder

    from interp.adapters.io import find_adapters, load_adapter_tensors, load_saelens, save_adapters
    from interp.adapters.train import Setup, TrainConfig
    from interp.store import Store

    base, reasoner = pair
    m = make_model(pair, random_decoder=True)
    cfg = TrainConfig(base=str(base.path), reasoner=str(reasoner.path), d_sae=24)
    art = save_adapters(Setup(m, base, reasoner, torch.device("cpu"), reasoner.tokenizer), cfg,
                        store=Store(tmp_cache))
    assert find_adapters(Store(tmp_cache)).key == art.key
    back = load_adapter_tensors(art)
    for k, v in m.adapters.tensors().items():
        assert torch.equal(back.tensors()[k], v), k
    x = torch.randn(5, 32)
    for layer in range(m.n_layers):
        tc = load_saelens(art, layer)
        assert isinstance(tc, Transcoder)
        assert tc.cfg.metadata.hook_name == f"blocks.{layer}.ln2.hook_normalized"
        assert tc.cfg.metadata.hook_name_out == f"blocks.{layer}.hook_mlp_out"
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            assert torch.equal(getattr(tc, name).data, getattr(m.adapters[layer], name).data)
        with torch.no_grad():
            torch.testing.assert_close(tc(x), m.adapters[layer](x)[0], atol=0, rtol=0)
        cfgj = json.loads((art.path / f"layer_{layer}" / "cfg.json").read_text())
        assert cfgj["architecture"] == "transcoder" and cfgj["apply_b_dec_to_input"] is False
    meta = art.meta
    assert meta["pair"]["base"]["weight_hash"] == base.weight_hash
    assert meta["hooks"]["input"] == "blocks.{layer}.ln2.hook_normalized"
    assert meta["training_config"]["l1"] == cfg.l1


# ------------------------------------------------------------------ training jobs
def _spec(pair, tmp_path, **kw):
    base, reasoner = pair
    spec = dict(base=str(base.path), reasoner=str(reasoner.path), d_sae=16, steps=6,
                batch_size=4, max_len=12, data="random", ckpt_every=2, device="cpu",
                lr=3e-3, l1=1e-3, store_root=str(tmp_path / "store"), seed=5)
    spec.update(kw)
    return spec


def _curve(records):
    by_step = {}
    for r in records:
        by_step[r["step"]] = r["loss"]
    return [by_step[s] for s in sorted(by_step)]


class _Kill(BaseException):
    """Stands in for SIGKILL: not an Exception, so the job runner does not catch it."""


def test_killed_job_resumes_to_the_same_loss_curve(pair, tmp_path):
    from interp import jobs

    spec = _spec(pair, tmp_path)
    full = jobs.run_inline("adapters.train", spec, root=tmp_path / "a")
    assert full.state == "done"
    want = _curve(jobs.progress_records(full.id, tmp_path / "a"))
    assert len(want) == 6

    def killer(st):
        if st.step == 5:  # after the step-4 checkpoint; step 5's work is lost
            raise _Kill()

    with pytest.raises(_Kill):
        jobs.run_inline("adapters.train", spec, root=tmp_path / "b", on_progress=killer)
    st = jobs.run_inline("adapters.train", spec, root=tmp_path / "b")
    assert st.result["resumed_from"] == 4
    got = _curve(jobs.progress_records(st.id, tmp_path / "b"))
    assert got == want  # bit-identical on the same machine


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(pair, tmp_path):
    from safetensors.torch import load_file

    from interp import jobs
    from interp.errors import JobError

    spec = _spec(pair, tmp_path, nan_at_step=3)
    with pytest.raises(JobError) as e:
        jobs.run_inline("adapters.train", spec, root=tmp_path / "j")
    msg = str(e.value)
    assert "NaN" in msg or "nan" in msg
    assert "step 3" in msg and "last good checkpoint (step 2)" in msg
    jid = jobs.job_id("adapters.train", json.loads(json.dumps(spec)))
    st = jobs.status(jid, tmp_path / "j")
    assert st.state == "failed"
    work = tmp_path / "j" / jid / "work"
    latest = json.loads((work / "latest.json").read_text())
    assert latest["step"] == 2
    t = load_file(str(work / f"{latest['name']}.safetensors"))
    assert all(torch.isfinite(v.float()).all() for v in t.values())


def test_cancel_stops_training(pair, tmp_path):
    from interp import jobs

    spec = _spec(pair, tmp_path, steps=50)

    def cancel_at_3(st):
        if st.step == 3:
            (tmp_path / "c" / st.id / "cancel").touch()

    st = jobs.run_inline("adapters.train", spec, root=tmp_path / "c", on_progress=cancel_at_3,
                         raise_on_error=False)
    assert st.state == "cancelled" and st.step == 3


def test_training_reduces_kl_and_saves_artifact(pair, tmp_path):
    from interp import jobs
    from interp.store import Store

    spec = _spec(pair, tmp_path, steps=40, ckpt_every=40, lr=1e-2, l1=1e-4, lambda_bridge=2.0,
                 bridge_fraction=0.5)
    st = jobs.run_inline("adapters.train", spec, root=tmp_path / "t")
    recs = jobs.progress_records(st.id, tmp_path / "t")
    first = sum(r["kl"] for r in recs[:3]) / 3
    last = sum(r["kl"] for r in recs[-3:]) / 3
    assert last < 0.8 * first
    for key in ("loss", "kl", "l1", "nmse", "bridge", "l0", "tokens_per_s", "lr", "dead"):
        assert key in recs[-1]
    art = Store(tmp_path / "store").load("adapters", st.result["key"])
    assert art.meta["n_layers"] == 2


@pytest.mark.slow
def test_sigkilled_worker_resumes_to_the_same_loss_curve(pair, tmp_path):
    """The real thing: a detached worker process is SIGKILLed mid-run, then resumed."""
    import os
    import signal
    import time

    from interp import jobs

    spec = _spec(pair, tmp_path, steps=40, ckpt_every=5)
    full = jobs.run_inline("adapters.train", spec, root=tmp_path / "a")
    want = _curve(jobs.progress_records(full.id, tmp_path / "a"))
    jid = jobs.submit("adapters.train", spec, root=tmp_path / "k")
    t0 = time.time()
    while time.time() - t0 < 120:
        recs = jobs.progress_records(jid, tmp_path / "k")
        if recs and recs[-1]["step"] >= 12:
            break
        time.sleep(0.05)
    st = jobs.status(jid, tmp_path / "k")
    assert st.state == "running", st
    os.kill(st.pid, signal.SIGKILL)
    time.sleep(0.5)
    assert jobs.status(jid, tmp_path / "k").state == "interrupted"
    done = jobs.run_inline("adapters.train", spec, root=tmp_path / "k")
    assert 0 < done.result["resumed_from"] < 40
    got = _curve(jobs.progress_records(jid, tmp_path / "k"))
    assert got == want


def test_fused_bridging_equals_separate_passes(pair):
    m = make_model(pair, random_decoder=True)
    t = tokens(b=4)
    rows = torch.tensor([1, 3])
    with torch.no_grad():
        ref, ad = m(t, "ref"), m(t, "adapt")
        for k in range(1, m.n_layers):
            tr, la, lr = m.forward_bridged(t, k, rows, ref.resid[k][rows])
            wa, wr = m.bridged_logits(ad.resid[k][rows], ref.resid[k][rows], k)
            torch.testing.assert_close(tr.logits, ad.logits, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(la, wa, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(lr, wr, atol=1e-5, rtol=1e-5)
            assert len(tr.resid) == m.n_layers + 1 and tr.resid[-1].shape[0] == 4
            for fa, fb in zip(tr.acts, ad.acts):
                torch.testing.assert_close(fa, fb, atol=1e-5, rtol=1e-5)


def test_checkpoint_of_other_weights_is_not_resumed(pair, tmp_path):
    """A spec names models by path or name; if the weights behind it change (e.g. the
    organisms are rebuilt), a half-finished job must start over, not resume."""
    import shutil

    from safetensors.torch import load_file, save_file

    from interp import jobs

    base, reasoner = pair
    rdir = tmp_path / "reasoner"
    shutil.copytree(reasoner.path, rdir)
    spec = _spec(pair, tmp_path, reasoner=str(rdir))

    def killer(st):
        if st.step == 5:
            raise _Kill()

    with pytest.raises(_Kill):
        jobs.run_inline("adapters.train", spec, root=tmp_path / "j", on_progress=killer)
    f = rdir / "model.safetensors"
    sd = load_file(str(f))
    name = next(k for k in sd if "mlp" in k)
    sd[name] = sd[name] + 0.01
    save_file(sd, str(f), metadata={"format": "pt"})
    st = jobs.run_inline("adapters.train", spec, root=tmp_path / "j")
    assert st.state == "done" and st.result["resumed_from"] == 0
