"""SEAL-style conditional steering: a reflection/transition-vs-execution vector applied
only at step-separator tokens inside an open think block.

Steps: the thinking is split at the step-separator token (``"\\n\\n"`` for R1-style
models, ``;`` for the organisms). Each step is classified by **keyword rules** (visible
and editable: a list of ``{"class", "mode", "keyword"}``, ``mode`` = ``starts`` |
``contains``, matched case-insensitively on the step's text, first match wins, no match
= ``execution``). Defaults follow SEAL: a step starting with the hesitation word is
*reflection*, verify / double-check phrases are *reflection*, "alternatively" /
"another approach" are *transition*.

Vector: ``mean(reflection ∪ transition) − mean(execution)`` of the activation at
``blocks.{layer}.hook_resid_post`` at one separator token per step. ``anchor="end"``:
the separator that closes the step (the step's summary position);
``anchor="start"``: the separator just before the step (where the model decides what
kind of step comes next; for the first step, the token before the thinking).

Steering: ``act += α · vector`` at that hook only where the *current input token* is
a separator and the row's think block is open (``steering.at_tokens`` +
``steering.think_open``), at the prompt pass and every decoding step; SEAL uses α = −1
(suppress reflection/transition).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from ..errors import ConfigError
from ..generation import GenState, Hook
from ..steering import add_vector, at_tokens, think_open
from .data import ThinkMarkers, pad_id_of, single_token_id

CLASSES = ("execution", "reflection", "transition")
DEFAULT_RULES: list[dict[str, str]] = [
    {"class": "reflection", "mode": "starts", "keyword": "wait"},
    {"class": "reflection", "mode": "contains", "keyword": "check"},
    {"class": "reflection", "mode": "contains", "keyword": "verify"},
    {"class": "transition", "mode": "starts", "keyword": "alternatively"},
    {"class": "transition", "mode": "contains", "keyword": "another approach"},
]


def rules_for(markers: ThinkMarkers) -> list[dict[str, str]]:
    """Default rules with the model's own hesitation word as the reflection opener."""
    rules = [dict(r) for r in DEFAULT_RULES]
    if markers.hesitation:
        rules[0]["keyword"] = markers.hesitation
    return rules


def classify_step(text: str, rules: Sequence[dict[str, str]]) -> str:
    """The thought class of one step's text (first matching rule; else execution)."""
    t = " ".join(text.lower().split())
    for r in rules:
        kw = " ".join(str(r["keyword"]).lower().split())
        if r["class"] not in CLASSES or r["mode"] not in ("starts", "contains"):
            raise ConfigError(f"bad rule {r!r}: class in {CLASSES}, mode starts|contains")
        if kw and ((r["mode"] == "starts" and t.startswith(kw)) or
                   (r["mode"] == "contains" and kw in t)):
            return r["class"]
    return "execution"


def steps_of(think_ids: Sequence[int], sep_id: int) -> list[tuple[int, int, int | None]]:
    """Steps of a thinking span: ``(start, end, sep_index)`` token indices into
    ``think_ids``; ``sep_index`` is the separator closing the step (None for a trailing
    step without one). Empty steps are skipped."""
    out, s = [], 0
    for i, t in enumerate(think_ids):
        if t == sep_id:
            if i > s:
                out.append((s, i, i))
            s = i + 1
    if s < len(think_ids):
        out.append((s, len(think_ids), None))
    return out


def labelled_separators(prompt_ids: Sequence[int], think_ids: Sequence[int], tokenizer,
                        sep_id: int, rules: Sequence[dict[str, str]], anchor: str = "end"
                        ) -> list[tuple[int, str]]:
    """``(position in prompt+think ids, class)`` for each step (see ``anchor``)."""
    if anchor not in ("end", "start"):
        raise ConfigError("anchor must be 'end' or 'start'")
    p = len(prompt_ids)
    out = []
    for s, e, sep in steps_of(think_ids, sep_id):
        cls = classify_step(tokenizer.decode(list(think_ids[s:e]), skip_special_tokens=False),
                            rules)
        if anchor == "end":
            if sep is not None:
                out.append((p + sep, cls))
        else:
            out.append((p + s - 1, cls))   # the separator (or token) before the step
    return out


