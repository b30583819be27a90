"""α sweeps, the experiment pipeline and the report statistics on tiny organism-vocabulary
models (random weights: the numbers mean nothing, the plumbing and the math do)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from interp.models import load_model
from interp.organisms import task as T
from interp.organisms.train import random_organism_checkpoint
from interp.steering import n_active_hooks
from interp.store import Store
from interp.vectors.control import build_control_vector
from interp.vectors.report import mcnemar_exact, monotone_in_abs_alpha, paired_effect, wilson_ci
from interp.vectors.sweep import (
    alpha_sweep,
    alpha_sweep_naive,
    control_modifier,
    organism_batch,
    task_modifier,
)
from interp.vectors.task import TaskVector, TaskVectorSweeper


def _tiny_organism(path: Path, seed: int) -> str:
    return random_organism_checkpoint(path, seed, tie_word_embeddings=True)


@pytest.fixture(scope="module")
def organism_like(tmp_path_factory):
    root = tmp_path_factory.mktemp("org")
    return {name: _tiny_organism(root / name, i) for i, name in
            enumerate(("instruct", "grpo", "sft", "base"))}


def test_organism_batch_answer_positions():
    probs = T.sample_problems(3, seed=0)
    for fmt in ("think", "direct", "chat"):
        b = organism_batch(probs, fmt)
        for p, seq, aps in zip(probs, b.seqs, b.answer_positions):
            digits = "".join(T.VOCAB[seq[i + 1]] for i in aps)
            assert int(digits) == p.answer and len(digits) == T.ANSWER_WIDTH


def test_task_sweep_batched_equals_naive_and_zero_kl(organism_like):
    m = load_model(organism_like["instruct"], device="cpu", dtype="float32")
    tv = TaskVector.from_paths(organism_like["grpo"], organism_like["sft"])
    batch = organism_batch(T.sample_problems(5, seed=1), "think")
    alphas = [-1.0, 0.0, 0.5, 1.0]
    before = {k: v.clone() for k, v in m.hooked.state_dict().items()}
    with TaskVectorSweeper(m, tv) as sw:
        fast = alpha_sweep(m, task_modifier(sw), alphas, batch, batch_size=3)
        slow = alpha_sweep_naive(m, task_modifier(sw), alphas, batch)
    for k, v in m.hooked.state_dict().items():
        assert torch.equal(v, before[k]), k
    i0 = alphas.index(0.0)
    for metric in ("kl_last", "kl_trace"):
        assert np.all(fast[metric][i0] == 0.0)
        np.testing.assert_allclose(fast[metric], slow[metric], rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(fast["p_correct"], slow["p_correct"], rtol=1e-3, atol=1e-7)
    assert np.all(fast["kl_last"][[0, 2, 3]] > 0)
    # p_correct is the product of the answer-token probabilities: check one row directly
    seq = batch.seqs[0]
    with torch.no_grad():
        lp = torch.log_softmax(m.hooked(torch.tensor([seq]))[0].float(), -1)
    want = math.exp(sum(float(lp[p, seq[p + 1]]) for p in batch.answer_positions[0]))
    assert math.isclose(fast["p_correct"][i0, 0], want, rel_tol=1e-4)


def test_control_sweep_zero_alpha_and_hooks_removed(organism_like):
    m = load_model(organism_like["instruct"], device="cpu", dtype="float32")
    probs = T.sample_problems(4, seed=2, split="train")
    cv = build_control_vector(m, [T.prompt_text(p, "think") for p in probs],
                              [T.prompt_text(p, "direct") for p in probs], 1, kind="PCA-C")
    batch = organism_batch(T.sample_problems(3, seed=3), "think")
    res = alpha_sweep(m, control_modifier(m, cv), [-1.0, 0.0, 1.0], batch)
    assert np.all(res["kl_last"][1] == 0.0) and np.all(res["kl_last"][[0, 2]] > 0)
    assert n_active_hooks(m) == 0


def test_run_experiment_and_summary(organism_like, tmp_path):
    from interp.vectors.demo import find_part, run_experiment
    from interp.vectors.report import summarize

    store = Store(root=tmp_path / "demo")
    spec = {"target": organism_like["instruct"], "donor_a": organism_like["grpo"],
            "donor_b": organism_like["sft"], "reference": organism_like["base"],
            "n_sweep": 4, "n_accuracy": 6, "max_new_tokens": 6,
            "alphas": [-1.0, 0.0, 1.0], "accuracy_alphas": [-1.0, 0.0, 1.0]}
    keys = run_experiment(spec, store, device="cpu", progress=lambda *a: None)
    assert set(keys) == {"stats", "sweep", "accuracy", "trace"}
    again = run_experiment(spec, store, device="cpu", progress=lambda *a: None,
                           overwrite=False)
    assert again == keys
    out = summarize(find_part(spec, "sweep", store), find_part(spec, "accuracy", store))
    assert out["kl_at_alpha_zero"] == 0.0 and out["n_eval"] == 6
    assert isinstance(out["kl_monotone_in_abs_alpha"], bool)
    for k in ("accuracy_instruct", "accuracy_plus_vector", "accuracy_minus_vector",
              "effect_plus_vector_ci95", "effect_minus_vector_p_value"):
        assert k in out
    trace = find_part(spec, "trace", store)
    assert trace.tensors["layer_kl"].shape[0] == 2
    cspec = {**spec, "kind": "control", "n_control": 4}
    ckeys = run_experiment(cspec, store, device="cpu", parts=("sweep",),
                           progress=lambda *a: None)
    csw = find_part(cspec, "sweep", store)
    assert "control" in ckeys and csw.key == ckeys["sweep"]
    assert csw.config["kind"] == "control" and csw.tensors["kl_last"].shape == (3, 4)
    assert float(csw.tensors["kl_last"][1].abs().max()) == 0.0      # α = 0 changes nothing


def test_statistics_against_hand_values():
    lo, hi = wilson_ci(50, 100)
    assert math.isclose(lo, 0.4038, abs_tol=1e-4) and math.isclose(hi, 0.5962, abs_tol=1e-4)
    y1 = np.array([1] * 12 + [0] * 2 + [1] * 10 + [0] * 6)
    y0 = np.array([0] * 12 + [1] * 2 + [1] * 10 + [0] * 6)
    p, b, c = mcnemar_exact(y1, y0)
    assert (b, c) == (12, 2)
    assert math.isclose(p, 2 * sum(math.comb(14, i) for i in range(3)) / 2 ** 14)
    eff = paired_effect(y1, y0)
    assert math.isclose(eff["effect"], 10 / 30) and eff["ci95"][0] < eff["effect"] < eff["ci95"][1]
    assert monotone_in_abs_alpha([-1, -0.5, 0, 0.5, 1], [2, 1, 0, 1, 3])
    assert not monotone_in_abs_alpha([-1, -0.5, 0, 0.5, 1], [0.5, 1, 0, 1, 3])


def test_report_cli_missing_artifacts_is_a_typed_error(tmp_path, monkeypatch):
    from interp.errors import ArtifactNotFoundError
    from interp.vectors import demo, report

    monkeypatch.setattr(demo, "DEMO_ROOT", tmp_path / "none")
    with pytest.raises(ArtifactNotFoundError):
        report.report_vectors(SimpleNamespace(recompute=False, device="cpu"))
