"""What a graph viewer shows: the visible subgraph, influence maps, model probabilities.

* :func:`graph_view` turns a graph and its pruning into a :class:`GraphView`: two small
  tables (the kept nodes and the kept edges, named by circuit-tracer node ids, see
  :mod:`.graph_json`) plus the token strings and scores. A viewer gets only this, never
  the full adjacency. Each node carries its influence (:meth:`Graph.influence`, on the
  full graph), its cumulative-influence score, and its signed *total effect* on the
  first target (:meth:`Graph.total_effect`: what removing it changes the target by),
  whose sign colours it.
* :func:`influence_grid`: the full graph's influence summed per layer and position
  (rows ``emb``, ``L0`` .. ``L{n-1}``), to compare graphs of the same prompt.
* :func:`model_probabilities`: a token's probability at one position under the base
  model, the hybrid (reasoner with base MLPs), the adapter model and the reasoner.
* :func:`pinned_table`: pinned nodes with their strongest visible edges.
* :func:`graph_document`: the visible graph as a circuit-tracer JSON dict, with the
  pinned nodes as ``qParams.pinnedIds``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import pandas as pd
import torch

from .graph import FEATURE, KIND_NAMES, TARGET, TOKEN, Graph
from .graph_json import node_id, to_json
from .prune import Pruned

MODEL_ORDER = ("base", "hybrid", "adapter model", "reasoner")
NODE_COLUMNS = ("id", "node", "kind", "layer", "pos", "token", "feature", "activation",
                "influence", "cumulative", "effect", "label", "name")


@dataclass
class GraphView:
    """The visible part of a pruned graph (module docstring)."""

    nodes: pd.DataFrame          # NODE_COLUMNS, one row per kept node (graph order)
    edges: pd.DataFrame          # source, target (node ids), weight
    token_strs: list[str]
    n_layers: int
    targets: list[dict[str, Any]]
    scores: dict[str, float] = field(default_factory=dict)
    n_nodes_full: int = 0
    node_threshold: float = 0.0
    edge_threshold: float = 0.0

    def ids(self) -> list[str]:
        return self.nodes["id"].tolist()


def token_strings(graph: Graph) -> list[str]:
    return list(graph.token_strs) if graph.token_strs is not None else \
        [str(t) for t in graph.tokens.tolist()]


def node_name(kind: str, layer: int, pos: int, feature: int, token: str) -> str:
    """A short display name: ``2:145 @30``, ``err L1 @30``, ``"Q" @1``, ``target @30``."""
    if kind == "feature":
        return f"{layer}:{feature} @{pos}"
    if kind == "error":
        return f"err L{layer} @{pos}"
    if kind == "token":
        return f'"{token}" @{pos}'
    return f"target @{pos}"


def all_node_ids(graph: Graph, vocab_size: int = 0) -> list[str]:
    """The ids of every node of the full graph (for checking pinned ids of a link)."""
    return [node_id(graph, i, vocab_size) for i in range(len(graph.nodes))]


def graph_view(graph: Graph, pruned: Pruned, *,
               labels: Mapping[tuple[int, int], str] | None = None, vocab_size: int = 0,
               effect: torch.Tensor | None = None) -> GraphView:
    """The kept nodes and edges of ``pruned`` as tables (module docstring). ``effect``:
    each node's total effect on the first target ``[N]`` (computed when None)."""
    labels = labels or {}
    n = graph.nodes
    toks = token_strings(graph)
    tids = graph.target_ids()
    if effect is None:
        effect = graph.total_effect(int(tids[0])) if tids.numel() else torch.zeros(len(n))
    first_t = int(tids[0]) if tids.numel() else -1
    rows = []
    for i in pruned.nodes.tolist():
        kind, layer, pos, feat = graph.node_key(i)
        kname = KIND_NAMES[kind]
        act = float(n.activation[i])
        eff = act if kind == TARGET else float(effect[i])
        label = labels.get((layer, feat), "") if kind == FEATURE else ""
        if kind == TARGET:
            t = graph.targets[i - first_t]
            label = _target_label(t)
        rows.append((node_id(graph, i, vocab_size), i, kname, layer, pos, toks[pos], feat,
                     act, float(pruned.influence[i]), float(pruned.cumulative[i]), eff,
                     label, node_name(kname, layer, pos, feat, toks[pos])))
    nodes = pd.DataFrame(rows, columns=list(NODE_COLUMNS))
    ids = {i: node_id(graph, i, vocab_size) for i in
           set(pruned.edge_sources.tolist()) | set(pruned.edge_targets.tolist())}
    edges = pd.DataFrame({"source": [ids[s] for s in pruned.edge_sources.tolist()],
                          "target": [ids[t] for t in pruned.edge_targets.tolist()],
                          "weight": pruned.edge_weights.double().tolist()},
                         columns=["source", "target", "weight"])
    return GraphView(nodes=nodes, edges=edges, token_strs=toks, n_layers=graph.n_layers,
                     targets=[dict(t) for t in graph.targets], scores=dict(pruned.scores),
                     n_nodes_full=len(n), node_threshold=pruned.node_threshold,
                     edge_threshold=pruned.edge_threshold)