@torch.no_grad()
def activations_at(model, seqs: Sequence[Sequence[int]], positions: Sequence[Sequence[int]],
                   hook: str, batch_size: int = 64) -> list[torch.Tensor]:
    """Activations ``[n_positions_i, d_model]`` at ``hook`` for each sequence (float32, CPU)."""
    hooked = model.hooked
    dev = next(hooked.parameters()).device
    pad = pad_id_of(model)
    out: list[torch.Tensor] = []
    layer = int(hook.split(".")[1])
    for s in range(0, len(seqs), batch_size):
        chunk = seqs[s: s + batch_size]
        n = max(len(x) for x in chunk)
        toks = torch.full((len(chunk), n), pad, dtype=torch.long)
        mask = torch.zeros_like(toks)
        for i, x in enumerate(chunk):
            toks[i, n - len(x):] = torch.tensor(list(x))
            mask[i, n - len(x):] = 1
        grab: dict[str, torch.Tensor] = {}

        def fn(act, hook=None, grab=grab):
            grab["a"] = act.detach().float().cpu()
            return act

        with hooked.hooks(fwd_hooks=[(hook, fn)]):
            hooked(toks.to(dev), attention_mask=mask.to(dev), stop_at_layer=layer + 1)
        for i, x in enumerate(chunk):
            off = n - len(x)
            out.append(grab["a"][i, [off + q for q in positions[s + i]]])
    return out


def seal_vector(model, items: Sequence[tuple[Sequence[int], Sequence[int]]],
                markers: ThinkMarkers, layer: int, rules: Sequence[dict[str, str]] | None = None,
                anchor: str = "end", batch_size: int = 64) -> dict[str, Any]:
    """The SEAL vector from ``items`` = ``(prompt_ids, think_ids)`` pairs.

    Returns ``{"vector": [d_model], "hook", "counts": {class: n}, "rules", "anchor",
    "layer", "norm"}``.
    """
    tok = model.tokenizer
    sep_id = single_token_id(tok, markers.step_sep)
    if sep_id is None:
        raise ConfigError(f"the step separator {markers.step_sep!r} is not a single token")
    rules = list(rules) if rules is not None else rules_for(markers)
    seqs, poss, labs = [], [], []
    for prompt_ids, think_ids in items:
        ls = labelled_separators(prompt_ids, think_ids, tok, sep_id, rules, anchor)
        if ls:
            seqs.append(list(prompt_ids) + list(think_ids))
            poss.append([q for q, _ in ls])
            labs.append([c for _, c in ls])
    hook = f"blocks.{layer}.hook_resid_post"
    acts = activations_at(model, seqs, poss, hook, batch_size) if seqs else []
    by = {c: [] for c in CLASSES}
    for a, lab in zip(acts, labs):
        for row, c in zip(a, lab):
            by[c].append(row)
    counts = {c: len(v) for c, v in by.items()}
    refl = by["reflection"] + by["transition"]
    if not refl or not by["execution"]:
        raise ConfigError(f"need steps of both kinds for a SEAL vector; counts {counts}")
    vec = torch.stack(refl).mean(0) - torch.stack(by["execution"]).mean(0)
    return {"vector": vec, "hook": hook, "counts": counts, "rules": rules, "anchor": anchor,
            "layer": layer, "norm": float(vec.norm()),
            "sign": "mean(reflection ∪ transition) − mean(execution)"}


def seal_hooks(model, vector: torch.Tensor, layer: int, markers: ThinkMarkers,
               alpha: float | torch.Tensor = -1.0
               ) -> Callable[[GenState], list[Hook]]:
    """A ``fwd_hooks`` factory for :func:`interp.generation.generate`: add ``α · vector``
    at ``blocks.{layer}.hook_resid_post`` at separator tokens inside an open think block."""
    tok = model.tokenizer
    sep_id = single_token_id(tok, markers.step_sep)
    close_id = single_token_id(tok, markers.think_close)
    open_id = single_token_id(tok, markers.think_open)
    if sep_id is None or close_id is None:
        raise ConfigError("conditional steering needs single-token separator and close markers")
    inside = think_open(open_id, close_id, starts_open=markers.starts_open)
    where = at_tokens([sep_id], inside=inside)
    hook = f"blocks.{layer}.hook_resid_post"
    return lambda st: [add_vector(hook, vector, alpha, state=st, where=where)]


