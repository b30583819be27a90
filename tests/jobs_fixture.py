"""Job functions used by tests/test_jobs.py (importable by the worker process)."""

import json
import math
import time


def counting_job(spec, ctx):
    """Counts to spec['n'], checkpointing each step in ctx.dir; fails/sleeps on request."""
    ck = ctx.dir / "ck.json"
    start = json.loads(ck.read_text())["i"] if ck.exists() else 0
    for i in range(start, spec["n"]):
        if spec.get("nan_at") == i:
            from interp.errors import NaNLossError

            raise NaNLossError(f"loss is NaN at step {i}")
        time.sleep(spec.get("sleep", 0))
        ck.write_text(json.dumps({"i": i + 1}))
        ctx.progress(i + 1, spec["n"], loss=math.exp(-i))
    return {"counted": spec["n"], "resumed_from": start}


def pid_job(spec, ctx):
    """Records the pid of every process that runs it (one line each), then counts slowly."""
    import os

    with open(ctx.dir / "pids.txt", "a") as f:
        f.write(f"{os.getpid()}\n")
    for i in range(spec["n"]):
        time.sleep(spec.get("sleep", 0.05))
        ctx.progress(i + 1, spec["n"])
    return {"pid": os.getpid()}


def broken_job(spec, ctx):
    """Fails with an unexpected (untyped) exception."""
    return {"x": [1, 2][spec.get("index", 5)]}


def disk_full_job(spec, ctx):
    """Fills the disk the job folder is on, then fails the way a save on a full disk does."""
    import errno

    from interp.store import storage_error

    with open(ctx.path / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        except OSError:
            pass
    raise storage_error(OSError(errno.ENOSPC, "No space left on device"), "saving the result")
