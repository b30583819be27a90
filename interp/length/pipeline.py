"""The reasoning-length workflow end to end, one artifact per stage.

Stages (each saves an artifact with its config and provenance; later stages name the
keys of the earlier ones in their config, so the chain is reproducible):

1. ``length_generations``: batched generation on *direction* prompts, thinking lengths,
   correctness (organisms), sampling settings;
2. ``length_direction``: long/short split, ``dir_l`` at resid_mid and resid_post,
   held-out separability, cosines (:mod:`.directions`);
3. ``length_sweep``: all-layer additive steering over the α grid on held-out prompts
   (one batched generation);
4. ``length_heads``: ``[layers, heads]`` head scores on the short examples, top-k;
5. ``length_edit``: the head edits: ThinkEdit's W_O projection of the top-k scored heads,
   the recentred edit of the same heads, and the projection of heads chosen by their
   measured effect (each top-scored candidate edited alone on train-split prompts; the
   ones that help, added greedily). Per edit: ``||W_O[h] v||`` before/after, the edited
   model exported as a checkpoint, reloaded through ``load_model`` and checked against
   the in-place edited model, evaluation before/after on held-out problems; the
   headline edit is chosen on train-split prompts, never on the evaluation set;
6. ``length_seal``: the SEAL vector and conditional steering before/after;
7. ``length_demo``: an index of the keys above plus the headline figures.

Prompts come from a *task* (:mod:`interp.tasks`, setting ``task``): ``organisms`` (the
organisms' think format), a user's file (``FILE.jsonl`` with optional ``answer`` fields)
or ``math:...``; a task with reference answers gives accuracy through its scorer, and its
thinking markers are read from the model (``markers`` overrides them). Without ``task``
the legacy ``source`` setting applies (``"organism"``, or ``"prompts"`` with a list of
``prompts``, no accuracy). Setting ``traces`` (a trace set key) makes stage 1 read the
trace set's ``train`` traces instead of generating: the split then comes from traces made
once (e.g. on a GPU) with the model's own sampling settings.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..behaviour import agreement_brief, compare_records
from ..errors import ConfigError
from ..store import Store, provenance
from ..tasks.markers import count_hesitations, hesitation_id_set, require_markers
from .data import (
    POSITION_RULES,
    ThinkMarkers,
    ensure_marker_tokenizer,
    examples_from_records,
    generate_thinking,
    mean_activations,
    organism_eval_set,
    sampling_settings,
    split_long_short,
)
from .directions import LengthDirections, thinking_length_direction
from .edit import (
    EDIT_MODES,
    check_mode,
    edited,
    export_edited_checkpoint,
    long_value_means,
    max_logit_diff,
)
from .heads import head_short_scores, top_heads
from .seal import rules_for, seal_hooks, seal_vector
from .stats import paired_change, spearman
from .steer import alpha_grid, alpha_sweep, compact, short_flags, summarize

log = logging.getLogger(__name__)
Progress = Callable[..., None]

DEFAULTS: dict[str, Any] = {
    "model": "organism:reasoner",
    "source": "organism",
    "task": None,                       # a task spec (interp.tasks.get_task); None: source
    "traces": None,                     # a trace set key: stage 1 reads it, no generation
    "markers": None,                    # None: the task's / model's (organisms: their own)
    "n_direction": 600,                 # train-split prompts for the direction
    "n_sweep": 200,                     # held-out prompts per α
    "n_eval": 600,                      # held-out prompts for the edit / SEAL evaluation
    "split": {"mode": "threshold", "short": 2, "long": 10},
    # "think" | "open" | "auto": ThinkEdit's "think" rule unless most short responses have
    # no thinking at all, then "open" (see resolve_positions_rule)
    "positions": "auto",
    "max_positions": 256,
    "sites": ["resid_mid", "resid_post"],
    "sweep_site": "resid_mid",
    # all-layer α grid ±alpha_scale/L: 1.0 (±0.25 on the 4-layer organism) keeps the model
    # coherent; 2.0 (steer.alpha_grid default, ≈ ThinkEdit on 28 layers) breaks it at +α
    "n_alpha": 9, "alpha_scale": 1.0,
    "top_k": None,                      # None: 6% of all heads, at least 2
    # "project" (ThinkEdit), "recentre" (mean-ablation, see edit.py) or "auto": both, the
    # headline chosen on n_select train-split prompts (largest accuracy gain)
    "edit_mode": "auto", "n_select": 200,
    # which heads to edit: "score" (ThinkEdit: the top-k by head score), "effect" (the
    # top-scored candidates each edited alone on the n_select prompts; those that help,
    # added greedily while the combined edit keeps improving) or "auto" (both, the
    # headline chosen as for edit_mode)
    "head_select": "auto", "n_candidates": None,  # None: max(8, 2k), at most all heads
    "seal_layer": None,                 # None: round(0.7 * n_layers) - 1
    "seal_anchor": "start", "seal_alpha": -1.0,
    # SEAL dose-response: every α of the grid (and seal_alpha) as one batched generation
    "seal_alpha_grid": [-1.0, -0.5, -0.25, -0.1, 0.0],
    "seal_rules": None,                 # None: seal.rules_for(markers)
    "max_new_tokens": 96, "temperature": 0.0, "top_p": 1.0, "seed": 0,
    "batch_size": 512,
}


HEAD_SELECT = ("auto", "score", "effect")


_COUNTS = {"n_direction": 1, "n_sweep": 1, "n_eval": 1, "n_select": 1, "max_new_tokens": 1,
           "batch_size": 1, "n_alpha": 2, "max_positions": 1, "top_k": 1, "n_candidates": 1,
           "seal_layer": 0, "seed": 0}


def _typed(k: str, v: Any) -> Any:
    """One setting checked against its default's type and range (ConfigError)."""
    from ..validate import finite_values, number, typed_like

    if k in _COUNTS:
        return None if v is None and DEFAULTS[k] is None else \
            number(v, k, lo=_COUNTS[k], integer=True)
    if k in ("temperature",):
        return number(v, k, lo=0)
    if k == "top_p":
        return number(v, k, lo=0, hi=1, lo_open=True)
    if k in ("alpha_scale",):
        return number(v, k, lo=0, lo_open=True)
    if k == "seal_alpha":
        return number(v, k)
    if k == "seal_alpha_grid":
        return finite_values(typed_like(v, DEFAULTS[k], k), k)
    if k == "split":
        sp = typed_like(v, DEFAULTS[k], k)
        unknown = sorted(set(sp) - {"mode", "short", "long"})
        if unknown or not {"mode", "short", "long"} <= set(sp):
            raise ConfigError("split must be {\"mode\": \"threshold\"|\"percentile\", "
                              f"\"short\": number, \"long\": number}}; got {sp!r}")
        return {"mode": sp["mode"], "short": number(sp["short"], "split.short", lo=0),
                "long": number(sp["long"], "split.long", lo=0)}
    if k in ("sites",):
        from .data import SITES

        sites = typed_like(v, DEFAULTS[k], k)
        bad = [x for x in sites if x not in SITES]
        if bad or not sites:
            raise ConfigError(f"sites must be a non-empty list of {', '.join(SITES)}; "
                              f"got {sites!r}")
        return list(sites)
    if k == "markers":
        if v is None:
            return None
        from .data import ThinkMarkers

        d = typed_like(v, {}, k)
        unknown = sorted(set(d) - set(ThinkMarkers.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown marker(s) {unknown}; known: "
                              f"{', '.join(ThinkMarkers.__dataclass_fields__)}")
        return d
    if k in ("task", "traces"):
        if v is not None and (not isinstance(v, str) or not v.strip()):
            raise ConfigError(f"{k} must be a text (a task spec / a trace set key)")
        return v
    if k == "prompts":
        if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
            raise ConfigError("prompts must be a list of texts")
        return list(v)
    return typed_like(v, DEFAULTS[k], k)


def make_config(**overrides: Any) -> dict[str, Any]:
    """The defaults with ``overrides``, every setting checked (ConfigError naming it)."""
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULTS.items()}
    for k, v in overrides.items():
        if k not in DEFAULTS and k != "prompts":
            raise ConfigError(f"unknown length setting {k!r}; known: "
                              f"{', '.join(sorted(DEFAULTS))}")
        cfg[k] = _typed(k, v)
    if cfg["sweep_site"] not in cfg["sites"]:
        raise ConfigError(f"sweep_site {cfg['sweep_site']!r} must be one of sites "
                          f"{cfg['sites']}")
    if cfg["source"] not in ("organism", "prompts"):
        raise ConfigError(f"source must be 'organism' or 'prompts', not {cfg['source']!r}")
    if cfg["task"] is not None or cfg["traces"] is not None:
        from ..tasks import OrganismTask, check_pair, get_task

        if cfg["task"] is not None:
            check_pair(get_task(cfg["task"]), [cfg["model"]])
        elif cfg["source"] == "organism":
            check_pair(OrganismTask(), [cfg["model"]])
    elif cfg["source"] == "organism":
        from ..tasks import OrganismTask, check_pair

        check_pair(OrganismTask(), [cfg["model"]])
    if cfg["edit_mode"] not in ("auto", *EDIT_MODES):
        raise ConfigError(f"unknown edit mode {cfg['edit_mode']!r}; choose from auto, "
                          f"{', '.join(EDIT_MODES)}")
    if cfg["head_select"] not in HEAD_SELECT:
        raise ConfigError(f"unknown head selection {cfg['head_select']!r}; choose from "
                          f"{', '.join(HEAD_SELECT)}")
    if cfg["head_select"] == "effect" and cfg["edit_mode"] == "recentre":
        raise ConfigError("head_select='effect' measures ThinkEdit projections: use "
                          "edit_mode 'project' or 'auto' with it")
    if cfg["positions"] not in ("auto", *POSITION_RULES):
        raise ConfigError(f"unknown positions rule {cfg['positions']!r}; choose from "
                          f"auto, {', '.join(POSITION_RULES)}")
    return cfg


