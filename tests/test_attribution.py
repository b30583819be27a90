"""Attribution graphs: every edge against an actual perturbation of the frozen model.

The reference here is independent of :mod:`interp.attribution.linear`: it runs the
TransformerLens model itself, with hooks that freeze what the local linear model
freezes (attention patterns and norm scales at their clean values; a kept MLP's
activation as ``pre · act(pre0)/pre0`` and its gated product half through each factor)
and that set every feature activation, error vector and token embedding from outside.
Zeroing one source then changes every target by exactly that source's edge.
"""

from __future__ import annotations

import pytest
import torch

from interp.adapters.model import adapter_hooks
from interp.adapters.module import AdapterSet
from interp.attribution.engine import attribute
from interp.attribution.graph import ERROR, FEATURE, TARGET, TOKEN
from interp.attribution.record import record
from interp.attribution.replacement import FeatureLayer, Replacement, adapter_replacement
from interp.attribution.targets import DirectionTarget, LogitDiffTarget, LogitTarget
from interp.hybrid import build_hybrid
from interp.models import load_model

DT = torch.float64


def random_transcoders(cfg, n: int = 24, site: str = "ln2_out", seed: int = 0,
                       bias: float = -0.6) -> list[FeatureLayer]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(cfg.n_layers):
        W_enc = torch.randn(cfg.d_model, n, generator=g, dtype=DT)
        W_enc = W_enc / W_enc.norm(dim=0, keepdim=True)
        out.append(FeatureLayer(W_enc, torch.full((n,), bias, dtype=DT) + 0.1 * torch.randn(
            n, generator=g, dtype=DT), 0.3 * torch.randn(n, cfg.d_model, generator=g, dtype=DT),
            0.05 * torch.randn(cfg.d_model, generator=g, dtype=DT), site=site))
    return out


@pytest.fixture(scope="module")
def tiny64(tiny_qwen_dir):
    return load_model(str(tiny_qwen_dir), device="cpu", dtype="float64")


@pytest.fixture(scope="module")
def pair64(tiny_pair_dirs):
    base = load_model(str(tiny_pair_dirs[0]), device="cpu", dtype="float64")
    fine = load_model(str(tiny_pair_dirs[1]), device="cpu", dtype="float64")
    return base, fine, build_hybrid(base, fine)


