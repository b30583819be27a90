"""Attribution benchmarks: ``bench attribution-scaling`` and ``bench
attribution-vs-circuit-tracer``.

Both run on the benchmark shape of :mod:`interp.attribution.benchmodel` (4 layers,
d_model 128, 4 heads x 32, gated SiLU d_mlp 512, random 1,024-feature ReLU transcoders
reading ``ln2_out`` = circuit-tracer's ``mlp.hook_in``, about 8-9 active features per
token per layer) and time each attribution in a fresh subprocess, so that the peak
memory is that process's own ``ru_maxrss`` (the whole process: interpreter, torch,
TransformerLens, model and graph; ``rss_before_bytes`` is what it held before the timed
call). The timed region is ``record`` + ``attribute`` (the forward pass and every edge;
circuit-tracer's ``attribute`` call likewise); building the model is not timed. Each
measurement also records the process's CPU seconds (all its threads) and the 1-minute
load average before and after, since on a shared machine wall time depends on the other
users. Torch runs with ``threads`` threads on both sides (default 1: with more
runnable processes than cores, OpenMP's spinning threads made both engines several
times slower; ``$INTERP_BENCH_THREADS`` overrides it).

* **scaling**: per prompt length (256, 1,024, 4,096 tokens; ``--quick``: 64) the median
  and spread over ``reps`` runs of seconds, CPU seconds and peak bytes, the active
  features, the feature rows computed, the feature cap (none at 256, 7,500 above, as in
  circuit-tracer's own runs) and the graph's node count. The pruning step (default
  thresholds, ``max_nodes`` 2,048 above 256 tokens) is timed separately, with its own
  peak.
* **vs circuit-tracer**: the same setup folder (model, transcoders, prompt) on both
  sides, 256 tokens (``--quick``: 64), every feature attributed (no cap) and the same
  logit targets: ours picks the top logits (at most 10, 95 % of the probability), and
  circuit-tracer gets exactly those ids (``--target-ids``). ``time_ratio`` and
  ``memory_ratio`` are ours / circuit-tracer's (medians; below 1 is better for us);
  ``max_edge_diff`` is the largest absolute difference over every edge of every block
  (feature->feature, error->feature, token->feature, feature->logit, error->logit,
  token->logit), with features matched by (layer, position, index). circuit-tracer
  runs in its own venv (``$INTERP_CT_PYTHON`` or ``.venv-ct``, see
  :mod:`interp.attribution.ct_compare`).

This module is also the subprocess that times our side::

    python -m interp.attribution.bench SETUP_FOLDER OUT_JSON [--n-tokens N]
        [--max-feature-nodes K] [--target-ids 5,17] [--threads T] [--edges FILE]
        [--prune] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import BaselineError, ConfigError
from ..store import PROJECT_ROOT

LENGTHS = (256, 1024, 4096)
QUICK_LENGTHS = (64,)
DEFAULT_CAP = 7500            # feature rows above 256 tokens (circuit-tracer's setting)
UNCAPPED_UP_TO = 256          # every active feature gets a row up to this length
PRUNE_MAX_NODES = 2048        # pruning's cap on kept features and errors above that
REPS = 3
CT_BATCH_SIZE = 256
THREADS_ENV = "INTERP_BENCH_THREADS"


# ---------------------------------------------------------------------- our side
def bench_replacement(setup: Any):
    """The setup's transcoders as a :class:`Replacement` (our orientation)."""
    from .replacement import FeatureLayer, Replacement

    layers = [FeatureLayer(t.W_enc.T.contiguous(), t.b_enc, t.W_dec.contiguous(), t.b_dec,
                           site="ln2_out") for t in setup.transcoders]
    return Replacement(layers, keep_mlp=False,
                       source={"kind": "transcoders", "key": "attribution-bench"})


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def worker(argv: Sequence[str] | None = None) -> int:
    """The subprocess side (module docstring): one timed attribution, a JSON sidecar."""
    ap = argparse.ArgumentParser(prog="python -m interp.attribution.bench")
    ap.add_argument("setup", type=Path)
    ap.add_argument("out", type=Path, help="JSON file with the figures")
    ap.add_argument("--n-tokens", type=int, default=None)
    ap.add_argument("--max-feature-nodes", type=int, default=None)
    ap.add_argument("--target-ids", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--edges", type=Path, default=None,
                    help="also write the edges in circuit-tracer's blocks (safetensors)")
    ap.add_argument("--prune", action="store_true", help="also time pruning")
    ap.add_argument("--prune-max-nodes", type=int, default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from .benchmodel import load_bench_setup
    from .engine import attribute
    from .record import record
    from .targets import LogitTarget

    setup = load_bench_setup(args.setup, device=args.device)
    ids = setup.input_ids if args.n_tokens is None else setup.input_ids[: args.n_tokens]
    rep = bench_replacement(setup)
    targets = None
    if args.target_ids:
        targets = [LogitTarget(int(t), -1) for t in args.target_ids.split(",")]
    rss_before = _rss_bytes()
    load0 = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    rec = record(setup.model, ids, rep)
    graph = attribute(rec, targets, max_feature_nodes=args.max_feature_nodes)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = _peak_bytes()
    info: dict[str, Any] = {
        "seconds": seconds, "cpu_seconds": cpu, "peak_rss_bytes": peak,
        "rss_before_bytes": rss_before, "load_average_before": load0,
        "load_average_after": os.getloadavg()[0], "threads": torch.get_num_threads(),
        "n_tokens": int(ids.numel()), "n_features": graph.info["n_active_features"],
        "n_feature_rows": graph.info["n_feature_rows"],
        "feature_cap": args.max_feature_nodes, "n_nodes": len(graph.nodes),
        "edge_bytes": graph.edges.nbytes(),
        "target_ids": [int(t["token"]) for t in graph.targets],
        "device": args.device, "torch": torch.__version__,
    }
    if args.prune:
        from .prune import prune

        t1, c1 = time.perf_counter(), time.process_time()
        pr = prune(graph, max_nodes=args.prune_max_nodes)
        info.update(prune_seconds=time.perf_counter() - t1,
                    prune_cpu_seconds=time.process_time() - c1,
                    prune_peak_rss_bytes=_peak_bytes(), prune_max_nodes=args.prune_max_nodes,
                    pruned_nodes=int(pr.nodes.numel()), pruned_edges=pr.n_edges(),
                    replacement_score=pr.scores["replacement"],
                    completeness_score=pr.scores["completeness"])
    if args.edges is not None:
        from safetensors.torch import save_file

        from .ct_compare import graph_edges_as_dense

        blocks = graph_edges_as_dense(graph)
        del graph
        save_file({k: v.contiguous() for k, v in blocks.items()}, str(args.edges))
    _write_json(args.out, info)
    print(json.dumps({k: info[k] for k in ("seconds", "cpu_seconds", "peak_rss_bytes")}))
    return 0


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def run_ours(setup_folder: Path, n_tokens: int | None = None,
             max_feature_nodes: int | None = None, target_ids: Sequence[int] | None = None,
             threads: int | None = None, edges: Path | None = None, prune: bool = False,
             prune_max_nodes: int | None = None, device: str = "cpu",
             timeout: float | None = None) -> dict[str, Any]:
    """One timed attribution of ours in a fresh subprocess; its figures (worker)."""
    from .ct_compare import run_flags

    with tempfile.TemporaryDirectory(prefix="attr-bench-") as tmp:
        out = Path(tmp) / "ours.json"
        cmd = [sys.executable, "-m", "interp.attribution.bench", str(setup_folder), str(out),
               "--device", device]
        cmd += run_flags(n_tokens, max_feature_nodes, target_ids, threads)
        if edges is not None:
            cmd += ["--edges", str(edges)]
        if prune:
            cmd.append("--prune")
            if prune_max_nodes is not None:
                cmd += ["--prune-max-nodes", str(int(prune_max_nodes))]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  cwd=str(PROJECT_ROOT))
        except subprocess.TimeoutExpired as e:
            raise BaselineError(f"our attribution ran past {timeout} s") from e
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
            raise BaselineError(f"our attribution subprocess failed (exit "
                                f"{proc.returncode}):\n{tail}")
        return json.loads(out.read_text())


