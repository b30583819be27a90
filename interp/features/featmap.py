"""The feature map: every feature of a source placed in 2-d by its decoder direction.

Computed once per source (adapter set or transcoder set) and saved as a
``features_map`` artifact (config: the source key, the method and its parameters), so
the Features page only ever loads it. Method ``umap`` (default): UMAP (umap-learn,
imported lazily: its first import and first fit in a process take tens of seconds) on
the unit-normalised decoder rows with the cosine metric. Method ``pca``: the first two
principal components of the same rows (instant; a quick look, and what the fast tests
use). Features whose decoder row is (numerically) zero have no direction and get NaN
coordinates (the page leaves them out and says how many).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..store import Artifact, Store, provenance
from .source import FeatureSource

KIND = "features_map"
METHODS = ("umap", "pca")
DEFAULTS = {"n_neighbors": 15, "min_dist": 0.1, "seed": 0}
ZERO_NORM = 1e-8


def map_config(source_key: str, method: str = "umap", **params: Any) -> dict[str, Any]:
    if method not in METHODS:
        raise ConfigError(f"unknown map method {method!r}; choose from {', '.join(METHODS)}")
    p = {**DEFAULTS, **params} if method == "umap" else {"seed": params.get("seed", 0)}
    return {"source_key": source_key, "method": method, "params": p}


def layout(W: np.ndarray, method: str = "umap", n_neighbors: int = 15,
           min_dist: float = 0.1, seed: int = 0) -> np.ndarray:
    """2-d coordinates ``[F, 2]`` of the rows of ``W`` (NaN for zero rows)."""
    W = np.asarray(W, dtype=np.float32)
    norms = np.linalg.norm(W, axis=1)
    ok = norms > ZERO_NORM
    out = np.full((len(W), 2), np.nan, dtype=np.float32)
    X = W[ok] / norms[ok, None]
    if len(X) < 3:
        out[ok] = 0.0
        return out
    if method == "pca":
        Xc = X - X.mean(0)
        _, _, vt = np.linalg.svd(Xc, full_matrices=False)
        Y = Xc @ vt[:2].T
        if Y.shape[1] < 2:
            Y = np.pad(Y, ((0, 0), (0, 2 - Y.shape[1])))
    elif method == "umap":
        import umap  # lazy: slow first import

        nn = max(2, min(int(n_neighbors), len(X) - 1))
        Y = umap.UMAP(n_neighbors=nn, min_dist=float(min_dist), metric="cosine",
                      random_state=int(seed), n_jobs=1).fit_transform(X)
    else:
        raise ConfigError(f"unknown map method {method!r}")
    out[ok] = Y.astype(np.float32)
    return out


def decoder_matrix(source: FeatureSource) -> torch.Tensor:
    """All decoder rows, layer after layer (global feature order), ``[F, d_model]``."""
    return torch.cat([source.decoder(layer) for layer in source.layers])


def compute_map(source: FeatureSource, store: Store, method: str = "umap",
                **params: Any) -> Artifact:
    """Compute and save the map of ``source`` (overwrites an existing one)."""
    cfg = map_config(source.key, method, **params)
    W = decoder_matrix(source).numpy()
    t0 = time.perf_counter()
    xy = layout(W, method, **cfg["params"])
    secs = time.perf_counter() - t0
    layer_of = np.concatenate([np.full(source.d_sae[layer], layer) for layer in source.layers])
    return store.save(KIND, cfg, {"xy": torch.from_numpy(xy),
                                  "layer": torch.from_numpy(layer_of.astype(np.int64))},
                      provenance=provenance(models={"source": source.describe()},
                                            seed=cfg["params"].get("seed")),
                      meta={"seconds": secs, "n_features": len(W),
                            "n_placed": int(np.isfinite(xy[:, 0]).sum()),
                            "source": source.describe()})


def find_map(source_key: str, stores: list[Store], method: str | None = None
             ) -> Artifact | None:
    """The newest saved map of ``source_key`` in the first store that has one."""
    for st in stores:
        arts = [a for a in st.list(KIND) if a.config.get("source_key") == source_key
                and (method is None or a.config.get("method") == method)]
        if arts:
            return arts[0]
    return None


def ensure_map(source: FeatureSource, store: Store, method: str = "umap") -> Artifact:
    """The saved map of ``source`` with the default parameters, computed if missing."""
    found = store.find(KIND, map_config(source.key, method))
    return found if found is not None else compute_map(source, store, method)
