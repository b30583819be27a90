"""``python -m interp report adapters``: figures of the committed demo adapter run.

Reads the demo store (``cache/demo``): the newest ``adapters_eval`` artifact (faithfulness
+ behaviour of the demo adapter set, on the ``evaluation`` half of the held-out problems)
and the newest ``adapters_sweep`` (L1 frontier, measured on the ``validation`` half).
The L1 setting is checked against the sweep with one rule (:func:`select_l1`).
Never trains; ``--recompute`` re-evaluates the demo adapter set (a few minutes on a CPU).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..errors import ArtifactError
from ..store import PROJECT_ROOT, Artifact, Store

DEMO_ROOT = PROJECT_ROOT / "cache" / "demo"
TARGETS = {"kl_gap_closed": 0.9, "mean_l0": 10.0, "hesitation_rate_rel_error": 0.1,
           "accuracy_recovered": 0.8}


def demo_store(root: str | Path | None = None, read_only: bool = True) -> Store:
    return Store(root or DEMO_ROOT, read_only=read_only)


def demo_adapters(store: Store | None = None) -> Artifact:
    """The demo adapter set: the newest ``adapters`` artifact in the demo store."""
    store = store or demo_store()
    arts = store.list("adapters")
    if not arts:
        raise ArtifactError("no demo adapter set is committed under cache/demo; build it "
                            "with `python -m interp adapters demo` (needs the organisms)")
    return arts[0]


def demo_eval(store: Store | None = None, adapters_key: str | None = None) -> Artifact:
    store = store or demo_store()
    evs = [a for a in store.list("adapters_eval")
           if adapters_key is None or a.meta.get("adapters_key") == adapters_key]
    if not evs:
        raise ArtifactError("the demo adapter set has no evaluation; run "
                            "`python -m interp report adapters --recompute`")
    return evs[0]


def demo_sweep(store: Store | None = None) -> Artifact | None:
    arts = (store or demo_store()).list("adapters_sweep")
    return arts[0] if arts else None


def select_l1(runs: list[dict[str, Any]], max_l0: float = TARGETS["mean_l0"]
              ) -> float | None:
    """The selection rule for the adapters' L1: among the sweep's runs with mean L0 at
    most ``max_l0`` active features per token per layer, the one that closes the largest
    share of the hybrid -> reasoner KL gap (None when no run is sparse enough)."""
    ok = [r for r in runs if _f(r.get("mean_l0")) is not None and r["mean_l0"] <= max_l0
          and _f(r.get("kl_gap_closed")) is not None]
    return float(max(ok, key=lambda r: r["kl_gap_closed"])["l1"]) if ok else None


def _f(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def report_adapters(args) -> dict[str, Any]:
    """REPORTS.md keys (``kl_gap_closed``, ``mean_l0``, ``dead_fraction``,
    ``hesitation_rate_rel_error``, ``accuracy_recovered``) and the rest of the figures."""
    store = demo_store()
    ad = demo_adapters(store)
    if getattr(args, "recompute", False):
        from .evaluate import evaluate_artifact

        evaluate_artifact(ad, demo_store(read_only=False),
                          device=getattr(args, "device", "auto") or "auto")
    ev = demo_eval(store, ad.key)
    fa, be = ev.meta["faithfulness"], ev.meta.get("behaviour", {})
    der = be.get("derived", {})
    pe = (be.get("per_example") or {}).get("adapter_vs_reasoner") or {}
    out: dict[str, Any] = {
        "kl_gap_closed": fa["kl_gap_closed"], "mean_l0": fa["mean_l0"],
        "dead_fraction": fa["dead_fraction"],
        "hesitation_rate_rel_error": der.get("hesitation_rate_rel_error"),
        "accuracy_recovered": der.get("accuracy_recovered"),
        "answer_agreement": pe.get("answer_agreement"),
        "completion_agreement": pe.get("completion_agreement"),
        "answer_agreement_ci95": pe.get("answer_agreement_ci95"),
        "completion_agreement_ci95": pe.get("completion_agreement_ci95"),
        "token_agreement": pe.get("token_agreement"),
        "token_agreement_ci95": pe.get("token_agreement_ci95"),
        "first_divergence": pe.get("first_divergence"),
        "agreement_by_reasoner_thinking": pe.get("groups"),
        "hybrid_vs_reasoner": (be.get("per_example") or {}).get("hybrid_vs_reasoner"),
        "eval_split": ev.meta.get("split", "eval"),
        "kl_adapter": fa["kl_adapter"], "kl_hybrid": fa["kl_hybrid"],
        "ce_adapter": fa["ce_adapter"], "ce_hybrid": fa["ce_hybrid"],
        "ce_reasoner": fa["ce_reasoner"], "l0_layers": fa["l0_layers"],
        "dead_layers": fa["dead_layers"], "nmse_adapter": fa["nmse_adapter"],
        "nmse_hybrid": fa["nmse_hybrid"], "bridged_a2r": fa["bridged_a2r"],
        "bridged_r2a": fa["bridged_r2a"], "n_eval_tokens": fa["n_tokens"],
        "n_eval_sequences": fa["n_sequences"],
        "hesitation_rel_error_by_mechanism": der.get("hesitation_rel_error_by_mechanism"),
        "think_tokens_rel_error": der.get("think_tokens_rel_error"),
        "adapters_key": ad.key, "eval_key": ev.key, "d_sae": ad.meta.get("d_sae"),
        "n_layers": ad.meta.get("n_layers"), "l1": ad.config.get("l1"),
        "steps": ad.config.get("steps"), "batch_size": ad.config.get("batch_size"),
        "training_seconds": ad.meta.get("training", {}).get("seconds"),
    }
    for name in ("base", "hybrid", "adapter", "reasoner"):
        if name in be:
            for k, v in be[name].items():
                out[f"{name}.{k}"] = v
    own = ev.meta.get("faithfulness_own_generations")
    if own:
        out.update({"kl_gap_closed_own_generations": own["kl_gap_closed"],
                    "kl_adapter_own_generations": own["kl_adapter"],
                    "kl_hybrid_own_generations": own["kl_hybrid"],
                    "mean_l0_own_generations": own["mean_l0"],
                    "n_own_generation_tokens": own["n_tokens"]})
    sw = demo_sweep(store)
    if sw is not None:
        out["sweep"] = [{k: r.get(k) for k in ("l1", "mean_l0", "kl_gap_closed",
                                               "dead_fraction")} for r in sw.meta["runs"]]
        chosen = select_l1(sw.meta["runs"])
        out["l1_selection"] = {
            "rule": f"largest kl_gap_closed among sweep runs with mean_l0 <= "
                    f"{TARGETS['mean_l0']:g}",
            "split": sw.config.get("eval_split", "eval"),
            "sweep_steps": sw.config.get("steps"), "demo_steps": ad.config.get("steps"),
            "selected_l1": chosen, "committed_l1": ad.config.get("l1"),
            "same": chosen is not None and _f(ad.config.get("l1")) == chosen}
    gap, l0 = _f(out["kl_gap_closed"]), _f(out["mean_l0"])
    hes, acc = _f(out["hesitation_rate_rel_error"]), _f(out["accuracy_recovered"])
    out["targets"] = TARGETS
    out["target_met"] = {
        "kl_gap_closed_at_l0": bool(gap is not None and l0 is not None
                                    and gap >= TARGETS["kl_gap_closed"]
                                    and l0 <= TARGETS["mean_l0"]),
        "hesitation_rate": bool(hes is not None and hes <= TARGETS["hesitation_rate_rel_error"]),
        "accuracy_recovered": bool(acc is not None and acc >= TARGETS["accuracy_recovered"]),
    }
    return out
