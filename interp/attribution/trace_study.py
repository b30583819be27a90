"""The hesitation study on any pair: triggers from a trace set or a task's traces.

The organisms' study (:mod:`.study`) draws labelled traces from the organisms' generator.
On another pair the triggers come from the reasoner's own traces:

* **traces**: a trace set (``traces``; its ``train`` records choose, its ``eval`` records
  report) or a task whose records carry a ``trace`` field (``task``; tokenised with the
  reasoner's tokenizer and chat template as ``traces import`` does, split by the task);
* **triggers**: every position inside the thinking whose *next* token is a hesitation
  token (every vocabulary entry spelling the hesitation word(s),
  :func:`interp.tasks.hesitation_ids`); the other thinking positions are *clean*
  positions (:func:`interp.tasks.corpus.hesitation_labels`). Sequences are cut to
  ``max_len`` tokens;
* **effects** (``train`` traces): one graph per trace through the adapter model with a
  target at each of its first ``max_triggers`` triggers, the summed de-meaned logits of
  the hesitation set (:class:`~.targets.LogitSetTarget`); each feature's total effect
  (:meth:`Graph.total_effect`, summed over the positions where it fires), averaged over
  triggers, ranks the features;
* **ablation** (``eval`` traces): the ``k`` features with the highest mean effect zeroed
  (features with no effect are never chosen; when fewer than ``k`` raise the hesitation
  logits, the rest lower them and the "drop" can be negative: ``top_effects`` in the
  figures says which); teacher-forced
  probability of the hesitation set at the eval triggers and at the clean positions,
  before and after (the drop at triggers is the headline; the change at clean positions
  is the collateral).

Saved as a ``hesitation_ranking`` artifact (the ranking, the figures, the settings).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from ..errors import ConfigError
from . import hesitation as H

KIND = "hesitation_ranking"
DEFAULTS: dict[str, Any] = {
    "adapters_key": None, "adapters_store": None, "traces": None, "task": None,
    "store": None, "device": "cpu", "hesitation": None, "n_train": 32, "n_eval": 32,
    "max_len": 256, "max_triggers": 8, "k": 10, "max_feature_nodes": None,
}


def check_config(spec: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(spec) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown study settings {unknown}; known: {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **spec}
    if bool(cfg["traces"]) == bool(cfg["task"]):
        raise ConfigError("give the triggers' source: a trace set (traces) or a task whose "
                          "records carry a trace (task), one of them")
    for k in ("n_train", "n_eval", "max_len", "max_triggers", "k"):
        if not isinstance(cfg[k], int) or cfg[k] < 1:
            raise ConfigError(f"{k} must be a positive integer")
    if cfg["hesitation"] is not None and (not isinstance(cfg["hesitation"], list) or not all(
            isinstance(w, str) and w.strip() for w in cfg["hesitation"])):
        raise ConfigError("hesitation must be a list of words")
    return cfg


def task_records(task_spec: str, tokenizer) -> tuple[list[dict[str, Any]], str]:
    """Trace records of a task's ``trace`` fields (as ``traces import`` makes them) and
    the hesitation word of its markers."""
    from ..tasks import get_task
    from ..tasks.markers import hesitation_id_set
    from ..tasks.traces import imported_records, task_markers

    task = get_task(task_spec)
    if task.organism_only:
        raise ConfigError("the organisms task has no traces of your model; give a trace set "
                          "or a file whose records carry a 'trace' field")
    mk = task_markers(task, tokenizer)
    hes = hesitation_id_set(tokenizer, task.hesitation_words)
    items = [it for it in task.items(None, "all") if it.trace]
    if not items:
        raise ConfigError(f"task {task_spec} has no record with a 'trace' field")
    return imported_records(items, task, tokenizer, mk, hes), mk.hesitation


def trigger_sets(records: list[dict[str, Any]], hes: set[int], max_len: int
                 ) -> list[H.Trace]:
    """Per record: its tokens (cut to ``max_len``), triggers and clean positions."""
    from ..tasks.corpus import hesitation_labels

    out = []
    for r in records:
        ids = (r["prompt_ids"] + r["output_ids"])[:max_len]
        lab = hesitation_labels(r, hes)[: len(ids) - 1]   # a label needs a next token
        trig = [(int(p), "hesitation", "") for p in np.flatnonzero(lab == 1)]
        clean = [int(p) for p in np.flatnonzero(lab == 0)]
        out.append(H.Trace(list(ids), trig, clean, r.get("id"), r.get("split") or ""))
    return out


def set_probs(tracer: H.Tracer, traces: list[H.Trace], hes: set[int], mask=None,
              batch_size: int = 16) -> dict[str, np.ndarray]:
    """Teacher-forced P(hesitation set) at the triggers and at the clean positions."""
    pad = tracer.tokenizer.pad_token_id or 0
    idx = torch.tensor(sorted(hes))
    trig, clean = [], []
    for s in range(0, len(traces), batch_size):
        chunk = traces[s: s + batch_size]
        p = tracer.forward_logits(H._batch(chunk, pad), mask).softmax(-1)[..., idx].sum(-1)
        p = p.cpu()
        for i, t in enumerate(chunk):
            trig += [float(p[i, q]) for q, _, _ in t.triggers]
            clean += [float(p[i, q]) for q in t.clean]
    return {"triggers": np.array(trig), "clean": np.array(clean)}


def run_trace_study(spec: dict[str, Any], progress: Callable[..., None] | None = None,
                    tracer: H.Tracer | None = None) -> dict[str, Any]:
    """Run the protocol (module docstring); returns figures, ranking and settings."""
    from ..tasks.markers import hesitation_id_set
    from .study import adapters_artifact
    from .targets import token_set_target

    cfg = check_config(spec)
    tick = progress or (lambda *a, **k: None)
    if tracer is None:
        art = adapters_artifact(cfg["adapters_key"], cfg["adapters_store"])
        tracer = H.Tracer.from_artifact(art, cfg["device"])
    tok = tracer.tokenizer
    if cfg["traces"]:
        from ..store import Store
        from ..tasks.traces import load_traceset

        ts = load_traceset(cfg["traces"], Store(cfg["store"]) if cfg["store"] else None)
        reasoner_hash = tracer.reasoner.weight_hash
        made = ts.config.get("weight_hash")
        if made and made != reasoner_hash:
            raise ConfigError(f"trace set {ts.key} was made with {ts.model}, not with this "
                              f"adapter set's reasoner ({tracer.reasoner.spec})")
        records, word = ts.records, ts.markers.hesitation
        source = {"traces": ts.key}
    else:
        records, word = task_records(cfg["task"], tok)
        source = {"task": cfg["task"]}
    words = cfg["hesitation"] or [word]
    hes = hesitation_id_set(tok, words)
    sets = trigger_sets(records, hes, min(cfg["max_len"], tracer.n_ctx))
    train = [t for t in sets if t.split != "eval" and t.triggers][: cfg["n_train"]]
    ev = [t for t in sets if t.split == "eval"][: cfg["n_eval"]]
    if not train:
        raise ConfigError(f"no train trace holds a hesitation token ({', '.join(words)}: "
                          f"{len(hes)} vocabulary entries) inside its thinking; nothing to "
                          "attribute")
    if not any(t.triggers for t in ev):
        raise ConfigError("no eval trace holds a hesitation token inside its thinking; the "
                          "ablation has nothing to measure")
    d_sae, nf = tracer.model.adapters.d_sae, tracer.n_features
    total = torch.zeros(nf, dtype=torch.float64)
    direct = torch.zeros(nf, dtype=torch.float64)
    active = torch.zeros(nf, dtype=torch.float64)
    n_trig = 0
    for i, t in enumerate(train):
        pos = [p for p, _, _ in t.triggers][: cfg["max_triggers"]]
        g = tracer.graph(t.tokens[: max(pos) + 1], [token_set_target(hes, p) for p in pos],
                         max_feature_nodes=cfg["max_feature_nodes"])
        fids = (g.nodes.kind == 0).nonzero().flatten()
        col = g.nodes.layer[fids] * d_sae + g.nodes.feature[fids]
        tids = g.target_ids().tolist()
        eff = g.total_effect(tids)[:, fids]
        for k, tid in enumerate(tids):
            total.index_add_(0, col, eff[k])
            direct.index_add_(0, col, g.edges.row(tid)[fids].double())
            fired = torch.zeros(nf, dtype=torch.float64)
            fired[col[g.nodes.pos[fids] <= pos[k]]] = 1.0
            active += fired
        n_trig += len(tids)
        tick(i + 1, len(train) + 2, "effects")
    mean, mdirect, share = total / n_trig, direct / n_trig, active / n_trig
    order = [f for f in torch.argsort(mean, descending=True).tolist() if share[f] > 0]
    ranking = [{"feature": f, "name": H.feature_name(f, d_sae),
                "mean_effect": float(mean[f]), "mean_direct": float(mdirect[f]),
                "share_active": float(share[f])} for f in order]
    top = [r["feature"] for r in ranking if r["mean_effect"] != 0][: cfg["k"]]
    mask = H.feature_mask(top, d_sae, "zero")
    before = set_probs(tracer, ev, hes)
    after = set_probs(tracer, ev, hes, mask)
    tick(len(train) + 2, len(train) + 2, "ablation")

    def m(x):
        return float(x.mean()) if x.size else float("nan")

    pb, pa = m(before["triggers"]), m(after["triggers"])
    figures = {"n_train_traces": len(train), "n_train_triggers": n_trig,
               "n_eval_traces": len(ev), "n_eval_triggers": int(before["triggers"].size),
               "n_eval_clean": int(before["clean"].size), "k": len(top),
               "top_effects": [float(mean[f]) for f in top],
               "hesitation_ids": sorted(hes), "hesitation_words": words,
               "p_hesitation_before": pb, "p_hesitation_after": pa,
               "p_hesitation_drop": 1 - pa / pb if pb > 0 else float("nan"),
               "p_hesitation_clean_before": m(before["clean"]),
               "p_hesitation_clean_after": m(after["clean"])}
    return {"config": cfg, "source": source, "figures": figures, "ranking": ranking,
            "top": top, "tracer": tracer}


def save_trace_study(res: dict[str, Any], store) -> Any:
    from ..store import provenance

    tr = res["tracer"]
    cfg = {k: v for k, v in res["config"].items()
           if k not in ("store", "adapters_store", "device")}
    cfg["adapters_key"] = tr.key
    meta = {"figures": res["figures"], "ranking": res["ranking"][:200], "top": res["top"],
            "d_sae": tr.model.adapters.d_sae, "source": res["source"]}
    models = {"base": tr.base.describe(), "reasoner": tr.reasoner.describe()}
    return store.save(KIND, cfg, provenance=provenance(models=models), meta=meta)


def trace_study_job(spec: dict[str, Any], ctx) -> dict[str, Any]:
    """Job ``attribution.trace_study``: run and save; returns the key and figures."""
    from ..store import Store

    cfg = check_config(spec)
    res = run_trace_study(cfg, progress=lambda i, n, msg="": ctx.progress(i, n, msg))
    art = save_trace_study(res, Store(cfg["store"]) if cfg["store"] else Store())
    return {"key": art.key, **res["figures"],
            "top": [r["name"] for r in res["ranking"][: res["figures"]["k"]]]}
