"""``python -m interp report pair --json``: the organisms' pair token by token, per
attention head, and under logit-diff amplification.

* Token by token: organism sft (base) vs grpo (fine-tune), teacher-forced on the task's
  reference traces (:func:`interp.organisms.task.make_trace`) of ``n`` problems of the
  *evaluation* split: mean KL both ways over all target tokens and per role of the token
  (:func:`interp.tokendiff.organism_marks`: ``answer``, ``check``, ``column``,
  ``correction``, ``other``), and how often each model's most probable token is the one
  the task fixes, per answer digit.
* Per head: the attention head whose weights moved most (relative change) between sft
  and grpo, and the mean over heads.
* Amplification: organism base vs reasoner on ``n_amplify`` evaluation prompts (think
  format), ``samples`` samples each at T = 1, α ∈ ``alphas``: hesitation (``wait``)
  tokens per sample.
Nothing is trained or saved; everything is computed from the committed organisms.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pandas as pd


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def token_figures(base, fine, n: int = 64, seed: int = 0) -> dict[str, Any]:
    """KL both ways and top-1 agreement with the task, per role (see the module doc)."""
    from .organisms.task import encode, make_trace, sample_problems
    from .tokendiff import token_diffs

    rng = np.random.default_rng([seed, 7])
    traces = [encode(make_trace(p, rng)[0])
              for p in sample_problems(n, seed=seed, split="evaluation")]
    frames = [d.frame(base.tokenizer) for d in token_diffs(base, fine, traces, k=1)]
    df = pd.concat(frames, ignore_index=True)
    df["role"] = df["role"].replace("", "other")
    out: dict[str, Any] = {"n_eval": n, "n_tokens": len(df),
                           "mean_kl_fine_base": float(df["kl_fine_base"].mean()),
                           "mean_kl_base_fine": float(df["kl_base_fine"].mean()),
                           "by_role": {}}
    for role, g in df.groupby("role"):
        r = {"n": len(g), "mean_kl_fine_base": float(g["kl_fine_base"].mean()),
             "mean_kl_base_fine": float(g["kl_base_fine"].mean())}
        if role != "other":
            r["base_top1_right"] = float(g["base_top1_correct"].astype(float).mean())
            r["fine_top1_right"] = float(g["fine_top1_correct"].astype(float).mean())
        out["by_role"][role] = r
    digits = []
    for f in frames:
        ans = f[f["role"] == "answer"].reset_index(drop=True)
        digits.append(ans[["base_top1_correct", "fine_top1_correct"]].astype(float)
                      .assign(digit=range(len(ans))))
    per = pd.concat(digits).groupby("digit").mean()
    out["answer_digit_top1_right"] = {
        "base": [float(x) for x in per["base_top1_correct"]],
        "fine": [float(x) for x in per["fine_top1_correct"]]}
    return out


def report_pair(args) -> dict[str, Any]:
    from .amplify import amplify_many
    from .models import load_model, organisms_dir
    from .organisms.task import prompt_text, sample_problems
    from .weights import head_diff_table

    quick = bool(getattr(args, "quick", False))
    device = getattr(args, "device", "auto") or "auto"
    base_v, fine_v = "sft", "grpo"
    _say(f"token by token: organism:{base_v} vs organism:{fine_v}")
    base = load_model(f"organism:{base_v}", device=device)
    fine = load_model(f"organism:{fine_v}", device=device)
    out: dict[str, Any] = {"pair": f"organism:{base_v} vs organism:{fine_v}",
                           **token_figures(base, fine, n=16 if quick else 128)}
    heads = head_diff_table(organisms_dir() / base_v, organisms_dir() / fine_v)
    top = heads.loc[heads["relative"].idxmax()]
    out["heads"] = {"n": len(heads), "mean_relative": float(heads["relative"].mean()),
                    "max": {"layer": int(top["layer"]), "matrix": str(top["matrix"]),
                            "head": int(top["head"]), "relative": float(top["relative"])}}
    _say("amplification: organism:base vs organism:reasoner")
    b = load_model("organism:base", device=device)
    r = load_model("organism:reasoner", device=device)
    alphas = [0.0, 1.0, 2.0]
    n_prompts, samples = (2, 2) if quick else (8, 4)
    prompts = [prompt_text(p) for p in sample_problems(n_prompts, seed=0, split="evaluation")]
    s = amplify_many(b, r, prompts, alphas, n_samples=samples, max_new_tokens=64,
                     temperature=1.0, seed=0,
                     progress=lambda d, t, **kw: _say(f"  {d}/{t} samples")).samples
    summary = s.groupby("alpha")["hesitations"].agg(["mean", "sem", "count"])
    out["amplify"] = {"pair": "organism:base vs organism:reasoner", "alphas": alphas,
                      "prompts": n_prompts, "samples_per_prompt": samples,
                      "max_new_tokens": 64, "temperature": 1.0,
                      "mean_hesitations": [float(summary.loc[a, "mean"]) for a in alphas],
                      "sem_hesitations": [float(summary.loc[a, "sem"]) for a in alphas],
                      "mean_new_tokens": [float(s[s["alpha"] == a]["new_tokens"].mean())
                                          for a in alphas]}
    return out
