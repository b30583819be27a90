"""``python -m interp report vectors``: figures read from the committed demo artifacts.

Statistics (all over held-out problems, paired by problem):

* accuracy: mean of 0/1 correctness, 95% Wilson interval;
* effect of the vector = accuracy(α) − accuracy(0): 95% paired bootstrap interval
  (10,000 resamples of problems, seed 0) and McNemar's exact test (two-sided binomial on
  the discordant pairs); ``significant`` means p < 0.05;
* KL per α: mean over prompts with a 95% bootstrap interval; monotonicity in |α| means
  the mean strictly increases along α > 0 and along α < 0 away from 0.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Sequence

import numpy as np

from ..errors import ArtifactNotFoundError
from ..stats import bootstrap_mean_ci
from ..stats import wilson as wilson_ci


def mcnemar_exact(y1: np.ndarray, y0: np.ndarray) -> tuple[float, int, int]:
    """Two-sided exact McNemar p-value and the discordant counts (1-not-0, 0-not-1)."""
    y1, y0 = np.asarray(y1).astype(bool), np.asarray(y0).astype(bool)
    b, c = int((y1 & ~y0).sum()), int((~y1 & y0).sum())
    n = b + c
    if n == 0:
        return 1.0, b, c
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2 * tail), b, c


def paired_effect(y1: np.ndarray, y0: np.ndarray, n_boot: int = 10000, seed: int = 0
                  ) -> dict[str, Any]:
    """Effect ``mean(y1) − mean(y0)`` with a paired bootstrap CI and McNemar p."""
    d = np.asarray(y1, float) - np.asarray(y0, float)
    lo, hi = bootstrap_mean_ci(d, n_boot, seed)
    p, b, c = mcnemar_exact(y1, y0)
    return {"effect": float(d.mean()), "ci95": [lo, hi], "p_value": p,
            "significant": bool(p < 0.05), "n_gained": b, "n_lost": c, "n": len(d)}


def monotone_in_abs_alpha(alphas: Sequence[float], values: Sequence[float]) -> bool:
    """Strictly increasing away from α = 0 on both sides."""
    a, v = np.asarray(alphas, float), np.asarray(values, float)
    ok = True
    for side in (a >= 0, a <= 0):
        order = np.argsort(np.abs(a[side]))
        ok &= bool(np.all(np.diff(v[side][order]) > 0))
    return ok


def _acc(correct: np.ndarray) -> dict[str, Any]:
    k, n = int(correct.sum()), len(correct)
    return {"value": k / n, "ci95": list(wilson_ci(k, n)), "n": n}


def summarize(sweep, accuracy) -> dict[str, Any]:
    """Report dict from a ``vectors.sweep`` and a ``vectors.accuracy`` artifact."""
    out: dict[str, Any] = {}
    ta = accuracy.tensors
    alphas = [float(x) for x in ta["alphas"].tolist()]
    correct = ta["correct"].numpy().astype(int)
    think = ta["think_tokens"].numpy()
    i0 = alphas.index(0.0)
    out["n_eval"] = int(correct.shape[1])
    out["format"] = accuracy.config.get("fmt")
    out["decoding"] = accuracy.meta.get("decoding", "greedy")
    base = _acc(correct[i0])
    out["accuracy_instruct"] = base["value"]
    out["accuracy_instruct_ci95"] = base["ci95"]
    for name, a in (("plus", 1.0), ("minus", -1.0)):
        if a not in alphas:
            continue
        i = alphas.index(a)
        r = _acc(correct[i])
        out[f"accuracy_{name}_vector"] = r["value"]
        out[f"accuracy_{name}_vector_ci95"] = r["ci95"]
        eff = paired_effect(correct[i], correct[i0])
        out[f"effect_{name}_vector"] = eff["effect"]
        out[f"effect_{name}_vector_ci95"] = eff["ci95"]
        out[f"effect_{name}_vector_p_value"] = eff["p_value"]
        out[f"effect_{name}_vector_significant"] = eff["significant"]
        out[f"effect_{name}_vector_gained_lost"] = [eff["n_gained"], eff["n_lost"]]
    out["accuracy_vs_alpha"] = {str(a): float(correct[j].mean()) for j, a in enumerate(alphas)}
    out["think_tokens_vs_alpha"] = {str(a): float(think[j].mean())
                                    for j, a in enumerate(alphas)}
    ts = sweep.tensors
    s_alphas = [float(x) for x in ts["alphas"].tolist()]
    j0 = s_alphas.index(0.0)
    unit = sweep.meta.get("unit", "nats")
    out["kl_unit"] = unit
    out["n_sweep"] = int(ts["kl_last"].shape[1])
    for metric in ("kl_last", "kl_trace"):
        m = ts[metric].numpy().astype(float)
        means = m.mean(1)
        if metric == "kl_last":
            out["kl_at_alpha_zero"] = float(np.abs(m[j0]).max())
            out["kl_monotone_in_abs_alpha"] = monotone_in_abs_alpha(s_alphas, means)
        else:
            out["kl_trace_at_alpha_zero"] = float(np.abs(m[j0]).max())
            out["kl_trace_monotone_in_abs_alpha"] = monotone_in_abs_alpha(s_alphas, means)
        out[f"{metric}_mean_vs_alpha"] = {str(a): float(v) for a, v in zip(s_alphas, means)}
        out[f"{metric}_ci95_vs_alpha"] = {str(a): list(bootstrap_mean_ci(m[j]))
                                          for j, a in enumerate(s_alphas)}
    for metric in ("entropy_last", "p_correct"):
        m = ts[metric].numpy().astype(float)
        out[f"{metric}_mean_vs_alpha"] = {str(a): float(v) for a, v in zip(s_alphas, m.mean(1))}
    return out


PER_EXAMPLE = ("answer", "short", "hesitations_error", "hesitations_verify", "output_ids")


def _results(ta, j: int) -> list[dict[str, Any]]:
    """Per-example results at α index ``j`` in :func:`interp.behaviour.decompose`'s form."""
    out = []
    for i in range(ta["correct"].shape[1]):
        a = int(ta["answer"][j, i])
        out.append({"correct": bool(ta["correct"][j, i]), "answer": None if a < 0 else a,
                    "short": bool(ta["short"][j, i]),
                    "hesitations_error": int(ta["hesitations_error"][j, i]),
                    "hesitations_verify": int(ta["hesitations_verify"][j, i])})
    return out


