"""The committed demo artifacts are rebuilt from committed code, and carry no machine's
folder layout: every one records a clean code version and no absolute path."""

from __future__ import annotations

import json

import pytest

from interp.store import PROJECT_ROOT

METAS = sorted((PROJECT_ROOT / "cache" / "demo").glob("*/*/meta.json"))


def _strings(x, where=""):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _strings(v, f"{where}.{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _strings(v, f"{where}[{i}]")
    elif isinstance(x, str):
        yield where, x


def test_there_are_committed_demo_artifacts():
    assert len(METAS) > 10


@pytest.mark.parametrize("meta", METAS, ids=lambda p: p.parent.name)
def test_demo_artifact_provenance_is_clean(meta):
    doc = json.loads(meta.read_text())
    assert doc.get("complete") is True
    version = doc["provenance"]["code_version"]
    assert version and "+dirty" not in version, version
    absolute = [(w, s) for w, s in _strings(doc) if s.startswith(("/", "~")) or ":\\" in s]
    assert not absolute, absolute[:3]
