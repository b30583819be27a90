"""Behaviour report of the organism family on held-out problems (greedy decoding).

Per variant: accuracy (with a 95% Wilson interval), thinking-length distribution,
hesitation rates split by mechanism, short-thinking fraction and accuracy of short and
long generations; for the reasoner also teacher-forced P(``wait``) at error triggers,
verification triggers and clean positions; and the hybrid model's (reasoner with base
MLPs) mean next-token KL to the reasoner on think traces. Saved as a store artifact of
kind ``organism_behaviour`` (per-problem results as tensors, figures in ``meta``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..stats import wilson
from ..store import Store, provenance
from .sampling import complete
from .task import (
    TOKEN_ID,
    VOCAB,
    Problem,
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
        res.append(r)
    return res


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
            if v in ("reasoner", "sft", "grpo"):
                tf = teacher_forced_wait_probs(lm, n=n_eval, seed=seed)
                for cls in ("error", "error_slip", "error_random", "verify", "clean"):
                    figures[v][f"p_wait_{cls}"] = tf[f"mean_{cls}"]
                    figures[v][f"n_{cls}"] = tf[f"n_{cls}"]
                    tensors[f"{v}.p_wait_{cls}"] = tf[cls]
                figures[v]["p_wait_clean_max"] = float(tf["clean"].max())
                figures[v]["p_wait_error_trigger_min"] = float(tf["error"].min())
            bar.update(1)
            if progress is not None:
                progress(k + 1, len(variants) + 2, stage=v)
        hybrid = build_hybrid(loaded["base"], loaded["reasoner"])
        toks, masks = trace_batches(problems, seed=seed)
        figures["hybrid"] = {
            "kl_to_reasoner": mean_next_token_kl(loaded["reasoner"], hybrid, toks, masks),
            "kl_to_reasoner_positions": "think-trace completion tokens (teacher forced)",
            "kl_base_to_reasoner": mean_next_token_kl(loaded["reasoner"], loaded["base"],
                                                      toks, masks),
        }
        res = generate_and_score(hybrid, problems, "think")
        hs = summarise(problems, res, "think")
        figures["hybrid"].update({k: hs[k] for k in (
            "accuracy", "accuracy_ci95", "short_fraction", "hesitation_rate_error",
            "hesitation_rate_verify", "think_tokens_mean")})
        tensors["hybrid.think.correct"] = torch.tensor([r["correct"] for r in res])
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
    return out
