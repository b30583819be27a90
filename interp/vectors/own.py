"""Reasoning-vector experiments on any model pair, driven by a task (:mod:`interp.tasks`).

:func:`run_task_experiment` is :func:`interp.vectors.demo.run_experiment` for a spec whose
``task`` is not the organisms': the same parts and artifact kinds, with

* **sequences** (forward sweep and trace): the task's prompt as the target model reads it
  (chat template, thinking on) followed by a reference continuation: the trace of the
  trace set ``traces`` for that prompt, else the item's own ``trace`` field, else the
  unmodified target's greedy generation (``max_new_tokens``). ``p_correct`` is the
  probability of the continuation's answer tokens (those after the think-close marker)
  when the continuation is scored correct, NaN otherwise;
* **accuracy** (``accuracy`` part, tasks with reference answers only): greedy generations
  at each α scored by the task's scorer; ``think_tokens`` from the model's markers;
* **control vectors**: positives and negatives are two tasks (``positives`` /
  ``negatives``: files of prompts, e.g. prompts that elicit long reasoning and prompts
  that ask for the answer alone), each prompt read through the target's chat template.

Organism-only settings (``fmt``, ``positive_fmt``, ``negative_fmt``, the organism donors and
reference) are refused here with a message.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import numpy as np
import torch

from ..errors import ConfigError
from ..store import Store, provenance

ORGANISM_ONLY = ("fmt", "positive_fmt", "negative_fmt")
Progress = Callable[[int, int, str], None]


def is_task_spec(spec: dict[str, Any] | None) -> bool:
    t = (spec or {}).get("task")
    return bool(t) and str(t).strip() not in ("organisms", "organism")


def check_task_spec(raw: dict[str, Any], s: dict[str, Any]) -> None:
    """ConfigError for organism-only settings or organism defaults on a task spec."""
    from ..tasks import is_organism_spec

    given = [k for k in ORGANISM_ONLY if k in raw]
    if given:
        raise ConfigError(f"{', '.join(given)} only apply to the organisms' formats; with "
                          f"task {s['task']!r} the prompts come from the task")
    if is_organism_spec(s["target"]):
        raise ConfigError(f"target {s['target']} is an organism: use task 'organisms' with it, "
                          "or name your own target model")
    if s["kind"] == "task":
        for k in ("donor_a", "donor_b"):
            if k not in raw or is_organism_spec(s[k]):
                raise ConfigError(f"name the donors of the task vector (donor_a, donor_b): "
                                  f"the organisms' {k} does not fit {s['target']}")
    else:
        for k in ("positives", "negatives"):
            if not s.get(k):
                raise ConfigError(f"a control vector on a task needs '{k}' (a task: a file "
                                  "of prompts)")


def part_config(s: dict[str, Any], what: str, task: Any) -> dict[str, Any]:
    """The config (artifact key input) of one part of a task experiment."""
    from ..tasks import get_task

    keys = ["kind", "target", "mask", "seed", "unit", "traces", "max_new_tokens"]
    if s["kind"] == "task":
        keys += ["donor_a", "donor_b"]
    else:
        keys += ["layer", "site", "vector_kind", "n_control"]
    if what == "sweep":
        keys += ["alphas", "n_sweep"]
    elif what == "accuracy":
        keys += ["accuracy_alphas", "n_accuracy"]
    out = {"part": what, "task": task.describe(), **{k: s.get(k) for k in keys}}
    if s["kind"] == "control":
        out["positives"] = get_task(s["positives"]).describe()
        out["negatives"] = get_task(s["negatives"]).describe()
    return out


def _reference(ts, item) -> list[int] | None:
    if ts is not None:
        for r in ts.records:
            if r["id"] == item.id:
                return list(r["output_ids"])
    return None


def task_batch(model, task, items, traces: str | None = None, max_new_tokens: int = 64):
    """A :class:`~.sweep.SweepBatch` of ``items``: prompt ids + reference continuation
    (module docstring)."""
    from ..generation import generate
    from ..length.data import find_marker
    from .sweep import SweepBatch

    tok = model.tokenizer
    markers = task.markers(tok)
    ts = None
    if traces:
        from ..tasks.traces import load_traceset

        ts = load_traceset(traces)
    prompts = task.encode_all(items, tok)
    conts: list[list[int] | None] = []
    for it in items:
        ref = _reference(ts, it)
        if ref is None and it.trace:
            ref = list(tok(str(it.trace), add_special_tokens=False)["input_ids"])
        conts.append(ref)
    missing = [i for i, c in enumerate(conts) if c is None]
    if missing:
        gens = generate(model, [prompts[i] for i in missing], max_new_tokens=max_new_tokens,
                        temperature=0.0, batch_size=64)
        for i, g in zip(missing, gens):
            conts[i] = list(g.output_ids)
    seqs, pls, aps = [], [], []
    for it, p, c in zip(items, prompts, conts):
        c = [t for t in c if t is not None] or [tok.eos_token_id or 0]
        seqs.append(p + c)
        pls.append(len(p))
        ans: list[int] = []
        text = tok.decode(c, skip_special_tokens=False)
        if it.answer is not None and task.score(it, text, markers).get("correct"):
            f = find_marker(c, markers.think_close, tok) if markers.think_close else None
            start = f[1] if f is not None else 0
            ans = [len(p) + j - 1 for j in range(start, len(c))]
        aps.append(ans)
    return SweepBatch(seqs, pls, aps, [it.id for it in items])


def run_task_experiment(raw: dict[str, Any], s: dict[str, Any], store: Store,
                        device: str = "auto",
                        parts: tuple[str, ...] = ("stats", "sweep", "accuracy", "trace"),
                        progress: Progress | None = None, overwrite: bool = True
                        ) -> dict[str, str]:
    """Run (parts of) a task experiment (module docstring); returns ``{part: key}``."""
    import contextlib

    from ..generation import generate
    from ..length.data import think_span
    from ..models import load_model, local_checkpoint
    from ..tasks import get_task
    from .control import ControlVector, build_control_vector
    from .lens import generation_lens, layer_token_kl, trace_lens
    from .sweep import alpha_sweep, control_modifier, sweep_tensors, task_modifier
    from .task import Mask, TaskVector, TaskVectorSweeper, task_vector_stats

    check_task_spec(raw, s)
    prog = progress or (lambda d, t, m: None)
    task = get_task(s["task"])
    model = load_model(s["target"], device=device)
    models_desc: dict[str, Any] = {"target": model.describe()}
    mask = Mask.from_config(s["mask"])
    out: dict[str, str] = {}
    if s["kind"] == "task":
        tv = TaskVector.from_specs(s["donor_a"], s["donor_b"])
        tv.check_target(model.path, s["target"])
        models_desc.update(tv.describe())
        ctx: Any = TaskVectorSweeper(model, tv, mask)
        modifier = task_modifier(ctx)
    else:
        layer = s["layer"] if s["layer"] is not None else model.n_layers // 2
        s["layer"] = layer
        pos_t, neg_t = get_task(s["positives"]), get_task(s["negatives"])
        tok = model.tokenizer
        pos = pos_t.encode_all(pos_t.items(s["n_control"], "all"), tok)
        neg = neg_t.encode_all(neg_t.items(s["n_control"], "all"), tok)
        cv = build_control_vector(model, pos, neg, layer, kind=s["vector_kind"],
                                  site=s["site"])
        cv.info.update(positives=pos_t.describe(), negatives=neg_t.describe(),
                       n_pos=len(pos), n_neg=len(neg))
        art = cv.save(store, seed=s["seed"])
        cv = ControlVector.from_artifact(art)
        out["control"] = art.key
        models_desc["control_vector"] = art.key
        ctx = contextlib.nullcontext()
        modifier = control_modifier(model, cv)

    def save(kind, what, tensors, meta=None, files=None):
        conf = part_config(s, what, task)
        if not overwrite:
            found = store.find(kind, conf)
            if found is not None:
                out[what] = found.key
                return
        art = store.save(kind, conf, tensors, meta=meta, files=files,
                         provenance=provenance(models=models_desc, seed=s["seed"], spec=s,
                                               device=str(model.device)))
        out[what] = art.key

    if "stats" in parts and s["kind"] == "task" and s.get("reference") \
            and "reference" in raw:
        prog(0, 1, "task-vector statistics")
        _, ref = local_checkpoint(s["reference"])
        table = task_vector_stats(tv, target=model.path, reference=ref, mask=mask)
        table["layer"] = table["layer"].astype(object).where(table["layer"].notna(), None)
        save("vectors.task_stats", "stats", None,
             files={"table.json": table.to_json(orient="records")})
    with ctx:
        if "sweep" in parts:
            items = task.items(s["n_sweep"], "eval", seed=s["seed"])
            batch = task_batch(model, task, items, s.get("traces"), s["max_new_tokens"])
            res = alpha_sweep(model, modifier, s["alphas"], batch, unit=s["unit"],
                              progress=lambda d, t: prog(d, t, "forward sweep"))
            tensors = sweep_tensors(res)
            save("vectors.sweep", "sweep", tensors, meta={"unit": s["unit"],
                                                          "problem_ids": batch.ids})
        if "accuracy" in parts and task.has_answers:
            items = task.items(s["n_accuracy"], "eval", seed=s["seed"] + 1)
            ids = task.encode_all(items, model.tokenizer)
            markers = task.markers(model.tokenizer)
            A = list(s["accuracy_alphas"])
            correct = np.zeros((len(A), len(items)), dtype=np.int8)
            think = np.zeros((len(A), len(items)), dtype=np.int32)
            for a_i, a in enumerate(A):
                with modifier(float(a)):
                    gens = generate(model, ids, max_new_tokens=s["max_new_tokens"],
                                    temperature=0.0, batch_size=64)
                for j, (it, g) in enumerate(zip(items, gens)):
                    correct[a_i, j] = int(bool(task.score(it, g.text, markers)["correct"]))
                    think[a_i, j] = think_span(g.output_ids, markers,
                                               model.tokenizer).n_think_tokens
                prog(a_i + 1, len(A), "accuracy sweep")
            save("vectors.accuracy", "accuracy", {
                "correct": torch.tensor(correct), "think_tokens": torch.tensor(think),
                "alphas": torch.tensor(A)},
                meta={"problem_ids": [it.id for it in items], "decoding": "greedy"})
        if "trace" in parts:
            prog(0, 1, "trace lens")
            it = task.items(1, "eval", seed=s["seed"] + 2)[0]
            b = task_batch(model, task, [it], s.get("traces"), s["max_new_tokens"])
            seq = b.seqs[0]

            def mod1():
                return modifier(1.0)

            shared = trace_lens(model, seq, mod1, unit=s["unit"], label="reference trace")
            heat = layer_token_kl(model, seq, mod1, unit=s["unit"])
            own = generation_lens(model, b.seqs[0][: b.prompt_lens[0]], mod1,
                                  max_new_tokens=s["max_new_tokens"], unit=s["unit"])
            tok = model.tokenizer
            doc = {"problem": it.id, "alpha": 1.0, "unit": s["unit"],
                   "prompt_len": b.prompt_lens[0], "shared": shared.to_records(tok),
                   "own": {k: {"prompt_len": v["prompt_len"], "text": v["generation"].text,
                               "records": v["lens"].to_records(tok)} for k, v in own.items()}}
            save("vectors.trace", "trace", {"layer_kl": heat},
                 files={"trace.json": json.dumps(doc)})
    return out
