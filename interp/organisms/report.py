"""``python -m interp report organisms``: figures from the committed behaviour artifact.

Reads the ``organism_behaviour`` artifact under ``cache/demo`` whose config records the
weight hashes of the organisms now in ``cache/organisms``; ``--recompute`` re-runs the
evaluation (greedy, CPU by default) and saves a new artifact first. Never trains.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from ..errors import ArtifactNotFoundError
from ..models import ORGANISM_VARIANTS, cache_root, files_hash, organisms_dir
from ..store import Store
from .evaluate import KIND, evaluate_family, flat_report

log = logging.getLogger(__name__)


def demo_store() -> Store:
    return Store(root=cache_root() / "demo")


def current_weight_hashes() -> dict[str, str]:
    root = organisms_dir()
    return {v: files_hash(root / v) for v in ORGANISM_VARIANTS
            if (root / v / "config.json").exists()}


def behaviour_artifact(store: Store | None = None):
    """The behaviour artifact of the organisms now on disk (``stale=False``), else the
    newest one (``stale=True``); raises ArtifactNotFoundError when there is none."""
    store = store or demo_store()
    arts = store.list(KIND)
    if not arts:
        raise ArtifactNotFoundError(
            "no organism behaviour report saved; run `python -m interp report organisms "
            "--recompute` (or `python -m interp organisms eval`)")
    hashes = current_weight_hashes()
    for a in arts:
        if a.config.get("weights") == hashes:
            return a, False
    return arts[0], True


def report_organisms(args: argparse.Namespace) -> dict[str, Any]:
    """REPORTS.md ``report organisms`` keys (plus CIs and extras) as a flat dict."""
    if getattr(args, "recompute", False):
        import torch

        torch.set_num_threads(2)
        quick = bool(getattr(args, "quick", False))
        device = getattr(args, "device", "auto") or "auto"
        if device == "auto":
            device = "cpu"
        art = evaluate_family(organisms_dir(), cache_root() / "demo",
                              n_eval=64 if quick else 512, seed=0, device=device)
        stale = False
    else:
        art, stale = behaviour_artifact()
    out = flat_report(art.meta["figures"])
    out["artifact"] = art.key
    out["stale"] = stale
    out["decoding"] = "greedy"
    if stale:
        log.warning("the saved organism report was made for other weights than those in "
                    "cache/organisms; run with --recompute to refresh it")
    return out


def behaviour_table(art) -> Any:
    """The behaviour artifact as a table: one row per variant, its scalar figures as
    columns (intervals and nested values are left to ``report organisms``); a pandas
    DataFrame."""
    import pandas as pd

    figs = art.meta.get("figures") or {}
    variants = [*ORGANISM_VARIANTS, "hybrid"]
    rows = {v: {k: x for k, x in d.items() if isinstance(x, (int, float, str))}
            for v, d in figs.items() if isinstance(d, dict) and v in variants}
    return pd.DataFrame.from_dict(rows, orient="index")


BEHAVIOUR_KEY_COLUMNS = {
    "format": "format", "n": "problems", "accuracy": "accuracy",
    "accuracy_think": "accuracy (think format)", "short_fraction": "short-thinking fraction",
    "think_tokens_mean": "mean thinking tokens",
    "hesitations_per_generation": "hesitations / generation",
    "hesitation_rate_error": "hesitation rate: error",
    "hesitation_rate_verify": "hesitation rate: verify",
    "kl_to_reasoner": "KL to reasoner (nats)"}
"""The behaviour table's key columns (the Models page shows these; the rest on demand)."""


def behaviour_key_table(table: Any) -> Any:
    """The key columns of :func:`behaviour_table` (those it has), with readable names;
    rows stay the variants."""
    cols = [c for c in BEHAVIOUR_KEY_COLUMNS if c in table.columns]
    out = table[cols].rename(columns=BEHAVIOUR_KEY_COLUMNS)
    out.index.name = "variant"
    return out


def decomposition_frame(art) -> Any:
    """Per variant in the think format and per prompt tag: accuracy, short fraction,
    hesitation rates and error types of the wrong answers
    (:func:`interp.behaviour.decomposition_table`); empty for older artifacts."""
    from ..behaviour import decomposition_table

    figs = art.meta.get("figures") or {}
    decs = {v: figs[v]["decomposition"] for v in ("reasoner", "sft", "grpo")
            if "decomposition" in figs.get(v, {})}
    if "decomposition_think" in figs.get("instruct", {}):
        decs["instruct (think)"] = figs["instruct"]["decomposition_think"]
    return decomposition_table(decs)
