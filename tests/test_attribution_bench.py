"""interp.attribution.benchmodel and ct_compare: the attribution benchmark's fixed model,
transcoders and prompt, and the reading of circuit-tracer's graphs.

The last test runs circuit-tracer itself (its own venv, ``.venv-ct`` or
``$INTERP_CT_PYTHON``) and checks its graph against this venv's model: identical
logits and active features, and single edges against a frozen-model intervention done
here with plain TransformerLens hooks. It is skipped where that venv is absent.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from interp.attribution import benchmodel as bm
from interp.attribution import ct_compare as cc
from interp.errors import ArtifactError, ConfigError

N_TOK = 24


@pytest.fixture(scope="module")
def setup_dir(tmp_path_factory):
    return bm.save_bench_setup(tmp_path_factory.mktemp("bench") / "setup", N_TOK)


# -- builders ---------------------------------------------------------------------------
def test_transcoders_deterministic_and_shaped():
    a, b = bm.build_bench_transcoders(), bm.build_bench_transcoders()
    c = bm.build_bench_transcoders(seed=1)
    assert len(a) == 4
    for ta, tb, tc in zip(a, b, c):
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            assert torch.equal(getattr(ta, name), getattr(tb, name))
        assert not torch.equal(ta.W_enc, tc.W_enc)
        assert ta.W_enc.shape == ta.W_dec.shape == (1024, 128)
        assert torch.allclose(ta.W_enc.norm(dim=1), torch.ones(1024), atol=1e-5)
        assert torch.all(ta.b_enc == -2.4) and torch.all(ta.b_dec == 0)
        assert abs(float(ta.W_dec.std()) - 0.05) < 0.002
    assert not torch.equal(a[0].W_enc, a[1].W_enc)  # layers get their own draws


def test_model_deterministic_keeps_callers_rng():
    before = torch.get_rng_state()
    m1 = bm.build_bench_model()
    assert torch.equal(torch.get_rng_state(), before)  # TL seeds globally; we restore
    m2 = bm.build_bench_model(n_ctx=64)  # weights do not depend on n_ctx
    m3 = bm.build_bench_model(seed=1)
    p1, p2, p3 = (dict(m.named_parameters()) for m in (m1, m2, m3))
    assert set(p1) == set(p2)
    assert all(torch.equal(p1[k], p2[k]) for k in p1)
    assert not torch.equal(p1["embed.W_E"], p3["embed.W_E"])
    cfg = m1.cfg
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp, cfg.d_vocab,
            cfg.n_ctx) == (4, 128, 4, 32, 512, 100, 4096)
    assert cfg.gated_mlp and cfg.act_fn == "silu" and cfg.normalization_type == "RMS"
    assert cfg.positional_embedding_type == "rotary"


def test_prompt_deterministic_and_prefix_stable():
    p = bm.bench_prompt(256)
    assert p[0] == bm.BOS_ID and p.dtype == torch.long and len(p) == 256
    long = bm.bench_prompt(4096)  # every id of [1, 100) drawn, BOS only in front
    assert set(long[1:].tolist()) == set(range(1, 100))
    assert torch.equal(p, bm.bench_prompt(256))
    assert torch.equal(bm.bench_prompt(64), p[:64])  # shorter prompts are prefixes
    assert torch.equal(long[:256], p)
    assert not torch.equal(bm.bench_prompt(256, seed=1), p)
    with pytest.raises(ConfigError):
        bm.bench_prompt(1)


def test_activation_density_about_eight(setup_dir):
    s = bm.load_bench_setup(setup_dir)
    x = bm.mlp_inputs(s.model, s.input_ids)
    # the transcoders read RMS-normalised inputs (gain 1 at init)
    assert torch.allclose(x.pow(2).mean(-1).sqrt(), torch.ones(4, N_TOK), atol=1e-3)
    per_layer = [float((t.encode(x[t.layer])[1:] > 0).sum(-1).float().mean())
                 for t in s.transcoders]
    assert 6 <= sum(per_layer) / 4 <= 13, per_layer
    assert all(3 <= d <= 18 for d in per_layer), per_layer


def test_save_load_round_trip(setup_dir, tmp_path):
    s = bm.load_bench_setup(setup_dir)
    model = bm.build_bench_model()
    own = dict(model.named_parameters())
    assert all(torch.equal(p, own[n]) for n, p in s.model.named_parameters())
    for t, u in zip(s.transcoders, bm.build_bench_transcoders()):
        assert all(torch.equal(getattr(t, n), getattr(u, n))
                   for n in ("W_enc", "b_enc", "W_dec", "b_dec"))
    assert torch.equal(s.input_ids, bm.bench_prompt(N_TOK))
    with torch.no_grad():
        assert torch.equal(s.model(s.input_ids[None]), model(s.input_ids[None]))
    meta = json.loads((setup_dir / bm.SETUP_FILE).read_text())
    assert meta["transcoders"]["feature_input_hook"] == "mlp.hook_in"
    # bad folders and settings
    with pytest.raises(ArtifactError):
        bm.load_bench_setup(tmp_path / "nothing")
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in (bm.MODEL_FILE, bm.TRANSCODERS_FILE):
        (bad / f).write_bytes((setup_dir / f).read_bytes())
    (bad / bm.SETUP_FILE).write_text(json.dumps({**meta, "format": "other"}))
    with pytest.raises(ArtifactError, match="format"):
        bm.load_bench_setup(bad)
    with pytest.raises(ConfigError):
        bm.save_bench_setup(tmp_path / "x", 5000)


# -- reading circuit-tracer graphs -------------------------------------------------------
def _edge_value(target: tuple, source: tuple) -> float:
    """A value that names its (target, source) pair: any misplaced entry differs."""
    def code(k):
        kind = {"feature": 1, "error": 2, "token": 3, "logit": 4}[k[0]]
        return kind * 10**6 + sum(int(v) * 97**i for i, v in enumerate(k[1:]))
    return float(code(target) % 9973) + float(code(source) % 7919) / 7919.0


def _fake_ct_file(path, n_layers=3, n_pos=5, n_logits=2, keep=None):
    """A ct_runner-style output built from circuit-tracer's documented node order."""
    g = torch.Generator().manual_seed(3)
    act = []
    for layer in range(n_layers):
        for pos in range(1, n_pos):
            for f in sorted(torch.randperm(50, generator=g)[:2].tolist()):
                act.append((layer, pos, f))
    active = torch.tensor(act)
    sel = torch.arange(len(act)) if keep is None else torch.tensor(keep)
    keys = [("feature", *act[i]) for i in sel.tolist()]
    keys += [("error", la, p) for la in range(n_layers) for p in range(n_pos)]
    keys += [("token", p) for p in range(n_pos)]
    logit_ids = [7, 3][:n_logits]
    keys += [("logit", t) for t in logit_ids]
    n = len(keys)
    adj = torch.zeros(n, n, dtype=torch.float64)
    for i, tk in enumerate(keys):
        if tk[0] in ("feature", "logit"):
            for j, sk in enumerate(keys):
                if sk[0] != "logit":
                    adj[i, j] = _edge_value(tk, sk)
    save_file({"adjacency_matrix": adj, "active_features": active,
               "activation_values": torch.arange(len(act), dtype=torch.float32) + 0.5,
               "selected_features": sel, "input_tokens": torch.arange(n_pos),
               "logit_token_ids": torch.tensor(logit_ids),
               "logit_probabilities": torch.tensor([0.6, 0.3])[:n_logits],
               "logits_last": torch.zeros(100)}, str(path))
    return keys


