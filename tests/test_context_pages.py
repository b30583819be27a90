"""One model context and long work as jobs on the Adapters page (AppTest, tiny pair in a
temp store): only the sidebar pair's runs, the run pinned in the URL, evaluation as an
``adapters.eval`` job, a finished training job listed once (as its run) and its run
selected when the job ends; the Length page's view control.

Job states are read through ``interp.jobs.status`` / ``list_jobs``, which the tests
replace by fakes where they need a job in a given state (no worker process)."""

from __future__ import annotations

import json

import pytest
import torch
from streamlit.testing.v1 import AppTest

from interp import jobs
from interp.errors import JobError
from interp.store import PROJECT_ROOT, Store

APP = str(PROJECT_ROOT / "app.py")
pytestmark = pytest.mark.usefixtures("_navigation_mode")


def _save_run(b, f, store, l1: float):
    from interp.adapters.io import save_adapters
    from interp.adapters.train import TrainConfig, setup_models

    cfg = TrainConfig(base=str(b), reasoner=str(f), d_sae=16, data="random", max_len=12,
                      device="cpu", steps=3, l1=l1)
    setup = setup_models(cfg)
    with torch.no_grad():
        for a in setup.model.adapters.layers:
            a.W_dec.normal_(0, 0.1)
    hist = [{"step": i + 1, "loss": 1.0 / (i + 1), "kl": 0.5 / (i + 1)} for i in range(3)]
    return save_adapters(setup, cfg, store=store, history=hist)


@pytest.fixture
def pair_runs(tiny_pair_dirs, tmp_cache, tmp_path, monkeypatch):
    """Two saved runs of the tiny pair (the older one first) and a trace set of it (so
    the training form offers a job)."""
    from interp.tasks.traces import import_traces

    monkeypatch.delenv("INTERP_DEMO", raising=False)
    b, f = (str(p) for p in tiny_pair_dirs)
    store = Store(tmp_cache)
    old = _save_run(b, f, store, 1e-2)
    task = tmp_path / "t.jsonl"
    task.write_text(json.dumps({"prompt": "1 + 1", "trace": "2 </think> 2"}) + "\n")
    import_traces(task, f)
    return b, f, store, old