def resolve_positions_rule(setting: str, lengths: Sequence[int], labels: np.ndarray) -> str:
    """The positions rule to use. ``"auto"``: ThinkEdit's ``"think"`` rule, unless most
    short responses have no thinking at all (the organisms' ``<think> </think>``): then
    the short class mean would be the decision position alone while the long mean runs
    over thinking content, and ``long - short`` would mostly measure *where* in the text
    a position is; ``"open"`` compares the same decision position in both classes."""
    if setting != "auto":
        return setting
    short = [n for n, lab in zip(lengths, labels) if lab == 0]
    return "open" if short and float(np.median(short)) == 0 else "think"


def _task(cfg: dict[str, Any]):
    from ..tasks import get_task

    return get_task(cfg["task"]) if cfg.get("task") else None


def _markers(cfg: dict[str, Any], model=None) -> ThinkMarkers:
    """The trace set's markers, else the task's (read from the model), else the
    organisms'; the ``markers`` setting overrides the fields it names."""
    task = _task(cfg)
    if cfg.get("traces"):
        from ..tasks.traces import load_traceset

        mk = load_traceset(cfg["traces"]).markers
    elif task is not None:
        mk = task.markers(getattr(model, "tokenizer", None))
    else:
        mk = ThinkMarkers.organism()
    return ThinkMarkers.from_dict({**mk.to_dict(), **(cfg.get("markers") or {})})


