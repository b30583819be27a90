"""Linear read-outs of the planted labels from the model's own activations.

A feature's AUROC against a label says whether *one* sparse feature separates it. The
probes here say whether the model represents the label at all, and where: for every
per-token label of a labelled corpus, a logistic regression on the activations at the
label's positions, at each site (the input of each layer's MLP, which is what an
adapter's or transcoder's encoder reads, and each layer's output to the residual
stream), fitted on the even-numbered sequences and scored (AUROC) on the odd-numbered
ones, as the feature table chooses and reports features.

The MLP-input probe of a layer is the reference for that layer's features: an adapter
feature's activation is ``ReLU(w·x + b)`` of the normalised MLP input ``x``, a monotone
function of one linear read-out, so where no linear read-out of ``x`` separates a label,
no single feature of that layer can either. A label that becomes linearly readable only
after a layer's MLP is computed *by* that MLP, non-linearly, and its own features need
not carry it one by one.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from ..errors import ConfigError
from ..length.stats import auroc
from .corpus import SEQ_PREFIX, Corpus

KIND = "features_probe"
Progress = Callable[[int, int], None]


def sites(n_layers: int) -> list[tuple[str, str]]:
    """(display name, TransformerLens hook) of every probed site, in depth order."""
    out = []
    for layer in range(n_layers):
        out.append((f"L{layer} MLP input", f"blocks.{layer}.ln2.hook_normalized"))
        out.append((f"L{layer} output", f"blocks.{layer}.hook_resid_post"))
    return out


def label_probes(hooked: Any, corpus: Corpus, max_seqs: int = 800,
                 progress: Progress | None = None) -> dict[str, Any]:
    """Probe AUROCs ``{"sites", "labels": {label: {site: auroc}}, "counts"}`` (module
    docstring) on the first ``max_seqs`` sequences of ``corpus``; per-sequence labels
    (``seq:``) are skipped. ``hooked`` is the model whose activations are read."""
    from sklearn.linear_model import LogisticRegression

    names = [n for n in corpus.label_names if not n.startswith(SEQ_PREFIX)]
    if not names:
        raise ConfigError("the corpus has no per-token labels to probe")
    st = sites(hooked.cfg.n_layers)
    hooks = {h for _, h in st}
    acts: dict[str, list[np.ndarray]] = {h: [] for h in hooks}
    labs: dict[str, list[np.ndarray]] = {n: [] for n in names}
    seq: list[np.ndarray] = []
    dev = next(hooked.parameters()).device
    for i, item in enumerate(corpus.make()):
        if i >= max_seqs:
            break
        dom = np.zeros(len(item.ids), dtype=bool)
        for n in names:
            dom |= item.labels[n] >= 0
        if not dom.any():
            continue
        with torch.no_grad():
            _, cache = hooked.run_with_cache(torch.tensor([item.ids], device=dev),
                                             names_filter=lambda h: h in hooks)
        keep = torch.from_numpy(dom)
        for h in hooks:
            acts[h].append(cache[h][0].float().cpu()[keep].numpy())
        for n in names:
            labs[n].append(item.labels[n][dom])
        seq.append(np.full(int(dom.sum()), i))
        if progress:
            progress(i + 1, max_seqs)
    if not seq:
        raise ConfigError("no sequence of the corpus has a labelled position")
    idx = np.concatenate(seq)
    X = {h: np.concatenate(v) for h, v in acts.items()}
    out: dict[str, Any] = {"sites": [name for name, _ in st], "labels": {}, "counts": {}}
    for n in names:
        y = np.concatenate(labs[n]).astype(int)
        d = y >= 0
        fit, rep = d & (idx % 2 == 0), d & (idx % 2 == 1)
        out["counts"][n] = {"positives": int((y[d] == 1).sum()),
                            "negatives": int((y[d] == 0).sum())}
        row = {}
        for name, h in st:
            if len(set(y[fit])) < 2 or len(set(y[rep])) < 2:
                row[name] = float("nan")
                continue
            mu, sd = X[h][fit].mean(0), X[h][fit].std(0) + 1e-6
            clf = LogisticRegression(max_iter=3000).fit((X[h][fit] - mu) / sd, y[fit])
            row[name] = auroc(clf.decision_function((X[h][rep] - mu) / sd), y[rep])
        out["labels"][n] = row
    return out


def feature_layer_reference(probes: dict[str, Any], label: str, layer: int) -> float | None:
    """The MLP-input probe AUROC of ``layer`` for ``label`` (None when not probed)."""
    v = probes.get("labels", {}).get(label, {}).get(f"L{layer} MLP input")
    return None if v is None or v != v else float(v)


def best_site(probes: dict[str, Any], label: str) -> tuple[str | None, float | None]:
    """The earliest site whose probe is within 0.005 of the label's best, and its AUROC."""
    row = {k: v for k, v in probes.get("labels", {}).get(label, {}).items() if v == v}
    if not row:
        return None, None
    top = max(row.values())
    for name in probes["sites"]:
        if name in row and row[name] >= top - 0.005:
            return name, row[name]
    return None, None


