"""The length pipeline end to end on a tiny random model, then the page on its artifacts
(AppTest)."""

import pytest

from interp.length.pipeline import build, list_runs, load_run, make_config
from interp.models import load_model
from interp.store import PROJECT_ROOT, Store

APP = str(PROJECT_ROOT / "app.py")

MARKERS = {"think_open": "<think>", "think_close": "</think>", "starts_open": True,
           "step_sep": "ok", "hesitation": "wait"}


@pytest.fixture(scope="module")
def built(tiny_qwen_dir, tiny_tokenizer, tmp_path_factory):
    import interp.store as S

    root = tmp_path_factory.mktemp("length_run")
    old = S.DEFAULT_ROOT
    S.DEFAULT_ROOT = root / "cache"
    try:
        m = load_model(str(tiny_qwen_dir), device="cpu")
        m.tokenizer = m.hooked.tokenizer = tiny_tokenizer
        prompts = [f"<bos> {a} + {b} = <think>" for a in range(10) for b in range(10)]
        cfg = make_config(source="prompts", prompts=prompts, markers=MARKERS, n_direction=60,
                          n_sweep=8, n_eval=16, n_alpha=5, max_new_tokens=40,
                          temperature=1.0, split={"mode": "percentile", "short": 0.3,
                                                  "long": 0.7}, batch_size=64,
                          seal_rules=[{"class": "reflection", "mode": "contains",
                                       "keyword": "wait"}])
        demo = Store(root / "demo")
        calls = []

        def progress(step, total, message="", **metrics):   # JobContext.progress's shape
            calls.append((step, total, metrics))

        idx = build(m, cfg, demo, progress=progress)
        assert calls[-1][:2] == (7, 7) and any("of" in c[2] for c in calls)
    finally:
        S.DEFAULT_ROOT = old
    return root, demo, idx


def test_pipeline_artifacts(built):
    root, demo, idx = built
    run = load_run(demo, idx["key"])
    assert set(idx["keys"]) >= {"generations", "direction", "sweep", "heads", "edit"}
    assert len(run["sweep"]["per_alpha"]) == 5
    assert run["head_scores"].shape == (2, 4)
    # the exported edited checkpoint (reloaded through load_model) equals the edited model
    assert run["edit"]["export_max_logit_diff"] < 1e-4
    assert all(r["norm_after"] < 1e-5 for r in run["edit"]["norms"])
    assert (root / "cache" / "length_edited" / idx["keys"]["heads"] / "config.json").exists()
    assert list_runs({"demo": demo})[0]["key"] == idx["key"]
    d = run["direction"]
    assert d["sign"].startswith("long - short") and d["positions_setting"] == "auto"
    assert {d["positions_rule"], d["alt_positions_rule"]["rule"]} == {"think", "open"}
    # the SEAL dose-response, one entry per α of the grid over the evaluation prompts
    sw = {p["alpha"]: p for p in run["seal"]["sweep"]}
    assert set(sw) == {-1.0, -0.5, -0.25, -0.1, 0.0}
    assert all(p["n"] == run["edit"]["before"]["n"] and p["hesitations"] >= 0
               for p in sw.values())


@pytest.mark.parametrize("demo_mode", [True, False])
def test_page_renders_run(built, monkeypatch, tmp_cache, _navigation_mode, demo_mode):
    from streamlit.testing.v1 import AppTest

    import interp.length.report as R

    root, demo, idx = built
    monkeypatch.setattr(R, "DEMO_ROOT", demo.root)
    if demo_mode:
        monkeypatch.setenv("INTERP_DEMO", "1")
    else:
        monkeypatch.delenv("INTERP_DEMO", raising=False)
    import interp.length.pipeline as P

    at = AppTest.from_file(APP, default_timeout=120)
    if demo_mode:   # the demo loads organisms only: let the tiny run stand for the reasoner's
        monkeypatch.setattr(P, "list_runs", lambda stores: [
            {**r, "model": "organism:reasoner"} for r in list_runs(stores)])
    else:
        at.query_params["fine"] = list_runs({"demo": demo})[0]["model"]  # the run's model
    at.switch_page("pages/length.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert bool([e for e in at.expander if "New run" in str(e.label)]) != demo_mode
    # the run is pinned in the URL although it is the only (default) one
    assert at.query_params.get("lrun") == f"demo:{idx['key']}"
    charts, heads = {}, []
    for section in at.segmented_control(key="ltab").options:  # one view at a time
        at.segmented_control(key="ltab").set_value(section).run()
        assert not at.exception, (section, [e.value for e in at.exception])
        charts[section] = len(at.get("plotly_chart"))
        heads += [x.value for x in at.markdown]
        assert at.query_params.get("ltab") in (
            None if section == "Lengths" else section, [section])  # the view is in the URL
    assert sum(charts.values()) >= 7   # no accuracy charts without a scorer
    assert charts["Lengths"] == 1 and charts["Direction"] == 2
    # per-example agreement tables: edits vs unedited, α sweep and SEAL vs unsteered
    assert any("edited against unedited" in h for h in heads)
    assert sum("against the unsteered generations" in h for h in heads) == 2
    at.segmented_control(key="ltab").set_value("α sweep").run()
    at.text_input(key="lalpha").set_value("0").run()
    assert not at.exception
    assert at.query_params.get("lalpha") in ("0", ["0"])
