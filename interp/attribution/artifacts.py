"""Attribution graphs as store artifacts (kind ``attribution_graph``).

An artifact is keyed by what determines the graph (its config): the adapters artifact
key, the prompt's token ids, the targets (:func:`target_record`: kind, token ids,
position, and a hash of a direction's vector), the explain mode (``adapter`` or
``reasoner``) and ``max_feature_nodes``. Its provenance holds the pair (ids and weight
hashes, from the adapters artifact) and the code version. Files:

* ``tensors.safetensors``: the node table (``nodes.kind`` int8, ``nodes.layer``,
  ``nodes.pos``, ``nodes.feature``, ``nodes.activation``, ``nodes.prefix_end``),
  ``tokens``, ``target_weights`` and the edge blocks (``edges.<i>.rows`` [b] node ids,
  ``edges.<i>.cols`` [m] source columns, ``edges.<i>.values`` [b, m]: see :mod:`.graph`;
  format 1 stored no columns: its blocks span the first ``m``), exactly as computed. A
  graph whose edge blocks exceed ``limit_bytes`` (64 MB) is stored as its pruned subgraph
  at the default thresholds instead (meta ``stored: "pruned"``): node ids then count
  within the subgraph;
* ``graph.json``: the pruned graph at the default thresholds in circuit-tracer's schema
  (:mod:`.graph_json`), with feature labels as ``clerp`` where
  :mod:`interp.features.labels` has any.

:func:`load_graph` gives back the :class:`~.graph.Graph` (bit-exact for a full graph).
It refuses, with an :class:`~interp.errors.ArtifactError`, a graph whose pair's weights
changed since it was computed, and one that belongs to another adapters artifact or
pair than the caller's.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping, Sequence

import torch

from ..errors import ArtifactError, ArtifactNotFoundError, ConfigError
from ..store import Artifact, Store, config_key, provenance
from .graph import EdgeRows, Graph, Nodes
from .graph_json import to_json
from .prune import DEFAULT_EDGE_THRESHOLD, DEFAULT_NODE_THRESHOLD, Pruned, prune
from .targets import DirectionTarget, LogitDiffTarget, LogitSetTarget, LogitTarget, Target

KIND = "attribution_graph"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)   # 1: edge blocks over a prefix of the columns
FULL_GRAPH_LIMIT = 64 << 20      # bytes of edge values stored in full
JSON_FILE = "graph.json"
_NODE_FIELDS = ("kind", "layer", "pos", "feature", "activation", "prefix_end")


# ---------------------------------------------------------------------- config
def target_record(t: Target, n_pos: int) -> dict[str, Any]:
    """What identifies a target in a config: kind, token ids, the position counted from
    0 (a negative one is resolved against ``n_pos``), and for a direction its layer,
    site and the SHA-256 of its float32 vector."""
    pos = t.pos if t.pos >= 0 else n_pos + t.pos
    if isinstance(t, LogitTarget):
        return {"kind": "logit", "token": int(t.token), "pos": pos}
    if isinstance(t, LogitSetTarget):
        return {"kind": "logit_set", "tokens": [int(i) for i in t.tokens], "pos": pos}
    if isinstance(t, LogitDiffTarget):
        return {"kind": "logit_diff", "token": int(t.token),
                "other": None if t.other is None else int(t.other), "pos": pos}
    if isinstance(t, DirectionTarget):
        v = t.vector.detach().float().contiguous().cpu()
        return {"kind": "direction", "layer": int(t.layer), "site": t.site, "pos": pos,
                "vector_sha256": hashlib.sha256(v.numpy().tobytes()).hexdigest()}
    raise ConfigError(f"not an attribution target: {type(t).__name__}")


def graph_config(adapters_key: str, tokens: Sequence[int], targets: Sequence[Target],
                 explain: str, max_feature_nodes: int | None = None) -> dict[str, Any]:
    """The config (artifact key input) of a graph of ``tokens`` (module docstring)."""
    toks = [int(x) for x in tokens]
    return {"adapters": str(adapters_key), "tokens": toks,
            "targets": [target_record(t, len(toks)) for t in targets],
            "explain": str(explain),
            "max_feature_nodes": None if max_feature_nodes is None else int(max_feature_nodes)}


def graph_key(config: Mapping[str, Any]) -> str:
    return config_key(KIND, dict(config))


# ---------------------------------------------------------------------- tensors
def graph_tensors(graph: Graph) -> dict[str, torch.Tensor]:
    """Every tensor of ``graph`` by name (module docstring)."""
    n = graph.nodes
    out = {f"nodes.{f}": getattr(n, f) for f in _NODE_FIELDS}
    out["tokens"] = graph.tokens
    out["target_weights"] = graph.target_weights
    for i, (rows, cols, vals) in enumerate(graph.edges):
        out[f"edges.{i:05d}.rows"] = rows
        out[f"edges.{i:05d}.cols"] = cols.clone()   # blocks may share one column list
        out[f"edges.{i:05d}.values"] = vals
    return {k: v.detach().contiguous().cpu() for k, v in out.items()}


def graph_from_tensors(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Graph:
    """The inverse of :func:`graph_tensors` (``meta``: the artifact's ``graph`` block)."""
    try:
        nodes = Nodes(**{f: tensors[f"nodes.{f}"] for f in _NODE_FIELDS},
                      n_sources=int(meta["n_sources"]))
        edges = EdgeRows(n_cols=int(meta["n_sources"]))
        for i in range(int(meta["n_blocks"])):
            vals = tensors[f"edges.{i:05d}.values"]
            cols = tensors.get(f"edges.{i:05d}.cols")
            if cols is None:        # format 1: blocks over a prefix of the columns
                cols = torch.arange(vals.shape[1])
            edges.blocks.append((tensors[f"edges.{i:05d}.rows"], cols, vals))
        return Graph(nodes=nodes, edges=edges, tokens=tensors["tokens"],
                     targets=[dict(t) for t in meta["targets"]], n_layers=int(meta["n_layers"]),
                     target_weights=tensors["target_weights"], info=dict(meta.get("info", {})),
                     token_strs=list(meta["token_strs"]) if meta.get("token_strs") is not None
                     else None)
    except KeyError as e:
        raise ArtifactError(f"the graph's tensors or metadata lack {e}") from None


def pruned_subgraph(graph: Graph, pruned: Pruned) -> Graph:
    """The pruned graph as a :class:`Graph` of its own: the kept nodes (renumbered, in
    the same order) and only the kept edges."""
    keep = pruned.nodes
    nodes = graph.nodes.subset(keep)
    new_id = torch.full((len(graph.nodes),), -1, dtype=torch.long)
    new_id[keep] = torch.arange(keep.numel())
    t = new_id[pruned.edge_targets]
    s = new_id[pruned.edge_sources]
    if bool((t < 0).any() | (s < 0).any()):
        raise ConfigError("the pruned edges name nodes that were pruned away")
    edges = EdgeRows(n_cols=nodes.n_sources)
    dt = graph.edges.blocks[0][2].dtype if graph.edges.blocks else torch.float32
    rows = torch.unique(t)
    if rows.numel():
        width = nodes.prefix_end[nodes.pos[rows]]
        for m in torch.unique(width).tolist():
            r = rows[width == m]
            vals = torch.zeros(r.numel(), int(m), dtype=dt)
            local = torch.full((len(nodes),), -1, dtype=torch.long)
            local[r] = torch.arange(r.numel())
            sel = local[t] >= 0
            vals[local[t[sel]], s[sel]] = pruned.edge_weights[sel].to(dt)
            edges.add(r, torch.arange(int(m)), vals)
    tgt = graph.target_ids()
    kept_t = torch.isin(tgt, keep)
    info = {**graph.info, "pruned_from": {"n_nodes": len(graph.nodes),
                                          "node_threshold": pruned.node_threshold,
                                          "edge_threshold": pruned.edge_threshold}}
    return Graph(nodes=nodes, edges=edges, tokens=graph.tokens,
                 targets=[d for d, k in zip(graph.targets, kept_t.tolist()) if k],
                 n_layers=graph.n_layers, target_weights=graph.target_weights[kept_t],
                 info=info, token_strs=graph.token_strs)


# ---------------------------------------------------------------------- labels
def feature_labels(source_key: str, stores: Sequence[Store]) -> dict[tuple[int, int], str]:
    """Feature labels of a feature source from :mod:`interp.features.labels` (merged over
    ``stores``, later ones winning); {} where that module is not installed."""
    try:
        from ..features.labels import load_labels
    except ImportError:
        return {}
    out: dict[tuple[int, int], str] = {}
    for s in stores:
        out.update(load_labels(source_key, s))
    return out


# ---------------------------------------------------------------------- save / load
def _pair(adapters: Artifact) -> dict[str, Any]:
    return dict(adapters.meta.get("pair") or adapters.provenance.get("models") or {})


def _pair_hashes(pair: Mapping[str, Any]) -> dict[str, str | None]:
    return {r: (d or {}).get("weight_hash") for r, d in pair.items() if isinstance(d, dict)}


def save_graph(graph: Graph, store: Store, adapters: Artifact, targets: Sequence[Target], *,
               max_feature_nodes: int | None = None,
               labels: Mapping[tuple[int, int], str] | None = None,
               vocab_size: int | None = None, limit_bytes: int = FULL_GRAPH_LIMIT,
               slug: str | None = None) -> Artifact:
    """Save ``graph`` (computed with ``targets`` on ``adapters``' adapter model) as an
    ``attribution_graph`` artifact (module docstring). ``labels`` default to the
    feature labels saved in ``store``."""
    if len(targets) != int(graph.target_ids().numel()):
        raise ConfigError(f"{len(targets)} targets given for a graph with "
                          f"{int(graph.target_ids().numel())}")
    explain = str(graph.info.get("explain", "adapter"))
    config = graph_config(adapters.key, graph.tokens.tolist(), targets, explain,
                          max_feature_nodes)
    for t, rec in zip(graph.targets, config["targets"]):
        if int(t.get("pos", rec["pos"])) != rec["pos"] or t.get("kind") != rec["kind"]:
            raise ConfigError("the targets given are not the graph's targets")
    key = graph_key(config)
    pair = _pair(adapters)
    if vocab_size is None:
        vocab_size = int((pair.get("reasoner") or {}).get("d_vocab") or 0)
    if labels is None:
        labels = feature_labels(adapters.key, [store])
    pr = prune(graph, DEFAULT_NODE_THRESHOLD, DEFAULT_EDGE_THRESHOLD)
    full = graph.edges.nbytes() <= limit_bytes
    stored = graph if full else pruned_subgraph(graph, pr)
    tokens = graph.token_strs or [str(x) for x in graph.tokens.tolist()]
    doc = to_json(graph, pr, slug=slug or key, prompt_tokens=tokens, prompt=" ".join(tokens),
                  scan=adapters.key, vocab_size=vocab_size, labels=labels,
                  info={"artifact": key, "adapters": adapters.key, "explain": explain})
    meta = {"format_version": FORMAT_VERSION, "adapters_key": adapters.key,
            "stored": "full" if full else "pruned",
            "full_edge_bytes": graph.edges.nbytes(), "limit_bytes": int(limit_bytes),
            "n_nodes": len(graph.nodes), "n_edges_pruned": pr.n_edges(),
            "scores": dict(pr.scores), "vocab_size": vocab_size,
            "graph": {"n_sources": stored.nodes.n_sources, "n_layers": stored.n_layers,
                      "n_blocks": len(stored.edges.blocks), "targets": stored.targets,
                      "info": stored.info, "token_strs": stored.token_strs}}
    return store.save(KIND, config, tensors=graph_tensors(stored),
                      files={JSON_FILE: json.dumps(doc)},
                      provenance=provenance(models=pair, adapters=adapters.key),
                      meta=meta, key=key)


def check_pair(art: Artifact, adapters: Artifact | None = None,
               pair_hashes: Mapping[str, str | None] | None = None) -> None:
    """ArtifactError unless graph ``art`` may be used here: its pair's weights are
    unchanged on this machine (a model that is not here cannot be checked and passes),
    and it belongs to ``adapters`` / to the pair with ``pair_hashes`` when given."""
    from ..models import describe_stale, stale_models

    models = art.provenance.get("models") or {}
    changed = [s for s in stale_models(models) if s["now"] is not None]
    if changed:
        raise ArtifactError(f"graph {art.key} was computed on other weights: "
                            f"{describe_stale(changed)}; compute it again")
    if adapters is not None:
        if art.config.get("adapters") != adapters.key:
            raise ArtifactError(f"graph {art.key} belongs to adapters "
                                f"{art.config.get('adapters')}, not {adapters.key}")
        pair_hashes = {**_pair_hashes(_pair(adapters)), **dict(pair_hashes or {})}
    if pair_hashes:
        mine = _pair_hashes(models)
        for role, h in pair_hashes.items():
            if h and mine.get(role) and mine[role] != h:
                raise ArtifactError(
                    f"graph {art.key} was computed on another {role} model "
                    f"({(models.get(role) or {}).get('id')}, weights {mine[role][:10]}), "
                    f"not this one (weights {h[:10]})")


def load_graph(art: Artifact, adapters: Artifact | None = None,
               pair_hashes: Mapping[str, str | None] | None = None) -> Graph:
    """The graph saved in ``art`` (checked with :func:`check_pair` first); the subgraph
    at the default thresholds where only that was stored (``art.meta["stored"]``)."""
    if art.kind != KIND:
        raise ArtifactError(f"{art.key} is a {art.kind} artifact, not an attribution graph")
    ver = art.meta.get("format_version")
    if ver not in READABLE_VERSIONS:
        raise ArtifactError(f"graph {art.key} has format version {ver}; this code reads "
                            f"{FORMAT_VERSION}")
    check_pair(art, adapters, pair_hashes)
    return graph_from_tensors(art.tensors, art.meta.get("graph") or {})


def load_graph_json(art: Artifact) -> dict[str, Any]:
    """The artifact's ``graph.json`` (pruned at the default thresholds)."""
    return art.read_json(JSON_FILE)


def find_graph(stores: Sequence[Store], key: str) -> Artifact | None:
    """The graph artifact ``key`` from the first store that has it (None: none has)."""
    for s in stores:
        try:
            return s.load(KIND, key)
        except ArtifactNotFoundError:
            continue
    return None
