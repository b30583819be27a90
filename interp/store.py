"""Artifact store: every result is saved with its config and provenance.

Layout (one folder per artifact)::

    <root>/<kind>/<key>/
        meta.json              kind, key, config, provenance, extra metadata, file list
        tensors.safetensors    named tensors (optional)
        <other files>          e.g. a SAELens folder, a plot's data as JSON

``key`` is derived from the config (``<kind>-<sha256(canonical JSON)[:16]>``), so the
same config always maps to the same artifact. Writes are atomic: everything is written
into a hidden temporary folder beside the target, flushed, and the folder is renamed
into place in one step. A reader only ever sees folders that were renamed, so a
process killed mid-write leaves at most a ``.tmp-*`` folder that no reader lists and
that :meth:`Store.clean_tmp` removes. Two writers of the same key never mix files:
each writes its own temporary folder and the renames are serialised by a lock file.

No pickle is used anywhere: tensors go to safetensors, everything else to JSON.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from safetensors.torch import load_file, save_file

from .errors import ArtifactError, ArtifactNotFoundError, StorageError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ROOT = Path(os.environ.get("INTERP_CACHE", PROJECT_ROOT / "cache"))
TENSORS_FILE = "tensors.safetensors"
META_FILE = "meta.json"
SCHEMA_VERSION = 1


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: the input of config hashes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.dtype):
        return str(obj).removeprefix("torch.")
    if isinstance(obj, torch.device):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def config_key(kind: str, config: Mapping[str, Any]) -> str:
    digest = hashlib.sha256(canonical_json(config).encode()).hexdigest()[:16]
    return f"{kind}-{digest}"


def tensor_hash(tensors: Mapping[str, torch.Tensor]) -> str:
    """Order-independent SHA-256 over names, dtypes, shapes and raw bytes."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


_CODE_VERSION: str | None = None


def code_version() -> str:
    """Git commit of the project (with ``+dirty``), else a hash of interp/'s sources."""
    global _CODE_VERSION
    if _CODE_VERSION is None:
        try:
            rev = subprocess.run(
                ["git", "rev-parse", "--short=12", "HEAD"],
                cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5, check=True,
            ).stdout.strip()
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no", "--", "interp"],
                cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5,
            ).stdout.strip()
            _CODE_VERSION = rev + ("+dirty" if dirty else "")
        except (OSError, subprocess.SubprocessError):
            h = hashlib.sha256()
            for p in sorted((PROJECT_ROOT / "interp").rglob("*.py")):
                h.update(p.read_bytes())
            _CODE_VERSION = "src-" + h.hexdigest()[:12]
    return _CODE_VERSION


def provenance(models: Mapping[str, Any] | None = None, seed: int | None = None,
               **extra: Any) -> dict[str, Any]:
    """Standard provenance block: model ids + weight hashes, seed, code version, time.

    ``models`` maps a role ("base", "reasoner", ...) to either a model id string or a
    dict such as ``{"id": ..., "weight_hash": ...}`` (``LoadedModel.describe()``).
    """
    return {
        "models": dict(models or {}),
        "seed": seed,
        "code_version": code_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        **extra,
    }


