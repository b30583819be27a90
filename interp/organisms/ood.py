"""Out-of-distribution checks of the planted mechanisms: inputs the training never saw.

Training only ever shows 4-digit operands, the tag in the slot after ``Q``, the
``Q ... = <think>`` prompt and, at a carry-slip column (``x + y = 9``, carry in 1), the
first result ``0 0``. Each check below changes one of these and measures the mechanism
the same way as in distribution, so a mechanism that only works on the training form
shows up as such:

* ``widths``: 3- and 5-digit operands (3 / 5 column steps, a 4 / 6-digit answer), ``add``
  tag: teacher-forced P(``wait``) at error triggers (slips and random errors),
  verification triggers and clean positions of generator traces; greedy generations:
  accuracy, the median number of column steps written, whether an error hesitation
  occurs exactly on problems with a slip column
  (``error_agreement``) and a verification exactly on problems with >= 3 carries
  (``verify_agreement``), over the generations that do not skip thinking; with the
  ``easy`` and the ``add`` tag, the short fraction (thinking closed at once) and the
  skipped fraction (no column step at all: ``</think>`` or ``A`` first).
* ``slip_values``: the slip column's first result written as another wrong value than
  ``0 0`` (``0 9``: the carry *into* the column forgotten; ``1 1``, ``0 8``, ``1 9``),
  the rest of the trace unchanged: P(``wait``) at the trigger. For comparison
  ``random_total10_09``: ``0 9`` written for a non-slip column whose sum is 10 (a
  random error of the training distribution).
* ``prompt_forms``: the short-thinking cue where training never put it: the tag after
  the operands, before ``Q``, no tag at all, and a chat-style prompt
  (``<user> tag a + b <assistant> <think>``, tokens the reasoner never saw): the short
  fraction with ``easy`` and with ``add`` (``cue_effect`` = their difference).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from .sampling import complete
from .task import (
    VOCAB,
    Problem,
    encode,
    make_trace,
    operands_text,
    prompt_words,
    sample_problems,
    score_completion,
    wait_probs_on_traces,
)

OOD_WIDTHS = (3, 5)
SLIP_VALUES = ("0 0", "0 9", "1 1", "0 8", "1 9")
PROMPT_FORMS = ("standard", "tag_after_operands", "tag_before_question", "no_tag",
                "chat_think")


def width_problems(n: int, width: int, seed: int = 0, easy: bool = False) -> list[Problem]:
    """``n`` problems with uniform random ``width``-digit operands and the given tag."""
    rng = np.random.default_rng([seed, 31, width])
    ab = rng.integers(0, 10**width, size=(n, 2)).tolist()
    return [Problem(a, b, easy=easy, width=width) for a, b in ab]


def form_prompt(p: Problem, form: str, tag: str | None) -> list[str]:
    """The think prompt of ``p`` in one of :data:`PROMPT_FORMS` (``tag`` None: no tag)."""
    ops = operands_text(p)
    t = [tag] if tag else []
    if form == "standard":
        return ["Q", *t, *ops, "=", "<think>"]
    if form == "tag_after_operands":
        return ["Q", *ops, *t, "=", "<think>"]
    if form == "tag_before_question":
        return [*t, "Q", *ops, "=", "<think>"]
    if form == "no_tag":
        return ["Q", *ops, "=", "<think>"]
    if form == "chat_think":
        return ["<user>", *t, *ops, "<assistant>", "<think>"]
    raise ValueError(form)


def _generate(model, problems: Sequence[Problem], prompts: Sequence[Sequence[str]],
              max_new: int) -> list[dict[str, Any]]:
    m = getattr(model, "hooked", model)
    n_ctx = m.cfg.n_ctx if hasattr(m, "cfg") else m.config.max_position_embeddings
    ids = [encode(w) for w in prompts]
    outs = complete(model, ids, min(max_new, n_ctx - max(len(x) for x in ids)))
    res = []
    for p, o in zip(problems, outs):
        words = [VOCAB[t] for t in o]
        r = score_completion(p, " ".join(words), "think")
        r["n_tokens"] = len(o)
        # no column step at all: thinking closed at once or the answer begun directly
        r["skipped"] = bool(words) and words[0] in ("</think>", "A")
        think = words[: words.index("</think>")] if "</think>" in words else words
        r["column_steps"] = think.count("=")
        res.append(r)
    return res


def _mean(x: Sequence[float]) -> float:
    return float(np.mean(x)) if len(x) else float("nan")


def width_check(model, width: int, n: int = 256, seed: int = 0) -> dict[str, Any]:
    """The ``widths`` check for one operand width (see the module docstring)."""
    max_new = 20 * width + 20
    probs = width_problems(n, width, seed)
    rng = np.random.default_rng([seed, 37, width])
    items = [make_trace(p, rng, p_error=0.5, force_long=True) for p in probs]
    tf = wait_probs_on_traces(model, items)
    res = _generate(model, probs, [prompt_words(p, "think") for p in probs], max_new)
    long_i = [i for i, r in enumerate(res) if not r["skipped"]]
    out: dict[str, Any] = {
        "width": width, "n": n,
        "accuracy": _mean([r["correct"] for r in res]),
        "short_fraction_add": _mean([r["short"] for r in res]),
        "skipped_fraction_add": _mean([r["skipped"] for r in res]),
        "column_steps_median": float(np.median([r["column_steps"] for r in res])),
        "unclosed_fraction": _mean([not r["closed"] for r in res]),
        "n_not_skipped": len(long_i),
        "error_agreement": _mean([(res[i]["hesitations_error"] > 0)
                                  == bool(probs[i].slip_columns) for i in long_i]),
        "verify_agreement": _mean([(res[i]["hesitations_verify"] > 0)
                                   == probs[i].needs_verify for i in long_i]),
    }
    for k in ("error_slip", "error_random", "verify", "clean"):
        out[f"p_wait_{k}"] = tf[f"mean_{k}"]
        out[f"n_{k}"] = tf[f"n_{k}"]
    easy = width_problems(n, width, seed + 1, easy=True)
    er = _generate(model, easy, [prompt_words(p, "think") for p in easy], max_new)
    out["short_fraction_easy"] = _mean([r["short"] for r in er])
    out["skipped_fraction_easy"] = _mean([r["skipped"] for r in er])
    return out


def slip_value_items(n: int, seed: int = 0, value: str = "0 0"
                     ) -> list[tuple[str, dict[str, Any]]]:
    """Generator traces (``add`` tag, no random errors) of eval problems with a slip
    column, each slip's first result rewritten as ``value``; labels keep the slip
    triggers only (the position of the rewritten second digit)."""
    d1, d0 = value.split()
    items: list[tuple[str, dict[str, Any]]] = []
    for p in _problems_until(n, seed, lambda p: bool(p.slip_columns)):
        text, lab = make_trace(Problem(p.a, p.b, easy=False), p_error=0.0, force_long=True)
        w = text.split()
        for h in lab["hesitations"]:
            if h["cause"] == "carry_slip":   # encode position t is word t - 1
                w[h["trigger"] - 2], w[h["trigger"] - 1] = d1, d0
        lab = {**lab, "hesitations": [h for h in lab["hesitations"]
                                      if h["cause"] == "carry_slip"],
               "clean_positions": [], "post_correction_positions": []}
        items.append((" ".join(w), lab))
        if len(items) == n:
            break
    return items


def random_total10_items(n: int, seed: int = 0) -> list[tuple[str, dict[str, Any]]]:
    """Traces with ``0 9 wait 1 0`` at a non-slip column whose sum is 10 (the carry out
    dropped *and* off by one; a random error of the training distribution)."""
    items: list[tuple[str, dict[str, Any]]] = []

    def fits(p: Problem) -> bool:
        return any(c.total == 10 and not c.slip for c in p.columns)

    for p in _problems_until(n, seed + 1, fits):
        cols = [c for c in p.columns if c.total == 10 and not c.slip]
        text, lab = make_trace(Problem(p.a, p.b, easy=False), p_error=0.0, force_long=True)
        w = text.split()
        col = cols[0]
        # the column step starts after the prompt and 9 words per earlier step (+3 per
        # earlier slip correction); find it by its words instead
        start = _column_start(w, col.index)
        res_at = start + 6                      # x + y + c = [s1] s0
        w[res_at: res_at + 2] = ["0", "9", "wait", "1", "0"]
        trig = res_at + 2                       # encode position of s0 = word index + 1
        lab = {**lab, "hesitations": [{"pos": trig + 1, "trigger": trig,
                                       "mechanism": "error", "cause": "random",
                                       "column": col.index}],
               "clean_positions": [], "post_correction_positions": []}
        items.append((" ".join(w), lab))
        if len(items) == n:
            break
    return items


def _problems_until(n: int, seed: int, keep: Callable[[Problem], bool]) -> list[Problem]:
    """The first ``n`` eval-split problems (draws of ``seed``, then further seeds) that
    ``keep`` accepts."""
    out: list[Problem] = []
    k = 0
    while len(out) < n:
        out += [p for p in sample_problems(8 * n, seed=seed * 1000 + k, split="eval")
                if keep(p)]
        k += 1
    return out[:n]


def _column_start(words: list[str], index: int) -> int:
    """Word index where column step ``index`` starts in a think trace."""
    i = words.index("<think>") + 1
    for _ in range(index):
        i = words.index(";", i) + 1
    return i


def slip_value_check(model, n: int = 256, seed: int = 0) -> dict[str, Any]:
    """The ``slip_values`` check (see the module docstring)."""
    out: dict[str, Any] = {}
    for v in SLIP_VALUES:
        tf = wait_probs_on_traces(model, slip_value_items(n, seed, v))
        out[v.replace(" ", "")] = {"value": v, "p_wait": tf["mean_error"],
                                   "n": tf["n_error"]}
    tf = wait_probs_on_traces(model, random_total10_items(n, seed))
    out["random_total10_09"] = {"value": "0 9", "p_wait": tf["mean_error"],
                                "n": tf["n_error"]}
    return out


def prompt_form_check(model, n: int = 256, seed: int = 0) -> dict[str, Any]:
    """The ``prompt_forms`` check (see the module docstring)."""
    probs = sample_problems(n, seed=seed, split="eval")
    out: dict[str, Any] = {}
    for form in PROMPT_FORMS:
        row: dict[str, Any] = {}
        tags = (None,) if form == "no_tag" else ("easy", "add")
        for tag in tags:
            ps = [Problem(p.a, p.b, easy=tag == "easy") for p in probs]
            res = _generate(model, ps, [form_prompt(p, form, tag) for p in ps], 80)
            key = tag or "none"
            row[f"short_fraction_{key}"] = _mean([r["short"] for r in res])
            row[f"accuracy_{key}"] = _mean([r["correct"] for r in res])
        if form != "no_tag":
            row["cue_effect"] = row["short_fraction_easy"] - row["short_fraction_add"]
        row["prompt"] = " ".join(form_prompt(probs[0], form, None if form == "no_tag"
                                             else "easy"))
        out[form] = row
    return out


def ood_checks(model, n: int = 256, seed: int = 0,
               progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every check of the module docstring on one model (the reasoner)."""
    out: dict[str, Any] = {"n": n, "seed": seed}
    out["widths"] = {}
    for w in OOD_WIDTHS:
        out["widths"][str(w)] = width_check(model, w, n, seed)
        if progress:
            progress(f"width {w}")
    out["slip_values"] = slip_value_check(model, n, seed)
    if progress:
        progress("slip values")
    out["prompt_forms"] = prompt_form_check(model, n, seed)
    return out

