"""Attribution graphs as artifacts, the viewer's tables and figures, on the organisms.

One graph of a labelled organism trace (the committed demo adapter set, the ``wait``
logit at the first error trigger of the evaluation split) is shared by the module.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types

import pytest
import torch

from interp.errors import ArtifactError, ConfigError
from interp.store import PROJECT_ROOT, Store

pytestmark = pytest.mark.skipif(
    not (PROJECT_ROOT / "cache" / "organisms" / "base" / "config.json").exists(),
    reason="the organisms are not built")


@pytest.fixture(scope="module")
def traced():
    from interp.adapters.report import demo_adapters
    from interp.attribution.hesitation import Tracer, trigger_traces
    from interp.attribution.prune import prune

    art = demo_adapters()
    tr = Tracer.from_artifact(art, "cpu", explain="adapter")
    t = trigger_traces("evaluation", 3)[0]
    p = t.triggers[0][0]
    tokens = t.tokens[: p + 1]
    g = tr.graph(tokens)
    return {"art": art, "tracer": tr, "tokens": tokens, "graph": g, "pruned": prune(g)}


@pytest.fixture
def store(tmp_cache):
    return Store(tmp_cache)


def _target(tr):
    from interp.attribution.targets import LogitTarget

    return [LogitTarget(tr.token_id("wait"), -1)]


def _assert_same_graph(a, b):
    for f in ("kind", "layer", "pos", "feature", "activation", "prefix_end"):
        x, y = getattr(a.nodes, f), getattr(b.nodes, f)
        assert x.dtype == y.dtype and torch.equal(x, y), f
    assert a.nodes.n_sources == b.nodes.n_sources
    assert len(a.edges.blocks) == len(b.edges.blocks) and a.edges.n_cols == b.edges.n_cols
    for (r1, c1, v1), (r2, c2, v2) in zip(a.edges, b.edges):
        assert torch.equal(r1, r2) and torch.equal(c1, c2)
        assert v1.dtype == v2.dtype and torch.equal(v1, v2)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.target_weights, b.target_weights)
    assert a.targets == b.targets and a.info == b.info and a.token_strs == b.token_strs
    assert a.n_layers == b.n_layers


# ---------------------------------------------------------------------- artifacts
def test_round_trip_is_exact(traced, store):
    from interp.attribution import artifacts as ga
    from interp.attribution.graph_json import validate

    g, tr, art = traced["graph"], traced["tracer"], traced["art"]
    saved = ga.save_graph(g, store, art, _target(tr))
    assert saved.kind == ga.KIND and saved.meta["stored"] == "full"
    cfg = saved.config
    assert cfg["adapters"] == art.key and cfg["tokens"] == list(traced["tokens"])
    assert cfg["explain"] == "adapter" and cfg["max_feature_nodes"] is None
    assert cfg["targets"] == [{"kind": "logit", "token": tr.token_id("wait"),
                               "pos": len(traced["tokens"]) - 1}]
    assert saved.provenance["code_version"] and saved.provenance["adapters"] == art.key
    assert saved.provenance["models"]["reasoner"]["weight_hash"] == \
        art.meta["pair"]["reasoner"]["weight_hash"]
    # the same config finds the same artifact
    again = ga.graph_config(art.key, traced["tokens"], _target(tr), "adapter")
    assert ga.graph_key(again) == saved.key
    back = ga.load_graph(Store(store.root).load(ga.KIND, saved.key), adapters=art)
    _assert_same_graph(g, back)
    doc = ga.load_graph_json(saved)
    assert validate(doc) == []
    pr = traced["pruned"]
    assert len(doc["nodes"]) == pr.nodes.numel() and len(doc["links"]) == pr.n_edges()


def test_over_the_limit_stores_the_pruned_subgraph(traced, store):
    from interp.attribution import artifacts as ga
    from interp.attribution.graph import TARGET

    g, pr = traced["graph"], traced["pruned"]
    saved = ga.save_graph(g, store, traced["art"], _target(traced["tracer"]), limit_bytes=0)
    assert saved.meta["stored"] == "pruned"
    sub = ga.load_graph(saved)
    keys = [g.node_key(i) for i in pr.nodes.tolist()]
    assert [sub.node_key(i) for i in range(len(sub.nodes))] == keys
    new = {old: k for k, old in enumerate(pr.nodes.tolist())}
    dense = sub.edges.dense(len(sub.nodes))
    want = torch.zeros_like(dense)
    for t, s, w in zip(pr.edge_targets.tolist(), pr.edge_sources.tolist(),
                       pr.edge_weights.tolist()):
        want[new[t], new[s]] = w
        assert float(dense[new[t], new[s]]) == pytest.approx(g.edge(t, s), rel=1e-6)
    assert torch.equal(dense, want)
    assert int((sub.nodes.kind == TARGET).sum()) == 1
    assert sub.info["pruned_from"]["n_nodes"] == len(g.nodes)


def test_refuses_another_pair(traced, store, tmp_cache):
    from interp.attribution import artifacts as ga

    (tmp_cache / "organisms").symlink_to(PROJECT_ROOT / "cache" / "organisms")
    g, art, tr = traced["graph"], traced["art"], traced["tracer"]
    saved = ga.save_graph(g, store, art, _target(tr))
    ga.load_graph(saved, adapters=art)  # its own pair: fine
    other = dataclasses.replace(art, key="adapters-0000000000000000")
    with pytest.raises(ArtifactError, match="belongs to adapters"):
        ga.load_graph(saved, adapters=other)
    with pytest.raises(ArtifactError, match="another reasoner model"):
        ga.load_graph(saved, pair_hashes={"reasoner": "f" * 64})
    # computed on weights that are not the organisms' weights now
    pair = json.loads(json.dumps(art.meta["pair"]))
    pair["base"]["weight_hash"] = "0" * 64
    moved = dataclasses.replace(art, meta={**art.meta, "pair": pair})
    stale = ga.save_graph(g, store, moved, _target(tr))
    with pytest.raises(ArtifactError, match="other weights"):
        ga.load_graph(stale)


def test_labels_become_clerps(traced, store, monkeypatch):
    from interp.attribution import artifacts as ga
    from interp.attribution.graph import FEATURE

    g, pr = traced["graph"], traced["pruned"]
    feat = next(i for i in pr.nodes.tolist() if int(g.nodes.kind[i]) == FEATURE)
    _, layer, pos, f = g.node_key(feat)
    mod = types.ModuleType("interp.features.labels")
    seen = []
    mod.load_labels = lambda key, s: seen.append(key) or {(layer, f): "carry check"}
    monkeypatch.setitem(sys.modules, "interp.features.labels", mod)
    saved = ga.save_graph(g, store, traced["art"], _target(traced["tracer"]))
    doc = ga.load_graph_json(saved)
    node = next(n for n in doc["nodes"] if n["node_id"] == f"{layer}_{f}_{pos}")
    assert node["clerp"] == "carry check" and seen == [traced["art"].key]


def test_save_checks_its_targets(traced, store):
    from interp.attribution import artifacts as ga
    from interp.attribution.targets import LogitTarget

    tr = traced["tracer"]
    with pytest.raises(ConfigError):
        ga.save_graph(traced["graph"], store, traced["art"],
                      [LogitTarget(tr.token_id("wait"), 3)])
    with pytest.raises(ConfigError):
        ga.save_graph(traced["graph"], store, traced["art"], _target(tr) * 2)


# ---------------------------------------------------------------------- viewer data
def test_view_matches_the_pruned_graph(traced):
    from interp.attribution import explore
    from interp.attribution.graph_json import node_id

    g, pr = traced["graph"], traced["pruned"]
    v = explore.graph_view(g, pr)
    assert v.nodes["node"].tolist() == pr.nodes.tolist()
    eff = g.total_effect(int(g.target_ids()[0]))
    body = v.nodes[v.nodes["kind"] != "target"]
    assert body["effect"].tolist() == pytest.approx(eff[body["node"].tolist()].tolist())
    assert body["influence"].tolist() == pytest.approx(pr.influence[body["node"].tolist()]
                                                       .tolist())
    want = sorted((node_id(g, s, 0), node_id(g, t, 0)) for s, t in
                  zip(pr.edge_sources.tolist(), pr.edge_targets.tolist()))
    assert sorted(zip(v.edges["source"], v.edges["target"])) == want


def test_influence_grid_sums_by_cell(traced):
    from interp.attribution import explore
    from interp.attribution.graph import TARGET, TOKEN

    g = traced["graph"]
    infl = g.influence()
    grid = explore.influence_grid(g, infl)
    assert list(grid.index) == ["emb", "L0", "L1", "L2", "L3"]
    want = torch.zeros(grid.shape, dtype=torch.float64)
    for i in range(len(g.nodes)):
        k, layer, pos, _ = g.node_key(i)
        if k != TARGET:
            want[0 if k == TOKEN else layer + 1, pos] += float(infl[i])
    assert grid.to_numpy() == pytest.approx(want.numpy())


def test_model_probabilities_match_the_graphs(traced):
    from interp.attribution import explore
    from interp.attribution.hesitation import Tracer

    tr, tokens, g = traced["tracer"], traced["tokens"], traced["graph"]
    wait = tr.token_id("wait")
    tab = explore.model_probabilities(tr, tokens, len(tokens) - 1, [wait]).set_index("model")
    assert list(tab.index) == list(explore.MODEL_ORDER)
    assert tab.loc["adapter model", "P(wait)"] == pytest.approx(g.targets[0]["prob"], rel=1e-4)
    rtr = Tracer(tr.model, tr.base, tr.reasoner, key=tr.key, explain="reasoner")
    rg = rtr.graph(tokens)
    assert tab.loc["reasoner", "P(wait)"] == pytest.approx(rg.targets[0]["prob"], rel=1e-4)
    # the reasoner hesitates here, the base model does not
    assert tab.loc["reasoner", "P(wait)"] > 0.5 > tab.loc["base", "P(wait)"]


def test_pinned_table_and_document(traced):
    from interp.attribution import explore
    from interp.attribution.graph_json import validate

    g, pr = traced["graph"], traced["pruned"]
    v = explore.graph_view(g, pr)
    tgt = v.nodes[v.nodes["kind"] == "target"]["id"].iat[0]
    feat = v.nodes[v.nodes["kind"] == "feature"]["id"].iat[0]
    tab = explore.pinned_table(v, [feat, "nope", tgt], k=2)
    assert tab["id"].tolist() == [feat, tgt]
    e = v.edges[v.edges["target"] == tgt]
    top = e.assign(m=e["weight"].abs()).nlargest(2, "m")
    name = dict(zip(v.nodes["id"], v.nodes["name"]))
    assert tab["strongest inputs"].iat[1] == "; ".join(
        f"{name[s]} ({w:+.3g})" for s, w in zip(top["source"], top["weight"]))
    doc = explore.graph_document(g, pr, slug="x", pinned=[feat, tgt])
    assert validate(doc) == [] and doc["qParams"]["pinnedIds"] == [feat, tgt]


# ---------------------------------------------------------------------- figures
def test_graph_figure_draws_the_pruned_graph(traced):
    from interp.attribution import explore
    from interp.attribution import plots as gp
    from interp.attribution.graph_json import node_id

    g, pr = traced["graph"], traced["pruned"]
    v = explore.graph_view(g, pr)
    feat = v.nodes[v.nodes["kind"] == "feature"]["id"].iat[0]
    fig = gp.graph_figure(v, pinned=[feat])
    nodes = [t for t in fig.data if t.meta["role"] == "nodes"]
    edges = [t for t in fig.data if t.meta["role"] == "edges"]
    assert sum(len(t.x) for t in nodes) == pr.nodes.numel()
    assert sum(len(t.x) // 3 for t in edges) == pr.n_edges()
    where = {}
    for t in nodes:
        for x, y, cd, ring in zip(t.x, t.y, t.customdata, t.marker.line.width):
            where[(x, y)] = cd[0]
            assert (ring > 1) == (cd[0] == feat)
    assert len(where) == pr.nodes.numel()  # no two nodes on one spot
    # positions: y is the node's row; x lies between the neighbouring positions' ticks,
    # and along a row the nodes are in position order
    ticks = [float("-inf")] + list(fig.layout.xaxis.tickvals) + [float("inf")]
    assert list(fig.layout.xaxis.ticktext) == g.token_strs
    key = {node_id(g, i, 0): g.node_key(i) for i in pr.nodes.tolist()}
    rows: dict[float, list[tuple[float, int]]] = {}
    for (x, y), nid in where.items():
        kind, layer, pos, _ = key[nid]
        assert y == {2: 0, 3: g.n_layers + 1}.get(kind, layer + 1)
        assert ticks[pos] < x < ticks[pos + 2]
        rows.setdefault(y, []).append((x, pos))
    for members in rows.values():
        order = [p for _, p in sorted(members)]
        assert order == sorted(order)
    # edges join the right nodes and are coloured by the sign of their weight
    weight = {(node_id(g, s, 0), node_id(g, t, 0)): w for s, t, w in zip(
        pr.edge_sources.tolist(), pr.edge_targets.tolist(), pr.edge_weights.tolist())}
    drawn = 0
    for t in edges:
        for k in range(0, len(t.x), 3):
            s, d = where[(t.x[k], t.y[k])], where[(t.x[k + 1], t.y[k + 1])]
            w = weight[(s, d)]
            assert t.line.color == (gp.POSITIVE if w > 0 else gp.NEGATIVE)
            drawn += 1
    assert drawn == len(weight)
    # the target's hover names its three strongest inputs, strongest first
    tnode = next(t for t in nodes if t.meta["kind"] == "target")
    tid = tnode.customdata[0][0]
    inc = sorted(((w, s) for (s, d), w in weight.items() if d == tid), key=lambda e: -abs(e[0]))
    name = dict(zip(v.nodes["id"], v.nodes["name"]))
    assert f"top in: {name[inc[0][1]]} {inc[0][0]:+.3g}, {name[inc[1][1]]}" in \
        tnode.hovertext[0]
    assert tnode.hovertext[0].split("top in: ")[1].count(", ") == 2
    # nodes are coloured by the sign of their total effect on the target
    eff = g.total_effect(int(g.target_ids()[0]))
    ids = {node_id(g, i, 0): i for i in pr.nodes.tolist()}
    for t in nodes:
        if t.meta["kind"] == "target":
            continue
        for cd, c in zip(t.customdata, t.marker.color):
            e = float(eff[ids[cd[0]]])
            assert c == (gp.POSITIVE if e > 0 else gp.NEGATIVE if e < 0 else gp.NEUTRAL)


def test_compare_and_overlay_figures(traced):
    from interp.attribution import explore
    from interp.attribution import plots as gp
    from interp.attribution.prune import prune

    g, pr = traced["graph"], traced["pruned"]
    v = explore.graph_view(g, pr)
    v2 = explore.graph_view(g, prune(g, 0.5, 0.9))
    fig = gp.compare_figure({"adapter model": v, "reasoner": v2})
    rows = {t.yaxis for t in fig.data}
    assert rows == {"y", "y2"}
    assert sum(len(t.x) for t in fig.data if t.meta["role"] == "nodes") == len(v.nodes) + \
        len(v2.nodes)
    # one shared token axis: both rows use the same column centres
    assert list(fig.layout.xaxis.tickvals) == list(fig.layout.xaxis2.tickvals)
    data = gp.compare_data({"adapter model": v, "reasoner": v2})
    assert len(data) == len(v.nodes) + len(v2.nodes)
    grid = explore.influence_grid(g, pr.influence)
    ov = gp.influence_overlay({"a": grid, "b": grid * 2}, g.token_strs)
    assert ov.data[2].z == pytest.approx(grid.to_numpy())


def test_format_1_blocks_read_as_prefix_columns():
    """A graph saved before blocks named their columns (format 1) reads back with each
    block over the first columns."""
    from interp.attribution.artifacts import graph_from_tensors
    from interp.attribution.graph import Nodes

    nodes = Nodes(kind=torch.tensor([0, 0, 2], dtype=torch.int8), layer=torch.tensor([0, 0, 1]),
                  pos=torch.tensor([0, 1, 1]), feature=torch.tensor([-1, -1, -1]),
                  activation=torch.zeros(3), prefix_end=torch.tensor([1, 2]), n_sources=2)
    t = {f"nodes.{f}": getattr(nodes, f) for f in
         ("kind", "layer", "pos", "feature", "activation", "prefix_end")}
    t.update({"tokens": torch.tensor([1, 2]), "target_weights": torch.ones(1),
              "edges.00000.rows": torch.tensor([2]),
              "edges.00000.values": torch.tensor([[0.5, -1.0]])})
    g = graph_from_tensors(t, {"n_sources": 2, "n_blocks": 1, "n_layers": 1,
                               "targets": [{"kind": "logit"}]})
    assert torch.equal(g.edges.dense(3)[2], torch.tensor([0.5, -1.0, 0.0]))