def save_probes(res: dict[str, Any], model: Any, corpus: Corpus, max_seqs: int, store: Any):
    from ..store import provenance

    cfg = {"model": model.spec, "weight_hash": model.weight_hash, "corpus": corpus.spec,
           "max_seqs": int(max_seqs)}
    return store.save(KIND, cfg, provenance=provenance(models={"model": model.describe()}),
                      meta=res)


def find_probes(store: Any, weight_hash: str) -> Any | None:
    """The newest probe artifact of the model with ``weight_hash`` in ``store``."""
    for a in store.list(KIND):
        if a.config.get("weight_hash") == weight_hash:
            return a
    return None


def probes_for(store: Any, source: dict[str, Any]) -> Any | None:
    """The newest probe artifact of the model a feature collection's source reads
    (``source``: the collection's ``meta["source"]``; adapters: their pair's reasoner,
    transcoders: their model), or None."""
    if source.get("kind") == "adapters":
        h = (source.get("pair_hashes") or {}).get("reasoner")
    else:
        h = source.get("weight_hash")
    return find_probes(store, h) if h else None


def probe_rows(best: Any, probes: dict[str, Any], label_names: list[str]
               ) -> list[dict[str, Any]]:
    """Per label of ``best`` (``FeatureTable.best_per_label``) that was probed: its name,
    the best feature and its report AUROC, the best read-out's site and AUROC, and the
    read-out of the MLP input of the best feature's layer."""
    from .pipeline import label_display

    rows = []
    by_display = {label_display(n): n for n in label_names}
    for _, r in best.iterrows():
        name = by_display.get(r["label"])
        if name is None or name not in probes.get("labels", {}):
            continue
        site, auc = best_site(probes, name)
        layer = int(str(r["feature"]).split(":")[0]) if r["feature"] else None
        rows.append({"label": r["label"], "name": name, "feature": r["feature"],
                     "feature_auroc": r["report_auroc"], "best_site": site,
                     "best_site_auroc": auc,
                     "feature_layer_mlp_input_auroc": None if layer is None
                     else feature_layer_reference(probes, name, layer)})
    return rows


def probe_table(best: Any, probes: dict[str, Any], label_names: list[str]) -> Any:
    """:func:`probe_rows` as the Features page shows them."""
    import pandas as pd

    names = {"label": "label", "feature": "best feature", "feature_auroc": "feature AUROC",
             "best_site": "probe: best site", "best_site_auroc": "probe AUROC",
             "feature_layer_mlp_input_auroc": "probe of the feature layer's MLP input"}
    return pd.DataFrame([{v: r[k] for k, v in names.items()}
                         for r in probe_rows(best, probes, label_names)])