# ---------------------------------------------------------------------- summaries
def _summary(values: Sequence[float]) -> dict[str, float]:
    v = [float(x) for x in values]
    return {"median": statistics.median(v), "min": min(v), "max": max(v),
            "spread": max(v) - min(v), "n": len(v)}


def _threads() -> int:
    env = os.environ.get(THREADS_ENV)
    if not env:
        return 1
    try:
        t = int(env)
    except ValueError:
        t = 0
    if t < 1:
        raise ConfigError(f"${THREADS_ENV} must be a positive integer, not {env!r}")
    return t


def _device(args: Any) -> str:
    from ..models import pick_device

    return str(pick_device(getattr(args, "device", "auto") or "auto"))


def _log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def _runs_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("seconds", "cpu_seconds", "peak_rss_bytes")
    out: dict[str, Any] = {k: _summary([r[k] for r in runs]) for k in keys}
    out["load_average"] = _summary([r["load_average_before"] for r in runs]
                                   + [r["load_average_after"] for r in runs])
    return out


# ---------------------------------------------------------------------- scaling
def scaling(lengths: Sequence[int] = LENGTHS, reps: int = REPS, threads: int = 1,
            device: str = "cpu", cap: int = DEFAULT_CAP, uncapped_up_to: int = UNCAPPED_UP_TO,
            prune_max_nodes: int = PRUNE_MAX_NODES) -> dict[str, Any]:
    """Per length: medians and spreads over ``reps`` fresh-process runs (module
    docstring)."""
    from .benchmodel import save_bench_setup

    per: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="attr-scaling-") as tmp:
        folder = save_bench_setup(Path(tmp) / "setup", max(lengths),
                                  n_ctx=max(4096, max(lengths)))
        for n in lengths:
            fcap = None if n <= uncapped_up_to else cap
            pmax = None if n <= uncapped_up_to else prune_max_nodes
            runs = []
            for r in range(reps):
                runs.append(run_ours(folder, n_tokens=n, max_feature_nodes=fcap,
                                     threads=threads, device=device, prune=True,
                                     prune_max_nodes=pmax))
                _log(f"attribution-scaling {n} tokens, run {r + 1}/{reps}: "
                     f"{runs[-1]['seconds']:.2f} s ({runs[-1]['cpu_seconds']:.2f} s CPU), "
                     f"peak {runs[-1]['peak_rss_bytes'] / 2**30:.2f} GiB, load "
                     f"{runs[-1]['load_average_after']:.1f}")
            s = _runs_summary(runs)
            last = runs[-1]
            per[str(n)] = {
                "seconds": s["seconds"]["median"], "peak_bytes": s["peak_rss_bytes"]["median"],
                "cpu_seconds": s["cpu_seconds"]["median"],
                "seconds_spread": s["seconds"], "cpu_seconds_spread": s["cpu_seconds"],
                "peak_bytes_spread": s["peak_rss_bytes"], "load_average": s["load_average"],
                "rss_before_bytes": last["rss_before_bytes"],
                "features": last["n_features"], "rows": last["n_feature_rows"],
                "feature_cap": fcap, "nodes": last["n_nodes"],
                "edge_bytes": last["edge_bytes"],
                "prune_seconds": statistics.median(r["prune_seconds"] for r in runs),
                "prune_peak_bytes": statistics.median(r["prune_peak_rss_bytes"] for r in runs),
                "prune_max_nodes": pmax, "pruned_nodes": last["pruned_nodes"],
                "replacement_score": last["replacement_score"],
                "completeness_score": last["completeness_score"],
            }
    return {"lengths": [int(n) for n in lengths], "per_length": per, "reps": reps,
            "threads": threads, "device": device,
            "timed": "record + attribute in a fresh subprocess; peak = its ru_maxrss",
            "model": "benchmodel: 4 layers, d_model 128, 4 heads, gated SiLU d_mlp 512, "
                     "1,024-feature random ReLU transcoders at ln2_out"}


