"""interp.store: round trip, keys, atomicity under SIGKILL, concurrent writers, ENOSPC,
and no pickle anywhere in interp/.

Kill and concurrency tests run real writer processes (``python -c WRITER``) against a
temp store; each writer stamps the artifact index into the config, the metadata, a
tensor and a text file, so a reader can tell a consistent artifact from a mixed one.
"""

from __future__ import annotations

import ast
import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import interp.store as store_mod
from interp.errors import (
    ArtifactCorruptError,
    ArtifactError,
    ArtifactNotFoundError,
    NonFiniteError,
    StorageError,
)
from interp.store import PROJECT_ROOT, Store, config_key, provenance, tensor_hash

N_BIG = 4_000_000  # floats per tensor in the writer processes (16 MB)

WRITER = r"""
import os, sys, time, torch
import interp.store as S
from interp.store import Store

root, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
st = Store(root)

armed = False  # the fault points fire only after the first (complete) save

def pause(tag):
    if armed:
        print(tag, flush=True)
        time.sleep(60)

if mode == "tensors":      # die after the tensor file is written, before meta.json
    real = S.save_file
    def slow(*a, **k):
        real(*a, **k)
        pause("in-write")
    S.save_file = slow
elif mode == "meta":       # die with half of meta.json on disk
    real_wb = S._write_bytes
    def half(path, data):
        if path.name == S.META_FILE and armed:
            with open(path, "wb") as f:
                f.write(data[: len(data) // 2]); f.flush(); os.fsync(f.fileno())
            pause("in-write")
        real_wb(path, data)
    S._write_bytes = half
elif mode == "rename":     # no atomic swap available: die between the two renames
    S.exchange = lambda a, b: False
    real_rn = os.rename
    def rn(src, dst):
        real_rn(src, dst)
        if ".tmp-old-" in str(dst):
            pause("in-write")
    S.os.rename = rn
elif mode == "exchange":   # die right after the atomic swap, old version not yet removed
    real_ex = S.exchange
    def ex(a, b):
        ok = real_ex(a, b)
        pause("in-write")
        return ok
    S.exchange = ex

def save(i, key):
    x = torch.full((n,), float(i))
    st.save("blob", {"i": i, "key": key}, {"x": x, "y": torch.arange(1000) + i},
            key=key, meta={"i": i}, files={"note.txt": f"note {i}"})

if mode.startswith("concurrent"):
    wid = int(mode.split(":")[1])
    print("ready", flush=True)
    for r in range(int(sys.argv[4])):
        i = wid * 1000 + r
        x = torch.full((n,), float(i))
        # notes of different lengths: a reader must not take a swap for a damaged file
        st.save("blob", {"same": True}, {"x": x}, meta={"i": i},
                files={"note.txt": f"note {i}" + "x" * (i % 7)})
    sys.exit(0)

save(-1, "shared")          # a complete older version of the key that gets overwritten
armed = True
print("ready", flush=True)
i = 0
while True:
    save(i, f"k{i}")
    save(i, "shared")
    i += 1
"""


