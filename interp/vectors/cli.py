"""``python -m interp vectors ...``: build the demo artifacts, export an edited model,
print task-vector statistics."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _mask(args):
    from ..errors import ConfigError
    from ..validate import number
    from .task import GROUPS, Mask

    groups = tuple(g.strip() for g in args.groups.split(",") if g.strip()) \
        if args.groups else GROUPS
    layers = None
    if args.layers:
        parts = args.layers.split("-")
        if len(parts) != 2:
            raise ConfigError(f"--layers takes a block range lo-hi, e.g. 1-3; got "
                              f"{args.layers!r}")
        layers = tuple(number(x, "--layers", lo=0, integer=True) for x in parts)
    return Mask(groups, layers)


def _demo(args) -> int:
    from .demo import build_demo

    keys = build_demo(device=args.device, n_accuracy=args.n_accuracy, n_sweep=args.n_sweep)
    print(json.dumps(keys))
    return 0


def _export(args) -> int:
    from ..models import local_checkpoint
    from ..validate import finite
    from .task import TaskVector, check_export_dir, export_edited_checkpoint

    mask = _mask(args)
    finite(args.alpha, "α")
    check_export_dir(Path(args.out), args.force)
    tv = TaskVector.from_specs(args.a, args.b)
    _, target = local_checkpoint(args.target)
    out = export_edited_checkpoint(target, tv, args.alpha, args.out, mask,
                                   provenance={"target_spec": args.target},
                                   overwrite=args.force)
    print(json.dumps({"out": str(out)}))
    return 0


def _stats(args) -> int:
    from ..models import local_checkpoint
    from .task import TaskVector, aggregate_stats, task_vector_stats

    mask = _mask(args)
    tv = TaskVector.from_specs(args.a, args.b)
    _, target = local_checkpoint(args.target)
    ref = local_checkpoint(args.reference)[1] if args.reference else None
    t = task_vector_stats(tv, target, ref, mask)
    print(aggregate_stats(t, "layer").to_string(index=False), file=sys.stderr)
    print(json.dumps(aggregate_stats(t, "layer").to_dict(orient="records")))
    return 0


def _run(args) -> int:
    from ..store import Store
    from ..validate import parse_sets
    from .demo import run_experiment

    spec = parse_sets(args.set)
    spec.update({k: v for k, v in (("kind", args.kind), ("target", args.target),
                                   ("task", args.task), ("traces", args.traces),
                                   ("donor_a", args.donor_a), ("donor_b", args.donor_b),
                                   ("reference", args.reference),
                                   ("positives", args.positives),
                                   ("negatives", args.negatives)) if v is not None})
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    keys = run_experiment(spec, Store(args.store) if args.store else Store(), args.device,
                          parts)
    print(json.dumps(keys))
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("vectors", help="reasoning vectors: task / control vectors, lenses")
    vs = p.add_subparsers(dest="vectors_command", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--a", default="organism:grpo", help="donor A (v = A − B)")
        q.add_argument("--b", default="organism:sft", help="donor B")
        q.add_argument("--target", default="organism:instruct")
        q.add_argument("--groups", default="", help="mask groups, e.g. attn,mlp (default all)")
        q.add_argument("--layers", default="", help="block range lo-hi, inclusive")

    d = vs.add_parser("demo", help="rebuild the demo artifacts in cache/demo")
    d.add_argument("--device", default="auto")
    d.add_argument("--n-accuracy", type=int, default=500)
    d.add_argument("--n-sweep", type=int, default=128)
    d.set_defaults(func=_demo)
    r = vs.add_parser("run", help="a task- or control-vector experiment on any target: "
                                  "KL / entropy sweep, accuracy vs α, lensed trace")
    r.add_argument("--target", required=True, help="the model the vector is applied to")
    r.add_argument("--task", required=True,
                   help="prompts, answers and markers: organisms, FILE.jsonl, math:...")
    r.add_argument("--kind", default="task", choices=["task", "control"])
    r.add_argument("--donor-a", help="task vector v = A − B: donor A")
    r.add_argument("--donor-b", help="donor B")
    r.add_argument("--reference", help="cosine(v, target − reference) in the stats part")
    r.add_argument("--positives", help="control vector: positive prompts (a task / file)")
    r.add_argument("--negatives", help="control vector: negative prompts (a task / file)")
    r.add_argument("--traces", help="a trace set key: its traces are the reference "
                                    "continuations of the sweep")
    r.add_argument("--parts", default="stats,sweep,accuracy,trace")
    r.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="another experiment option, e.g. --set n_sweep=16 --set layer=3")
    r.add_argument("--device", default="auto")
    r.add_argument("--store", help="artifact store root")
    r.set_defaults(func=_run)
    e = vs.add_parser("export", help="write target + alpha * (m * v) as a checkpoint")
    common(e)
    e.add_argument("--alpha", type=float, default=1.0)
    e.add_argument("--out", required=True, help="a new (or empty) folder")
    e.add_argument("--force", action="store_true",
                   help="replace --out if it already holds files")
    e.set_defaults(func=_export)
    s = vs.add_parser("stats", help="per-layer ||v|| and cosine(v, target - reference)")
    common(s)
    s.add_argument("--reference", default="organism:base")
    s.set_defaults(func=_stats)
