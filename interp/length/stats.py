"""Small statistics used by the length tools (tests check them against scikit-learn /
scipy)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.stats import rankdata

from ..stats import wilson


def auroc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """P(score of a positive > score of a negative) + ½ P(tie) (Mann–Whitney U / n1 n0).
    ``labels``: 1 positive, 0 negative. NaN when a class is empty."""
    s, y = np.asarray(scores, dtype=float), np.asarray(labels).astype(int)
    n1, n0 = int((y == 1).sum()), int((y == 0).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = rankdata(s)
    return float((r[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman ρ (Pearson correlation of average ranks); NaN if either is constant."""
    rx, ry = rankdata(x), rankdata(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def paired_diff_ci(a: Sequence[float], b: Sequence[float], n_boot: int = 2000,
                   seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``b - a`` over paired items and its percentile-bootstrap interval."""
    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    if d.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(n_boot, d.size))
    means = d[idx].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(d.mean()), float(lo), float(hi)


def proportion(flags: Sequence[bool]) -> dict[str, float]:
    """``{"value", "ci_low", "ci_high", "n"}`` for a list of booleans (Wilson 95%)."""
    f = np.asarray(flags, dtype=bool)
    lo, hi = wilson(int(f.sum()), int(f.size))
    return {"value": float(f.mean()) if f.size else float("nan"), "ci_low": lo,
            "ci_high": hi, "n": int(f.size)}


def paired_change(a: Sequence[float], b: Sequence[float], seed: int = 0) -> dict[str, float]:
    """:func:`paired_diff_ci` as ``{"mean", "ci_low", "ci_high"}`` (the artifacts' layout)."""
    return dict(zip(("mean", "ci_low", "ci_high"), paired_diff_ci(a, b, seed=seed)))
