"""``python -m interp length ...``: build the length artifacts headless."""

from __future__ import annotations

import json
import sys


def add_commands(sub) -> None:
    p = sub.add_parser("length", help="reasoning length: directions, sweeps, head edit")
    lsub = p.add_subparsers(dest="length_cmd", required=True)
    b = lsub.add_parser("build", help="run every stage and save the artifacts")
    b.add_argument("--model", default="organism:reasoner")
    b.add_argument("--task", help="prompts, answers and markers: organisms (the default "
                                  "on the organisms), FILE.jsonl, FILE.txt, math:FILE.jsonl, "
                                  "math:arith")
    b.add_argument("--traces", help="a trace set key: the long/short split is read from its "
                                    "train traces instead of generating")
    b.add_argument("--store", choices=["demo", "main"], default="main",
                   help="demo = the committed cache/demo store")
    b.add_argument("--device", default="auto")
    b.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help="override a setting, e.g. --set n_eval=800 (see pipeline.DEFAULTS)")
    b.set_defaults(func=_build)


def _build(args) -> int:
    from ..models import load_model
    from ..validate import parse_sets
    from .pipeline import build, make_config
    from .sweep import _store

    sets = parse_sets(args.set)
    for k in ("task", "traces"):
        if getattr(args, k):
            sets[k] = getattr(args, k)
    cfg = make_config(model=args.model, **sets)
    model = load_model(cfg["model"], device=args.device)

    def progress(step, total, stage="", done=None, **_):
        print(f"[length] {step}/{total} {stage} {done if done is not None else ''}",
              file=sys.stderr)

    idx = build(model, cfg, _store(args.store), progress=progress)
    print(json.dumps(idx, default=str))
    return 0
