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


def test_study_with_measured_ablation_ranking_tiny(tracer, tmp_path):
    from interp.attribution.study import run_study, save_study, study_config

    for bad in ({"greedy_pool": 0}, {"kl_weights": []}, {"kl_weights": [-1]},
                {"max_collateral_loss": -1}, {"complete_with": "ablation"}):
        with pytest.raises(ConfigError):
            study_config(bad)
    res = run_study({"n_validation": 6, "n_evaluation": 6, "n_gen_validation": 6,
                     "n_gen_evaluation": 6, "ks": [8], "modes": ["zero"],
                     "rankings": ["ablation"], "n_cluster": 8, "greedy_pool": 3,
                     "kl_weights": [0.0, 10.0], "verify_remaining": 0.9,
                     "max_fraction": 4 / tracer.n_features}, tracer=tracer)
    cands = res["candidates"]
    assert cands and all(1 <= c["k"] <= 4 for c in cands)
    # the clusters keep every clustered feature (the start of the selection from the
    # ranking's top is another, shorter list)
    cl = res["clusters"]
    assert len(cl["features"]) == len(cl["labels"]) == len(cl["truth"]) == 8
    runs = {r["kl_weight"]: r for r in res["ablation"]["paths"]}
    assert set(runs) == {0.0, 10.0}
    ld = [r["feature"] for r in res["rankings"]["logit_diff"] if r["mean_effect"] > 0]
    for c in cands:
        run = runs[c["kl_weight"]]
        if c["ranking"] == "ablation":
            assert c["features"] == run["path"][c["k"] - 1]["features"]
        elif c["ranking"] == "logit_diff+ablation":
            # the ranking's top (capped one below the 4-feature limit), then measured picks
            assert c["features"][:3] == ld[:3] and 3 < c["k"] <= 4
            assert c["features"] in [p["features"] for p in run["start_path"]]
        elif c["ranking"] == "ablation+logit_diff":
            # the path's best set (least objective), then the graph ranking, to the cap
            objs = [p["objective"] for p in run["path"]]
            best = run["path"][int(np.argmin(objs))]["features"]
            assert c["features"][: len(best)] == best and c["k"] == 4
            assert c["features"][len(best):] == [f for f in ld if f not in best][
                : 4 - len(best)]
        else:
            assert c["ranking"] == "verification"
            assert c["features"] == run["verify_path"][c["k"] - 1]["features"]
            assert run["verify_path"][c["k"] - 1]["remaining"]["verify"] <= 0.9
    assert {c["ranking"] for c in cands} == {"ablation", "ablation+logit_diff",
                                             "logit_diff+ablation", "verification"}
    f = res["figures"]
    for k in ("collateral_accuracy_change", "lost_corrections"):
        assert isinstance(f[k], float)
    v = f["verification_set"]
    assert v["k"] == len(res["verification_features"]) >= 1
    assert res["verification_features"] in [c["features"] for c in cands
                                            if c["ranking"] == "verification"]
    assert v["teacher_forced"]["p_wait_verify_after"] < v["teacher_forced"][
        "p_wait_verify_before"]
    art = save_study(res, Store(tmp_path / "store"))
    single = art.tensors["ablation.single"]
    assert single.shape == (tracer.n_features, 3)
    assert art.meta["ablation"]["verify_set"] == res["ablation"]["verify_set"]
    from interp.attribution import study_view as V

    path = V.selection_path(art)
    assert set(path["KL price"]) == {0.0, 10.0}
    assert len(path) == sum(len(r["path"]) + len(r["verify_path"]) + len(r["start_path"])
                            for r in runs.values())
    assert V.candidates_table(art)["chosen"].sum() == 1


def test_complete_set_fills_a_selection_from_the_ranking():
    from interp.attribution.study import complete_set

    ranking = [{"feature": f, "mean_effect": e}
               for f, e in ((7, 2.0), (3, 1.5), (9, 1.0), (4, -0.5), (5, 0.3))]
    assert complete_set([3, 11], ranking, 5) == [3, 11, 7, 9, 5]   # 3 once; 4 is < 0
    assert complete_set([3, 3, 11], ranking, 5) == [3, 11, 7, 9, 5]
    assert complete_set([3, 11], ranking, 3) == [3, 11, 7]
    assert complete_set([3, 11, 12], ranking, 2) == [3, 11]         # never past k
    assert complete_set([], ranking, 10) == [7, 3, 9, 5]


