"""Short, editable feature labels that travel with exports.

Labels of one feature source (``source_key``: an adapters artifact key, or a transcoder
source key) live in one ``feature_labels`` artifact of a store, whose key is derived from
the source key; its meta holds ``{"labels": {"<layer>:<feature>": text}}``. Writes go
through :meth:`interp.store.Store.save` (atomic), under a lock file so that two writers
never lose each other's labels.

API (what graph exporters call)::

    load_labels(source_key, store) -> {(layer, feature): text}
    save_label(source_key, layer, feature, text, store)   # empty text removes the label

A read-only store (the hosted demo) raises :class:`~interp.errors.StorageError` on save.
"""

from __future__ import annotations

from typing import ContextManager

from ..errors import ConfigError, StorageError
from ..store import Store, config_key, dir_lock, provenance

KIND = "feature_labels"
MAX_LABEL_CHARS = 200


def _config(source_key: str) -> dict[str, str]:
    return {"source_key": str(source_key)}


def _key(source_key: str) -> str:
    return config_key(KIND, _config(source_key))


def load_labels(source_key: str, store: Store) -> dict[tuple[int, int], str]:
    """Every saved label of the source: ``{(layer, feature): text}`` ({} when none)."""
    if not store.exists(KIND, _key(source_key)):
        return {}
    raw = store.load(KIND, _key(source_key)).meta.get("labels", {})
    out = {}
    for k, v in raw.items():
        layer, feat = k.split(":")
        out[(int(layer), int(feat))] = str(v)
    return out


def _writer_lock(store: Store) -> ContextManager[None]:
    return dir_lock(store.kind_dir(KIND), ".labels.lock")


def save_label(source_key: str, layer: int, feature: int, text: str, store: Store) -> None:
    """Set (or, with empty ``text``, remove) the label of ``(layer, feature)``."""
    if store.read_only:
        raise StorageError("labels cannot be saved here: the artifact store is read-only "
                           "(hosted demo)")
    text = " ".join(str(text).split())
    if len(text) > MAX_LABEL_CHARS:
        raise ConfigError(f"a label has at most {MAX_LABEL_CHARS} characters")
    if int(layer) < 0 or int(feature) < 0:
        raise ConfigError("layer and feature must be non-negative")
    with _writer_lock(store):
        labels = {f"{k[0]}:{k[1]}": v for k, v in load_labels(source_key, store).items()}
        name = f"{int(layer)}:{int(feature)}"
        if text:
            labels[name] = text
        else:
            labels.pop(name, None)
        store.save(KIND, _config(source_key), provenance=provenance(),
                   meta={"labels": labels}, key=_key(source_key))


def merged_labels(source_key: str, stores: list[Store]) -> dict[tuple[int, int], str]:
    """Labels from several stores; later stores win (e.g. ``[demo, local]``)."""
    out: dict[tuple[int, int], str] = {}
    for st in stores:
        out.update(load_labels(source_key, st))
    return out
