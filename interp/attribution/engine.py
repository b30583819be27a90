"""Attribution: edges of the local linear model, by batched transposed passes.

For a batch of target rows (all injected at the same residual site, sorted by
position), one pass down the layers carries each row's gradient ``g`` through the
transposed linear pieces of :mod:`interp.attribution.linear`:

    R_L (logits) -> [sources of layer L-1] -> kept MLP^T -> M_{L-1} (features of layer
    L-1 are read here) -> attention^T -> R_{L-1} -> [sources of layer L-2] -> ...
    -> R_0 [token nodes]

and, at each residual point ``R_{l+1}`` (after layer ``l``), reads off the edges from
every source that writes there: ``edge = a_s · W_dec[s] · g[b, pos_s]`` for features,
``err_l[pos] · g[b, pos]`` for error nodes, ``embed[pos] · g[b, pos]`` for tokens.

Cost controls:

* **factored rows** (:class:`_Factored`): a row injected at position ``p`` starts as
  ``e_p ⊗ v``; an attention transpose maps it to ``e_p ⊗ v + sum_h (A_h^T e_p) ⊗
  (v W_O[h]^T W_V[h]^T)`` and the norms split into a per-position scale and a per-vector
  gain, so after ``k`` attention layers a row is ``C_p @ U_b`` with position
  coefficients ``C_p [n, (1 + H)^k]`` that depend only on the injection position (shared
  by every row injected there: ~9 features per position and layer, and all targets at
  one position) and small per-row vectors ``U_b``. The ``n x n`` work (``A_h^T`` on the
  coefficient columns) is then done once per position instead of once per row and per
  ``d_head``; rows stay factored while the rank is at most ``d_model`` (ranks 1, 5, 25,
  125 for 4 heads and d_model 128), then continue as plain dense passes. A kept MLP (a
  different map per position) makes rows dense at once;
* edges are read off factored rows one injection position at a time (the rows are never
  expanded batch-wide unless the next step is dense), features and errors of a layer in
  one product per position; each batch is truncated to its last row position
  (causality); a row only stores the columns it can reach (tokens, and the features and
  errors of lower layers, at positions up to its own);
* patterns are recomputed from the recorded queries and keys in causal blocks of query
  rows on a fixed grid, and kept for the duration of :func:`attribute` when every
  layer's fits in ``PATTERN_CACHE_BYTES``.

With more active features than ``max_feature_nodes``, rows are computed for the
features with the most influence on the targets, in rounds (influence re-estimated
from the rows computed so far, in one sweep over them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch

from ..errors import ConfigError
from .graph import ERROR, FEATURE, TARGET, TOKEN, EdgeRows, Graph, Nodes
from .linear import PATTERN_CACHE_BYTES
from .record import Recording
from .targets import (
    DirectionTarget,
    LogitDiffTarget,
    LogitSetTarget,
    LogitTarget,
    Target,
    describe,
)


@dataclass
class _Inject:
    """Rows to attribute: all start at one residual point, ``("R", j)`` = ``R_j`` or
    ``("M", l)`` = ``resid_mid`` of layer ``l``."""

    site: tuple[str, int]
    pos: torch.Tensor        # [B]
    vec: torch.Tensor        # [B, d]
    nodes: torch.Tensor      # [B] node ids of the rows


class _Factored:
    """The gradients of a batch of rows, ``g_b [n, d]``, held as position coefficients
    shared by every row injected at the same position times per-row vectors:

        ``g_b = C[:, grp[b]] @ U[b]``   (``C [n, G, r]``, ``U [B, r, d]``)

    with ``G`` groups (distinct injection positions ``gpos``, ascending; the rows of a
    group are contiguous). A row starts as ``e_p ⊗ v`` (``r = 1``); an attention layer's
    transpose maps position coefficients by ``A_h^T`` (shared by the group) and vectors
    by ``W_O[h]^T W_V[h]^T`` (per row), and the norms split the same way (a
    per-position scale and a per-vector gain), so ``r`` grows to ``r (1 + H)``. The
    ``n x n`` work is then done once per group instead of once per row and per
    ``d_head``. ``dense()`` materialises ``g [n, B, d]`` (positions first); a state
    built from a dense ``g`` has ``factored == False``."""

    def __init__(self, C=None, U=None, gpos=None, bounds=None, g=None):
        self.C, self.U, self.gpos, self.bounds, self.g = C, U, gpos, bounds, g

    @property
    def factored(self) -> bool:
        return self.C is not None

    @property
    def r(self) -> int:
        return int(self.C.shape[2])

    @classmethod
    def start(cls, pos: torch.Tensor, vec: torch.Tensor, n: int) -> _Factored:
        gpos, counts = torch.unique_consecutive(pos, return_counts=True)
        G = gpos.numel()
        C = torch.zeros(n, G, 1, dtype=vec.dtype, device=vec.device)
        C[gpos, torch.arange(G, device=vec.device), 0] = 1.0
        bounds = [0] + torch.cumsum(counts, 0).tolist()
        return cls(C=C, U=vec[:, None, :], gpos=gpos, bounds=bounds)

    @classmethod
    def of_dense(cls, g: torch.Tensor) -> _Factored:
        return cls(g=g)

    def groups(self) -> Iterator[tuple[int, int, int, torch.Tensor]]:
        """Per group: ``(rows b0:b1, p1, g [p1, b1 - b0, d])``, its rows' gradients at
        positions ``0 .. p1 - 1`` (zero beyond: ``p1`` is one past the group's position)."""
        C, U = self.C, self.U
        r, d = C.shape[2], U.shape[2]
        for k in range(C.shape[1]):
            p1 = int(self.gpos[k]) + 1
            b0, b1 = self.bounds[k], self.bounds[k + 1]
            u = U[b0:b1].transpose(0, 1).reshape(r, (b1 - b0) * d)
            yield b0, b1, p1, (C[:p1, k] @ u).view(p1, b1 - b0, d)

    def dense(self) -> torch.Tensor:
        if self.g is None:
            n, B, d = self.C.shape[0], self.U.shape[0], self.U.shape[2]
            g = torch.zeros(n, B, d, dtype=self.U.dtype, device=self.U.device)
            for b0, b1, p1, gk in self.groups():
                g[:p1, b0:b1] = gk
            self.g = g
        return self.g

    def heads_T(self, lr) -> tuple[torch.Tensor, torch.Tensor]:
        """The attention transpose of layer ``lr`` up to the value vectors: position
        coefficients ``ln1^T``-scaled ``A_h^T C`` ``[H, n, G, r]`` and the per-row vectors
        after the post-norm ``[B, r, d]`` (to be mapped by ``W_O[h]^T W_V[h]^T``)."""
        C, U = self.C, self.U
        n, G, r = C.shape
        attn = lr.attn
        H = attn.n_heads
        Ca, Ua = C, U
        if lr.ln1_post is not None:
            Ca = C * lr.ln1_post.inv_scale(n)[:, None, None]
            Ua = lr.ln1_post.apply_T_vec(U)
        if r == 1:  # one-hot columns: A_h^T e_p is row p of the pattern
            rows = attn.pattern_rows(self.gpos)  # [H, G, n]
            scale = Ca[self.gpos, torch.arange(G, device=C.device), 0]  # [G]
            Ch = (rows * scale[None, :, None]).transpose(1, 2)  # [H, n, G]
        else:
            last = self.gpos.repeat_interleave(r)
            Ch = attn.pattern_T(Ca.reshape(n, G * r), last)  # [H, n, G r]
        Ch = Ch * lr.ln1.inv_scale(n)[None, :, None]
        return Ch.reshape(H, n, G, r), Ua

    def attention_T(self, lr) -> _Factored:
        """``g + ln1^T attn^T ln1_post^T g`` (one layer's attention transpose)."""
        n, G, r = self.C.shape
        B, _, d = self.U.shape
        H = lr.attn.n_heads
        Ch, Ua = self.heads_T(lr)
        Uh = lr.ln1.apply_T_vec(lr.attn.value_T(Ua.reshape(B * r, d)))  # [H, B r, d]
        C2 = torch.cat([self.C[None], Ch]).permute(1, 2, 0, 3)
        U2 = torch.cat([self.U[None], Uh.reshape(H, B, r, d)]).transpose(0, 1)
        return _Factored(C=C2.reshape(n, G, (1 + H) * r), U=U2.reshape(B, (1 + H) * r, d),
                         gpos=self.gpos, bounds=self.bounds)


class _Columns:
    """Source-column bookkeeping of one recording (see :mod:`.graph` for the order)."""

    def __init__(self, rec: Recording):
        P, L = rec.n_pos, rec.n_layers
        fpos = torch.cat([lr.feat_pos.cpu() for lr in rec.layers])
        flay = torch.cat([torch.full((lr.feat_pos.numel(),), li, dtype=torch.long)
                          for li, lr in enumerate(rec.layers)])
        fidx = torch.cat([lr.feat_idx.cpu() for lr in rec.layers])
        fact = torch.cat([lr.feat_act.cpu().float() for lr in rec.layers])
        F = fpos.numel()
        width = int(fidx.max()) + 1 if F else 1
        order = torch.argsort((fpos * L + flay) * width + fidx, stable=True)
        nf = torch.bincount(fpos, minlength=P)
        per_pos = 1 + nf + L                     # token, features, errors
        self.prefix_end = torch.cumsum(per_pos, 0)
        start = self.prefix_end - per_pos
        self.n = n = int(self.prefix_end[-1]) if P else 0
        self.tok_col = start.clone()
        sp = fpos[order]
        first = torch.cumsum(nf, 0) - nf         # first sorted index of each position
        col_sorted = start[sp] + 1 + (torch.arange(F) - first[sp])
        fcol = torch.empty(F, dtype=torch.long)
        fcol[order] = col_sorted                 # column of each feature, record order
        self.err_col = (start + 1 + nf)[None, :] + torch.arange(L)[:, None]  # [L, P]
        self.kind = torch.full((n,), TOKEN, dtype=torch.int8)
        self.layer = torch.full((n,), -1, dtype=torch.long)
        self.pos = torch.repeat_interleave(torch.arange(P), per_pos)
        self.feat = torch.full((n,), -1, dtype=torch.long)
        self.act = torch.zeros(n, dtype=torch.float32)
        self.kind[fcol] = FEATURE
        self.layer[fcol] = flay
        self.feat[fcol] = fidx
        self.act[fcol] = fact
        ecol = self.err_col.flatten()
        self.kind[ecol] = ERROR
        self.layer[ecol] = torch.arange(L).repeat_interleave(P)
        self.act[ecol] = torch.stack([lr.error.norm(dim=-1).cpu().float()
                                      for lr in rec.layers]).flatten()
        bounds = [0] + torch.cumsum(torch.tensor([lr.feat_pos.numel() for lr in rec.layers]),
                                    0).tolist()
        self.feat_cols = [fcol[bounds[li]: bounds[li + 1]] for li in range(L)]


def top_logit_targets(rec: Recording, pos: int = -1, k: int = 10, cum_prob: float = 0.95
                      ) -> list[LogitTarget]:
    """The most likely next tokens at ``pos`` covering ``cum_prob`` (at most ``k``)."""
    probs = rec.logits(pos).softmax(-1)
    p, idx = probs.sort(descending=True)
    n = int((p.cumsum(0) < cum_prob).sum()) + 1
    return [LogitTarget(int(i), pos) for i in idx[: max(1, min(k, n))]]


def _target_injection(rec: Recording, t: Target) -> tuple[tuple[str, int], int, torch.Tensor,
                                                         float]:
    """``(site, pos, vector, value)`` of a target."""
    P, L = rec.n_pos, rec.n_layers
    pos = t.pos if t.pos >= 0 else P + t.pos
    if not 0 <= pos < P:
        raise ConfigError(f"target position {t.pos} is outside the prompt (0..{P - 1})")
    if isinstance(t, DirectionTarget):
        if not 0 <= t.layer < L:
            raise ConfigError(f"direction layer {t.layer} is outside 0..{L - 1}")
        if t.vector.shape[0] != rec.d_model:
            raise ConfigError(f"direction has {t.vector.shape[0]} entries; d_model is "
                              f"{rec.d_model}")
        site = {"resid_pre": ("R", t.layer), "resid_mid": ("M", t.layer),
                "resid_post": ("R", t.layer + 1)}[t.site]
        return site, pos, t.vector.to(rec.embed.dtype).to(rec.embed.device), float("nan")
    V = rec.W_U.shape[1]
    toks = t.tokens if isinstance(t, LogitSetTarget) else (t.token,)
    bad = [i for i in toks if not 0 <= i < V]
    if bad:
        raise ConfigError(f"target token id {bad[0]} is outside the vocabulary (0..{V - 1})")
    tok = toks[0]
    logits = rec.logits(pos)
    if isinstance(t, LogitSetTarget):  # sum over the set of the de-meaned logits
        idx = torch.tensor(toks, device=rec.W_U.device)
        u = rec.W_U[:, idx].sum(1) - len(toks) * rec.W_U.mean(1)
        value = float(logits[list(toks)].sum() - len(toks) * logits.mean())
    elif isinstance(t, LogitTarget):
        u = rec.W_U[:, tok] - rec.W_U.mean(1)
        value = float(logits[tok] - logits.mean())
    else:
        other = t.other
        if other is None:
            order = logits.argsort(descending=True).tolist()
            other = next(i for i in order if i != tok)
        u = rec.W_U[:, tok] - rec.W_U[:, other]
        value = float(logits[tok] - logits[other])
    vec = rec.ln_final.rows(torch.tensor([pos])).apply_T(u[None].to(rec.embed.device))[0]
    return ("R", L), pos, vec, value


class Attributor:
    """Computes rows of one recording's adjacency (used by :func:`attribute`)."""

    factored = True  # False: plain dense passes only (the tests' second implementation)

    def __init__(self, rec: Recording, batch_size: int = 256,
                 memory_bytes: int = 3 << 30):
        self.rec = rec
        self.cols = _Columns(rec)
        self.batch_size = batch_size
        self.memory_bytes = memory_bytes
        # factored rows while their rank stays at most d_model (then dense)
        self.max_rank = rec.d_model
        # what each layer writes at each position, padded: writes[l] [P, k_max + 1, d] =
        # the active features' activation x decoder row, then the error vector. The
        # sources of layer l in (pos, slot) order: src_q/src_j index that tensor and
        # src_col is their column; src_upto[l][p]: how many sit at positions <= p.
        self.writes, self.src_q, self.src_j, src_col, self.src_upto = [], [], [], [], []
        dev, P, d = rec.embed.device, rec.n_pos, rec.d_model
        for li, lr in enumerate(rec.layers):
            W_dec = rec.replacement.layers[li].W_dec.to(dev, rec.embed.dtype)
            counts = torch.bincount(lr.feat_pos, minlength=P)
            kmax = int(counts.max()) if lr.feat_pos.numel() else 0
            start = torch.cumsum(counts, 0) - counts
            j = torch.arange(lr.feat_pos.numel(), device=dev) - start[lr.feat_pos]
            pad = torch.zeros(P, kmax + 1, d, dtype=rec.embed.dtype, device=dev)
            pad[lr.feat_pos, j] = lr.feat_act[:, None] * W_dec[lr.feat_idx]
            pad[:, kmax] = lr.error
            self.writes.append(pad)
            q = torch.cat([lr.feat_pos, torch.arange(P, device=dev)])
            jj = torch.cat([j, torch.full((P,), kmax, device=dev)])
            order = torch.argsort(q * (kmax + 1) + jj)
            self.src_q.append(q[order])
            self.src_j.append(jj[order])
            src_col.append(torch.cat([self.cols.feat_cols[li], self.cols.err_col[li]])[
                order.cpu()])
            self.src_upto.append((torch.cumsum(torch.bincount(q.cpu(), minlength=P), 0)
                                  ).tolist())
        # the tokens' value vectors at layer 0 [H, P, dh] (see _tokens_last)
        lr0 = rec.layers[0]
        self.tok_values = lr0.attn.values(lr0.ln1.apply_vec(rec.embed))
        # the sources a row injected at R_j or M_j can reach: tokens and the features and
        # errors of layers < j. Per reach j: their column ids (sorted), how many sit at
        # positions <= p, and each source kind's local index into that list.
        cols, L = self.cols, rec.n_layers
        self.reach_cols, self.reach_end, self.tok_loc, self.src_loc = [], [], [], []
        for j in range(L + 1):
            ids = (cols.layer < j).nonzero().flatten()
            local = torch.full((cols.n,), -1, dtype=torch.long)
            local[ids] = torch.arange(ids.numel())
            self.reach_cols.append(ids)
            self.reach_end.append(torch.searchsorted(cols.pos[ids], torch.arange(P),
                                                     right=True).tolist())
            self.tok_loc.append(local[cols.tok_col].to(dev))
            self.src_loc.append([local[src_col[li]].to(dev) for li in range(j)])

    # ------------------------------------------------------------------ injections
    def feature_injections(self, layer: int, local: torch.Tensor, nodes: torch.Tensor
                           ) -> _Inject:
        """Rows for features of ``layer`` (indices ``local`` into the layer's record)."""
        rec = self.rec
        lr = rec.layers[layer]
        pos = lr.feat_pos[local]
        W_enc = rec.replacement.layers[layer].W_enc.to(rec.embed.device, rec.embed.dtype)
        enc = W_enc[:, lr.feat_idx[local]].T  # [B, d]
        norm = rec.site_norm(layer)
        vec = enc if norm is None else norm.rows(pos).apply_T(enc)
        return _Inject(("M", layer), pos.cpu(), vec, nodes)

    # ------------------------------------------------------------------ one pass
    def _batch_size(self, n_pos: int) -> int:
        d = self.rec.d_model
        per_row = n_pos * d * 4 * 8  # g, attention buffers and temporaries
        return max(1, min(self.batch_size, self.memory_bytes // max(1, per_row)))

    def run(self, inj: _Inject) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Edge rows for ``inj`` as blocks ``(node ids, values [b, m])``."""
        order = torch.argsort(inj.pos, stable=True)
        out = []
        i = 0
        while i < len(order):
            n_pos = int(inj.pos[order[min(len(order) - 1, i + self.batch_size - 1)]]) + 1
            b = self._batch_size(n_pos)
            sel = order[i: i + b]
            out.append(self._run(inj.site, inj.pos[sel], inj.vec[sel.to(inj.vec.device)],
                                 inj.nodes[sel]))
            i += b
        return out

    def _run(self, site, pos, vec, nodes) -> tuple[torch.Tensor, torch.Tensor]:
        """Edge rows of one batch (rows sorted by position)."""
        rec = self.rec
        dev, dt = rec.embed.device, rec.embed.dtype
        B = pos.shape[0]
        n = int(pos.max()) + 1
        kind, j = site
        m = self.reach_end[j][n - 1]
        out = torch.zeros(B, m, dtype=dt, device=dev)
        st = _Factored.start(pos.to(dev), vec, n)
        if kind == "R":
            layer, at_post = j - 1, True
            self._consume(out, self._ready(st, layer, at_post), j, j)
        else:
            layer, at_post = j, False
        while layer >= 0:
            lr = rec.layers[layer]
            if at_post and lr.mlp is not None:  # per-position maps: rows go dense
                g = st.dense()
                h = g if lr.ln2_post is None else lr.ln2_post.truncate(n).apply_T(g)
                st = _Factored.of_dense(g + lr.ln2.truncate(n).apply_T(lr.mlp.apply_T(h)))
            if layer == 0 and self.factored:  # only token edges remain
                self._tokens_last(out, st, lr, j)
                break
            if self._stays_factored(st, lr):
                st = st.attention_T(lr)
            else:
                g = st.dense()
                ga = g if lr.ln1_post is None else lr.ln1_post.truncate(n).apply_T(g)
                st = _Factored.of_dense(g + lr.ln1.truncate(n).apply_T(lr.attn.apply_T(ga)))
            layer -= 1
            at_post = True
            self._consume(out, self._ready(st, layer, at_post), layer + 1, j)
        return nodes, self.reach_cols[j][:m], out

    def _tokens_last(self, out: torch.Tensor, st: _Factored, lr, reach: int) -> None:
        """The token edges at ``R_0`` through layer 0's attention, without mapping the
        rows back through ``W_V``: ``embed[q] · g[q] + (1 / s_q) sum_h tv_h[q] · gv_h[q]``
        with ``gv_h = A_h^T (ln1_post^T g) W_O[h]^T`` and the tokens' value vectors
        ``tv_h = apply_vec(embed) W_V[h]`` (``apply_vec``: the adjoint of ln1's
        per-vector transpose)."""
        rec, attn = self.rec, lr.attn
        embed, tv = rec.embed, self.tok_values
        loc = self.tok_loc[reach]
        if st.g is not None:
            g = st.g
            n, B, _ = g.shape
            ga = g if lr.ln1_post is None else lr.ln1_post.truncate(n).apply_T(g)
            e = torch.einsum("nbd,nd->bn", g, embed[:n])
            inv = lr.ln1.inv_scale(n)
            for h, gv in enumerate(attn.apply_T_heads(ga)):
                e += torch.einsum("nbe,ne->bn", gv.view(n, B, -1), tv[h, :n]) * inv
            out[:, loc[:n]] = e
            return
        Ch, Ua = st.heads_T(lr)                      # [H, n, G, r], [B, r, d]
        H, dh = attn.n_heads, attn.W_O.shape[1]
        B, r, d = Ua.shape
        z = (Ua.reshape(B * r, d) @ attn.W_O.reshape(H * dh, d).T).view(B, r, H, dh)
        C, U = st.C, st.U
        for k in range(C.shape[1]):
            p1 = int(st.gpos[k]) + 1
            b0, b1 = st.bounds[k], st.bounds[k + 1]
            res = torch.einsum("brd,qd,qr->bq", U[b0:b1], embed[:p1], C[:p1, k])
            head = torch.einsum("brhe,hqe,hqr->bq", z[b0:b1], tv[:, :p1], Ch[:, :p1, k])
            out[b0:b1, loc[:p1]] = res + head

    def _stays_factored(self, st: _Factored, lr) -> bool:
        """Whether the attention transpose of layer ``lr`` keeps ``st`` factored."""
        return self.factored and st.factored and st.r * (1 + lr.attn.n_heads) <= self.max_rank

    def _ready(self, st: _Factored, layer: int, at_post: bool) -> _Factored:
        """``st``, expanded now when the next layer's step needs it dense anyway (so it is
        expanded once, for both the edges here and that step)."""
        if st.factored and layer >= 0:
            lr = self.rec.layers[layer]
            if (at_post and lr.mlp is not None) or not self._stays_factored(st, lr):
                st.dense()
        return st

    def _consume(self, out: torch.Tensor, st: _Factored, j: int, reach: int) -> None:
        """Edges from the sources that write at ``R_j`` (features and errors of layer
        ``j - 1``; tokens when ``j == 0``) into ``out``, whose columns are the sources of
        ``reach``. Factored rows are expanded one group at a time (never the whole
        batch)."""
        if st.g is None:
            for b0, b1, p1, gk in st.groups():
                self._consume_g(out[b0:b1], gk, j, p1, reach)
        else:
            self._consume_g(out, st.g, j, st.g.shape[0], reach)

    def _consume_g(self, out: torch.Tensor, g: torch.Tensor, j: int, n: int, reach: int
                   ) -> None:
        """:meth:`_consume` for gradients ``g [n, B, d]`` at positions ``0 .. n - 1``."""
        rec = self.rec
        if j == 0:
            out[:, self.tok_loc[reach][:n]] = torch.einsum("nbd,nd->bn", g, rec.embed[:n])
            return
        li = j - 1
        c = self.src_upto[li][n - 1]
        # one product per position: [n, B, d] x [n, d, k_max + 1] -> [n, B, k_max + 1]
        e = torch.bmm(g, self.writes[li][:n].transpose(1, 2))
        out[:, self.src_loc[reach][li][:c]] = e[self.src_q[li][:c], :, self.src_j[li][:c]].T

def attribute(rec: Recording, targets: Sequence[Target] | None = None, *,
              max_feature_nodes: int | None = None, batch_size: int = 256,
              weights: Sequence[float] | None = None, tokenizer: Any = None,
              progress: Callable[[int, int, str], None] | None = None,
              memory_bytes: int = 3 << 30) -> Graph:
    """The attribution graph of a recorded prompt (module docstring).

    ``targets``: default the top logits at the last position (probability-weighted).
    ``weights``: how much each target counts in influence (default: the targets'
    probabilities for plain logit targets, normalised; equal weights otherwise).
    ``max_feature_nodes``: rows are computed for at most this many features (the most
    influential ones); None: all active features. Attention patterns are recomputed once
    per layer and kept during the call when all of them fit in ``PATTERN_CACHE_BYTES``.
    """
    attns = [lr.attn for lr in rec.layers]
    keep_patterns = sum(a.grid_bytes() for a in attns) <= PATTERN_CACHE_BYTES
    for a in attns:
        a.cache = {} if keep_patterns else None
    try:
        return _attribute(rec, targets, max_feature_nodes, batch_size, weights, tokenizer,
                          progress, memory_bytes)
    finally:
        for a in attns:
            a.cache = None


def _attribute(rec, targets, max_feature_nodes, batch_size, weights, tokenizer, progress,
               memory_bytes) -> Graph:
    targets = list(targets) if targets else top_logit_targets(rec)
    at = Attributor(rec, batch_size=batch_size, memory_bytes=memory_bytes)
    cols = at.cols
    T = len(targets)
    tgt_ids = torch.arange(cols.n, cols.n + T)
    injs, values = [], []
    for t in targets:
        site, pos, vec, value = _target_injection(rec, t)
        injs.append((site, pos, vec))
        values.append(value)
    if weights is None:
        if all(isinstance(t, LogitTarget) for t in targets):
            pr = torch.stack([rec.logits(t.pos).softmax(-1)[t.token] for t in targets])
            w = pr / pr.sum()
        else:
            w = torch.full((T,), 1.0 / T)
    else:
        if len(weights) != T:
            raise ConfigError(f"{len(weights)} weights for {T} targets")
        w = torch.tensor([float(x) for x in weights])
        if not torch.isfinite(w).all() or (w < 0).any() or float(w.sum()) <= 0:
            raise ConfigError("target weights must be finite, non-negative, not all zero")
        w = w / w.sum()
    edges = EdgeRows(n_cols=cols.n)
    n_total_feat = sum(int(lr.feat_pos.numel()) for lr in rec.layers)
    cap = n_total_feat if max_feature_nodes is None else min(max_feature_nodes, n_total_feat)
    if cap < 0:
        raise ConfigError("max_feature_nodes must be >= 0")
    done = 0

    def tick(msg):
        if progress is not None:
            progress(done, cap, msg)

    # target rows, grouped by site
    for site in sorted({s for s, _, _ in injs}):
        idx = [i for i, (s, _, _) in enumerate(injs) if s == site]
        inj = _Inject(site, torch.tensor([injs[i][1] for i in idx]),
                      torch.stack([injs[i][2] for i in idx]), tgt_ids[idx])
        for blk in at.run(inj):
            edges.add(*blk)
    tick("targets")
    n_nodes = cols.n + T
    computed = torch.zeros(n_nodes, dtype=torch.bool)
    feat_node = torch.cat([c for c in cols.feat_cols]) if cols.feat_cols else \
        torch.zeros(0, dtype=torch.long)

    def run_features(node_ids: torch.Tensor):
        nonlocal done
        lay = cols.layer[node_ids]
        for li in range(rec.n_layers):
            ids = node_ids[lay == li]
            if ids.numel() == 0:
                continue
            local = torch.searchsorted(cols.feat_cols[li], ids)
            inj = at.feature_injections(li, local.to(rec.layers[li].feat_pos.device), ids)
            for blk in at.run(inj):
                edges.add(*blk)
                done += int(blk[0].numel())
                tick(f"features of layer {li}")
        computed[node_ids] = True

    if cap >= n_total_feat:
        run_features(feat_node)
    elif cap > 0:
        rounds = max(1, min(8, math.ceil(cap / max(1, batch_size))))
        per_round = math.ceil(cap / rounds)
        level = torch.cat([cols.layer, torch.full((T,), rec.n_layers)])
        while int(computed[feat_node].sum()) < cap:
            x = torch.zeros(n_nodes)
            x[tgt_ids] = w.float()
            infl = edges.sweep(x, level)
            cand = feat_node[~computed[feat_node]]
            score = infl[cand]
            take = min(per_round, cap - int(computed[feat_node].sum()))
            chosen = cand[torch.argsort(score, descending=True, stable=True)[:take]]
            run_features(torch.sort(chosen).values)
    in_graph = torch.ones(n_nodes, dtype=torch.bool)
    in_graph[feat_node] = computed[feat_node]
    acts = torch.cat([cols.act, torch.tensor(values, dtype=torch.float32)])
    nodes = Nodes(kind=torch.cat([cols.kind, torch.full((T,), TARGET, dtype=torch.int8)]),
                  layer=torch.cat([cols.layer, torch.full((T,), rec.n_layers)]),
                  pos=torch.cat([cols.pos, torch.tensor([p for _, p, _ in injs])]),
                  feature=torch.cat([cols.feat, torch.full((T,), -1)]),
                  activation=acts, n_sources=cols.n, prefix_end=cols.prefix_end)
    tdesc = []
    for t, (_, p, _), v, wi in zip(targets, injs, values, w.tolist()):
        if isinstance(t, LogitDiffTarget) and t.other is None:  # record the resolved one
            lg = rec.logits(p)
            t = LogitDiffTarget(t.token, next(i for i in lg.argsort(descending=True).tolist()
                                              if i != t.token), t.pos, t.label)
        d = describe(t, tokenizer)
        d.update(pos=p, value=v, weight=wi)
        if isinstance(t, LogitSetTarget):
            d["prob"] = float(rec.logits(p).softmax(-1)[list(t.tokens)].sum())
        elif not isinstance(t, DirectionTarget):
            d["prob"] = float(rec.logits(p).softmax(-1)[t.token])
        tdesc.append(d)
    graph = Graph(nodes=nodes, edges=edges, tokens=rec.tokens, targets=tdesc,
                  n_layers=rec.n_layers, target_weights=w,
                  info={"n_active_features": n_total_feat, "n_feature_rows": int(
                      computed[feat_node].sum()), "max_feature_nodes": max_feature_nodes,
                      "replacement": dict(rec.replacement.source),
                      "skip_bos": rec.meta.get("skip_bos")})
    if in_graph.sum() < n_nodes:
        graph = _drop_nodes(graph, in_graph)
    return graph


def _drop_nodes(g: Graph, keep: torch.Tensor) -> Graph:
    """The graph without the nodes where ``keep`` is False (unattributed features);
    the edge blocks are cut in place, one at a time."""
    ids = keep.nonzero().flatten()
    new_id = torch.full((len(g.nodes),), -1, dtype=torch.long)
    new_id[ids] = torch.arange(ids.numel())
    nodes = g.nodes.subset(ids)
    edges = g.edges
    edges.select_columns(keep[: g.nodes.n_sources], new_id, nodes.n_sources)
    edges.blocks = [(new_id[r], c, v) for r, c, v in edges.blocks]
    return Graph(nodes=nodes, edges=edges, tokens=g.tokens, targets=g.targets,
                 n_layers=g.n_layers, target_weights=g.target_weights, info=g.info,
                 token_strs=g.token_strs)