def prompt_set(cfg: dict[str, Any], n: int, split: str, seed_offset: int = 0, model=None):
    """``(prompts, scorer or None)`` for a stage: a task's items of ``split`` as token
    ids (scored when every item has a reference answer), else the legacy sources."""
    task = _task(cfg)
    if task is not None:
        if model is None:
            raise ConfigError("a task's prompts need the model's tokenizer")
        items = task.items(n, split, seed=cfg["seed"] + seed_offset)
        scored = all(it.answer is not None for it in items)
        return (task.encode_all(items, model.tokenizer),
                task.scorer(items, _markers(cfg, model)) if scored else None)
    if cfg["source"] == "organism":
        _, prompts, scorer = organism_eval_set(n, seed=cfg["seed"] + seed_offset, split=split)
        return prompts, scorer
    prompts = list(cfg.get("prompts") or [])
    if not prompts:
        raise ConfigError("no prompts given (source is not 'organism')")
    return prompts[:n], None


def _sampling(cfg):
    return sampling_settings(cfg["max_new_tokens"], cfg["temperature"], cfg["top_p"],
                             cfg["seed"], cfg["batch_size"])


def _stage_progress(progress: Progress | None, stage: str, k: int, n_stages: int):
    if progress is None:
        return None
    return lambda done, total: progress(k, n_stages, stage=stage, done=done, of=total)


def edit_gain(sm: dict[str, Any], base: dict[str, Any]) -> tuple[float, float]:
    """How much an edit helped on a prompt set, as a sortable pair: (accuracy gain,
    short-fraction drop), or (short-fraction drop, 0) without a scorer."""
    drop = base["short_fraction"]["value"] - sm["short_fraction"]["value"]
    if "accuracy" in sm and "accuracy" in base:
        return (sm["accuracy"]["value"] - base["accuracy"]["value"], drop)
    return (drop, 0.0)


def brief(sm: dict[str, Any]) -> dict[str, Any]:
    return {k: sm[k] for k in ("short_fraction", "accuracy", "mean_think_tokens") if k in sm}


