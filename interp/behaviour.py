"""Per-example behaviour of a model against a reference on the same prompts.

Aggregate figures (accuracy, short fraction, hesitation rates) can match while every
single answer differs, so wherever a model is compared with a reference (the adapter
model with the reasoner, an edited or steered model with the unedited one, the target
plus a task vector with the target) the comparison is also made example by example on
the two greedy completions of each prompt:

* ``answer_agreement``: share of examples whose parsed answers are equal (two unreadable
  answers, ``None``, count as equal); 95% Wilson interval;
* ``completion_agreement``: share of examples whose whole completions (token ids, up to
  and including the end token) are identical; 95% Wilson interval;
* ``token_agreement``: mean over examples of ``#{i < min(n_r, n_m): r[i] == m[i]} /
  max(n_r, n_m)``: positions are aligned from the first generated token and every
  position past the shorter completion counts as a disagreement, so two completions
  that agree on a prefix but differ in length score below 1 (two empty completions
  score 1); 95% percentile-bootstrap interval over examples;
* ``first_divergence``: the first position ``i`` where the completions differ (the
  shorter length when one is a prefix of the other), over the examples that diverge:
  ``median``, quartiles, and where it falls in the reference completion: ``in_thinking``
  (``i < answer_start``, the close-thinking token included, so a different decision to
  stop thinking counts as thinking) or ``in_answer`` (``i >= answer_start``), as shares
  of the diverging examples. ``answer_start`` is the index of the first token after the
  reference's close-thinking marker (0 when there is no thinking, the completion's
  length when it never closes).

:func:`compare` computes all of them; ``groups`` (name -> boolean mask over examples,
e.g. the reference's short and long generations) repeats the two exact-match rates per
group. :func:`error_type` and :func:`decompose` split organism results by prompt tag
and name the kind of each wrong answer.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .errors import ConfigError
from .stats import bootstrap_mean_ci, wilson

ERROR_TYPES = ("no_answer", "short_thinking", "dropped_final_carry", "carry_error", "other")
ANSWER_CAP = 10**18 - 1     # int64-safe cap of a stored (broken, overlong) answer


def answer_code(answer: int | None) -> int:
    """A parsed answer as a storable int64: -1 when unreadable, answers above
    ``ANSWER_CAP`` (a broken generation can write any number of digits) capped to it."""
    return -1 if answer is None else min(int(answer), ANSWER_CAP)


def _rate(flags: Sequence[bool]) -> dict[str, Any]:
    f = [bool(x) for x in flags]
    k, n = sum(f), len(f)
    lo, hi = wilson(k, n)
    return {"value": k / n if n else float("nan"), "ci95": [lo, hi], "n": n}


def answer_start(output_ids: Sequence[int], close_id: int | None,
                 thinking: bool = True) -> int:
    """Index of the first answer-region token of a completion: after ``close_id`` when
    the completion thinks (``thinking``), the length when it never closes; 0 without
    thinking."""
    ids = list(output_ids)
    if not thinking or close_id is None:
        return 0
    return ids.index(close_id) + 1 if close_id in ids else len(ids)


def first_divergence(ref: Sequence[int], other: Sequence[int]) -> int | None:
    """First index where the two sequences differ (the shorter length when one is a
    prefix of the other); None when they are identical."""
    n = min(len(ref), len(other))
    for i in range(n):
        if ref[i] != other[i]:
            return i
    return None if len(ref) == len(other) else n


def token_agreement(ref: Sequence[int], other: Sequence[int]) -> float:
    """Matching aligned positions over the longer length (1.0 for two empty lists)."""
    m = max(len(ref), len(other))
    if m == 0:
        return 1.0
    same = sum(1 for a, b in zip(ref, other) if a == b)
    return same / m


def compare(ref_answers: Sequence[Any], answers: Sequence[Any],
            ref_ids: Sequence[Sequence[int]], ids: Sequence[Sequence[int]],
            answer_starts: Sequence[int] | None = None,
            groups: Mapping[str, Sequence[bool]] | None = None,
            n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Per-example agreement of a model with a reference (see the module docstring).

    ``ref_answers`` / ``answers``: parsed answers per example (None when unreadable);
    ``ref_ids`` / ``ids``: the generated token ids per example; ``answer_starts``: per
    example, the reference completion's answer start (None: every divergence counts as
    answer). Returns a JSON-ready dict."""
    n = len(ref_answers)
    if not (len(answers) == len(ref_ids) == len(ids) == n):
        raise ConfigError("compare needs the same number of answers and completions on "
                          f"both sides ({n}, {len(answers)}, {len(ref_ids)}, {len(ids)})")
    if answer_starts is not None and len(answer_starts) != n:
        raise ConfigError("answer_starts needs one entry per example")
    ans_eq = [a == b for a, b in zip(ref_answers, answers)]
    comp_eq = [list(a) == list(b) for a, b in zip(ref_ids, ids)]
    tok = np.array([token_agreement(a, b) for a, b in zip(ref_ids, ids)], dtype=float)
    div = [first_divergence(a, b) for a, b in zip(ref_ids, ids)]
    out: dict[str, Any] = {"n": n}
    r = _rate(ans_eq)
    out["answer_agreement"], out["answer_agreement_ci95"] = r["value"], r["ci95"]
    r = _rate(comp_eq)
    out["completion_agreement"], out["completion_agreement_ci95"] = r["value"], r["ci95"]
    out["token_agreement"] = float(tok.mean()) if n else float("nan")
    out["token_agreement_ci95"] = (list(bootstrap_mean_ci(tok, n_boot, seed)) if n
                                   else [float("nan")] * 2)
    d = [(i, x) for i, x in enumerate(div) if x is not None]
    fd: dict[str, Any] = {"n_diverging": len(d)}
    if d:
        pos = np.array([x for _, x in d], dtype=float)
        fd.update(median=float(np.median(pos)), q25=float(np.quantile(pos, 0.25)),
                  q75=float(np.quantile(pos, 0.75)), min=int(pos.min()), max=int(pos.max()))
        if answer_starts is not None:
            think = [x < answer_starts[i] for i, x in d]
            fd["in_thinking"] = float(np.mean(think))
            fd["in_answer"] = 1.0 - fd["in_thinking"]
    out["first_divergence"] = fd
    if groups:
        out["groups"] = {}
        for name, mask in groups.items():
            m = [bool(x) for x in mask]
            if len(m) != n:
                raise ConfigError(f"group {name!r} needs one flag per example")
            sel = [i for i in range(n) if m[i]]
            out["groups"][name] = {
                "n": len(sel),
                "answer_agreement": _rate([ans_eq[i] for i in sel])["value"],
                "completion_agreement": _rate([comp_eq[i] for i in sel])["value"]}
    return out


