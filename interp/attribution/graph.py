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
targets). A row of a node at position ``p`` written by layer ``l`` (targets: ``l =
n_layers``) can only have edges from sources at positions ``<= p`` written below ``l``
(tokens, and features and errors of layers ``< l``): rows are stored in blocks of
dense values over exactly those columns (one sorted column list per block, shared by
the blocks of one layer), about a quarter of a dense matrix, exact. Nothing of size
``N x N`` is ever built: influence and total effects are one sweep over the blocks,
highest layer first (edges only go from lower to higher layers, so every row's input
is complete when its block is read).
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


SWEEP_CHUNK_ELEMENTS = 1 << 24  # values read per product in a sweep (bounds temporaries)


@dataclass
class EdgeRows:
    """Rows of the adjacency in blocks ``(node ids [b], source columns [k], values [b,
    k])``: the edge into node ``rows[i]`` from source ``cols[j]`` is ``vals[i, j]``; all
    other entries of those rows are zero (module docstring)."""

    n_cols: int
    blocks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(
        default_factory=list)

    def add(self, rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor) -> None:
        self.blocks.append((rows.cpu(), cols.cpu(), vals.cpu()))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        return iter(self.blocks)

    def row_ids(self) -> torch.Tensor:
        if not self.blocks:
            return torch.zeros(0, dtype=torch.long)
        return torch.cat([r for r, _, _ in self.blocks])

    def nbytes(self) -> int:
        """Bytes of the stored values (column lists are shared and not counted)."""
        return sum(v.numel() * v.element_size() for _, _, v in self.blocks)

    def n_edges(self) -> int:
        return sum(int((v != 0).sum()) for _, _, v in self.blocks)

    def _dtype(self) -> torch.dtype:
        return self.blocks[0][2].dtype if self.blocks else torch.float32

    def row(self, node: int) -> torch.Tensor:
        """One node's incoming edges over all source columns ``[n_cols]`` (zeros if the
        node has no row)."""
        out = torch.zeros(self.n_cols, dtype=self._dtype())
        for r, c, v in self.blocks:
            hit = (r == node).nonzero()
            if hit.numel():
                out[c] = v[int(hit[0, 0])]
                return out
        return out

    def dense(self, n_nodes: int) -> torch.Tensor:
        """``[n_nodes, n_nodes]`` dense adjacency: for tests and small graphs only."""
        a = torch.zeros(n_nodes, n_nodes, dtype=self._dtype())
        for r, c, v in self.blocks:
            a[r[:, None], c[None, :]] = v
        return a

    def select_columns(self, keep: torch.Tensor, new_id: torch.Tensor, n_cols: int) -> None:
        """Keep only the edges from columns where ``keep [n_cols]`` is True and renumber
        those columns by ``new_id`` (in place, one block at a time)."""
        for i, (r, c, v) in enumerate(self.blocks):
            k = keep[c]
            if bool(k.all()):
                self.blocks[i] = (r, new_id[c], v)
            else:
                self.blocks[i] = (r, new_id[c[k]], v[:, k].contiguous())
            del v
        self.n_cols = n_cols

    def sweep(self, x0: torch.Tensor, level: torch.Tensor, normalise: bool = True,
              signed: bool = False, scale: torch.Tensor | None = None) -> torch.Tensor:
        """Everything that flows from ``x0`` back to the sources, over paths of any
        length: ``z[c] = sum_r m[r] · Â[r, c]`` with ``m = x0 + z`` (``x0 + z · scale``
        with ``scale [N]``), ``Â = |A|`` (``signed``: ``A``), row-normalised when
        ``normalise``. ``x0`` is ``[N]`` or a stack ``[k, N]``; ``level [N]``: a level
        per node such that every edge goes from a lower to a higher level (the layer).

        Rows are read highest level first, so each row's ``z`` is complete when it is
        used: one pass over the blocks instead of one per path length."""
        z = torch.zeros_like(x0)
        items = []
        for bi, (r, _, _) in enumerate(self.blocks):
            lv = level[r]
            for val in torch.unique(lv).tolist():
                sel = lv == val
                items.append((val, bi, None if bool(sel.all()) else sel.nonzero().flatten()))
        items.sort(key=lambda t: (-t[0], t[1]))
        for _, bi, sel in items:
            r, c, v = self.blocks[bi]
            if sel is not None:
                r, v = r[sel], v[sel]
            m = x0[..., r] + (z[..., r] if scale is None else z[..., r] * scale[r])
            nz = (m != 0) if m.dim() == 1 else (m != 0).any(0)
            if not bool(nz.any()):
                continue
            step = max(1, SWEEP_CHUNK_ELEMENTS // max(1, v.shape[1]))
            for i in range(0, v.shape[0], step):
                a = v[i: i + step].to(x0.dtype)
                if not signed:
                    a = a.abs()
                mi = m[..., i: i + step]
                if normalise:
                    s = a.sum(1)
                    mi = torch.where(s > 0, mi / s.clamp_min(1e-30), torch.zeros_like(mi))
                z.index_add_(z.dim() - 1, c, mi @ a)
        return z


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
        total = self.edges.sweep(x, n.layer, normalise=False, signed=True, scale=scale)
        return total if many else total[0]

    def influence(self) -> torch.Tensor:
        """Each node's influence on the targets: ``I = sum_{k>=1} w Â^k`` with ``w`` the
        target weights and ``Â`` the row-normalised ``|A|`` (circuit-tracer's measure),
        in one sweep (:meth:`EdgeRows.sweep`)."""
        x = torch.zeros(len(self.nodes))
        x[self.target_ids()] = self.target_weights.float()
        return self.edges.sweep(x, self.nodes.layer)
