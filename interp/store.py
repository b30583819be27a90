"""Artifact store: every result is saved with its config and provenance.

Layout (one folder per artifact)::

    <root>/<kind>/<key>/
        meta.json              kind, key, config, provenance, extra metadata, file list
                               and sizes
        tensors.safetensors    named tensors (optional)
        <other files>          e.g. a SAELens folder, a plot's data as JSON

``key`` is derived from the config (``<kind>-<sha256(canonical JSON)[:16]>``), so the
same config always maps to the same artifact. Writes are atomic: everything is written
into a hidden temporary folder beside the target (``.tmp-w<pid>-<id>-<key>``), flushed,
and renamed into place in one step; an existing artifact is replaced by swapping the two
folders atomically (``renameat2(RENAME_EXCHANGE)`` on Linux; elsewhere two renames, the
old folder parked as ``.tmp-old-<id>-<key>`` in between). A reader only ever sees
complete folders. A process killed mid-write leaves at most hidden ``.tmp-*`` folders
that no reader lists; :meth:`Store.clean` (``python -m interp store clean``) removes those
of writers that are gone and, should a kill have fallen between the two renames,
first puts the artifact back in place. Two writers of the same key never mix files: each
writes its own temporary folder and the swaps are serialised by a lock file.

Reading tells *missing* from *corrupt*: a folder without readable metadata, or whose
files are missing or not the recorded size, raises :class:`ArtifactCorruptError` (never
"not found"), as does a tensors file that cannot be parsed.

No pickle is used anywhere: tensors go to safetensors, everything else to JSON.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from safetensors.torch import load_file, save_file

from .errors import ArtifactCorruptError, ArtifactError, ArtifactNotFoundError, StorageError

log = logging.getLogger(__name__)

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
                self._tensors = _load_tensors(f, self.kind, self.key)
            elif TENSORS_FILE in self.files:
                if self.path.exists():
                    raise ArtifactCorruptError(
                        f"{self.kind} artifact {self.key} has lost its {TENSORS_FILE} "
                        f"({self.path}); {CORRUPT_HELP}")
                # replaced or deleted by another writer since it was loaded
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
        try:
            return json.loads(self.file(name).read_text())
        except ValueError as e:
            raise ArtifactCorruptError(f"{self.kind} artifact {self.key}: {name} is not "
                                       f"valid JSON ({e}); {CORRUPT_HELP}") from None


CORRUPT_HELP = ("`python -m interp store check` lists damaged artifacts; move the folder "
                "away to keep it, or remove it with `python -m interp store delete KIND KEY` "
                "and rebuild")


def _load_tensors(f: Path, kind: str, key: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError

    try:
        return load_file(str(f))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ArtifactCorruptError(
            f"{kind} artifact {key}: {f.name} cannot be read, it is truncated or damaged "
            f"({str(e).splitlines()[0]}); {CORRUPT_HELP}") from None


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


def _disk_full(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return "os error 28" in text or "No space left" in text or "StorageFull" in text \
        or "os error 122" in text


def _save_tensors(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    """safetensors ``save_file`` + fsync; library I/O errors become OSError-like
    StorageErrors (the library raises its own exception type, not OSError)."""
    from safetensors import SafetensorError

    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    try:
        save_file(cpu, str(path))
    except SafetensorError as e:
        raise OSError(errno.ENOSPC if _disk_full(e) else errno.EIO,
                      str(e).splitlines()[0]) from None
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def storage_error(e: BaseException, what: str) -> StorageError:
    """A one-line StorageError for an OSError (or a library I/O error) while ``what``."""
    if _disk_full(e):
        return StorageError(f"disk full while {what}; nothing was written (free some space "
                            "and run it again)")
    if isinstance(e, PermissionError) or getattr(e, "errno", None) in (errno.EACCES,
                                                                         errno.EROFS,
                                                                         errno.EPERM):
        return StorageError(f"no permission while {what} ({getattr(e, 'filename', '') or e}); "
                            "is the cache read-only? set INTERP_CACHE to a writable folder")
    return StorageError(f"could not finish {what}: {e}")


# ------------------------------------------------------------------ atomic swap
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_renameat2_fn: Any = None


def _renameat2():
    global _renameat2_fn
    if _renameat2_fn is None:
        _renameat2_fn = False
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                fn = ctypes.CDLL(None, use_errno=True).renameat2
                fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                               ctypes.c_uint]
                fn.restype = ctypes.c_int
                _renameat2_fn = fn
    return _renameat2_fn or None


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step; False where the OS or file system
    cannot (the caller then falls back to two renames)."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


# ------------------------------------------------------------------ leftovers
# Names of the hidden folders/files writers use; each says whether (and how) the writer's
# pid and the artifact key can be read back, so a cleaner never touches a live write.
_LEFTOVERS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("new", re.compile(r"^\.tmp-w(?P<pid>\d+)-[0-9a-f]{8}-(?P<key>[^/]+)$")),
    ("old", re.compile(r"^\.tmp-old-[0-9a-f]{8}-(?P<key>[^/]+)$")),
    ("deleted", re.compile(r"^\.tmp-del-[0-9a-f]{8}-(?P<key>[^/]+)$")),
    ("old", re.compile(r"^\.tmp-trash-(?P<key>[^/]+)-[0-9a-f]{8}$")),         # earlier format
    ("new", re.compile(r"^\.tmp-(?P<key>[^/]+)-(?P<pid>\d+)-[0-9a-f]{8}$")),  # earlier format
    ("file", re.compile(r"^\..+\.(?P<pid>\d+)\.[0-9a-f]{6}\.tmp$")),   # write_json_atomic
    ("file", re.compile(r"^\..+\.tmp-p(?P<pid>\d+)-[0-9a-f]{8}$")),    # tmp_sibling()
    ("file", re.compile(r"^\.tmp-w(?P<pid>\d+)-.+$")),                 # other pid-named temps
    ("file", re.compile(r"^\..+\.tmp-(?:build-)?(?P<pid>\d+)-[0-9a-f]{6}$")),  # organisms
)


def tmp_sibling(path: str | os.PathLike) -> Path:
    """A hidden temporary path beside ``path`` that :meth:`Store.clean` recognises (it
    carries this process's pid, so a cleaner leaves it alone while this process lives)."""
    p = Path(path)
    return p.with_name(f".{p.name}.tmp-p{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _classify_leftover(name: str) -> tuple[str, int | None, str | None] | None:
    for what, rx in _LEFTOVERS:
        m = rx.match(name)
        if m:
            gd = m.groupdict()
            return what, int(gd["pid"]) if gd.get("pid") else None, gd.get("key")
    if name.startswith(".tmp") or name.endswith(".tmp") or ".tmp-" in name:
        return "unknown", None, None
    return None


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this id runs on this machine (zombies count as gone)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


@contextlib.contextmanager
def dir_lock(d: Path, name: str = ".lock") -> Iterator[None]:
    """An exclusive ``flock`` on the file ``name`` in folder ``d`` (made if missing),
    held for the ``with`` block."""
    d.mkdir(parents=True, exist_ok=True)
    with open(d / name, "a+") as lf:
        fcntl.flock(lf, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lf, fcntl.LOCK_UN)


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        rec = json.loads((path / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("complete") else None


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            p.unlink()


def _files_problem(p: Path, record: dict[str, Any]) -> str | None:
    """What is wrong with an artifact folder's files against its record (None: nothing):
    a listed file missing, or a file not the size it was saved with."""
    for n in record.get("files", []):
        if not (p / n.rstrip("/")).exists():
            return f"{n} is missing"
    for name, size in (record.get("sizes") or {}).items():
        try:
            got = (p / name).stat().st_size
        except OSError:
            return f"{name} is missing"
        if got != size:
            return f"{name} is {got} bytes, saved as {size} (truncated or changed)"
    return None


def _looks_like_artifact(p: Path, kind: str) -> bool:
    """A folder that is (or was meant to be) an artifact of ``kind``: it has a meta.json
    or the name of a config key; checkpoints, job folders and nested stores are not."""
    return (p / META_FILE).exists() or re.fullmatch(
        rf"{re.escape(kind)}-[0-9a-f]{{16}}", p.name) is not None


def _file_sizes(root: Path) -> dict[str, int]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != META_FILE:
            out[p.relative_to(root).as_posix()] = p.stat().st_size
    return out


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

    def _lock(self, kind: str):
        return dir_lock(self.kind_dir(kind))

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
        writers: Mapping[str, Callable[[Path], None]] | None = None,
        key: str | None = None,
        overwrite: bool = True,
        finite: bool = False,
    ) -> Artifact:
        """Write an artifact atomically and return it.

        ``files`` maps relative names to contents; ``dirs`` maps relative names to
        existing folders to copy in; ``writers`` maps relative names to functions that
        write that file or folder themselves (e.g. a SAELens ``save_model``), straight
        into the artifact's temporary folder, so nothing is staged elsewhere.
        With ``overwrite=False`` an existing complete artifact is returned untouched.
        ``finite=True`` refuses (NonFiniteError, nothing written) tensors holding NaN or
        infinity: weights, directions and vectors are saved that way.
        """
        if self.read_only:
            raise StorageError("the artifact store is read-only (demo mode)")
        if finite and tensors:
            from .validate import finite_tensors

            finite_tensors(tensors, f"{kind} artifact")
        config = json.loads(canonical_json(dict(config)))
        key = key or config_key(kind, config)
        final = self.path(kind, key)
        kdir = self.kind_dir(kind)
        tmp = kdir / f".tmp-w{os.getpid()}-{uuid.uuid4().hex[:8]}-{key}"
        try:
            kdir.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
            names: list[str] = []
            if tensors:
                _save_tensors(tensors, tmp / TENSORS_FILE)
                names.append(TENSORS_FILE)
            for name, content in (files or {}).items():
                p = tmp / name
                p.parent.mkdir(parents=True, exist_ok=True)
                _write_bytes(p, content.encode() if isinstance(content, str) else content)
                names.append(name)
            for name, src in (dirs or {}).items():
                shutil.copytree(src, tmp / name)
                names.append(name + "/")
            for name, write in (writers or {}).items():
                write(tmp / name)
                names.append(name + "/" if (tmp / name).is_dir() else name)
            record = {
                "schema_version": SCHEMA_VERSION,
                "kind": kind,
                "key": key,
                "config": config,
                "provenance": dict(provenance or {}),
                "meta": json.loads(canonical_json(dict(meta or {}))),
                "files": names,
                "sizes": _file_sizes(tmp),
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
                    self._replace(final, tmp, kdir, key)
                else:
                    os.rename(tmp, final)
                _fsync_dir(kdir)
                # read back under the lock: a concurrent writer of the same key may
                # replace the folder as soon as the lock is released
                saved = self.load(kind, key)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise storage_error(e, f"saving {kind} artifact {key}") from e
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return saved

    @staticmethod
    def _replace(final: Path, tmp: Path, kdir: Path, key: str) -> None:
        """Put the complete folder ``tmp`` at ``final`` (which exists), atomically where the
        OS can; ``tmp`` is gone afterwards. Caller holds the kind's lock."""
        if exchange(tmp, final):      # tmp now holds the old version
            _fsync_dir(kdir)
            shutil.rmtree(tmp, ignore_errors=True)
            return
        old = kdir / f".tmp-old-{uuid.uuid4().hex[:8]}-{key}"
        os.rename(final, old)
        try:
            os.rename(tmp, final)
        except BaseException:
            if not final.exists():    # put the old version back rather than lose both
                os.rename(old, final)
            raise
        shutil.rmtree(old, ignore_errors=True)

    # -- read --------------------------------------------------------------------
    @staticmethod
    def _is_complete(path: Path) -> bool:
        return _read_record(path) is not None

    def exists(self, kind: str, key: str) -> bool:
        """True when a complete artifact is saved under ``key`` (a corrupt one is not)."""
        return self._is_complete(self.path(kind, key))

    def load(self, kind: str, key: str) -> Artifact:
        """The artifact under ``key``: ArtifactNotFoundError when there is none,
        ArtifactCorruptError when its folder is there but damaged."""
        p = self.path(kind, key)
        problem = None
        for attempt in range(5):
            try:
                record = json.loads((p / META_FILE).read_text())
            except FileNotFoundError:
                if p.is_dir():
                    raise ArtifactCorruptError(
                        f"{kind} artifact {key} ({p}) has no {META_FILE}; "
                        f"{CORRUPT_HELP}") from None
                raise ArtifactNotFoundError(f"no {kind} artifact with key {key}") from None
            except NotADirectoryError:
                raise ArtifactCorruptError(f"{kind} artifact {key} ({p}) is a file, not an "
                                           f"artifact folder; {CORRUPT_HELP}") from None
            except ValueError as e:
                raise ArtifactCorruptError(f"{kind} artifact {key} has unreadable metadata "
                                           f"({e}); {CORRUPT_HELP}") from None
            except OSError as e:
                raise ArtifactCorruptError(f"{kind} artifact {key} cannot be read ({e})") \
                    from None
            if not isinstance(record, dict) or not record.get("complete") \
                    or record.get("kind") != kind:
                raise ArtifactCorruptError(f"{kind} artifact {key} is incomplete or not a "
                                           f"{kind} artifact; {CORRUPT_HELP}")
            problem = _files_problem(p, record)
            if problem is None:
                break
            # a concurrent overwrite may have swapped the folder after meta.json was read:
            # read it again before calling the artifact damaged
            time.sleep(0.01 * (attempt + 1))
        else:
            raise ArtifactCorruptError(f"{kind} artifact {key}: {problem}; {CORRUPT_HELP}")
        try:
            return Artifact(kind=kind, key=key, path=p, config=record["config"],
                            provenance=record.get("provenance", {}), meta=record.get("meta", {}),
                            files=list(record.get("files", [])))
        except KeyError as e:
            raise ArtifactCorruptError(f"{kind} artifact {key} has no {e} in its metadata") \
                from None

    def find(self, kind: str, config: Mapping[str, Any]) -> Artifact | None:
        """The artifact saved for exactly this config; None when there is none (a damaged
        one raises ArtifactCorruptError: rebuilding would replace it)."""
        key = config_key(kind, json.loads(canonical_json(dict(config))))
        try:
            return self.load(kind, key)
        except ArtifactNotFoundError:
            return None

    def list(self, kind: str | None = None) -> list[Artifact]:
        """Complete artifacts of a kind (or all kinds), newest first. Damaged folders are
        left out with a warning on the log (``store check`` lists them)."""
        kinds = [kind] if kind else sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
        ) if self.root.exists() else []
        out: list[Artifact] = []
        for k in kinds:
            d = self.kind_dir(k)
            if not d.is_dir():
                continue
            for p in d.iterdir():
                if not p.is_dir() or p.name.startswith(".") or not _looks_like_artifact(p, k):
                    continue
                try:
                    out.append(self.load(k, p.name))
                except ArtifactNotFoundError:
                    continue   # removed meanwhile
                except ArtifactError as e:
                    log.warning("skipping a damaged artifact: %s", e)
        out.sort(key=_age_key, reverse=True)
        return out

    def check(self, tensors: bool = True) -> list[dict[str, str]]:
        """Every damaged artifact under the root, nested stores included (``cache/demo``):
        ``[{"kind", "key", "path", "problem"}]``. Checks metadata, files and sizes; with
        ``tensors`` also that each tensors file parses."""
        bad: list[dict[str, str]] = []
        if not self.root.exists():
            return bad
        for d, subdirs, _ in os.walk(self.root):
            d = Path(d)
            subdirs[:] = sorted(n for n in subdirs if not n.startswith("."))
            if d == self.root or not _looks_like_artifact(d, d.parent.name):
                continue
            subdirs[:] = []      # an artifact's own sub-folders are its files
            store = Store(d.parent.parent)
            try:
                art = store.load(d.parent.name, d.name)
                if tensors and TENSORS_FILE in art.files:
                    from safetensors import safe_open

                    try:
                        with safe_open(str(d / TENSORS_FILE), framework="pt") as h:
                            for name in h.keys():
                                h.get_slice(name).get_shape()
                    except Exception as e:  # noqa: BLE001 - any parse failure
                        raise ArtifactCorruptError(
                            f"{TENSORS_FILE} cannot be parsed ({str(e).splitlines()[0]})") \
                            from None
            except ArtifactError as e:
                bad.append({"kind": d.parent.name, "key": d.name, "path": str(d),
                            "problem": str(e).split("; `python")[0]})
        return bad

    def delete(self, kind: str, key: str) -> None:
        """Remove an artifact (complete or damaged)."""
        if self.read_only:
            raise StorageError("the artifact store is read-only (demo mode)")
        p = self.path(kind, key)
        if not p.exists():
            raise ArtifactNotFoundError(f"no {kind} artifact with key {key}")
        with self._lock(kind):
            trash = self.kind_dir(kind) / f".tmp-del-{uuid.uuid4().hex[:8]}-{key}"
            os.rename(p, trash)  # atomic: readers see it gone at once
        shutil.rmtree(trash, ignore_errors=True)

    # -- leftovers -----------------------------------------------------------------
    def clean(self, min_age: float = 3600.0, dry_run: bool = False) -> dict[str, list[str]]:
        """Remove what killed writers left under the root (any depth: nested stores such
        as ``cache/demo``, job folders, exported checkpoints), safely:

        * leftovers whose writer process still runs are kept (``kept``);
        * an artifact whose folder is missing while a complete leftover of it exists (a
          kill between the two renames of an overwrite) is first put back: the newer
          complete version, else the older one (``recovered``);
        * hidden temporaries without a writer pid are removed only when older than
          ``min_age`` seconds.

        Returns ``{"removed", "recovered", "kept"}`` (paths relative to the root)."""
        out: dict[str, list[str]] = {"removed": [], "recovered": [], "kept": []}
        if not self.root.exists():
            return out
        now = time.time()
        rel = lambda p: p.relative_to(self.root).as_posix()  # noqa: E731
        for d, subdirs, filenames in os.walk(self.root):
            d = Path(d)
            names = [n for n in subdirs + filenames if _classify_leftover(n) is not None]
            subdirs[:] = [n for n in subdirs if n not in names and not
                          (d / n).is_symlink()]
            if not names:
                continue
            lock = dir_lock(d) if not dry_run else contextlib.nullcontext()
            with lock:
                by_key: dict[str, list[tuple[str, Path]]] = {}
                for n in names:
                    what, pid, key = _classify_leftover(n)
                    p = d / n
                    if pid is not None and pid_alive(pid):
                        out["kept"].append(rel(p))
                        continue
                    if what == "unknown":
                        try:
                            age = now - p.lstat().st_mtime
                        except OSError:
                            continue
                        if age < min_age:
                            out["kept"].append(rel(p))
                            continue
                    if what in ("new", "old") and key:
                        by_key.setdefault(key, []).append((what, p))
                    out["removed"].append(rel(p))
                for key, cands in by_key.items():
                    final = d / key
                    if final.exists() or "/" in key:
                        continue
                    for want in ("new", "old"):
                        good = [(p.stat().st_mtime, p) for w, p in cands
                                if w == want and (_read_record(p) or {}).get("key") == key]
                        if good:
                            src = max(good)[1]
                            if not dry_run:
                                os.rename(src, final)
                                _fsync_dir(d)
                            out["recovered"].append(rel(final))
                            out["removed"].remove(rel(src))
                            break
                if not dry_run:
                    for r in out["removed"]:
                        p = self.root / r
                        if p.parent == d and (p.exists() or p.is_symlink()):
                            _remove(p)
        return out

    def clean_tmp(self) -> int:
        """Remove leftovers of writers that are gone (see :meth:`clean`); returns how
        many went."""
        return len(self.clean(min_age=0.0)["removed"])


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write one file atomically (temp file in the same folder + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_bytes(tmp, data)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise storage_error(e, f"writing {path.name}") from e


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write one JSON file atomically (temp file in the same folder + rename)."""
    write_bytes_atomic(path, json.dumps(obj, indent=1, default=_json_default).encode())


def _age_key(a: Artifact) -> tuple[str, int]:
    """Sort key of :meth:`Store.list` (newest last): the recorded creation time (whole
    seconds), then the folder's modification time, so artifacts saved within one second
    keep the order they were saved in."""
    try:
        mtime = a.path.stat().st_mtime_ns
    except OSError:
        mtime = 0
    return (str(a.provenance.get("created", "")), mtime)
