"""Thinking-length directions: ``dir_l = mean_long - mean_short`` per layer and site.

Sign convention: the direction points from *short* to *long* thinking (long − short),
unnormalised (its norm is the distance between the class means). The *unit short
direction* used for heads and the weight edit is ``-dir_l / ||dir_l||``.

Inputs are per-example mean activations over the thinking positions (see
:mod:`interp.length.data`, positions rule ``think``): ``{site: [n, n_layers, d_model]}``
with labels ``1`` long, ``0`` short, ``-1`` unused.

Separability per layer is measured on held-out examples: the data are split per class
(``test_fraction``, seeded); the direction is computed on the training part and the
held-out examples are scored by their projection onto it (AUROC, long = positive);
a logistic-regression probe trained on the same split gives held-out accuracy. The
saved direction itself uses all labelled examples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import ArtifactError, ConfigError
from .stats import auroc

ARTIFACT_KIND = "length_direction"


@dataclass
class LengthDirections:
    """Per-site ``[n_layers, d_model]`` tensors and their conventions (``meta``)."""

    dirs: dict[str, torch.Tensor]
    mean_long: dict[str, torch.Tensor]
    mean_short: dict[str, torch.Tensor]
    auroc: dict[str, list[float]]
    probe_accuracy: dict[str, list[float]]
    cosine: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def sites(self) -> list[str]:
        return list(self.dirs)

    @property
    def n_layers(self) -> int:
        return int(next(iter(self.dirs.values())).shape[0])

    def norms(self, site: str) -> list[float]:
        return [float(x) for x in self.dirs[site].norm(dim=-1)]

    def unit_short(self, site: str, layer: int) -> torch.Tensor:
        """``-dir_l / ||dir_l||``: the unit vector pointing towards short thinking."""
        v = self.dirs[site][layer]
        return -v / v.norm().clamp_min(1e-12)

    def best(self) -> dict[str, Any]:
        """The (site, layer) with the highest held-out AUROC."""
        best = {"site": None, "layer": None, "auroc": -1.0}
        for s, vals in self.auroc.items():
            for layer, a in enumerate(vals):
                if np.isfinite(a) and a > best["auroc"]:
                    best = {"site": s, "layer": layer, "auroc": float(a),
                            "probe_accuracy": self.probe_accuracy[s][layer]}
        return best

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for s in self.sites:
            out[f"dir.{s}"] = self.dirs[s]
            out[f"mean_long.{s}"] = self.mean_long[s]
            out[f"mean_short.{s}"] = self.mean_short[s]
            out[f"cosine.{s}"] = self.cosine[s]
        return out

    @classmethod
    def from_artifact(cls, art) -> LengthDirections:
        t, m = art.tensors, art.meta
        sites = m.get("sites") or []
        if not sites:
            raise ArtifactError(f"{art.key} is not a length-direction artifact")
        return cls(dirs={s: t[f"dir.{s}"] for s in sites},
                   mean_long={s: t[f"mean_long.{s}"] for s in sites},
                   mean_short={s: t[f"mean_short.{s}"] for s in sites},
                   auroc={s: m["auroc"][s] for s in sites},
                   probe_accuracy={s: m["probe_accuracy"][s] for s in sites},
                   cosine={s: t[f"cosine.{s}"] for s in sites}, meta=dict(m))


def cosine_matrix(d: torch.Tensor) -> torch.Tensor:
    """``[L, L]`` cosine similarity between the rows of ``d`` ``[L, d_model]``."""
    u = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return u @ u.T


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)`` of the labelled examples, split per class."""
    rng = np.random.default_rng(seed)
    tr, te = [], []
    for c in (0, 1):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        k = int(round(test_fraction * len(idx)))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        te.append(idx[:k])
        tr.append(idx[k:])
    return np.concatenate(tr), np.concatenate(te)


def _probe_accuracy(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray
                    ) -> float:
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:  # optional dependency
        return float("nan")
    if len(np.unique(ytr)) < 2 or len(yte) == 0:
        return float("nan")
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    clf = LogisticRegression(max_iter=500, C=1.0)
    clf.fit((xtr - mu) / sd, ytr)
    return float((clf.predict((xte - mu) / sd) == yte).mean())


def thinking_length_direction(feats: Mapping[str, torch.Tensor], labels, *,
                              test_fraction: float = 0.3, seed: int = 0,
                              meta: Mapping[str, Any] | None = None) -> LengthDirections:
    """Directions, held-out separability and cross-layer cosines (module docstring).

    ``feats``: ``{site: Float[Tensor, "n n_layers d_model"]}``; ``labels``: ``[n]`` ints.
    """
    y = np.asarray(labels).astype(int)
    if (y == 1).sum() < 2 or (y == 0).sum() < 2:
        raise ConfigError(f"need at least 2 long and 2 short examples, have "
                          f"{int((y == 1).sum())} long and {int((y == 0).sum())} short")
    tr, te = stratified_split(y, test_fraction, seed)
    yt = torch.as_tensor(y)
    out = LengthDirections({}, {}, {}, {}, {}, {}, {})
    for site, x in feats.items():
        x = x.float()
        ml, ms = x[yt == 1].mean(0), x[yt == 0].mean(0)
        out.mean_long[site], out.mean_short[site] = ml, ms
        out.dirs[site] = ml - ms
        out.cosine[site] = cosine_matrix(ml - ms)
        trl = torch.as_tensor(tr[y[tr] == 1])
        trs = torch.as_tensor(tr[y[tr] == 0])
        d_tr = x[trl].mean(0) - x[trs].mean(0)            # [L, d]
        aucs, accs = [], []
        for layer in range(x.shape[1]):
            proj = (x[te, layer] @ d_tr[layer]).numpy()
            aucs.append(auroc(proj, y[te]))
            accs.append(_probe_accuracy(x[tr, layer].numpy(), y[tr], x[te, layer].numpy(),
                                        y[te]))
        out.auroc[site], out.probe_accuracy[site] = aucs, accs
    resid_norm = {s: [float(v) for v in feats[s][y >= 0].float().norm(dim=-1).mean(0)]
                  for s in feats}
    out.meta = {
        "sites": list(feats), "sign": "long - short (unnormalised)",
        "hook_names": {s: f"blocks.{{layer}}.hook_{s}" for s in feats},
        "n_long": int((y == 1).sum()), "n_short": int((y == 0).sum()),
        "n_train": int(len(tr)), "n_test": int(len(te)), "test_fraction": test_fraction,
        "split_seed": seed, "auroc": out.auroc, "probe_accuracy": out.probe_accuracy,
        "norms": {s: out.norms(s) for s in feats}, "mean_resid_norm": resid_norm,
        "separability_rule": "held-out AUROC of the projection onto the train-split "
                             "direction (long positive); probe = logistic regression",
        **dict(meta or {}),
    }
    out.meta["best"] = out.best()
    return out