def compare_records(ref: Sequence[Mapping[str, Any]], other: Sequence[Mapping[str, Any]],
                    **kw: Any) -> dict[str, Any]:
    """:func:`compare` on two lists of generation records with ``answer`` and
    ``output_ids`` (and, for thinking, ``closed`` and ``think_end``: the close marker's
    index in ``output_ids``); groups ``short`` / ``long`` by the reference's thinking."""
    starts = [int(r["think_end"]) + 1 if r.get("closed") else len(r["output_ids"])
              for r in ref] if all("think_end" in r for r in ref) else None
    groups = kw.pop("groups", None)
    if groups is None and all("think_tokens" in r and "closed" in r for r in ref):
        short = [bool(r["closed"] and r["think_tokens"] == 0) for r in ref]
        groups = {"short": short, "long": [not s for s in short]}
    return compare([r.get("answer") for r in ref], [r.get("answer") for r in other],
                   [r["output_ids"] for r in ref], [r["output_ids"] for r in other],
                   starts, groups, **kw)


# ------------------------------------------------------------------ organism answers
def error_type(problem: Any, answer: int | None, short: bool) -> str | None:
    """The kind of a wrong organism answer (None when it is right).

    Checked in order: ``no_answer`` (nothing readable), ``short_thinking`` (written after
    empty thinking: the reasoner's short answers are not computed sums, see
    :mod:`interp.organisms.task`), ``dropped_final_carry`` (the true sum without its
    leading 1: the sft flaw), ``carry_error`` (every wrong digit is off by one, mod 10,
    the signature of a carry lost or added in a column), ``other``."""
    if answer is not None and answer == problem.answer:
        return None
    if answer is None:
        return "no_answer"
    if short:
        return "short_thinking"
    if problem.final_carry and answer == problem.answer - 10 ** problem.width:
        return "dropped_final_carry"
    w = problem.width + 1
    got, want = f"{answer:0{w}d}", f"{problem.answer:0{w}d}"
    if len(got) == len(want):
        diffs = [(int(a) - int(b)) % 10 for a, b in zip(got, want) if a != b]
        if diffs and all(x in (1, 9) for x in diffs):
            return "carry_error"
    return "other"


def error_types(problems: Sequence[Any], results: Sequence[Mapping[str, Any]]
                ) -> dict[str, Any]:
    """Counts of :func:`error_type` over the wrong answers, and their shares."""
    kinds = [error_type(p, r.get("answer"), bool(r.get("short"))) for p, r in
             zip(problems, results)]
    wrong = [k for k in kinds if k is not None]
    counts = {k: wrong.count(k) for k in ERROR_TYPES}
    return {"n_wrong": len(wrong), "counts": counts,
            "shares": {k: (c / len(wrong) if wrong else 0.0) for k, c in counts.items()}}