def test_ct_graph_blocks_follow_node_order(tmp_path):
    keys = _fake_ct_file(tmp_path / "g.safetensors")
    g = cc.load_ct_graph(tmp_path / "g.safetensors")
    assert (g.n_layers, g.n_pos, g.n_logits) == (3, 5, 2)
    assert cc.ct_node_keys(g) == keys
    d = cc.ct_edges_as_dense(g)
    fk = [("feature", *k) for k in d["feature_keys"].tolist()]
    for i, t in enumerate(fk):
        for j, s in enumerate(fk):
            assert d["feature_to_feature"][i, j] == _edge_value(t, s)
        for layer in range(3):
            for p in range(5):
                assert d["error_to_feature"][i, layer, p] == _edge_value(t, ("error", layer, p))
        for p in range(5):
            assert d["token_to_feature"][i, p] == _edge_value(t, ("token", p))
    for k, tid in enumerate([7, 3]):
        t = ("logit", tid)
        assert [float(v) for v in d["feature_to_logit"][k]] == [_edge_value(t, s) for s in fk]
        assert d["error_to_logit"][k, 2, 4] == _edge_value(t, ("error", 2, 4))
        assert d["token_to_logit"][k, 0] == _edge_value(t, ("token", 0))
    assert torch.equal(d["feature_activations"], g.activation_values)

    # another engine's order: reversed keys give the reversed blocks
    rev = d["feature_keys"].flip(0)
    r = cc.ct_edges_as_dense(g, feature_keys=rev)
    assert torch.equal(r["feature_to_feature"], d["feature_to_feature"].flip(0).flip(1))
    assert torch.equal(r["error_to_logit"], d["error_to_logit"])
    diff = cc.max_abs_diff_by_block(r, cc.ct_edges_as_dense(g, feature_keys=rev))
    assert diff["max"] == 0.0
    bumped = dict(r, token_to_feature=r["token_to_feature"] + 0.25)
    assert cc.max_abs_diff_by_block(bumped, r)["token_to_feature"] == 0.25
    with pytest.raises(ArtifactError, match="not"):
        cc.ct_edges_as_dense(g, feature_keys=torch.tensor([[0, 0, 1]]))


