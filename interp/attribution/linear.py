"""The local linear model an attribution graph is exact for.

Around one forward pass of one prompt, every piece of a block becomes linear:

* **norms**: the scale (the RMS, or the standard deviation for LayerNorm) is frozen at
  its recorded value, so ``n(x) = c(x) / s · w (+ b)`` with ``c`` the centring
  (LayerNorm) or the identity (RMSNorm) is affine in ``x``; post-norms likewise;
* **attention**: the pattern ``A_h`` is frozen (recomputed from the recorded queries and
  keys, in causal blocks of query rows on a fixed grid; the blocks are kept only while
  ``cache`` is a dict, which :func:`~interp.attribution.engine.attribute` sets when all
  layers' patterns fit in ``PATTERN_CACHE_BYTES``); the value path ``out_i = sum_h sum_j
  A_h[i, j] · n1(x_j) W_V[h] W_O[h]`` is linear;
* **kept MLPs** (adapters' base MLPs), the *RelP rule*: the activation is
  ``x · stopgrad(act(x) / x)`` (for SiLU: ``x · stopgrad(sigmoid(x))``) and a gated
  product ``act(gate) · up`` passes half of its gradient through each factor. For a
  bias-free gated MLP this map is *conservative*: ``J~ · x = MLP(x)`` exactly, so the
  kept MLP's share is folded into edges with no remainder; MLP biases are the remainder
  (``MLP(x) - J~ x``) and go to the layer's error node;
* **features** are nodes: no gradient crosses an encoder, except at a target feature's
  own pre-activation. Edges are therefore *direct* effects.

Each piece has ``apply`` (the linear map, used by the tests' independent model and by
error nodes) and ``apply_T`` (its transpose, the backward pass that makes the edges).
For rows held factored (position coefficients times per-row vectors, see
:mod:`interp.attribution.engine`) the transposes also come split: a norm's
``inv_scale`` (per position) and ``apply_T_vec`` (per vector); attention's
``pattern_rows`` / ``pattern_T`` (``A_h^T`` on position coefficients) and ``value_T``
(``W_O[h]^T W_V[h]^T`` on vectors). Shapes: one prompt of ``P`` positions; batches ``B``
of target rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch

from ..errors import ConfigError

PATTERN_BLOCK_BYTES = 32 << 20  # query rows recomputed per block of at most this size
PATTERN_CACHE_BYTES = 1 << 30   # all layers' patterns are kept when they fit in this


# ---------------------------------------------------------------------- norms
@dataclass
class FrozenNorm:
    """A norm with a frozen scale: ``y = c(x) / s · w`` (+ bias, a constant).

    ``s [P]``; ``w [d]`` or None (norms without a gain: the ``*Pre`` variants, or the
    ``normalized`` site that reads before the gain); ``center``: LayerNorm centring.
    """

    s: torch.Tensor
    w: torch.Tensor | None
    center: bool

    def _s(self, x: torch.Tensor) -> torch.Tensor:
        return self.s.reshape(-1, *([1] * (x.dim() - 1)))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``[P, ..., d] -> [P, ..., d]`` (the linear part, no bias; positions first)."""
        if self.center:
            x = x - x.mean(-1, keepdim=True)
        y = x / self._s(x)
        return y * self.w if self.w is not None else y

    def apply_T(self, g: torch.Tensor) -> torch.Tensor:
        """Transpose: ``[P, ..., d] -> [P, ..., d]``."""
        g = g * (self.w / self._s(g)) if self.w is not None else g / self._s(g)
        if self.center:
            g = g - g.mean(-1, keepdim=True)
        return g

    def inv_scale(self, n: int) -> torch.Tensor:
        """``1 / s`` of the first ``n`` positions: the transpose's per-position part."""
        return 1.0 / self.s[:n]

    def apply_T_vec(self, u: torch.Tensor) -> torch.Tensor:
        """The transpose's per-vector part (gain, then centring) on ``u [..., d]``:
        ``apply_T(g)[p] == inv_scale[p] * apply_T_vec(g[p])``."""
        if self.w is not None:
            u = u * self.w
        if self.center:
            u = u - u.mean(-1, keepdim=True)
        return u

    def apply_vec(self, e: torch.Tensor) -> torch.Tensor:
        """The forward map's per-vector part (centring, then gain) on ``e [..., d]``,
        the adjoint of :meth:`apply_T_vec`: ``<apply_T_vec(u), e> == <u, apply_vec(e)>``."""
        if self.center:
            e = e - e.mean(-1, keepdim=True)
        return e * self.w if self.w is not None else e

    def without_gain(self) -> FrozenNorm:
        return FrozenNorm(self.s, None, self.center)

    def rows(self, pos: torch.Tensor) -> FrozenNorm:
        """The same norm restricted to positions ``pos`` (for per-row vectors)."""
        return FrozenNorm(self.s[pos], self.w, self.center)

    def truncate(self, n: int) -> FrozenNorm:
        return FrozenNorm(self.s[:n], self.w, self.center)