def effect_heads(model, candidates: Sequence[tuple[int, int]], units: torch.Tensor,
                 evaluate: Callable[[], dict[str, Any]], base: dict[str, Any], k: int
                 ) -> tuple[list[tuple[int, int]], list[dict[str, Any]], dict[str, Any] | None]:
    """Heads chosen by the measured effect of their ThinkEdit projection.

    Each candidate is edited alone and ``evaluate()`` (a summary on held-in prompts) is
    compared with ``base``; the candidates that help (positive :func:`edit_gain`) are
    added best first while the combined edit keeps improving, up to ``k`` heads.
    Returns ``(heads, scan, summary)``: the scan holds every candidate's own result,
    ``summary`` (:func:`brief`) is the chosen edit's result (None when no head helps)."""
    scan, alone = [], {}
    for ly, h in candidates:
        with edited(model, [(ly, h)], units, "project"):
            alone[(ly, h)] = sm = brief(evaluate())
        scan.append({"layer": int(ly), "head": int(h), "gain": list(edit_gain(sm, base)),
                     **sm})
    helpful = sorted((r for r in scan if tuple(r["gain"]) > (0.0, 0.0)),
                     key=lambda r: tuple(r["gain"]), reverse=True)
    chosen: list[tuple[int, int]] = []
    best, best_sm = (0.0, 0.0), None
    for r in helpful:
        if len(chosen) >= k:
            break
        trial = chosen + [(r["layer"], r["head"])]
        if len(trial) == 1:
            sm = alone[trial[0]]
        else:
            with edited(model, trial, units, "project"):
                sm = brief(evaluate())
        g = edit_gain(sm, base)
        if g > best:
            chosen, best, best_sm = trial, g, sm
    return chosen, scan, best_sm


