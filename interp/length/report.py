"""``python -m interp report length``: the figures of issue 5 from the committed demo
artifacts (``cache/demo``); ``--recompute`` rebuilds them first (organism reasoner)."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from ..errors import ArtifactNotFoundError
from ..store import PROJECT_ROOT, Store
from .pipeline import latest_index, model_weight_hash
from .seal import headline_of

DEMO_ROOT = PROJECT_ROOT / "cache" / "demo"


def demo_store(read_only: bool = True) -> Store:
    return Store(root=DEMO_ROOT, read_only=read_only)


def shortest_accuracy(records: list[dict[str, Any]], fractions=(0.05, 0.1, 0.2)
                      ) -> dict[str, float]:
    """Accuracy of the shortest ``f`` of responses (ties broken by row order)."""
    recs = [r for r in records if "correct" in r]
    if not recs:
        return {}
    order = sorted(range(len(recs)), key=lambda i: (recs[i]["think_tokens"], i))
    out = {}
    for f in fractions:
        k = max(1, int(round(f * len(recs))))
        out[f"{int(round(f * 100))}"] = float(np.mean([recs[i]["correct"] for i in order[:k]]))
    return out


def _p(d: dict[str, Any] | None, key: str) -> float | None:
    return None if not d or key not in d else d[key]["value"]


def collect(store: Store) -> dict[str, Any]:
    """Every figure of the length workflow from the newest index in ``store``."""
    idx = latest_index(store)
    if idx is None:
        raise ArtifactNotFoundError(
            f"no length artifacts in {store.root.name}/; run "
            "`python -m interp report length --recompute` (or `python -m interp length build`)")
    m, keys = idx.meta, idx.meta["keys"]
    d = store.load("length_direction", keys["direction"]).meta
    sw = store.load("length_sweep", keys["sweep"]).meta
    hd = store.load("length_heads", keys["heads"])
    ed = store.load("length_edit", keys["edit"]).meta
    pa = sw["per_alpha"]
    zero = [p for p in pa if p["alpha"] == 0]
    most_neg = pa[0]
    out: dict[str, Any] = {
        "model": m["model"], "index_key": idx.key,
        "best_layer_separability": d["best"]["auroc"],
        "best_layer": d["best"]["layer"], "best_site": d["best"]["site"],
        "best_layer_probe_accuracy": d["best"].get("probe_accuracy"),
        "separability_auroc": d["auroc"], "probe_accuracy": d["probe_accuracy"],
        "best_layer_separability_open_rule": (d.get("alt_positions_rule") or {}).get(
            "best", {}).get("auroc"),
        "direction_norms": d["norms"], "n_long": d["n_long"], "n_short": d["n_short"],
        "split": d.get("split"), "positions_rule": d.get("positions_rule"),
        "length_alpha_spearman": sw["spearman_mean_length_vs_alpha"],
        "alphas": [p["alpha"] for p in pa],
        "mean_think_tokens_per_alpha": [p["mean_think_tokens"] for p in pa],
        "short_fraction_per_alpha": [p["short_fraction"]["value"] for p in pa],
        "accuracy_per_alpha": [_p(p, "accuracy") for p in pa],
        "short_fraction_alpha0": zero[0]["short_fraction"]["value"] if zero else None,
        "short_fraction_most_negative_alpha": most_neg["short_fraction"]["value"],
        "n_sweep_prompts": pa[0]["n"],
        "edited_heads": ed.get("heads") or [[t["layer"], t["head"]] for t in hd.meta["top"]],
        "top_scored_heads": [[t["layer"], t["head"]] for t in hd.meta["top"]],
        "head_norm_before": [r["norm_before"] for r in ed["norms"]],
        "head_norm_after": [r["norm_after"] for r in ed["norms"]],
        "edited_param_fraction": ed["edited_param_fraction"],
        "export_max_logit_diff": ed["export_max_logit_diff"],
        "n_eval": ed["before"]["n"],
        "short_fraction_before": ed["before"]["short_fraction"]["value"],
        "short_fraction_before_ci": [ed["before"]["short_fraction"]["ci_low"],
                                     ed["before"]["short_fraction"]["ci_high"]],
        "short_fraction_after_edit": ed["after"]["short_fraction"]["value"],
        "short_fraction_after_edit_ci": [ed["after"]["short_fraction"]["ci_low"],
                                         ed["after"]["short_fraction"]["ci_high"]],
        "short_fraction_change_ci": [ed["short_fraction_change"]["ci_low"],
                                     ed["short_fraction_change"]["ci_high"]],
        "mean_think_tokens_before": ed["before"]["mean_think_tokens"],
        "mean_think_tokens_after_edit": ed["after"]["mean_think_tokens"],
    }
    out["edit_mode"] = ed.get("mode", "project")
    out["edit_modes"] = {
        k: {"short_fraction_after": v["after"]["short_fraction"]["value"],
            "short_fraction_change_ci": [v["short_fraction_change"]["ci_low"],
                                         v["short_fraction_change"]["ci_high"]],
            "accuracy_after": _p(v["after"], "accuracy"),
            "accuracy_change_ci": [v["accuracy_change"]["ci_low"],
                                   v["accuracy_change"]["ci_high"]]
            if "accuracy_change" in v else None,
            "heads": v.get("heads"), "weight_edit": v.get("weight_edit", k),
            "norms": v["norms"], "export_max_logit_diff": v["export_max_logit_diff"],
            "behaviour": v.get("behaviour")}
        for k, v in (ed.get("modes") or {}).items()}
    # per-example agreement of the edited model's generations with the unedited ones
    out["edit_behaviour"] = ed.get("behaviour")
    out["agreement_per_alpha"] = {str(p["alpha"]): p.get("agreement") for p in pa
                                  if "agreement" in p}
    out["negative_alpha_raises_short"] = bool(
        out["short_fraction_alpha0"] is not None
        and out["short_fraction_most_negative_alpha"] > out["short_fraction_alpha0"])
    if "accuracy" in ed["before"]:
        b, a = ed["before"]["accuracy"], ed["after"]["accuracy"]
        out.update({
            "accuracy_before": b["value"], "accuracy_before_ci": [b["ci_low"], b["ci_high"]],
            "accuracy_after_edit": a["value"],
            "accuracy_after_edit_ci": [a["ci_low"], a["ci_high"]],
            "accuracy_change": ed["accuracy_change"]["mean"],
            "accuracy_change_ci": [ed["accuracy_change"]["ci_low"],
                                   ed["accuracy_change"]["ci_high"]],
            "accuracy_shortest_before": shortest_accuracy(ed["records_before"]),
            "accuracy_shortest_after_edit": shortest_accuracy(ed["records_after"]),
        })
    if keys.get("seal"):
        s = store.load("length_seal", keys["seal"]).meta
        out["seal"] = {
            "layer": s["layer"], "anchor": s["anchor"], "alpha": s["alpha"],
            "counts": s["counts"], "vector_norm": s["norm"],
            "hesitations_per_response_before": s["hesitations_before"],
            "hesitations_per_response_after": s["hesitations_after"],
            "mean_think_tokens_before": s["before"]["mean_think_tokens"],
            "mean_think_tokens_after": s["after"]["mean_think_tokens"],
            "accuracy_before": _p(s["before"], "accuracy"),
            "accuracy_after": _p(s["after"], "accuracy"),
            "behaviour": s.get("behaviour"),
            "alpha_sweep": [{"alpha": p["alpha"], "hesitations_per_response": p["hesitations"],
                             "mean_think_tokens": p["mean_think_tokens"],
                             "accuracy": _p(p, "accuracy"), "agreement": p.get("agreement")}
                            for p in s.get("sweep") or []]}
        head = headline_of(s)   # not the configured α, which may break the model
        out["seal"]["headline"] = {
            "alpha": head["alpha"], "rule": head["rule"],
            "hesitations_per_response": head["chosen"].get("hesitations"),
            "mean_think_tokens": head["chosen"]["mean_think_tokens"],
            "accuracy": _p(head["chosen"], "accuracy"),
            "rejected": {str(k): v for k, v in head["rejected"].items()}}
    out.update(planted_head_check(m["model"], hd.tensors["scores"], model_weight_hash(idx)))
    out["targets"] = {
        "separability_ge_0.9": out["best_layer_separability"] >= 0.9,
        "spearman_ge_0.9": (out["length_alpha_spearman"] or 0) >= 0.9,
        "negative_alpha_raises_short": out["negative_alpha_raises_short"],
        # significant changes: the paired bootstrap CI excludes 0
        "edit_lowers_short": out["short_fraction_change_ci"][1] < 0,
        "edit_raises_accuracy": (out.get("accuracy_change_ci") or [0, 0])[0] > 0,
        "n_eval_ge_500": out["n_eval"] >= 500,
    }
    return out


def planted_head_check(model_spec: str, scores, weight_hash: str | None = None
                       ) -> dict[str, Any]:
    """Ground truth for the organism reasoner: the head its build dedicated to the
    short-thinking cue (``task.json``), and its rank among the head scores (1 = top).
    Empty for any other model, for a build without the record, and unless ``weight_hash``
    (the run's provenance) is the reasoner's current weights."""
    if model_spec.removeprefix("organism:") != "reasoner":
        return {}
    try:
        from ..models import files_hash, organisms_dir
        from ..organisms.train import read_task

        head = read_task()["build"]["found"]["reasoner"]["cue_head"]
        if weight_hash is None or weight_hash != files_hash(organisms_dir() / "reasoner"):
            return {}
    except (OSError, KeyError, ValueError):
        return {}
    flat = np.asarray(scores, dtype=float)
    rank = int((flat > flat[head[0], head[1]]).sum()) + 1
    return {"planted_short_head": list(head), "planted_head_rank": rank}


def report_length(args) -> dict[str, Any]:
    if getattr(args, "recompute", False):
        from ..models import load_model
        from .pipeline import build, make_config

        model = load_model("organism:reasoner", device=getattr(args, "device", "auto"))

        def progress(step, total, stage="", done=None, n=None, **_):
            print(f"[length] stage {step}/{total} {stage} {done or ''}", file=sys.stderr)

        build(model, make_config(), demo_store(read_only=False), progress=progress)
    return collect(demo_store())
