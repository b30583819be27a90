"""The attribution graph as a plain data object.

Nodes (one table, :class:`Nodes`) are the *sources* in position-major order, then the
targets:

* position by position (0 .. P-1): the token node of that position, then the active
  features of that position (by layer, then feature index), then the error nodes of
  that position (by layer);
* after all sources, one node per target (logit, logit difference or direction).

``kind`` is ``FEATURE`` / ``ERROR`` / ``TOKEN`` / ``TARGET``; ``layer`` is the layer
that writes the node (-1 for tokens; ``n_layers`` for targets), ``pos`` its position,
``feature`` the feature index (-1 otherwise), ``activation`` the feature activation
(the error vector's norm for errors, the target's value for targets).

Edges (:class:`EdgeRows`): the adjacency ``A[target node, source node]`` stored by
rows, only for nodes that have incoming edges (features that were attributed and the
targets). Because sources are position-major, a row whose node sits at position ``p``
can only have edges from the first ``prefix_end[p]`` columns, so rows are stored in
blocks of dense prefixes (about half a dense matrix, exact, no index arrays). Nothing
of size ``N x N`` is ever built: influence is a sequence of products with these blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch

FEATURE, ERROR, TOKEN, TARGET = 0, 1, 2, 3
KIND_NAMES = {FEATURE: "feature", ERROR: "error", TOKEN: "token", TARGET: "target"}


@dataclass
class Nodes:
    kind: torch.Tensor        # [N] int8
    layer: torch.Tensor       # [N] long
    pos: torch.Tensor         # [N] long
    feature: torch.Tensor     # [N] long
    activation: torch.Tensor  # [N] float
    n_sources: int
    prefix_end: torch.Tensor  # [P] number of source columns at positions <= p

    def __len__(self) -> int:
        return int(self.kind.shape[0])

    def ids_of(self, kind: int) -> torch.Tensor:
        return (self.kind == kind).nonzero().flatten()

    def subset(self, keep: torch.Tensor) -> Nodes:
        """The nodes ``keep`` (sorted ids); ``prefix_end`` is recomputed."""
        pos = self.pos[keep]
        src = self.kind[keep] != TARGET
        n_src = int(src.sum())
        P = self.prefix_end.shape[0]
        pe = torch.searchsorted(pos[:n_src].contiguous(), torch.arange(P), right=True)
        return Nodes(self.kind[keep], self.layer[keep], pos, self.feature[keep],
                     self.activation[keep], n_src, pe)


@dataclass
class EdgeRows:
    """Rows of the adjacency in blocks: ``(node ids [b], values [b, m])``, where the
    row's edges come from source columns ``0 .. m-1`` (module docstring)."""

    n_cols: int
    blocks: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def add(self, rows: torch.Tensor, vals: torch.Tensor) -> None:
        self.blocks.append((rows.cpu(), vals.cpu()))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self.blocks)

    def row_ids(self) -> torch.Tensor:
        if not self.blocks:
            return torch.zeros(0, dtype=torch.long)
        return torch.cat([r for r, _ in self.blocks])

    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for _, v in self.blocks)

    def n_edges(self) -> int:
        return sum(int((v != 0).sum()) for _, v in self.blocks)

    def row(self, node: int) -> torch.Tensor:
        """One node's incoming edges over all source columns ``[n_cols]`` (zeros if the
        node has no row)."""
        dt = self.blocks[0][1].dtype if self.blocks else torch.float32
        out = torch.zeros(self.n_cols, dtype=dt)
        for r, v in self.blocks:
            hit = (r == node).nonzero()
            if hit.numel():
                out[: v.shape[1]] = v[int(hit[0, 0])]
                return out
        return out

    def dense(self, n_nodes: int) -> torch.Tensor:
        """``[n_nodes, n_nodes]`` dense adjacency: for tests and small graphs only."""
        dt = self.blocks[0][1].dtype if self.blocks else torch.float32
        a = torch.zeros(n_nodes, n_nodes, dtype=dt)
        for r, v in self.blocks:
            a[r, : v.shape[1]] = v
        return a

    def mask_columns(self, keep: torch.Tensor) -> None:
        """Zero the edges from columns where ``keep [n_cols]`` is False (in place)."""
        for _, v in self.blocks:
            v[:, ~keep[: v.shape[1]]] = 0.0

    def propagate(self, x: torch.Tensor, normalise: bool = True, signed: bool = False
                  ) -> torch.Tensor:
        """``y[c] = sum_r x[r] · Â[r, c]`` with ``Â = |A|`` (row-normalised when
        ``normalise``; ``signed``: ``A`` itself): one step flowing from targets back to
        sources. ``x`` is ``[N]`` or a stack ``[k, N]``."""
        y = torch.zeros_like(x)
        for r, v in self.blocks:
            xr = x[..., r]
            if not bool((xr != 0).any()):
                continue
            a = v.to(x.dtype) if signed else v.abs().to(x.dtype)
            if normalise:
                s = a.sum(1)
                xr = torch.where(s > 0, xr / s.clamp_min(1e-30), torch.zeros_like(xr))
            y[..., : v.shape[1]] += xr @ a
        return y