def test_ct_graph_with_selected_subset(tmp_path):
    keys = _fake_ct_file(tmp_path / "g.safetensors", keep=[1, 4, 5])
    g = cc.load_ct_graph(tmp_path / "g.safetensors")
    assert g.n_features == 3 and cc.ct_node_keys(g) == keys
    d = cc.ct_edges_as_dense(g)
    assert torch.equal(d["feature_keys"], g.active_features[[1, 4, 5]])
    assert torch.equal(d["feature_activations"], torch.tensor([1.5, 4.5, 5.5]))
    t, s = ("feature", *g.active_features[4].tolist()), ("feature", *g.active_features[5].tolist())
    assert d["feature_to_feature"][1, 2] == _edge_value(t, s)


def test_ct_python_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv(cc.CT_PYTHON_ENV, str(tmp_path / "no-python"))
    with pytest.raises(ConfigError, match="pip install circuit-tracer==0.5.0"):
        cc.ct_python()
    with pytest.raises(ConfigError):
        cc.run_circuit_tracer(tmp_path, n_tokens=8)
    with pytest.raises(ArtifactError):
        cc.load_ct_graph(tmp_path / "absent.safetensors")


# -- circuit-tracer itself (its own venv) -------------------------------------------------
def _frozen_runner(model, ids):
    """Frozen linear model of ``model`` on ``ids``: attention patterns, norm scales and
    MLP outputs held at their clean values. ``run(deltas)`` adds ``deltas[(hook, pos)]``
    to a hook's output and returns (mlp inputs after the gain [L, P, d], last logits)."""
    L = model.cfg.n_layers
    frozen = [n for n in model.hook_dict if n.endswith("hook_pattern") or n.endswith("hook_scale")]
    outs = [f"blocks.{la}.hook_mlp_out" for la in range(L)]
    ins = [f"blocks.{la}.ln2.hook_normalized" for la in range(L)]
    cache = {}
    with torch.no_grad():
        model.run_with_hooks(ids[None], fwd_hooks=[
            (n, lambda a, hook: cache.__setitem__(hook.name, a.clone())) for n in frozen + outs])

    def run(deltas):
        got = {}

        def hook_fn(a, hook):
            a = cache[hook.name].clone() if hook.name in cache else a.clone()
            for (name, pos), vec in deltas.items():
                if name == hook.name:
                    a[0, pos] += vec
            return a

        def keep(a, hook):
            got[hook.name] = a[0]

        names = set(frozen + outs) | {n for n, _ in deltas}
        with torch.no_grad():
            logits = model.run_with_hooks(ids[None], fwd_hooks=[(n, hook_fn) for n in names]
                                          + [(n, keep) for n in ins])
        x = torch.stack([got[ins[la]] * model.blocks[la].ln2.w for la in range(L)])
        return x, logits[0, -1]
    return run