def bench_attribution_scaling(args: Any) -> dict[str, Any]:
    """``python -m interp bench attribution-scaling``: REPORTS.md keys per length
    (``per_length[n]``: ``seconds``, ``peak_bytes`` and the rest), and ``seconds`` and
    ``peak_bytes`` by length at the top level."""
    quick = bool(getattr(args, "quick", False))
    res = scaling(QUICK_LENGTHS if quick else LENGTHS, reps=REPS, threads=_threads(),
                  device=_device(args))
    per = res["per_length"]
    res["seconds"] = {n: per[n]["seconds"] for n in per}
    res["peak_bytes"] = {n: per[n]["peak_bytes"] for n in per}
    res["quick"] = quick
    return res


# ---------------------------------------------------------------------- vs circuit-tracer
def compare_edges(ours_file: Path, ct_file: Path) -> dict[str, Any]:
    """Edge differences, block by block, between our edges (the worker's ``--edges``
    file) and circuit-tracer's graph; also checks that both have the same features
    (keys and activations) and logit targets in the same order."""
    from safetensors.torch import load_file

    from .ct_compare import EDGE_BLOCKS, ct_edges_as_dense, load_ct_graph, max_abs_diff_by_block

    ours = load_file(str(ours_file))
    ct = load_ct_graph(ct_file)
    if ct.n_features != ours["feature_keys"].shape[0]:
        raise BaselineError(f"circuit-tracer has {ct.n_features} feature nodes, we have "
                            f"{ours['feature_keys'].shape[0]}")
    theirs = ct_edges_as_dense(ct, feature_keys=ours["feature_keys"])
    if not torch.equal(theirs["logit_token_ids"], ours["logit_token_ids"]):
        raise BaselineError(f"logit targets differ: {theirs['logit_token_ids'].tolist()} vs "
                            f"{ours['logit_token_ids'].tolist()}")
    diff = max_abs_diff_by_block(ours, theirs)
    return {"max_edge_diff": diff["max"],
            "edge_diff_by_block": {k: diff[k] for k in EDGE_BLOCKS if k in diff},
            "edge_scale_by_block": {k: float(ours[k].abs().max()) if ours[k].numel() else 0.0
                                    for k in EDGE_BLOCKS},
            "activation_max_diff": float((ours["feature_activations"]
                                          - theirs["feature_activations"]).abs().max()),
            "n_feature_nodes": int(ours["feature_keys"].shape[0]),
            "logit_token_ids": ours["logit_token_ids"].tolist()}


