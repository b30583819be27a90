"""Per-feature scores: label AUROCs, the hesitation score, the logit lens, ablation effects.

**AUROC** (:func:`auroc_sparse`): for a label with positive and negative rows (token
positions, or sequences for ``seq:`` labels), the probability that the feature's value
on a random positive exceeds its value on a random negative, ties counting one half
(Mann-Whitney U / (n_pos * n_neg)). Feature values are mostly exactly 0, so only the
nonzero entries are passed; zeros are counted, not listed. A feature never active on
the label's rows gets 0.5; NaN when a class is empty. 1 means "fires more on positives".

**Hesitation score** (:func:`hesitation_scores`), in the spirit of ReasonScore: how
specifically a feature fires *just before* hesitation tokens. With ``O`` the occurrences
of the hesitation words (``wait`` by default; ``K`` words), ``W(o)`` the ``w`` positions
before occurrence ``o`` and ``W`` their union:

* precision ``P_f = Σ_{p∈W} a_f(p) / Σ_p a_f(p)``: the share of the feature's activation
  mass that falls in the windows (a feature active only there has 1);
* coverage ``C_f = |{o : max_{p∈W(o)} a_f(p) > 0}| / |O|``: the share of hesitations
  the feature announces;
* breadth ``E_f``: the normalised entropy of the per-word coverages ``C_{f,k}`` (1 when a
  feature announces every hesitation word alike, 0 when only one of several; 1 when the
  corpus has one word);
* ``score_f = P_f · C_f · E_f`` in [0, 1]; also reported ``lift_f`` = mean activation
  in ``W`` / mean activation outside ``W``.

**Logit lens** (:func:`logit_lens`): ``W_dec[i] @ U`` with ``U`` the source's unembedding
(final-norm gain folded in, see :mod:`interp.features.source`); the ``k`` largest and
smallest entries.

**Ablation effect** (:func:`ablation_effects`): per feature, the feature is set to 0 at
every position of the sequences it fires on most (its top-k sequences) and the
next-token distributions are compared: mean KL(p ‖ p_ablated) in nats over the positions
where the feature was active, and the tokens whose mean probability there rises or falls
most.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from .source import FeatureSource, RowEdit


# ------------------------------------------------------------------ AUROC
def auroc_sparse(is_pos: np.ndarray, ent_row: np.ndarray, ent_g: np.ndarray,
                 ent_val: np.ndarray, n_features: int) -> np.ndarray:
    """AUROC of every feature (``[n_features]``) on rows whose class is ``is_pos``
    (bool ``[n_rows]``), from the nonzero entries ``(row, feature, value)``; every
    other (row, feature) value is 0. See the module docstring."""
    is_pos = np.asarray(is_pos, dtype=bool)
    n1 = int(is_pos.sum())
    n0 = int(len(is_pos) - n1)
    if n1 == 0 or n0 == 0:
        return np.full(n_features, np.nan)
    g = np.asarray(ent_g, dtype=np.int64)
    val = np.asarray(ent_val, dtype=np.float64)
    pos = is_pos[np.asarray(ent_row, dtype=np.int64)]
    nnz_pos = np.bincount(g[pos], minlength=n_features).astype(np.float64)
    nnz_neg = np.bincount(g[~pos], minlength=n_features).astype(np.float64)
    pos_zero, neg_zero = n1 - nnz_pos, n0 - nnz_neg
    u = pos_zero * 0.5 * neg_zero  # positives at 0 tie with negatives at 0
    if len(g):
        order = np.lexsort((val, g))
        g, val, pos = g[order], val[order], pos[order]
        neg = (~pos).astype(np.float64)
        cum_neg = np.concatenate([[0.0], np.cumsum(neg)])
        new_run = np.ones(len(g), dtype=bool)
        new_run[1:] = (g[1:] != g[:-1]) | (val[1:] != val[:-1])
        new_g = np.ones(len(g), dtype=bool)
        new_g[1:] = g[1:] != g[:-1]
        run_id = np.cumsum(new_run) - 1
        run_start = np.nonzero(new_run)[0]
        g_start = np.maximum.accumulate(np.where(new_g, np.arange(len(g)), 0))
        run_g = g[run_start]
        negs_before = cum_neg[run_start] - cum_neg[g_start[run_start]]
        negs_in = np.bincount(run_id, weights=neg)
        pos_in = np.bincount(run_id, weights=pos.astype(np.float64))
        u_run = pos_in * (neg_zero[run_g] + negs_before + 0.5 * negs_in)
        u += np.bincount(run_g, weights=u_run, minlength=n_features)
    return u / (n1 * n0)


def label_aurocs(rows: np.ndarray, idx: np.ndarray, val: np.ndarray, n_features: int,
                 split_of_seq: Callable[[np.ndarray], np.ndarray]
                 ) -> dict[str, Any]:
    """AUROCs of one label on each split. ``rows [n, 2]`` = (sequence, class) per row,
    ``idx [m, 2]`` = (row, feature) and ``val [m]`` the nonzero activations;
    ``split_of_seq(seq) -> 0 | 1`` (0 chooses, 1 reports). Returns ``{"auroc": [2, F],
    "pos_rate": [2, F], "neg_rate": [2, F], "n_pos": [2], "n_neg": [2]}``; the rates are
    the share of positive / negative rows where the feature is active."""
    rows, idx, val = np.asarray(rows), np.asarray(idx), np.asarray(val)
    split = split_of_seq(rows[:, 0]) if len(rows) else np.zeros(0, dtype=int)
    out = np.full((2, n_features), np.nan)
    rates = np.full((2, 2, n_features), np.nan)
    n_pos, n_neg = [0, 0], [0, 0]
    for s in (0, 1):
        keep = np.nonzero(split == s)[0]
        remap = np.full(len(rows), -1)
        remap[keep] = np.arange(len(keep))
        cls = rows[keep, 1] == 1
        n_pos[s], n_neg[s] = int(cls.sum()), int(len(cls) - cls.sum())
        if not len(keep):
            continue
        ent = remap[idx[:, 0]] >= 0 if len(idx) else np.zeros(0, dtype=bool)
        r, f = remap[idx[ent, 0]], idx[ent, 1]
        out[s] = auroc_sparse(cls, r, f, val[ent], n_features)
        for c, n in ((1, n_pos[s]), (0, n_neg[s])):
            if n:
                hit = cls[r] == bool(c)
                rates[s, 1 - c] = np.bincount(f[hit], minlength=n_features) / n
    return {"auroc": out, "pos_rate": rates[:, 0], "neg_rate": rates[:, 1],
            "n_pos": n_pos, "n_neg": n_neg}


def split_by_parity(seq: np.ndarray) -> np.ndarray:
    """Even-numbered sequences choose (0), odd-numbered report (1)."""
    return (np.asarray(seq) % 2).astype(int)


# ------------------------------------------------------------------ hesitation
def hesitation_scores(act_sum: np.ndarray, hes_mass: np.ndarray, hes_cover: np.ndarray,
                      hes_occ: np.ndarray, n_tokens: int, n_window_tokens: int
                      ) -> dict[str, np.ndarray]:
    """``precision``, ``coverage``, ``breadth``, ``score`` and ``lift`` per feature
    (module docstring). ``hes_cover [K, F]``: occurrences of word k whose window the
    feature is active in; ``hes_occ [K]``: occurrences of word k."""
    act_sum = np.asarray(act_sum, dtype=np.float64)
    hes_mass = np.asarray(hes_mass, dtype=np.float64)
    cover = np.asarray(hes_cover, dtype=np.float64)
    occ = np.asarray(hes_occ, dtype=np.float64)
    F = len(act_sum)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(act_sum > 0, hes_mass / np.where(act_sum > 0, act_sum, 1), 0.0)
        total = occ.sum()
        coverage = cover.sum(0) / total if total > 0 else np.zeros(F)
        used = occ > 0
        if used.sum() <= 1:
            breadth = np.where(coverage > 0, 1.0, 0.0)
        else:
            ck = cover[used] / occ[used, None]  # [K', F]
            q = ck / np.where(ck.sum(0) > 0, ck.sum(0), 1)
            ent = -(np.where(q > 0, q * np.log(np.where(q > 0, q, 1)), 0.0)).sum(0)
            breadth = ent / np.log(used.sum())
        n_out = n_tokens - n_window_tokens
        mean_in = hes_mass / n_window_tokens if n_window_tokens else np.zeros(F)
        mean_out = (act_sum - hes_mass) / n_out if n_out else np.zeros(F)
        lift = np.where(mean_out > 0, mean_in / np.where(mean_out > 0, mean_out, 1),
                        np.where(mean_in > 0, np.inf, np.nan))
    return {"precision": precision, "coverage": coverage, "breadth": breadth,
            "score": precision * coverage * breadth, "lift": lift}


# ------------------------------------------------------------------ logit lens
def logit_lens(W_dec: torch.Tensor, U: torch.Tensor, k: int = 10, chunk: int = 4096
               ) -> dict[str, torch.Tensor]:
    """Top and bottom ``k`` entries of ``W_dec @ U`` per row (``W_dec [F, d]``,
    ``U [d, vocab]``): ``top_ids``, ``top_vals``, ``bot_ids``, ``bot_vals`` ``[F, k]``."""
    k = min(k, U.shape[1])
    out: dict[str, list[torch.Tensor]] = {n: [] for n in ("top_ids", "top_vals", "bot_ids",
                                                          "bot_vals")}
    U = U.float()
    for s in range(0, W_dec.shape[0], chunk):
        lg = W_dec[s:s + chunk].float() @ U
        t = lg.topk(k, dim=-1)
        b = lg.topk(k, dim=-1, largest=False)
        out["top_ids"].append(t.indices)
        out["top_vals"].append(t.values)
        out["bot_ids"].append(b.indices)
        out["bot_vals"].append(b.values)
    return {n: torch.cat(v) if v else torch.zeros(0, k) for n, v in out.items()}


# ------------------------------------------------------------------ ablation
@torch.no_grad()
def ablation_effects(source: FeatureSource, features: Sequence[tuple[int, int]],
                     sequences: Callable[[int, int], list[list[int]]], pad_id: int = 0,
                     batch_rows: int = 32, top_tokens: int = 5,
                     progress: Callable[[int, int], None] | None = None
                     ) -> list[dict[str, Any]]:
    """Ablation effect of each ``(layer, index)`` feature on the sequences
    ``sequences(layer, index)`` (module docstring). One batch row per (feature,
    sequence); rows of one layer share a forward pass (a :class:`RowEdit`)."""
    rows: list[tuple[int, int, list[int]]] = []  # (feature number, layer, ids)
    for n, (layer, i) in enumerate(features):
        for ids in sequences(layer, i):
            rows.append((n, layer, ids))
    V = source.unembed().shape[1]
    kl_sum = np.zeros(len(features))
    n_pos = np.zeros(len(features), dtype=np.int64)
    n_seq = np.zeros(len(features), dtype=np.int64)
    dp_sum = torch.zeros(len(features), V, dtype=torch.float64)
    by_layer: dict[int, list[tuple[int, int, list[int]]]] = {}
    for r in rows:
        by_layer.setdefault(r[1], []).append(r)
    chunks = [(layer, rs[s:s + batch_rows]) for layer, rs in sorted(by_layer.items())
              for s in range(0, len(rs), batch_rows)]
    for ci, (layer, chunk) in enumerate(chunks):
        T = max(len(r[2]) for r in chunk)
        toks = torch.full((len(chunk), T), pad_id, dtype=torch.long)
        valid = torch.zeros(len(chunk), T, dtype=torch.bool)
        for j, (_, _, ids) in enumerate(chunk):
            toks[j, :len(ids)] = torch.tensor(ids)
            valid[j, :len(ids)] = True
        feats = torch.tensor([features[n][1] for n, _, _ in chunk])
        logits, acts = source.forward(toks)
        edit = RowEdit(layer, feats, torch.zeros(len(chunk)))
        logits_a, _ = source.forward(toks, edit=edit)
        a = acts[layer].float().cpu()
        on = (a[torch.arange(len(chunk)), :, feats] > 0) & valid  # [b, T]
        lp = torch.log_softmax(logits.double().cpu(), -1)
        lq = torch.log_softmax(logits_a.double().cpu(), -1)
        kl = (lp.exp() * (lp - lq)).sum(-1)  # [b, T]
        dp = lq.exp() - lp.exp()
        for j, (n, _, _) in enumerate(chunk):
            m = on[j]
            if m.any():
                kl_sum[n] += float(kl[j][m].sum())
                n_pos[n] += int(m.sum())
                dp_sum[n] += dp[j][m].sum(0)
            n_seq[n] += 1
        if progress is not None:
            progress(ci + 1, len(chunks))
    out = []
    for n, (layer, i) in enumerate(features):
        mean_dp = dp_sum[n] / max(int(n_pos[n]), 1)
        k = min(top_tokens, V)
        up = mean_dp.topk(k)
        down = mean_dp.topk(k, largest=False)
        out.append({
            "layer": int(layer), "feature": int(i),
            "kl_mean": float(kl_sum[n] / n_pos[n]) if n_pos[n] else None,
            "n_positions": int(n_pos[n]), "n_sequences": int(n_seq[n]),
            "up": [[int(t), float(v)] for t, v in zip(up.indices, up.values) if v > 0],
            "down": [[int(t), float(v)] for t, v in zip(down.indices, down.values) if v < 0],
        })
    return out