def _target_label(t: Mapping[str, Any]) -> str:
    if t.get("kind") == "logit":
        return f'logit of "{t.get("token_str")}"'
    if t.get("kind") == "logit_set":
        return "sum of the logits of {" + ", ".join(
            f'"{x}"' for x in t.get("token_strs") or []) + "}"
    if t.get("kind") == "logit_diff":
        other = t.get("other_str")
        return f'"{t.get("token_str")}" minus ' + (f'"{other}"' if other is not None and
                                                   t.get("other") is not None
                                                   else "the most likely other token")
    return f"direction {t.get('label') or ''} at layer {t.get('layer')}"


def influence_grid(graph: Graph, influence: torch.Tensor) -> pd.DataFrame:
    """Influence summed per (row, position): rows ``emb`` (token nodes) and ``L<l>``
    (features and the error node of layer ``l``); columns the positions."""
    n = graph.nodes
    L, P = graph.n_layers, graph.n_pos
    grid = torch.zeros(L + 1, P, dtype=torch.float64)
    src = n.kind != TARGET
    row = torch.where(n.kind == TOKEN, torch.zeros_like(n.layer), n.layer + 1)[src]
    grid.index_put_((row, n.pos[src]), influence[src].double(), accumulate=True)
    return pd.DataFrame(grid.numpy(), index=["emb"] + [f"L{i}" for i in range(L)],
                        columns=list(range(P)))


def model_probabilities(tracer: Any, tokens: Sequence[int], pos: int,
                        token_ids: Sequence[int]) -> pd.DataFrame:
    """``P(token | prefix)`` at ``pos`` for each of ``token_ids`` under the base model, the
    hybrid, the adapter model and the reasoner of ``tracer`` (rows, :data:`MODEL_ORDER`),
    with each model's most likely token there."""
    t = torch.as_tensor(list(tokens), dtype=torch.long)[None]
    pos = pos if pos >= 0 else t.shape[1] + pos

    def run(m):
        dev = next(m.parameters()).device
        with torch.no_grad():
            return m(t.to(dev)).float()

    logits = {"base": run(tracer.base.hooked), "hybrid": run(tracer.model.hybrid),
              "adapter model": tracer.forward_logits(t),
              "reasoner": run(tracer.reasoner.hooked)}
    dec = tracer.tokenizer.convert_ids_to_tokens
    rows = []
    for name in MODEL_ORDER:
        p = logits[name][0, pos].softmax(-1).cpu()
        top = int(p.argmax())
        rows.append({"model": name, **{f"P({dec(int(i))})": float(p[int(i)])
                                       for i in token_ids},
                     "top token": dec(top), "P(top)": float(p[top])})
    return pd.DataFrame(rows)


def pinned_table(view: GraphView, pins: Sequence[str], k: int = 3) -> pd.DataFrame:
    """One row per visible pinned node: what it is, and its ``k`` strongest incoming and
    outgoing visible edges (``name (weight)``)."""
    nodes = view.nodes.set_index("id")
    name = nodes["name"].to_dict()
    e = view.edges.assign(mag=view.edges["weight"].abs())
    rows = []
    for pid in pins:
        if pid not in nodes.index:
            continue
        r = nodes.loc[pid]
        inc = e[e["target"] == pid].nlargest(k, "mag")
        out = e[e["source"] == pid].nlargest(k, "mag")
        rows.append({"node": r["name"], "id": pid, "kind": r["kind"],
                     "layer": int(r["layer"]), "pos": int(r["pos"]), "token": r["token"],
                     "activation": float(r["activation"]), "influence": float(r["influence"]),
                     "effect on target": float(r["effect"]), "label": r["label"],
                     "strongest inputs": "; ".join(f"{name[s]} ({w:+.3g})" for s, w in
                                                   zip(inc["source"], inc["weight"])),
                     "strongest outputs": "; ".join(f"{name[t]} ({w:+.3g})" for t, w in
                                                    zip(out["target"], out["weight"]))})
    return pd.DataFrame(rows, columns=["node", "id", "kind", "layer", "pos", "token",
                                       "activation", "influence", "effect on target",
                                       "label", "strongest inputs", "strongest outputs"])


def graph_document(graph: Graph, pruned: Pruned, *, slug: str, vocab_size: int = 0,
                   labels: Mapping[tuple[int, int], str] | None = None,
                   pinned: Sequence[str] = ()) -> dict[str, Any]:
    """The pruned graph in circuit-tracer's JSON schema (:func:`.graph_json.to_json`),
    the prompt as its tokens, ``pinned`` node ids as ``qParams.pinnedIds``."""
    toks = token_strings(graph)
    return to_json(graph, pruned, slug=slug, prompt_tokens=toks, prompt=" ".join(toks),
                   vocab_size=vocab_size, labels=labels, pinned=list(pinned),
                   info={"explain": graph.info.get("explain"),
                         "adapters": (graph.info.get("replacement") or {}).get("key")})
