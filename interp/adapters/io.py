"""Saving and loading adapter sets.

An ``adapters`` artifact (:class:`interp.store.Store`) holds:

* ``layer_<l>/cfg.json`` + ``layer_<l>/sae_weights.safetensors``: each layer's sparse
  branch in the SAELens transcoder format (architecture ``transcoder``: ``W_enc [d_in,
  d_sae]``, ``b_enc``, ``W_dec [d_sae, d_out]``, ``b_dec``; ``apply_b_dec_to_input`` false;
  metadata ``hook_name`` = ``blocks.<l>.ln2.hook_normalized``, ``hook_name_out`` =
  ``blocks.<l>.hook_mlp_out``), loadable with ``sae_lens.Transcoder.load_from_disk``;
* ``meta.json`` (the manifest): the pair (ids + weight hashes), hook names, conventions,
  the training config and its small-model scaling, training summary.

Weights are written and read as float32 tensors, byte for byte (tested).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..errors import ArtifactError
from ..store import Artifact, Store, provenance
from .model import MLP_IN_HOOK, MLP_OUT_HOOK
from .module import AdapterSet

KIND = "adapters"
WEIGHTS = "sae_weights.safetensors"

CONVENTIONS = {
    "formula": "y_l(x) = MLP_base,l(x_mlp) + W_dec^T ReLU(W_enc^T x + b_enc) + b_dec",
    "input": "x = blocks.{l}.ln2.hook_normalized (after the pre-MLP norm, before its gain)",
    "output": "added to blocks.{l}.hook_mlp_out",
    "layout": "SAELens: W_enc [d_in, d_sae], W_dec [d_sae, d_out]",
    "backbone": "reasoner embeddings/attention/norms/unembedding + base MLPs + adapters",
    "layer_index": "0-based TransformerLens block index",
    "weights": "TransformerLens unprocessed (no LN folding, no centring)",
}

SCALING_NOTE = (
    "Source defaults (7B): 8,192 features/layer (~2.3 x d_model), lr 8e-4, l1 1e-3, one "
    "10k-token sequence per step, 1 epoch of ~50k traces. Here: d_sae = 4 x d_model unless "
    "set, batches of 16 organism traces, a fixed step count, lr 2e-3 (much shorter run), "
    "l1 chosen by sweep (default 3e-2: the L1 term is in residual units); lambdas, warm-up "
    "share, clipping as the source. Bridged term estimated on bridge_fraction of each "
    "batch's sequences (unbiased; cheaper)."
)


def layer_dir(layer: int) -> str:
    return f"layer_{layer}"


def _saelens_transcoder(adapters: AdapterSet, layer: int, model_name: str):
    from sae_lens import Transcoder, TranscoderConfig
    from sae_lens.saes.sae import SAEMetadata

    a = adapters[layer]
    cfg = TranscoderConfig(
        d_in=a.d_in, d_sae=a.d_sae, d_out=a.d_out, dtype="float32", device="cpu",
        apply_b_dec_to_input=False, normalize_activations="none",
        metadata=SAEMetadata(model_name=model_name, hook_name=MLP_IN_HOOK.format(layer=layer),
                             hook_name_out=MLP_OUT_HOOK.format(layer=layer),
                             hook_layer=layer, hook_layer_out=layer,
                             prepend_bos=True, context_size=None,
                             model_class_name="HookedTransformer"))
    tc = Transcoder(cfg)
    with torch.no_grad():
        tc.load_state_dict({k: v.detach().float().cpu().clone()
                            for k, v in a.state_dict().items()})
    return tc


def export_saelens(adapters: AdapterSet, out_dir: str | Path, model_name: str = "hybrid"
                   ) -> list[Path]:
    """Write ``layer_<l>/`` SAELens transcoder folders under ``out_dir``."""
    out = Path(out_dir)
    paths = []
    for layer in range(adapters.n_layers):
        p = out / layer_dir(layer)
        _saelens_transcoder(adapters, layer, model_name).save_model(p)
        paths.append(p)
    return paths


def thin_history(history: list[dict[str, Any]], max_points: int = 400) -> list[dict[str, Any]]:
    """At most ``max_points`` records, evenly spaced, the last one always kept."""
    if len(history) <= max_points:
        return list(history)
    step = len(history) / max_points
    idx = sorted({int(i * step) for i in range(max_points)} | {len(history) - 1})
    return [history[i] for i in idx]


def adapters_config(setup: Any, cfg: Any) -> dict[str, Any]:
    """The config (artifact key input) of an adapter set trained with ``cfg`` on the
    setup's pair: the training identity, d_sae and the pair's weight hashes."""
    pair = {"base": _describe(setup.base), "reasoner": _describe(setup.reasoner)}
    ident = cfg.identity() if hasattr(cfg, "identity") else dict(cfg)
    return {**ident, "d_sae": setup.model.adapters.d_sae,
            "pair_hashes": {k: v.get("weight_hash") for k, v in pair.items()}}


def save_adapters(setup: Any, cfg: Any, training: dict[str, Any] | None = None,
                  store: Store | None = None,
                  history: list[dict[str, Any]] | None = None) -> Artifact:
    """Save ``setup.model.adapters`` + manifest as an ``adapters`` artifact (with the
    training curve as ``history.json`` when given, thinned to 400 points). The SAELens
    folders are written straight into the artifact's temporary folder (nothing staged
    in the system temp dir); weights holding NaN or infinity are refused
    (NonFiniteError, nothing written)."""
    from ..validate import finite_tensors

    adapters = setup.model.adapters
    finite_tensors(adapters.tensors(), "the adapter set")
    base, reasoner = setup.base, setup.reasoner
    pair = {"base": _describe(base), "reasoner": _describe(reasoner)}
    store = store or Store(getattr(cfg, "store_root", None))
    config = adapters_config(setup, cfg)
    meta = {
        "pair": pair,
        "n_layers": adapters.n_layers, "d_model": adapters.d_model, "d_sae": adapters.d_sae,
        "layers": [layer_dir(layer) for layer in range(adapters.n_layers)],
        "hooks": {"input": MLP_IN_HOOK, "output": MLP_OUT_HOOK},
        "conventions": CONVENTIONS,
        "scaling": SCALING_NOTE,
        "training_config": _portable(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)),
        "training": training or {},
        "format": "saelens-transcoder",
    }
    name = f"hybrid({pair['reasoner'].get('id')}+{pair['base'].get('id')} MLPs)"
    writers = {layer_dir(layer): (lambda p, layer=layer:
                                  _saelens_transcoder(adapters, layer, name).save_model(p))
               for layer in range(adapters.n_layers)}
    files = {"history.json": json.dumps(thin_history(history))} if history else None
    return store.save(KIND, config, provenance=provenance(
        models=pair, seed=getattr(cfg, "seed", None)), meta=meta, writers=writers, files=files)


def _describe(m: Any) -> dict[str, Any]:
    if hasattr(m, "describe"):
        return m.describe()
    return {"id": str(getattr(getattr(m, "cfg", None), "model_name", "unknown"))}


def load_adapter_tensors(art: Artifact) -> AdapterSet:
    """The artifact's adapters as an :class:`AdapterSet` (CPU, float32), read directly
    from the SAELens safetensors files."""
    meta = art.meta
    n, d, k = meta.get("n_layers"), meta.get("d_model"), meta.get("d_sae")
    if not (n and d and k):
        raise ArtifactError(f"adapters artifact {art.key} has an incomplete manifest")
    ad = AdapterSet(n, d, k)
    tensors = {}
    for layer in range(n):
        f = art.path / layer_dir(layer) / WEIGHTS
        if not f.exists():
            raise ArtifactError(f"adapters artifact {art.key} lacks {layer_dir(layer)}/{WEIGHTS}")
        for name, t in load_file(str(f)).items():
            tensors[f"{layer}.{name}"] = t
    ad.load_tensors(tensors)
    return ad


def load_saelens(art: Artifact, layer: int, device: str = "cpu"):
    """One layer as a ``sae_lens.Transcoder`` (via SAELens' own loader)."""
    from sae_lens import Transcoder

    return Transcoder.load_from_disk(str(art.path / layer_dir(layer)), device=device)


def find_adapters(store: Store | None = None, key: str | None = None) -> Artifact:
    """A saved adapters artifact by key, else the newest one; ArtifactError if none."""
    store = store or Store()
    if key:
        return store.load(KIND, key)
    arts = store.list(KIND)
    if not arts:
        raise ArtifactError("no adapters artifact saved yet; train one "
                            "(`python -m interp adapters train`)")
    return arts[0]


def manifest_summary(art: Artifact) -> dict[str, Any]:
    m = art.meta
    return {"key": art.key, "d_sae": m.get("d_sae"), "n_layers": m.get("n_layers"),
            "l1": art.config.get("l1"), "steps": art.config.get("steps"),
            "pair": {k: v.get("id") for k, v in m.get("pair", {}).items()},
            "created": art.provenance.get("created"),
            "final": json.loads(json.dumps(m.get("training", {}).get("final", {})))}


def history_of(art: Artifact) -> list[dict[str, Any]]:
    """The training curve saved with an adapters artifact ([] when none was saved)."""
    f = art.path / "history.json"
    return json.loads(f.read_text()) if f.exists() else []


def pair_name(art: Artifact) -> str:
    """``reasoner − base``: the pair an adapters artifact was trained on (model ids)."""
    pair = art.meta.get("pair", {})

    def short(role: str) -> str:
        i = str((pair.get(role) or {}).get("id", "?"))
        return i if len(i) <= 28 else "…" + i[-27:]

    return f"{short('reasoner')} − {short('base')}"


def catalog(stores: dict[str, Store]) -> list[dict[str, Any]]:
    """Every adapters artifact in the named stores with its newest evaluation (or None):
    ``[{"label", "store", "artifact", "eval", "pair", "stale"}]``, demo-store entries
    first as given. ``label`` names the pair (``reasoner − base``) and ends with the key's
    last 8 characters; ``stale`` lists the pair's models whose weights changed since
    the run (:func:`interp.models.stale_models`)."""
    from ..models import stale_models

    out = []
    for sname, store in stores.items():
        evals: dict[str, Artifact] = {}
        for ev in store.list("adapters_eval"):  # newest first: keep the first per key
            evals.setdefault(ev.meta.get("adapters_key", ""), ev)
        for art in store.list(KIND):
            l1 = art.config.get("l1")
            pair = pair_name(art)
            label = (f"{sname} · {pair} · l1={l1:g} · {art.config.get('steps')} steps · "
                     f"{art.key[-8:]}") if isinstance(l1, (int, float)) else \
                f"{sname} · {pair} · {art.key}"
            out.append({"label": label, "store": sname, "artifact": art,
                        "eval": evals.get(art.key), "pair": pair,
                        "stale": stale_models(art.meta.get("pair", {}))})
    return out


def trained_on(art: Artifact) -> tuple[str, str]:
    """(base spec, reasoner spec) an adapters artifact was trained on: its config, else
    the model ids its provenance records."""
    pair = art.meta.get("pair", {})
    return tuple(str(art.config.get(role) or (pair.get(role) or {}).get("id") or "")
                 for role in ("base", "reasoner"))  # type: ignore[return-value]


def runs_of_pair(runs: list[dict[str, Any]], base: str, fine: str) -> list[dict[str, Any]]:
    """The :func:`catalog` entries trained on the pair (``base``, ``fine``)."""
    from ..models import same_model

    return [r for r in runs if all(same_model(a, b) for a, b in
                                   zip(trained_on(r["artifact"]), (base, fine)))]


def _portable(d: dict[str, Any]) -> dict[str, Any]:
    """Paths inside the project recorded relative to it (artifacts get committed and
    shared; a machine's folder layout does not belong in them)."""
    from ..store import PROJECT_ROOT

    out = dict(d)
    for k, v in d.items():
        if isinstance(v, str) and v.startswith(str(PROJECT_ROOT) + os.sep):
            out[k] = os.path.relpath(v, PROJECT_ROOT)
    return out
