"""Saved experiments on the organisms: task-vector statistics, α sweeps, accuracy vs α,
a control vector and one lensed trace. :func:`run_experiment` runs one spec (also as the
``vectors.sweep`` job); :func:`build_demo` runs the shipped demo into ``cache/demo``.

Artifact kinds (all in one :class:`~interp.store.Store`):

* ``vectors.task_stats``: ``table.json`` (one record per tensor, see
  :func:`~.task.task_vector_stats`);
* ``vectors.sweep``: tensors ``kl_last, kl_trace, entropy_last, entropy_trace,
  p_correct`` ``[A, n]`` float32 (see :mod:`.sweep`), ``alphas [A]``; meta holds the unit;
* ``vectors.accuracy``: tensors ``correct [A, n]`` int8 and ``think_tokens [A, n]``,
  ``alphas [A]``, per example ``answer``, ``short``, ``hesitations_error``,
  ``hesitations_verify`` ``[A, n]`` and ``output_ids [A, n, max_new_tokens]`` (-1 padded,
  the smallest integer type that holds them); meta holds the problem ids;
* ``vectors.control``: see :class:`~.control.ControlVector`;
* ``vectors.trace``: ``trace.json`` (per-token records of the shared teacher-forced trace
  and of each model's own generation) and tensors ``layer_kl [n_layers, pos]``.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import ConfigError
from ..store import PROJECT_ROOT, Store, provenance
from .sweep import DEFAULT_ALPHAS

log = logging.getLogger(__name__)
DEMO_ROOT = PROJECT_ROOT / "cache" / "demo"
Progress = Callable[[int, int, str], None]

DEFAULT_SPEC: dict[str, Any] = {
    "kind": "task",                       # "task" | "control"
    "target": "organism:instruct",
    "donor_a": "organism:grpo",
    "donor_b": "organism:sft",
    "reference": "organism:base",        # cosine(v, θ_target − θ_reference)
    "mask": None,                        # Mask.to_config(); None = every tensor
    "alphas": list(DEFAULT_ALPHAS),
    "fmt": "think",
    "n_sweep": 128,                      # prompts of the forward (KL / entropy) sweep
    "n_accuracy": 500,                   # held-out problems of the accuracy sweep
    "accuracy_alphas": [-1.0, 0.0, 1.0],  # generation is the slow part
    "max_new_tokens": 64,
    "seed": 0,
    "unit": "nats",
    # control vectors only
    "layer": None,                       # None = n_layers // 2
    "site": "resid_post",
    "vector_kind": "R-C",
    "n_control": 256,                    # paired prompts read for the control vector
    "positive_fmt": "think",
    "negative_fmt": "direct",
    # any model pair: a task (interp.tasks spec) instead of the organisms' formats, see
    # interp.vectors.own; traces: a trace set key for the reference continuations;
    # positives / negatives: the control vector's two prompt sets (task specs)
    "task": None,
    "traces": None,
    "positives": None,
    "negatives": None,
}


def demo_store(read_only: bool = False) -> Store:
    return Store(root=DEMO_ROOT, read_only=read_only)


def full_spec(spec: dict[str, Any] | None = None) -> dict[str, Any]:
    s = {**DEFAULT_SPEC, **(spec or {})}
    if s["kind"] not in ("task", "control"):
        raise ConfigError(f"experiment kind must be 'task' or 'control', not {s['kind']!r}")
    return s


def check_spec(spec: dict[str, Any] | None) -> dict[str, Any]:
    """An experiment spec checked option by option (ConfigError naming the first bad
    one): known keys only, the default's types, finite α lists, counts >= 1."""
    from ..validate import finite_values, number, one_of, typed_like

    spec = dict(spec or {})
    unknown = sorted(set(spec) - set(DEFAULT_SPEC))
    if unknown:
        raise ConfigError(f"unknown experiment option(s): {', '.join(unknown)}; known: "
                          f"{', '.join(sorted(DEFAULT_SPEC))}")
    for k, v in spec.items():
        if k == "layer" and v is not None:
            spec[k] = number(v, "layer", lo=0, integer=True)
        elif k in ("alphas", "accuracy_alphas"):
            spec[k] = finite_values(typed_like(v, DEFAULT_SPEC[k], k), k)
            if not spec[k]:
                raise ConfigError(f"{k} is empty")
        elif k in ("n_sweep", "n_accuracy", "max_new_tokens", "n_control"):
            spec[k] = number(v, k, lo=1, integer=True)
        elif k in ("task", "traces", "positives", "negatives"):
            if v is not None and (not isinstance(v, str) or not v.strip()):
                raise ConfigError(f"{k} must be a text (a task spec / trace set key)")
        elif k != "mask":
            spec[k] = typed_like(v, DEFAULT_SPEC[k], k)
    s = full_spec(spec)
    one_of(s["unit"], "unit", ("nats", "bits"))
    one_of(s["fmt"], "fmt", ("think", "direct", "chat"))
    from .control import KINDS, SITES

    one_of(s["site"], "site", SITES)
    one_of(s["vector_kind"], "vector_kind", KINDS)
    return s