def vs_circuit_tracer(n_tokens: int = 256, reps: int = REPS, ct_reps: int = 1,
                      threads: int = 1, device: str = "cpu",
                      batch_size: int = CT_BATCH_SIZE) -> dict[str, Any]:
    """Ours and circuit-tracer's on one setup (module docstring)."""
    from .benchmodel import save_bench_setup
    from .ct_compare import ct_python, run_circuit_tracer

    ct_python()  # a clear ConfigError before anything runs
    with tempfile.TemporaryDirectory(prefix="attr-vs-ct-") as tmp:
        folder = save_bench_setup(Path(tmp) / "setup", n_tokens, n_ctx=max(4096, n_tokens))
        ours_edges = Path(tmp) / "ours-edges.safetensors"
        ours = []
        for r in range(reps):
            ours.append(run_ours(folder, threads=threads, device=device,
                                 edges=ours_edges if r == 0 else None,
                                 target_ids=ours[0]["target_ids"] if ours else None))
            _log(f"ours {n_tokens} tokens, run {r + 1}/{reps}: {ours[-1]['seconds']:.2f} s "
                 f"({ours[-1]['cpu_seconds']:.2f} s CPU), peak "
                 f"{ours[-1]['peak_rss_bytes'] / 2**30:.2f} GiB")
        target_ids = ours[0]["target_ids"]
        cts = []
        ct_file = None
        for r in range(ct_reps):
            info = run_circuit_tracer(folder, target_ids=target_ids, batch_size=batch_size,
                                      threads=threads, device=device,
                                      out_file=Path(tmp) / f"ct-{r}.safetensors")
            if r == 0:
                ct_file = Path(info["out_file"])
            else:
                Path(info["out_file"]).unlink(missing_ok=True)
            cts.append({"seconds": info["attribute_seconds"],
                        "cpu_seconds": info["attribute_cpu_seconds"],
                        "peak_rss_bytes": info["peak_rss_bytes"],
                        "rss_before_bytes": info["rss_before_attribute_bytes"],
                        "load_average_after": info["load_average_1min"],
                        "versions": info["versions"], "counts": info["counts"]})
            _log(f"circuit-tracer {n_tokens} tokens, run {r + 1}/{ct_reps}: "
                 f"{cts[-1]['seconds']:.2f} s ({cts[-1]['cpu_seconds']:.2f} s CPU), peak "
                 f"{cts[-1]['peak_rss_bytes'] / 2**30:.2f} GiB")
        edges = compare_edges(ours_edges, ct_file)
    o = _runs_summary(ours)
    c = {k: _summary([r[k] for r in cts]) for k in ("seconds", "cpu_seconds",
                                                    "peak_rss_bytes")}
    return {
        "ours_seconds": o["seconds"]["median"], "ct_seconds": c["seconds"]["median"],
        "time_ratio": o["seconds"]["median"] / c["seconds"]["median"],
        "cpu_time_ratio": o["cpu_seconds"]["median"] / c["cpu_seconds"]["median"],
        "memory_ratio": o["peak_rss_bytes"]["median"] / c["peak_rss_bytes"]["median"],
        "max_edge_diff": edges["max_edge_diff"],
        "ours": {**o, "rss_before_bytes": ours[-1]["rss_before_bytes"],
                 "n_features": ours[-1]["n_features"], "n_nodes": ours[-1]["n_nodes"]},
        "ct": {**c, "load_average_after": [r["load_average_after"] for r in cts],
               "rss_before_bytes": cts[-1]["rss_before_bytes"],
               "versions": cts[-1]["versions"], "counts": cts[-1]["counts"],
               "batch_size": batch_size},
        "edges": edges, "n_tokens": n_tokens, "reps": reps, "ct_reps": ct_reps,
        "threads": threads, "device": device, "target_ids": target_ids,
        "feature_cap": None,
    }


def bench_attribution_vs_circuit_tracer(args: Any) -> dict[str, Any]:
    """``python -m interp bench attribution-vs-circuit-tracer`` (REPORTS.md keys)."""
    quick = bool(getattr(args, "quick", False))
    res = vs_circuit_tracer(n_tokens=64 if quick else 256, reps=REPS,
                            ct_reps=REPS if quick else 1, threads=_threads(),
                            device=_device(args))
    res["quick"] = quick
    return res


if __name__ == "__main__":
    sys.exit(worker())
