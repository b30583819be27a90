"""Which adapter features make the reasoner hesitate: graphs, ranking, clusters, tests.

The pieces, on an adapters artifact (its pair and adapter model):

* :class:`Tracer` records and attributes one prompt (default target: the logit of the
  hesitation token at the last position) in the *adapter model* (hybrid backbone + base
  MLPs + adapters; ``explain="adapter"``, error nodes hold only the base MLPs' biases)
  or in the *reasoner* (``explain="reasoner"``: error nodes hold what the adapters miss).
* :func:`trigger_traces` draws the organisms' labelled traces (held-out problems, the
  ``add`` tag, one random column error in half of them): every hesitation trigger with
  its mechanism (``error``: after a wrong column result; ``verify``: after the last
  column of a problem with three or more carries) and the clean decision points. Two
  disjoint splits: ``validation`` (choose things) and ``evaluation`` (report them).
* :func:`trace_effects` attributes a whole trace once, with the ``wait`` logit at every
  trigger as a target, and returns each feature's signed *total effect*
  (:meth:`Graph.total_effect`, summed over the positions where it fires) on each
  trigger: the change of the de-meaned ``wait`` logit if the feature were removed and
  the other active features responded.
* :func:`rank_features` averages effects over triggers; :func:`functional_clusters`
  groups the top features by their effect profiles across triggers (cosine distance,
  average linkage, the number of clusters chosen by silhouette; no labels are used);
  :func:`cluster_purity` scores them against the planted mechanisms.
* :func:`ablation_effects` measures each feature's necessity by ablating it alone, and
  :func:`greedy_ablation_set` grows a set by forward selection on measured ablations.
* :func:`ablation_teacher_forced`, :func:`ablation_generation` and :func:`clamp_figures`
  test necessity (zero- or
  mean-ablating a feature set: teacher-forced P(``wait``) at triggers, generated
  hesitations, thinking length and accuracy) and sufficiency (clamping the set at clean
  decision points, one position at a time: how often ``wait`` becomes the top token).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..adapters.model import adapter_hooks
from ..adapters.module import FeatureMask
from ..errors import ConfigError
from .engine import attribute
from .graph import FEATURE, Graph
from .record import record
from .replacement import adapter_replacement
from .targets import LogitDiffTarget, LogitTarget, Target

SPLIT_SEEDS = {"validation": 101, "evaluation": 202}
MECHANISMS = ("error", "verify")
ProgressFn = Callable[[int, int], None]


# ---------------------------------------------------------------------- the tracer
class Tracer:
    """An adapters artifact's adapter model, ready to record and attribute prompts."""

    def __init__(self, model: Any, base: Any, reasoner: Any, key: str = "",
                 explain: str = "adapter"):
        if explain not in ("adapter", "reasoner"):
            raise ConfigError(f"explain must be 'adapter' or 'reasoner', not {explain!r}")
        self.model, self.base, self.reasoner = model, base, reasoner
        self.key, self.explain = key, explain
        self.tokenizer = reasoner.tokenizer
        self.replacement = adapter_replacement(model.adapters, model.hybrid, key=key,
                                               source={"explain": explain})
        self.n_ctx = int(model.hybrid.cfg.n_ctx)

    @classmethod
    def from_artifact(cls, art: Any, device: str = "cpu", explain: str = "adapter",
                      bundle: Any = None) -> Tracer:
        from ..adapters.evaluate import load_adapter_model

        model, base, reasoner = bundle or load_adapter_model(art, device)
        return cls(model, base, reasoner, key=art.key, explain=explain)

    @property
    def n_features(self) -> int:
        return self.model.adapters.n_layers * self.model.adapters.d_sae

    def token_id(self, token: str | int) -> int:
        from .targets import token_id

        return token_id(self.tokenizer, token)

    def encode(self, text: str) -> list[int]:
        from .tracing import encode_prompt

        return encode_prompt(self.tokenizer, text, self.n_ctx)

    def record(self, tokens: Sequence[int]):
        hooks = adapter_hooks(self.model.adapters) if self.explain == "adapter" else ()
        true_model = self.model.hybrid if self.explain == "adapter" else self.reasoner
        return record(true_model, torch.as_tensor(list(tokens)), self.replacement,
                      fwd_hooks=hooks)

    def graph(self, tokens: Sequence[int], targets: Sequence[Target] | None = None,
              max_feature_nodes: int | None = None, progress=None) -> Graph:
        """The attribution graph of ``tokens`` (default target: the hesitation token set
        at the end, :func:`~interp.attribution.tracing.hesitation_target`)."""
        from .tracing import hesitation_target

        rec = self.record(tokens)
        if targets is None:   # every spelling of "wait" (one token for the organisms)
            targets = [hesitation_target(self.tokenizer)]
        g = attribute(rec, targets, max_feature_nodes=max_feature_nodes,
                      tokenizer=self.tokenizer, progress=progress)
        g.token_strs = self.tokenizer.convert_ids_to_tokens(list(rec.tokens.tolist()))
        g.info["explain"] = self.explain
        return g

    def forward_logits(self, tokens: torch.Tensor, mask: FeatureMask | None = None,
                       where: torch.Tensor | None = None) -> torch.Tensor:
        """Adapter-model logits ``[b, pos, vocab]``; ``mask`` edits features (at the
        positions where ``where [b, pos]`` is True, everywhere when None)."""
        w = None if where is None else (lambda state, act, _w=where: _w.to(act.device))
        hooks = adapter_hooks(self.model.adapters, mask=mask, where=w)
        dev = next(self.model.hybrid.parameters()).device
        with torch.no_grad():
            return self.model.hybrid.run_with_hooks(tokens.to(dev), fwd_hooks=hooks).float()