NORM_TYPES = {"RMSNorm": (True, False), "RMSNormPre": (False, False),
              "LayerNorm": (True, True), "LayerNormPre": (False, True)}


def frozen_norm(module: Any, scale: torch.Tensor, dtype=torch.float32) -> FrozenNorm:
    """A TransformerLens norm module with its recorded ``hook_scale`` values ``[P]``."""
    name = type(module).__name__
    if name not in NORM_TYPES:
        raise ConfigError(f"attribution does not support the norm {name}")
    has_gain, center = NORM_TYPES[name]
    w = module.w.detach().to(dtype) if has_gain else None
    return FrozenNorm(scale.to(dtype), w, center)


# ---------------------------------------------------------------------- kept MLP
class LinearMLP:
    """A kept MLP linearised by the RelP rule around its recorded input ``x [P, d]``
    (the MLP module's own input, after the pre-MLP norm and its gain)."""

    def __init__(self, mlp: Any, x: torch.Tensor, dtype=torch.float32):
        name = type(mlp).__name__
        if name not in ("GatedMLP", "MLP"):
            raise ConfigError(f"attribution cannot linearise the MLP {name}")
        if getattr(mlp, "ln", None) is not None:
            raise ConfigError("MLPs with a norm inside the activation (SoLU) are not supported")
        self.gated = name == "GatedMLP"
        self.act_fn = mlp.act_fn
        x = x.to(dtype)
        if self.gated:
            self.W_gate = mlp.W_gate.detach().to(dtype)
            self.W_in = mlp.W_in.detach().to(dtype)
            pre = x @ self.W_gate
            self.up = x @ self.W_in
        else:
            self.W_in = mlp.W_in.detach().to(dtype)
            b_in = mlp.b_in.detach().to(dtype)
            pre = x @ self.W_in + b_in
        self.W_out = mlp.W_out.detach().to(dtype)
        self.act = self.act_fn(pre)
        # act(x) / x, with its limit at 0 (1/2 for SiLU and GELU)
        safe = pre.abs() > 1e-12
        self.ratio = torch.where(safe, self.act / torch.where(safe, pre, torch.ones_like(pre)),
                                 torch.full_like(pre, 0.5))

    def apply(self, dx: torch.Tensor) -> torch.Tensor:
        """``J~ dx``: ``[P, d] -> [P, d]``."""
        if self.gated:
            h = 0.5 * self.ratio * (dx @ self.W_gate) * self.up + 0.5 * self.act * (dx @ self.W_in)
        else:
            h = self.ratio * (dx @ self.W_in)
        return h @ self.W_out

    def apply_T(self, g: torch.Tensor) -> torch.Tensor:
        """``J~^T g`` for ``g [n, B, d]`` (the first ``n`` positions, positions first)."""
        n = g.shape[0]
        h = g @ self.W_out.T  # [n, B, d_mlp]
        if self.gated:
            return (0.5 * h * (self.ratio[:n] * self.up[:n])[:, None]) @ self.W_gate.T + \
                (0.5 * h * self.act[:n, None]) @ self.W_in.T
        return (h * self.ratio[:n, None]) @ self.W_in.T