def build(model, cfg: dict[str, Any], store: Store, progress: Progress | None = None,
          export_dir: str | Path | None = None) -> dict[str, Any]:
    """Run every stage on a loaded ``model``; returns the index (also saved)."""
    mk = _markers(cfg, model)
    if ensure_marker_tokenizer(model, mk):
        log.warning("replaced a tokenizer that mis-encoded the think markers")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    prov = provenance(models={"model": model.describe()}, seed=cfg["seed"])
    stages = 7
    t0 = time.time()
    timings: dict[str, float] = {}

    def tick(name):
        timings[name] = round(time.time() - t0 - sum(timings.values()), 2)
        log.info("length stage %s done (%.1fs)", name, timings[name])

    # 1. generations for the direction (train split) ----------------------------------
    if progress:
        progress(0, stages, stage="generate")
    if cfg.get("traces"):   # the split from a stored trace set: nothing generated
        recs = traceset_records(cfg["traces"], model, cfg["n_direction"])
        prompts = [r["prompt_ids"] for r in recs]
    else:
        prompts, scorer = prompt_set(cfg, cfg["n_direction"], "train", model=model)
        recs = generate_thinking(model, prompts, mk, max_new_tokens=cfg["max_new_tokens"],
                                 temperature=cfg["temperature"], top_p=cfg["top_p"],
                                 seed=cfg["seed"], batch_size=cfg["batch_size"],
                                 scorer=scorer,
                                 progress=_stage_progress(progress, "generate", 0, stages))
    require_markers(recs, mk)
    gcfg = {"model": model.spec, "weight_hash": model.weight_hash, "source": cfg["source"],
            "n": len(prompts), "split": "train", "markers": mk.to_dict(),
            "sampling": _sampling(cfg), **{k: cfg[k] for k in ("task", "traces") if cfg[k]}}
    gen_art = store.save("length_generations", gcfg, provenance=prov,
                         meta={"records": compact(recs), "summary": summarize(recs, 0)})
    tick("generate")

    # 2. directions ---------------------------------------------------------------------
    lengths = [r["think_tokens"] for r in recs]
    sp = cfg["split"]
    labels, split_info = split_long_short(lengths, sp["mode"], sp["short"], sp["long"])
    rule = resolve_positions_rule(cfg["positions"], lengths, labels)
    ex = examples_from_records(recs, rule, cfg["max_positions"])
    keep = np.flatnonzero(labels >= 0)
    if progress:
        progress(1, stages, stage="directions")
    feats = mean_activations(model, [ex[i] for i in keep], cfg["sites"],
                             batch_size=min(cfg["batch_size"], 128),
                             progress=_stage_progress(progress, "directions", 1, stages))
    dirs = thinking_length_direction(feats, labels[keep], seed=cfg["seed"], meta={
        "positions_rule": rule, "positions_setting": cfg["positions"],
        "max_positions": cfg["max_positions"],
        "split": split_info, "markers": mk.to_dict(), "generations": gen_art.key})
    # the other positions rule, for comparison
    alt = "think" if rule == "open" else "open"
    ex_alt = examples_from_records([recs[i] for i in keep], alt, cfg["max_positions"])
    f_alt = mean_activations(model, ex_alt, cfg["sites"], batch_size=min(cfg["batch_size"], 128))
    d_alt = thinking_length_direction(f_alt, labels[keep], seed=cfg["seed"])
    dirs.meta["alt_positions_rule"] = {
        "rule": alt, "auroc": d_alt.auroc, "probe_accuracy": d_alt.probe_accuracy,
        "best": d_alt.best(),
        "cosine_with_main": {s: [float(torch.nn.functional.cosine_similarity(
            d_alt.dirs[s][ly], dirs.dirs[s][ly], dim=0)) for ly in range(L)]
            for s in cfg["sites"]}}
    dcfg = {"generations": gen_art.key, "split": sp, "positions": rule,
            "max_positions": cfg["max_positions"], "sites": cfg["sites"]}
    dir_art = store.save("length_direction", dcfg, dirs.tensors(), provenance=prov,
                         meta=dirs.meta, finite=True)
    tick("directions")

    # 3. α sweep ------------------------------------------------------------------------
    alphas = alpha_grid(L, cfg["n_alpha"], "all", cfg["alpha_scale"])
    sw_prompts, sw_scorer = prompt_set(cfg, cfg["n_sweep"], "eval", seed_offset=1,
                                         model=model)
    if progress:
        progress(2, stages, stage="sweep")
    short_max = split_info["short_max_tokens"]
    sw = alpha_sweep(model, sw_prompts, dirs.dirs[cfg["sweep_site"]], alphas,
                     site=cfg["sweep_site"], markers=mk, scorer=sw_scorer,
                     short_max_tokens=short_max, max_new_tokens=cfg["max_new_tokens"],
                     temperature=cfg["temperature"], top_p=cfg["top_p"], seed=cfg["seed"],
                     batch_size=cfg["batch_size"],
                     progress=_stage_progress(progress, "sweep", 2, stages))
    means = [p["mean_think_tokens"] for p in sw["per_alpha"]]
    rho = spearman(alphas, means)
    if 0.0 in alphas:   # per-example agreement of each α with the unsteered generations
        n_sw, k0 = len(sw_prompts), alphas.index(0.0)
        for k_, p_ in enumerate(sw["per_alpha"]):
            p_["agreement"] = agreement_brief(sw["records"][k0 * n_sw:(k0 + 1) * n_sw],
                                              sw["records"][k_ * n_sw:(k_ + 1) * n_sw])
    scfg = {"direction": dir_art.key, "site": cfg["sweep_site"], "layers": "all",
            "alphas": alphas, "n_prompts": len(sw_prompts), "sampling": _sampling(cfg),
            "alpha_units": "multiples of dir_l (unnormalised long - short)"}
    sweep_art = store.save("length_sweep", scfg, provenance=prov, meta={
        "per_alpha": sw["per_alpha"], "records": compact(sw["records"]),
        "spearman_mean_length_vs_alpha": rho, "short_max_tokens": short_max,
        "alpha_scale": cfg["alpha_scale"],
        "alpha_grid_rule": f"linspace(-s/L, s/L, n), s={cfg['alpha_scale']}, L={L}",
        "shift_over_resid_norm": [
            [abs(a) * n / max(r, 1e-9) for n, r in
             zip(dirs.norms(cfg["sweep_site"]), dirs.meta["mean_resid_norm"][cfg["sweep_site"]])]
            for a in alphas[-1:]][0]})
    tick("sweep")

    # 4. head scores --------------------------------------------------------------------
    if progress:
        progress(3, stages, stage="heads")
    short_idx = [i for i in range(len(recs)) if labels[i] == 0]
    units = torch.stack([dirs.unit_short("resid_mid", ly) for ly in range(L)])
    scores = head_short_scores(model, [ex[i] for i in short_idx], units,
                               batch_size=min(cfg["batch_size"], 128))
    k = cfg["top_k"] or max(2, math.ceil(0.06 * L * H))
    top = top_heads(scores, k)
    hcfg = {"direction": dir_art.key, "site": "resid_mid", "positions": rule,
            "top_k": k}
    heads_art = store.save("length_heads", hcfg, {"scores": scores}, provenance=prov,
                           finite=True, meta={
        "top": top, "n_short_examples": len(short_idx), "n_layers": L, "n_heads": H,
        "score": "mean over short examples of mean over thinking positions of "
                 "(z_h W_O[h]) . unit_short_l; positive = writes towards short"})
    tick("heads")

    # 5. the edit -----------------------------------------------------------------------
    if progress:
        progress(4, stages, stage="edit")
    heads = [(t["layer"], t["head"]) for t in top]
    ev_prompts, ev_scorer = prompt_set(cfg, cfg["n_eval"], "eval", seed_offset=2,
                                         model=model)
    gen_kw = dict(max_new_tokens=cfg["max_new_tokens"], temperature=cfg["temperature"],
                  top_p=cfg["top_p"], seed=cfg["seed"], batch_size=cfg["batch_size"],
                  scorer=ev_scorer)
    before = generate_thinking(model, ev_prompts, mk, **gen_kw)
    from .. import store as _store
    from ..models import load_model

    long_ex = [ex[i] for i in range(len(recs)) if labels[i] == 1]
    modes = ["project"] if cfg["edit_mode"] != "recentre" else []
    means = None
    if cfg["edit_mode"] != "project" and long_ex:
        try:
            check_mode(model.hooked, "recentre")
            means = long_value_means(model, long_ex, heads, units,
                                     batch_size=min(cfg["batch_size"], 128))
            modes.append("recentre")
        except ConfigError as e:
            if cfg["edit_mode"] == "recentre":
                raise
            log.info("recentred edit skipped: %s", e)
    # candidate edits: name -> (heads, mode, long means or None)
    edits: dict[str, tuple[list[tuple[int, int]], str, Any]] = {}
    if cfg["head_select"] != "effect":
        edits.update({m_: (heads, m_, means if m_ == "recentre" else None) for m_ in modes})
    # everything chosen on *train-split* prompts, never the eval set
    selection: dict[str, Any] = {}
    effect_scan: list[dict[str, Any]] = []
    want_effect = cfg["head_select"] != "score" and "project" in modes
    if want_effect or len(edits) > 1:
        sel_prompts, sel_scorer = prompt_set(cfg, cfg["n_select"], "train", seed_offset=3,
                                             model=model)
        sel_kw = {**gen_kw, "scorer": sel_scorer}

        def evaluate_sel():
            return summarize(generate_thinking(model, sel_prompts, mk, **sel_kw), short_max)

        base = evaluate_sel()
        if want_effect:
            m = cfg["n_candidates"] or max(8, 2 * k)
            cands = [(t["layer"], t["head"]) for t in top_heads(scores, min(m, L * H))]
            eff, effect_scan, eff_sm = effect_heads(model, cands, units, evaluate_sel, base, k)
            if eff:
                edits["project-effect"] = (eff, "project", None)
                selection["project-effect"] = eff_sm   # measured by the scan already
            elif cfg["head_select"] == "effect":
                raise ConfigError("no candidate head's edit helped on the selection prompts "
                                  "(see the scan); use head_select='score'")
        for name, (hs, m_, mm) in edits.items():
            if name not in selection:
                with edited(model, hs, units, m_, mm):
                    selection[name] = brief(evaluate_sel())
        selection["unedited"] = brief(base)
        chosen = max(edits, key=lambda n_: edit_gain(selection[n_], base))
        selection.update({"n": len(sel_prompts), "split": "train", "chosen": chosen,
                          "rule": "largest accuracy gain, then largest drop of the short "
                                  "fraction (short-fraction drop alone without a scorer)"})
    if not edits:
        raise ConfigError("no head edit to evaluate")
    mode = selection.get("chosen") or next(iter(edits))

    # the edited checkpoints go to the (git-ignored) main cache, never into a demo store
    export_root = Path(export_dir) if export_dir else \
        Path(_store.DEFAULT_ROOT) / "length_edited" / heads_art.key
    check = torch.tensor([before[0]["prompt_ids"] + before[0]["output_ids"]])
    short_b = short_flags(before, short_max)
    per_mode: dict[str, Any] = {}
    for name, (hs, m_, mm) in edits.items():
        out = export_edited_checkpoint(
            model, hs, units, export_root if name == "project" else
            export_root.with_name(f"{export_root.name}-{name}"),
            meta={"heads_artifact": heads_art.key, "edit": name}, mode=m_, means=mm)
        reloaded = load_model(str(out), device=model.device, dtype=model.dtype)
        reloaded.tokenizer = model.tokenizer
        reloaded.hooked.tokenizer = model.tokenizer
        with edited(model, hs, units, m_, mm) as norms:
            diff = max_logit_diff(model, reloaded, check)
        after = generate_thinking(reloaded, ev_prompts, mk, **gen_kw)
        per_param = model.cfg.d_head * model.cfg.d_model + (m_ == "recentre") * model.cfg.d_head
        res = {"norms": norms, "after": summarize(after, short_max), "weight_edit": m_,
               "heads": [list(h) for h in hs],
               "export_max_logit_diff": diff, "records_after": compact(after),
               "behaviour": compare_records(before, after, seed=cfg["seed"]),
               "export_dir": out.name,
               "edited_param_fraction": len(hs) * per_param / model.n_params(),
               "short_fraction_change": paired_change(
                   short_b, short_flags(after, short_max), seed=cfg["seed"])}
        if ev_scorer is not None:
            res["accuracy_change"] = paired_change(
                [r["correct"] for r in before], [r["correct"] for r in after],
                seed=cfg["seed"])
        per_mode[name] = res
    ecfg = {"heads": heads_art.key, "edited_heads": per_mode[mode]["heads"],
            "n_eval": len(ev_prompts), "sampling": _sampling(cfg),
            "edit_mode": cfg["edit_mode"], "head_select": cfg["head_select"],
            "n_candidates": cfg["n_candidates"], "n_select": cfg["n_select"]}
    emeta = {"before": summarize(before, short_max), "records_before": compact(before),
             "mode": mode, "modes": {m_: {k: v for k, v in r.items() if k != "records_after"}
                                     for m_, r in per_mode.items()},
             "selection": selection, "effect_scan": effect_scan, "long_means": means,
             **per_mode[mode]}
    edit_art = store.save("length_edit", ecfg, provenance=prov, meta=emeta)
    tick("edit")

    # 6. SEAL ---------------------------------------------------------------------------
    if progress:
        progress(5, stages, stage="seal")
    seal_meta: dict[str, Any] = {}
    seal_key = None
    try:
        layer = cfg["seal_layer"] if cfg["seal_layer"] is not None else \
            max(0, round(0.7 * L) - 1)
        items = [(r["prompt_ids"], r["output_ids"][r["think_start"]: r["think_end"]])
                 for r in recs if r["think_tokens"] > 0]
        rules = cfg.get("seal_rules") or rules_for(mk)
        sv = seal_vector(model, items, mk, layer, rules, cfg["seal_anchor"])
        hes = hesitation_id_set(model.tokenizer, (mk.hesitation,))  # every BPE spelling

        def hes_rate(rs):
            return float(np.mean([count_hesitations(r["output_ids"], hes) for r in rs]))

        def seal_rows(a, st):
            return seal_hooks(model, sv["vector"], layer, mk, a)(st)

        # the configured α and the dose-response grid as one batched generation
        grid = sorted({float(a) for a in [*cfg["seal_alpha_grid"], cfg["seal_alpha"]]})
        sw_seal = alpha_sweep(model, ev_prompts, sv["vector"][None], grid, markers=mk,
                              scorer=ev_scorer, short_max_tokens=short_max,
                              max_new_tokens=cfg["max_new_tokens"],
                              temperature=cfg["temperature"], top_p=cfg["top_p"],
                              seed=cfg["seed"], batch_size=cfg["batch_size"],
                              make_hooks=seal_rows)
        n_ev = len(ev_prompts)
        for k_, p_ in enumerate(sw_seal["per_alpha"]):
            p_["hesitations"] = hes_rate(sw_seal["records"][k_ * n_ev:(k_ + 1) * n_ev])
            p_["agreement"] = agreement_brief(before,
                                              sw_seal["records"][k_ * n_ev:(k_ + 1) * n_ev])
        head = grid.index(float(cfg["seal_alpha"]))
        after = {k: v for k, v in sw_seal["per_alpha"][head].items()
                 if k not in ("alpha", "hesitations", "agreement")}
        seal_meta = {k: v for k, v in sv.items() if k != "vector"}
        seal_meta.update(before=emeta["before"], after=after,
                         hesitations_before=hes_rate(before),
                         hesitations_after=sw_seal["per_alpha"][head]["hesitations"],
                         alpha=cfg["seal_alpha"], behaviour=compare_records(
                             before, sw_seal["records"][head * n_ev:(head + 1) * n_ev],
                             seed=cfg["seed"]))
        if len(grid) > 1:
            seal_meta["sweep"] = sw_seal["per_alpha"]
        seal_art = store.save("length_seal", {"generations": gen_art.key, "layer": layer,
                                              "anchor": cfg["seal_anchor"], "rules": rules,
                                              "alpha": cfg["seal_alpha"]},
                              {"vector": sv["vector"]}, provenance=prov, meta=seal_meta,
                              finite=True)
        seal_key = seal_art.key
    except ConfigError as e:
        seal_meta = {"error": str(e)}
    tick("seal")

    # 7. index --------------------------------------------------------------------------
    best = dirs.best()
    neg = [p for p in sw["per_alpha"] if p["alpha"] < 0]
    zero = [p for p in sw["per_alpha"] if p["alpha"] == 0]
    index = {
        "keys": {"generations": gen_art.key, "direction": dir_art.key,
                 "sweep": sweep_art.key, "heads": heads_art.key, "edit": edit_art.key,
                 "seal": seal_key},
        "model": model.spec, "timings": timings,
        "best_layer_separability": best["auroc"], "best": best,
        "length_alpha_spearman": rho,
        "short_fraction_alpha0": zero[0]["short_fraction"]["value"] if zero else None,
        "short_fraction_most_negative_alpha": neg[0]["short_fraction"]["value"] if neg else None,
        "export_dir": emeta["export_dir"], "edit_mode": mode,
    }
    if progress:
        progress(6, stages, stage="index")
    idx = store.save("length_demo", {"config": {k: v for k, v in cfg.items()
                                                if k != "prompts"}},
                     provenance=prov, meta=index)
    if progress:
        progress(stages, stages, stage="done")
    index["key"] = idx.key
    return index


