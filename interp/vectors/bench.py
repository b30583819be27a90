"""``python -m interp bench vectors-sweep``: batched α sweep vs a naive per-prompt loop.

9 values of α, 64 prompts (16 with ``--quick``), task vector grpo − sft on instruct
(organisms; a random organism-sized stand-in when they are not built). Batched: one
forward per α over the whole batch; naive: one forward per prompt per α (the original
model once per prompt). Both compute the same metrics; ``max_abs_diff_kl`` checks that.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def _standin(root: Path) -> tuple[str, str, str]:
    """Random organism-sized instruct / grpo / sft checkpoints (tied embeddings)."""
    from ..organisms.train import random_organism_checkpoint

    return tuple(random_organism_checkpoint(root / name, i, d_model=128, n_layers=4,
                                            d_mlp=512, tie_word_embeddings=True)
                 for i, name in enumerate(("instruct", "grpo", "sft")))


def bench_vectors_sweep(args) -> dict[str, Any]:
    from ..models import available_models, load_model
    from ..organisms import task as T
    from .sweep import (
        DEFAULT_ALPHAS,
        alpha_sweep,
        alpha_sweep_naive,
        organism_batch,
        task_modifier,
        timed,
    )
    from .task import TaskVector, TaskVectorSweeper

    n = 16 if getattr(args, "quick", False) else 64
    have = set(available_models())
    tmp = None
    if {"organism:instruct", "organism:grpo", "organism:sft"} <= have:
        target, a, b = "organism:instruct", "organism:grpo", "organism:sft"
        model_note = "organisms"
    else:
        tmp = tempfile.TemporaryDirectory()
        target, a, b = _standin(Path(tmp.name))
        model_note = "random organism-sized stand-in (organisms not built)"
        print("organisms not built: benchmarking a random stand-in", file=sys.stderr)
    model = load_model(target, device=getattr(args, "device", "auto"))
    tv = TaskVector.from_specs(a, b)
    batch = organism_batch(T.sample_problems(n, seed=0, split="eval"), "think")
    alphas = list(DEFAULT_ALPHAS)
    with TaskVectorSweeper(model, tv) as sw:
        mod = task_modifier(sw)
        alpha_sweep(model, mod, alphas[:1], batch.subset(range(2)))  # warm-up
        batched, t_b = timed(lambda: alpha_sweep(model, mod, alphas, batch, batch_size=n))
        naive, t_n = timed(lambda: alpha_sweep_naive(model, mod, alphas, batch))
    diff = float(np.abs(np.asarray(batched["kl_trace"]) - np.asarray(naive["kl_trace"])).max())
    if tmp is not None:
        tmp.cleanup()
    return {"batched_seconds": t_b, "naive_seconds": t_n, "speedup": t_n / t_b,
            "n_prompts": n, "n_alphas": len(alphas), "max_abs_diff_kl": diff,
            "forwards_batched": len(alphas) + 1, "forwards_naive": n * (len(alphas) + 1),
            "model": model_note, "device": str(model.device),
            "mean_seq_len": float(np.mean([len(s) for s in batch.seqs]))}