# ---------------------------------------------------------------------- traces
@dataclass
class Trace:
    """A labelled organism trace: token ids, triggers ``(pos, mechanism, cause)``, clean
    decision points, and the problem."""

    tokens: list[int]
    triggers: list[tuple[int, str, str]]
    clean: list[int]
    problem: Any
    split: str


def trigger_traces(split: str, n_problems: int, p_error: float = 0.5) -> list[Trace]:
    """Labelled traces of ``n_problems`` held-out problems (module docstring). The two
    splits draw from disjoint problems (the evaluation split skips validation ids)."""
    from ..organisms.task import Problem, encode, make_trace, sample_problems

    if split not in SPLIT_SEEDS:
        raise ConfigError(f"split must be one of {tuple(SPLIT_SEEDS)}, not {split!r}")
    if n_problems <= 0:
        raise ConfigError("n_problems must be positive")
    seed = SPLIT_SEEDS[split]
    exclude: set[str] = set()
    if split == "evaluation":
        exclude = {p.id for p in sample_problems(4 * n_problems + 64,
                                                 seed=SPLIT_SEEDS["validation"])}
    rng = np.random.default_rng([seed, 3])
    out: list[Trace] = []
    for p in sample_problems(4 * n_problems + 64, seed=seed):
        if p.id in exclude:
            continue
        prob = Problem(p.a, p.b, easy=False)
        text, lab = make_trace(prob, rng, p_error=p_error, force_long=True)
        trig = [(h["trigger"], h["mechanism"], h["cause"]) for h in lab["hesitations"]]
        out.append(Trace(encode(text), trig, list(lab["clean_positions"]), prob, split))
        if len(out) == n_problems:
            break
    return out


def split_counts(traces: Sequence[Trace]) -> dict[str, int]:
    c = {m: 0 for m in MECHANISMS}
    for t in traces:
        for _, m, _ in t.triggers:
            c[m] += 1
    c["clean"] = sum(len(t.clean) for t in traces)
    return c


# ---------------------------------------------------------------------- effects
def feature_name(f: int, d_sae: int) -> str:
    """``layer:index`` of global feature ``f`` (``l * d_sae + i``)."""
    return f"{int(f) // d_sae}:{int(f) % d_sae}"


@dataclass
class Effects:
    """Per trigger: each feature's total and direct effect on the ``wait`` logit
    (``[n_triggers, n_layers * d_sae]``, feature ``l * d_sae + i``), and labels."""

    total: torch.Tensor
    direct: torch.Tensor
    active: torch.Tensor            # [n_triggers, n_features] bool: fired at or before
    mechanism: list[str]
    cause: list[str]
    trace_index: list[int]
    d_sae: int

    def feature_name(self, f: int) -> str:
        return feature_name(f, self.d_sae)