def traceset_records(key: str, model, n: int) -> list[dict[str, Any]]:
    """Up to ``n`` ``train`` traces of a trace set as generation records (the fields of
    :func:`~.data.records_from_generations`), refused when the set was made with other
    weights than ``model``'s."""
    from ..tasks.traces import load_traceset

    ts = load_traceset(key)
    made = ts.config.get("weight_hash")
    if made and made != model.weight_hash:
        raise ConfigError(f"trace set {ts.key} was made with {ts.model} (weights "
                          f"{made[:10]}), not with {model.spec} ({model.weight_hash[:10]})")
    recs = ts.split("train")[:n]
    if not recs:
        raise ConfigError(f"trace set {ts.key} has no 'train' traces")
    keep = ("think_tokens", "opened", "closed", "think_start", "think_end", "finished",
            "prompt_ids", "output_ids", "text", "correct", "answer")
    out = [{"row": i, "n_output": len(r["output_ids"]), **{k: r[k] for k in keep}}
           for i, r in enumerate(recs)]
    if any(r["correct"] is None for r in out):
        for r in out:
            r.pop("correct")
    return out


def latest_index(store: Store) -> Any:
    """The newest ``length_demo`` artifact in ``store`` (or None)."""
    arts = store.list("length_demo")
    return arts[0] if arts else None