@dataclass
class Artifact:
    """A saved result: its config, provenance, metadata, tensors and folder."""

    kind: str
    key: str
    path: Path
    config: dict[str, Any]
    provenance: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    _tensors: dict[str, torch.Tensor] | None = None
    files: list[str] = field(default_factory=list)

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        if self._tensors is None:
            f = self.path / TENSORS_FILE
            if f.exists():
                self._tensors = load_file(str(f))
            elif TENSORS_FILE in self.files:  # replaced by a concurrent overwrite
                raise ArtifactError(f"artifact {self.key} changed while reading; load it again")
            else:
                self._tensors = {}
        return self._tensors

    def file(self, name: str) -> Path:
        p = self.path / name
        if not p.exists():
            raise ArtifactError(f"artifact {self.key} has no file {name!r}")
        return p

    def read_json(self, name: str) -> Any:
        return json.loads(self.file(name).read_text())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class Store:
    """Artifacts under ``root`` (default: the project's ``cache/``)."""

    def __init__(self, root: str | os.PathLike | None = None, read_only: bool = False):
        self.root = Path(root) if root is not None else DEFAULT_ROOT
        self.read_only = read_only

    # -- paths -------------------------------------------------------------------
    def kind_dir(self, kind: str) -> Path:
        if not kind or "/" in kind or kind.startswith("."):
            raise ArtifactError(f"invalid artifact kind {kind!r}")
        return self.root / kind

    def path(self, kind: str, key: str) -> Path:
        if not key or "/" in key or key.startswith("."):
            raise ArtifactError(f"invalid artifact key {key!r}")
        return self.kind_dir(kind) / key

    @contextlib.contextmanager
    def _lock(self, kind: str) -> Iterator[None]:
        d = self.kind_dir(kind)
        d.mkdir(parents=True, exist_ok=True)
        with open(d / ".lock", "a+") as lf:
            fcntl.flock(lf, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lf, fcntl.LOCK_UN)

    # -- write -------------------------------------------------------------------
    def save(
        self,
        kind: str,
        config: Mapping[str, Any],
        tensors: Mapping[str, torch.Tensor] | None = None,
        *,
        provenance: Mapping[str, Any] | None = None,
        meta: Mapping[str, Any] | None = None,
        files: Mapping[str, bytes | str] | None = None,
        dirs: Mapping[str, os.PathLike | str] | None = None,
        key: str | None = None,
        overwrite: bool = True,
    ) -> Artifact:
        """Write an artifact atomically and return it.

        ``files`` maps relative names to contents; ``dirs`` maps relative names to
        existing folders to copy in (e.g. a SAELens ``save_model`` output).
        With ``overwrite=False`` an existing complete artifact is returned untouched.
        """
        if self.read_only:
            raise StorageError("the artifact store is read-only (demo mode)")
        config = json.loads(canonical_json(dict(config)))
        key = key or config_key(kind, config)
        final = self.path(kind, key)
        kdir = self.kind_dir(kind)
        tmp = kdir / f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            kdir.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
            names: list[str] = []
            if tensors:
                cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
                save_file(cpu, str(tmp / TENSORS_FILE))
                with open(tmp / TENSORS_FILE, "rb") as f:
                    os.fsync(f.fileno())
                names.append(TENSORS_FILE)
            for name, content in (files or {}).items():
                p = tmp / name
                p.parent.mkdir(parents=True, exist_ok=True)
                _write_bytes(p, content.encode() if isinstance(content, str) else content)
                names.append(name)
            for name, src in (dirs or {}).items():
                shutil.copytree(src, tmp / name)
                names.append(name + "/")
            record = {
                "schema_version": SCHEMA_VERSION,
                "kind": kind,
                "key": key,
                "config": config,
                "provenance": dict(provenance or {}),
                "meta": json.loads(canonical_json(dict(meta or {}))),
                "files": names,
                "complete": True,
            }
            # meta.json is written last: a folder without it is never complete.
            _write_bytes(tmp / META_FILE, json.dumps(record, indent=1, sort_keys=True,
                                                     default=_json_default).encode())
            _fsync_dir(tmp)
            with self._lock(kind):
                if final.exists():
                    if not overwrite and self._is_complete(final):
                        shutil.rmtree(tmp, ignore_errors=True)
                        return self.load(kind, key)
                    trash = kdir / f".tmp-trash-{key}-{uuid.uuid4().hex[:8]}"
                    os.rename(final, trash)
                    os.rename(tmp, final)
                    shutil.rmtree(trash, ignore_errors=True)
                else:
                    os.rename(tmp, final)
                _fsync_dir(kdir)
                # read back under the lock: a concurrent writer of the same key may
                # replace the folder as soon as the lock is released
                saved = self.load(kind, key)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageError(
                    f"disk full while saving {kind} artifact {key}; nothing was written"
                ) from e
            raise StorageError(f"could not save {kind} artifact {key}: {e}") from e
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return saved

    # -- read --------------------------------------------------------------------
    @staticmethod
    def _is_complete(path: Path) -> bool:
        try:
            return bool(json.loads((path / META_FILE).read_text()).get("complete"))
        except (OSError, ValueError):
            return False

    def exists(self, kind: str, key: str) -> bool:
        return self._is_complete(self.path(kind, key))

    def load(self, kind: str, key: str) -> Artifact:
        p = self.path(kind, key)
        for attempt in range(5):
            try:
                record = json.loads((p / META_FILE).read_text())
            except FileNotFoundError:
                raise ArtifactNotFoundError(f"no {kind} artifact with key {key}") from None
            except ValueError as e:
                raise ArtifactError(f"{kind} artifact {key} has unreadable metadata: {e}") from e
            if not record.get("complete") or record.get("kind") != kind:
                raise ArtifactError(f"{kind} artifact {key} is incomplete")
            missing = [n for n in record.get("files", []) if not (p / n.rstrip("/")).exists()]
            if not missing:
                break
            # a concurrent overwrite may have swapped the folder after meta.json was read
            time.sleep(0.01 * (attempt + 1))
        else:
            raise ArtifactError(f"{kind} artifact {key} is missing {missing[0]}")
        return Artifact(kind=kind, key=key, path=p, config=record["config"],
                        provenance=record.get("provenance", {}), meta=record.get("meta", {}),
                        files=list(record.get("files", [])))

    def find(self, kind: str, config: Mapping[str, Any]) -> Artifact | None:
        """The artifact saved for exactly this config, or None."""
        key = config_key(kind, json.loads(canonical_json(dict(config))))
        return self.load(kind, key) if self.exists(kind, key) else None

    def list(self, kind: str | None = None) -> list[Artifact]:
        """Complete artifacts of a kind (or all kinds), newest first."""
        kinds = [kind] if kind else sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
        ) if self.root.exists() else []
        out: list[Artifact] = []
        for k in kinds:
            d = self.kind_dir(k)
            if not d.is_dir():
                continue
            for p in d.iterdir():
                if p.is_dir() and not p.name.startswith(".") and self._is_complete(p):
                    try:
                        out.append(self.load(k, p.name))
                    except ArtifactError:
                        continue
        out.sort(key=lambda a: a.provenance.get("created", ""), reverse=True)
        return out

    def delete(self, kind: str, key: str) -> None:
        if self.read_only:
            raise StorageError("the artifact store is read-only (demo mode)")
        p = self.path(kind, key)
        if not p.exists():
            raise ArtifactNotFoundError(f"no {kind} artifact with key {key}")
        with self._lock(kind):
            trash = self.kind_dir(kind) / f".tmp-trash-{key}-{uuid.uuid4().hex[:8]}"
            os.rename(p, trash)  # atomic: readers see it gone at once
        shutil.rmtree(trash, ignore_errors=True)

    def clean_tmp(self) -> int:
        """Remove leftovers of killed writers; returns how many folders went."""
        n = 0
        if not self.root.exists():
            return 0
        for kdir in self.root.iterdir():
            if kdir.is_dir():
                for p in kdir.glob(".tmp-*"):
                    shutil.rmtree(p, ignore_errors=True)
                    n += 1
        return n


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write one JSON file atomically (temp file in the same folder + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
    try:
        _write_bytes(tmp, json.dumps(obj, indent=1, default=_json_default).encode())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StorageError(f"could not write {path.name}: {e}") from e