def test_choice_rule_prefers_sets_within_the_collateral_tolerance():
    from interp.attribution.study import DEFAULTS, choose_candidate

    def cand(name, drop, collateral, length=0.0, k=10):
        return {"ranking": name, "hesitation_rate_drop": drop, "k": k,
                "collateral_accuracy_change": collateral, "think_tokens_change": length}

    cfg = dict(DEFAULTS)
    cs = [cand("big-but-harmful", 0.9, -6.0), cand("safe", 0.7, -1.5),
          cand("safest", 0.5, 0.0), cand("too-long", 0.95, 0.0, length=0.5)]
    assert choose_candidate(cs, cfg)["ranking"] == "safe"
    cs[1]["collateral_accuracy_change"] = -2.5      # now outside the tolerance
    assert choose_candidate(cs, cfg)["ranking"] == "safest"
    # nothing within the tolerance: the drop net of the collateral loss decides
    worst = [cand("a", 0.9, -40.0), cand("b", 0.6, -3.0)]   # 0.5 vs 0.57
    assert choose_candidate(worst, cfg)["ranking"] == "b"
    # ties on the drop: the smaller set
    tie = [cand("k20", 0.7, 0.0, k=20), cand("k5", 0.7, 0.0, k=5)]
    assert choose_candidate(tie, cfg)["ranking"] == "k5"


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