# ---------------------------------------------------------------------- attention
class LinearAttention:
    """The value path of one attention layer with its pattern frozen.

    ``q [P, H, dh]`` and ``k [P, Hkv, dh]`` are the recorded (rotated) queries and keys;
    the pattern is recomputed from them with the module's own score, softcap and mask
    code, a block of query rows at a time.
    """

    def __init__(self, attn: Any, q: torch.Tensor, k: torch.Tensor, dtype=torch.float32):
        cfg = attn.cfg
        if cfg.positional_embedding_type in ("alibi", "relative_positional_bias"):
            raise ConfigError(f"attribution does not support {cfg.positional_embedding_type} "
                              "attention")
        if getattr(cfg, "use_logn_attn", False):
            raise ConfigError("attribution does not support log-n attention scaling")
        self.attn = attn
        self.q, self.k = q, k
        self.W_V = attn.W_V.detach().to(dtype)  # [H, d, dh] (GQA heads expanded)
        self.W_O = attn.W_O.detach().to(dtype)  # [H, dh, d]
        self.n_heads = self.W_V.shape[0]
        self.dtype = dtype
        P = q.shape[0]
        # a fixed grid of query-row blocks (causal: block i0:i1 reaches keys 0:i1 only)
        self.block = max(16, min(P, max(32, P // 8),
                                 PATTERN_BLOCK_BYTES // max(1, 4 * self.n_heads * P)))
        self.cache: dict[int, torch.Tensor] | None = None  # block start -> pattern block

    def grid_bytes(self) -> int:
        """Bytes of this layer's whole pattern stored as the grid's blocks."""
        P, b = self.q.shape[0], self.block
        es = torch.finfo(self.dtype).bits // 8
        return sum(self.n_heads * (min(P, i0 + b) - i0) * min(P, i0 + b) * es
                   for i0 in range(0, P, b))

    def blocks(self, n: int) -> Iterator[tuple[int, int, torch.Tensor]]:
        """The pattern's rows ``0 .. n - 1`` as ``(i0, i1, A[:, i0:i1, :i1])`` on the
        grid, last block first; kept for reuse when ``cache`` is a dict."""
        P, b = self.q.shape[0], self.block
        for i0 in reversed(range(0, n, b)):
            i1 = min(n, i0 + b)
            if self.cache is None:
                yield i0, i1, self.pattern(i0, i1)
                continue
            a = self.cache.get(i0)
            if a is None:
                a = self.cache[i0] = self.pattern(i0, min(P, i0 + b))
            yield i0, i1, a[:, : i1 - i0, :i1]

    def _softmax(self, scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Pattern ``[H, rows, keys]`` from scores ``[1, H, rows, keys]`` and a causal
        ``mask [rows, keys]`` (None: nothing masked)."""
        attn = self.attn
        if mask is not None:
            scores = torch.where(mask, scores, attn.IGNORE.to(scores.device))
        scores = scores.to(self.dtype)
        if attn.cfg.use_attention_sinks:
            sink = attn.sinks.to(self.dtype).reshape(1, -1, 1, 1).expand(
                1, -1, scores.shape[-2], -1)
            comb = torch.cat([scores, sink], -1)
            pat = torch.softmax(comb - comb.max(-1, keepdim=True).values, -1)[..., :-1]
        else:
            pat = torch.softmax(scores, -1)
        return torch.nan_to_num(pat[0], nan=0.0)

    def _causal(self) -> bool:
        return (self.attn._attention_dir_override or self.attn.cfg.attention_dir) == "causal"

    def pattern(self, i0: int, i1: int) -> torch.Tensor:
        """Rows ``i0:i1`` of the pattern over keys ``0:i1``: ``[H, i1 - i0, i1]``."""
        attn = self.attn
        q = self.q[i0:i1].unsqueeze(0)
        k = self.k[:i1].unsqueeze(0)
        scores = attn.calculate_attention_scores(q, k)  # [1, H, rows, keys]
        mask = None
        if self._causal():
            mask = attn._make_causal_mask(query_ctx_length=i1 - i0, key_ctx_length=i1,
                                          past_kv_pos_offset=i0, device=scores.device)
        return self._softmax(scores, mask)

    def pattern_rows(self, pos: torch.Tensor) -> torch.Tensor:
        """The pattern rows of positions ``pos [G]`` over keys ``0 : max(pos) + 1``:
        ``[H, G, max(pos) + 1]``."""
        n = int(pos.max()) + 1
        pos = pos.to(self.q.device)
        scores = self.attn.calculate_attention_scores(self.q[pos].unsqueeze(0),
                                                      self.k[:n].unsqueeze(0))
        mask = None
        if self._causal():
            mask = torch.arange(n, device=pos.device)[None, :] <= pos[:, None]
        return self._softmax(scores, mask)

    def value_T(self, u: torch.Tensor) -> torch.Tensor:
        """Per-head transpose of the value path on vectors: ``u [m, d] -> [H, m, d]``,
        ``u W_O[h]^T W_V[h]^T`` (no pattern)."""
        H, dh, d = self.W_O.shape
        z = (u @ self.W_O.reshape(H * dh, d).T).reshape(-1, H, dh).transpose(0, 1)
        return torch.bmm(z, self.W_V.transpose(1, 2))

    def pattern_T(self, c: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """``A_h^T c`` for every head: ``c [n, R]`` (columns of position coefficients)
        -> ``[H, n, R]``. ``last [R]`` (ascending): column ``r`` is zero after position
        ``last[r]``, so a block of pattern rows ``i0:i1`` meets only the columns with
        ``last >= i0``."""
        n, R = c.shape
        H = self.n_heads
        out = torch.zeros(H, n, R, dtype=c.dtype, device=c.device)
        for i0, i1, a in self.blocks(n):
            c0 = int(torch.searchsorted(last, torch.tensor(i0, device=last.device)))
            if c0 >= R:
                continue
            x = c[i0:i1, c0:]
            out[:, :i1, c0:].baddbmm_(a.transpose(1, 2), x.unsqueeze(0).expand(H, -1, -1))
        return out

    def _block_rows(self, n: int) -> int:
        return max(1, min(n, PATTERN_BLOCK_BYTES // max(1, 4 * self.n_heads * n)))

    def apply(self, v_in: torch.Tensor) -> torch.Tensor:
        """Forward map from the value input (the normed residual, ``[P, d]``) to the
        attention output ``[P, d]``."""
        n = v_in.shape[0]
        out = torch.zeros_like(v_in)
        for h in range(self.n_heads):
            v = v_in @ self.W_V[h]  # [P, dh]
            z = torch.zeros_like(v)
            blk = self._block_rows(n)
            for i0 in range(0, n, blk):
                i1 = min(n, i0 + blk)
                z[i0:i1] = self.pattern(i0, i1)[h] @ v[:i1]
            out = out + z @ self.W_O[h]
        return out

    def values(self, x: torch.Tensor) -> torch.Tensor:
        """The value vectors of value inputs ``x [n, d]``: ``[H, n, dh]``."""
        return torch.einsum("nd,hde->hne", x, self.W_V)

    def apply_T(self, g: torch.Tensor) -> torch.Tensor:
        """Transpose: gradient at the attention output ``g [n, B, d]`` (positions first)
        -> gradient at the value input ``[n, B, d]``. Each head costs three matrix
        products and no copies: ``g W_O[h]^T``, ``A_h^T ·`` (in causal blocks of query
        rows) and ``· W_V[h]^T``."""
        n, B, d = g.shape
        dh = self.W_O.shape[1]
        gv = self.apply_T_heads(g)
        out = gv[0].reshape(n * B, dh) @ self.W_V[0].T
        for h in range(1, self.n_heads):
            out.addmm_(gv[h].reshape(n * B, dh), self.W_V[h].T)
        return out.reshape(n, B, d)

    def apply_T_heads(self, g: torch.Tensor) -> list[torch.Tensor]:
        """The gradient at each head's value vectors: ``A_h^T (g W_O[h]^T)`` for ``g [n,
        B, d]``, per head ``[n, B * dh]``."""
        n, B, d = g.shape
        H, dh = self.n_heads, self.W_O.shape[1]
        g2 = g.reshape(n * B, d)
        gz = [(g2 @ self.W_O[h].T).reshape(n, B * dh) for h in range(H)]
        gv = [None] * H
        for i0, i1, a in self.blocks(n):  # a: [H, rows, i1]
            for h in range(H):
                if gv[h] is None:  # the first block (i1 = n) covers every key
                    gv[h] = a[h].T @ gz[h][i0:i1]  # [n, B dh]
                else:
                    gv[h][:i1].addmm_(a[h].T, gz[h][i0:i1])
        return gv
