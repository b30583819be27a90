"""``python -m interp attribution ...``: graphs and the hesitation study from the shell.

* ``attribution graph``: one attribution graph through an adapter set (``--adapters``)
  or per-layer transcoders of one model (``--transcoders DIR --model SPEC`` or a
  transcoders artifact key; any subset of layers), of your own text (``--prompt``), a
  task's prompt (``--task T --index I``), a trace set's record up to its first hesitation
  (``--traces KEY --index I``) or, on the organisms only, a trigger trace (``--trace
  validation:3``); to the hesitation token set (default: every spelling of ``wait``,
  de-meaned logits summed; ``--hesitation``), or one token (``--target``, ``--diff`` for
  it minus the most likely other token); prints the pruned graph's summary (nodes,
  replacement / completeness scores, seconds) and writes circuit-tracer JSON with
  ``--out``.
* ``attribution study``: the hesitation study as a job with a progress bar. With
  ``--traces KEY`` or ``--task FILE`` (records with a ``trace``) on any pair's adapter
  set: features ranked by their effect on the hesitation set at the traces' hesitation
  positions, and the top ``k`` ablated on the eval traces
  (:mod:`~interp.attribution.trace_study`, a ``hesitation_ranking`` artifact); without
  them the organisms' protocol (ranking, clusters, ablation, clamping; organism models
  only; a ``hesitation_study`` artifact).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import ConfigError


def _tracer(args):
    """The adapters' tracer (an adapters artifact) or a transcoders tracer (a folder of
    SAELens transcoders with ``--model``, or a transcoders artifact key); and the model
    spec the prompt is read with."""
    from .hesitation import Tracer
    from .study import adapters_artifact
    from .tracing import load_transcoders

    if args.transcoders:
        if args.adapters:
            raise ConfigError("give --adapters or --transcoders, not both")
        if args.explain:
            raise ConfigError("--explain applies to adapters (the adapter model or the "
                              "reasoner); transcoders explain their own model")
        tr = load_transcoders(args.transcoders, args.model, args.device, _store(args))
        return tr, tr.spec, tr.vocab_size
    if args.model:
        raise ConfigError("--model goes with --transcoders (an adapter set knows its pair)")
    art = adapters_artifact(args.adapters, args.store)
    tr = Tracer.from_artifact(art, args.device, explain=args.explain or "adapter")
    spec = (art.meta.get("pair", {}).get("reasoner") or {}).get("id")
    return tr, spec, int(tr.model.hybrid.cfg.d_vocab)


def _store(args):
    from ..store import Store

    return Store(args.store) if args.store else None


def _prompt_tokens(args, tr, spec) -> list[int]:
    from .tracing import require_organisms, task_prompt, traceset_prompt

    given = [x for x in ("prompt", "task", "traces", "trace") if getattr(args, x)]
    if len(given) > 1:
        raise ConfigError("give one of --prompt, --task, --traces or --trace")
    if args.index is not None and not (args.task or args.traces):
        raise ConfigError("--index goes with --task or --traces")
    if args.prompt:
        return tr.encode(args.prompt)
    if args.task:
        return task_prompt(args.task, args.index or 0, tr.tokenizer, tr.n_ctx, spec)
    if args.traces:
        return traceset_prompt(args.traces, args.index or 0, tr.tokenizer, tr.n_ctx,
                               args.hesitation, _store(args))
    require_organisms("--trace (the organisms' labelled trigger traces)", spec)
    from .hesitation import trigger_traces

    split, _, idx = (args.trace or "validation:0").partition(":")
    try:
        i = int(idx or 0)
    except ValueError:
        raise ConfigError(f"--trace must look like validation:3, not {args.trace!r}") from None
    traces = [t for t in trigger_traces(split, max(64, i + 1)) if t.triggers]
    if not 0 <= i < len(traces):
        raise ConfigError(f"--trace index {i} is outside 0..{len(traces) - 1}")
    t = traces[i]
    return t.tokens[: t.triggers[0][0] + 1]


def _target(args, tr):
    from .targets import LogitDiffTarget, LogitTarget, token_id
    from .tracing import hesitation_target

    if args.target is None:
        t = hesitation_target(tr.tokenizer, args.hesitation or ["wait"])
        if args.diff:
            if not isinstance(t, LogitTarget):
                raise ConfigError(
                    f"--diff needs one target token; the hesitation set has "
                    f"{len(t.tokens)}: name one with --target")
            return LogitDiffTarget(t.token, None, -1)
        return t
    if args.hesitation:
        raise ConfigError("give --target TOKEN or --hesitation WORDS, not both")
    tok = token_id(tr.tokenizer, args.target)
    return LogitDiffTarget(tok, None, -1) if args.diff else LogitTarget(tok, -1)


def _cmd_graph(args) -> int:
    import time

    from .graph_json import to_json, validate
    from .prune import prune

    t0 = time.perf_counter()
    if args.trace and not args.transcoders:   # refuse before any model loads
        from .study import adapters_artifact
        from .tracing import require_organisms

        art = adapters_artifact(args.adapters, args.store)
        require_organisms("--trace (the organisms' labelled trigger traces)",
                          (art.meta.get("pair", {}).get("reasoner") or {}).get("id"))
    tr, spec, vocab = _tracer(args)
    tokens = _prompt_tokens(args, tr, spec)
    target = _target(args, tr)
    t1 = time.perf_counter()
    g = tr.graph(tokens, [target], max_feature_nodes=args.max_feature_nodes)
    p = prune(g, args.node_threshold, args.edge_threshold, max_nodes=args.max_nodes)
    t2 = time.perf_counter()
    info = {"explain": getattr(tr, "explain", None), "model": spec,
            f"{tr.replacement.kind}_key": tr.key, "covered_layers": tr.replacement.covered}
    doc = to_json(g, p, slug=args.slug, prompt_tokens=g.token_strs or [],
                  prompt=" ".join(g.token_strs or []), scan=tr.key, vocab_size=vocab,
                  info=info)
    errs = validate(doc)
    if errs:
        raise ConfigError("the graph file failed its schema check: " + "; ".join(errs[:3]))
    if args.out:
        from ..store import write_json_atomic

        write_json_atomic(Path(args.out), doc)
    n_feat = int((g.nodes.kind == 0).sum())
    print(json.dumps({"nodes": len(doc["nodes"]), "links": len(doc["links"]),
                      "graph_nodes": len(g.nodes), "feature_nodes": n_feat,
                      "n_tokens": len(tokens), "target": g.targets[0], "scores": p.scores,
                      "source": tr.replacement.kind, "key": tr.key,
                      "covered_layers": tr.replacement.covered,
                      "seconds": {"load": round(t1 - t0, 2), "graph": round(t2 - t1, 2)},
                      "out": str(args.out) if args.out else None}, default=str))
    return 0


def _cmd_study(args) -> int:
    from ..jobs import _tqdm_progress, run_inline
    from ..validate import parse_json_object

    spec = parse_json_object(args.spec, "--spec") if args.spec else {}
    if args.adapters:
        spec["adapters_key"] = args.adapters
    if args.store:
        spec["store"] = args.store
    if args.device:
        spec["device"] = args.device
    if args.traces or args.task:   # triggers from the reasoner's own traces: any pair
        kind = "attribution.trace_study"
        spec.update({k: v for k, v in (("traces", args.traces), ("task", args.task),
                                       ("hesitation", args.hesitation)) if v})
        if args.quick:
            spec = {"n_train": 8, "n_eval": 8, "max_triggers": 4, **spec}
    else:                          # the organisms' labelled traces and problems
        from .study import adapters_artifact
        from .tracing import require_organisms

        if args.hesitation:
            raise ConfigError("--hesitation goes with --traces or --task")
        art = adapters_artifact(spec.get("adapters_key"), spec.get("adapters_store"))
        require_organisms("the organisms' study protocol (attribution study without "
                          "--traces or --task)",
                          (art.meta.get("pair", {}).get("reasoner") or {}).get("id"),
                          "take the triggers from the reasoner's traces (--traces KEY, or "
                          "--task FILE whose records carry a 'trace')")
        kind = "attribution.study"
        if args.quick:
            spec = {"n_validation": 24, "n_evaluation": 24, "n_gen_validation": 32,
                    "n_gen_evaluation": 48, "ks": [25], "modes": ["zero"], **spec}
    from ..distributed import launched

    if launched() and kind == "attribution.study":  # torchrun: the ranks split the effects
        from ..adapters.cli import _run_ranks

        return _run_ranks(kind, spec, False)
    bar, on = _tqdm_progress()
    st = run_inline(kind, spec, progress_root(), on, raise_on_error=False)
    bar.close()
    if st.state != "done":
        print(f"error: {st.error}", file=sys.stderr)
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
    g.add_argument("--transcoders", help="a folder of per-layer SAELens transcoders (with "
                   "--model) or a transcoders artifact key; layers without one keep "
                   "their MLP as an error node")
    g.add_argument("--model", help="the model the --transcoders folder reads")
    g.add_argument("--store", help="artifact store folder (default: cache/)")
    g.add_argument("--prompt", help="your own text (special tokens added)")
    g.add_argument("--task", help="a task; its prompt --index as the model reads it")
    g.add_argument("--traces", help="a trace set key; record --index up to the position "
                   "that predicts its first hesitation token")
    g.add_argument("--index", type=int, default=None, help="item of --task / --traces")
    g.add_argument("--trace", help="organisms only: trigger trace SPLIT:INDEX (validation:0)")
    g.add_argument("--target", default=None,
                   help="one target token (default: the hesitation set, see --hesitation)")
    g.add_argument("--hesitation", nargs="+", default=None, metavar="WORD",
                   help="hesitation word(s) of the default target (default: wait): every "
                        "vocabulary entry spelling them, their de-meaned logits summed")
    g.add_argument("--diff", action="store_true",
                   help="target minus the most likely other token (one target token)")
    g.add_argument("--explain", default=None, choices=["adapter", "reasoner"],
                   help="adapters: graph of the adapter model (default) or the reasoner")
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
    st.add_argument("--adapters", help="adapters artifact key (default: the newest)")
    st.add_argument("--traces", help="triggers from this trace set of the reasoner (train "
                    "records rank, eval records test the ablation); any pair")
    st.add_argument("--task", help="triggers from a task file whose records carry 'trace'")
    st.add_argument("--hesitation", nargs="+", metavar="WORD",
                    help="hesitation word(s) (default: the trace set's markers)")
    st.add_argument("--spec", help="JSON settings (interp.attribution.study.DEFAULTS; with "
                    "--traces/--task interp.attribution.trace_study.DEFAULTS)")
    st.add_argument("--store", help="artifact store folder for the result")
    st.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    st.add_argument("--device", default=None, help="cpu (default) | cuda | mps")
    st.set_defaults(func=_cmd_study)