def _stderr_progress(step: int, total: int, msg: str) -> None:
    print(f"[vectors] {msg} {step}/{total}", file=sys.stderr, flush=True)


def sweep_config(spec: dict[str, Any], what: str) -> dict[str, Any]:
    """The config (artifact key input) of one part of an experiment."""
    s = full_spec(spec)
    keys = ["kind", "target", "mask", "fmt", "seed", "unit"]
    if s["kind"] == "task":
        keys += ["donor_a", "donor_b"]
    else:
        keys += ["layer", "site", "vector_kind", "n_control", "positive_fmt", "negative_fmt"]
    if what == "sweep":
        keys += ["alphas", "n_sweep"]
    elif what == "accuracy":
        keys += ["accuracy_alphas", "n_accuracy", "max_new_tokens"]
    elif what == "trace":
        keys += ["max_new_tokens"]
    return {"part": what, **{k: s[k] for k in keys}}


def _control_vector(model, s: dict[str, Any], store: Store):
    from ..organisms import task as T
    from .control import ControlVector, build_control_vector

    layer = s["layer"] if s["layer"] is not None else model.n_layers // 2
    s["layer"] = layer
    probs = T.sample_problems(s["n_control"], seed=s["seed"], split="train")
    pos = [T.prompt_text(p, s["positive_fmt"]) for p in probs]
    neg = [T.prompt_text(p, s["negative_fmt"]) for p in probs]
    cv = build_control_vector(model, pos, neg, layer, kind=s["vector_kind"], site=s["site"])
    cv.info.update(positives=f"{s['positive_fmt']} prompts", negatives=f"{s['negative_fmt']} "
                   "prompts", split="train", n_problems=len(probs))
    art = cv.save(store, seed=s["seed"])
    return ControlVector.from_artifact(art), art


def run_experiment(spec: dict[str, Any] | None = None, store: Store | None = None,
                   device: str = "auto", parts: tuple[str, ...] = ("stats", "sweep",
                                                                    "accuracy", "trace"),
                   progress: Progress | None = None, overwrite: bool = True
                   ) -> dict[str, str]:
    """Run (parts of) one experiment and save its artifacts; returns ``{part: key}``.

    ``overwrite=False`` skips parts whose artifact already exists (job resume)."""
    from ..models import load_model, local_checkpoint
    from ..organisms import task as T
    from .lens import generation_lens, layer_token_kl, trace_lens
    from .sweep import (
        accuracy_sweep,
        alpha_sweep,
        control_modifier,
        organism_batch,
        sweep_tensors,
        task_modifier,
    )
    from .task import Mask, TaskVector, TaskVectorSweeper, task_vector_stats

    s = check_spec(spec)
    store = store or Store()
    prog = progress or _stderr_progress
    from .own import is_task_spec, run_task_experiment

    if is_task_spec(s):   # another pair: prompts, answers and markers from the task
        return run_task_experiment(dict(spec or {}), s, store, device, parts, prog, overwrite)
    from ..tasks import OrganismTask, check_pair

    check_pair(OrganismTask(), [s["target"]])
    model = load_model(s["target"], device=device)
    models_desc: dict[str, Any] = {"target": model.describe()}
    out: dict[str, str] = {}
    mask = Mask.from_config(s["mask"])
    if s["kind"] == "task":
        tv = TaskVector.from_specs(s["donor_a"], s["donor_b"])
        tv.check_target(model.path, s["target"])
        models_desc.update(tv.describe())
        sweeper = TaskVectorSweeper(model, tv, mask)
        ctx = sweeper
        modifier = task_modifier(sweeper)
    else:
        cv, cv_art = _control_vector(model, s, store)
        out["control"] = cv_art.key
        models_desc["control_vector"] = cv_art.key
        import contextlib

        ctx = contextlib.nullcontext()
        modifier = control_modifier(model, cv)

    kinds = {"stats": "vectors.task_stats", "sweep": "vectors.sweep",
             "accuracy": "vectors.accuracy", "trace": "vectors.trace"}
    if not overwrite:  # resume: parts saved under this config *and these weights* are kept
        parts = tuple(w for w in parts if not _have(store, kinds[w], s, w, out, models_desc))

    def save(kind, what, tensors, meta=None, files=None):
        art = store.save(kind, sweep_config(s, what), tensors, meta=meta, files=files,
                         provenance=provenance(models=models_desc, seed=s["seed"],
                                               spec=s, device=str(model.device)))
        out[what] = art.key

    if "stats" in parts and s["kind"] == "task":
        prog(0, 1, "task-vector statistics")
        _, ref = local_checkpoint(s["reference"]) if s.get("reference") else (None, None)
        table = task_vector_stats(tv, target=model.path, reference=ref, mask=mask)
        table["layer"] = table["layer"].astype(object).where(table["layer"].notna(), None)
        save("vectors.task_stats", "stats", None,
             files={"table.json": table.to_json(orient="records")})
    with ctx:
        if "sweep" in parts:
            probs = T.sample_problems(s["n_sweep"], seed=s["seed"], split="eval")
            batch = organism_batch(probs, s["fmt"])
            res = alpha_sweep(model, modifier, s["alphas"], batch, unit=s["unit"],
                              progress=lambda d, t: prog(d, t, "forward sweep"))
            tensors = sweep_tensors(res)
            save("vectors.sweep", "sweep", tensors, meta={"unit": s["unit"],
                                                          "problem_ids": batch.ids})
        if "accuracy" in parts:
            probs = T.sample_problems(s["n_accuracy"], seed=s["seed"] + 1, split="eval")
            acc = accuracy_sweep(model, modifier, s["accuracy_alphas"], probs, s["fmt"],
                                 s["max_new_tokens"],
                                 progress=lambda d, t: prog(d, t, "accuracy sweep"))
            ids = acc["output_ids"]   # the smallest integer type that holds the ids
            small = torch.int8 if ids.max() < 128 else torch.int16 if ids.max() < 2**15 \
                else torch.int32
            save("vectors.accuracy", "accuracy", {
                "correct": torch.tensor(acc["correct"]),
                "think_tokens": torch.tensor(acc["think_tokens"]),
                "alphas": torch.tensor(acc["alphas"]),
                **{k: torch.tensor(acc[k]) for k in ("answer", "short", "hesitations_error",
                                                     "hesitations_verify")},
                "output_ids": torch.tensor(ids).to(small)},
                meta={"problem_ids": [p.id for p in probs], "decoding": "greedy"})
        if "trace" in parts:
            prog(0, 1, "trace lens")
            p = T.sample_problems(1, seed=s["seed"] + 2, split="eval")[0]
            seq = organism_batch([p], s["fmt"]).seqs[0]

            def mod1():
                return modifier(1.0)

            shared = trace_lens(model, seq, mod1, unit=s["unit"], label="shared reference trace")
            heat = layer_token_kl(model, seq, mod1, unit=s["unit"])
            own = generation_lens(model, T.prompt_text(p, s["fmt"]), mod1,
                                  max_new_tokens=s["max_new_tokens"], unit=s["unit"])
            tok = model.tokenizer
            doc = {"problem": p.id, "alpha": 1.0, "unit": s["unit"],
                   "prompt_len": organism_batch([p], s["fmt"]).prompt_lens[0],
                   "shared": shared.to_records(tok),
                   "own": {k: {"prompt_len": v["prompt_len"], "text": v["generation"].text,
                               "records": v["lens"].to_records(tok)} for k, v in own.items()}}
            save("vectors.trace", "trace", {"layer_kl": heat},
                 files={"trace.json": json.dumps(doc)})
    return out


