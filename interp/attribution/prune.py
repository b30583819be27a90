"""Pruning by cumulative influence, and the graph's quality scores.

Definitions (circuit-tracer's, so figures compare):

* ``Â = |A|`` row-normalised; node influence ``I = sum_{k>=1} w Â^k`` with ``w`` the
  target weights (:meth:`Graph.influence`);
* **nodes**: keep the fewest nodes whose influence reaches ``node_threshold`` of the
  total (ties kept), plus every token and target node; ``max_nodes`` optionally caps
  the features and errors kept (most influential first);
* **edges**: on the node-pruned graph, edge score ``Â'[t, s] · (I'[t] + w[t])`` (``I'``
  recomputed on the pruned graph); keep the fewest edges reaching ``edge_threshold``
  of the total score;
* then repeatedly drop feature and error nodes without a kept outgoing edge, and
  features without a kept incoming edge;
* **replacement score**: share of the tokens' and errors' influence that comes from the
  tokens (``I_tokens / (I_tokens + I_errors)``); **completeness score**: influence-weighted
  mean over nodes of the share of their normalised inputs that is not from errors.

Only the node-pruned graph is ever held as a dense matrix, and only its rows that have
edges (kept features and targets) by all kept nodes; the full graph stays in its
blocks. ``max_nodes`` keeps that matrix small on long prompts (a ConfigError says so
when it would pass ``DENSE_ELEMENT_LIMIT``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ConfigError
from .graph import ERROR, FEATURE, TARGET, TOKEN, Graph

DEFAULT_NODE_THRESHOLD = 0.8
DEFAULT_EDGE_THRESHOLD = 0.98
DENSE_ELEMENT_LIMIT = 50_000_000  # rows x columns of the node-pruned matrix


def find_threshold(scores: torch.Tensor, fraction: float) -> float:
    """The smallest score ``s`` such that scores ``>= s`` hold ``fraction`` of the total."""
    v = scores.flatten()
    v = v[v > 0]
    if v.numel() == 0:
        return float("inf")
    v = torch.sort(v, descending=True).values
    cum = torch.cumsum(v.double(), 0) / v.double().sum()
    i = int(torch.searchsorted(cum, torch.tensor(fraction, dtype=torch.float64)))
    return float(v[min(i, v.numel() - 1)])


def cumulative_scores(influence: torch.Tensor) -> torch.Tensor:
    """Per node, the share of total influence held by nodes at least as influential."""
    order = torch.argsort(influence, descending=True, stable=True)
    cum = torch.cumsum(influence[order].double(), 0)
    total = float(cum[-1]) if cum.numel() else 0.0
    out = torch.zeros_like(influence, dtype=torch.float64)
    out[order] = cum / total if total > 0 else cum
    return out.float()


def _normalise(a: torch.Tensor) -> torch.Tensor:
    a = a.abs()
    return a / a.sum(1, keepdim=True).clamp_min(1e-30)


def _dense_influence(norm: torch.Tensor, row_k: torch.Tensor, w: torch.Tensor, steps: int
                     ) -> torch.Tensor:
    """``sum_{k>=1} w Â^k`` for ``Â`` given by its rows ``norm [R, K]`` (the rows of nodes
    ``row_k [R]``; other rows are zero)."""
    x, total = w, torch.zeros_like(w)
    for _ in range(steps):
        x = x[row_k] @ norm
        if not bool((x != 0).any()):
            break
        total = total + x
    return total


@dataclass
class Pruned:
    """A pruned view of a graph: ``nodes`` are graph node ids (sorted), ``edges`` are
    ``(target id, source id, weight)`` triples as three tensors."""

    nodes: torch.Tensor
    edge_targets: torch.Tensor
    edge_sources: torch.Tensor
    edge_weights: torch.Tensor
    influence: torch.Tensor          # [N] node influence on the full graph
    cumulative: torch.Tensor         # [N] cumulative-influence score per node
    node_threshold: float
    edge_threshold: float
    scores: dict[str, float] = field(default_factory=dict)

    def n_edges(self) -> int:
        return int(self.edge_weights.numel())


def graph_scores(graph: Graph, influence: torch.Tensor | None = None) -> dict[str, float]:
    """Replacement and completeness scores of the full graph (module docstring)."""
    nodes = graph.nodes
    infl = graph.influence() if influence is None else influence
    tok = float(infl[nodes.kind == TOKEN].sum())
    err = float(infl[nodes.kind == ERROR].sum())
    is_err = (nodes.kind[: nodes.n_sources] == ERROR)
    w = torch.zeros(len(nodes))
    w[graph.target_ids()] = graph.target_weights
    out_infl = infl + w
    den = float(out_infl.sum())
    non_err = torch.ones(len(nodes))
    for r, c, v in graph.edges:
        a = v.abs().float()
        s = a.sum(1)
        e = a[:, is_err[c]].sum(1)
        non_err[r] = torch.where(s > 0, 1 - e / s.clamp_min(1e-30), torch.ones_like(s))
    num = float((non_err * out_infl).sum())
    return {"replacement": tok / (tok + err) if tok + err > 0 else float("nan"),
            "completeness": num / den if den > 0 else float("nan")}


def prune(graph: Graph, node_threshold: float = DEFAULT_NODE_THRESHOLD,
          edge_threshold: float = DEFAULT_EDGE_THRESHOLD, max_nodes: int | None = None
          ) -> Pruned:
    """Prune ``graph`` (module docstring)."""
    for name, v in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"{name} must be between 0 and 1, not {v}")
    if max_nodes is not None and max_nodes < 0:
        raise ConfigError("max_nodes must be >= 0")
    nodes = graph.nodes
    N = len(nodes)
    infl = graph.influence()
    always = (nodes.kind == TOKEN) | (nodes.kind == TARGET)
    keep = (infl >= find_threshold(infl, node_threshold)) & (infl > 0)
    if max_nodes is not None:
        cand = (keep & ~always).nonzero().flatten()
        if cand.numel() > max_nodes:
            top = cand[torch.argsort(infl[cand], descending=True, stable=True)[:max_nodes]]
            keep[cand] = False
            keep[top] = True
    keep |= always
    ids = keep.nonzero().flatten()
    K = ids.numel()
    local = torch.full((N,), -1, dtype=torch.long)
    local[ids] = torch.arange(K)
    # the node-pruned matrix, by rows: only kept nodes with edge rows have any
    has_row = torch.zeros(N, dtype=torch.bool)
    rows_all = graph.edges.row_ids()
    has_row[rows_all] = True
    row_ids = ids[has_row[ids]]
    R = row_ids.numel()
    if R * K > DENSE_ELEMENT_LIMIT:
        raise ConfigError(
            f"{K} nodes ({R} with edge rows) survive a node threshold of {node_threshold}; "
            f"lower it or set max_nodes (at most {DENSE_ELEMENT_LIMIT:,} rows x nodes are "
            "pruned at once)")
    row_k = local[row_ids]              # [R] node-pruned index of each row
    row_of = torch.full((N,), -1, dtype=torch.long)
    row_of[row_ids] = torch.arange(R)
    sub = torch.zeros(R, K)
    for r, c, v in graph.edges:
        rk = row_of[r]
        sel = rk >= 0
        if not bool(sel.any()):
            continue
        ck = local[c]
        csel = ck >= 0
        sub[rk[sel][:, None], ck[csel][None, :]] = v[sel][:, csel].float()
    w = torch.zeros(K)
    tloc = local[graph.target_ids()]
    w[tloc] = graph.target_weights.float()
    steps = graph.n_layers + 3
    norm = _normalise(sub)
    infl_p = _dense_influence(norm, row_k, w, steps)
    scores = norm * (infl_p + w)[row_k][:, None]
    emask = (scores >= find_threshold(scores, edge_threshold)) & (sub != 0)
    del scores
    kind = nodes.kind[ids]
    is_feat = kind == FEATURE
    is_src_prunable = (kind == FEATURE) | (kind == ERROR)
    nmask = torch.ones(K, dtype=torch.bool)
    while True:
        old = nmask.clone()
        emask &= nmask[row_k][:, None] & nmask[None, :]
        has_in = torch.zeros(K, dtype=torch.bool)
        has_in[row_k] = emask.any(1)
        nmask &= ~is_src_prunable | emask.any(0)
        nmask &= ~is_feat | has_in
        if bool((nmask == old).all()):
            break
    emask &= nmask[row_k][:, None] & nmask[None, :]
    t, s = emask.nonzero(as_tuple=True)
    # pruned-graph scores, on the kept nodes
    kept = sub * emask
    kept_norm = _normalise(kept)
    infl_k = _dense_influence(kept_norm, row_k, w, steps)
    is_err = kind == ERROR
    tok = float(infl_k[kind == TOKEN].sum())
    err = float(infl_k[is_err].sum())
    out_k = infl_k + w
    non_err = torch.ones(K)
    has_in = kept.abs().sum(1) > 0
    non_err[row_k] = torch.where(has_in, 1 - kept_norm[:, is_err].sum(1),
                                 torch.ones(R))
    full = graph_scores(graph, infl)
    sc: dict[str, Any] = {"replacement": full["replacement"],
                          "completeness": full["completeness"],
                          "replacement_pruned": tok / (tok + err) if tok + err > 0 else
                          float("nan"),
                          "completeness_pruned": float((non_err * out_k).sum() / out_k.sum())}
    return Pruned(nodes=ids[nmask], edge_targets=row_ids[t], edge_sources=ids[s],
                  edge_weights=sub[t, s], influence=infl, cumulative=cumulative_scores(infl),
                  node_threshold=node_threshold, edge_threshold=edge_threshold, scores=sc)
