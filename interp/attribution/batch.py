"""Batch attribution: many prompts' graphs, split across ranks, one artifact.

:func:`batch_effects` attributes every labelled trace of a split (one graph per trace,
a target at every hesitation trigger; :func:`interp.attribution.hesitation.trace_effects`)
and saves each feature's total and direct effect on each trigger and where it fired as
one ``hesitation_effects`` artifact:

* tensors ``total``, ``direct`` ``[n_triggers, n_features]`` (float32) and ``active``
  (uint8), triggers in trace order;
* meta ``records``: per trigger its ``mechanism``, ``cause`` and ``trace`` (the index of
  its trace in the split), and ``d_sae``, ``n_traces``.

The config is ``{adapters_key, explain, split, n_problems, target}``. Under torchrun each
rank attributes its contiguous block of traces and lands it as a part; the rank that
completes the set concatenates the parts in rank order into the artifact one process
saves (:func:`interp.distributed.collect`). ``python -m interp attribution effects`` runs
it; the hesitation study computes its effects this way when it runs on several ranks.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .. import distributed as D
from ..store import Artifact, Store, provenance
from . import hesitation as H

KIND = "hesitation_effects"


def effects_config(tracer: H.Tracer, split: str, n_problems: int, target: str
                   ) -> dict[str, Any]:
    return {"adapters_key": tracer.key, "explain": tracer.explain, "split": split,
            "n_problems": int(n_problems), "target": target}


def batch_effects(tracer: H.Tracer, split: str, n_problems: int, target: str = "logit_diff",
                  store: Store | None = None, ranks: D.Ranks | None = None,
                  progress: Callable[[int, int], None] | None = None,
                  traces: list[H.Trace] | None = None) -> Artifact | None:
    """Attribute the split's traces and save the ``hesitation_effects`` artifact (module
    docstring). Returns it on the merging rank (or the only process), None on the
    others. ``traces``: the split's traces when the caller has drawn them already."""
    store = store or Store()
    traces = traces if traces is not None else H.trigger_traces(split, n_problems)

    def work(bounds: D.Bounds) -> D.Part:
        (lo, hi), = bounds
        e = H.collect_effects(tracer, traces[lo:hi], target, progress)
        recs = [{"mechanism": m, "cause": c, "trace": lo + i}
                for m, c, i in zip(e.mechanism, e.cause, e.trace_index)]
        return D.Part({"total": e.total, "direct": e.direct,
                       "active": e.active.to(torch.uint8)}, {"records": recs})

    def merge(parts: list[D.Part]) -> D.Part:
        out = D.concat_parts(parts)
        out.meta.update(d_sae=int(tracer.model.adapters.d_sae), n_traces=len(traces))
        return out

    models = {"base": tracer.base.describe(), "reasoner": tracer.reasoner.describe()}
    return D.collect(KIND, effects_config(tracer, split, n_problems, target), len(traces),
                     work, merge, store=store, ranks=ranks,
                     provenance=provenance(models=models))


def effects_of(art: Artifact) -> H.Effects:
    """The :class:`~interp.attribution.hesitation.Effects` an artifact holds."""
    t, recs = art.tensors, art.meta["records"]
    return H.Effects(t["total"], t["direct"], t["active"].bool(),
                     [r["mechanism"] for r in recs], [r["cause"] for r in recs],
                     [int(r["trace"]) for r in recs], int(art.meta["d_sae"]))


def split_effects(tracer: H.Tracer, traces: list[H.Trace], split: str, n_problems: int,
                  target: str, store: Store, ranks: D.Ranks) -> H.Effects:
    """The effects of ``traces`` computed across the ranks of a process group, on every
    rank (each waits for the merge and reads the artifact)."""
    cfg = effects_config(tracer, split, n_problems, target)
    art = batch_effects(tracer, split, n_problems, target, store, ranks, traces=traces)
    D.barrier()
    return effects_of(art if art is not None else store.load(KIND, D.final_key(KIND, cfg)))
