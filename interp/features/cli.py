"""``python -m interp features collect``: the ``features.collect`` job from the shell.

    python -m interp features collect [--source JSON] [--corpus JSON] [--config JSON]
        [--ablation none|top|all] [--map umap|pca|none] [--store main|demo] [--background]

Runs the job in the foreground with a progress bar (or detached with ``--background``)
and prints ``{"id", "state", "error", "result"}``; the same spec submitted from the
Features page is the same job. Under ``torchrun`` every rank streams its share of the
corpus and the merged artifact is the one a single process saves (rank 0 prints).
"""

from __future__ import annotations

from typing import Any


def _cmd_collect(args) -> int:
    from ..adapters.cli import _run_job
    from ..validate import number, parse_json_object

    spec: dict[str, Any] = {"ablation": args.ablation,
                            "ablation_top": number(args.ablation_top, "--ablation-top",
                                                   lo=1, integer=True),
                            "map": False if args.map == "none" else args.map,
                            "store": args.store}
    for name in ("source", "corpus", "config"):
        text = getattr(args, name)
        if text:
            spec[name] = parse_json_object(text, f"--{name}")
    if args.device:
        spec["device"] = args.device
    return _run_job("features.collect", spec, args.background)


def add_commands(sub) -> None:
    p = sub.add_parser("features", help="feature-activation collection (the features.collect "
                                        "job)")
    s = p.add_subparsers(dest="features_command", required=True)
    c = s.add_parser("collect", help="collect feature statistics over a corpus and save a "
                                     "features artifact")
    c.add_argument("--source", help='JSON, e.g. {"kind": "adapters", "store": "demo"} '
                                    "(the default) or a transcoder set")
    c.add_argument("--corpus", help='JSON, e.g. {"kind": "organism", "n": 2000} (the '
                                    'default) or {"kind": "jsonl", "path": FILE}')
    c.add_argument("--config", help='JSON collection settings, e.g. {"batch_size": 64, '
                                    '"top_k": 16}')
    c.add_argument("--ablation", default="top", choices=["none", "top", "all"])
    c.add_argument("--ablation-top", type=int, default=64)
    c.add_argument("--map", default="umap", choices=["umap", "pca", "none"],
                   help="feature map when the source has none (default umap)")
    c.add_argument("--store", default="main", choices=["main", "demo"],
                   help="where the artifact goes (default: your cache)")
    c.add_argument("--device", help="auto (default), cpu, cuda")
    c.add_argument("--background", action="store_true", help="run as a detached job")
    c.set_defaults(func=_cmd_collect)