def _hashes(models: dict[str, Any]) -> dict[str, Any]:
    return {r: d.get("weight_hash") for r, d in (models or {}).items()
            if isinstance(d, dict) and d.get("weight_hash")}


def _have(store: Store, kind: str, s: dict[str, Any], what: str, out: dict[str, str],
          models: dict[str, Any] | None = None) -> bool:
    """A part is done when it is saved for this config and, given ``models``, computed on
    the same weights (a part of models rebuilt since is computed again)."""
    art = store.find(kind, sweep_config(s, what))
    if art is None or (models is not None and
                       _hashes(art.provenance.get("models", {})) != _hashes(models)):
        return False
    out[what] = art.key
    return True


def build_demo(device: str = "auto", n_accuracy: int = 500, n_sweep: int = 128,
               progress: Progress | None = None) -> dict[str, Any]:
    """The shipped demo: the default task-vector experiment (instruct + α(grpo − sft))
    and a control-vector experiment on instruct, saved under ``cache/demo``."""
    store = demo_store()
    task = run_experiment({"n_accuracy": n_accuracy, "n_sweep": n_sweep}, store, device,
                          progress=progress)
    control = run_experiment({"kind": "control", "n_accuracy": n_accuracy,
                              "n_sweep": n_sweep},
                             store, device, parts=("sweep", "accuracy", "trace"),
                             progress=progress)
    return {"task": task, "control": control}


def find_part(spec: dict[str, Any] | None, what: str, store: Store | None = None):
    """The saved artifact of one part of an experiment, or None."""
    kind = {"stats": "vectors.task_stats", "sweep": "vectors.sweep",
            "accuracy": "vectors.accuracy", "trace": "vectors.trace"}[what]
    store = store or demo_store(read_only=True)
    s = full_spec(spec)
    from .own import is_task_spec, part_config

    if is_task_spec(s):   # another pair's experiment (interp.vectors.own)
        from ..tasks import get_task

        return store.find(kind, part_config(s, what, get_task(s["task"])))
    if s["kind"] == "control" and s["layer"] is None:
        # the layer was resolved at run time: match any saved layer
        for art in store.list(kind):
            cfg = dict(art.config)
            if cfg.get("kind") == "control" and {**cfg, "layer": None} == sweep_config(s, what):
                return art
        return None
    return store.find(kind, sweep_config(s, what))


def demo_root() -> Path:
    return DEMO_ROOT
