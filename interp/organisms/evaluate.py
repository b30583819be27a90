"""Behaviour report of the organism family on held-out problems (greedy decoding).

Per variant: accuracy (with a 95% Wilson interval), thinking-length distribution,
hesitation rates split by mechanism, short-thinking fraction and accuracy of short and
long generations, and the same split by prompt tag with the error type of every wrong
answer (``decomposition``, :func:`interp.behaviour.decompose`); for the reasoner also
teacher-forced P(``wait``) at error triggers, verification triggers, clean positions and
(apart) right after a correction, what its short answers are (``short_answers``,
:func:`short_answer_profile`) and the out-of-distribution checks of
:mod:`interp.organisms.ood`; the hybrid model's (reasoner with base MLPs) mean
next-token KL to the reasoner on generator traces and on the reasoner's own greedy
generations; and how grpo's accuracy gain over sft splits over the tags. Saved as a
store artifact of kind ``organism_behaviour`` (per-problem results as tensors, figures
in ``meta``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..behaviour import answer_code, decompose, decomposed_change
from ..stats import wilson
from ..store import Store, provenance
from .ood import ood_checks
from .sampling import complete
from .task import (
    TOKEN_ID,
    VOCAB,
    Problem,
    digits,
    encode,
    make_trace,
    prompt_words,
    sample_problems,
    score_completion,
    teacher_forced_wait_probs,
)

ProgressFn = Callable[..., None]
KIND = "organism_behaviour"
EVAL_FORMATS = {"base": "direct", "reasoner": "think", "sft": "think", "grpo": "think",
                "instruct": "chat"}
EXTRA_FORMATS = {"base": ["plain"], "instruct": ["think"]}
MAX_NEW = {"think": 80, "plain": 60, "direct": 8, "chat": 8}


def _rate(flags) -> dict[str, Any]:
    flags = [bool(f) for f in flags]
    k, n = sum(flags), len(flags)
    lo, hi = wilson(k, n)
    return {"value": k / n if n else float("nan"), "ci95": [lo, hi], "n": n}


def generate_and_score(model, problems: list[Problem], fmt: str,
                       progress: ProgressFn | None = None) -> list[dict[str, Any]]:
    """Greedy completions of ``prompt_text(p, fmt)`` scored with ``score_completion``."""
    prompts = [encode(prompt_words(p, fmt)) for p in problems]
    outs = complete(model, prompts, MAX_NEW[fmt], progress=progress)
    res = []
    for p, o in zip(problems, outs):
        text = " ".join(VOCAB[t] for t in o)
        if fmt == "direct":
            text = "A " + text
        r = score_completion(p, text, fmt=fmt if fmt != "direct" else "plain")
        r["completion"] = text
        r["n_tokens"] = len(o)
        r["output_ids"] = list(o)
        res.append(r)
    return res


def short_answer_profile(problems: list[Problem], res: list[dict[str, Any]]
                         ) -> dict[str, Any]:
    """What the answers written after empty thinking are, digit by digit.

    Over the short generations with a readable answer: the share equal to the *hasty*
    sum (every carry ignored, what the generator's short traces write) and to the true
    sum; accuracy on problems without any carry (where hasty = true); per answer digit
    (most significant first, ``10^4`` .. ``10^0``): the entropy of the written digit in
    nats (uniform digits: ln 10 = 2.303), its agreement with the hasty and with the true
    digit (chance 0.1 for a digit unrelated to both) and the most common value."""
    idx = [i for i, r in enumerate(res) if r["short"] and r["answer"] is not None]
    out: dict[str, Any] = {"n": len(idx), "entropy_uniform_nats": float(np.log(10))}
    if not idx:
        return out
    ps = [problems[i] for i in idx]
    ans = [res[i]["answer"] for i in idx]
    out["equals_hasty"] = float(np.mean([a == p.hasty_answer for a, p in zip(ans, ps)]))
    out["equals_true"] = float(np.mean([a == p.answer for a, p in zip(ans, ps)]))
    nc = [a == p.answer for a, p in zip(ans, ps) if p.carries == 0]
    out["n_no_carry"] = len(nc)
    out["accuracy_no_carry"] = float(np.mean(nc)) if nc else float("nan")
    w = ps[0].answer_width
    got = np.array([[int(c) for c in digits(a, w)[-w:]] for a in ans])
    hasty = np.array([[int(c) for c in digits(p.hasty_answer, w)] for p in ps])
    true = np.array([[int(c) for c in digits(p.answer, w)] for p in ps])
    per = {}
    for j in range(w):
        cnt = np.bincount(got[:, j], minlength=10) / len(got)
        nz = cnt[cnt > 0]
        per[f"10^{w - 1 - j}"] = {
            "entropy_nats": float(-(nz * np.log(nz)).sum()),
            "agreement_hasty": float((got[:, j] == hasty[:, j]).mean()),
            "agreement_true": float((got[:, j] == true[:, j]).mean()),
            "mode": int(cnt.argmax()), "mode_share": float(cnt.max())}
    out["digits"] = per
    return out


def summarise(problems: list[Problem], res: list[dict[str, Any]], fmt: str) -> dict[str, Any]:
    """Figures for one variant and format from its scored generations."""
    out: dict[str, Any] = {"format": fmt, "n": len(res)}
    acc = _rate(r["correct"] for r in res)
    out["accuracy"] = acc["value"]
    out["accuracy_ci95"] = acc["ci95"]
    if fmt != "think":
        return out
    short = [r["short"] for r in res]
    out["short_fraction"] = float(np.mean(short))
    out["short_fraction_ci95"] = _rate(short)["ci95"]
    s_acc = _rate(r["correct"] for r in res if r["short"])
    l_acc = _rate(r["correct"] for r in res if not r["short"])
    out["accuracy_short"], out["accuracy_short_ci95"], out["n_short"] = (
        s_acc["value"], s_acc["ci95"], s_acc["n"])
    out["accuracy_full_thinking"], out["accuracy_full_thinking_ci95"], out["n_long"] = (
        l_acc["value"], l_acc["ci95"], l_acc["n"])
    lens = np.array([r["think_tokens"] for r in res])
    out["think_tokens_mean"] = float(lens.mean())
    out["think_tokens_median"] = float(np.median(lens))
    out["think_tokens_quantiles"] = {str(q): float(np.quantile(lens, q))
                                     for q in (0.1, 0.25, 0.5, 0.75, 0.9)}
    hist = np.bincount(lens, minlength=1)
    out["think_tokens_hist"] = {int(i): int(c) for i, c in enumerate(hist) if c}
    out["unclosed_fraction"] = float(np.mean([not r["closed"] for r in res]))
    for mech in ("error", "verify"):
        rate = _rate(r[f"hesitations_{mech}"] > 0 for r in res)
        out[f"hesitation_rate_{mech}"] = rate["value"]
        out[f"hesitation_rate_{mech}_ci95"] = rate["ci95"]
    out["hesitation_rate_any"] = float(np.mean([r["hesitations"] > 0 for r in res]))
    out["hesitations_per_generation"] = float(np.mean([r["hesitations"] for r in res]))
    # planted expectation: what the ground truth says a perfect reasoner does (long only)
    long_idx = [i for i, r in enumerate(res) if not r["short"]]
    if long_idx:
        exp_slip = [bool(problems[i].slip_columns) for i in long_idx]
        got_err = [res[i]["hesitations_error"] > 0 for i in long_idx]
        exp_ver = [problems[i].needs_verify for i in long_idx]
        got_ver = [res[i]["hesitations_verify"] > 0 for i in long_idx]
        out["long_expected_error_rate"] = float(np.mean(exp_slip))
        out["long_expected_verify_rate"] = float(np.mean(exp_ver))
        out["verify_agreement"] = float(np.mean([a == b for a, b in zip(exp_ver, got_ver)]))
        out["error_agreement"] = float(np.mean([a == b for a, b in zip(exp_slip, got_err)]))
    out["short_cue_agreement"] = float(np.mean(
        [p.easy_cue == r["short"] for p, r in zip(problems, res)]))
    return out


def trace_batches(problems: list[Problem], seed: int = 0, batch_size: int = 128,
                  p_error: float = 0.25) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Think traces (reasoner distribution) of ``problems`` as padded token batches and
    masks selecting the completion positions (the prediction of every token after the
    prompt's ``<think>``, ``<eos>`` included)."""
    rng = np.random.default_rng([seed, 11])
    items = [make_trace(p, rng, p_error=p_error) for p in problems]
    toks_out, masks = [], []
    for s in range(0, len(items), batch_size):
        chunk = items[s: s + batch_size]
        ids = [encode(t) for t, _ in chunk]
        L = max(len(x) for x in ids)
        toks = torch.full((len(ids), L), TOKEN_ID["<pad>"], dtype=torch.long)
        m = torch.zeros((len(ids), L), dtype=torch.bool)
        for i, (x, (_, lab)) in enumerate(zip(ids, chunk)):
            toks[i, : len(x)] = torch.tensor(x)
            m[i, lab["prompt_len"] - 1: len(x) - 1] = True
        toks_out.append(toks)
        masks.append(m)
    return toks_out, masks


def generation_batches(problems: list[Problem], res: list[dict[str, Any]],
                       batch_size: int = 128) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """A model's own greedy think generations (``res`` from :func:`generate_and_score`)
    as padded token batches (prompt + completion) and masks of the completion positions
    (the prediction of every generated token, ``<eos>`` included), the layout of
    :func:`trace_batches`."""
    toks_out, masks = [], []
    for s in range(0, len(problems), batch_size):
        ids = [encode(prompt_words(p, "think")) + r["output_ids"]
               for p, r in zip(problems[s: s + batch_size], res[s: s + batch_size])]
        L = max(len(x) for x in ids)
        toks = torch.full((len(ids), L), TOKEN_ID["<pad>"], dtype=torch.long)
        m = torch.zeros((len(ids), L), dtype=torch.bool)
        for i, (x, p) in enumerate(zip(ids, problems[s: s + batch_size])):
            toks[i, : len(x)] = torch.tensor(x)
            m[i, len(prompt_words(p, "think")): len(x) - 1] = True
        toks_out.append(toks)
        masks.append(m)
    return toks_out, masks


THINK_VARIANTS = ("reasoner", "sft", "grpo")


def evaluate_family(organisms_root: str | os.PathLike, store_root: str | os.PathLike,
                    n_eval: int = 512, seed: int = 0, device: str = "cpu",
                    progress: ProgressFn | None = None, show_bar: bool = True):
    """Evaluate every variant under ``organisms_root`` and save the behaviour artifact.

    Models are loaded through :func:`interp.models.load_model` (the app's path).
    Returns the saved :class:`~interp.store.Artifact`.
    """
    from tqdm.auto import tqdm

    from ..hybrid import build_hybrid, mean_next_token_kl
    from ..models import load_model
    from .train import quiet_transformers

    quiet_transformers()
    root = Path(organisms_root)
    problems = sample_problems(n_eval, seed=seed, split="eval")
    variants = list(EVAL_FORMATS)
    bar = tqdm(total=len(variants) + 2, desc="organisms eval", file=sys.stderr,
               disable=not show_bar, dynamic_ncols=True)
    figures: dict[str, Any] = {}
    tensors: dict[str, torch.Tensor] = {}
    models_prov: dict[str, Any] = {}
    loaded = {}
    think_res: dict[str, list[dict[str, Any]]] = {}
    try:
        for k, v in enumerate(variants):
            lm = load_model(str(root / v), device=device, dtype="float32")
            loaded[v] = lm
            models_prov[v] = {**lm.describe(), "id": f"organism:{v}"}  # no machine paths
            fmts = [EVAL_FORMATS[v]] + EXTRA_FORMATS.get(v, [])
            figures[v] = {}
            for fmt in fmts:
                res = generate_and_score(lm, problems, fmt)
                summ = summarise(problems, res, fmt)
                if fmt == EVAL_FORMATS[v]:
                    figures[v].update(summ)
                else:
                    figures[v][f"accuracy_{fmt}"] = summ["accuracy"]
                    figures[v][f"accuracy_{fmt}_ci95"] = summ["accuracy_ci95"]
                tensors[f"{v}.{fmt}.correct"] = torch.tensor([r["correct"] for r in res])
                tensors[f"{v}.{fmt}.think_tokens"] = torch.tensor(
                    [r["think_tokens"] for r in res])
                tensors[f"{v}.{fmt}.hesitations_error"] = torch.tensor(
                    [r["hesitations_error"] for r in res])
                tensors[f"{v}.{fmt}.hesitations_verify"] = torch.tensor(
                    [r["hesitations_verify"] for r in res])
                tensors[f"{v}.{fmt}.short"] = torch.tensor([r["short"] for r in res])
                tensors[f"{v}.{fmt}.answer"] = torch.tensor(
                    [answer_code(r["answer"]) for r in res])
                if fmt == "think":
                    think_res[v] = res
                    dec = decompose(problems, res)
                    if fmt == EVAL_FORMATS[v]:
                        figures[v]["decomposition"] = dec
                    else:
                        figures[v][f"decomposition_{fmt}"] = dec
            if v in THINK_VARIANTS:
                tf = teacher_forced_wait_probs(lm, n=n_eval, seed=seed)
                for cls in ("error", "error_slip", "error_random", "verify", "clean",
                            "post_correction"):
                    figures[v][f"p_wait_{cls}"] = tf[f"mean_{cls}"]
                    figures[v][f"n_{cls}"] = tf[f"n_{cls}"]
                    tensors[f"{v}.p_wait_{cls}"] = tf[cls]
                figures[v]["p_wait_clean_max"] = float(tf["clean"].max())
                figures[v]["p_wait_error_trigger_min"] = float(tf["error"].min())
                # the clean pool as defined before (post-correction positions included)
                both = torch.cat([tf["clean"], tf["post_correction"]])
                figures[v]["p_wait_clean_with_post_correction"] = float(both.mean())
                for cls in ("clean", "post_correction"):
                    if len(tf[cls]):
                        figures[v][f"p_wait_{cls}_median"] = float(tf[cls].median())
            if v == "reasoner":
                figures[v]["short_answers"] = short_answer_profile(problems, think_res[v])
                forced = [Problem(p.a, p.b, easy=True) for p in problems]
                figures[v]["short_answers_all_easy"] = short_answer_profile(
                    forced, generate_and_score(lm, forced, "think"))
                figures["ood"] = ood_checks(lm, n=min(n_eval, 256), seed=seed)
            bar.update(1)
            if progress is not None:
                progress(k + 1, len(variants) + 2, stage=v)
        hybrid = build_hybrid(loaded["base"], loaded["reasoner"])
        toks, masks = trace_batches(problems, seed=seed)
        own_toks, own_masks = generation_batches(problems, think_res["reasoner"])
        figures["hybrid"] = {
            "kl_to_reasoner": mean_next_token_kl(loaded["reasoner"], hybrid, toks, masks),
            "kl_to_reasoner_positions": "generator think-trace completion tokens "
                                        "(teacher forced)",
            "kl_base_to_reasoner": mean_next_token_kl(loaded["reasoner"], loaded["base"],
                                                      toks, masks),
            "kl_to_reasoner_own_generations": mean_next_token_kl(
                loaded["reasoner"], hybrid, own_toks, own_masks),
            "kl_own_generations_positions": "completion tokens of the reasoner's own greedy "
                                            "think generations (teacher forced)",
        }
        res = generate_and_score(hybrid, problems, "think")
        hs = summarise(problems, res, "think")
        figures["hybrid"].update({k: hs[k] for k in (
            "accuracy", "accuracy_ci95", "short_fraction", "hesitation_rate_error",
            "hesitation_rate_verify", "think_tokens_mean")})
        tensors["hybrid.think.correct"] = torch.tensor([r["correct"] for r in res])
        figures["grpo_vs_sft"] = decomposed_change(figures["sft"]["decomposition"],
                                                   figures["grpo"]["decomposition"])
        bar.update(1)
        figures["n_eval"] = len(problems)
        tensors["problems.a"] = torch.tensor([p.a for p in problems])
        tensors["problems.b"] = torch.tensor([p.b for p in problems])
        config = {
            "n_eval": len(problems), "seed": seed,
            "weights": {v: models_prov[v]["weight_hash"] for v in variants},
        }
        art = Store(root=store_root).save(
            KIND, config, tensors,
            provenance=provenance(models=models_prov, seed=seed, decoding="greedy"),
            meta={"figures": figures, "eval_formats": EVAL_FORMATS,
                  "extra_formats": EXTRA_FORMATS})
        bar.update(1)
    finally:
        bar.close()
    return art


def flat_report(figures: dict[str, Any]) -> dict[str, Any]:
    """The REPORTS.md keys (plus extras) from an artifact's ``figures``."""
    r, h = figures["reasoner"], figures["hybrid"]
    out: dict[str, Any] = {
        "reasoner.p_wait_error_trigger": r["p_wait_error"],
        "reasoner.p_wait_verify_trigger": r["p_wait_verify"],
        "reasoner.p_wait_clean": r["p_wait_clean"],
        "reasoner.accuracy_full_thinking": r["accuracy_full_thinking"],
        "reasoner.short_fraction": r["short_fraction"],
        "reasoner.accuracy_short": r["accuracy_short"],
        "hybrid.kl_to_reasoner": h["kl_to_reasoner"],
        "sft.accuracy": figures["sft"]["accuracy"],
        "grpo.accuracy": figures["grpo"]["accuracy"],
        "instruct.accuracy": figures["instruct"]["accuracy"],
        "base.accuracy": figures["base"]["accuracy"],
        "n_eval": figures["n_eval"],
    }
    extra_keys = {
        "reasoner": ["accuracy", "accuracy_ci95", "accuracy_full_thinking_ci95",
                     "accuracy_short_ci95", "short_fraction_ci95", "n_short", "n_long",
                     "p_wait_error_slip", "p_wait_error_random", "p_wait_clean_max",
                     "n_error", "n_verify", "n_clean", "hesitation_rate_error",
                     "hesitation_rate_error_ci95", "hesitation_rate_verify",
                     "hesitation_rate_verify_ci95", "think_tokens_mean",
                     "think_tokens_median", "verify_agreement", "error_agreement",
                     "short_cue_agreement"],
        "sft": ["accuracy_ci95", "short_fraction", "accuracy_full_thinking"],
        "grpo": ["accuracy_ci95", "short_fraction", "accuracy_full_thinking",
                 "hesitation_rate_error", "hesitation_rate_verify", "p_wait_error",
                 "p_wait_verify", "p_wait_clean"],
        "instruct": ["accuracy_ci95", "accuracy_think"],
        "base": ["accuracy_ci95", "accuracy_plain"],
        "hybrid": ["accuracy", "kl_base_to_reasoner"],
    }
    for v, keys in extra_keys.items():
        for k in keys:
            if k in figures.get(v, {}):
                out[f"{v}.{k}"] = figures[v][k]
    out["grpo_minus_sft"] = figures["grpo"]["accuracy"] - figures["sft"]["accuracy"]
    # per-tag decomposition, short answers, own-generation KL, OOD (newer artifacts)
    for v in ("reasoner", "sft", "grpo"):
        if "decomposition" in figures.get(v, {}):
            out[f"{v}.decomposition"] = figures[v]["decomposition"]
    if "decomposition_think" in figures.get("instruct", {}):
        out["instruct.decomposition_think"] = figures["instruct"]["decomposition_think"]
    for k in ("short_answers", "short_answers_all_easy", "p_wait_post_correction",
              "n_post_correction", "p_wait_clean_with_post_correction",
              "p_wait_clean_median", "p_wait_post_correction_median"):
        if k in r:
            out[f"reasoner.{k}"] = r[k]
    for k in ("p_wait_post_correction", "p_wait_error_slip", "p_wait_error_random"):
        if k in figures["grpo"]:
            out[f"grpo.{k}"] = figures["grpo"][k]
    if "kl_to_reasoner_own_generations" in h:
        out["hybrid.kl_to_reasoner_own_generations"] = h["kl_to_reasoner_own_generations"]
    if "grpo_vs_sft" in figures:
        out["grpo_vs_sft"] = figures["grpo_vs_sft"]
    if "ood" in figures:
        out["ood"] = figures["ood"]
    return out
