"""``python -m interp report attribution``: the hesitation study's figures, read from the
committed demo artifact (``cache/demo/hesitation_study``); ``--recompute`` reruns the
study on the demo adapter set and saves it there first (tens of minutes on a CPU)."""

from __future__ import annotations

import sys
from typing import Any

import torch

from ..errors import ArtifactNotFoundError
from ..store import PROJECT_ROOT, Store
from .hesitation import MECHANISMS, feature_name
from .study import KIND

DEMO_ROOT = PROJECT_ROOT / "cache" / "demo"
HEADLINE = ("cluster_purity", "p_wait_drop", "hesitation_rate_drop", "accuracy_change",
            "ablated_feature_fraction", "clamp_induced_rate")


def latest_study(store: Store) -> Any:
    arts = store.list(KIND)
    if not arts:
        raise ArtifactNotFoundError(
            f"no hesitation study in {store.root.name}/; run `python -m interp report "
            "attribution --recompute` or `python -m interp attribution study`")
    return arts[0]


def collect(store: Store) -> dict[str, Any]:
    art = latest_study(store)
    f = art.meta["figures"]
    out: dict[str, Any] = {k: f[k] for k in HEADLINE}
    out.update({k: f[k] for k in f if k not in HEADLINE})
    out["study_key"] = art.key
    out["adapters_key"] = art.meta.get("adapters_key")
    out["code_version"] = art.provenance.get("code_version")
    rk = art.meta["rankings"]["logit_diff"]
    out["top_features"] = [{k: r[k] for k in ("name", "mean_effect", "share_active",
                                                "by_mechanism")} for r in rk[:10]]
    cl = art.meta["clusters"]
    groups: dict[int, list[str]] = {}
    d = art.meta["d_sae"]
    for feat, lab in zip(cl["features"], cl["labels"]):
        groups.setdefault(int(lab), []).append(feature_name(feat, d))
    out["clusters"] = {str(k): v for k, v in sorted(groups.items())}
    out["candidates"] = [{k: c.get(k) for k in (
        "ranking", "kl_weight", "k", "mode", "p_wait_drop", "hesitation_rate_drop",
        "accuracy_change", "collateral_accuracy_change", "lost_corrections", "new_errors",
        "think_tokens_change")} for c in art.meta["candidates"]]
    single = art.tensors.get("ablation.single")
    if single is not None:   # measured single-feature ablations, strongest per mechanism
        out["single_ablation_top"] = {
            m: [{"feature": feature_name(f, d), "p_wait_drop": float(single[f, j]),
                 "collateral_kl": float(single[f, -1])}
                for f in torch.argsort(single[:, j], descending=True)[:5].tolist()]
            for j, m in enumerate(MECHANISMS)}
    return out


def report_attribution(args) -> dict[str, Any]:
    store = Store(root=DEMO_ROOT, read_only=not getattr(args, "recompute", False))
    if getattr(args, "recompute", False):
        from .study import run_study, save_study

        bar = _bar()
        res = run_study({"store": str(DEMO_ROOT), "device": getattr(args, "device", "cpu")},
                        progress=bar)
        save_study(res, store)
    return collect(store)


def _bar():
    from tqdm import tqdm

    bar = tqdm(total=0, file=sys.stderr, dynamic_ncols=True)

    def on(i, n, msg=""):
        bar.total, bar.n = n, i
        bar.set_description(msg[:40])
        bar.refresh()
    return on
