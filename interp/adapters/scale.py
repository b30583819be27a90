"""``python -m interp bench scale-out``: adapter training steps on 1 vs 2 ranks.

Both runs train the same adapters on the same global batch (``batch_size`` sequences per
step; on 2 ranks each rank takes half, gradients summed, :mod:`interp.adapters.parallel`),
one CPU thread per rank, gloo between the ranks. Each run is one ``torchrun
--nproc_per_node R`` launch of this module (the ranks load the pair once); inside it,
after a warm-up step, ``reps`` timed regions of ``steps`` training steps each (every rank
waits at a barrier before and after a region, so a region is the slowest rank's time).
Printed: per rank count the median seconds per step with the spread (min, max) over the
regions, the speed-up (median on 1 rank / median on 2), and the last loss of each run
(the same run: equal to float tolerance).

On a CPU machine the ranks share its cores with everything else running, so the speed-up
is bounded by the free cores; on GPUs (``--device cuda``: one GPU per rank) the same
launch measures the data-parallel step time.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

STEPS, QUICK_STEPS = 12, 4
REPS = 3
BATCH = 16
MAX_LEN = 128


def _pair() -> tuple[str, str, Path | None]:
    """The organisms when built, else an organism-sized random pair (in a temp folder)."""
    from ..models import organisms_dir

    org = organisms_dir()
    if (org / "reasoner" / "config.json").exists():
        return str(org / "base"), str(org / "reasoner"), None
    from .bench import _tiny_pair

    tmp = Path(tempfile.mkdtemp(prefix="scale-pair-"))
    b, f = _tiny_pair(tmp)
    return b, f, tmp


def _launch(n_ranks: int, conf: dict[str, Any], root: Path) -> dict[str, Any]:
    from ..store import PROJECT_ROOT

    cpath, out = root / f"conf{n_ranks}.json", root / f"out{n_ranks}.json"
    cpath.write_text(json.dumps(conf))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(PROJECT_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(n_ranks), "-m", "interp.adapters.scale", str(cpath), str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=PROJECT_ROOT)
    if proc.returncode != 0 or not out.exists():
        from ..errors import InterpError

        raise InterpError(f"the {n_ranks}-rank launch failed: "
                          f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    res = json.loads(out.read_text())
    res["launch_seconds"] = time.perf_counter() - t0
    return res


def bench_scale_out(args) -> dict[str, Any]:
    device = getattr(args, "device", "auto") or "auto"
    device = "cpu" if device == "auto" else device
    steps = QUICK_STEPS if getattr(args, "quick", False) else STEPS
    if device.startswith("cuda"):
        import torch

        if torch.cuda.device_count() < 2:
            from ..errors import ConfigError

            raise ConfigError("bench scale-out on cuda needs 2 GPUs (one per rank); "
                              f"this machine has {torch.cuda.device_count()}")
    base, reasoner, tmp = _pair()
    conf = {"base": base, "reasoner": reasoner, "steps": steps, "reps": REPS,
            "batch_size": BATCH, "max_len": MAX_LEN, "device": device}
    runs = {}
    with tempfile.TemporaryDirectory(prefix="scale-out-") as d:
        for r in (1, 2):
            print(f"[scale-out] {r} rank(s): {REPS} x {steps} steps of a {BATCH}-sequence "
                  "global batch", file=sys.stderr)
            runs[r] = _launch(r, conf, Path(d))
            print(f"[scale-out] {r} rank(s): {runs[r]['step_seconds']:.3f} s/step "
                  f"(regions {[round(x, 2) for x in runs[r]['region_seconds']]} s)",
                  file=sys.stderr)
    if tmp is not None:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    one, two = runs[1], runs[2]
    return {"device": device, "global_batch": BATCH, "max_len": MAX_LEN,
            "steps_per_region": steps, "reps": REPS, "threads_per_rank": 1,
            "cpu_count": os.cpu_count(),
            "ranks_1_step_seconds": one["step_seconds"],
            "ranks_1_spread": [min(one["per_step"]), max(one["per_step"])],
            "ranks_2_step_seconds": two["step_seconds"],
            "ranks_2_spread": [min(two["per_step"]), max(two["per_step"])],
            "speedup": one["step_seconds"] / two["step_seconds"],
            "ranks_1_region_seconds": one["region_seconds"],
            "ranks_2_region_seconds": two["region_seconds"],
            "ranks_1_last_loss": one["last_loss"], "ranks_2_last_loss": two["last_loss"],
            "pair": "organisms" if tmp is None else "random organism-sized pair"}


# ------------------------------------------------------------------ one launch (a rank)
def _worker(conf_path: str, out_path: str) -> int:
    import dataclasses

    from .. import distributed as D
    from . import parallel
    from .train import TrainConfig, setup_models, train

    conf = json.loads(Path(conf_path).read_text())
    ranks = D.init(conf["device"])
    cfg = TrainConfig(base=conf["base"], reasoner=conf["reasoner"], steps=conf["steps"],
                      batch_size=conf["batch_size"], max_len=conf["max_len"],
                      device=conf["device"], threads=1, save=False, ckpt_every=10 ** 9,
                      data="traces")
    setup = parallel.prepare(cfg, None, ranks) if ranks.world > 1 else setup_models(cfg)
    root = Path(out_path).parent

    def work(name: str) -> Path | None:
        """A fresh checkpoint folder on rank 0 (each region trains from step 0; its
        last step writes a checkpoint, as a run's does), none on the others."""
        return root / f"work-{ranks.world}-{name}" if ranks.is_main else None

    train(dataclasses.replace(cfg, steps=1), setup, work("warm"), ranks=ranks)   # warm-up
    regions, last = [], None
    for rep in range(conf["reps"]):
        D.barrier()
        t0 = time.perf_counter()
        res = train(cfg, setup, work(str(rep)), ranks=ranks)
        D.barrier()
        regions.append(time.perf_counter() - t0)
        last = res.history[-1]["loss"] if res.history else None
    if ranks.is_main:
        per = [r / conf["steps"] for r in regions]
        Path(out_path).write_text(json.dumps({
            "ranks": ranks.world, "region_seconds": regions, "per_step": per,
            "step_seconds": statistics.median(per), "last_loss": last}))
    D.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1], sys.argv[2]))