def decompose(problems: Sequence[Any], results: Sequence[Mapping[str, Any]]
              ) -> dict[str, Any]:
    """Organism results split by the prompt's tag: per tag (``easy`` / ``add``) and over
    all, ``n``, ``accuracy`` (+ Wilson CI), ``short_fraction``, the share of generations
    with an error hesitation and with a verification (``hesitation_rate_error`` /
    ``_verify``) and the error types of the wrong answers. ``results`` are
    :func:`interp.organisms.task.score_completion` dicts (``correct``, ``answer``,
    ``short``, ``hesitations_error``, ``hesitations_verify``)."""
    if len(problems) != len(results):
        raise ConfigError("decompose needs one result per problem")
    out: dict[str, Any] = {}
    for tag in ("easy", "add", "all"):
        idx = [i for i, p in enumerate(problems) if tag == "all" or p.tag == tag]
        ps, rs = [problems[i] for i in idx], [results[i] for i in idx]
        acc = _rate([r["correct"] for r in rs])
        out[tag] = {
            "n": len(idx), "share": len(idx) / len(problems) if problems else float("nan"),
            "accuracy": acc["value"], "accuracy_ci95": acc["ci95"],
            "short_fraction": _rate([r["short"] for r in rs])["value"],
            "hesitation_rate_error": _rate([r["hesitations_error"] > 0 for r in rs])["value"],
            "hesitation_rate_verify": _rate([r["hesitations_verify"] > 0 for r in rs])["value"],
            "errors": error_types(ps, rs),
        }
    return out


def decomposed_change(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """How a change of overall accuracy splits over the tags: per tag, ``share ×
    (acc_after − acc_before)`` (the tag's contribution; they sum to the overall change),
    and each tag's share of the overall change."""
    total = after["all"]["accuracy"] - before["all"]["accuracy"]
    out: dict[str, Any] = {"accuracy_change": total}
    for tag in ("easy", "add"):
        c = before[tag]["share"] * (after[tag]["accuracy"] - before[tag]["accuracy"])
        out[f"contribution_{tag}"] = c
        out[f"fraction_of_change_{tag}"] = c / total if total else float("nan")
    return out


def agreement_brief(ref: Sequence[Mapping[str, Any]], other: Sequence[Mapping[str, Any]]
                    ) -> dict[str, Any]:
    """The headline numbers of :func:`compare_records` (for per-α tables): answer,
    completion and token agreement and the median first divergence."""
    c = compare_records(ref, other, n_boot=200)
    return {"answer_agreement": c["answer_agreement"],
            "completion_agreement": c["completion_agreement"],
            "token_agreement": c["token_agreement"],
            "first_divergence_median": c["first_divergence"].get("median")}


# ------------------------------------------------------------------ tables (pages)
def agreement_table(comparisons: Mapping[str, Mapping[str, Any] | None]):
    """One row per comparison (name -> :func:`compare` result; None rows are skipped):
    examples, answer / completion / token agreement, the median first divergence and the
    share of divergences inside the thinking; then one row per group. A pandas DataFrame."""
    import pandas as pd

    rows = []
    for name, c in comparisons.items():
        if not c:
            continue
        fd = c.get("first_divergence") or {}
        rows.append({"comparison": name, "examples": c.get("n"),
                     "answer agreement": c.get("answer_agreement"),
                     "completion agreement": c.get("completion_agreement"),
                     "token agreement": c.get("token_agreement"),
                     "first divergence (median)": fd.get("median"),
                     "divergences in thinking": fd.get("in_thinking")})
        for g, d in (c.get("groups") or {}).items():
            rows.append({"comparison": f"{name} · {g}", "examples": d["n"],
                         "answer agreement": d["answer_agreement"],
                         "completion agreement": d["completion_agreement"]})
    return pd.DataFrame(rows)


def decomposition_table(decompositions: Mapping[str, Mapping[str, Any] | None]):
    """One row per (model, tag) of :func:`decompose` results (name -> result): examples,
    accuracy, short fraction, hesitation rates and the counts of each error type of the
    wrong answers. A pandas DataFrame."""
    import pandas as pd

    rows = []
    for name, dec in decompositions.items():
        for tag in ("easy", "add", "all"):
            d = (dec or {}).get(tag)
            if not d:
                continue
            rows.append({"model": name, "tag": tag, "examples": d["n"],
                         "accuracy": d["accuracy"], "short fraction": d["short_fraction"],
                         "error hesitation rate": d["hesitation_rate_error"],
                         "verification rate": d["hesitation_rate_verify"],
                         **{f"wrong: {k}": v for k, v in d["errors"]["counts"].items()}})
    return pd.DataFrame(rows)


def per_alpha_agreement_table(per_alpha: Sequence[Mapping[str, Any]]):
    """α sweep rows (each with an ``agreement`` from :func:`agreement_brief`) as a table:
    α, answer / completion / token agreement with the unsteered run, median first
    divergence. A pandas DataFrame (empty when no row has an agreement)."""
    import pandas as pd

    return pd.DataFrame([{"alpha": p["alpha"], **p["agreement"]} for p in per_alpha
                         if p.get("agreement")])