def _ids(ta, j: int) -> list[list[int]]:
    return [[int(t) for t in row if t >= 0] for row in ta["output_ids"][j].tolist()]


def vector_behaviour(accuracy) -> dict[str, Any]:
    """Per-example figures of a ``vectors.accuracy`` artifact (empty for artifacts made
    before they were stored): ``decomposition`` = per prompt tag (``easy`` / ``add`` /
    ``all``) the accuracy, short fraction, hesitation rates and error types of wrong
    answers without the vector (α = 0) and with it (α = +1 / −1), plus how the accuracy
    change splits over the tags; ``per_example`` = the generations at α = ±1 compared
    with those at α = 0 (:func:`interp.behaviour.compare`)."""
    from ..behaviour import answer_start, compare, decompose, decomposed_change
    from ..organisms.task import TOKEN_ID, Problem

    ta = accuracy.tensors
    if not all(k in ta for k in PER_EXAMPLE):
        return {}
    alphas = [float(x) for x in ta["alphas"].tolist()]
    i0 = alphas.index(0.0)
    problems = [Problem(*map(int, pid.split("+"))) for pid in accuracy.meta["problem_ids"]]
    names = {0.0: "without_vector", 1.0: "plus_vector", -1.0: "minus_vector"}
    dec = {a: decompose(problems, _results(ta, alphas.index(a))) for a in names
           if a in alphas}
    out: dict[str, Any] = {"decomposition": {
        tag: {names[a]: d[tag] for a, d in dec.items()} for tag in ("easy", "add", "all")}}
    ref_ids = _ids(ta, i0)
    ref_ans = [r["answer"] for r in _results(ta, i0)]
    fmt = accuracy.config.get("fmt", "think")
    close = TOKEN_ID["</think>"]
    starts = [answer_start(x, close, thinking=fmt == "think") for x in ref_ids]
    short0 = [bool(x) for x in ta["short"][i0].tolist()]
    out["per_example"] = {}
    for a, name in names.items():
        if a == 0.0 or a not in alphas:
            continue
        j = alphas.index(a)
        out["decomposition"][f"change_{name}"] = decomposed_change(dec[0.0], dec[a])
        out["per_example"][name] = compare(
            ref_ans, [r["answer"] for r in _results(ta, j)], ref_ids, _ids(ta, j), starts,
            groups={"easy": [p.tag == "easy" for p in problems],
                    "add": [p.tag == "add" for p in problems],
                    "short_without_vector": short0})
    return out


def report_vectors(args) -> dict[str, Any]:
    from .demo import build_demo, demo_store, find_part

    if getattr(args, "recompute", False):
        build_demo(device=getattr(args, "device", "auto"))
    store = demo_store(read_only=True)
    sweep, acc = find_part(None, "sweep", store), find_part(None, "accuracy", store)
    if sweep is None or acc is None:
        raise ArtifactNotFoundError(
            "the vectors demo artifacts are missing from cache/demo; run "
            "`python -m interp report vectors --recompute` (needs the organisms)")
    out = summarize(sweep, acc)
    out.update(vector_behaviour(acc))
    out["experiment"] = "instruct + alpha * (grpo - sft), full mask"
    prov = acc.provenance.get("models", {})
    out["models"] = {k: (v.get("id") if isinstance(v, dict) else v) for k, v in prov.items()
                     if isinstance(v, dict) and "id" in v}
    _warn_if_stale(prov)
    csw, cacc = (find_part({"kind": "control"}, w, store)
                 for w in ("sweep", "accuracy"))
    if csw is not None and cacc is not None:
        c = summarize(csw, cacc)
        out["control"] = {k: c[k] for k in (
            "accuracy_instruct", "accuracy_plus_vector", "accuracy_minus_vector",
            "effect_plus_vector_ci95", "effect_plus_vector_p_value",
            "effect_minus_vector_ci95", "effect_minus_vector_p_value",
            "kl_at_alpha_zero", "kl_monotone_in_abs_alpha", "kl_last_mean_vs_alpha") if k in c}
        cb = vector_behaviour(cacc)
        if cb:
            out["control"]["decomposition"] = cb["decomposition"]
            out["control"]["per_example"] = cb["per_example"]
        out["control"]["layer"] = csw.config.get("layer")
        out["control"]["vector_kind"] = csw.config.get("vector_kind")
    return out


def _warn_if_stale(models: dict[str, Any]) -> None:
    """Say on stderr when the organisms changed since the artifacts were made."""
    from ..models import files_hash, local_checkpoint

    for d in models.values():
        if not isinstance(d, dict) or "weight_hash" not in d or "id" not in d:
            continue
        try:
            _, path = local_checkpoint(d["id"])
            if files_hash(path) != d["weight_hash"]:
                print(f"warning: {d['id']} changed since the demo artifacts were made "
                      "(rerun with --recompute)", file=sys.stderr)
        except Exception:  # a missing model only means we cannot check
            continue
