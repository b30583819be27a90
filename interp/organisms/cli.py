"""``python -m interp organisms build|eval``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def add_commands(sub) -> None:
    p = sub.add_parser("organisms", help="build or evaluate the model-organism family")
    osub = p.add_subparsers(dest="organisms_command", required=True)

    b = osub.add_parser("build", help="train the whole family from one seed (CPU: minutes)")
    b.add_argument("--quick", action="store_true",
                   help="tiny sizes and few steps: exercises every training path (< 2 min)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", default=None,
                   help="output folder (default: the project's cache/organisms)")
    b.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    b.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    b.add_argument("--no-eval", action="store_true",
                   help="skip the behaviour report (else saved under <out>/../demo)")
    b.add_argument("--only", choices=["reasoner", "sft", "instruct"], default=None,
                   help="retrain just this base-derived variant of the built family "
                        "(same result as a full build with this config)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=_build)

    e = osub.add_parser("eval", help="behaviour report of a built family (saved artifact)")
    e.add_argument("--root", default=None, help="organisms folder (default: cache/organisms)")
    e.add_argument("--store", default=None, help="artifact store root (default: cache/demo)")
    e.add_argument("--n", type=int, default=512, help="held-out problems")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default="cpu")
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=_eval)


def _build(args: argparse.Namespace) -> int:
    import torch

    from ..cli import emit
    from ..models import organisms_dir
    from .evaluate import evaluate_family, flat_report
    from .train import BuildConfig

    torch.set_num_threads(args.threads)
    cfg = BuildConfig.quick_config(args.seed) if args.quick else BuildConfig(seed=args.seed)
    cfg.device = args.device
    out = Path(args.out) if args.out else organisms_dir()
    t0 = time.time()
    from .train import build_family, retrain_variant

    if args.only:
        desc = retrain_variant(cfg, out, args.only)
        result = {"out": str(out), "retrained": args.only,
                  "seconds": desc["build"]["timings_s"][args.only]}
        if not args.no_eval:
            art = evaluate_family(out, out.parent / "demo", n_eval=cfg.n_eval, seed=cfg.seed,
                                  device=args.device)
            result["artifact"] = art.key
            result.update(flat_report(art.meta["figures"]))
        emit(result, args.json)
        return 0
    desc = build_family(cfg, out)
    result = {"out": str(out), "train_seconds": desc["build"]["train_seconds"],
              "timings_s": desc["build"]["timings_s"],
              "final_loss": desc["build"]["final_loss"],
              "grpo_reward_first10": desc["build"]["grpo_reward_first10"],
              "grpo_reward_last10": desc["build"]["grpo_reward_last10"]}
    if not args.no_eval:
        t1 = time.time()
        art = evaluate_family(out, out.parent / "demo", n_eval=cfg.n_eval, seed=cfg.seed,
                              device=args.device)
        result["eval_seconds"] = time.time() - t1
        result["artifact"] = art.key
        result.update(flat_report(art.meta["figures"]))
    result["total_seconds"] = time.time() - t0
    desc["build"]["total_seconds_with_eval"] = result["total_seconds"]
    from ..store import write_json_atomic

    write_json_atomic(out / "task.json", desc)
    emit(result, args.json)
    return 0


def _eval(args: argparse.Namespace) -> int:
    import torch

    from ..cli import emit
    from ..models import cache_root, organisms_dir
    from .evaluate import evaluate_family, flat_report

    torch.set_num_threads(args.threads)
    root = Path(args.root) if args.root else organisms_dir()
    store = Path(args.store) if args.store else cache_root() / "demo"
    art = evaluate_family(root, store, n_eval=args.n, seed=args.seed, device=args.device)
    out = {"artifact": art.key, **flat_report(art.meta["figures"])}
    emit(out, args.json)
    _ = (json, sys)
    return 0
