"""``python -m interp attribution ...``: graphs and the hesitation study from the shell.

* ``attribution graph``: one attribution graph of an organism trigger trace
  (``--trace validation:3``) or of your own text (``--prompt``), to a target token
  (``--target wait``, ``--diff`` for ``target`` minus the most likely other token);
  prints the pruned graph's summary and writes circuit-tracer JSON with ``--out``.
* ``attribution study``: the hesitation study (ranking, clusters, ablation, clamping)
  as a job with a progress bar; saves a ``hesitation_study`` artifact.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError


def _cmd_graph(args) -> int:
    from .graph_json import to_json, validate
    from .hesitation import Tracer, trigger_traces
    from .prune import prune
    from .study import adapters_artifact
    from .targets import LogitDiffTarget, LogitTarget

    art = adapters_artifact(args.adapters, args.store)
    tr = Tracer.from_artifact(art, args.device, explain=args.explain)
    if args.prompt:
        tokens = tr.encode(args.prompt)
    else:
        split, _, idx = (args.trace or "validation:0").partition(":")
        try:
            i = int(idx or 0)
        except ValueError:
            raise ConfigError(
                f"--trace must look like validation:3, not {args.trace!r}") from None
        traces = [t for t in trigger_traces(split, max(64, i + 1)) if t.triggers]
        if not 0 <= i < len(traces):
            raise ConfigError(f"--trace index {i} is outside 0..{len(traces) - 1}")
        t = traces[i]
        tokens = t.tokens[: t.triggers[0][0] + 1]
    tok = tr.token_id(args.target)
    target = LogitDiffTarget(tok, None, -1) if args.diff else LogitTarget(tok, -1)
    g = tr.graph(tokens, [target], max_feature_nodes=args.max_feature_nodes)
    p = prune(g, args.node_threshold, args.edge_threshold, max_nodes=args.max_nodes)
    doc = to_json(g, p, slug=args.slug, prompt_tokens=g.token_strs or [],
                  prompt=" ".join(g.token_strs or []), scan=art.key,
                  vocab_size=int(tr.model.hybrid.cfg.d_vocab),
                  info={"adapters_key": art.key, "explain": args.explain})
    errs = validate(doc)
    if errs:
        raise ConfigError("the graph file failed its schema check: " + "; ".join(errs[:3]))
    if args.out:
        Path(args.out).write_text(json.dumps(doc))
    print(json.dumps({"nodes": len(doc["nodes"]), "links": len(doc["links"]),
                      "target": g.targets[0], "scores": p.scores,
                      "out": str(args.out) if args.out else None}, default=str))
    return 0


def _cmd_study(args) -> int:
    from ..jobs import _tqdm_progress, run_inline
    from ..validate import parse_json_object

    spec = parse_json_object(args.spec, "--spec") if args.spec else {}
    if args.quick:
        spec = {"n_validation": 24, "n_evaluation": 24, "n_gen_validation": 32,
                "n_gen_evaluation": 48, "ks": [25], "modes": ["zero"], **spec}
    if args.store:
        spec["store"] = args.store
    from ..distributed import launched

    if launched():       # torchrun: the ranks split the effects, rank 0 reports
        from ..adapters.cli import _run_ranks

        return _run_ranks("attribution.study", spec, False)
    bar, on = _tqdm_progress()
    st = run_inline("attribution.study", spec, progress_root(), on, raise_on_error=False)
    bar.close()
    print(json.dumps({"state": st.state, "error": st.error, "result": st.result},
                     default=str))
    return 0 if st.state == "done" else 1


def _cmd_effects(args) -> int:
    from .. import distributed as D
    from ..store import Store
    from ..validate import number
    from .batch import KIND, batch_effects, effects_config, effects_of
    from .hesitation import Tracer, rank_features
    from .study import adapters_artifact

    n = number(args.n, "--n", lo=1, integer=True)
    ranks = D.init(args.device)
    art = adapters_artifact(args.adapters, args.adapters_store)
    tr = Tracer.from_artifact(art, args.device, explain=args.explain)
    store = Store(args.store) if args.store else Store()
    bar = None
    if ranks.is_main:     # rank 0's share: one tick per trace
        import sys

        from tqdm import tqdm

        bar = tqdm(desc="graphs", file=sys.stderr, dynamic_ncols=True)

    def tick(i: int, k: int) -> None:
        bar.total, bar.n = k, i
        bar.refresh()

    out = batch_effects(tr, args.split, n, args.target, store, ranks,
                        progress=tick if bar is not None else None)
    if bar is not None:
        bar.close()
    out = D.merged(store, KIND, effects_config(tr, args.split, n, args.target), out, ranks)
    if out is None:
        return 0
    top = rank_features(effects_of(out))[: args.top]
    print(json.dumps({"key": out.key, "n_triggers": int(out.tensors["total"].shape[0]),
                      "ranks": ranks.world,
                      "top": [{k: r[k] for k in ("name", "mean_effect", "share_active")}
                              for r in top]}, default=float))
    return 0


def progress_root():
    import os

    d = os.environ.get("INTERP_JOBS_DIR")
    return Path(d) if d else None


def _fraction(text: str) -> float:
    import argparse

    from ..errors import InterpError
    from ..validate import number

    try:
        return number(text, "threshold", lo=0.0, hi=1.0)
    except InterpError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_commands(sub) -> None:
    p = sub.add_parser("attribution", help="attribution graphs and the hesitation study")
    s = p.add_subparsers(dest="attribution_command", required=True)
    g = s.add_parser("graph", help="one attribution graph (pruned; circuit-tracer JSON)")
    g.add_argument("--adapters", help="adapters artifact key (default: the newest)")
    g.add_argument("--store", help="artifact store folder (default: cache/)")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--trace", help="organism trigger trace SPLIT:INDEX (validation:0)")
    src.add_argument("--prompt", help="your own text")
    g.add_argument("--target", default="wait", help="target token (default: wait)")
    g.add_argument("--diff", action="store_true",
                   help="target minus the most likely other token")
    g.add_argument("--explain", default="adapter", choices=["adapter", "reasoner"])
    g.add_argument("--node-threshold", type=_fraction, default=0.8)
    g.add_argument("--edge-threshold", type=_fraction, default=0.98)
    g.add_argument("--max-nodes", type=int, default=None)
    g.add_argument("--max-feature-nodes", type=int, default=None)
    g.add_argument("--slug", default="hesitation")
    g.add_argument("--out", help="write the graph JSON here")
    g.add_argument("--device", default="cpu")
    g.set_defaults(func=_cmd_graph)
    e = s.add_parser("effects", help="batch attribution: every trigger trace of a split, "
                                     "each feature's effect on each trigger (one artifact; "
                                     "split across the ranks under torchrun)")
    e.add_argument("--adapters", help="adapters artifact key (default: the newest)")
    e.add_argument("--adapters-store", help="store of the adapters (default: cache/, then "
                                            "the demo set)")
    e.add_argument("--store", help="artifact store folder for the result (default: cache/)")
    e.add_argument("--split", default="validation", choices=["validation", "evaluation"])
    e.add_argument("--n", type=int, default=120, help="problems (traces) of the split")
    e.add_argument("--target", default="logit_diff", choices=["logit_diff", "logit"])
    e.add_argument("--explain", default="adapter", choices=["adapter", "reasoner"])
    e.add_argument("--top", type=int, default=10, help="features printed")
    e.add_argument("--device", default="cpu")
    e.set_defaults(func=_cmd_effects)
    st = s.add_parser("study", help="the hesitation study as a job (progress bar)")
    st.add_argument("--spec", help="JSON settings (see interp.attribution.study.DEFAULTS)")
    st.add_argument("--store", help="artifact store folder for the result")
    st.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    st.set_defaults(func=_cmd_study)
