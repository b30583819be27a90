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
