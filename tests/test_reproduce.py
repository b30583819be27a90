"""Each "Reproduce in Python" snippet (interp.reproduce) is executed and must recompute
the numbers the page's backend call gives for the same settings."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from interp import reproduce as R
from interp.store import PROJECT_ROOT, Store
from tests.test_vectors_sweep import _tiny_organism


def run(code: str) -> dict:
    ns: dict = {"__name__": "__snippet__"}
    exec(compile(code, "<snippet>", "exec"), ns)
    assert "result" in ns, code
    return ns


@pytest.fixture(scope="module")
def organisms(tmp_path_factory):
    root = tmp_path_factory.mktemp("repro")
    return {n: _tiny_organism(root / n, i) for i, n in
            enumerate(("instruct", "grpo", "sft", "base"))}


# ------------------------------------------------------------------ reasoning vectors
def test_task_stats_snippet(organisms):
    from interp.vectors import views
    from interp.vectors.task import Mask

    m = organisms
    mask = Mask(("attn", "mlp"), (1, 2))
    code = R.vectors_task_stats(m["grpo"], m["sft"], m["instruct"], m["base"],
                                mask.to_config())
    got = run(code)["result"]
    want = views.task_stats_view(m["grpo"], m["sft"], m["instruct"], m["base"], mask)
    assert got.equals(want["by_layer"])
    # another mask gives other numbers: the snippet carries the view's mask
    other = views.task_stats_view(m["grpo"], m["sft"], m["instruct"], m["base"], Mask())
    assert not got.equals(other["by_layer"])


@pytest.mark.parametrize("kind", ["task", "control"])
def test_trace_snippet(organisms, kind):
    from interp.models import load_model
    from interp.organisms import task as T
    from interp.vectors import views
    from interp.vectors.sweep import organism_batch
    from interp.vectors.task import Mask

    m = organisms
    if kind == "task":
        spec = {"kind": "task", "target": m["instruct"], "donor_a": m["grpo"],
                "donor_b": m["sft"], "mask": None}
    else:
        spec = {"kind": "control", "target": m["instruct"], "layer": 1, "site": "resid_post",
                "vector_kind": "R-C", "n_control": 8, "positive_fmt": "think",
                "negative_fmt": "direct"}
    code = R.vectors_trace(spec, 0.75, problem=3, own=True, max_new_tokens=4, unit="bits",
                           positions=[0, 2, 5])
    ns = run(code)
    got = ns["result"]
    model = load_model(m["instruct"], device="cpu")
    if kind == "task":
        modify_at = views.task_modify(model, m["grpo"], m["sft"], Mask())
    else:
        probs = T.sample_problems(8, seed=0, split="train")
        ctrl = views.build_control(model, [T.prompt_text(p, "think") for p in probs],
                                   [T.prompt_text(p, "direct") for p in probs], 1, "R-C",
                                   "resid_post")
        modify_at = views.control_modify(model, ctrl["vector"])
    problem = T.sample_problems(4, seed=0, split="eval")[-1]
    want = views.trace_view(model, modify_at, organism_batch([problem]).seqs[0], 0.75,
                            T.prompt_text(problem, "think"), 4, 5, "bits")
    assert [r["token"] for r in got["records"]] == [r["token"] for r in want["records"]]
    kl_got = np.array([r["kl_bits"] for r in got["records"]])
    kl_want = np.array([r["kl_bits"] for r in want["records"]])
    assert np.allclose(kl_got, kl_want, atol=1e-6) and kl_want[1:].max() > 0
    assert torch.allclose(got["layer_kl"], want["layer_kl"], atol=1e-6)
    assert torch.allclose(ns["heat"], want["layer_kl"][:, [0, 2, 5]], atol=1e-6)
    assert got["own"]["mod"]["generation"].text == want["own"]["mod"]["generation"].text


def test_control_snippet(organisms):
    from interp.models import load_model
    from interp.organisms import task as T
    from interp.vectors import views

    code = R.vectors_control(organisms["instruct"], 1, "resid_mid", "R-C", 6, "think",
                             "chat")
    got = run(code)
    model = load_model(organisms["instruct"], device="cpu")
    probs = T.sample_problems(6, seed=0, split="train")
    want = views.build_control(model, [T.prompt_text(p, "think") for p in probs],
                               [T.prompt_text(p, "chat") for p in probs], 1, "R-C",
                               "resid_mid")
    assert torch.allclose(got["vector"].vector, want["vector"].vector, atol=1e-6)
    for mine, page in ((got["result"]["raw"], want["lens_raw"]),
                       (got["result"]["normed"], want["lens_norm"])):
        assert set(mine) == set(page)
        for k, v in page.items():
            assert torch.allclose(mine[k], v, atol=1e-5) if isinstance(v, torch.Tensor) \
                else mine[k] == v, k


@pytest.mark.parametrize("part", ["sweep", "accuracy"])
def test_sweep_snippet_recomputes_the_saved_sweep(organisms, tmp_cache, part):
    """The page shows the saved artifact (find_part); the snippet computes it again."""
    from interp.vectors.demo import find_part, run_experiment

    m = organisms
    spec = {"target": m["instruct"], "donor_a": m["grpo"], "donor_b": m["sft"],
            "reference": m["base"], "n_sweep": 5, "n_accuracy": 4, "max_new_tokens": 4,
            "alphas": [-1.0, 0.0, 0.5], "accuracy_alphas": [0.0, 1.0]}
    saved = Store(tmp_cache / "job")
    run_experiment(spec, saved, device="cpu", parts=(part,), progress=lambda *a: None)
    page = find_part(spec, part, saved)
    code = R.vectors_sweep(spec, part, device="cpu")
    assert "'n_sweep': 5" in code and "'alphas': [-1.0, 0.0, 0.5]" in code
    got = run(code)["result"]
    assert set(got) == set(page.tensors)
    for k, t in page.tensors.items():
        assert np.allclose(got[k], t.numpy(), equal_nan=True), k


# ------------------------------------------------------------------ reasoning length
@pytest.fixture(scope="module")
def demo_run():
    from interp.length.pipeline import list_runs, load_run
    from interp.length.report import demo_store

    r = list_runs({"demo": demo_store()})[0]
    return r["key"], load_run(demo_store(), r["key"])


def test_length_sweep_snippet(demo_run):
    key, run_ = demo_run
    sw = run_["sweep"]
    alphas = [p["alpha"] for p in sw["per_alpha"]]
    code = R.length_view("α sweep", "demo", key, alphas=[alphas[0], alphas[-1]],
                         bin_width=5, overflow=40)
    ns = run(code)
    res = ns["result"]
    # independent: mean thinking length per α from the raw records
    n = sw["per_alpha"][0]["n"]
    means = [np.mean([r["think_tokens"] for r in sw["records"][k * n:(k + 1) * n]])
             for k in range(len(alphas))]
    col = [c for c in res.columns if "mean" in c and "think" in c][0]
    assert np.allclose(res[col].to_numpy(dtype=float), means)
    h = ns["histograms"]
    assert sorted(h["series"].unique()) == sorted(f"α={a:g}" for a in (alphas[0], alphas[-1]))
    assert h.groupby("series")["count"].sum().tolist() == [n, n]


def test_length_heads_snippet(demo_run):
    key, run_ = demo_run
    ns = run(R.length_view("Heads", "demo", key, top_k=3))
    scores = run_["head_scores"]
    order = np.argsort(-scores.ravel())[:3]
    assert [(t["layer"], t["head"]) for t in ns["top"]] == \
        [(int(i) // scores.shape[1], int(i) % scores.shape[1]) for i in order]
    assert np.allclose(np.sort(ns["result"]["score"].to_numpy()), np.sort(scores.ravel()))


@pytest.mark.parametrize("view", [v for v in R.LENGTH_VIEWS if v not in ("Heads",)])
def test_every_length_snippet_runs(demo_run, view):
    key, run_ = demo_run
    ns = run(R.length_view(view, "demo", key, site="resid_mid", bin_width=10, overflow=80))
    res = ns["result"]
    assert len(res) > 0
    if view == "Lengths":
        n = len(run_["generations"]["records"])
        part = res[res["series"] == "direction set"]
        assert part["count"].sum() == n
    if view == "SEAL":
        assert sorted(res["alpha"]) == sorted(p["alpha"] for p in run_["seal"]["sweep"])
    if view == "Direction":
        assert np.allclose(ns["cosine"], run_["cosine"]["resid_mid"])


def test_snippet_runs_in_a_fresh_interpreter(demo_run):
    key, _ = demo_run
    code = R.length_view("SEAL", "demo", key) + "print(len(result))\n"
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) > 0


def test_unknown_view():
    from interp.errors import ConfigError

    with pytest.raises(ConfigError, match="no Reasoning length view"):
        R.length_view("Nope", "demo", "k")


def _length_spec(run_: dict) -> dict:
    idx = run_["index"]
    return {"stage": "sweep", "store": "main", "direction_store": "demo",
            "model": idx["model"], "direction": idx["keys"]["direction"],
            "alphas": [-0.25, 0.0, 0.25], "layers": [1, 2], "n_prompts": 3,
            "max_new_tokens": 12, "batch_size": 4, "device": "cpu"}


@pytest.fixture
def organisms_in_cache(tmp_cache):
    (tmp_cache / "organisms").symlink_to(PROJECT_ROOT / "cache" / "organisms")
    return tmp_cache


def test_length_sweep_job_snippet(demo_run, organisms_in_cache):
    """The page's new sweep on a run's direction; the snippet runs the same job here.
    Independent check: the α = 0 row equals an unsteered generation of the prompts."""
    from interp.length.data import generate_thinking
    from interp.length.pipeline import _markers, make_config, prompt_set
    from interp.models import load_model

    key, run_ = demo_run
    spec = _length_spec(run_)
    ns = run(R.length_sweep_job(spec))
    res = ns["result"]
    assert res["alpha"].tolist() == [-0.25, 0.0, 0.25]
    assert ns["art"].config["layers"] == [1, 2]
    cfg = make_config(model=spec["model"], max_new_tokens=12)
    model = load_model(spec["model"], device="cpu")
    prompts, scorer = prompt_set(cfg, 3, "eval", 1, model=model)
    recs = generate_thinking(model, prompts, _markers(cfg, model), max_new_tokens=12,
                             batch_size=4, scorer=scorer)
    row = res[res["alpha"] == 0.0].iloc[0]
    assert row["mean_think_tokens"] == pytest.approx(np.mean([r["think_tokens"] for r in recs]))
    assert row["accuracy"] == pytest.approx(np.mean([bool(r["correct"]) for r in recs]))


def test_length_sweep_estimate_equals_instrumented_job(demo_run, organisms_in_cache,
                                                       monkeypatch):
    import interp.length.data as D
    from interp import jobs
    from interp.cost import length_sweep_cost
    from tests.test_grid_cost import count_forwards

    _, run_ = demo_run
    spec = _length_spec(run_)
    calls = count_forwards(monkeypatch, D)
    jobs.run_inline("length.sweep", spec)
    est = length_sweep_cost(3, spec["alphas"], 12, 4)
    assert calls["n"] == est.forwards == 3 * 12   # 9 rows in chunks of 4: 3 x 12 steps


# ------------------------------------------------------------------ models, adapters
def test_models_weights_snippet(tiny_pair_dirs):
    from interp.weights import weight_diff_groups, weight_diff_pivot, weight_diff_table

    b, f = (str(p) for p in tiny_pair_dirs)
    ns = run(R.models_weights(b, f, "delta_norm"))
    table = weight_diff_table(b, f)
    assert ns["result"].equals(weight_diff_pivot(table, "delta_norm"))
    assert ns["by_block"].equals(weight_diff_groups(table))
    assert not ns["result"].equals(weight_diff_pivot(table, "relative"))


def test_models_generate_snippet(organisms):
    from interp.generation import generate
    from interp.models import load_model

    m = organisms
    ns = run(R.models_generate(m["base"], m["grpo"], "Q add 1 2 3 4 + 5 6 7 8 = <think>",
                               False, 6, "cpu", "float32"))
    for role, spec in (("base", m["base"]), ("fine", m["grpo"])):
        model = load_model(spec, device="cpu", dtype="float32")
        ids = model.tokenizer("Q add 1 2 3 4 + 5 6 7 8 = <think>",
                              add_special_tokens=True)["input_ids"]
        want = generate(model, [ids], max_new_tokens=6, temperature=0.0)[0].text
        assert ns["result"][role] == want


def test_amplify_snippet(organisms):
    from interp.amplify import amplify
    from interp.models import load_model

    m = organisms
    prompt = "Q add 1 2 3 4 + 5 6 7 8 = <think>"
    ns = run(R.amplify_samples(m["base"], m["grpo"], prompt, [0.0, 2.0], 3, 5, 1.0, 7,
                               "cpu", "float32"))
    base = load_model(m["base"], device="cpu", dtype="float32")
    fine = load_model(m["grpo"], device="cpu", dtype="float32")
    ids = fine.tokenizer(prompt, add_special_tokens=True)["input_ids"]
    want = amplify(base, fine, ids, [0.0, 2.0], n_samples=3, max_new_tokens=5,
                   temperature=1.0, seed=7, words=("wait",))
    assert ns["samples"]["text"].tolist() == want.samples["text"].tolist()
    assert ns["result"].equals(want.summary)
    # another seed draws other samples: the snippet carries the page's seed
    other = amplify(base, fine, ids, [0.0, 2.0], n_samples=3, max_new_tokens=5,
                    temperature=1.0, seed=8, words=("wait",))
    assert ns["samples"]["text"].tolist() != other.samples["text"].tolist()


def test_adapters_snippets_on_the_demo():
    from interp.adapters import plots as ap
    from interp.adapters.io import catalog, history_of
    from interp.adapters.report import demo_store

    runs = catalog({"demo": demo_store()})
    r = next(x for x in runs if x["eval"] is not None)
    ns = run(R.adapters_curves({r["label"]: ("demo", r["artifact"].key)}, "kl", 5, True))
    assert ns["result"].equals(ap.curves_frame({r["label"]: history_of(r["artifact"])}))
    fa = r["eval"].meta["faithfulness"]
    ns = run(R.adapters_eval("demo", r["eval"].key, "detail"))
    assert ns["result"].equals(ap.per_layer_frame(fa))
    assert ns["bridged"]["a2r"] == fa["bridged_a2r"] and ns["bridged"]["r2a"] == \
        fa["bridged_r2a"]
    if r["eval"].meta.get("behaviour"):
        ns = run(R.adapters_eval("demo", r["eval"].key, "behaviour"))
        assert ns["result"].equals(ap.behaviour_table(r["eval"].meta["behaviour"]))
    sweeps = demo_store().list("adapters_sweep")
    ns = run(R.adapters_frontier([("demo", a.key) for a in sweeps]))
    points = [p for a in sweeps for p in a.meta.get("runs", [])]
    assert len(points) and ns["result"].equals(ap.frontier_frame(points))


def test_hesitation_study_snippet_recomputes_the_page_tables():
    from interp.attribution import study_view as V
    from interp.attribution.report import DEMO_ROOT, latest_study
    from interp.store import Store

    art = latest_study(Store(DEMO_ROOT, read_only=True))
    ns = run(R.hesitation_study("demo", art.key, "logit", 12))
    assert ns["result"].equals(V.headline_table(art))
    assert ns["ranking"].equals(V.ranking_table(art, "logit", 12))
    assert len(ns["ranking"]) == 12
    assert ns["clusters"].equals(V.clusters_table(art))
    assert ns["path"].equals(V.selection_path(art))