# ------------------------------------------------------------------ headline setting
HEADLINE_RULE = ("the α ≠ 0 with the largest drop in mean thinking tokens below α = 0 among "
                 "those whose accuracy stays at or above the lower end of α = 0's 95% "
                 "interval (ties: fewer hesitations, then the smaller |α|); α = 0 when no "
                 "setting qualifies")
# The goal of SEAL on this page is shorter thinking with fewer hesitations at no cost in
# accuracy: the direction in which a change is good, per measure.
GOOD_DIRECTION = {"hesitations": "down", "mean_think_tokens": "down", "accuracy": "up",
                  "short_fraction": "up"}


def _acc(p: dict[str, Any]) -> float | None:
    a = p.get("accuracy")
    return None if a is None else float(a["value"])


def headline_setting(sweep: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Choose SEAL's headline α from the per-α summaries of its sweep by
    :data:`HEADLINE_RULE` (never by the configured α, which may break the model).

    Returns ``alpha`` (the chosen α), ``reference`` and ``chosen`` (the α = 0 and the
    chosen summaries), ``eligible`` (the α values that passed) and ``rejected``
    (``{α: reason}``); ``noise`` is the combined s.e.m. of the two mean lengths, so a
    page can say when the drop is within it. Raises ConfigError without an α = 0 row.
    """
    ref = next((p for p in sweep if float(p["alpha"]) == 0.0), None)
    if ref is None:
        raise ConfigError("the SEAL sweep has no α = 0 (unsteered) row to compare with")
    floor = None if ref.get("accuracy") is None else float(ref["accuracy"]["ci_low"])
    eligible, rejected = [], {}
    for p in sweep:
        a = float(p["alpha"])
        if a == 0.0:
            continue
        if not p["mean_think_tokens"] < ref["mean_think_tokens"]:
            rejected[a] = (f"thinking not shorter ({p['mean_think_tokens']:.2f} vs "
                           f"{ref['mean_think_tokens']:.2f} tokens)")
        elif floor is not None and (_acc(p) is None or _acc(p) < floor):
            rejected[a] = f"accuracy {_acc(p):.3f} below α = 0's interval (≥ {floor:.3f})"
        else:
            eligible.append(p)
    best = min(eligible, key=lambda p: (p["mean_think_tokens"], p.get("hesitations", 0.0),
                                        abs(float(p["alpha"]))), default=ref)
    sems = [x.get("sem_think_tokens") or 0.0 for x in (ref, best)]
    return {"alpha": float(best["alpha"]), "rule": HEADLINE_RULE, "reference": ref,
            "chosen": best, "eligible": [float(p["alpha"]) for p in eligible],
            "rejected": rejected, "noise": float((sems[0] ** 2 + sems[1] ** 2) ** 0.5)}


def delta_color(measure: str) -> str:
    """How a page colours a change of ``measure`` (Streamlit's ``delta_color``): green
    when the change serves the goal, so ``"inverse"`` for measures that should go down
    (more hesitations or more thinking tokens is red), ``"normal"`` for those that
    should go up, ``"off"`` for the rest."""
    way = GOOD_DIRECTION.get(measure)
    return "off" if way is None else ("inverse" if way == "down" else "normal")


def headline_of(seal: dict[str, Any]) -> dict[str, Any]:
    """:func:`headline_setting` of a ``length_seal`` artifact's metadata; an artifact
    without a sweep (one α) has only its configured α to show, and says so."""
    if seal.get("sweep"):
        return headline_setting(seal["sweep"])
    ref = {"alpha": 0.0, "hesitations": seal["hesitations_before"], **seal["before"]}
    pick = {"alpha": float(seal["alpha"]), "hesitations": seal["hesitations_after"],
            **seal["after"]}
    for p in (ref, pick):
        p.setdefault("n", seal["before"].get("n"))
    return {"alpha": float(seal["alpha"]), "rule": "the configured α (this run has no "
            "sweep to choose from)", "reference": ref, "chosen": pick, "eligible": [],
            "rejected": {}, "noise": 0.0}