def trace_effects(tracer: Tracer, trace: Trace, target: str = "logit_diff"
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(total, direct, active)`` of every feature on each trigger of one trace, from one
    graph of the whole trace with a target at every trigger: ``logit_diff`` (default:
    ``wait`` minus the most likely other token, i.e. the continuation it displaces, ``;``
    after a column or ``</think>`` at the end) or ``logit`` (the de-meaned ``wait``
    logit)."""
    d_sae = tracer.model.adapters.d_sae
    nf = tracer.n_features
    if not trace.triggers:
        z = torch.zeros(0, nf)
        return z, z, z.bool()
    wait = tracer.token_id("wait")
    last = max(p for p, _, _ in trace.triggers)
    if target not in ("logit", "logit_diff"):
        raise ConfigError(f"target must be 'logit' or 'logit_diff', not {target!r}")
    make = (lambda p: LogitTarget(wait, p)) if target == "logit" else \
        (lambda p: LogitDiffTarget(wait, None, p))
    g = tracer.graph(trace.tokens[: last + 1], [make(p) for p, _, _ in trace.triggers])
    n = g.nodes
    fids = (n.kind == FEATURE).nonzero().flatten()
    col = n.layer[fids] * d_sae + n.feature[fids]
    pos = n.pos[fids]
    T = len(trace.triggers)
    total = torch.zeros(T, nf, dtype=torch.float64)
    direct = torch.zeros(T, nf, dtype=torch.float64)
    active = torch.zeros(T, nf, dtype=torch.bool)
    effects = g.total_effect(g.target_ids().tolist())[:, fids]
    for k, t in enumerate(g.target_ids().tolist()):
        total[k].index_add_(0, col, effects[k])
        direct[k].index_add_(0, col, g.edges.row(t)[fids].double())
        p = trace.triggers[k][0]
        active[k, col[pos <= p]] = True
    return total.float(), direct.float(), active


def trace_collateral(tracer: Tracer, trace: Trace) -> torch.Tensor:
    """Each feature's mean absolute total effect ``[n_features]`` on the model's own
    next-token choice (the logit of the trace's next token minus the runner-up) at
    every position of the trace that is not a hesitation trigger, from the prompt's
    last token on: what removing the feature would disturb besides hesitation."""
    d_sae = tracer.model.adapters.d_sae
    trig = {p for p, _, _ in trace.triggers}
    start = trace.tokens.index(tracer.token_id("<think>")) if tracer.token_id(
        "<think>") in trace.tokens else 1
    pos = [p for p in range(start, len(trace.tokens) - 1) if p not in trig]
    out = torch.zeros(tracer.n_features, dtype=torch.float64)
    if not pos:
        return out.float()
    targets = [LogitDiffTarget(int(trace.tokens[p + 1]), None, p) for p in pos]
    g = tracer.graph(trace.tokens, targets)
    n = g.nodes
    fids = (n.kind == FEATURE).nonzero().flatten()
    col = n.layer[fids] * d_sae + n.feature[fids]
    eff = g.total_effect(g.target_ids().tolist())[:, fids].abs().mean(0)
    out.index_add_(0, col, eff)
    return out.float()


def collect_effects(tracer: Tracer, traces: Sequence[Trace], target: str = "logit_diff",
                    progress: ProgressFn | None = None) -> Effects:
    tot, dirc, act, mech, cause, idx = [], [], [], [], [], []
    for i, tr in enumerate(traces):
        t, d, a = trace_effects(tracer, tr, target)
        tot.append(t)
        dirc.append(d)
        act.append(a)
        mech += [m for _, m, _ in tr.triggers]
        cause += [c for _, _, c in tr.triggers]
        idx += [i] * len(tr.triggers)
        if progress is not None:
            progress(i + 1, len(traces))
    nf = tracer.n_features
    cat = (lambda xs, dt: torch.cat(xs) if xs else torch.zeros(0, nf, dtype=dt))  # noqa: E731
    return Effects(cat(tot, torch.float32), cat(dirc, torch.float32), cat(act, torch.bool),
                   mech, cause, idx, tracer.model.adapters.d_sae)


def rank_features(eff: Effects, mechanism: str | None = None) -> list[dict[str, Any]]:
    """Features by their mean total effect on ``wait`` over triggers (all, or one
    mechanism), most positive first: ``{"feature", "name", "mean_effect", "mean_direct",
    "share_active", "by_mechanism"}``."""
    sel = torch.ones(len(eff.mechanism), dtype=torch.bool) if mechanism is None else \
        torch.tensor([m == mechanism for m in eff.mechanism])
    if not bool(sel.any()):
        return []
    mean = eff.total[sel].mean(0)
    direct = eff.direct[sel].mean(0)
    share = eff.active[sel].float().mean(0)
    by = {m: eff.total[torch.tensor([x == m for x in eff.mechanism])].mean(0)
          for m in MECHANISMS if m in eff.mechanism}
    order = torch.argsort(mean, descending=True).tolist()
    return [{"feature": f, "name": eff.feature_name(f), "mean_effect": float(mean[f]),
             "mean_direct": float(direct[f]), "share_active": float(share[f]),
             "by_mechanism": {m: float(v[f]) for m, v in by.items()}}
            for f in order if float(share[f]) > 0]


def functional_clusters(eff: Effects, features: Sequence[int], max_k: int = 6
                        ) -> dict[str, Any]:
    """Group ``features`` by their effect profiles over triggers (module docstring):
    ``{"labels": [cluster per feature], "k", "silhouette"}``."""
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.metrics import silhouette_score

    feats = list(features)
    if len(feats) < 3:
        return {"labels": [0] * len(feats), "k": 1, "silhouette": float("nan")}
    X = eff.total[:, feats].T.double().numpy()  # [features, triggers]
    X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    best = None
    for k in range(2, min(max_k, len(feats) - 1) + 1):
        lab = AgglomerativeClustering(n_clusters=k, metric="cosine",
                                      linkage="average").fit_predict(X)
        if len(set(lab)) < 2:
            continue
        s = float(silhouette_score(X, lab, metric="cosine"))
        if best is None or s > best[1]:
            best = (lab, s, k)
    if best is None:
        return {"labels": [0] * len(feats), "k": 1, "silhouette": float("nan")}
    return {"labels": [int(x) for x in best[0]], "k": best[2], "silhouette": best[1]}


def feature_mechanism(eff: Effects, f: int) -> str:
    """Ground-truth label of a feature: the mechanism whose triggers hold most of its
    positive effect."""
    mech = np.array(eff.mechanism)
    pos = eff.total[:, f].clamp_min(0).numpy()
    share = {m: float(pos[mech == m].sum()) for m in MECHANISMS}
    return max(share, key=share.get)


def cluster_purity(labels: Sequence[int], truth: Sequence[str]) -> float:
    """Share of items whose cluster's majority label is their own label."""
    if not labels:
        return float("nan")
    tot = 0
    for c in set(labels):
        members = [t for lab, t in zip(labels, truth) if lab == c]
        tot += max(members.count(m) for m in set(members))
    return tot / len(labels)


def prompt_clusters(eff: Effects, features: Sequence[int], k: int = 2) -> dict[str, Any]:
    """Cluster the *triggers* by which of ``features`` drive them (cosine, average
    linkage) and score the clusters against the triggers' planted mechanisms."""
    from sklearn.cluster import AgglomerativeClustering

    X = eff.total[:, list(features)].clamp_min(0).double().numpy()
    keep = np.linalg.norm(X, axis=1) > 0
    if keep.sum() < k + 1:
        return {"labels": [], "purity": float("nan")}
    Xn = X[keep] / np.linalg.norm(X[keep], axis=1, keepdims=True)
    lab = AgglomerativeClustering(n_clusters=k, metric="cosine",
                                  linkage="average").fit_predict(Xn)
    truth = [m for m, kk in zip(eff.mechanism, keep) if kk]
    return {"labels": [int(x) for x in lab], "purity": cluster_purity(list(lab), truth),
            "n": int(keep.sum())}


# ---------------------------------------------------------------------- interventions
def feature_mask(features: Sequence[int], d_sae: int, mode: str = "zero",
                 values: torch.Tensor | None = None) -> FeatureMask:
    """A :class:`FeatureMask` editing flat feature ids (``layer * d_sae + i``): ``zero``,
    ``mean`` (set to ``values[f]``, e.g. the mean activation) or ``clamp`` (likewise)."""
    if mode not in ("zero", "mean", "clamp"):
        raise ConfigError(f"mode must be zero, mean or clamp, not {mode!r}")
    m = FeatureMask(d_sae)
    by_layer: dict[int, list[int]] = {}
    for f in features:
        by_layer.setdefault(int(f) // d_sae, []).append(int(f))
    for layer, fs in by_layer.items():
        local = [f % d_sae for f in fs]
        if mode == "zero":
            m.zero(layer, local)
        else:
            if values is None:
                raise ConfigError(f"mode {mode!r} needs a value per feature")
            for f, i in zip(fs, local):
                m.clamp(layer, [i], float(values[f]))
    return m


def _batch(traces: Sequence[Trace], pad: int) -> torch.Tensor:
    L = max(len(t.tokens) for t in traces)
    x = torch.full((len(traces), L), pad, dtype=torch.long)
    for i, t in enumerate(traces):
        x[i, : len(t.tokens)] = torch.tensor(t.tokens)
    return x


def wait_probs(tracer: Tracer, traces: Sequence[Trace], mask: FeatureMask | None = None,
               batch_size: int = 64) -> dict[str, np.ndarray]:
    """Teacher-forced P(``wait``) at every trigger, by mechanism, and at clean points."""
    wait = tracer.token_id("wait")
    pad = tracer.tokenizer.pad_token_id or 0
    out: dict[str, list[float]] = {m: [] for m in (*MECHANISMS, "clean")}
    for s in range(0, len(traces), batch_size):
        chunk = traces[s: s + batch_size]
        pw = tracer.forward_logits(_batch(chunk, pad), mask).softmax(-1)[..., wait].cpu()
        for i, t in enumerate(chunk):
            for p, m, _ in t.triggers:
                out[m].append(float(pw[i, p]))
            out["clean"] += [float(pw[i, p]) for p in t.clean]
    return {k: np.array(v) for k, v in out.items()}


def mean_activations(tracer: Tracer, traces: Sequence[Trace], at: str = "all",
                     batch_size: int = 64) -> torch.Tensor:
    """Mean activation of every feature ``[n_features]`` over all positions of the
    traces (``at="all"``) or over their triggers (``at="triggers"``)."""
    pad = tracer.tokenizer.pad_token_id or 0
    d_sae = tracer.model.adapters.d_sae
    L = tracer.model.adapters.n_layers
    tot = torch.zeros(L * d_sae, dtype=torch.float64)
    n = 0
    for s in range(0, len(traces), batch_size):
        chunk = traces[s: s + batch_size]
        x = _batch(chunk, pad)
        rec: dict[int, list[torch.Tensor]] = {}
        hooks = adapter_hooks(tracer.model.adapters, record=rec)
        dev = next(tracer.model.hybrid.parameters()).device
        with torch.no_grad():
            tracer.model.hybrid.run_with_hooks(x.to(dev), fwd_hooks=hooks)
        acts = torch.cat([rec[layer][0] for layer in range(L)], -1).cpu()  # [b, pos, L*d]
        for i, t in enumerate(chunk):
            pos = list(range(len(t.tokens))) if at == "all" else [p for p, _, _ in t.triggers]
            if pos:
                tot += acts[i, pos].double().sum(0)
                n += len(pos)
    return (tot / max(n, 1)).float()


def ablation_teacher_forced(tracer: Tracer, traces: Sequence[Trace], mask: FeatureMask
                            ) -> dict[str, Any]:
    """P(``wait``) at triggers with and without ``mask``: means and relative drops."""
    before = wait_probs(tracer, traces)
    after = wait_probs(tracer, traces, mask)
    out: dict[str, Any] = {}
    trig_b = np.concatenate([before[m] for m in MECHANISMS])
    trig_a = np.concatenate([after[m] for m in MECHANISMS])
    out["p_wait_before"] = float(trig_b.mean()) if trig_b.size else float("nan")
    out["p_wait_after"] = float(trig_a.mean()) if trig_a.size else float("nan")
    out["p_wait_drop"] = 1 - out["p_wait_after"] / out["p_wait_before"] \
        if out["p_wait_before"] > 0 else float("nan")
    for m in MECHANISMS:
        if before[m].size:
            out[f"p_wait_{m}_before"] = float(before[m].mean())
            out[f"p_wait_{m}_after"] = float(after[m].mean())
    out["p_wait_clean_before"] = float(before["clean"].mean()) if before["clean"].size else 0
    out["p_wait_clean_after"] = float(after["clean"].mean()) if after["clean"].size else 0
    out["n_triggers"] = int(trig_b.size)
    return out


class AblationProbe:
    """Teacher-forced figures of zero-ablations on fixed traces, against the unablated
    adapter model: the mean P(``wait``) at each mechanism's triggers, and the
    *collateral*: the mean KL(unablated ‖ ablated) of the next-token distribution at
    every other position that predicts a token of the trace (what else the ablation
    changes)."""

    def __init__(self, tracer: Tracer, traces: Sequence[Trace]):
        self.tracer, self.d_sae = tracer, tracer.model.adapters.d_sae
        self.wait = tracer.token_id("wait")
        self.x = _batch(traces, tracer.tokenizer.pad_token_id or 0)
        self.trig: dict[str, tuple[list[int], list[int]]] = {m: ([], []) for m in MECHANISMS}
        other = torch.zeros(self.x.shape, dtype=torch.bool)
        for i, t in enumerate(traces):
            other[i, : len(t.tokens) - 1] = True
            for p, m, _ in t.triggers:
                self.trig[m][0].append(i)
                self.trig[m][1].append(p)
                other[i, p] = False
        self.other = other
        self.base_lp = self._logprobs(None)
        self.before = self._p_wait(self.base_lp)

    def _logprobs(self, feats: Sequence[int] | None) -> torch.Tensor:
        mask = None if feats is None else feature_mask(list(feats), self.d_sae, "zero")
        return self.tracer.forward_logits(self.x, mask).double().log_softmax(-1).cpu()

    def _p_wait(self, lp: torch.Tensor) -> dict[str, float]:
        return {m: float(lp[b, p, self.wait].exp().mean()) if b else float("nan")
                for m, (b, p) in self.trig.items()}

    def figures(self, feats: Sequence[int]) -> dict[str, float]:
        """``{mechanism: mean P(wait)}`` and ``kl`` with ``feats`` zeroed everywhere."""
        lp = self._logprobs(feats)
        out = self._p_wait(lp)
        kl = (self.base_lp.exp() * (self.base_lp - lp)).sum(-1)[self.other]
        out["kl"] = float(kl.mean())
        return out


def ablation_effects(tracer: Tracer, traces: Sequence[Trace],
                     features: Sequence[int] | None = None,
                     progress: ProgressFn | None = None) -> np.ndarray:
    """Each feature's necessity on its own, measured, ``[n_features, len(MECHANISMS) + 1]``:
    the drop of the mean teacher-forced P(``wait``) at each mechanism's triggers when
    that one feature is zeroed everywhere, then its collateral KL (:class:`AblationProbe`;
    one forward pass over the traces per feature; only ``features`` when given, e.g. those
    active in the traces: the rest stay 0). Unlike the graph's linear effects, this sees
    paths through attention patterns and norms."""
    probe = AblationProbe(tracer, traces)
    out = np.zeros((tracer.n_features, len(MECHANISMS) + 1))
    todo = list(range(tracer.n_features)) if features is None else [int(f) for f in features]
    for i, f in enumerate(todo):
        after = probe.figures([f])
        for j, m in enumerate(MECHANISMS):
            if probe.trig[m][0]:
                out[f, j] = probe.before[m] - after[m]
        out[f, -1] = after["kl"]
        if progress:
            progress(i + 1, len(todo))
    return out


def greedy_ablation_set(tracer: Tracer, traces: Sequence[Trace], pool: Sequence[int],
                        k_max: int, mechanisms: Sequence[str] = MECHANISMS,
                        kl_weight: float = 0.0, stop_at: float = 0.0,
                        progress: ProgressFn | None = None, start: Sequence[int] = ()
                        ) -> list[dict[str, Any]]:
    """Forward selection of a zero-ablation set from ``pool``: at each step the feature
    whose addition gives the lowest objective, the mean over ``mechanisms`` of the
    P(``wait``) left at their triggers (relative to the unablated model) plus
    ``kl_weight`` times the set's collateral KL in nats (:class:`AblationProbe`), so that
    features whose removal disturbs everything else are not bought for their effect on
    ``wait``. Returns the path, one row per step (``features`` so far, the ``remaining``
    relative P(``wait``) per mechanism and on average, ``kl`` and ``objective``); a step
    that cannot lower the objective ends it early, and so does reaching a mean P(``wait``)
    left of ``stop_at`` or less. ``start``: features ablated from the outset (e.g. the top
    of a graph ranking); the path then adds to them, and ``k_max`` counts them too."""
    probe = AblationProbe(tracer, traces)
    mechs = [m for m in mechanisms if probe.trig[m][0] and probe.before[m] > 0]
    if not mechs:
        raise ConfigError("the traces have no triggers of the mechanisms asked for")

    def score(fs: list[int]) -> dict[str, Any]:
        after = probe.figures(fs)
        r = {m: after[m] / probe.before[m] for m in mechs}
        r["mean"] = float(np.mean([r[m] for m in mechs]))
        return {"remaining": r, "kl": after["kl"],
                "objective": r["mean"] + kl_weight * after["kl"]}

    chosen: list[int] = list(dict.fromkeys(int(f) for f in start))[:k_max]
    path: list[dict[str, Any]] = []
    best_so_far = score(chosen)["objective"] if chosen else 1.0
    n_steps = min(k_max - len(chosen), len([f for f in pool if int(f) not in chosen]))
    for step in range(n_steps):
        best = None
        for f in pool:
            if f in chosen:
                continue
            r = score(chosen + [int(f)])
            if best is None or r["objective"] < best[1]["objective"]:
                best = (int(f), r)
        if best is None or best[1]["objective"] >= best_so_far:
            break
        chosen.append(best[0])
        best_so_far = best[1]["objective"]
        path.append({"features": list(chosen), **best[1]})
        if progress:
            progress(step + 1, n_steps)
        if best[1]["remaining"]["mean"] <= stop_at:
            break
    return path


def generation_figures(tracer: Tracer, problems: Sequence[Any],
                       mask: FeatureMask | None = None, max_new_tokens: int = 80,
                       batch_size: int = 128) -> list[dict[str, Any]]:
    """Greedy generations of the adapter model (with ``mask``) on organism problems,
    scored per problem (answer, correctness, thinking length, hesitations)."""
    from ..adapters.evaluate import _words
    from ..generation import generate
    from ..organisms.task import prompt_text, score_completion

    prompts = [prompt_text(p, "think") for p in problems]
    gens = generate(tracer.model.hybrid, prompts, max_new_tokens=max_new_tokens,
                    temperature=0.0, batch_size=batch_size,
                    fwd_hooks=adapter_hooks(tracer.model.adapters, mask=mask))
    tok = tracer.tokenizer
    out = []
    for p, g in zip(problems, gens):
        s = score_completion(p, _words(tok, g.output_ids), "think")
        s["output_ids"] = list(g.output_ids)
        out.append(s)
    return out


def ablation_generation(tracer: Tracer, problems: Sequence[Any], mask: FeatureMask,
                        max_new_tokens: int = 80) -> dict[str, Any]:
    """Hesitation rate, thinking length and accuracy with and without ``mask`` (paired
    per problem; the accuracy change with a bootstrap 95% interval, in points)."""
    from ..length.stats import paired_change

    b = generation_figures(tracer, problems, None, max_new_tokens)
    a = generation_figures(tracer, problems, mask, max_new_tokens)

    def mean(rows, k):
        return float(np.mean([r[k] for r in rows])) if rows else float("nan")

    out = {"n": len(problems)}
    for k in ("hesitations", "hesitations_error", "hesitations_verify", "think_tokens"):
        out[f"{k}_before"], out[f"{k}_after"] = mean(b, k), mean(a, k)
    out["accuracy_before"] = mean(b, "correct")
    out["accuracy_after"] = mean(a, "correct")
    hb = out["hesitations_before"]
    out["hesitation_rate_drop"] = 1 - out["hesitations_after"] / hb if hb > 0 else float("nan")
    ch = paired_change([100.0 * r["correct"] for r in b], [100.0 * r["correct"] for r in a])
    out["accuracy_change"] = ch["mean"]
    out["accuracy_change_ci"] = [ch["ci_low"], ch["ci_high"]]
    out["answer_agreement"] = float(np.mean([x["answer"] == y["answer"] for x, y in zip(b, a)]))
    out["completion_agreement"] = float(np.mean([x["output_ids"] == y["output_ids"]
                                                 for x, y in zip(b, a)]))
    out.update(accuracy_decomposition(b, a))
    return out


def accuracy_decomposition(before: Sequence[dict[str, Any]], after: Sequence[dict[str, Any]]
                           ) -> dict[str, Any]:
    """Where an ablation's accuracy change comes from, per problem (greedy generations
    scored by ``score_completion``, paired by problem).

    An error hesitation exists to catch a wrongly written column result; without it the
    wrong result stays. The problems are split by the *unablated* generation alone (so
    that the split cannot depend on what the ablation did):

    * ``n_caught`` problems where the unablated model wrote a wrong column result
      (``columns_wrong`` > 0; the reasoner then hesitates and corrects it).
      ``lost_corrections``: the share of all problems that are among these, were right
      and are now wrong with a wrong column result left (``columns_uncorrected``).
    * ``n_collateral`` problems where it wrote none. ``collateral_accuracy_change``
      (points, with a bootstrap 95% interval): the paired change over these, i.e.
      everything the ablation did besides leaving errors uncorrected, new arithmetic
      errors included; ``new_errors``: the share of them that now keep a wrong column
      result.

    ``columns_wrong``: wrong column results written per problem (caught or not), before
    and after: the ablation should not change how often the model errs, only whether it
    notices."""
    from ..length.stats import paired_change

    n = len(before)
    if not n:
        return {}
    caught = [i for i, r in enumerate(before) if r.get("columns_wrong", 0)]
    clean = [i for i, r in enumerate(before) if not r.get("columns_wrong", 0)]
    lost = sum(1 for i in caught if before[i]["correct"] and not after[i]["correct"]
               and after[i].get("columns_uncorrected", 0))
    out: dict[str, Any] = {"lost_corrections": lost / n, "n_caught": len(caught),
                           "n_collateral": len(clean)}
    for k in ("columns_wrong", "columns_uncorrected"):
        out[f"{k}_before"] = float(np.mean([r.get(k, 0) for r in before]))
        out[f"{k}_after"] = float(np.mean([r.get(k, 0) for r in after]))
    if clean:
        out["new_errors"] = float(np.mean([bool(after[i].get("columns_uncorrected", 0))
                                           for i in clean]))
        ch = paired_change([100.0 * before[i]["correct"] for i in clean],
                           [100.0 * after[i]["correct"] for i in clean])
        out["collateral_accuracy_change"] = ch["mean"]
        out["collateral_accuracy_change_ci"] = [ch["ci_low"], ch["ci_high"]]
    return out


def clamp_figures(tracer: Tracer, traces: Sequence[Trace], features: Sequence[int],
                  values: torch.Tensor, max_points: int = 400) -> dict[str, Any]:
    """Sufficiency: at each clean decision point (one at a time), clamp ``features`` to
    ``values`` at that position only; the share of points where ``wait`` becomes the
    top token (and the mean P(``wait``) there, before and after)."""
    wait = tracer.token_id("wait")
    d_sae = tracer.model.adapters.d_sae
    mask = feature_mask(features, d_sae, "clamp", values)
    pad = tracer.tokenizer.pad_token_id or 0
    items = [(t, p) for t in traces for p in t.clean][:max_points]
    top, pb, pa = [], [], []
    for s in range(0, len(items), 64):
        chunk = items[s: s + 64]
        x = _batch([t for t, _ in chunk], pad)
        where = torch.zeros(x.shape, dtype=torch.bool)
        for i, (_, p) in enumerate(chunk):
            where[i, p] = True
        base = tracer.forward_logits(x).cpu()
        clamped = tracer.forward_logits(x, mask, where).cpu()
        for i, (_, p) in enumerate(chunk):
            top.append(int(clamped[i, p].argmax()) == wait)
            pb.append(float(base[i, p].softmax(-1)[wait]))
            pa.append(float(clamped[i, p].softmax(-1)[wait]))
    n = len(top)
    return {"clamp_induced_rate": float(np.mean(top)) if n else float("nan"),
            "p_wait_clean_before": float(np.mean(pb)) if n else float("nan"),
            "p_wait_clean_after": float(np.mean(pa)) if n else float("nan"), "n_points": n}
