"""The Adapters page and the report on a tiny saved run (tmp store; no organisms needed)."""

from __future__ import annotations

import json

import pytest
import torch
from streamlit.testing.v1 import AppTest

from interp.store import PROJECT_ROOT, Store

APP = str(PROJECT_ROOT / "app.py")


pytestmark = pytest.mark.usefixtures("_navigation_mode")


@pytest.fixture
def saved_run(tiny_pair_dirs, tmp_cache):
    from interp.adapters.evaluate import evaluate_artifact
    from interp.adapters.io import save_adapters
    from interp.adapters.train import TrainConfig, setup_models

    b, f = tiny_pair_dirs
    cfg = TrainConfig(base=str(b), reasoner=str(f), d_sae=16, data="random", max_len=12,
                      device="cpu", steps=3)
    setup = setup_models(cfg)
    with torch.no_grad():
        for a in setup.model.adapters.layers:
            a.W_dec.normal_(0, 0.1)
    hist = [{"step": i + 1, "loss": 1.0 / (i + 1), "kl": 0.5 / (i + 1), "l0": 3.0}
            for i in range(5)]
    store = Store(tmp_cache)
    art = save_adapters(setup, cfg, store=store, history=hist)
    ev = evaluate_artifact(art, store, n_faith=8, source="random",
                           model_bundle=(setup.model, setup.base, setup.reasoner))
    store.save("adapters_sweep", {"base": str(b), "reasoner": str(f)}, meta={"runs": [
        {"l1": 1e-3, "mean_l0": 5.0, "kl_gap_closed": 0.8, "dead_fraction": 0.1},
        {"l1": 1e-2, "mean_l0": 1.0, "kl_gap_closed": 0.5, "dead_fraction": 0.3}]})
    return art, ev


def test_eval_artifact_figures_are_consistent(saved_run):
    _, ev = saved_run
    fa = ev.meta["faithfulness"]
    assert fa["kl_gap_closed"] == pytest.approx(1 - fa["kl_adapter"] / fa["kl_hybrid"])
    L = len(fa["l0_layers"])
    # bridged endpoints are the pure models: a2r(0) = reasoner, r2a(0) = adapter model
    assert fa["bridged_a2r"][0] == pytest.approx(0.0, abs=1e-6)
    assert fa["bridged_r2a"][0] == pytest.approx(fa["kl_adapter"], rel=1e-4)
    assert fa["bridged_a2r"][L] == pytest.approx(fa["kl_adapter"], rel=1e-4)
    assert fa["bridged_r2a"][L] == pytest.approx(0.0, abs=1e-6)
    assert fa["nmse_adapter"][0] == 0.0


def test_adapters_page_renders_runs_curves_and_frontier(saved_run, tiny_pair_dirs,
                                                       monkeypatch):
    monkeypatch.delenv("INTERP_DEMO", raising=False)
    art, _ = saved_run
    b, f = (str(p) for p in tiny_pair_dirs)
    at = AppTest.from_file(APP, default_timeout=180)
    at.query_params.update({"base": b, "fine": f})
    at.switch_page("pages/adapters.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    # only the sidebar pair's run is listed (not the committed organism run), and the
    # run shown in detail is pinned in the URL even though it is the default
    assert [o for o in at.selectbox(key="run").options] == [at.selectbox(key="run").value]
    assert art.key[-8:] in at.selectbox(key="run").value
    assert at.query_params.get("run") == at.selectbox(key="run").value
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    titles = " | ".join(str(c["layout"].get("title", {}).get("text")) for c in charts)
    assert "during training" in titles and "Sparsity vs faithfulness" in titles
    assert "Residual NMSE" in titles and "Bridged KL" in titles
    assert at.query_params.get("term") is None  # defaults are not written to the URL
    at.segmented_control(key="term").set_value("l0").run()
    assert not at.exception
    assert at.query_params.get("term") == "l0"


def test_demo_mode_hides_training(saved_run, monkeypatch):
    monkeypatch.setenv("INTERP_DEMO", "1")
    at = AppTest.from_file(APP, default_timeout=180)
    at.switch_page("pages/adapters.py")
    at.run()
    assert not at.exception
    assert not [b for b in at.button if "start" in (b.key or "")]
    assert not [e for e in at.expander if "Train" in str(e.label)]


def test_own_pair_trains_on_a_trace_set(tiny_pair_dirs, tmp_cache, tmp_path, monkeypatch):
    """With another pair in the sidebar the page never offers the organisms' generator:
    it says how to make a trace set, then offers the pair's trace sets."""
    from interp.tasks.traces import import_traces

    monkeypatch.delenv("INTERP_DEMO", raising=False)
    b, f = (str(p) for p in tiny_pair_dirs)

    def page():
        at = AppTest.from_file(APP, default_timeout=180)
        at.query_params.update({"base": b, "fine": f})
        at.switch_page("pages/adapters.py")
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    at = page()
    assert any("traces generate --model" in i.value for i in at.info)
    assert not [x for x in at.button if x.key == "train_start"]
    task = tmp_path / "t.jsonl"
    task.write_text(json.dumps({"prompt": "1 + 1", "trace": "2 </think> 2"}) + "\n")
    key = import_traces(task, f)["key"]
    at = page()
    box = at.selectbox(key="adata")
    assert box.options == [key]
    assert [x for x in at.button if x.key == "train_start"]
