"""One call per view of the Reasoning vectors page (no streamlit here).

A loaded model may be shared by several app sessions, and both kinds of modification
act on the shared object (weights edited in place, hooks attached), so every function
that modifies a model holds that model's lock (:func:`model_lock`) for the whole
original-vs-modified computation; the model is restored before the lock is released.
(``interp.serving.guard`` makes every single forward pass take the same lock.)
"""

from __future__ import annotations

import contextlib
from typing import Any, Sequence

from ..serving import model_lock
from .control import ControlVector, build_control_vector
from .lens import generation_lens, layer_token_kl, trace_lens, vector_logit_lens
from .task import Mask, TaskVector, aggregate_stats, apply_task_vector, task_vector_stats


def task_stats_view(donor_a: str, donor_b: str, target: str, reference: str | None,
                    mask: Mask) -> dict[str, Any]:
    """Per-tensor table plus per-layer and per-group aggregates (see task.py)."""
    from ..models import local_checkpoint

    tv = TaskVector.from_specs(donor_a, donor_b)
    _, tp = local_checkpoint(target)
    tv.check_target(tp, target)
    rp = local_checkpoint(reference)[1] if reference else None
    table = task_vector_stats(tv, tp, rp, mask)
    return {"table": table, "by_layer": aggregate_stats(table, "layer"),
            "by_group": aggregate_stats(table, "group"), "tied": tv.tied}


def task_modify(model, donor_a: str, donor_b: str, mask: Mask):
    """``modify(alpha)`` for the lenses: a streamed in-place edit restored from file."""
    tv = TaskVector.from_specs(donor_a, donor_b)
    return lambda alpha: (lambda: apply_task_vector(model, tv, alpha, mask))


def control_modify(model, cv: ControlVector):
    from ..steering import steered

    def outer(alpha: float):
        return lambda: (contextlib.nullcontext() if float(alpha) == 0.0
                        else steered(model, cv.hooks(float(alpha))))

    return outer


def build_control(model, positives: Sequence[str], negatives: Sequence[str] | None,
                  layer: int, kind: str, site: str, token_rule: str = "last") -> dict[str, Any]:
    """A control vector and its logit lens, raw and through the final norm."""
    with model_lock(model):
        cv = build_control_vector(model, positives, negatives, layer, kind, site, token_rule)
    return {"vector": cv, "lens_raw": vector_logit_lens(model, cv.vector, 10, False),
            "lens_norm": vector_logit_lens(model, cv.vector, 10, True)}


def task_prompt_ids(model, specs: Sequence[str], n: int) -> list[list[list[int]]]:
    """The first ``n`` prompts of each task spec (prompt files) as the model reads them
    (chat template, thinking on)."""
    from ..tasks import get_task

    out = []
    for spec in specs:
        task = get_task(spec)
        out.append(task.encode_all(task.items(n, "all"), model.tokenizer))
    return out


def trace_view(model, modify_at, tokens: Sequence[int], alpha: float, own_prompt=None,
               max_new_tokens: int = 64, k: int = 5, unit: str = "nats") -> dict[str, Any]:
    """Per-token lens and layer × token KL on ``tokens`` at ``alpha``; with
    ``own_prompt`` also each model's own greedy generation from it."""
    mod = modify_at(alpha)
    with model_lock(model):
        shared = trace_lens(model, tokens, mod, k, unit, label="shared trace")
        heat = layer_token_kl(model, tokens, mod, unit)
        own = (generation_lens(model, own_prompt, mod, max_new_tokens, k, unit)
               if own_prompt is not None else None)
    tok = getattr(model, "tokenizer", None)
    return {"shared": shared, "records": shared.to_records(tok), "layer_kl": heat,
            "tokens": [r["token"] for r in shared.to_records(tok)], "own": own}


def saved_result_status(art) -> dict[str, Any]:
    """Which models a saved result (sweep, accuracy, trace) was computed on and whether
    their weights have changed since: ``{"line": one caption naming the models, their
    weight hashes and the date, "stale": the models whose weights changed (see
    interp.models.stale_models; models not on this machine are only named in the line),
    "warning": one line, '' when nothing changed}``."""
    from ..models import describe_stale, stale_models

    models = (art.provenance or {}).get("models", {})
    named = [f"{role} {d.get('id')} (weights {str(d.get('weight_hash'))[:10]})"
             for role, d in models.items() if isinstance(d, dict) and d.get("id")]
    line = (f"artifact `{art.key}` · computed on " + ", ".join(named)
            + f" · made {art.provenance.get('created', '?')}")
    found = stale_models(models)
    missing = [x for x in found if x["now"] is None]
    stale = [x for x in found if x["now"] is not None]
    if missing:
        line += " · cannot check against " + ", ".join(str(x["id"]) for x in missing) + \
            " (not on this machine)"
    warning = ("Saved for other weights than those now on disk: " + describe_stale(stale)
               + ". These figures describe the old models; run the sweep again."
               ) if stale else ""
    return {"line": line, "stale": stale, "warning": warning}


def current_hashes(spec: dict[str, Any]) -> dict[str, str | None]:
    """The weight hashes now behind an experiment's models (target and, for a task
    vector, both donors)."""
    from ..models import current_weight_hash

    roles = ("target", "donor_a", "donor_b") if spec.get("kind", "task") == "task" \
        else ("target",)
    return {r: current_weight_hash(spec[r]) for r in roles if spec.get(r)}