@dataclass
class Graph:
    """An attribution graph (module docstring) with everything needed to read it."""

    nodes: Nodes
    edges: EdgeRows
    tokens: torch.Tensor                       # [P]
    targets: list[dict[str, Any]]              # describe() records + value, weight
    n_layers: int
    target_weights: torch.Tensor               # [T]
    info: dict[str, Any] = field(default_factory=dict)
    token_strs: list[str] | None = None

    @property
    def n_pos(self) -> int:
        return int(self.tokens.shape[0])

    def target_ids(self) -> torch.Tensor:
        return self.nodes.ids_of(TARGET)

    def node_key(self, i: int) -> tuple[int, int, int, int]:
        """``(kind, layer, pos, feature)`` of node ``i``."""
        n = self.nodes
        return (int(n.kind[i]), int(n.layer[i]), int(n.pos[i]), int(n.feature[i]))

    def find(self, kind: int, layer: int, pos: int, feature: int = -1) -> int:
        """The id of a node, or -1."""
        n = self.nodes
        m = (n.kind == kind) & (n.layer == layer) & (n.pos == pos) & (n.feature == feature)
        hit = m.nonzero()
        return int(hit[0, 0]) if hit.numel() else -1

    def edge(self, target: int, source: int) -> float:
        return float(self.edges.row(target)[source]) if source < self.edges.n_cols else 0.0

    def total_effect(self, target: int | Sequence[int]) -> torch.Tensor:
        """Signed total effect of every node on node ``target`` in the linear model where
        the active features respond to their inputs: ``E[s] = a_s · dT/da_s`` summed
        over all paths (``E[s] = A[T, s] + sum_u A[T, u] / a_u · E_u[s]``). Direct edges are
        the one-step part; ``E[s]`` is what removing ``s`` changes ``T`` by. Several
        targets give a stack ``[k, N]``."""
        n = self.nodes
        many = not isinstance(target, int)
        tgt = list(target) if many else [target]
        x = torch.zeros(len(tgt), len(n), dtype=torch.float64)
        x[torch.arange(len(tgt)), torch.tensor(tgt, dtype=torch.long)] = 1.0
        act = n.activation.double()
        is_feat = n.kind == FEATURE
        scale = torch.where(is_feat & (act != 0), 1.0 / act.where(act != 0, torch.ones_like(act)),
                            torch.zeros_like(act))
        total = torch.zeros_like(x)
        for _ in range(self.n_layers + 3):
            y = self.edges.propagate(x, normalise=False, signed=True)
            if not bool((y != 0).any()):
                break
            total += y
            x = y * scale
        return total if many else total[0]

    def influence(self, max_steps: int | None = None) -> torch.Tensor:
        """Each node's influence on the targets: ``I = sum_{k>=1} w Â^k`` with ``w`` the
        target weights and ``Â`` the row-normalised ``|A|`` (circuit-tracer's measure);
        the graph is acyclic, so the sum ends after at most ``n_layers + 2`` steps."""
        x = torch.zeros(len(self.nodes))
        x[self.target_ids()] = self.target_weights
        total = torch.zeros_like(x)
        steps = max_steps or (self.n_layers + 3)
        for _ in range(steps):
            x = self.edges.propagate(x)
            if not bool((x != 0).any()):
                break
            total += x
        return total
