"""``python -m interp report features``: figures of the committed demo feature collection.

Reads the demo store (``cache/demo``): the newest ``features`` artifact of the demo
adapter set (organism reasoner traces with ground-truth labels) and its
``features_map``. Never collects anything; ``--recompute`` rebuilds both (a few minutes
on a CPU: collection, ablation effects of every live feature, the UMAP).

``best_auroc_per_label``: for each planted label, the AUROC on the report split
(odd-numbered traces) of the feature that has the highest AUROC on the choose split
(even-numbered traces).
"""

from __future__ import annotations

import sys
from typing import Any

from ..errors import ArtifactError
from ..store import Artifact, Store
from .pipeline import label_display

DEMO_N = 2000
TARGET_AUROC = 0.95


def demo_features(store: Store | None = None) -> Artifact:
    """The newest ``features`` artifact of the demo adapter set in the demo store."""
    from ..adapters.report import demo_adapters, demo_store

    store = store or demo_store()
    key = demo_adapters(store).key
    arts = [a for a in store.list("features") if a.config.get("source", {}).get("key") == key]
    if not arts:
        raise ArtifactError("no demo feature collection is committed under cache/demo; build "
                            "it with `python -m interp report features --recompute`")
    return arts[0]


def build_demo(device: str = "auto") -> tuple[Artifact, Artifact]:
    """Collect the demo adapter set's features over organism traces (ablation effects
    of every live feature) and compute its UMAP, into the demo store."""
    from tqdm import tqdm

    from ..adapters.report import demo_adapters, demo_store
    from .collect import CollectConfig
    from .corpus import organism_corpus
    from .featmap import compute_map
    from .pipeline import collect_features
    from .source import AdapterSource

    store = demo_store(read_only=False)
    source = AdapterSource.from_artifact(demo_adapters(store), device)
    bar = tqdm(total=DEMO_N, file=sys.stderr, unit="seq")

    def progress(done: int, total: int, **info: Any) -> None:
        if info.get("stage") == "ablation":
            bar.set_description("ablation")
            bar.total = total
        bar.n = done
        bar.refresh()

    art = collect_features(source, organism_corpus(DEMO_N, seed=0),
                           CollectConfig(batch_size=128), store, progress=progress,
                           ablation="all")
    bar.close()
    m = compute_map(source, store, "umap")
    return art, m


def _size(art: Artifact) -> int:
    return sum(p.stat().st_size for p in art.path.rglob("*") if p.is_file())


def report_features(args) -> dict[str, Any]:
    """REPORTS.md key ``best_auroc_per_label`` and the rest of the figures."""
    from ..adapters.report import demo_store
    from .featmap import find_map
    from .table import FeatureTable

    if getattr(args, "recompute", False):
        build_demo(getattr(args, "device", "auto") or "auto")
    store = demo_store()
    art = demo_features(store)
    tab = FeatureTable(art)
    m = tab.meta
    best = tab.best_per_label()
    out: dict[str, Any] = {
        "best_auroc_per_label": {r["label"]: r["report_auroc"] for _, r in best.iterrows()},
        "best_feature_per_label": {r["label"]: r["feature"] for _, r in best.iterrows()},
        "choose_auroc_per_label": {r["label"]: r["choose_auroc"] for _, r in best.iterrows()},
        "best_fires_on_positives": {r["label"]: r["fires_on_positives"]
                                    for _, r in best.iterrows()},
        "best_fires_on_negatives": {r["label"]: r["fires_on_negatives"]
                                    for _, r in best.iterrows()},
        "label_counts": {r["label"]: {"positives": int(r["n_pos"]), "negatives": int(r["n_neg"])}
                         for _, r in best.iterrows()},
        "split": "choose = even-numbered traces, report = odd-numbered traces",
        "ranking_per_label": {
            label_display(n): [{"id": r["id"], "choose_auroc": r["select_auroc"],
                                "report_auroc": r["eval_auroc"]}
                               for r in m["labels"][n].get("ranking", [])[:5]]
            for n in tab.label_names},
        "hesitation_top": [{**{k: h[k] for k in ("id", "score", "precision", "coverage")},
                            "lens_top_token": tab.token(tab.t["lens_top_ids"][h["g"], 0])}
                           for h in m["hesitation"]["top"][:10]],
        "hesitation_words": m["hesitation"]["words"],
        "hesitation_window": m["hesitation"]["window"],
        "n_features": m["n_features"], "alive_fraction": m["alive_fraction"],
        "n_sequences": m["n_sequences"], "n_tokens": m["n_tokens"],
        "n_ablation_effects": m.get("n_ablation"),
        "collect_tokens_per_s": m["timing"].get("tokens_per_s"),
        "collect_seconds": m["timing"].get("collect_seconds"),
        "finalize_seconds": m["timing"].get("finalize_seconds"),
        "ablation_seconds": m["timing"].get("ablation_seconds"),
        "collection_key": art.key, "source_key": tab.source_key,
        "collection_bytes": _size(art),
        "code_version": art.provenance.get("code_version"),
    }
    fm = find_map(tab.source_key, [store])
    if fm is not None:
        out["map"] = {"key": fm.key, "method": fm.config["method"],
                      "seconds": fm.meta.get("seconds"), "n_placed": fm.meta.get("n_placed"),
                      "bytes": _size(fm)}
    out.update(_probe_figures(tab, best, store))
    vals = [v for v in out["best_auroc_per_label"].values() if v is not None]
    out["target_auroc"] = TARGET_AUROC
    out["labels_meeting_target"] = sorted(k for k, v in out["best_auroc_per_label"].items()
                                          if v is not None and v >= TARGET_AUROC)
    out["target_met"] = bool(vals) and all(v >= TARGET_AUROC for v in vals)
    return out


def _probe_figures(tab: Any, best: Any, store: Store) -> dict[str, Any]:
    """``label_probes``: per planted label, the best linear read-out of the reasoner's
    activations (site and AUROC) and the read-out of the MLP input of the best
    feature's layer (what any single feature there is a function of); absent until
    ``python -m interp features probe --store demo`` has run."""
    from .probe import probe_rows, probes_for

    art = probes_for(store, tab.meta.get("source") or {})
    if art is None:
        return {}
    out = {r["label"]: {k: r[k] for k in ("best_site", "best_site_auroc",
                                          "feature_layer_mlp_input_auroc")}
           | {"by_site": art.meta["labels"][r["name"]]}
           for r in probe_rows(best, art.meta, tab.label_names)}
    return {"label_probes": out, "probe_key": art.key}