def test_circuit_tracer_graph_matches_frozen_interventions(setup_dir):
    try:
        cc.ct_python()
    except ConfigError:
        pytest.skip("circuit-tracer's venv (.venv-ct) is not installed")
    n = 12
    info = cc.run_circuit_tracer(setup_dir, n_tokens=n, batch_size=64, check=True)
    comp = info["completeness"]
    assert comp["logit_rows_max_abs_diff_frozen_pos0_zeroed"] < 1e-4
    assert comp["feature_rows_max_abs_diff_frozen_pos0_zeroed"] < 1e-4
    assert info["versions"]["circuit_tracer"] == "0.5.0"
    g = cc.load_ct_graph(info["out_file"])
    d = cc.ct_edges_as_dense(g)

    s = bm.load_bench_setup(setup_dir)
    ids = s.input_ids[:n]
    model, tcs = s.model, s.transcoders
    with torch.no_grad():
        assert torch.allclose(model(ids[None])[0, -1], g.logits_last, atol=1e-5)
    # active features: ours, from the same MLP inputs, position 0 dropped
    x = bm.mlp_inputs(model, ids)
    ours = [[t.layer, p, f] for t in tcs
            for p, f in (t.encode(x[t.layer]) > 0).nonzero().tolist() if p > 0]
    assert g.active_features.tolist() == ours
    acts = torch.stack([tcs[la].encode(x[la])[p, f] for la, p, f in ours])
    assert torch.allclose(acts, g.activation_values, atol=1e-5)

    # single edges against interventions in the frozen model
    run = _frozen_runner(model, ids)
    x0, logits0 = run({})
    keys = d["feature_keys"].tolist()
    gen = torch.Generator().manual_seed(0)
    late = [i for i, (la, p, _) in enumerate(keys) if la >= 2 and p >= 3]
    for ti in torch.tensor(late)[torch.randperm(len(late), generator=gen)[:4]].tolist():
        tl, tp, tf = keys[ti]
        w_enc = tcs[tl].W_enc[tf]
        sources = [i for i, (la, p, _) in enumerate(keys) if la < tl and p <= tp][:6]
        for si in sources:
            sl, sp, sf = keys[si]
            write = d["feature_activations"][si] * tcs[sl].W_dec[sf]
            xs, _ = run({(f"blocks.{sl}.hook_mlp_out", sp): write})
            want = float(w_enc @ (xs[tl, tp] - x0[tl, tp]))
            assert abs(float(d["feature_to_feature"][ti, si]) - want) < 1e-4
        # the token at the target's own position
        xs, _ = run({("hook_embed", tp): model.W_E[ids[tp]].detach()})
        want = float(w_enc @ (xs[tl, tp] - x0[tl, tp]))
        assert abs(float(d["token_to_feature"][ti, tp]) - want) < 1e-4
        # a later source has no edge
        later = [i for i, (la, p, _) in enumerate(keys) if la >= tl or p > tp]
        assert float(d["feature_to_feature"][ti, later].abs().max()) == 0.0
    # logit edges: the de-meaned unembedding direction at the last position
    k = 0
    for si in torch.randperm(len(keys), generator=gen)[:5].tolist():
        sl, sp, sf = keys[si]
        write = d["feature_activations"][si] * tcs[sl].W_dec[sf]
        _, lg = run({(f"blocks.{sl}.hook_mlp_out", sp): write})
        dl = lg - logits0
        want = float(dl[g.logit_token_ids[k]] - dl.mean())
        assert abs(float(d["feature_to_logit"][k, si]) - want) < 1e-4
    assert float(d["error_to_logit"][:, :, 0].abs().max()) == 0.0  # BOS error is zero


