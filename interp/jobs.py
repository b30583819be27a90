"""Background jobs: long work runs in a worker process with a progress stream.

A job is ``(kind, spec)``: ``kind`` names a function ``fn(spec: dict, ctx: JobContext)
-> dict`` (see :data:`JOB_KINDS` / :func:`register_job_kind`), ``spec`` is its JSON
config. The job id is derived from both, so submitting the same spec again finds the
same job: a finished job returns its result, an interrupted one resumes (the function
keeps its checkpoints in ``ctx.dir`` and picks them up).

Files under ``<cache>/jobs/<id>/``: ``spec.json``, ``status.json`` (state, step, total,
ETA, latest metrics, error, result; replaced atomically), ``progress.jsonl`` (one record
per progress call), ``cancel`` (flag), ``log.txt`` (worker stdout/stderr), ``work/``
(``ctx.dir``). The same job runs headless: ``python -m interp jobs run ID`` or
``python -m interp jobs submit KIND --spec '{...}' --wait``.

Single flight: a job id runs in at most one process at a time. The running process holds
an exclusive lock on ``<id>/.run.lock`` for the whole run (a second ``jobs run`` of the
same id, a second worker, or ``--wait`` while a worker runs, stops with a JobError), and
:func:`submit` decides whether to start a worker under ``<id>/.submit.lock``, so two
identical submits at once start one worker.

Failures are recorded, not printed: the status holds a one-line error (a typed error's
own message; for an unexpected exception its type and message, the traceback going to
``log.txt``). ``status.json`` is padded when first written, so that even on a full disk
the final state can be written over it in place and the cause is not lost.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .errors import InterpError, JobError, StorageError
from .store import (
    canonical_json,
    pid_alive,
    storage_error,
    write_bytes_atomic,
    write_json_atomic,
)

JOB_KINDS: dict[str, str] = {
    "attribution.study": "interp.attribution.study:study_job",
    "attribution.trace_study": "interp.attribution.trace_study:trace_study_job",
    "organisms.build": "interp.organisms.build:build_job",
    "adapters.train": "interp.adapters.train:train_job",
    "adapters.sweep": "interp.adapters.train:sweep_job",
    "adapters.eval": "interp.adapters.evaluate:eval_job",
    "length.sweep": "interp.length.sweep:sweep_job",
    "vectors.sweep": "interp.vectors.sweep:sweep_job",
    "features.collect": "interp.features.pipeline:collect_job",
    "traces.generate": "interp.tasks.traces:generate_job",
}

# optional checks of a spec, run before anything starts ("module:function"(spec), raising
# a ConfigError naming the bad option)
JOB_VALIDATORS: dict[str, str] = {
    "adapters.train": "interp.adapters.train:validate_spec",
    "adapters.sweep": "interp.adapters.train:validate_sweep_spec",
    "adapters.eval": "interp.adapters.evaluate:validate_eval_spec",
    "length.sweep": "interp.length.sweep:validate_spec",
    "vectors.sweep": "interp.vectors.sweep:validate_spec",
    "traces.generate": "interp.tasks.traces:validate_spec",
    "features.collect": "interp.features.pipeline:validate_spec",
    "attribution.trace_study": "interp.attribution.trace_study:check_config",
}

STATES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
STATUS_PAD = 8192  # bytes status.json is padded to (see the module docstring)
QUEUED_TIMEOUT = 60.0  # s a job may stay queued without a worker pid before it is stale


class JobCancelled(JobError):
    """Raised inside a job function when the job was asked to stop."""


def register_job_kind(kind: str, target: str) -> None:
    """Make ``kind`` run ``target`` (``"module:function"``)."""
    JOB_KINDS[kind] = target


def _root() -> Path:
    from .store import DEFAULT_ROOT

    return Path(os.environ.get("INTERP_CACHE", DEFAULT_ROOT))


def jobs_dir(root: str | os.PathLike | None = None) -> Path:
    return Path(root) if root is not None else _root() / "jobs"


def job_id(kind: str, spec: dict[str, Any]) -> str:
    h = hashlib.sha256(canonical_json({"kind": kind, "spec": spec}).encode()).hexdigest()
    return f"{re.sub(r'[^A-Za-z0-9]+', '-', kind.split(':')[-1])}-{h[:12]}"


@dataclass
class JobStatus:
    id: str
    kind: str
    state: str
    step: int = 0
    total: int = 0
    started: float | None = None
    updated: float | None = None
    eta_seconds: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    error: str | None = None
    result: dict[str, Any] | None = None
    pid: int | None = None

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total) if self.total else 0.0

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running")


class JobContext:
    """Handed to a job function: progress reporting, cancellation, a work folder."""

    def __init__(self, jid: str, kind: str, path: Path,
                 on_progress: Callable[[JobStatus], None] | None = None):
        self.id, self.kind, self.path = jid, kind, path
        self.dir = path / "work"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._on_progress = on_progress
        self._t0 = time.time()
        self._last_write = 0.0
        self._first_step: tuple[int, float] | None = None
        self.status = JobStatus(id=jid, kind=kind, state="running", started=self._t0,
                                pid=os.getpid())

    def cancelled(self) -> bool:
        return (self.path / "cancel").exists()

    def check_cancel(self) -> None:
        if self.cancelled():
            raise JobCancelled(f"job {self.id} was cancelled")

    def progress(self, step: int, total: int, message: str = "", **metrics: Any) -> None:
        """Record progress (cheap); raises :class:`JobCancelled` if cancel was asked."""
        now = time.time()
        if self._first_step is None or step < self._first_step[0]:
            self._first_step = (step, now)  # first step seen in this process (resume-aware)
        s0, t0 = self._first_step
        eta = (now - t0) / (step - s0) * (total - step) if step > s0 and total else None
        st = self.status
        st.step, st.total, st.updated, st.eta_seconds = step, total, now, eta
        st.metrics = {k: v for k, v in metrics.items()}
        st.message = message
        rec = {"t": round(now - self._t0, 3), "step": step, "total": total, **metrics}
        try:
            with open(self.path / "progress.jsonl", "a") as f:
                f.write(json.dumps(rec, default=float) + "\n")
        except OSError as e:
            raise storage_error(e, f"recording the progress of job {self.id}") from e
        if now - self._last_write > 0.5 or step >= total:
            self._write()
            self._last_write = now
        if self._on_progress is not None:
            self._on_progress(st)
        self.check_cancel()

    def _write(self) -> None:
        write_status(self.path, self.status)


def write_status(path: Path, st: JobStatus) -> None:
    """Replace ``status.json`` atomically (padded to :data:`STATUS_PAD` bytes); when that
    fails (a full disk), write the status over the old file in place instead, within its
    padded size, so that the final state and its cause are still recorded."""
    text = json.dumps(st.__dict__, default=str)
    padded = text + " " * max(0, STATUS_PAD - len(text) - 1) + "\n"
    try:
        write_bytes_atomic(path / "status.json", padded.encode())
        return
    except StorageError:
        if not (path / "status.json").exists():
            raise
    f = path / "status.json"
    size = f.stat().st_size
    data = padded.encode()
    if len(data) > size:   # keep the record valid JSON within the space the file has
        short = {k: st.__dict__[k] for k in ("id", "kind", "state", "step", "total",
                                              "started", "updated", "pid")}
        short["error"] = (st.error or "")[: max(0, size - 400)]
        data = json.dumps(short, default=str).encode()
    with open(f, "r+b") as fh:
        fh.write(data)
        fh.truncate(len(data))
        fh.flush()
        os.fsync(fh.fileno())


def _resolve(kind: str) -> Callable[[dict, JobContext], dict]:
    """A registered kind, or a ``"module:function"`` target given directly."""
    if ":" in kind:
        mod, fn = kind.split(":")
        try:
            return getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as e:
            raise JobError(f"job target {kind!r} is not available: {e}") from e
    if kind not in JOB_KINDS:
        raise JobError(f"unknown job kind {kind!r}; known: {', '.join(sorted(JOB_KINDS))}")
    mod, fn = JOB_KINDS[kind].split(":")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise JobError(f"job kind {kind!r} is not available: {e}") from e


@contextlib.contextmanager
def _flock(path: Path, blocking: bool = True):
    """An exclusive lock on ``path`` (created); yields False when ``blocking`` is off and
    another process holds it."""
    try:
        fh = open(path, "a+")
    except OSError as e:
        raise storage_error(e, f"locking {path.name}") from e
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run_lock_held(p: Path) -> bool:
    """Whether another process is running this job (holds its run lock)."""
    if not (p / ".run.lock").exists():
        return False
    with _flock(p / ".run.lock", blocking=False) as got:
        return not got


def status(jid: str, root: str | os.PathLike | None = None) -> JobStatus:
    """Current status; a 'running' job whose process is gone reads as 'interrupted'."""
    p = jobs_dir(root) / jid
    try:
        kind = json.loads((p / "spec.json").read_text())["kind"]
    except FileNotFoundError:
        raise JobError(f"no job {jid}") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise JobError(f"job {jid} has an unreadable spec.json ({e})") from None
    try:
        d = json.loads((p / "status.json").read_text())
        st = JobStatus(**{k: v for k, v in d.items() if k in JobStatus.__dataclass_fields__})
    except (OSError, ValueError, TypeError):
        st = JobStatus(id=jid, kind=kind, state="queued")
    if st.state in ("running", "queued") and not _run_lock_held(p) and (
            (st.pid and not pid_alive(st.pid))
            or (st.pid is None and time.time() - (st.updated or 0) > QUEUED_TIMEOUT)):
        st.state = "interrupted"
        st.message = "the worker stopped without finishing; submit again to resume"
    return st


def progress_records(jid: str, root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    f = jobs_dir(root) / jid / "progress.jsonl"
    if not f.exists():
        return []
    out = []
    for line in f.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a kill
    return out


def list_jobs(kind: str | None = None, root: str | os.PathLike | None = None) -> list[JobStatus]:
    d = jobs_dir(root)
    if not d.exists():
        return []
    out = []
    for p in d.iterdir():
        if (p / "spec.json").exists():
            st = status(p.name, root)
            if kind is None or st.kind == kind:
                out.append(st)
    out.sort(key=lambda s: s.updated or s.started or 0, reverse=True)
    return out


def spec_of(jid: str, root: str | os.PathLike | None = None) -> dict[str, Any]:
    return json.loads((jobs_dir(root) / jid / "spec.json").read_text())["spec"]


def validate_spec(kind: str, spec: Any) -> None:
    """Check a job spec before anything starts (ConfigError naming the bad option)."""
    from .errors import ConfigError

    if not isinstance(spec, dict):
        raise ConfigError(f"a job spec must be a JSON object, got {type(spec).__name__}")
    target = JOB_VALIDATORS.get(kind)
    if target is None:
        return
    mod, fn = target.split(":")
    try:
        check = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError):
        return
    check(spec)


def _prepare(kind: str, spec: dict[str, Any], root) -> tuple[str, Path]:
    spec = json.loads(canonical_json(spec))
    jid = job_id(kind, spec)
    p = jobs_dir(root) / jid
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise storage_error(e, f"creating the folder of job {jid}") from e
    if not (p / "spec.json").exists():
        write_json_atomic(p / "spec.json", {"kind": kind, "spec": spec, "created": time.time()})
    return jid, p


def submit(kind: str, spec: dict[str, Any], root: str | os.PathLike | None = None,
           force: bool = False) -> str:
    """Start (or find) the job in a detached worker process; returns the job id.

    Single flight: while a worker of this id is queued or running, submitting again
    returns the id without starting another; a finished job is not rerun unless
    ``force``."""
    _resolve(kind)  # fail fast on unknown kinds
    validate_spec(kind, spec)
    jid, p = _prepare(kind, spec, root)
    with _flock(p / ".submit.lock"):
        st = status(jid, root)
        if st.active or _run_lock_held(p) or (st.state == "done" and not force):
            return jid
        (p / "cancel").unlink(missing_ok=True)
        write_status(p, JobStatus(id=jid, kind=kind, state="queued", updated=time.time()))
        env = dict(os.environ)
        if root is not None:
            env["INTERP_JOBS_DIR"] = str(Path(root))
        pkg_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = pkg_root + os.pathsep + env.get("PYTHONPATH", "")
        try:
            log = open(p / "log.txt", "ab")
        except OSError as e:
            raise storage_error(e, f"opening the log of job {jid}") from e
        proc = subprocess.Popen([sys.executable, "-m", "interp", "jobs", "run", jid],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=pkg_root, start_new_session=True)
        log.close()
        st = status(jid, root)
        if st.state == "queued" and st.pid is None:  # the worker has not written yet
            st.pid = proc.pid
            write_status(p, st)
    return jid


def _log_traceback(p: Path) -> None:
    with contextlib.suppress(OSError), open(p / "log.txt", "a") as f:
        f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}\n")
        traceback.print_exc(file=f)


def run(jid: str, root: str | os.PathLike | None = None,
        on_progress: Callable[[JobStatus], None] | None = None) -> JobStatus:
    """Run a prepared job in this process (used by the worker and by ``run_inline``).

    Raises JobError when another process is running the same job."""
    p = jobs_dir(root) / jid
    try:
        record = json.loads((p / "spec.json").read_text())
    except FileNotFoundError:
        raise JobError(f"no job {jid}") from None
    except ValueError as e:
        raise JobError(f"job {jid} has an unreadable spec.json ({e})") from None
    kind, spec = record["kind"], record["spec"]
    fn = _resolve(kind)
    with _flock(p / ".run.lock", blocking=False) as got:
        if not got:
            other = status(jid, root)
            raise JobError(f"job {jid} is already running (pid {other.pid}); follow it with "
                           f"`python -m interp jobs status {jid}`")
        ctx = JobContext(jid, kind, p, on_progress)
        ctx._write()
        st = ctx.status
        try:
            result = fn(spec, ctx)
            st.state, st.result = "done", result
        except JobCancelled as e:
            st.state, st.error = "cancelled", str(e)
        except InterpError as e:
            st.state, st.error = "failed", str(e)
        except OSError as e:   # a full disk, a read-only folder: one clear line
            st.state, st.error = "failed", str(storage_error(e, f"running job {jid}"))
            _log_traceback(p)
        except Exception as e:  # noqa: BLE001 - a job must always end with a status
            st.state = "failed"
            st.error = (f"{type(e).__name__}: {e} (unexpected; the traceback is in "
                        f"{p / 'log.txt'})")
            _log_traceback(p)
        st.updated = time.time()
        ctx._write()
    return st


def run_inline(kind: str, spec: dict[str, Any], root: str | os.PathLike | None = None,
               on_progress: Callable[[JobStatus], None] | None = None,
               raise_on_error: bool = True, force: bool = False) -> JobStatus:
    """Prepare and run a job in this process (CLI, tests). A job already done is not run
    again (its status is returned) unless ``force``. Raises JobError on failure when
    ``raise_on_error``; a NaN or other typed error keeps its message."""
    _resolve(kind)
    validate_spec(kind, spec)
    jid, p = _prepare(kind, spec, root)
    if not force:
        st = status(jid, root)
        if st.state == "done":
            return st
    (p / "cancel").unlink(missing_ok=True)
    st = run(jid, root, on_progress)
    if raise_on_error and st.state != "done":
        raise JobError(f"job {jid} {st.state}: {st.error}")
    return st


def cancel(jid: str, root: str | os.PathLike | None = None, kill_after: float | None = None
           ) -> None:
    """Ask a job to stop at its next progress call (and SIGTERM it after ``kill_after`` s)."""
    p = jobs_dir(root) / jid
    if not p.exists():
        raise JobError(f"no job {jid}")
    (p / "cancel").touch()
    if kill_after is not None:
        time.sleep(kill_after)
        st = status(jid, root)
        if st.state == "running" and pid_alive(st.pid):
            os.kill(st.pid, signal.SIGTERM)


def wait(jid: str, root: str | os.PathLike | None = None, timeout: float = 3600,
         poll: float = 0.5) -> JobStatus:
    t0 = time.time()
    while True:
        st = status(jid, root)
        if not st.active:
            return st
        if time.time() - t0 > timeout:
            raise JobError(f"job {jid} still {st.state} after {timeout:.0f} s")
        time.sleep(poll)


# ------------------------------------------------------------------ CLI
def _tqdm_progress():
    from tqdm import tqdm

    bar = tqdm(total=0, file=sys.stderr, dynamic_ncols=True)

    def on(st: JobStatus) -> None:
        bar.total = st.total
        bar.n = st.step
        bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v)
                         for k, v in list(st.metrics.items())[:5]}, refresh=False)
        bar.refresh()

    return bar, on


def _cli_root() -> Path | None:
    d = os.environ.get("INTERP_JOBS_DIR")
    return Path(d) if d else None


def _cmd_run(args) -> int:
    bar, on = _tqdm_progress()
    try:
        st = run(args.id, _cli_root(), on)
    finally:
        bar.close()
    print(json.dumps({"id": st.id, "state": st.state, "error": st.error,
                      "result": st.result}, default=str))
    return 0 if st.state == "done" else 1


def _cmd_submit(args) -> int:
    from .validate import parse_json_object

    spec = parse_json_object(args.spec, "--spec") if args.spec else {}
    if args.wait:
        bar, on = _tqdm_progress()
        try:
            st = run_inline(args.kind, spec, _cli_root(), on, raise_on_error=False,
                            force=args.force)
        finally:
            bar.close()
        if st.state != "done":
            print(f"error: job {st.id} {st.state}: {st.error}", file=sys.stderr)
        print(json.dumps({"id": st.id, "state": st.state, "error": st.error,
                          "result": st.result}, default=str))
        return 0 if st.state == "done" else 1
    print(submit(args.kind, spec, _cli_root(), force=args.force))
    return 0


def _cmd_list(args) -> int:
    for st in list_jobs(args.kind, _cli_root()):
        print(f"{st.id}\t{st.state}\t{st.step}/{st.total}\t{st.error or ''}")
    return 0


def _cmd_status(args) -> int:
    print(json.dumps(status(args.id, _cli_root()).__dict__, default=str))
    return 0


def _cmd_cancel(args) -> int:
    cancel(args.id, _cli_root())
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("jobs", help="background jobs (training, sweeps)")
    js = p.add_subparsers(dest="jobs_command", required=True)
    r = js.add_parser("run", help="run a submitted job in this process (worker entry)")
    r.add_argument("id")
    r.set_defaults(func=_cmd_run)
    s = js.add_parser("submit", help="submit a job; --wait runs it here with a progress bar")
    s.add_argument("kind", help=", ".join(sorted(JOB_KINDS)))
    s.add_argument("--spec", default="{}", help="JSON config of the job")
    s.add_argument("--wait", action="store_true")
    s.add_argument("--force", action="store_true", help="run again even if the job is done")
    s.set_defaults(func=_cmd_submit)
    ls = js.add_parser("list")
    ls.add_argument("--kind")
    ls.set_defaults(func=_cmd_list)
    stp = js.add_parser("status")
    stp.add_argument("id")
    stp.set_defaults(func=_cmd_status)
    c = js.add_parser("cancel")
    c.add_argument("id")
    c.set_defaults(func=_cmd_cancel)