def _spawn(root: Path, mode: str, n: int = N_BIG, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.Popen([sys.executable, "-c", WRITER, str(root), mode, str(n), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_line(proc: subprocess.Popen, want: str, timeout: float = 60) -> None:
    t0 = time.time()
    line = proc.stdout.readline().strip()
    if line != want:
        proc.kill()
        raise AssertionError(f"writer said {line!r}, not {want!r}: {proc.stderr.read()[-2000:]}")
    assert time.time() - t0 < timeout


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()


def _check_consistent(st: Store, n: int = N_BIG) -> dict[str, int]:
    """Every visible folder loads as complete and all its parts carry the same index."""
    kdir = st.root / "blob"
    seen: dict[str, int] = {}
    for p in sorted(kdir.iterdir()):
        if p.name.startswith("."):
            continue  # .lock and .tmp-* leftovers are invisible to readers
        art = st.load("blob", p.name)  # raises if incomplete
        i = art.meta["i"]
        assert art.config["i"] == i
        x = art.tensors["x"]
        assert x.shape == (n,) and bool((x == float(i)).all())
        if "y" in art.tensors:
            assert torch.equal(art.tensors["y"], torch.arange(1000) + i)
        assert art.file("note.txt").read_text() == f"note {i}"
        seen[p.name] = i
    listed = {a.key for a in st.list("blob")}
    assert listed == set(seen)
    return seen


# --------------------------------------------------------------------------- round trip
def test_round_trip_bit_exact(tmp_cache):
    st = Store()
    assert st.root == tmp_cache
    tensors = {
        "f32": torch.randn(7, 5),
        "bf16": torch.randn(3, 4).to(torch.bfloat16),
        "f16": torch.randn(6).half(),
        "i64": torch.randint(-10**12, 10**12, (9,)),
        "bool": torch.rand(4) > 0.5,
        "nan": torch.tensor([float("nan"), float("inf"), -0.0]),
        "empty": torch.zeros(0, 3),
    }
    cfg = {"model": "organism:base", "layer": 2, "alpha": 0.5, "tags": ["a", "b"]}
    prov = provenance({"base": {"id": "organism:base", "weight_hash": "abc"}}, seed=7)
    art = st.save("direction", cfg, tensors, provenance=prov, meta={"auroc": 0.9},
                  files={"table.json": json.dumps({"x": 1}), "raw.bin": b"\x00\xff"})
    assert art.key == config_key("direction", cfg)
    assert art.path == tmp_cache / "direction" / art.key

    back = Store(tmp_cache).load("direction", art.key)
    assert back.config == cfg and back.meta == {"auroc": 0.9}
    assert back.provenance == json.loads(json.dumps(prov))
    assert set(back.tensors) == set(tensors)
    for k, t in tensors.items():
        b = back.tensors[k]
        assert b.dtype == t.dtype and b.shape == t.shape
        # bit-exact, NaN and -0.0 included: compare the raw bytes
        assert b.contiguous().view(torch.uint8).tolist() == t.view(torch.uint8).tolist()
    assert tensor_hash(back.tensors) == tensor_hash(tensors)
    assert back.read_json("table.json") == {"x": 1}
    assert back.file("raw.bin").read_bytes() == b"\x00\xff"
    with pytest.raises(ArtifactError):
        back.file("nope.txt")

    assert [a.key for a in st.list("direction")] == [art.key]
    assert [a.key for a in st.list()] == [art.key]
    assert st.find("direction", dict(reversed(list(cfg.items())))).key == art.key
    st.delete("direction", art.key)
    assert not st.exists("direction", art.key)
    assert st.list() == []
    with pytest.raises(ArtifactNotFoundError):
        st.load("direction", art.key)
    with pytest.raises(ArtifactNotFoundError):
        st.delete("direction", art.key)


def test_provenance_fields():
    p = provenance({"base": "organism:base"}, seed=3, hook="blocks.1.hook_resid_pre")
    assert p["models"] == {"base": "organism:base"} and p["seed"] == 3
    assert p["hook"] == "blocks.1.hook_resid_pre"
    assert p["code_version"] and p["torch"] == torch.__version__
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", p["created"])


def test_same_config_same_key():
    a = {"layer": 3, "lr": 1e-3, "model": {"base": "x", "fine": "y"}, "dtype": torch.float32}
    b = {"model": {"fine": "y", "base": "x"}, "dtype": torch.float32, "lr": 0.001, "layer": 3}
    assert config_key("adapter", a) == config_key("adapter", b)
    assert config_key("adapter", a) != config_key("adapter", {**a, "layer": 4})
    assert config_key("adapter", a) != config_key("vector", a)
    assert re.fullmatch(r"adapter-[0-9a-f]{16}", config_key("adapter", a))


def test_overwrite_false_keeps_first(tmp_cache):
    st = Store()
    first = st.save("v", {"a": 1}, {"x": torch.ones(3)})
    again = st.save("v", {"a": 1}, {"x": torch.zeros(3)}, overwrite=False)
    assert again.key == first.key and torch.equal(again.tensors["x"], torch.ones(3))
    st.save("v", {"a": 1}, {"x": torch.zeros(3)})
    assert torch.equal(st.load("v", first.key).tensors["x"], torch.zeros(3))
    assert [p.name for p in (tmp_cache / "v").iterdir() if p.name.startswith(".tmp")] == []


def test_read_only_store(tmp_cache):
    Store().save("v", {"a": 1}, {"x": torch.ones(1)})
    ro = Store(read_only=True)
    assert len(ro.list("v")) == 1
    with pytest.raises(StorageError, match="read-only"):
        ro.save("v", {"a": 2}, {"x": torch.ones(1)})
    with pytest.raises(StorageError, match="read-only"):
        ro.delete("v", config_key("v", {"a": 1}))


def test_bad_kind_or_key(tmp_cache):
    st = Store()
    for kind, key in [("../x", "k"), (".hidden", "k"), ("v", "../k"), ("v", ".tmp-k")]:
        with pytest.raises(ArtifactError):
            st.path(kind, key)


def test_folder_without_meta_is_corrupt_not_missing(tmp_cache):
    """A damaged artifact is never reported as missing (a "missing" artifact invites a
    rebuild that would overwrite the evidence): load/find raise ArtifactCorruptError,
    list leaves it out, store check names it."""
    st = Store()
    art = st.save("v", {"a": 1}, {"x": torch.ones(2)})
    (art.path / "meta.json").unlink()
    assert not st.exists("v", art.key) and st.list("v") == []
    with pytest.raises(ArtifactCorruptError, match="store check"):
        st.load("v", art.key)
    with pytest.raises(ArtifactCorruptError):
        st.find("v", {"a": 1})
    assert [b["key"] for b in st.check()] == [art.key]
    with pytest.raises(ArtifactNotFoundError):
        st.load("v", config_key("v", {"a": 2}))
    assert st.find("v", {"a": 2}) is None


@pytest.mark.parametrize("damage", ["meta", "truncate", "garbage", "lost"])
def test_damaged_artifacts_are_corrupt_errors(tmp_cache, damage):
    """Unreadable metadata, a truncated or garbled tensors file, a lost file: each is an
    ArtifactCorruptError with one line (never a raw SafetensorError), also through
    ``find`` and ``store check``."""
    st = Store()
    art = st.save("v", {"a": 1}, {"x": torch.arange(1000.0)}, files={"t.json": "{}"})
    f = art.path / "tensors.safetensors"
    if damage == "meta":
        (art.path / "meta.json").write_text('{"kind": "v", "comp')
    elif damage == "truncate":
        f.write_bytes(f.read_bytes()[:500])
    elif damage == "garbage":      # same size, header destroyed: only parsing can tell
        data = bytearray(f.read_bytes())
        data[:16] = b"\xff" * 16
        f.write_bytes(bytes(data))
    else:
        f.unlink()
    with pytest.raises(ArtifactCorruptError) as e:
        _ = st.find("v", {"a": 1}).tensors
    assert "\n" not in str(e.value) and "Safetensor" not in type(e.value).__name__
    assert [b["key"] for b in st.check()] == [art.key]
    assert st.find("v", {"a": 2}) is None


# --------------------------------------------------------------------------- SIGKILL
@pytest.mark.parametrize("phase", ["tensors", "meta", "rename", "exchange"])
def test_kill_at_each_write_phase(tmp_path, phase):
    """SIGKILL at a known point inside save(): nothing incomplete becomes visible, and
    the documented cleanup (``store clean``) never loses an artifact."""
    st = Store(tmp_path)
    proc = _spawn(tmp_path, phase, 100_000)
    _wait_line(proc, "ready")
    _wait_line(proc, "in-write")
    _kill(proc)
    seen = _check_consistent(st, 100_000)
    leftovers = [p.name for p in (tmp_path / "blob").glob(".tmp-*")]
    assert leftovers, "the writer was killed mid-write, so a temp folder must remain"
    report = st.clean()
    if phase == "rename":
        # killed while overwriting "shared" without an atomic swap, between moving the old
        # version away and renaming the new one in: the key is absent (never half-written)
        # until the cleanup puts the complete new version in place
        assert seen == {"k0": 0}
        assert any(".tmp-old-" in n and n.endswith("-shared") for n in leftovers)
        assert report["recovered"] == ["blob/shared"]
        seen = _check_consistent(st, 100_000)
        assert seen == {"k0": 0, "shared": 0}
    elif phase == "exchange":
        # the swap is one step: the new version is in place, the old one is garbage
        assert seen == {"k0": 0, "shared": 0} and report["recovered"] == []
    else:
        assert seen == {"shared": -1}  # killed writing k0; the older artifact is intact
        assert report["recovered"] == []
    assert len(report["removed"]) + len(report["recovered"]) == len(leftovers)
    assert {p.name for p in (tmp_path / "blob").iterdir()} == {".lock", *seen}
    assert _check_consistent(st, 100_000) == seen


def _random_kills(tmp_path: Path, trials: int, batch: int = 4) -> None:
    rng = random.Random(1234 + trials)
    roots = [tmp_path / f"t{i}" for i in range(trials)]
    for b in range(0, trials, batch):  # a few writers at a time: bounded memory and CPU
        procs = [_spawn(root, "random") for root in roots[b:b + batch]]
        for proc in procs:
            _wait_line(proc, "ready", timeout=120)
        for proc in procs:
            time.sleep(rng.uniform(0.02, 0.5))
            _kill(proc)
    n_written = n_midwrite = 0
    for root in roots:
        seen = _check_consistent(Store(root))
        n_written += len(seen)
        n_midwrite += bool(list((root / "blob").glob(".tmp-*")))
        # the indices present are a prefix 0..k (plus "shared"): no gaps, no mixing
        ks = sorted(v for k, v in seen.items() if k != "shared")
        assert ks == list(range(len(ks)))
        if "shared" in seen:
            assert seen["shared"] in (-1, *ks)
    print(f"{trials} kills: {n_written} complete artifacts, {n_midwrite} killed mid-write")


def test_kill_at_random_moments(tmp_path):
    """Writers of 16 MB artifacts SIGKILLed at random moments."""
    _random_kills(tmp_path, int(os.environ.get("INTERP_KILL_TRIALS", "4")))


@pytest.mark.slow
def test_kill_at_random_moments_many(tmp_path):
    _random_kills(tmp_path, 32)


# --------------------------------------------------------------------------- two writers
def test_two_writers_same_key(tmp_path):
    rounds, n = 60, 100_000
    st = Store(tmp_path)
    procs = [_spawn(tmp_path, f"concurrent:{w}", n, str(rounds)) for w in (1, 2)]
    for p in procs:
        _wait_line(p, "ready", timeout=120)
    key = config_key("blob", {"same": True})
    reads = 0
    while any(p.poll() is None for p in procs):
        try:
            art = st.load("blob", key)
        except ArtifactNotFoundError:
            continue  # not written yet, or between the two renames of an overwrite
        # meta.json is one file, so config/meta seen by a reader always agree. (Files read
        # *later* through the Artifact may come from a newer overwrite of the same key:
        # an Artifact is a path, not a snapshot.)
        assert art.meta["i"] // 1000 in (1, 2) and art.config == {"same": True}
        reads += 1
    for p in procs:
        assert p.wait(timeout=60) == 0, p.stderr.read()[-2000:]
        p.stdout.close()
        p.stderr.close()
    art = st.load("blob", key)
    i = art.meta["i"]
    assert i in (1000 + rounds - 1, 2000 + rounds - 1)  # one writer's last save wins
    assert bool((art.tensors["x"] == float(i)).all()) and art.tensors["x"].shape == (n,)
    assert art.file("note.txt").read_text() == f"note {i}" + "x" * (i % 7)
    assert sorted(p.name for p in (tmp_path / "blob").iterdir()) == [".lock", key]
    assert reads > 0


# --------------------------------------------------------------------------- ENOSPC
def test_disk_full_is_storage_error(tmp_cache, monkeypatch):
    st = Store()
    old = st.save("v", {"a": 1}, {"x": torch.ones(4)})

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    real_save, real_wb = store_mod.save_file, store_mod._write_bytes

    with monkeypatch.context() as m:
        m.setattr(store_mod, "save_file", full)
        with pytest.raises(StorageError, match="disk full"):
            st.save("v", {"a": 1}, {"x": torch.zeros(4)})  # overwrite attempt
        with pytest.raises(StorageError, match="disk full"):
            st.save("v", {"a": 2}, {"x": torch.zeros(4)})  # new key

    def meta_full(path, data):
        if path.name == store_mod.META_FILE:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_wb(path, data)

    def half_then_full(tensors, filename, *a, **k):
        real_save(tensors, filename, *a, **k)
        with open(filename, "r+b") as f:  # the disk filled up after half the file
            f.truncate(os.path.getsize(filename) // 2)
        raise OSError(errno.ENOSPC, "No space left on device")

    for name, fake in (("_write_bytes", meta_full), ("save_file", half_then_full)):
        with monkeypatch.context() as m:
            m.setattr(store_mod, name, fake)
            with pytest.raises(StorageError, match="disk full"):
                st.save("v", {"a": 3}, {"x": torch.zeros(4)}, files={"f.txt": "x"})
    # the old artifact is intact; no temp folder and no new artifact is left behind
    assert torch.equal(st.load("v", old.key).tensors["x"], torch.ones(4))
    assert sorted(p.name for p in (tmp_cache / "v").iterdir()) == [".lock", old.key]


def test_write_json_atomic_disk_full(tmp_path, monkeypatch):
    target = tmp_path / "models.json"
    store_mod.write_json_atomic(target, {"a": 1})

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_mod, "_write_bytes", full)
    with pytest.raises(StorageError):
        store_mod.write_json_atomic(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["models.json"]


# --------------------------------------------------------------------------- no pickle
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "cloudpickle", "shelve",
                  "marshal"}


def pickle_uses(source: str) -> list[str]:
    """Places in ``source`` that use pickle (directly or through torch/numpy/pandas).

    Works on the syntax tree, so docstrings and comments that mention pickle are fine.
    """
    bad: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            bad += [f"{node.lineno}: import {a.name}" for a in node.names
                    if a.name.split(".")[0] in PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in PICKLE_MODULES:
                bad.append(f"{node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Name) and node.id in PICKLE_MODULES:
            bad.append(f"{node.lineno}: uses {node.id}")
        elif isinstance(node, ast.Call):
            f = node.func
            attr = f.attr if isinstance(f, ast.Attribute) else None
            name = (f"{f.value.id}.{attr}" if attr and isinstance(f.value, ast.Name)
                    else attr)
            const = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
            if name == "torch.load" and const.get("weights_only") is not True:
                bad.append(f"{node.lineno}: torch.load without weights_only=True")
            elif name == "torch.save":
                bad.append(f"{node.lineno}: torch.save (pickle); use safetensors")
            elif name in ("np.load", "numpy.load") and const.get("allow_pickle") is True:
                bad.append(f"{node.lineno}: np.load(allow_pickle=True)")
            elif attr in ("to_pickle", "read_pickle"):
                bad.append(f"{node.lineno}: pandas pickle")
            elif "pickle_module" in const:
                bad.append(f"{node.lineno}: pickle_module=")
    return bad


def test_pickle_detector_catches_bad_code():
    bad = ("import pickle\nx = torch.load('a.pt')\ny = torch.load('b', weights_only=False)\n"
           "torch.save(x, 'c')\nnp.load('d', allow_pickle=True)\ndf.to_pickle('e')\n")
    assert len(pickle_uses(bad)) == 6
    good = ('"""No pickle here."""\nx = torch.load("a", weights_only=True)\nnp.load("d")\n'
            "# pickle is banned\n")
    assert pickle_uses(good) == []


def test_no_pickle_in_interp():
    offenders = {}
    for path in sorted((PROJECT_ROOT / "interp").rglob("*.py")):
        found = pickle_uses(path.read_text())
        if found:
            offenders[str(path.relative_to(PROJECT_ROOT))] = found
    assert offenders == {}


# --------------------------------------------------------------------------- real faults
def test_real_full_disk_is_one_storage_error(tmp_path):
    """On a file system that is really full (a 256 kB tmpfs), saving gives StorageError
    'disk full' (safetensors' own I/O error is not an OSError) and leaves nothing."""
    from tests._fs import small_tmpfs

    with small_tmpfs(tmp_path / "fs", 256 * 1024) as root:
        st = Store(root)
        old = st.save("v", {"a": 1}, {"x": torch.ones(4)})
        with pytest.raises(StorageError, match="disk full"):
            st.save("v", {"a": 1}, {"x": torch.zeros(200_000)})   # 800 kB: does not fit
        with pytest.raises(StorageError, match="disk full"):
            st.save("v", {"a": 2}, files={"big.bin": b"\0" * 400_000})
        assert torch.equal(st.load("v", old.key).tensors["x"], torch.ones(4))
        assert sorted(p.name for p in (root / "v").iterdir()) == [".lock", old.key]


def test_read_only_store_folder_is_one_storage_error(tmp_path):
    from tests._fs import small_tmpfs

    with small_tmpfs(tmp_path / "ro", 64 * 1024, read_only=True) as root:
        with pytest.raises(StorageError, match="read-only"):
            Store(root).save("v", {"a": 1}, {"x": torch.ones(1)})


def test_finite_saves_refuse_nan_and_write_nothing(tmp_cache):
    st = Store()
    with pytest.raises(NonFiniteError, match="'w'"):
        st.save("w", {"a": 1}, {"ok": torch.ones(2), "w": torch.tensor([1.0, float("inf")])},
                finite=True)
    assert not (tmp_cache / "w").exists() or not any((tmp_cache / "w").iterdir())
    # without finite=True NaN is data like any other (a NaN AUROC, say)
    st.save("w", {"a": 1}, {"w": torch.tensor([float("nan")])})


# --------------------------------------------------------------------------- cleaning
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _leftover(kdir: Path, name: str, record_key: str | None = None, i: int = 0) -> Path:
    p = kdir / name
    p.mkdir(parents=True)
    (p / "tensors.safetensors").write_bytes(b"x")
    if record_key is not None:
        (p / "meta.json").write_text(json.dumps({"complete": True, "kind": kdir.name,
                                                 "key": record_key, "config": {}, "meta": {"i": i},
                                                 "files": []}))
    return p


def test_clean_keeps_live_writers_and_restores_what_a_kill_left_out(tmp_path):
    """``clean`` at any depth (a nested demo store, a job folder): leftovers of a running
    writer stay; dead writers' ones go; a key whose folder is missing is put back from
    the newest complete leftover (new version first, else the old one)."""
    root = tmp_path / "cache"
    live, dead = os.getpid(), _dead_pid()
    k = root / "demo" / "blob"
    running = _leftover(k, f".tmp-w{live}-0123abcd-k1")
    gone = _leftover(k, f".tmp-w{dead}-0123abcd-k2")
    # a kill between the two renames of an overwrite: both versions parked, key missing
    _leftover(k, ".tmp-old-0a0a0a0a-k3", "k3", i=1)
    _leftover(k, f".tmp-w{dead}-0b0b0b0b-k3", "k3", i=2)
    # a kill after parking the old version of k4, before anything new was complete
    _leftover(k, ".tmp-old-0c0c0c0c-k4", "k4", i=3)
    _leftover(k, f".tmp-w{dead}-0d0d0d0d-k4")
    jobs = root / "jobs" / "j1"
    jobs.mkdir(parents=True)
    (jobs / f".status.json.{dead}.abcdef.tmp").write_text("{")
    (jobs / f".status.json.{live}.abcdef.tmp").write_text("{")
    fresh = jobs / ".unknown.tmp"
    fresh.write_text("?")
    st = Store(root)
    dry = st.clean(dry_run=True)
    assert (k / gone.name).exists() and not (k / "k3").exists()   # a dry run touches nothing
    out = st.clean()
    assert out == dry
    assert sorted(out["recovered"]) == ["demo/blob/k3", "demo/blob/k4"]
    assert json.loads((k / "k3" / "meta.json").read_text())["meta"]["i"] == 2   # the new one
    assert json.loads((k / "k4" / "meta.json").read_text())["meta"]["i"] == 3   # the old one
    assert running.exists() and fresh.exists()
    assert sorted(p.name for p in k.iterdir()) == sorted([".lock", running.name, "k3", "k4"])
    assert sorted(p.name for p in jobs.iterdir()) == sorted(
        [".lock", f".status.json.{live}.abcdef.tmp", ".unknown.tmp"])
    assert sorted(out["kept"]) == sorted([f"demo/blob/{running.name}",
                                          f"jobs/j1/.status.json.{live}.abcdef.tmp",
                                          "jobs/j1/.unknown.tmp"])
    assert Store(root).clean(min_age=0)["removed"] == ["jobs/j1/.unknown.tmp"]


def test_store_commands(tmp_path):
    """``store check`` names damaged artifacts (exit 1), ``store delete`` removes one,
    ``store clean`` reports what it removed; each ends with one JSON line."""
    from interp.cli import main

    root = tmp_path / "cache"
    st = Store(root)
    good = st.save("v", {"a": 1}, {"x": torch.ones(3)})
    bad = st.save("v", {"a": 2}, {"x": torch.ones(300)})
    f = bad.path / "tensors.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    _leftover(root / "v", f".tmp-w{_dead_pid()}-0123abcd-zz")
    assert main(["store", "check", "--store", str(root)]) == 1
    assert main(["store", "clean", "--store", str(root)]) == 0
    assert main(["store", "delete", "v", bad.key, "--store", str(root)]) == 0
    assert main(["store", "check", "--store", str(root)]) == 0
    assert [a.key for a in st.list("v")] == [good.key]
    assert main(["store", "delete", "v", bad.key, "--store", str(root)]) == 1


def test_list_keeps_save_order_within_one_second(tmp_path, monkeypatch):
    """Artifacts saved in the same second (one recorded creation time) are listed newest
    first in the order they were saved, whatever order the folder lists them in."""
    import datetime as real

    import interp.store as S

    class _Frozen(real.datetime):
        @classmethod
        def now(cls, tz=None):
            return real.datetime(2026, 1, 1, 12, 0, 0, tzinfo=tz)

    class _Mod:
        datetime = _Frozen
        timezone = real.timezone

    monkeypatch.setattr(S, "_dt", _Mod)
    store = S.Store(tmp_path)
    keys = []
    for i in range(4):
        keys.append(store.save("thing", {"i": i}, provenance=S.provenance()).key)
        time.sleep(0.02)
    listed = store.list("thing")
    assert len({a.provenance["created"] for a in listed}) == 1
    assert [a.key for a in listed] == keys[::-1]