def load_directions(store: Store, key: str) -> LengthDirections:
    return LengthDirections.from_artifact(store.load("length_direction", key))


def prompts_from_text(text: str) -> Sequence[str]:
    """One prompt per non-empty line."""
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def list_runs(stores: dict[str, Store]) -> list[dict[str, Any]]:
    """Every ``length_demo`` index in the given stores, newest first:
    ``[{"store", "key", "model", "created"}]``."""
    out = []
    for name, st in stores.items():
        for a in st.list("length_demo"):
            out.append({"store": name, "key": a.key, "model": a.meta.get("model"),
                        "created": a.provenance.get("created", "")})
    return sorted(out, key=lambda r: r["created"], reverse=True)


def load_run(store: Store, key: str) -> dict[str, Any]:
    """Everything the page shows for one run: the index and each stage's metadata
    (``seal`` None when that stage failed), head scores and cosine matrices as arrays."""
    idx = store.load("length_demo", key)
    keys = idx.meta["keys"]
    d = store.load("length_direction", keys["direction"])
    heads = store.load("length_heads", keys["heads"])
    run = {"index": idx.meta, "config": idx.config.get("config", {}),
           "generations": store.load("length_generations", keys["generations"]).meta,
           "direction": d.meta,
           "cosine": {s: d.tensors[f"cosine.{s}"].numpy() for s in d.meta["sites"]},
           "sweep": store.load("length_sweep", keys["sweep"]).meta,
           "heads": heads.meta, "head_scores": heads.tensors["scores"].numpy(),
           "edit": store.load("length_edit", keys["edit"]).meta,
           "seal": store.load("length_seal", keys["seal"]).meta if keys.get("seal") else None,
           "weight_hash": model_weight_hash(idx)}
    return run


def model_weight_hash(art) -> str | None:
    """The weight hash of the model an artifact was computed on (its provenance)."""
    return ((art.provenance or {}).get("models", {}).get("model") or {}).get("weight_hash")
