"""``python -m interp adapters ...``: train, sweep, evaluate and list adapter sets.

    python -m interp adapters train [--base SPEC --reasoner SPEC --traces KEY]
                                    [--config FILE.json] [--set k=v ...] [--device D]
                                    [--background]
    python -m interp adapters sweep --set l1_values=[3e-4,1e-3,3e-3] [--set k=v ...]
    python -m interp adapters eval [KEY] [--n-faith N] [--n-behaviour N]
    python -m interp adapters list
    python -m interp adapters demo [--set k=v ...]   # the committed demo set (cache/demo)

``train``/``sweep`` run the same job as the Adapters page (:mod:`interp.jobs`), here in
the foreground with a progress bar on stderr (``--background`` submits it to a worker
and prints the job id). Re-running the same config resumes from the job's checkpoint.
The last stdout line is the result as JSON.

Under ``torchrun`` (``torchrun --nproc_per_node N -m interp adapters train ...``)
``train`` runs data-parallel on the N ranks (``--set shard=fsdp`` also shards the pair
and the adapters) and ``eval`` splits its batches across them; rank 0 alone prints,
records the job and saves (:mod:`interp.adapters.parallel`, :mod:`interp.distributed`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..validate import number, parse_json_object, parse_sets


def build_spec(args) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    if getattr(args, "config", None):
        try:
            text = Path(args.config).read_text()
        except OSError as e:
            raise ConfigError(f"cannot read config {args.config}: {e}") from e
        spec.update(parse_json_object(text, f"the config file {args.config}"))
    spec.update(parse_sets(getattr(args, "set", None)))
    if getattr(args, "device", None):
        spec["device"] = args.device
    return with_pair(spec, args)


def with_pair(spec: dict[str, Any], args) -> dict[str, Any]:
    """The pair and data of ``--base`` / ``--reasoner`` / ``--traces`` / ``--task``.

    A trace set needs the pair named (the organisms are never assumed for it); the
    organisms task is the organisms' own trace generator (``data=traces``); any other
    task must be turned into a trace set first."""
    for flag in ("base", "reasoner"):
        if getattr(args, flag, None):
            spec[flag] = getattr(args, flag)
    traces, task = getattr(args, "traces", None), getattr(args, "task", None)
    if traces and task:
        raise ConfigError("give --traces or --task, not both")
    if traces:
        if not (spec.get("base") and spec.get("reasoner")):
            raise ConfigError("training on a trace set needs the pair named: --base SPEC "
                              "--reasoner SPEC")
        spec["data"] = f"traceset:{traces}"
    elif task:
        if task.strip() not in ("organisms", "organism"):
            raise ConfigError(
                f"adapters train on a trace set, not on prompts: run `python -m interp traces "
                f"generate --model {spec.get('reasoner', 'REASONER')} --task {task}` (or "
                "`traces import FILE --model ...`), then pass --traces KEY")
        spec["data"] = "traces"
    return spec


def _tqdm():
    from tqdm import tqdm

    bar = tqdm(total=0, file=sys.stderr, dynamic_ncols=True, unit="step")

    def on(st) -> None:
        bar.total = st.total
        bar.n = st.step
        m = st.metrics
        bar.set_postfix({k: f"{m[k]:.4g}" for k in ("loss", "kl", "l0", "tokens_per_s")
                         if isinstance(m.get(k), (int, float))}, refresh=False)
        bar.refresh()

    return bar, on


def _run_job(kind: str, spec: dict[str, Any], background: bool, after=None) -> int:
    """Run a job in the foreground with a progress bar (or submit it with
    ``background``); ``after(result)`` sees the result before it is printed."""
    from .. import jobs
    from ..distributed import launched

    jobs.validate_spec(kind, spec)  # fail fast on typos and bad values, before a worker
    if launched():
        return _run_ranks(kind, spec, background)
    if background:
        print(jobs.submit(kind, spec))
        return 0
    bar, on = _tqdm()
    try:
        st = jobs.run_inline(kind, spec, on_progress=on, raise_on_error=False)
    finally:
        bar.close()
    if st.state != "done":
        print(f"error: job {st.id} {st.state}: {st.error}", file=sys.stderr)
    elif after is not None:
        after(st.result)
    print(json.dumps({"id": st.id, "state": st.state, "error": st.error, "result": st.result},
                     default=str))
    return 0 if st.state == "done" else 1


def _run_ranks(kind: str, spec: dict[str, Any], background: bool) -> int:
    """``_run_job`` on one rank of a torchrun launch: every rank runs its share of the job
    (:data:`interp.distributed.SPLIT_JOBS`), rank 0 reports."""
    from .. import distributed as D
    from .parallel import run_job

    if background:
        raise ConfigError("--background starts a detached worker; under torchrun every rank "
                          "runs in the foreground (follow it with `python -m interp jobs "
                          "list`)")
    if kind == "adapters.sweep":
        raise ConfigError("sweeps run in one process; under torchrun train one L1 value at a "
                          "time with `adapters train --set l1=...`")
    if kind not in D.SPLIT_JOBS:
        raise ConfigError(f"job {kind} runs in one process; under torchrun run one of "
                          f"{', '.join(D.SPLIT_JOBS)}")
    main = D.env_ranks().is_main
    bar, on = _tqdm() if main else (None, None)
    try:
        st = run_job(kind, spec, on_progress=on)
    finally:
        if bar is not None:
            bar.close()
    if st is None:
        return 0
    if st.state != "done":
        print(f"error: job {st.id} {st.state}: {st.error}", file=sys.stderr)
    print(json.dumps({"id": st.id, "state": st.state, "error": st.error, "result": st.result},
                     default=str))
    return 0 if st.state == "done" else 1


def _cmd_train(args) -> int:
    return _run_job("adapters.train", build_spec(args), args.background)


def _cmd_sweep(args) -> int:
    return _run_job("adapters.sweep", build_spec(args), args.background)


def _cmd_eval(args) -> int:
    from .. import distributed as D
    from ..store import Store
    from .evaluate import eval_config, evaluate_artifact
    from .io import find_adapters

    store = Store(args.store) if args.store else Store()
    art = find_adapters(store, args.key)
    ranks = D.init(args.device or "auto")
    ev = evaluate_artifact(art, store, n_faith=args.n_faith, n_behaviour=args.n_behaviour,
                           device=args.device or "auto", ranks=ranks,
                           behaviour_batch=number(args.behaviour_batch, "--behaviour-batch",
                                                  lo=1, integer=True))
    if ranks.world > 1:
        D.barrier()      # every part has landed and been merged: rank 0 prints the result
        if not ranks.is_main:
            return 0
        ev = store.load("adapters_eval", D.final_key("adapters_eval", eval_config(
            art, args.n_faith, args.n_behaviour)))
    fa = ev.meta["faithfulness"]
    summary = {"eval_key": ev.key, "adapters_key": art.key,
               **{k: fa[k] for k in ("kl_adapter", "kl_hybrid", "kl_gap_closed", "mean_l0",
                                     "dead_fraction")},
               **ev.meta.get("behaviour", {}).get("derived", {})}
    print(json.dumps(summary, default=float))
    return 0


def _cmd_demo(args) -> int:
    """Build the committed demo set: train (default config), evaluate, L1 sweep."""
    from .. import jobs
    from ..store import Store
    from .evaluate import evaluate_artifact
    from .report import DEMO_ROOT

    root = Path(args.store) if args.store else DEMO_ROOT
    overrides = parse_sets(args.set)
    spec = {"store_root": str(root), "threads": 1, **overrides}
    if args.device:
        spec["device"] = args.device
    bar, on = _tqdm()
    st = jobs.run_inline("adapters.train", spec, on_progress=on)
    bar.close()
    store = Store(root)
    art = store.load("adapters", st.result["key"])
    print(f"trained {art.key}; evaluating", file=sys.stderr)
    ev = evaluate_artifact(art, store, n_faith=args.n_faith, n_behaviour=args.n_behaviour,
                           device=args.device or "auto")
    out = {"adapters_key": art.key, "eval_key": ev.key}
    if args.l1_values:
        sweep = {**spec, "l1_values": json.loads(args.l1_values), "save_runs": False,
                 "steps": args.sweep_steps, "n_eval": args.n_faith}
        sweep.pop("l1", None)
        bar, on = _tqdm()
        sw = jobs.run_inline("adapters.sweep", sweep, on_progress=on)
        bar.close()
        out["sweep_key"] = sw.result.get("key")
    print(json.dumps(out))
    return 0


def _cmd_list(args) -> int:
    from ..store import Store
    from .io import KIND, manifest_summary

    store = Store(args.store) if args.store else Store()
    for art in store.list(KIND):
        print(json.dumps(manifest_summary(art), default=str))
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("adapters", help="transcoder adapters: train, sweep, eval, list")
    s = p.add_subparsers(dest="adapters_command", required=True)
    for name, fn, hlp in (("train", _cmd_train, "train an adapter set (job; resumable)"),
                          ("sweep", _cmd_sweep, "L1 sweep -> L0 vs gap-closed frontier")):
        t = s.add_parser(name, help=hlp)
        t.add_argument("--config", help="JSON file of training options")
        t.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override one option (repeatable), e.g. --set l1=0.003")
        t.add_argument("--device", help="auto | cpu | cuda | mps")
        t.add_argument("--base", help="base model spec (default: organism:base)")
        t.add_argument("--reasoner", help="reasoning model spec (default: organism:reasoner)")
        t.add_argument("--traces", help="trace set key (python -m interp traces list) to "
                                        "train on; needs --base and --reasoner")
        t.add_argument("--task", help="organisms (the organisms' trace generator; the "
                                      "default on the organism pair)")
        t.add_argument("--background", action="store_true", help="submit to a worker")
        t.set_defaults(func=fn)
    e = s.add_parser("eval", help="faithfulness + behaviour of a saved adapter set")
    e.add_argument("key", nargs="?", help="adapters artifact key (default: newest)")
    e.add_argument("--n-faith", type=int, default=512)
    e.add_argument("--n-behaviour", type=int, default=256)
    e.add_argument("--behaviour-batch", type=int, default=128,
                   help="prompts per generation batch (and per split block under torchrun)")
    e.add_argument("--device")
    e.add_argument("--store", help="artifact store root")
    e.set_defaults(func=_cmd_eval)
    d = s.add_parser("demo", help="train + evaluate + sweep the demo set into cache/demo")
    d.add_argument("--set", action="append", metavar="KEY=VALUE")
    d.add_argument("--device")
    d.add_argument("--store", help="store root (default: the committed demo store)")
    d.add_argument("--n-faith", type=int, default=512)
    d.add_argument("--n-behaviour", type=int, default=256)
    d.add_argument("--l1-values", default="[0.003, 0.01, 0.03, 0.1]",
                   help="JSON list for the sweep ('' to skip)")
    d.add_argument("--sweep-steps", type=int, default=600)
    d.set_defaults(func=_cmd_demo)
    ls = s.add_parser("list", help="saved adapter sets")
    ls.add_argument("--store", help="artifact store root")
    ls.set_defaults(func=_cmd_list)