def _page(b, f, extra=None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.query_params.update({"base": b, "fine": f, **(extra or {})})
    at.switch_page("pages/adapters.py")
    return at


def _fake_jobs(monkeypatch, states: dict[str, jobs.JobStatus]):
    """``jobs.status`` answers from ``states`` (by job kind prefix of the id)."""
    def status(jid, root=None):
        for prefix, st in states.items():
            if jid.startswith(prefix):
                return jobs.JobStatus(**{**st.__dict__, "id": jid})
        raise JobError(f"no job {jid}")

    monkeypatch.setattr(jobs, "status", status)


def test_evaluate_is_a_job_and_the_link_pins_the_run(pair_runs, monkeypatch):
    b, f, store, old = pair_runs
    submitted = []
    monkeypatch.setattr(jobs, "submit", lambda kind, spec, *a, **k: submitted.append(
        (kind, spec)))
    at = _page(b, f).run()
    assert not at.exception, [e.value for e in at.exception]
    run = at.selectbox(key="run")
    assert old.key[-8:] in run.value and at.query_params.get("run") == run.value
    # only this pair's runs: not the committed organism run
    assert all("organism" not in o for o in run.options)
    # the run has no evaluation: a job panel, not a blocking computation
    assert [x for x in at.button if x.key == "eval_start"]
    at.button(key="eval_start").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert submitted == [("adapters.eval", {"key": old.key, "device": "auto"})]
    assert not store.list("adapters_eval")   # nothing ran inside the page

    # a newer run is saved: the same link (with its run key) still shows the older one,
    # and so does a link without one (the default never moves to the newest run)
    new = _save_run(b, f, store, 3e-2)
    link = dict(at.query_params)
    again = _page(b, f, {"run": link["run"]}).run()
    assert old.key[-8:] in again.selectbox(key="run").value
    assert any(new.key[-8:] in o for o in again.selectbox(key="run").options)
    bare = _page(b, f).run()
    assert old.key[-8:] in bare.selectbox(key="run").value


def test_eval_job_saves_the_evaluation(pair_runs):
    """The ``adapters.eval`` job (run inline) saves the same figures as calling the
    evaluation directly."""
    from interp.adapters.evaluate import evaluate_artifact

    _b, _f, store, old = pair_runs
    seen = []
    res = jobs.run_inline("adapters.eval", {"key": old.key, "device": "cpu", "n_faith": 8,
                                            "n_behaviour": 0},
                          on_progress=lambda st: seen.append((st.step, st.total))).result
    assert seen and seen[-1] == (2, 2)   # the job reports progress
    ev = store.load("adapters_eval", res["key"])
    assert ev.meta["adapters_key"] == old.key == res["adapters_key"]
    direct = evaluate_artifact(old, Store(store.root / "direct"), n_faith=8, n_behaviour=0,
                               device="cpu")
    for k in ("kl_adapter", "kl_hybrid", "kl_gap_closed", "mean_l0"):
        assert ev.meta["faithfulness"][k] == pytest.approx(direct.meta["faithfulness"][k],
                                                           rel=1e-5), k
    from interp.errors import ConfigError

    with pytest.raises(ConfigError, match="key"):
        jobs.run_inline("adapters.eval", {"device": "cpu"})


def test_finished_training_job_is_listed_once(pair_runs, monkeypatch):
    """A finished job is its saved run (listed once); a running job of this pair is
    listed as a live curve; a job of another pair is not listed."""
    b, f, _store, old = pair_runs
    done = jobs.JobStatus(id="adapters-train-aaaaaaaa", kind="adapters.train", state="done",
                          result={"key": old.key})
    live = jobs.JobStatus(id="adapters-train-bbbbbbbb", kind="adapters.train",
                          state="running")
    other = jobs.JobStatus(id="adapters-train-cccccccc", kind="adapters.train",
                           state="running")
    monkeypatch.setattr(jobs, "list_jobs", lambda kind=None, root=None: [done, live, other])
    specs = {done.id: {"base": b, "reasoner": f}, live.id: {"base": b, "reasoner": f},
             other.id: {"base": "organism:base", "reasoner": "organism:reasoner"}}
    monkeypatch.setattr(jobs, "spec_of", lambda jid, root=None: specs[jid])
    monkeypatch.setattr(jobs, "progress_records", lambda jid, root=None: [
        {"step": 1, "loss": 1.0, "kl": 0.5}])
    at = _page(b, f).run()
    assert not at.exception, [e.value for e in at.exception]
    opts = at.multiselect(key="runs_select").options
    assert sum(old.key[-8:] in o for o in opts) == 1
    assert [o for o in opts if o.startswith("job ")] == ["job bbbbbbbb (running)"]


def test_new_run_is_selected_when_its_job_ends(pair_runs, monkeypatch):
    b, f, store, old = pair_runs
    _fake_jobs(monkeypatch, {"adapters-train": jobs.JobStatus(
        id="", kind="adapters.train", state="running", step=1, total=3)})
    at = _page(b, f).run()
    assert not at.exception, [e.value for e in at.exception]
    assert old.key[-8:] in at.selectbox(key="run").value
    new = _save_run(b, f, store, 3e-2)   # the job saves its run and ends
    _fake_jobs(monkeypatch, {"adapters-train": jobs.JobStatus(
        id="", kind="adapters.train", state="done", step=3, total=3,
        result={"key": new.key})})
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert new.key[-8:] in at.selectbox(key="run").value
    assert new.key[-8:] in at.query_params.get("run")
    assert any(new.key[-8:] in o for o in at.multiselect(key="runs_select").value)
    assert new.key[-8:] in at.query_params.get("runs")
    # only once: the user's next choice sticks
    at.selectbox(key="run").set_value(next(o for o in at.selectbox(key="run").options
                                           if old.key[-8:] in o)).run()
    assert old.key[-8:] in at.selectbox(key="run").value
    at.run()
    assert old.key[-8:] in at.selectbox(key="run").value


def test_another_pair_has_no_runs_and_says_what_to_do(pair_runs):
    at = _page("organism:sft", "organism:grpo").run()
    assert not at.exception, [e.value for e in at.exception]
    text = " ".join(i.value for i in at.info)
    assert "No adapter runs for the pair" in text
    assert "python -m interp adapters train --base organism:sft --reasoner organism:grpo" \
        in text


def test_length_page_keeps_its_run_and_view_in_the_link(tmp_cache, monkeypatch):
    """On the committed run (organism reasoner): the run and the view are in the URL and
    a link reopens both; another fine-tune has no runs and the page says what to do."""
    from interp.length.pipeline import list_runs
    from interp.length.report import demo_store

    monkeypatch.delenv("INTERP_DEMO", raising=False)
    committed = [r for r in list_runs({"demo": demo_store()})
                 if r["model"] == "organism:reasoner"]
    if not committed:
        pytest.skip("no committed length run")

    def page(params):
        at = AppTest.from_file(APP, default_timeout=180)
        at.query_params.update(params)
        at.switch_page("pages/length.py")
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    at = page({})
    assert at.query_params.get("lrun") == f"demo:{committed[-1]['key']}"
    at.segmented_control(key="ltab").set_value("Heads").run()
    assert at.query_params.get("ltab") == "Heads"
    assert at.segmented_control(key="ltab").required   # a click cannot clear the view
    again = page(dict(at.query_params))
    assert again.segmented_control(key="ltab").value == "Heads"
    assert again.selectbox(key="lrun").value == at.query_params.get("lrun")
    other = page({"fine": "organism:grpo"})
    text = " ".join(i.value for i in other.info)
    assert "No reasoning-length runs of the sidebar's fine-tune" in text
    assert "python -m interp length build --model organism:grpo" in text


def test_same_model_spellings(tiny_pair_dirs, monkeypatch):
    """A run's recorded spec matches the sidebar's however either is spelled."""
    import os

    from interp.models import same_model

    b, f = tiny_pair_dirs
    assert same_model("grpo", "organism:grpo") and same_model(" organism:sft", "sft")
    assert not same_model("organism:sft", "organism:grpo")
    monkeypatch.chdir(b.parent)
    assert same_model(str(b), os.path.join(".", b.name)) and same_model(str(b), f"{b}/")
    assert not same_model(str(b), str(f))
    assert same_model("Qwen/Qwen2.5-0.5B", " Qwen/Qwen2.5-0.5B ")
    assert not same_model("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-1.5B")
