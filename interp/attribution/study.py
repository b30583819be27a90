"""The hesitation study: ranking, clusters, necessity and sufficiency, as one job.

Protocol (every choice on the validation split, every headline on the evaluation split;
the two splits use disjoint held-out problems):

1. **Effects** (validation traces): each feature's total effect on each trigger, for two
   targets: the de-meaned ``wait`` logit and ``wait`` minus the token it displaces.
2. **Ranking** by mean effect; **clusters** of the top ``n_cluster`` features of the
   logit-difference ranking by their effect profiles (no labels used), scored against
   the planted mechanisms (``cluster_purity``) and, inside the error clusters, against
   the error's cause; triggers clustered by their driving features
   (``prompt_cluster_purity``).
3. **Candidate feature sets**: the top ``k`` of either graph ranking (``k`` in ``ks``, at
   most ``max_fraction`` of all features), ablated to zero or to the feature's mean
   activation; and, for the ``ablation`` ranking, sets grown by forward selection on
   measured ablations, once per collateral price ``w`` in ``kl_weights``: each feature is
   ablated alone; the ``greedy_pool`` best per mechanism by their P(``wait``) drop minus
   ``w`` times their collateral KL (the next-token KL at every non-trigger position) form
   the pool; each step adds the feature that most lowers the mean over mechanisms of the
   relative P(``wait``) at validation triggers plus ``w`` times the set's collateral KL.
   The same selection on verification triggers alone gives *verification* candidates
   (the shortest prefix leaving at most ``verify_remaining`` of their P(``wait``)). Each
   price's best selected set (least objective) is also *completed*: filled up to the cap
   with the ``complete_with`` graph ranking (:func:`complete_set`; ranking name
   ``ablation+logit_diff``), since the selection tests a pool of a few dozen features
   while error detection is spread over many small, specific ones; and the other way
   round, the selection runs once more *from* the ranking's top ``start_k`` features,
   adding measured picks to them (``logit_diff+ablation``: its best set and its last).
   Each
   set is scored on validation traces (teacher-forced P(``wait``) at triggers) and
   validation generations (hesitations, thinking length, accuracy, split per problem
   into corrections lost and collateral change). The chosen set
   (:func:`choose_candidate`) has the largest validation hesitation-rate drop among sets
   that keep thinking length within ``max_length_change`` and lose at most
   ``max_collateral_loss`` points of collateral accuracy. Corrections lost are not
   penalised: in this organism an error hesitation is followed by the correction of a
   wrong column result, so any set that removes error hesitations must leave those
   results wrong; the study reports that share instead.
4. **Evaluation** of the chosen set: P(``wait``) at evaluation triggers, generations on
   evaluation problems (paired accuracy change with a bootstrap interval), and clamping
   it at evaluation clean decision points to its mean activation at validation triggers.
   The *verification set* (the verification candidate with the least collateral loss on
   validation) is evaluated likewise: verification hesitations are redundant re-checks,
   so removing them should cost no accuracy at all.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..store import Store, provenance
from . import hesitation as H

KIND = "hesitation_study"
DEFAULTS: dict[str, Any] = {
    "adapters_key": None, "adapters_store": None, "store": None, "device": "cpu",
    "n_validation": 120, "n_evaluation": 120, "n_gen_validation": 200,
    "n_gen_evaluation": 300, "n_cluster": 30, "ks": [25, 51], "max_fraction": 0.05,
    "modes": ["zero", "mean"], "rankings": ["logit_diff", "logit", "ablation"],
    "greedy_pool": 20, "verify_remaining": 0.1, "kl_weights": [10.0, 100.0],
    "max_collateral_loss": 2.0, "complete_with": "logit_diff", "start_k": 25,
    "max_length_change": 0.25, "max_new_tokens": 80,
}
GRAPH_RANKINGS = ("logit", "logit_diff")
GEN_SEEDS = {"validation": 303, "evaluation": 404}


def study_config(spec: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(spec) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown study settings {unknown}; known: {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **spec}
    for k in ("n_validation", "n_evaluation", "n_gen_validation", "n_gen_evaluation",
              "n_cluster"):
        if not isinstance(cfg[k], int) or cfg[k] < 1:
            raise ConfigError(f"{k} must be a positive integer")
    if not 0 < float(cfg["max_fraction"]) <= 1:
        raise ConfigError("max_fraction must be in (0, 1]")
    bad = [m for m in cfg["modes"] if m not in ("zero", "mean")]
    bad += [r for r in cfg["rankings"] if r not in (*GRAPH_RANKINGS, "ablation")]
    if not cfg["kl_weights"] or not all(float(w) >= 0 for w in cfg["kl_weights"]):
        raise ConfigError("kl_weights must be a list of numbers >= 0")
    if not float(cfg["max_collateral_loss"]) >= 0:
        raise ConfigError("max_collateral_loss must be a number >= 0")
    if cfg["complete_with"] not in (None, *GRAPH_RANKINGS):
        raise ConfigError(f"complete_with must be one of {list(GRAPH_RANKINGS)} or null")
    if not isinstance(cfg["start_k"], int) or cfg["start_k"] < 0:
        raise ConfigError("start_k must be an integer >= 0 (0: no selection from the "
                          "ranking's top)")
    if not isinstance(cfg["greedy_pool"], int) or cfg["greedy_pool"] < 1:
        raise ConfigError("greedy_pool must be a positive integer")
    if not 0 < float(cfg["verify_remaining"]) < 1:
        raise ConfigError("verify_remaining must be in (0, 1)")
    if bad:
        raise ConfigError(f"unknown modes or rankings {bad}")
    return cfg


def adapters_artifact(key: str | None = None, store: str | None = None):
    """An adapters artifact by key (or the newest) from ``store``; without a store, from
    your cache and then the committed demo artifacts."""
    from ..adapters.io import find_adapters
    from ..errors import ArtifactError
    from ..store import PROJECT_ROOT, Store

    if store:
        return find_adapters(Store(store), key)
    try:
        return find_adapters(Store(), key)
    except ArtifactError:
        return find_adapters(Store(PROJECT_ROOT / "cache" / "demo", read_only=True), key)


def generation_problems(split: str, n: int) -> list[Any]:
    """Held-out organism problems (natural tag mix) for generations of one split."""
    from ..organisms.task import sample_problems

    probs = sample_problems(n, seed=GEN_SEEDS[split])
    if split == "evaluation":
        seen = {p.id for p in sample_problems(n, seed=GEN_SEEDS["validation"])}
        extra = [p for p in sample_problems(2 * n + 32, seed=GEN_SEEDS[split] + 1)
                 if p.id not in seen]
        probs = ([p for p in probs if p.id not in seen] + extra)[:n]
    return probs


def _gen_summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    m = lambda k: float(np.mean([r[k] for r in rows])) if rows else float("nan")  # noqa: E731
    return {"hesitations": m("hesitations"), "hesitations_error": m("hesitations_error"),
            "hesitations_verify": m("hesitations_verify"), "think_tokens": m("think_tokens"),
            "accuracy": m("correct")}


def run_study(spec: dict[str, Any], progress=None, tracer: H.Tracer | None = None,
              ranks: Any = None) -> dict[str, Any] | None:
    """Run the protocol (module docstring); returns the figures and tensors.

    Under torchrun (``ranks``, default this process's) the effects (one graph per
    validation trace and target, most of the study's time) are split across the ranks
    and merged in the store (:func:`interp.attribution.batch.batch_effects`); rank 0 then
    runs the rest and returns the result, the other ranks return None."""
    from .. import distributed as D

    cfg = study_config(spec)
    ranks = ranks or D.current()
    tick = progress or (lambda *a, **k: None)
    if tracer is None:
        art = adapters_artifact(cfg["adapters_key"], cfg["adapters_store"])
        tracer = H.Tracer.from_artifact(art, cfg["device"])
    d_sae = tracer.model.adapters.d_sae
    n_feat = tracer.n_features
    steps = 2 * cfg["n_validation"] + 8 + 2 * len(cfg["rankings"]) \
        + (3 if "ablation" in cfg["rankings"] else 0)
    done = 0

    def step(msg, k=1):
        nonlocal done
        done += k
        tick(min(done, steps), steps, msg)

    val = H.trigger_traces("validation", cfg["n_validation"])
    ev = H.trigger_traces("evaluation", cfg["n_evaluation"])
    effects = {}
    for target in ("logit", "logit_diff"):
        if ranks.world > 1:
            from .batch import split_effects

            effects[target] = split_effects(
                tracer, val, "validation", cfg["n_validation"], target,
                Store(cfg["store"]) if cfg["store"] else Store(), ranks)
            step(f"effects ({target})", cfg["n_validation"])
            continue
        effects[target] = H.collect_effects(
            tracer, val, target, progress=lambda i, n, _t=target: step(f"effects ({_t})")
            if i else None)
    if not ranks.is_main:
        return None
    rankings = {t: H.rank_features(e) for t, e in effects.items()}
    # clusters of the hesitation-specific ranking
    eff = effects["logit_diff"]
    top = _positive(rankings["logit_diff"])[: cfg["n_cluster"]]
    cl = H.functional_clusters(eff, top)
    truth = [H.feature_mechanism(eff, f) for f in top]
    purity = H.cluster_purity(cl["labels"], truth)
    err_feats = [(f, lab) for f, lab, t in zip(top, cl["labels"], truth) if t == "error"]
    causes = [_feature_cause(eff, f) for f, _ in err_feats]
    cause_purity = H.cluster_purity([lab for _, lab in err_feats], causes) \
        if err_feats else float("nan")
    pc = H.prompt_clusters(eff, top)
    step("clusters")
    # candidates on validation
    means = H.mean_activations(tracer, val, at="all")
    trig_means = H.mean_activations(tracer, val, at="triggers")
    kmax = int(cfg["max_fraction"] * n_feat)
    val_probs = generation_problems("validation", cfg["n_gen_validation"])
    base_rows = H.generation_figures(tracer, val_probs, None, cfg["max_new_tokens"])
    base_gen = _gen_summary(base_rows)
    base_tf = H.wait_probs(tracer, val)
    hybrid_tf = H.wait_probs(_HybridOnly(tracer), val)
    sets: list[tuple[str, list[int], str, float | None]] = []  # ranking, features, mode, KL

    for rname in cfg["rankings"]:
        if rname == "ablation":
            continue
        ranked = _positive(rankings[rname])
        for k in sorted({min(int(k), kmax) for k in cfg["ks"]}):
            sets += [(rname, ranked[:k], mode, None) for mode in cfg["modes"]]
    ablation: dict[str, Any] = {}
    if "ablation" in cfg["rankings"]:
        live = torch.nonzero(means > 0).flatten().tolist()  # active somewhere in val
        single = H.ablation_effects(tracer, val, live, progress=lambda i, n: step(
            "single-feature ablations", 0) if i % 64 == 0 else None)
        step("single-feature ablations", 1)
        ablation = {"single": single, "paths": []}
        fill = cfg["complete_with"] or "logit_diff"
        start = _positive(rankings[fill])[: min(cfg["start_k"], kmax - 1)]
        for kw in [float(w) for w in cfg["kl_weights"]]:
            net = single[:, :-1] - kw * single[:, -1:]   # drop net of the collateral KL
            pool = sorted({int(f) for j in range(net.shape[1])
                           for f in np.argsort(-net[:, j])[: cfg["greedy_pool"]]
                           if single[f, j] > 0 and net[f, j] > 0})
            path = H.greedy_ablation_set(tracer, val, pool, kmax, kl_weight=kw,
                                         progress=lambda i, n, _w=kw: step(
                                             f"forward selection (KL x{_w:g}) {i}/{n}", 0))
            vpath = H.greedy_ablation_set(
                tracer, val, pool, kmax, mechanisms=("verify",), kl_weight=kw,
                stop_at=float(cfg["verify_remaining"]), progress=lambda i, n, _w=kw: step(
                    f"forward selection (verification, KL x{_w:g}) {i}/{n}", 0))
            run = {"kl_weight": kw, "pool": pool, "path": path, "verify_path": vpath}
            ablation["paths"].append(run)
            if start:   # the ranking's top, then measured picks on top of it
                spath = H.greedy_ablation_set(
                    tracer, val, pool, kmax, kl_weight=kw, start=start,
                    progress=lambda i, n, _w=kw: step(
                        f"forward selection from the ranking (KL x{_w:g}) {i}/{n}", 0))
                run["start_path"] = spath
                if spath:
                    sbest = int(np.argmin([p["objective"] for p in spath]))
                    for j in sorted({sbest, len(spath) - 1}):
                        sets.append((f"{fill}+ablation", spath[j]["features"], "zero", kw))
            best = int(np.argmin([p["objective"] for p in path])) + 1 if path else 0
            for k in sorted(({min(int(k), len(path)) for k in cfg["ks"]} | {best}) - {0}):
                sets.append(("ablation", path[k - 1]["features"], "zero", kw))
            if best and cfg["complete_with"]:   # the measured set, filled up to kmax
                sets.append((f"ablation+{cfg['complete_with']}", complete_set(
                    path[best - 1]["features"], rankings[cfg["complete_with"]], kmax),
                    "zero", kw))
            vk = next((i for i, p in enumerate(vpath)
                       if p["remaining"]["verify"] <= cfg["verify_remaining"]), None)
            if vk is not None:
                sets.append(("verification", vpath[vk]["features"], "zero", kw))
        step("forward selection", 2)
    candidates = []
    for rname, feats, mode, kw in sets:
        mask = H.feature_mask(feats, d_sae, mode, means)
        after = H.wait_probs(tracer, val, mask)
        trig_b = np.concatenate([base_tf[m] for m in H.MECHANISMS])
        trig_a = np.concatenate([after[m] for m in H.MECHANISMS])
        rows = H.generation_figures(tracer, val_probs, mask, cfg["max_new_tokens"])
        g = _gen_summary(rows)
        dec = H.accuracy_decomposition(base_rows, rows)
        hd = 1 - g["hesitations"] / base_gen["hesitations"] \
            if base_gen["hesitations"] > 0 else float("nan")
        candidates.append({
            "ranking": rname, "k": len(feats), "mode": mode, "features": feats,
            "kl_weight": kw,
            "p_wait_drop": float(1 - trig_a.mean() / trig_b.mean()),
            "hesitation_rate_drop": hd,
            "accuracy_change": 100 * (g["accuracy"] - base_gen["accuracy"]),
            "collateral_accuracy_change": dec.get("collateral_accuracy_change", 0.0),
            "lost_corrections": dec.get("lost_corrections", 0.0),
            "new_errors": dec.get("new_errors", 0.0),
            "think_tokens_change": g["think_tokens"] / base_gen["think_tokens"] - 1,
            "generation": g})
        step(f"candidate {rname} k={len(feats)} {mode}", 0)
    step("candidates", 2 * len(cfg["rankings"]))
    chosen = choose_candidate(candidates, cfg)
    vcands = [c for c in candidates if c["ranking"] == "verification"]
    if vcands:   # the verification set: the one that costs the least accuracy besides
        v = max(vcands, key=lambda c: (c["collateral_accuracy_change"], -c["k"]))
        ablation["verify_set"] = v["features"]
        ablation["verify_kl_weight"] = v["kl_weight"]
    # evaluation
    feats = chosen["features"]
    mask = H.feature_mask(feats, d_sae, chosen["mode"], means)
    tf = H.ablation_teacher_forced(tracer, ev, mask)
    ev_probs = generation_problems("evaluation", cfg["n_gen_evaluation"])
    gen = H.ablation_generation(tracer, ev_probs, mask, cfg["max_new_tokens"])
    step("evaluation")
    verification: dict[str, Any] = {}
    if ablation.get("verify_set"):
        vfeats = ablation["verify_set"]
        vmask = H.feature_mask(vfeats, d_sae, "zero")
        verification = {"features": vfeats, "k": len(vfeats),
                        "teacher_forced": H.ablation_teacher_forced(tracer, ev, vmask),
                        "generation": H.ablation_generation(tracer, ev_probs, vmask,
                                                            cfg["max_new_tokens"])}
    clamp = H.clamp_figures(tracer, ev, feats, trig_means)
    step("clamp")
    # ranking stability: the chosen features' effects on evaluation traces
    ev_eff = H.collect_effects(tracer, ev[: max(10, cfg["n_evaluation"] // 4)],
                               chosen["ranking"] if chosen["ranking"] in GRAPH_RANKINGS
                               else "logit")
    ev_mean = ev_eff.total.mean(0)
    stability = float(np.mean([float(ev_mean[f]) > 0 for f in feats])) if feats else 0.0
    step("done", steps)
    figures = {
        "cluster_purity": purity, "clusters_k": cl["k"], "cluster_silhouette": cl["silhouette"],
        "error_cause_purity": cause_purity, "prompt_cluster_purity": pc["purity"],
        "p_wait_drop": tf["p_wait_drop"], "hesitation_rate_drop": gen["hesitation_rate_drop"],
        "accuracy_change": gen["accuracy_change"],
        "accuracy_change_ci": gen["accuracy_change_ci"],
        "collateral_accuracy_change": gen.get("collateral_accuracy_change"),
        "collateral_accuracy_change_ci": gen.get("collateral_accuracy_change_ci"),
        "lost_corrections": gen.get("lost_corrections"),
        "new_errors": gen.get("new_errors"),
        "ablated_feature_fraction": len(feats) / n_feat,
        "clamp_induced_rate": clamp["clamp_induced_rate"],
        "chosen": {k: v for k, v in chosen.items() if k != "features"},
        "evaluation_teacher_forced": tf, "evaluation_generation": gen, "clamp": clamp,
        "effects_sign_stable_on_evaluation": stability,
        "counts": {"validation": H.split_counts(val), "evaluation": H.split_counts(ev)},
        "baseline_validation_generation": base_gen,
        "p_wait_validation": {m: float(base_tf[m].mean()) for m in H.MECHANISMS
                              if base_tf[m].size},
        "p_wait_validation_hybrid": {m: float(hybrid_tf[m].mean()) for m in H.MECHANISMS
                                     if hybrid_tf[m].size},
        "verification_set": {k: v for k, v in verification.items() if k != "features"},
    }
    return {"config": cfg, "figures": figures, "effects": effects, "rankings": rankings,
            "clusters": {"features": top, "labels": cl["labels"], "truth": truth},
            "candidates": candidates, "chosen_features": feats, "tracer": tracer,
            "ablation": ablation, "verification_features": verification.get("features", [])}


def complete_set(features: list[int], ranking: list[dict[str, Any]], k: int) -> list[int]:
    """``features`` (a forward-selection set), then the ranking's features with a positive
    mean effect that are not in it yet, in ranking order, up to ``k`` features in all:
    the selection finds the few features whose measured removal matters most, the graph
    ranking adds the many small, specific contributors it cannot afford to test one by
    one."""
    out = list(dict.fromkeys(int(f) for f in features))[:k]
    seen = set(out)
    return out + [f for f in _positive(ranking) if f not in seen][: k - len(out)]


def _positive(ranking: list[dict[str, Any]]) -> list[int]:
    """The features of a ranking with a positive mean effect, in ranking order."""
    return [int(r["feature"]) for r in ranking if r["mean_effect"] > 0]


def choose_candidate(candidates: list[dict[str, Any]], cfg: dict[str, Any]) -> dict[str, Any]:
    """The validation rule that picks the evaluated set. Among the sets that keep the mean
    thinking length within ``max_length_change`` and lose at most ``max_collateral_loss``
    points of collateral accuracy (the issue's tolerance), the largest hesitation-rate
    drop; when none qualifies, the largest drop minus the collateral loss as a share.
    Accuracy lost because a wrong column result stayed uncorrected is the price of
    removing error hesitations in this organism and is reported, not penalised: any set
    that removes them pays it."""
    ok = [c for c in candidates if abs(c["think_tokens_change"]) <= cfg["max_length_change"]]
    pool = ok or candidates
    safe = [c for c in pool if c["collateral_accuracy_change"] >= -cfg["max_collateral_loss"]]
    if safe:
        return max(safe, key=lambda c: (c["hesitation_rate_drop"], -c["k"]))
    return max(pool, key=lambda c: c["hesitation_rate_drop"]
               - max(0.0, -c["collateral_accuracy_change"]) / 100)


class _HybridOnly:
    """The tracer's hybrid without adapters (base MLPs, reasoner attention), for
    :func:`hesitation.wait_probs`: does anything hesitate without the adapters?"""

    def __init__(self, tracer: H.Tracer):
        self.tracer = tracer
        self.tokenizer = tracer.tokenizer

    def token_id(self, t):
        return self.tracer.token_id(t)

    def forward_logits(self, tokens, mask=None, where=None):
        hyb = self.tracer.model.hybrid
        with torch.no_grad():
            return hyb(tokens.to(next(hyb.parameters()).device)).float()


def _feature_cause(eff: H.Effects, f: int) -> str:
    cause = np.array(eff.cause)
    pos = eff.total[:, f].clamp_min(0).numpy()
    share = {c: float(pos[cause == c].sum()) for c in ("carry_slip", "random")}
    return max(share, key=share.get)


def save_study(res: dict[str, Any], store: Store) -> Any:
    """Save a study as a ``hesitation_study`` artifact (effects as tensors)."""
    tr = res["tracer"]
    cfg = {k: v for k, v in res["config"].items()
           if k not in ("store", "adapters_store", "device")}
    cfg["adapters_key"] = tr.key
    tensors = {}
    for t, e in res["effects"].items():
        tensors[f"{t}.total"] = e.total
        tensors[f"{t}.direct"] = e.direct
        tensors[f"{t}.active"] = e.active.to(torch.uint8)
    eff = res["effects"]["logit_diff"]
    abl = res.get("ablation") or {}
    if abl:
        tensors["ablation.single"] = torch.as_tensor(abl["single"], dtype=torch.float32)
    meta = {
        "figures": res["figures"],
        "rankings": {t: r[:200] for t, r in res["rankings"].items()},
        "clusters": res["clusters"],
        "candidates": [{k: v for k, v in c.items()} for c in res["candidates"]],
        "chosen_features": res["chosen_features"],
        "triggers": {"mechanism": eff.mechanism, "cause": eff.cause,
                     "trace_index": eff.trace_index},
        "d_sae": eff.d_sae, "adapters_key": tr.key,
        "ablation": {k: abl[k] for k in ("paths", "verify_set", "verify_kl_weight")
                     if k in abl},
        "verification_features": res.get("verification_features", []),
    }
    models = {"base": tr.base.describe(), "reasoner": tr.reasoner.describe()}
    return store.save(KIND, cfg, tensors, provenance=provenance(models=models), meta=meta,
                      finite=True)


def study_job(spec: dict[str, Any], ctx) -> dict[str, Any]:
    """Job entry (``attribution.study``): run and save; returns the headline figures."""
    cfg = study_config(spec)
    res = run_study(cfg, progress=lambda i, n, msg="": ctx.progress(i, n, msg))
    if res is None:      # a rank other than 0 of a torchrun launch: rank 0 saves
        return {}
    store = Store(cfg["store"]) if cfg["store"] else Store()
    art = save_study(res, store)
    f = res["figures"]
    return {"key": art.key, **{k: f[k] for k in (
        "cluster_purity", "p_wait_drop", "hesitation_rate_drop", "accuracy_change",
        "ablated_feature_fraction", "clamp_induced_rate")}}
