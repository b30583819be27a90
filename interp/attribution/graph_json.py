"""Graph files in circuit-tracer's JSON schema (version 1), which its local viewer and
Neuronpedia open.

Layout: ``metadata`` (slug, scan, transcoder_list, prompt_tokens, prompt,
node_threshold, schema_version, and an ``info`` block with this project's provenance),
``qParams`` (pinnedIds, supernodes, linkType, clickedId, sg_pos: the view state),
``nodes`` and ``links`` (``{source, target, weight}`` by node id). Node ids follow
circuit-tracer: features ``"{layer}_{feature}_{pos}"``, tokens ``"E_{token id}_{pos}"``,
targets ``"{n_layers + 1}_{token id}_{pos}"`` (direction targets get a virtual id
``vocab_size + i``); error nodes are ``"err_{layer}_{pos}"`` (circuit-tracer's
``"0_{layer}_{pos}"`` can equal a layer-0 feature's id, and links name nodes by id).
``clerp`` carries a feature's label where one is known. Only a pruned graph is written:
the page and the file get the visible subgraph, never the full adjacency.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .graph import ERROR, FEATURE, TARGET, TOKEN, Graph
from .prune import Pruned

SCHEMA_VERSION = 1
FEATURE_TYPES = {FEATURE: "cross layer transcoder", ERROR: "mlp reconstruction error",
                 TOKEN: "embedding", TARGET: "logit"}


def cantor(x: int, y: int) -> int:
    """The Cantor pairing of two non-negative integers (circuit-tracer's feature key)."""
    return (x + y) * (x + y + 1) // 2 + y


def node_id(graph: Graph, i: int, vocab_size: int) -> str:
    kind, layer, pos, feat = graph.node_key(i)
    if kind == FEATURE:
        return f"{layer}_{feat}_{pos}"
    if kind == ERROR:
        return f"err_{layer}_{pos}"
    if kind == TOKEN:
        return f"E_{int(graph.tokens[pos])}_{pos}"
    return f"{graph.n_layers + 1}_{target_vocab_idx(graph, i, vocab_size)}_{pos}"


def target_vocab_idx(graph: Graph, i: int, vocab_size: int) -> int:
    k = i - int(graph.target_ids()[0])
    t = graph.targets[k]
    return int(t["token"]) if t["kind"] in ("logit", "logit_diff") else vocab_size + k


def _target_clerp(t: Mapping[str, Any]) -> str:
    p = t.get("prob")
    ptxt = f" (p={p:.3f})" if isinstance(p, float) else ""
    if t["kind"] == "logit":
        return f'Output "{t.get("token_str")}"{ptxt}'
    if t["kind"] == "logit_diff":
        return f'Output "{t.get("token_str")}" minus "{t.get("other_str")}"{ptxt}'
    if t["kind"] == "logit_set":
        return f'Output sum of {{{", ".join(t.get("token_strs") or [])}}}{ptxt}'
    return f"Direction {t.get('label') or ''} at layer {t.get('layer')} {t.get('site')}"


def to_json(graph: Graph, pruned: Pruned, *, slug: str, prompt_tokens: Sequence[str],
            prompt: str = "", scan: str = "", vocab_size: int = 0,
            labels: Mapping[tuple[int, int], str] | None = None,
            pinned: Sequence[str] = (), supernodes: Sequence[Sequence[str]] = (),
            info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The pruned graph as a circuit-tracer graph dict (module docstring)."""
    labels = labels or {}
    nodes_out = []
    first_target = int(graph.target_ids()[0]) if graph.target_ids().numel() else -1
    for i in pruned.nodes.tolist():
        kind, layer, pos, feat = graph.node_key(i)
        nid = node_id(graph, i, vocab_size)
        base = {"node_id": nid, "layer": str(layer), "ctx_idx": pos,
                "feature_type": FEATURE_TYPES[kind], "token_prob": 0.0,
                "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0,
                "clerp": "", "influence": float(pruned.cumulative[i]), "activation": None}
        if kind == FEATURE:
            base.update(feature=cantor(layer, feat), jsNodeId=f"{layer}_{feat}-0",
                        activation=float(graph.nodes.activation[i]),
                        clerp=labels.get((layer, feat), ""))
        elif kind == ERROR:
            base.update(feature=-1, jsNodeId=f"{layer}_{pos}-0")
        elif kind == TOKEN:
            tok = int(graph.tokens[pos])
            base.update(feature=pos, layer="E", jsNodeId=f"E_{tok}-{pos}")
        else:
            t = graph.targets[i - first_target]
            v = target_vocab_idx(graph, i, vocab_size)
            base.update(feature=v, layer=str(graph.n_layers + 1), jsNodeId=f"L_{v}-{pos}",
                        token_prob=float(t.get("prob") or 0.0),
                        is_target_logit=i == first_target, clerp=_target_clerp(t),
                        influence=None)
        nodes_out.append(base)
    links = [{"source": node_id(graph, s, vocab_size), "target": node_id(graph, t, vocab_size),
              "weight": float(w)}
             for t, s, w in zip(pruned.edge_targets.tolist(), pruned.edge_sources.tolist(),
                                pruned.edge_weights.tolist())]
    meta = {"slug": slug, "scan": scan, "transcoder_list": [],
            "prompt_tokens": list(prompt_tokens), "prompt": prompt,
            "node_threshold": float(pruned.node_threshold), "schema_version": SCHEMA_VERSION,
            "info": {"generator": {"name": "interp", "version": "attribution-1"},
                     "edge_threshold": float(pruned.edge_threshold),
                     "scores": dict(pruned.scores), "targets": list(graph.targets),
                     **dict(info or {})}}
    return {"metadata": meta,
            "qParams": {"pinnedIds": list(pinned), "supernodes": [list(s) for s in supernodes],
                        "linkType": "both", "clickedId": "", "sg_pos": ""},
            "nodes": nodes_out, "links": links}


REQUIRED = {
    "metadata": {"slug": str, "scan": str, "transcoder_list": list, "prompt_tokens": list,
                 "prompt": str},
    "qParams": {"pinnedIds": list, "supernodes": list, "linkType": str, "clickedId": str,
                "sg_pos": str},
    "node": {"node_id": str, "feature": int, "layer": str, "ctx_idx": int,
             "feature_type": str, "jsNodeId": str},
    "link": {"source": str, "target": str, "weight": float},
}


def validate(doc: Mapping[str, Any]) -> list[str]:
    """Problems with a graph dict against the schema's required fields and types
    (empty list: valid); also checks that every link names existing nodes."""
    errs: list[str] = []
    for part in ("metadata", "qParams"):
        d = doc.get(part)
        if not isinstance(d, dict):
            errs.append(f"{part} missing")
            continue
        for k, ty in REQUIRED[part].items():
            if not isinstance(d.get(k), ty):
                errs.append(f"{part}.{k} is not {ty.__name__}")
    ids = set()
    for i, n in enumerate(doc.get("nodes", [])):
        for k, ty in REQUIRED["node"].items():
            v = n.get(k)
            if not isinstance(v, ty) or isinstance(v, bool):
                errs.append(f"nodes[{i}].{k} is not {ty.__name__}")
        for k in ("influence", "activation"):
            if n.get(k) is not None and not isinstance(n.get(k), (int, float)):
                errs.append(f"nodes[{i}].{k} is not a number")
        ids.add(n.get("node_id"))
    for i, lk in enumerate(doc.get("links", [])):
        for k, ty in REQUIRED["link"].items():
            if not isinstance(lk.get(k), ty):
                errs.append(f"links[{i}].{k} is not {ty.__name__}")
        if lk.get("source") not in ids or lk.get("target") not in ids:
            errs.append(f"links[{i}] names a node that is not in the file")
    if len(ids) != len(doc.get("nodes", [])):
        errs.append("node ids are not unique")
    return errs
