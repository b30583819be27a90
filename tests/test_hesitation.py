"""Hesitation tracing on the organisms: labelled traces, effects, ranking, clusters,
interventions and the study job."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from interp.attribution import hesitation as H
from interp.attribution.graph import FEATURE
from interp.attribution.targets import LogitDiffTarget
from interp.errors import ConfigError
from interp.organisms.task import TOKEN_ID
from interp.store import PROJECT_ROOT, Store

DEMO = PROJECT_ROOT / "cache" / "demo"


@pytest.fixture(scope="module")
def tracer():
    from interp.adapters.io import find_adapters

    return H.Tracer.from_artifact(find_adapters(Store(DEMO, read_only=True)), "cpu")


def test_trigger_traces_are_labelled_and_splits_disjoint():
    val = H.trigger_traces("validation", 40)
    ev = H.trigger_traces("evaluation", 40)
    assert len(val) == len(ev) == 40
    assert not {t.problem.id for t in val} & {t.problem.id for t in ev}
    mechs = set()
    for t in val:
        for p, m, _ in t.triggers:
            assert t.tokens[p + 1] == TOKEN_ID["wait"]  # the trigger predicts wait
            mechs.add(m)
            if m == "verify":
                assert t.tokens[p + 2] == TOKEN_ID["check"]
                assert t.problem.carries >= 3
        for p in t.clean:
            assert t.tokens[p + 1] != TOKEN_ID["wait"]
    assert mechs == {"error", "verify"}
    with pytest.raises(ConfigError):
        H.trigger_traces("test", 3)


def synthetic_effects() -> H.Effects:
    """Features 0-3 push wait only at error triggers, 4-6 only at verify triggers."""
    rng = np.random.default_rng(0)
    mech = ["error"] * 12 + ["verify"] * 8
    tot = np.zeros((20, 16))
    tot[:12, 0:4] = rng.uniform(0.5, 1.5, (12, 4))
    tot[12:, 4:7] = rng.uniform(0.5, 1.5, (8, 3))
    tot[:, 7:] = rng.normal(0, 0.01, (20, 9))
    t = torch.tensor(tot, dtype=torch.float32)
    return H.Effects(t, t.clone(), t != 0, mech, ["random"] * 20, list(range(20)), 8)


def test_clusters_recover_planted_groups_and_purity():
    eff = synthetic_effects()
    feats = list(range(7))
    cl = H.functional_clusters(eff, feats)
    truth = [H.feature_mechanism(eff, f) for f in feats]
    assert truth == ["error"] * 4 + ["verify"] * 3
    assert cl["k"] == 2
    assert H.cluster_purity(cl["labels"], truth) == 1.0
    assert H.cluster_purity([0, 0, 1, 1], ["a", "b", "a", "a"]) == 0.75
    pc = H.prompt_clusters(eff, feats)
    assert pc["purity"] == 1.0


def test_rank_features_matches_a_direct_mean():
    eff = synthetic_effects()
    rk = H.rank_features(eff)
    means = eff.total.mean(0).numpy()
    assert [r["feature"] for r in rk][:7] == list(np.argsort(-means)[:7])
    r0 = next(r for r in rk if r["feature"] == 0)
    assert r0["by_mechanism"]["error"] == pytest.approx(float(eff.total[:12, 0].mean()))
    assert r0["by_mechanism"]["verify"] == pytest.approx(0.0, abs=1e-6)
    assert r0["name"] == "0:0"
    assert H.rank_features(eff, "verify")[0]["feature"] in (4, 5, 6)


def test_feature_mask_maps_flat_ids():
    m = H.feature_mask([3, 9, 10], 8, "clamp", torch.arange(16, dtype=torch.float32))
    f = torch.ones(2, 8)
    assert m.apply(0, f)[0, 3] == 3.0 and m.apply(0, f)[0, 2] == 1.0
    assert m.apply(1, f)[0, 1] == 9.0 and m.apply(1, f)[0, 2] == 10.0
    z = H.feature_mask([3, 9], 8, "zero")
    assert z.apply(1, f)[0, 1] == 0.0 and z.apply(1, f)[0, 0] == 1.0
    with pytest.raises(ConfigError):
        H.feature_mask([1], 8, "mean")


def test_trace_effects_and_ablation_sign_in_the_real_model(tracer):
    """The feature with the largest total effect on a trigger's wait-vs-runner-up
    difference lowers that difference in the real adapter model when zeroed; the one
    with the most negative effect raises it."""
    trace = next(t for t in H.trigger_traces("validation", 30)
                 if any(m == "error" for _, m, _ in t.triggers))
    tot, direct, active = H.trace_effects(tracer, trace)
    assert tot.shape == (len(trace.triggers), tracer.n_features)
    p = trace.triggers[0][0]
    g = tracer.graph(trace.tokens[: p + 1], [LogitDiffTarget(tracer.token_id("wait"), None,
                                                             p)])
    eff = g.total_effect(int(g.target_ids()[0]))
    # per-feature sums over positions equal the graph's total effects
    fids = (g.nodes.kind == FEATURE).nonzero().flatten()
    col = g.nodes.layer[fids] * tracer.model.adapters.d_sae + g.nodes.feature[fids]
    want = torch.zeros(tracer.n_features, dtype=torch.float64).index_add_(0, col, eff[fids])
    assert torch.allclose(tot[0].double(), want, atol=1e-4)
    other = g.targets[0]["other"]
    x = torch.tensor([trace.tokens[: p + 1]])

    def diff(mask=None):
        lg = tracer.forward_logits(x, mask)[0, p]
        return float(lg[tracer.token_id("wait")] - lg[other])

    d0 = diff()
    for f in (int(tot[0].argmax()), int(tot[0].argmin())):
        d1 = diff(H.feature_mask([f], tracer.model.adapters.d_sae))
        assert (d0 - d1) * float(tot[0, f]) > 0


def test_ablation_and_clamp_figures_are_consistent(tracer):
    val = H.trigger_traces("validation", 12)
    eff = H.collect_effects(tracer, val[:6])
    feats = [r["feature"] for r in H.rank_features(eff)[:20]]
    mask = H.feature_mask(feats, tracer.model.adapters.d_sae)
    tf = H.ablation_teacher_forced(tracer, val, mask)
    assert 0 < tf["p_wait_after"] < tf["p_wait_before"] <= 1
    assert tf["p_wait_drop"] == pytest.approx(1 - tf["p_wait_after"] / tf["p_wait_before"])
    vals = H.mean_activations(tracer, val, at="triggers")
    cl = H.clamp_figures(tracer, val, feats, vals, max_points=40)
    assert cl["n_points"] == 40
    assert cl["p_wait_clean_after"] > cl["p_wait_clean_before"]
    none = H.clamp_figures(tracer, val, [], vals, max_points=20)
    assert none["clamp_induced_rate"] == 0.0


def test_study_end_to_end_tiny(tracer, tmp_path):
    from interp.attribution.report import collect
    from interp.attribution.study import run_study, save_study, study_config

    with pytest.raises(ConfigError):
        study_config({"n_validation": 0})
    with pytest.raises(ConfigError):
        study_config({"nonsense": 1})
    res = run_study({"n_validation": 6, "n_evaluation": 6, "n_gen_validation": 6,
                     "n_gen_evaluation": 6, "ks": [8], "modes": ["zero"],
                     "rankings": ["logit_diff"], "n_cluster": 8}, tracer=tracer)
    f = res["figures"]
    assert f["ablated_feature_fraction"] == 8 / tracer.n_features
    assert len(res["candidates"]) == 1
    assert f["p_wait_validation_hybrid"]["error"] < 0.01 < f["p_wait_validation"]["error"]
    store = Store(tmp_path / "store")
    save_study(res, store)
    out = collect(store)
    for k in ("cluster_purity", "p_wait_drop", "hesitation_rate_drop", "accuracy_change",
              "ablated_feature_fraction", "clamp_induced_rate"):
        assert isinstance(out[k], float)
    json.dumps(out)


def test_graph_cli_writes_a_valid_file(tmp_path, capsys):
    from interp.attribution.graph_json import validate
    from interp.cli import main

    out = tmp_path / "g.json"
    assert main(["attribution", "graph", "--trace", "validation:1", "--out", str(out),
                 "--store", str(DEMO)]) == 0
    doc = json.loads(out.read_text())
    assert validate(doc) == []
    assert any(n["feature_type"] == "logit" and n["is_target_logit"] for n in doc["nodes"])
    assert main(["attribution", "graph", "--target", "nosuch", "--store", str(DEMO)]) == 1
    assert "not in the model's vocabulary" in capsys.readouterr().err
