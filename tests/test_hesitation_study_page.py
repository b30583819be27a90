"""The Hesitation features page (AppTest) on the committed demo hesitation study: the
numbers it shows are the artifact's, recomputed here from its records where they can be."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from interp.attribution import study_view as V
from interp.attribution.report import DEMO_ROOT, latest_study
from interp.store import PROJECT_ROOT, Store

APP = str(PROJECT_ROOT / "app.py")
PAGE = "pages/hesitation_study.py"
pytestmark = pytest.mark.usefixtures("_navigation_mode")


@pytest.fixture(scope="module")
def study():
    return latest_study(Store(DEMO_ROOT, read_only=True))


def _page(params: dict | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page(PAGE)
    at.query_params.update(params or {})
    return at.run()


def test_page_shows_the_committed_study(tmp_cache, monkeypatch, study):
    monkeypatch.setenv("INTERP_DEMO", "1")
    at = _page()
    assert not at.exception, [e.value for e in at.exception]
    assert at.query_params["study"] == f"demo:{study.key}"
    text = " ".join(m.value for m in at.markdown)
    f = study.meta["figures"]
    assert f"{f['clamp']['clamp_induced_rate']:.1%}" in text
    assert f"{f['cluster_purity']:.2f}" in text
    frames = [d.value for d in at.dataframe]
    ranking = next(d for d in frames if "mean effect" in d.columns)
    top = study.meta["rankings"]["logit_diff"][0]
    assert ranking.iloc[0]["feature"] == top["name"]
    assert ranking.iloc[0]["card"] == f"features?feat={top['name']}"
    assert len(ranking) == 30
    at.query_params["rn"] = "10"
    at.query_params["rk"] = "logit"
    at = _page({"rn": "10", "rk": "logit"})
    ranking = next(d.value for d in at.dataframe if "mean effect" in d.value.columns)
    assert len(ranking) == 10
    assert ranking.iloc[0]["feature"] == study.meta["rankings"]["logit"][0]["name"]
    assert not at.button  # nothing can be started in the hosted demo


def test_selection_paths_can_be_shown_one_kind_at_a_time(tmp_cache, monkeypatch, study):
    import json

    monkeypatch.setenv("INTERP_DEMO", "1")
    path = V.selection_path(study)

    def names(at):
        fig = next(json.loads(c.proto.spec) for c in at.get("plotly_chart")
                   if "forward selection" in json.dumps(json.loads(c.proto.spec)["layout"]))
        return {t["name"] for t in fig["data"]}

    every = names(_page())
    kinds = list(dict.fromkeys(path["selection"]))
    assert len(kinds) == 3 and all(any(k in n for n in every) for k in kinds)
    for k in kinds:
        got = names(_page({"sel": k}))
        assert got and all(k in n for n in got), (k, got)
    assert names(_page({"sel": "bogus"})) == every   # a bad link shows all


def test_bad_links_fall_back(tmp_cache, monkeypatch, study):
    monkeypatch.setenv("INTERP_DEMO", "1")
    at = _page({"study": "demo:nosuch", "rn": "9999", "rk": "bogus"})
    assert not at.exception
    assert at.query_params["study"] == f"demo:{study.key}"


def test_headline_recomputes_from_the_figures(study):
    f = study.meta["figures"]
    head = V.headline_table(study).set_index("set")
    tf, gen = f["evaluation_teacher_forced"], f["evaluation_generation"]
    row = head.loc["chosen set"]
    assert row["features"] == len(study.meta["chosen_features"])
    assert row["share of features"] == pytest.approx(f["ablated_feature_fraction"])
    assert row["P(wait) drop, error"] == pytest.approx(
        1 - tf["p_wait_error_after"] / tf["p_wait_error_before"])
    assert row["hesitation drop, verify"] == pytest.approx(
        1 - gen["hesitations_verify_after"] / gen["hesitations_verify_before"])
    path = V.selection_path(study)
    for run in study.meta.get("ablation", {}).get("paths", []):
        for which, key in (("all triggers", "path"), ("verification only", "verify_path")):
            part = path[(path["selection"] == which) & (path["KL price"] == run["kl_weight"])]
            assert len(part) == len(run[key])
            assert list(part["remaining mean"]) == [r["remaining"]["mean"] for r in run[key]]
    clusters = V.clusters_table(study)
    assert clusters["size"].sum() == len(study.meta["clusters"]["features"])
    # the prompt context shown for a cluster ends at a trigger of its mechanism
    assert all(m in row for row, m in zip(clusters["fires most at"],
                                           clusters["mechanism (ground truth)"]))


def test_report_prints_the_measured_ablations(study):
    from interp.attribution.report import collect

    out = collect(Store(DEMO_ROOT, read_only=True))
    single = study.tensors["ablation.single"]
    d = study.meta["d_sae"]
    for j, m in enumerate(("error", "verify")):
        top = out["single_ablation_top"][m][0]
        f = int(single[:, j].argmax())
        assert top["feature"] == f"{f // d}:{f % d}"
        assert top["p_wait_drop"] == pytest.approx(float(single[f, j]))
        assert top["collateral_kl"] == pytest.approx(float(single[f, -1]))
    assert {c["kl_weight"] for c in out["candidates"]} >= {None, 10.0}


def test_studies_are_those_of_the_sidebar_pair(tmp_cache, monkeypatch):
    monkeypatch.delenv("INTERP_DEMO", raising=False)
    (tmp_cache / "organisms").symlink_to(PROJECT_ROOT / "cache" / "organisms")
    at = _page({"base": "organism:sft", "fine": "organism:grpo"})
    assert not at.exception
    assert any("No hesitation study of the sidebar pair" in i.value for i in at.info)
    assert not at.dataframe
    at = _page()       # the organisms' own pair: the committed study, and a job form
    assert not at.exception
    assert at.query_params["study"].startswith("demo:hesitation_study-")
    assert any(e.label == "Run a new study" for e in at.expander)