def prompt(n: int = 9, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.tensor([2] + torch.randint(4, 30, (n - 1,), generator=g).tolist())


# ---------------------------------------------------------------------- reference
def clean_run(hooked, tokens, fwd_hooks=()):
    """Everything the frozen model holds fixed, from one run of the true model."""
    names = lambda n: n.endswith(("hook_scale", "hook_pattern", "hook_mlp_out",  # noqa: E731
                                  "hook_resid_pre"))
    cache = {}
    mlp_in = {}
    hs = [blk.mlp.register_forward_pre_hook(
        lambda mod, args, _l=i: mlp_in.__setitem__(_l, args[0].detach()))
        for i, blk in enumerate(hooked.blocks)]
    try:
        def keep(act, hook):
            cache[hook.name] = act.detach().clone()
        hooked.run_with_hooks(tokens[None], fwd_hooks=list(fwd_hooks) + [(names, keep)])
    finally:
        for h in hs:
            h.remove()
    return cache, mlp_in


def kept_mlp_pieces(mlp, x0):
    pre0 = x0 @ mlp.W_gate
    act0 = mlp.act_fn(pre0)
    return pre0, act0, x0 @ mlp.W_in


def frozen_run(rep: Replacement, model_for_mlp, hooked, tokens, clean, mlp_in, acts,
               errors, embed, live=None, zero=None):
    """Run the frozen linear model with the given sources; returns (pre-activations per
    layer ``[P, n]``, logits ``[P, V]``). With ``live`` (per layer, a 0/1 mask of the
    active features) the features are not given but respond to their inputs (``a = pre``
    where active), except ``zero = (layer, pos, feature)``, held at 0."""
    run_model = model_for_mlp if rep.keep_mlp else hooked
    cur: dict[str, torch.Tensor] = {}
    site_vals: dict[int, torch.Tensor] = {}
    hooks = [("blocks.0.hook_resid_pre", lambda a, hook: embed[None])]

    def const(name):
        return lambda a, hook: clean[name]

    for name in clean:
        if name.endswith(("hook_scale", "hook_pattern")):
            hooks.append((name, const(name)))
    for li, fl in enumerate(rep.layers):
        b = f"blocks.{li}."
        if fl.site == "normalized":
            hooks.append((b + "ln2.hook_normalized",
                          lambda a, hook, _l=li: site_vals.__setitem__(_l, a[0])))
        elif fl.site == "resid_mid":
            hooks.append((b + "hook_resid_mid",
                          lambda a, hook, _l=li: site_vals.__setitem__(_l, a[0])))
        if rep.keep_mlp:
            mlp = run_model.blocks[li].mlp
            pre0, act0, up0 = kept_mlp_pieces(mlp, mlp_in[li][0])
            ratio0 = act0 / pre0

            def save(name):
                return lambda a, hook: cur.__setitem__(name, a)
            hooks.append((b + "mlp.hook_pre", save(f"pre{li}")))
            hooks.append((b + "mlp.hook_pre_linear", save(f"lin{li}")))
            hooks.append((b + "mlp.hook_post", lambda a, hook, _l=li, r=ratio0, u=up0, g=act0:
                          0.5 * r * cur[f"pre{_l}"] * u + 0.5 * g * cur[f"lin{_l}"]))

        def mlp_out(a, hook, _l=li, _fl=fl):
            kept = (a - model_for_mlp.blocks[_l].mlp.b_out) if rep.keep_mlp else 0.0
            f = acts[_l]
            if live is not None:
                f = _fl.pre(site_vals[_l]) * live[_l]
                if zero is not None and zero[0] == _l:
                    f = f.clone()
                    f[zero[1], zero[2]] = 0
            return kept + (f @ _fl.W_dec + _fl.b_dec + errors[_l])[None]
        hooks.append((b + "hook_mlp_out", mlp_out))
    handles = []
    for li, fl in enumerate(rep.layers):
        if fl.site == "ln2_out":
            handles.append(run_model.blocks[li].mlp.register_forward_pre_hook(
                lambda mod, args, _l=li: site_vals.__setitem__(_l, args[0][0])))
    try:
        logits = run_model.run_with_hooks(tokens[None], fwd_hooks=hooks)[0]
    finally:
        for h in handles:
            h.remove()
    pres = [fl.pre(site_vals[li]) for li, fl in enumerate(rep.layers)]
    return pres, logits


def reference_edges(graph, rep, hooked, tokens, fwd_hooks=(), skip_bos=True):
    """Edge matrix ``[targets with rows, sources]`` by zeroing each source."""
    model_for_mlp = rep.mlp_model if rep.keep_mlp else hooked
    clean, mlp_in = clean_run(hooked, tokens, fwd_hooks)
    sites = {}

    def grab(name):
        def h(a, hook):
            sites[name] = a[0].detach().clone()
        return h
    L = len(rep.layers)
    hooked.run_with_hooks(tokens[None], fwd_hooks=list(fwd_hooks) + [
        (f"blocks.{li}.ln2.hook_normalized", grab(f"n{li}")) for li in range(L)] + [
        (f"blocks.{li}.hook_resid_mid", grab(f"r{li}")) for li in range(L)])
    acts = []
    errors = []
    for li, fl in enumerate(rep.layers):
        x = {"normalized": sites[f"n{li}"], "resid_mid": sites[f"r{li}"],
             "ln2_out": mlp_in[li][0]}[fl.site]
        a = fl.activations(x)
        if skip_bos:
            a[0] = 0
        acts.append(a)
        recon = a @ fl.W_dec + fl.b_dec
        if rep.keep_mlp:
            mlp = model_for_mlp.blocks[li].mlp
            pre0, act0, up0 = kept_mlp_pieces(mlp, mlp_in[li][0])
            recon = recon + (act0 * up0) @ mlp.W_out
        err = clean[f"blocks.{li}.hook_mlp_out"][0] - recon
        if skip_bos:
            err[0] = 0  # the BOS position's MLP output is a constant (no node)
        errors.append(err)
    embed = clean["blocks.0.hook_resid_pre"][0]

    def values(acts_, errors_, embed_):
        pres, logits = frozen_run(rep, model_for_mlp, hooked, tokens, clean, mlp_in, acts_,
                                  errors_, embed_)
        out = []
        for r in graph.edges.row_ids().tolist():
            kind, layer, pos, feat = graph.node_key(r)
            if kind == FEATURE:
                out.append(pres[layer][pos, feat])
            else:
                t = graph.targets[r - int(graph.target_ids()[0])]
                lg = logits[t["pos"]]
                if t["kind"] == "logit":
                    out.append(lg[t["token"]] - lg.mean())
                elif t["kind"] == "logit_set":
                    out.append(lg[t["tokens"]].sum() - len(t["tokens"]) * lg.mean())
                else:
                    out.append(lg[t["token"]] - lg[t["other"]])
        return torch.stack(out)

    base = values(acts, errors, embed)
    n_src = graph.nodes.n_sources
    ref = torch.zeros(base.shape[0], n_src, dtype=DT)
    for s in range(n_src):
        kind, layer, pos, feat = graph.node_key(s)
        a2 = [a.clone() for a in acts]
        e2 = [e.clone() for e in errors]
        m2 = embed.clone()
        if kind == FEATURE:
            a2[layer][pos, feat] = 0
        elif kind == ERROR:
            e2[layer][pos] = 0
        else:
            m2[pos] = 0
        ref[:, s] = base - values(a2, e2, m2)
    return ref, base


def engine_edges(graph):
    rows = graph.edges.row_ids()
    dense = graph.edges.dense(len(graph.nodes)).double()
    return dense[rows][:, : graph.nodes.n_sources]


def assert_edges_match(graph, ref):
    mine = engine_edges(graph)
    scale = float(ref.abs().max())
    err = float((mine - ref).abs().max())
    assert scale > 1e-3
    assert err <= 1e-9 * scale, f"max edge error {err:.3g} vs edge scale {scale:.3g}"


# ---------------------------------------------------------------------- tests
def test_transcoder_edges_equal_perturbations(tiny64):
    """Plain transcoders (MLP replaced): every edge of every row, from every feature,
    error and token source, equals the target's change when that source is zeroed."""
    h = tiny64.hooked
    rep = Replacement(random_transcoders(h.cfg, site="ln2_out"), keep_mlp=False)
    toks = prompt()
    rec = record(tiny64, toks, rep, dtype=DT)
    graph = attribute(rec, [LogitTarget(7, -1), LogitDiffTarget(9, 11, pos=-3)])
    assert int((graph.nodes.kind == FEATURE).sum()) > 20
    ref, _ = reference_edges(graph, rep, h, toks)
    assert_edges_match(graph, ref)


@pytest.mark.parametrize("site", ["normalized", "resid_mid"])
def test_encoder_sites(tiny64, site):
    h = tiny64.hooked
    rep = Replacement(random_transcoders(h.cfg, site=site, seed=1), keep_mlp=False)
    toks = prompt(7, seed=5)
    graph = attribute(record(tiny64, toks, rep, dtype=DT), [LogitTarget(5, -1)])
    ref, _ = reference_edges(graph, rep, h, toks)
    assert_edges_match(graph, ref)


@pytest.mark.parametrize("explain", ["adapter", "reasoner"])
def test_adapter_edges_equal_perturbations(pair64, explain):
    """Adapters on the hybrid's base MLPs (kept, linearised by the RelP rule): graphs of
    the adapter model and of the reasoner both match the frozen model edge by edge."""
    base, fine, hybrid = pair64
    cfg = hybrid.cfg
    ad = AdapterSet(cfg.n_layers, cfg.d_model, 24, seed=0)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for a in ad.layers:
            a.W_dec.copy_(0.3 * torch.randn(a.W_dec.shape, generator=g))
            a.b_enc.fill_(-0.3)
            a.b_dec.copy_(0.05 * torch.randn(a.b_dec.shape, generator=g))
    ad = ad.double()
    rep = adapter_replacement(ad, hybrid)
    toks = prompt(8, seed=7)
    if explain == "adapter":
        true_model, hooks = hybrid, adapter_hooks(ad)
    else:
        true_model, hooks = fine.hooked, ()
    rec = record(true_model, toks, rep, fwd_hooks=hooks, dtype=DT)
    graph = attribute(rec, [LogitTarget(6, -1)])
    if explain == "adapter":  # errors: only the linearisation remainder (no MLP biases)
        assert max(float(lr.error.abs().max()) for lr in rec.layers) < 1e-9
    ref, base_vals = reference_edges(graph, rep, true_model, toks, hooks)
    assert_edges_match(graph, ref)


def test_completeness_target_value(tiny64):
    """The edges into a logit plus the constant (bias) part reproduce the true logit:
    with every source zeroed the frozen model gives exactly that constant."""
    h = tiny64.hooked
    rep = Replacement(random_transcoders(h.cfg), keep_mlp=False)
    toks = prompt()
    rec = record(tiny64, toks, rep, dtype=DT)
    graph = attribute(rec, [LogitTarget(7, -1)])
    t = int(graph.target_ids()[0])
    value = graph.nodes.activation[t]
    lg = rec.logits(-1)
    assert float(value) == pytest.approx(float(lg[7] - lg.mean()), abs=1e-6)


def test_direction_target_matches_projection(tiny64):
    """A residual-direction target's edges sum (with constants) to the projection: here
    checked against zeroing each source through the same frozen model."""
    h = tiny64.hooked
    rep = Replacement(random_transcoders(h.cfg, seed=2), keep_mlp=False)
    toks = prompt(8, seed=9)
    v = torch.randn(h.cfg.d_model, dtype=DT)
    rec = record(tiny64, toks, rep, dtype=DT)
    graph = attribute(rec, [DirectionTarget(v, layer=0, site="resid_post", pos=5)])
    row = graph.edges.row(int(graph.target_ids()[0]))
    # sources after position 5 or above layer 0 cannot reach it
    for s in range(graph.nodes.n_sources):
        kind, layer, pos, _ = graph.node_key(s)
        if pos > 5 or (kind in (FEATURE, ERROR) and layer > 0):
            assert row[s] == 0
    assert float(row.abs().sum()) > 0
    # layer-0 features at position 5 write straight into resid_post of layer 0
    lr = rec.layers[0]
    for k in (lr.feat_pos == 5).nonzero().flatten().tolist():
        f = int(lr.feat_idx[k])
        s = graph.find(FEATURE, 0, 5, f)
        want = float(lr.feat_act[k] * (rep.layers[0].W_dec[f] @ v))
        assert float(row[s]) == pytest.approx(want, rel=1e-6, abs=1e-9)


def test_positive_edge_raises_target_in_real_model(tiny64):
    """Sign: in the real model (nothing frozen), raising a last-layer feature with a
    positive edge to the logit raises the logit; a negative edge lowers it."""
    h = tiny64.hooked
    rep = Replacement(random_transcoders(h.cfg, seed=3), keep_mlp=False)
    toks = prompt(9, seed=11)
    rec = record(tiny64, toks, rep, dtype=DT)
    tok = 7
    graph = attribute(rec, [LogitTarget(tok, -1)])
    t = int(graph.target_ids()[0])
    row = graph.edges.row(t)
    L = h.cfg.n_layers
    cands = [s for s in range(graph.nodes.n_sources)
             if graph.node_key(s)[0] == FEATURE and graph.node_key(s)[1] == L - 1
             and float(row[s]) != 0]
    cands.sort(key=lambda s: -abs(float(row[s])))
    checked = 0
    assert len(cands) >= 4
    for s in cands[:6]:
        _, layer, pos, feat = graph.node_key(s)
        delta = 0.01
        w = rep.layers[layer].W_dec[feat]

        def bump(a, hook, _p=pos, _w=w, _d=delta):
            a = a.clone()
            a[0, _p] += _d * _w
            return a
        lg0 = h(toks[None])[0, -1]
        lg1 = h.run_with_hooks(toks[None], fwd_hooks=[(f"blocks.{layer}.hook_mlp_out",
                                                       bump)])[0, -1]
        change = float((lg1[tok] - lg1.mean()) - (lg0[tok] - lg0.mean()))
        edge_per_unit = float(row[s]) / float(graph.nodes.activation[s])
        assert change * edge_per_unit > 0
        checked += 1
    assert checked == min(6, len(cands))


def test_feature_cap_keeps_most_influential(tiny64):
    """With a node cap, only that many features get rows and stay in the graph; their
    edges are the same numbers as in the uncapped graph."""
    h = tiny64.hooked
    rep = Replacement(random_transcoders(h.cfg), keep_mlp=False)
    toks = prompt()
    rec = record(tiny64, toks, rep, dtype=DT)
    full = attribute(rec, [LogitTarget(7, -1)])
    capped = attribute(rec, [LogitTarget(7, -1)], max_feature_nodes=15, batch_size=4)
    n_feat = int((capped.nodes.kind == FEATURE).sum())
    assert n_feat == 15
    assert capped.info["n_feature_rows"] == 15
    # every capped edge equals the full graph's edge between the same nodes
    for r in capped.edges.row_ids().tolist()[:6]:
        key = capped.node_key(r)
        fr = full.find(*key)
        assert fr >= 0
        crow, frow = capped.edges.row(r), full.edges.row(fr)
        for s in range(capped.nodes.n_sources):
            fs = full.find(*capped.node_key(s))
            assert float(crow[s]) == pytest.approx(float(frow[fs]), abs=1e-9)


def test_feature_cap_first_round_takes_top_direct_influence(tiny64):
    """One round (cap below the batch size): the features chosen are those with the
    largest influence through the target rows alone, ``sum_t w_t |A[t, f]| / sum_s
    |A[t, s]|``, computed here from the uncapped graph's target rows."""
    h = tiny64.hooked
    rep = Replacement(random_transcoders(h.cfg), keep_mlp=False)
    rec = record(tiny64, prompt(), rep, dtype=DT)
    tg = [LogitTarget(7, -1), LogitTarget(9, -2)]
    full = attribute(rec, tg, weights=[0.3, 0.7])
    score = torch.zeros(full.nodes.n_sources, dtype=DT)
    for t, wt in zip(full.target_ids().tolist(), [0.3, 0.7]):
        row = full.edges.row(t).abs()
        score += wt * row / row.sum()
    feats = (full.nodes.kind[: full.nodes.n_sources] == FEATURE).nonzero().flatten()
    top = feats[torch.argsort(score[feats], descending=True)[:12]]
    want = {full.node_key(int(i)) for i in top}
    capped = attribute(rec, tg, weights=[0.3, 0.7], max_feature_nodes=12, batch_size=64)
    got = {capped.node_key(int(i)) for i in capped.nodes.ids_of(FEATURE)}
    assert got == want


def test_batching_does_not_change_edges(tiny64):
    h = tiny64.hooked
    rep = Replacement(random_transcoders(h.cfg), keep_mlp=False)
    rec = record(tiny64, prompt(), rep, dtype=DT)
    a = attribute(rec, [LogitTarget(7, -1)], batch_size=256)
    b = attribute(rec, [LogitTarget(7, -1)], batch_size=3)
    assert torch.allclose(a.edges.dense(len(a.nodes)), b.edges.dense(len(b.nodes)), atol=1e-12)


def test_node_table_order(tiny64):
    h = tiny64.hooked
    rep = Replacement(random_transcoders(h.cfg), keep_mlp=False)
    rec = record(tiny64, prompt(), rep, dtype=DT)
    g = attribute(rec, [LogitTarget(7, -1)])
    n = g.nodes
    src = n.kind[: n.n_sources]
    assert bool((n.pos[: n.n_sources].diff() >= 0).all())
    assert int((src == TOKEN).sum()) == g.n_pos
    assert int((src == ERROR).sum()) == g.n_pos * h.cfg.n_layers
    assert int((n.kind == TARGET).sum()) == 1
    # no features at the BOS position by default
    assert not bool(((n.kind == FEATURE) & (n.pos == 0)).any())


# ---------------------------------------------------------------------- pruning, JSON
def dense_prune_reference(A, w, n_feat_mask, err_mask, tok_mask, tgt_mask, nt, et):
    """Pruning from its definitions on a dense matrix (an independent implementation)."""
    def norm(a):
        a = a.abs()
        return a / a.sum(1, keepdim=True).clamp_min(1e-30)

    def influence(nm):
        x, tot = w @ nm, torch.zeros_like(w)
        while bool((x != 0).any()):
            tot = tot + x
            x = x @ nm
        return tot

    def thresh(v, f):
        v = torch.sort(v[v > 0], descending=True).values
        c = torch.cumsum(v, 0) / v.sum()
        return v[min(int(torch.searchsorted(c, f)), len(v) - 1)]

    infl = influence(norm(A))
    keep = infl >= thresh(infl, nt)
    keep |= tok_mask | tgt_mask
    P = A.clone()
    P[~keep] = 0
    P[:, ~keep] = 0
    nP = norm(P)
    sc = nP * (influence(nP) + w)[:, None]
    em = (sc >= thresh(sc.flatten(), et)) & (P != 0)
    nm = keep.clone()
    while True:
        old = nm.clone()
        em &= nm[:, None] & nm[None, :]
        nm &= ~(n_feat_mask | err_mask) | em.any(0)
        nm &= ~n_feat_mask | em.any(1)
        if bool((nm == old).all()):
            break
    em &= nm[:, None] & nm[None, :]
    tok = infl[tok_mask].sum()
    err = infl[err_mask].sum()
    nA = norm(A)
    non_err = 1 - nA[:, err_mask].sum(1)
    has = A.abs().sum(1) > 0
    non_err = torch.where(has, non_err, torch.ones_like(non_err))
    comp = (non_err * (infl + w)).sum() / (infl + w).sum()
    return nm, em, float(tok / (tok + err)), float(comp)


@pytest.mark.parametrize("nt,et", [(0.8, 0.98), (0.5, 0.9), (1.0, 1.0)])
def test_prune_matches_dense_definition(tiny64, nt, et):
    from interp.attribution.prune import prune

    h = tiny64.hooked
    rep = Replacement(random_transcoders(h.cfg), keep_mlp=False)
    rec = record(tiny64, prompt(), rep, dtype=DT)
    g = attribute(rec, [LogitTarget(7, -1), LogitTarget(9, -1)], weights=[0.7, 0.3])
    A = g.edges.dense(len(g.nodes)).float()
    w = torch.zeros(len(g.nodes))
    w[g.target_ids()] = g.target_weights.float()
    k = g.nodes.kind
    nm, em, rep_s, comp_s = dense_prune_reference(
        A, w, k == FEATURE, k == ERROR, k == TOKEN, k == TARGET, nt, et)
    p = prune(g, nt, et)
    assert p.nodes.tolist() == nm.nonzero().flatten().tolist()
    mine = {(t, s) for t, s in zip(p.edge_targets.tolist(), p.edge_sources.tolist())}
    ref = {tuple(x) for x in em.nonzero().tolist()}
    assert mine == ref
    for t, s, wt in zip(p.edge_targets.tolist(), p.edge_sources.tolist(),
                        p.edge_weights.tolist()):
        assert wt == pytest.approx(float(A[t, s]), rel=1e-5, abs=1e-7)
    assert p.scores["replacement"] == pytest.approx(rep_s, rel=1e-4)
    assert p.scores["completeness"] == pytest.approx(comp_s, rel=1e-4)
    assert 0 < p.scores["replacement"] < 1
    assert p.scores["completeness_pruned"] <= 1.0 + 1e-6


def test_graph_json_schema_and_labels(tiny64):
    import json

    from interp.attribution.graph_json import to_json, validate
    from interp.attribution.prune import prune

    h = tiny64.hooked
    rep = Replacement(random_transcoders(h.cfg), keep_mlp=False)
    toks = prompt()
    rec = record(tiny64, toks, rep, dtype=DT)
    g = attribute(rec, [LogitTarget(7, -1)])
    p = prune(g)
    f0 = next(i for i in p.nodes.tolist() if g.node_key(i)[0] == FEATURE)
    _, lay, pos, feat = g.node_key(f0)
    doc = to_json(g, p, slug="t", prompt_tokens=[str(t) for t in toks.tolist()],
                  vocab_size=h.cfg.d_vocab, labels={(lay, feat): "my label"},
                  supernodes=[["group", f"{lay}_{feat}_{pos}"]])
    doc = json.loads(json.dumps(doc))  # plain JSON types survive a round trip
    assert validate(doc) == []
    by_id = {n["node_id"]: n for n in doc["nodes"]}
    assert by_id[f"{lay}_{feat}_{pos}"]["clerp"] == "my label"
    assert by_id[f"{lay}_{feat}_{pos}"]["feature"] == (lay + feat) * (lay + feat + 1) // 2 + feat
    tgt = [n for n in doc["nodes"] if n["feature_type"] == "logit"]
    assert len(tgt) == 1 and tgt[0]["is_target_logit"] and tgt[0]["feature"] == 7
    assert len(doc["links"]) == p.n_edges()
    assert doc["metadata"]["schema_version"] == 1
    # a broken document is reported
    bad = json.loads(json.dumps(doc))
    bad["nodes"][0]["ctx_idx"] = "3"
    bad["links"].append({"source": "nope", "target": doc["nodes"][0]["node_id"], "weight": 1.0})
    errs = validate(bad)
    assert any("ctx_idx" in e for e in errs) and any("not in the file" in e for e in errs)


def test_total_effect_equals_removal_with_live_features(tiny64):
    """``Graph.total_effect``: removing a source with every downstream active feature
    responding (linearly) changes the target by exactly that source's total effect."""
    h = tiny64.hooked
    rep = Replacement(random_transcoders(h.cfg, seed=4), keep_mlp=False)
    toks = prompt(8, seed=2)
    rec = record(tiny64, toks, rep, dtype=DT)
    g = attribute(rec, [LogitTarget(7, -1)])
    t = int(g.target_ids()[0])
    eff = g.total_effect(t)
    clean, mlp_in = clean_run(h, toks)
    live, acts, errors = [], [], []
    for li, fl in enumerate(rep.layers):
        lr = rec.layers[li]
        m = torch.zeros(toks.numel(), fl.n_features, dtype=DT)
        m[lr.feat_pos, lr.feat_idx] = 1
        live.append(m)
        acts.append(None)
        errors.append(lr.error)
    embed = rec.embed

    def target_value(zero=None):
        _, lg = frozen_run(rep, h, h, toks, clean, mlp_in, acts, errors, embed, live, zero)
        return lg[-1, 7] - lg[-1].mean()

    base = target_value()
    feats = [i for i in range(g.nodes.n_sources) if g.node_key(i)[0] == FEATURE]
    assert len(feats) > 20
    for s in feats[:: max(1, len(feats) // 12)]:
        _, layer, pos, f = g.node_key(s)
        want = float(base - target_value((layer, pos, f)))
        assert float(eff[s]) == pytest.approx(want, rel=1e-6, abs=1e-8)
    # a layer-0 feature reaches the logit through later features too: total != direct
    row = g.edges.row(t)
    l0 = [s for s in feats if g.node_key(s)[1] == 0 and abs(float(eff[s])) > 1e-3]
    assert any(abs(float(eff[s]) - float(row[s])) > 1e-4 for s in l0)


# ---------------------------------------------------------------------- deeper models
def _tl_model(**over):
    """A small random HookedTransformer in float64 (TransformerLens init), with random
    norm gains (and biases for LayerNorm) so that every piece of the norms matters."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    kw = dict(n_layers=4, d_model=32, n_heads=4, d_head=8, d_mlp=64, act_fn="silu",
              gated_mlp=True, normalization_type="RMS", positional_embedding_type="rotary",
              rotary_dim=8, d_vocab=40, n_ctx=32, seed=5, dtype=torch.float64)
    kw.update(over)
    model = HookedTransformer(HookedTransformerConfig(**kw)).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith((".w", "ln_final.w")) and "ln" in name:
                p.copy_(0.5 + torch.rand(p.shape, generator=g, dtype=p.dtype))
            elif name.endswith(".b") and "ln" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


@pytest.mark.parametrize("norm", ["RMS", "LN"])
def test_four_layer_edges_equal_perturbations(norm):
    """Four layers: rows stay factored over up to three attention layers (ranks 1, 5,
    25, 125 > d_model 32 goes dense), and LayerNorm's centring splits into the
    per-vector part; every edge still equals zeroing its source."""
    over = {} if norm == "RMS" else dict(normalization_type="LN", gated_mlp=False,
                                         act_fn="gelu", positional_embedding_type="standard")
    h = _tl_model(**over)
    rep = Replacement(random_transcoders(h.cfg, n=10, seed=7, bias=-0.5), keep_mlp=False)
    toks = torch.tensor([1] + torch.randint(2, 40, (7,), generator=torch.Generator()
                                            .manual_seed(8)).tolist())
    rec = record(h, toks, rep, dtype=DT)
    for lr in rec.layers:  # pattern blocks of 3 query rows: the causal block edges matter
        lr.attn.block = 3
    graph = attribute(rec, [LogitTarget(7, -1), LogitTarget(3, -2)])
    assert int((graph.nodes.kind == FEATURE).sum()) > 30
    ref, _ = reference_edges(graph, rep, h, toks)
    assert_edges_match(graph, ref)


def test_factored_rows_equal_dense_rows(monkeypatch):
    """The factored rows (position coefficients x per-row vectors, patterns kept on one
    block) and the plain dense transposed passes (patterns recomputed in blocks of 5
    rows) give the same edges, on the benchmark's shape (d_model 128: ranks 1, 5, 25,
    125 stay factored)."""
    from interp.attribution import engine
    from interp.attribution.benchmodel import bench_config_kwargs, model_from_config

    kw = bench_config_kwargs(n_ctx=64)
    kw["dtype"] = "float64"
    h = model_from_config(kw).requires_grad_(False)
    rep = Replacement(random_transcoders(h.cfg, n=64, seed=9, bias=-1.5), keep_mlp=False)
    rec = record(h, torch.arange(20) % 97 + 1, rep, dtype=DT)
    tg = [LogitTarget(5, -1), LogitTarget(9, -1), DirectionTarget(
        torch.randn(128, dtype=DT, generator=torch.Generator().manual_seed(1)), layer=1,
        site="resid_mid", pos=13)]
    a = attribute(rec, tg, batch_size=7)
    # the other way: dense passes, patterns recomputed per block (none kept), 5-row blocks
    monkeypatch.setattr(engine.Attributor, "factored", False)
    monkeypatch.setattr(engine, "PATTERN_CACHE_BYTES", 0)
    for lr in rec.layers:
        lr.attn.block = 5
    b = attribute(rec, tg, batch_size=7)
    assert int((a.nodes.kind == FEATURE).sum()) > 100
    da, db = a.edges.dense(len(a.nodes)), b.edges.dense(len(b.nodes))
    assert float(da.abs().max()) > 0.1
    assert torch.allclose(da, db, atol=1e-10, rtol=0)


def test_norm_transpose_splits_into_position_and_vector_parts():
    from interp.attribution.linear import FrozenNorm

    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 8, generator=g, dtype=DT)
    for w in (None, torch.rand(8, generator=g, dtype=DT) + 0.5):
        for center in (False, True):
            nm = FrozenNorm(torch.rand(5, generator=g, dtype=DT) + 0.5, w, center)
            want = nm.apply_T(x)
            got = nm.inv_scale(5)[:, None, None] * nm.apply_T_vec(x)
            assert torch.allclose(want, got, atol=1e-12)
            # the transpose: <apply(a), b> == <a, apply_T(b)>
            a = torch.randn(5, 8, generator=g, dtype=DT)
            b = torch.randn(5, 8, generator=g, dtype=DT)
            assert float((nm.apply(a) * b).sum()) == pytest.approx(
                float((a * nm.apply_T(b)).sum()), rel=1e-10)