# -- the benchmarks (our side in subprocesses) -------------------------------------------
def test_graph_edges_as_dense_matches_graph(setup_dir):
    """Our graph cut into circuit-tracer's blocks: every block entry is the graph's edge
    between the same two nodes."""
    from interp.attribution.bench import bench_replacement
    from interp.attribution.engine import attribute
    from interp.attribution.graph import ERROR, FEATURE, TOKEN
    from interp.attribution.record import record

    s = bm.load_bench_setup(setup_dir)
    g = attribute(record(s.model, s.input_ids[:12], bench_replacement(s)))
    d = cc.graph_edges_as_dense(g)
    keys = d["feature_keys"].tolist()
    assert keys == sorted(keys) and len(keys) == int((g.nodes.kind == FEATURE).sum())
    tids = g.target_ids().tolist()
    gen = torch.Generator().manual_seed(0)
    for i in torch.randint(0, len(keys), (5,), generator=gen).tolist():
        t = g.find(FEATURE, *keys[i])
        for j in torch.randint(0, len(keys), (5,), generator=gen).tolist():
            assert float(d["feature_to_feature"][i, j]) == g.edge(t, g.find(FEATURE, *keys[j]))
        assert float(d["error_to_feature"][i, 1, 5]) == g.edge(t, g.find(ERROR, 1, 5))
        assert float(d["token_to_feature"][i, 3]) == g.edge(t, g.find(TOKEN, -1, 3))
    for k, t in enumerate(tids):
        assert float(d["feature_to_logit"][k, 2]) == g.edge(t, g.find(FEATURE, *keys[2]))
        assert float(d["error_to_logit"][k, 3, 11]) == g.edge(t, g.find(ERROR, 3, 11))
        assert float(d["token_to_logit"][k, 7]) == g.edge(t, g.find(TOKEN, -1, 7))
    assert d["logit_token_ids"].tolist() == [t["token"] for t in g.targets]


def test_scaling_bench_figures(setup_dir):
    """The scaling bench on tiny lengths: its keys, and figures that agree with an
    in-process attribution of the same prompt (features, rows under a cap, nodes)."""
    from interp.attribution.bench import bench_replacement, scaling
    from interp.attribution.engine import attribute
    from interp.attribution.record import record

    res = scaling(lengths=[10, 16], reps=1, cap=25, uncapped_up_to=10, prune_max_nodes=30)
    assert res["lengths"] == [10, 16] and res["reps"] == 1 and res["threads"] == 1
    s = bm.load_bench_setup(setup_dir)
    for n, cap in ((10, None), (16, 25)):
        r = res["per_length"][str(n)]
        for k in ("seconds", "peak_bytes", "cpu_seconds", "features", "rows", "feature_cap",
                  "nodes", "prune_seconds", "seconds_spread", "load_average"):
            assert k in r, k
        assert r["seconds"] > 0 and r["peak_bytes"] >= r["rss_before_bytes"] > 0
        assert r["feature_cap"] == cap
        g = attribute(record(s.model, s.input_ids[:n], bench_replacement(s)),
                      max_feature_nodes=cap)
        assert r["features"] == g.info["n_active_features"]
        assert r["rows"] == g.info["n_feature_rows"] == (r["features"] if cap is None else cap)
        assert r["nodes"] == len(g.nodes)
        assert r["prune_max_nodes"] == (None if cap is None else 30)


def test_vs_circuit_tracer_bench(setup_dir):
    try:
        cc.ct_python()
    except ConfigError:
        pytest.skip("circuit-tracer's venv (.venv-ct) is not installed")
    from interp.attribution.bench import vs_circuit_tracer

    res = vs_circuit_tracer(n_tokens=16, reps=1, ct_reps=1)
    for k in ("ours_seconds", "ct_seconds", "time_ratio", "memory_ratio", "max_edge_diff"):
        assert isinstance(res[k], float), k
    assert res["time_ratio"] == pytest.approx(res["ours_seconds"] / res["ct_seconds"])
    assert res["max_edge_diff"] < 1e-4
    assert res["edges"]["n_feature_nodes"] > 20
    assert set(res["edges"]["edge_diff_by_block"]) == set(cc.EDGE_BLOCKS)
    assert res["target_ids"] == res["edges"]["logit_token_ids"]