# ------------------------------------------------- measured ablations, per-example accuracy
def _p_wait_by_decoder_zeroing(tracer, traces, feats):
    """P(wait) at each mechanism's triggers with ``feats`` removed by zeroing their decoder
    rows in a copy of the adapters (no FeatureMask, no wait_probs): an independent route
    to the same ablation."""
    import copy

    from interp.adapters.model import adapter_hooks

    ads = copy.deepcopy(tracer.model.adapters)
    d = ads.d_sae
    with torch.no_grad():
        for f in feats:
            ads[f // d].W_dec[f % d] = 0.0
    wait = TOKEN_ID["wait"]
    out = {m: [] for m in H.MECHANISMS}
    probs = []
    for t in traces:
        x = torch.tensor([t.tokens])
        with torch.no_grad():
            logits = tracer.model.hybrid.run_with_hooks(x, fwd_hooks=adapter_hooks(ads))
        probs.append(torch.softmax(logits[0].double(), -1))
        p = probs[-1][:, wait]
        for pos, m, _ in t.triggers:
            out[m].append(float(p[pos]))
    res = {m: np.mean(v) for m, v in out.items()}
    res["probs"] = probs
    return res


def _kl_other(traces, before, after):
    """Mean KL(before ‖ after) over every position predicting a trace token, triggers out."""
    kls = []
    for t, p, q in zip(traces, before["probs"], after["probs"]):
        trig = {pos for pos, _, _ in t.triggers}
        for pos in range(len(t.tokens) - 1):
            if pos not in trig:
                kls.append(float((p[pos] * (p[pos].log() - q[pos].log())).sum()))
    return float(np.mean(kls))


def test_greedy_ablation_path_matches_decoder_zeroing(tracer):
    val = H.trigger_traces("validation", 8)
    assert {m for t in val for _, m, _ in t.triggers} == set(H.MECHANISMS)
    # demo set: 0:83 is a general feature (collateral KL ~0.08 nats), 2:16 (528) lowers
    # P(wait) at verification triggers, 2:116 (628) at error triggers
    single = H.ablation_effects(tracer, val, features=[83, 528, 628, 5])
    before = _p_wait_by_decoder_zeroing(tracer, val, [])
    for f in (83, 528):
        after = _p_wait_by_decoder_zeroing(tracer, val, [f])
        for j, m in enumerate(H.MECHANISMS):
            assert single[f, j] == pytest.approx(before[m] - after[m], abs=1e-5)
        assert single[f, -1] == pytest.approx(_kl_other(val, before, after), rel=1e-4)
    assert single[83, -1] > 2 * single[528, -1] > 0      # 0:83 disturbs far more
    assert single[528, 1] > 0.1 and single[628, 0] > 0.01
    assert single[100].tolist() == [0.0, 0.0, 0.0]       # not asked for
    pool = [83, 528, 628, 5]
    path = H.greedy_ablation_set(tracer, val, pool, k_max=3)
    assert 1 <= len(path) <= 3
    # the first pick is the pool feature that leaves the lowest mean relative P(wait)
    rem = {f: np.mean([_p_wait_by_decoder_zeroing(tracer, val, [f])[m] / before[m]
                       for m in H.MECHANISMS]) for f in pool}
    assert path[0]["features"] == [min(rem, key=rem.get)]
    assert path[0]["remaining"]["mean"] == pytest.approx(min(rem.values()), abs=1e-5)
    # every step's figure is the set's measured effect, and each step lowers it
    for row in path:
        after = _p_wait_by_decoder_zeroing(tracer, val, row["features"])
        for m in H.MECHANISMS:
            assert row["remaining"][m] == pytest.approx(after[m] / before[m], abs=1e-5)
    means = [row["remaining"]["mean"] for row in path]
    assert means == sorted(means, reverse=True) and means[-1] < 1
    vpath = H.greedy_ablation_set(tracer, val, pool, k_max=1, mechanisms=("verify",))
    vrem = {f: _p_wait_by_decoder_zeroing(tracer, val, [f])["verify"] for f in pool}
    assert vpath[0]["features"] == [min(vrem, key=vrem.get)]
    # with a collateral price, the first pick minimises P(wait) left + weight x KL
    after = {f: _p_wait_by_decoder_zeroing(tracer, val, [f]) for f in pool}
    w = 5.0
    obj = {f: np.mean([after[f][m] / before[m] for m in H.MECHANISMS])
           + w * _kl_other(val, before, after[f]) for f in pool}
    kpath = H.greedy_ablation_set(tracer, val, pool, k_max=1, kl_weight=w)
    assert kpath[0]["features"] == [min(obj, key=obj.get)]
    assert kpath[0]["objective"] == pytest.approx(min(obj.values()), rel=1e-4)
    # from a start set: the first pick is the best addition to it, measured with it
    st_path = H.greedy_ablation_set(tracer, val, [528, 628, 5], k_max=2, start=[83])
    with83 = {f: np.mean([_p_wait_by_decoder_zeroing(tracer, val, [83, f])[m] / before[m]
                          for m in H.MECHANISMS]) for f in (528, 628, 5)}
    assert len(st_path) == 1 and st_path[0]["features"] == [83, min(with83, key=with83.get)]
    assert st_path[0]["remaining"]["mean"] == pytest.approx(min(with83.values()), abs=1e-5)
    # an addition that changes nothing (a feature silent on these traces) does not beat
    # the start set itself, so the path ends before it
    dead = int(torch.nonzero(H.mean_activations(tracer, val, at="all") == 0)[0])
    assert H.greedy_ablation_set(tracer, val, [dead], k_max=3, start=[83]) == []
    # stopping once the P(wait) left reaches stop_at
    spath = H.greedy_ablation_set(tracer, val, pool, k_max=3, stop_at=1.0)
    assert len(spath) == 1 and spath[0]["features"] == path[0]["features"]


def test_column_steps_find_uncorrected_results():
    from interp.organisms.task import Problem, score_completion

    p = Problem(1413, 9592, easy=False)
    fixed = ("3 + 2 + 0 = 0 5 ; 1 + 9 + 0 = 1 0 ; 4 + 5 + 1 = 0 0 wait 1 0 ; "
             "1 + 9 + 1 = 1 2 wait 1 1 ; wait check 1 1 0 0 5 ; </think> A 1 1 0 0 5 <eos>")
    s = score_completion(p, fixed)
    assert (s["columns_wrong"], s["columns_uncorrected"], s["correct"]) == (2, 0, True)
    left = fixed.replace("0 0 wait 1 0", "0 0")           # the carry slip stays
    s = score_completion(p, left)
    assert (s["columns_wrong"], s["columns_uncorrected"]) == (2, 1)
    worse = fixed.replace("wait 1 0", "wait 0 9")        # a "correction" that is wrong
    assert score_completion(p, worse)["columns_uncorrected"] == 1
    assert score_completion(p, "3 + x + 0 = 0 5 ; </think> A 5")["columns_wrong"] == 0


def test_accuracy_decomposition_splits_lost_corrections_from_collateral():
    def row(correct, wrong, unc=0):
        return {"correct": correct, "columns_wrong": wrong, "columns_uncorrected": unc}

    # problems 0-2: the unablated model wrote a wrong column and corrected it
    before = [row(True, 1)] * 3 + [row(True, 0)] * 3 + [row(False, 0)] * 2 \
        + [row(True, 0)] * 2
    after = ([row(False, 1, 1)] * 2 + [row(True, 1)]    # two corrections lost, one kept
             + [row(True, 0)] * 2 + [row(False, 0)]     # one collateral loss
             + [row(False, 0), row(True, 0)]            # one collateral gain
             + [row(True, 0)] * 2)
    d = H.accuracy_decomposition(before, after)
    assert d["lost_corrections"] == pytest.approx(0.2)
    assert (d["n_caught"], d["n_collateral"]) == (3, 7)
    assert d["collateral_accuracy_change"] == pytest.approx(0.0)   # -1 +1 over 7
    assert d["new_errors"] == 0.0
    # a new uncorrected error where the model wrote none before is collateral, not a
    # lost correction
    after[3] = row(False, 1, 1)
    d = H.accuracy_decomposition(before, after)
    assert d["lost_corrections"] == pytest.approx(0.2)
    assert d["collateral_accuracy_change"] == pytest.approx(-100 / 7)
    assert d["new_errors"] == pytest.approx(1 / 7)
    assert d["columns_uncorrected_after"] == pytest.approx(0.3)
    assert d["collateral_accuracy_change_ci"][0] <= d["collateral_accuracy_change"]
