"""Activation collection: one streaming pass over a corpus, per-feature statistics.

Features are numbered globally, layer after layer (``g = offset[layer] + index``; see
:meth:`interp.features.source.FeatureSource.offsets`). For every feature the pass keeps:

* **top-k examples**: the ``top_k`` sequences with the highest maximum activation, each
  with the position of that maximum (the earliest position when the maximum repeats);
  equal maxima rank the earlier sequence first;
* **reservoir**: a uniform random sample of ``n_reservoir`` of the tokens where the
  feature is active (priority sampling: every active token draws a key ~ U(0, 1) from a
  generator seeded by ``(seed, batch, layer)``, the smallest keys are kept), from which
  the quantile examples (the reservoir sorted by activation, cut into ``n_quantiles``
  bands) and the random examples are taken at the end;
* **histogram** with fixed bins for every feature: column 0 counts the tokens where the
  feature is 0, columns 1.. count active tokens in log-spaced bins: ``(0, 1e-3)``, then
  48 bins of equal log width from ``1e-3`` to ``1e3`` (8 per decade, each bin
  ``[lo, hi)``), then ``[1e3, inf)`` (:data:`HIST_EDGES`). Fixed edges need no first
  pass and merge exactly across batches and resumes; every row sums to the number of
  tokens;
* **density** (active tokens / tokens), sum and maximum of the activation;
* **regions**: active tokens and activation mass per region (:data:`REGIONS`), and the
  number of tokens of each region;
* **hesitation statistics** (see :mod:`interp.features.scores`): activation mass in the
  windows just before hesitation tokens and the number of hesitation occurrences whose
  window the feature is active in, per hesitation word (a word is every vocabulary entry
  spelling it, :func:`hesitation_patterns`);
* **labelled activations** for every ground-truth label of the corpus (sparse: only
  nonzero values are kept), for the AUROCs computed at the end on two disjoint splits
  (even-numbered sequences choose, odd-numbered report).

Pad positions never count. The pass is resumable: :class:`Collector` writes its whole
state to a checkpoint folder every ``checkpoint_every`` batches; a resumed run skips the
sequences already seen and ends with exactly the state an uninterrupted run reaches
(tested). Sequences are kept only while some top-k or reservoir slot refers to them.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import ConfigError
from .corpus import REGIONS, SEQ_PREFIX, Corpus, CorpusItem
from .source import FeatureSource

HIST_EDGES = torch.logspace(-3, 3, 49, dtype=torch.float64)  # bins of active values
N_HIST = len(HIST_EDGES) + 2  # zero, (0, 1e-3), 48 log bins, [1e3, inf)
PAD_REGION = 255
KIND = "features"
CHECKPOINT_FORMAT = 2  # 2: token labels' entries kept once (union positions)


def hist_bin_edges() -> list[float]:
    """Edges of the histogram columns: column 0 is exactly 0, column ``j >= 1`` is
    ``[edges[j], edges[j+1])`` (``edges[1] = 0`` exclusive, last edge ``inf``)."""
    return [0.0, 0.0] + HIST_EDGES.tolist() + [float("inf")]


@dataclass
class CollectConfig:
    """Settings of a collection (recorded in the artifact's config)."""

    top_k: int = 16
    n_reservoir: int = 32
    batch_size: int = 64
    max_len: int = 1024
    hesitation: list[str] = field(default_factory=lambda: ["wait"])
    window: int = 2
    seed: int = 0
    checkpoint_every: int = 25
    n_quantiles: int = 4
    lens_k: int = 10

    def __post_init__(self):
        for name in ("top_k", "n_reservoir", "batch_size", "max_len", "checkpoint_every",
                     "n_quantiles", "lens_k"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if int(self.window) < 1:
            raise ConfigError("the hesitation window must be at least 1 token")
        self.hesitation = [str(h) for h in self.hesitation if str(h)]

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> CollectConfig:
        d = dict(d or {})
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown collection setting(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def identity(self) -> dict[str, Any]:
        """What changes the result (``checkpoint_every`` does not)."""
        d = asdict(self)
        d.pop("checkpoint_every")
        return d


# ------------------------------------------------------------------ batches
@dataclass
class Batch:
    """Right-padded batch: ``tokens``/``valid``/``regions`` ``[b, T]``, ``seq`` the
    global sequence numbers ``[b]``; ``labels`` ``{name: int8 [b, T]}`` (-1 outside the
    domain and at pads); ``occ`` hesitation occurrences ``[n, 3]`` (row, start, type)."""

    tokens: torch.Tensor
    valid: torch.Tensor
    regions: torch.Tensor
    seq: torch.Tensor
    labels: dict[str, torch.Tensor]
    occ: torch.Tensor
    items: list[CorpusItem]


def hesitation_patterns(tokenizer: Any, words: Sequence[str]
                        ) -> tuple[list[list[int]], list[int]]:
    """``(patterns, word index of each)``: every vocabulary entry that spells a word
    (``Wait``, `` wait``, ``Wait,`` …, :func:`interp.tasks.hesitation_ids`) as a
    one-token pattern, plus the word's own tokenisation when that is several tokens.
    Words the tokenizer cannot spell (unknown tokens) are dropped; word indices count
    the kept words."""
    from ..tasks.markers import hesitation_ids as spellings

    pats: list[list[int]] = []
    types: list[int] = []
    if not tokenizer:
        return pats, types
    unk = getattr(tokenizer, "unk_token_id", None)
    for w in words:
        if not w or not str(w).strip():
            continue
        mine = [[i] for i in spellings(tokenizer, [w])[w] if i != unk]
        ids = list(tokenizer(w, add_special_tokens=False)["input_ids"])
        if len(ids) > 1 and (unk is None or unk not in ids):
            mine.append(ids)
        if mine:
            k = (types[-1] + 1) if types else 0
            pats += mine
            types += [k] * len(mine)
    return pats, types


def hesitation_ids(tokenizer: Any, words: Sequence[str]) -> list[list[int]]:
    """The patterns of :func:`hesitation_patterns` (without their word indices)."""
    return hesitation_patterns(tokenizer, words)[0]


def _occurrences(ids: Sequence[int], patterns: Sequence[Sequence[int]],
                 types: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """``(start, type)`` of every occurrence of each pattern in ``ids`` (type: the
    pattern's entry of ``types``, else its index)."""
    out = []
    arr = np.asarray(ids)
    for k, pat in enumerate(patterns):
        m = len(pat)
        if m == 0 or m > len(arr):
            continue
        hit = arr[: len(arr) - m + 1] == pat[0]
        for j in range(1, m):
            hit &= arr[j: len(arr) - m + 1 + j] == pat[j]
        kk = types[k] if types is not None else k
        out += [(int(s), kk) for s in np.nonzero(hit)[0]]
    return out


def make_batch(items: list[CorpusItem], first_seq: int, pad_id: int,
               label_names: Sequence[str], hes: Sequence[Sequence[int]],
               max_len: int, hes_types: Sequence[int] | None = None) -> Batch:
    b = len(items)
    lens = [min(len(it.ids), max_len) for it in items]
    T = max(lens)
    # filled row by row in numpy (a row assignment there costs a fraction of torch's)
    tokens = np.full((b, T), pad_id, dtype=np.int64)
    regions = np.full((b, T), PAD_REGION, dtype=np.uint8)
    labels = {n: np.full((b, T), -1, dtype=np.int8) for n in label_names}
    occ = []
    for i, (it, n) in enumerate(zip(items, lens)):
        tokens[i, :n] = it.ids[:n]
        regions[i, :n] = it.regions[:n]
        for name in label_names:
            lab = (it.labels or {}).get(name)
            if lab is not None:
                labels[name][i, :n] = lab[:n]
        occ += [(i, s, k) for s, k in _occurrences(it.ids[:n], hes, hes_types)]
    valid = torch.arange(T)[None, :] < torch.tensor(lens)[:, None]
    return Batch(torch.from_numpy(tokens), valid, torch.from_numpy(regions),
                 torch.arange(first_seq, first_seq + b),
                 {n: torch.from_numpy(v) for n, v in labels.items()},
                 torch.tensor(occ, dtype=torch.long).reshape(-1, 3), items)


def iter_batches(corpus: Iterable[CorpusItem], batch_size: int, skip: int = 0,
                 stop: int | None = None) -> Iterator[tuple[int, list[CorpusItem]]]:
    """``(index of the first sequence, items)`` per batch, skipping ``skip`` sequences
    (a resume point or a rank's first sequence, always a multiple of ``batch_size``) and
    ending before sequence ``stop``."""
    chunk: list[CorpusItem] = []
    start = 0
    for i, it in enumerate(corpus):
        if stop is not None and i >= stop:
            break
        if i < skip:
            start = i + 1
            continue
        chunk.append(it)
        if len(chunk) == batch_size:
            yield start, chunk
            start += len(chunk)
            chunk = []
    if chunk:
        yield start, chunk


# ------------------------------------------------------------------ streaming merge
def merge_topk(sv: torch.Tensor, payload: list[torch.Tensor], g: torch.Tensor,
               new_sv: torch.Tensor, new_payload: list[torch.Tensor]) -> None:
    """Merge candidates into per-feature top-k tables, in place.

    ``sv [F, K]`` holds the sort values (largest first, ``-inf`` = empty) and ``payload``
    tensors ``[F, K]`` ride along; candidates are ``(g [n], new_sv [n], new_payload)``.
    Only the features that have candidates are touched. Among equal sort values, kept
    entries come before new ones and new ones keep their given order."""
    K = sv.shape[1]
    # exact pre-filter: a candidate must beat the K-th kept value (a tie loses to it)
    ok = new_sv.to(sv.dtype) > sv[g, K - 1]
    if not bool(ok.all()):
        i = ok.nonzero().flatten()
        g, new_sv, new_payload = g[i], new_sv[i], [q[i] for q in new_payload]
    if g.numel() == 0:
        return
    touched = torch.bincount(g, minlength=sv.shape[0]).nonzero().flatten()
    cat_g = torch.cat([touched.repeat_interleave(K), g])
    cat_sv = torch.cat([sv[touched].flatten(), new_sv.to(sv.dtype)])
    cat_p = [torch.cat([p[touched].flatten(), q.to(p.dtype)]) for p, q in zip(payload, new_payload)]
    # one stable int64 sort on (feature, descending value): a radix sort, much faster
    # than two stable float sorts; ties keep the concatenation order
    order = torch.sort(cat_g * 2**32 + (2**31 - 1 - float_order_key(cat_sv)), stable=True).indices
    sg = cat_g[order]
    grp = torch.searchsorted(touched, sg)
    start = torch.searchsorted(sg, touched)
    rank = torch.arange(len(sg), device=sg.device) - start[grp]
    keep = rank < K
    rows, cols = grp[keep], rank[keep]
    out_sv = torch.full((len(touched), K), float("-inf"), dtype=sv.dtype, device=sv.device)
    out_sv[rows, cols] = cat_sv[order][keep]
    sv[touched] = out_sv
    for p, cp in zip(payload, cat_p):
        out = torch.full((len(touched), K), -1, dtype=p.dtype, device=p.device)
        out[rows, cols] = cp[order][keep]
        p[touched] = out


def float_order_key(x: torch.Tensor) -> torch.Tensor:
    """An int64 with the same order as the float32 values ``x`` (IEEE bits, with the
    magnitude bits of negative numbers flipped), in ``[-2**31, 2**31)``."""
    b = x.to(torch.float32).contiguous().view(torch.int32).long()
    return torch.where(b < 0, b ^ 0x7FFFFFFF, b)


def _group_max(key: torch.Tensor, v: torch.Tensor, pos: torch.Tensor | None, n_keys: int,
               T: int, dense_max: int = 1 << 24
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per distinct ``key`` (in ``0 .. n_keys-1``; ``v`` > 0): ``(keys ascending, the
    largest v, the smallest pos where it is reached)`` (``pos=None``: no positions, the
    third item is None). A dense scatter over ``n_keys`` slots while that is small (the
    organisms: 128 sequences x 1,024 features), a sort of the keys present otherwise
    (wide models: the dense buffer would be gigabytes)."""
    if n_keys <= dense_max:
        mx = torch.zeros(n_keys, device=v.device).scatter_reduce_(0, key, v, "amax")
        k = (mx > 0).nonzero().flatten()
        if pos is None:
            return k, mx[k], None
        first = torch.full((n_keys,), T, dtype=torch.long, device=v.device)
        first.scatter_reduce_(0, key, torch.where(v == mx[key], pos, T), "amin")
        return k, mx[k], first[k]
    k, inv = torch.unique(key, return_inverse=True)
    mx = torch.zeros(len(k), device=v.device).scatter_reduce_(0, inv, v, "amax")
    if pos is None:
        return k, mx, None
    first = torch.full((len(k),), T, dtype=torch.long, device=v.device)
    first.scatter_reduce_(0, inv, torch.where(v == mx[inv], pos, T), "amin")
    return k, mx, first


def _cat(parts: list[torch.Tensor], empty: tuple[int, ...], dtype: torch.dtype
         ) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.zeros(*empty, dtype=dtype)


# ------------------------------------------------------------------ the collector
class Collector:
    """Streaming state of a collection (see the module docstring). The state lives on
    ``device`` (the model's), so a GPU run never copies activations to the host."""

    def __init__(self, layers: Sequence[int], d_sae: dict[int, int], cfg: CollectConfig,
                 label_names: Sequence[str] = (), n_hes_types: int = 1,
                 device: torch.device | str = "cpu", first_batch: int = 0):
        self.layers, self.d_sae, self.cfg = list(layers), dict(d_sae), cfg
        # the corpus batch this collector starts at (a rank's share): the reservoir keys
        # are seeded by the global batch number, so a share draws what one pass draws
        self.first_batch = int(first_batch)
        self.device = torch.device(device)
        self.offsets, o = {}, 0
        for layer in self.layers:
            self.offsets[layer] = o
            o += self.d_sae[layer]
        F, K, R, H = o, cfg.top_k, cfg.n_reservoir, max(1, n_hes_types)
        self.F = F
        self.label_names = list(label_names)
        dev = self.device

        def z(*shape, dtype=torch.int64):
            return torch.zeros(*shape, dtype=dtype, device=dev)

        def full(shape, value, dtype=torch.float32):
            return torch.full(shape, value, dtype=dtype, device=dev)

        self.t: dict[str, torch.Tensor] = {
            "n_tokens": z(1), "n_seqs": z(1), "n_batches": z(1),
            "region_tokens": z(len(REGIONS)),
            "active": z(F), "act_sum": z(F, dtype=torch.float64),
            "act_max": z(F, dtype=torch.float32),
            "hist": z(F, N_HIST),
            "region_active": z(F, len(REGIONS)),
            "region_sum": z(F, len(REGIONS), dtype=torch.float64),
            "top_act": full((F, K), float("-inf")),
            "top_seq": full((F, K), -1, torch.int64),
            "top_pos": full((F, K), -1, torch.int64),
            "res_key": full((F, R), float("-inf")),  # -(priority key): largest kept
            "res_act": full((F, R), -1.0),
            "res_seq": full((F, R), -1, torch.int64),
            "res_pos": full((F, R), -1, torch.int64),
            "hes_mass": z(F, dtype=torch.float64),
            "hes_cover": z(H, F),
            "hes_occ": z(H),
            "hes_window_tokens": z(1),
        }
        # labelled activations, sparse (CPU). Per label its rows (seq, class). Token
        # labels share their entries: the positions inside any token label's domain are
        # numbered once ("union positions"), entries (union position, g) with their values
        # are kept once, and each token label maps a union position to its row (-1:
        # outside its domain). Sequence labels keep entries (row, g) of their own.
        self.seq_labels = [n for n in self.label_names if n.startswith(SEQ_PREFIX)]
        self.tok_labels = [n for n in self.label_names if not n.startswith(SEQ_PREFIX)]
        self.lab_rows: dict[str, list[torch.Tensor]] = {n: [] for n in self.label_names}
        self.lab_idx: dict[str, list[torch.Tensor]] = {n: [] for n in self.seq_labels}
        self.lab_val: dict[str, list[torch.Tensor]] = {n: [] for n in self.seq_labels}
        self.lab_map: dict[str, list[torch.Tensor]] = {n: [] for n in self.tok_labels}
        self.lab_n: dict[str, int] = {n: 0 for n in self.label_names}
        self.u_idx: list[torch.Tensor] = []  # [m, 2] (union position, g)
        self.u_val: list[torch.Tensor] = []
        self.u_n = 0
        self.seqs: dict[int, tuple[list[int], np.ndarray, str]] = {}
        self.edges = HIST_EDGES.to(dev)

    # -------------------------------------------------------------- one batch
    def update(self, batch: Batch, acts: dict[int, torch.Tensor]) -> None:
        """Add one batch (``acts``: ``{layer: [b, T, d_sae]}``, values >= 0). The one dense
        pass over each layer's activations (finding the active entries) runs on every
        thread; on a CPU the rest of the bookkeeping runs on one: its operations are many
        and small, and intra-op threads cost more than they gain there (measured: 1.2 s
        on one thread vs 9.6 s on two for 1,024 traces on a loaded 2-core machine)."""
        with torch.no_grad():
            vpos = batch.valid.to(self.device).reshape(-1).nonzero().flatten()
            sparse = {layer: self._active(acts[layer], vpos) for layer in self.layers}
        single = self.device.type == "cpu" and torch.get_num_threads() > 1
        n = torch.get_num_threads()
        if single:
            torch.set_num_threads(1)
        try:
            with torch.no_grad():
                self._update(batch, acts, sparse)
        finally:
            if single:
                torch.set_num_threads(n)

    def _active(self, a: torch.Tensor, vpos: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(p, f, v)``: the positive entries of ``a [b, T, d]`` at the valid positions
        ``vpos`` (flat: ``p = row * T + t``), ordered by ``p``, then ``f``. Only the valid
        rows are scanned (pads are a fifth of an organism batch)."""
        d = a.shape[-1]
        rows = a.detach().reshape(-1, d).index_select(0, vpos.to(a.device))
        rows = rows.to(self.device, torch.float32)
        r, f = (rows > 0).nonzero(as_tuple=True)  # the one dense pass
        return vpos[r], f, rows[r, f]

    def _update(self, batch: Batch, acts: dict[int, torch.Tensor],
                sparse: dict[int, tuple[torch.Tensor, ...]]) -> None:
        t, cfg, dev = self.t, self.cfg, self.device
        valid = batch.valid.to(dev)
        b, T = valid.shape
        bi_n = self.first_batch + int(t["n_batches"][0])
        t["n_tokens"] += valid.sum()
        t["n_seqs"] += b
        t["n_batches"] += 1
        reg = batch.regions.to(dev).long()
        t["region_tokens"] += torch.bincount(reg[valid], minlength=len(REGIONS))[:len(REGIONS)]
        seq = batch.seq.to(dev)
        # hesitation windows: positions start-w .. start-1 of each occurrence
        occ = batch.occ.to(dev)
        w = cfg.window
        win_pos = occ[:, 1:2] - torch.arange(w, 0, -1, device=dev)[None, :]  # [n_occ, w]
        win_ok = win_pos >= 0
        win_mask = torch.zeros(b, T, dtype=torch.bool, device=dev)
        if len(occ):
            rows = occ[:, 0:1].expand(-1, w)
            win_mask[rows[win_ok], win_pos[win_ok]] = True
            t["hes_occ"] += torch.bincount(occ[:, 2], minlength=t["hes_occ"].numel())
        win_mask &= valid
        t["hes_window_tokens"] += win_mask.sum()
        # token labels: the union positions of this batch (row-major), their global
        # numbers, and each label's rows among them (in the same row-major order)
        flat = {n: batch.labels[n].to(dev).reshape(-1) for n in self.label_names}
        tok_dom = torch.zeros(b * T, dtype=torch.bool, device=dev)
        for name in self.tok_labels:
            tok_dom |= flat[name] >= 0
        tok_dom &= valid.reshape(-1)
        upos = tok_dom.nonzero().flatten()
        uid = torch.full((b * T,), -1, dtype=torch.long, device=dev)
        uid[upos] = torch.arange(len(upos), device=dev) + self.u_n
        self.u_n += len(upos)
        for name in self.tok_labels:
            lab = flat[name][upos]
            inside = lab >= 0
            here = inside.nonzero().flatten()
            m = torch.full((len(upos),), -1, dtype=torch.long, device=dev)
            m[here] = torch.arange(len(here), device=dev) + self.lab_n[name]
            self.lab_map[name].append(m.cpu())
            if len(here):
                self.lab_rows[name].append(
                    torch.stack([seq[upos[here] // T], lab[here].long()], 1).cpu())
            self.lab_n[name] += len(here)
        # sequence labels: one row per sequence with a domain (class: its maximum label)
        seq_dom = torch.zeros(b * T, dtype=torch.bool, device=dev)
        sel = {}
        for name in self.seq_labels:
            lab = flat[name].view(b, T)
            dom = (lab >= 0) & valid
            rows = dom.any(1).nonzero().flatten()
            rid = torch.full((b,), -1, dtype=torch.long, device=dev)
            rid[rows] = torch.arange(len(rows), device=dev) + self.lab_n[name]
            sel[name] = (dom.reshape(-1), rid)
            seq_dom |= dom.reshape(-1)
            if len(rows):
                self.lab_rows[name].append(
                    torch.stack([seq[rows], lab[rows].amax(1).long()], 1).cpu())
            self.lab_n[name] += len(rows)
        # what an entry needs of its position, in one table: region (bits 0-2), inside a
        # hesitation window (3), a token label's domain (4), a sequence label's (5)
        code = (reg.reshape(-1) | (win_mask.reshape(-1).long() << 3) | (tok_dom.long() << 4)
                | (seq_dom.long() << 5))
        self._entries(acts, sparse, seq, code, uid, occ, win_pos, win_ok, bi_n, sel, b, T)
        lens = batch.valid.sum(1).tolist()
        for i, (it, n) in enumerate(zip(batch.items, lens)):
            self.seqs[int(batch.seq[i])] = (list(it.ids[:n]), np.asarray(it.regions[:n]), it.id)

    def _entries(self, acts, sparse, seq, code, uid, occ, win_pos, win_ok, bi_n, sel, b, T
                 ) -> None:
        """Every layer's positive entries at valid positions at once (``sparse``:
        :meth:`_active` per layer; the feature index ``g`` is global, so one pass of each
        statistic serves all layers; pad positions never appear among the entries)."""
        # (boolean-mask indexing hides a nonzero() per tensor: entries are filtered once
        # into an index and then gathered, and masks become weights where possible)
        t, cfg, dev, F = self.t, self.cfg, self.device, self.F
        p = torch.cat([sparse[la][0] for la in self.layers])
        g = torch.cat([sparse[la][1] + self.offsets[la] for la in self.layers])
        v = torch.cat([sparse[la][2] for la in self.layers])
        bi = p // T
        ti = p - bi * T
        c = code[p]
        ones = torch.ones_like(g)
        vd = v.double()
        t["active"].index_add_(0, g, ones)
        t["act_sum"].index_add_(0, g, vd)
        t["act_max"].scatter_reduce_(0, g, v, "amax")
        col = torch.bucketize(vd, self.edges, right=True) + 1
        t["hist"].view(-1).index_add_(0, g * N_HIST + col, ones)
        nr = len(REGIONS)
        gr = g * nr + (c & 7)
        t["region_active"].view(-1).index_add_(0, gr, ones)
        t["region_sum"].view(-1).index_add_(0, gr, vd)
        t["hes_mass"].index_add_(0, g, vd * ((c >> 3) & 1))
        if len(occ):
            for layer in self.layers:
                o, d = self.offsets[layer], self.d_sae[layer]
                a = acts[layer].detach().to(dev, torch.float32)
                wa = a[occ[:, 0:1].expand_as(win_pos), win_pos.clamp(min=0)]  # [n_occ, w, d]
                hit = ((wa > 0) & win_ok[..., None]).any(1).long()  # [n_occ, d]
                t["hes_cover"][:, o:o + d].index_add_(0, occ[:, 2], hit)
        # top-k sequences by their maximum (earliest position of the maximum); only the
        # entries above their feature's k-th kept value can enter (a tie loses to it), and
        # a sequence's maximum is one of them whenever any is
        k = (v > t["top_act"][g, -1]).nonzero().flatten()
        if len(k):
            ck, seqmax, first = _group_max(bi[k] * F + g[k], v[k], ti[k], b * F, T)
            merge_topk(t["top_act"], [t["top_seq"], t["top_pos"]], ck % F, seqmax,
                       [seq[ck // F], first])
        # reservoir (priority sampling; the stored sort value is -key); only keys that
        # beat a full reservoir's worst are merged. One draw per layer, seeded by the
        # batch and the layer, so that a share of the corpus draws what one pass draws.
        u = torch.cat([torch.rand(len(sparse[la][2]), device=dev, generator=torch.Generator(
            device=dev).manual_seed(int(cfg.seed) * 1_000_003 + bi_n * 1009 + int(la)))
            for la in self.layers])
        k = (-u > t["res_key"][g, -1]).nonzero().flatten()
        merge_topk(t["res_key"], [t["res_act"], t["res_seq"], t["res_pos"]], g[k], -u[k],
                   [v[k], seq[bi[k]], ti[k]])
        # labelled activations (sparse): token labels' entries once, at union positions
        if self.tok_labels:
            k = ((c >> 4) & 1).nonzero().flatten()
            if len(k):
                self.u_idx.append(torch.stack([uid[p[k]], g[k]], 1).cpu())
                self.u_val.append(v[k].cpu())
        in_seq = ((c >> 5) & 1).nonzero().flatten() if sel else None
        for name, (dom, rid) in sel.items():
            k = in_seq[dom[p[in_seq]].nonzero().flatten()]
            kk, vals, _ = _group_max(bi[k] * F + g[k], v[k], None, b * F, T)
            if len(kk):
                self.lab_idx[name].append(torch.stack([rid[kk // F], kk % F], 1).cpu())
                self.lab_val[name].append(vals.cpu())

    # -------------------------------------------------------------- housekeeping
    def prune_sequences(self) -> None:
        """Forget sequences no top-k or reservoir slot refers to (they never come back)."""
        keep = set(self.t["top_seq"].unique().tolist()) | set(self.t["res_seq"].unique().tolist())
        self.seqs = {k: v for k, v in self.seqs.items() if k in keep}

    def label_tensors(self, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(rows [n, 2] (seq, class), idx [m, 2] (row, g), values [m])`` of a label."""
        rows = _cat(self.lab_rows[name], (0, 2), torch.long)
        if name in self.lab_idx:
            return (rows, _cat(self.lab_idx[name], (0, 2), torch.long),
                    _cat(self.lab_val[name], (0,), torch.float32))
        ui, uv = _cat(self.u_idx, (0, 2), torch.long), _cat(self.u_val, (0,), torch.float32)
        r = _cat(self.lab_map[name], (0,), torch.long)[ui[:, 0]]
        k = (r >= 0).nonzero().flatten()
        return rows, torch.stack([r[k], ui[k, 1]], 1), uv[k]

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {k: v.detach().cpu().clone() for k, v in self.t.items()}
        for name in self.label_names:
            out[f"lab_rows/{name}"] = _cat(self.lab_rows[name], (0, 2), torch.long)
        for name in self.seq_labels:
            out[f"lab_idx/{name}"] = _cat(self.lab_idx[name], (0, 2), torch.long)
            out[f"lab_val/{name}"] = _cat(self.lab_val[name], (0,), torch.float32)
        for name in self.tok_labels:
            out[f"lab_map/{name}"] = _cat(self.lab_map[name], (0,), torch.long)
        if self.tok_labels:
            out["lab_union_idx"] = _cat(self.u_idx, (0, 2), torch.long)
            out["lab_union_val"] = _cat(self.u_val, (0,), torch.float32)
        idx = sorted(self.seqs)
        lens = [len(self.seqs[i][0]) for i in idx]
        out["seq_index"] = torch.tensor(idx, dtype=torch.long)
        out["seq_offsets"] = torch.tensor(np.concatenate([[0], np.cumsum(lens)]),
                                          dtype=torch.long)
        out["seq_tokens"] = torch.tensor([x for i in idx for x in self.seqs[i][0]],
                                         dtype=torch.long)
        out["seq_regions"] = torch.from_numpy(
            np.concatenate([self.seqs[i][1] for i in idx]).astype(np.uint8) if idx
            else np.zeros(0, dtype=np.uint8))
        return out

    def seq_ids(self) -> list[str]:
        return [self.seqs[i][2] for i in sorted(self.seqs)]

    def save_checkpoint(self, folder: Path, extra: dict[str, Any]) -> None:
        """State + ``extra`` (JSON) into ``folder``, atomically (temp files + rename;
        the JSON names the tensor file, so a half-written pair is never read)."""
        folder.mkdir(parents=True, exist_ok=True)
        self.prune_sequences()
        n = int(self.t["n_batches"][0])
        tname = f"state-{n}.safetensors"
        tmp = folder / f".{tname}.tmp"
        save_file(self.state_tensors(), str(tmp))
        os.replace(tmp, folder / tname)
        rec = {"tensors": tname, "n_batches": n, "seq_ids": self.seq_ids(),
               "format": CHECKPOINT_FORMAT, **extra}
        tmpj = folder / ".checkpoint.json.tmp"
        tmpj.write_text(json.dumps(rec))
        os.replace(tmpj, folder / "checkpoint.json")
        for p in folder.glob("state-*.safetensors"):
            if p.name != tname:
                p.unlink(missing_ok=True)

    def load_checkpoint(self, folder: Path) -> dict[str, Any] | None:
        """The checkpoint's record after loading its state; None when there is none, or
        when it was written in another checkpoint format (an older version of this code:
        its state cannot be read, so the collection starts over and overwrites it)."""
        f = folder / "checkpoint.json"
        if not f.exists():
            return None
        rec = json.loads(f.read_text())
        if rec.get("format") != CHECKPOINT_FORMAT:
            warnings.warn(f"the checkpoint in {folder} was written by another version "
                          f"(format {rec.get('format')}); the collection starts over",
                          stacklevel=2)
            return None
        self.load_state(load_file(str(folder / rec["tensors"])), rec["seq_ids"])
        return rec

    def load_state(self, st: dict[str, torch.Tensor], seq_ids: Sequence[str]) -> None:
        """Replace the state by ``st`` (:meth:`state_tensors`) and its sequences' ids
        (checked first: a state of another collection leaves this one as it was)."""
        if any(k not in st or st[k].shape != self.t[k].shape for k in self.t):
            raise ConfigError("the checkpoint does not match this collection's sizes")
        if any(f"lab_rows/{n}" not in st for n in self.label_names) or (
                self.tok_labels and "lab_union_idx" not in st):
            raise ConfigError("the checkpoint's labelled activations are of another "
                              "collection")
        for k in self.t:
            self.t[k] = st[k].to(self.device)
        for name in self.label_names:
            rows = st[f"lab_rows/{name}"]
            self.lab_rows[name] = [rows] if len(rows) else []
            self.lab_n[name] = len(rows)
        for name in self.seq_labels:
            idx, val = st[f"lab_idx/{name}"], st[f"lab_val/{name}"]
            self.lab_idx[name] = [idx] if len(idx) else []
            self.lab_val[name] = [val] if len(val) else []
        for name in self.tok_labels:
            self.lab_map[name] = [st[f"lab_map/{name}"]]
        if self.tok_labels:
            self.u_idx, self.u_val = [st["lab_union_idx"]], [st["lab_union_val"]]
            self.u_n = len(self.lab_map[self.tok_labels[0]][0])
        off, toks, regs = st["seq_offsets"], st["seq_tokens"], st["seq_regions"].numpy()
        self.seqs = {}
        for j, (i, sid) in enumerate(zip(st["seq_index"].tolist(), seq_ids)):
            s, e = int(off[j]), int(off[j + 1])
            self.seqs[i] = (toks[s:e].tolist(), regs[s:e].copy(), sid)

    def absorb(self, st: dict[str, torch.Tensor], seq_ids: Sequence[str]) -> None:
        """Add the state of a collection over the sequences that follow this one's (the
        next rank's share, :meth:`state_tensors`): afterwards this collector holds the
        state one pass over both reaches. Counts and sums add, maxima take the larger,
        the top-k and reservoir tables merge as the stream would (this collector's
        entries, the earlier sequences, win ties), labelled rows are appended
        (renumbered after this one's)."""
        other = Collector(self.layers, self.d_sae, self.cfg, self.label_names,
                          self.t["hes_occ"].numel(), "cpu")
        other.load_state(st, seq_ids)
        t, o = self.t, {k: v.to(self.device) for k, v in other.t.items()}
        for k in ("n_tokens", "n_seqs", "n_batches", "region_tokens", "active", "act_sum",
                  "hist", "region_active", "region_sum", "hes_mass", "hes_cover", "hes_occ",
                  "hes_window_tokens"):
            t[k] += o[k]
        t["act_max"] = torch.maximum(t["act_max"], o["act_max"])
        for val, payload, seq in (("top_act", ("top_seq", "top_pos"), "top_seq"),
                                  ("res_key", ("res_act", "res_seq", "res_pos"), "res_seq")):
            g, k = (o[seq] >= 0).nonzero(as_tuple=True)   # filled slots, best first
            merge_topk(t[val], [t[p] for p in payload], g, o[val][g, k],
                       [o[p][g, k] for p in payload])
        for name in self.label_names:
            base = self.lab_n[name]
            self.lab_rows[name] += other.lab_rows[name]
            if name in self.lab_idx:
                self.lab_idx[name] += [idx + torch.tensor([base, 0])
                                       for idx in other.lab_idx[name]]
                self.lab_val[name] += other.lab_val[name]
            else:
                self.lab_map[name] += [torch.where(m >= 0, m + base, m)
                                       for m in other.lab_map[name]]
            self.lab_n[name] += other.lab_n[name]
        self.u_idx += [idx + torch.tensor([self.u_n, 0]) for idx in other.u_idx]
        self.u_val += other.u_val
        self.u_n += other.u_n
        self.seqs.update(other.seqs)
        self.prune_sequences()


# ------------------------------------------------------------------ the whole pass
ProgressFn = Callable[..., None]


def run_collection(source: FeatureSource, corpus: Corpus, cfg: CollectConfig,
                   checkpoint_dir: str | Path | None = None,
                   progress: ProgressFn | None = None, lo: int = 0, hi: int | None = None
                   ) -> tuple[Collector, dict[str, Any]]:
    """Stream ``corpus`` through ``source`` into a :class:`Collector` (resuming from
    ``checkpoint_dir`` when it holds a checkpoint of the same collection). Returns the
    collector and timing figures (``tokens``, ``seconds``, ``tokens_per_s`` of this
    process's share of the pass: forward + bookkeeping, checkpoints excluded).
    ``lo``/``hi``: only the sequences ``lo..hi-1`` (a rank's share; ``lo`` a multiple of
    the batch size, so the batches and their reservoir seeds are those of one pass; the
    shares' collectors merge with :meth:`Collector.absorb`).
    ``progress(done_seqs, total_seqs, **info)`` after every batch, counted within the
    share; it may raise to stop (a job's cancel), after the last checkpoint was
    written."""
    tok = source.tokenizer
    hes, hes_types = hesitation_patterns(tok, cfg.hesitation)
    labels = list(corpus.label_names)
    hi = len(corpus) if hi is None else min(hi, len(corpus))
    if lo < 0 or lo % cfg.batch_size:
        raise ConfigError(f"a share of the corpus starts at a multiple of the batch size "
                          f"{cfg.batch_size}, not at {lo}")
    col = Collector(source.layers, source.d_sae, cfg, labels, len(set(hes_types)),
                    source.device, first_batch=lo // cfg.batch_size)
    ck = Path(checkpoint_dir) if checkpoint_dir is not None else None
    skip = lo
    if ck is not None:
        rec = col.load_checkpoint(ck)
        if rec is not None:
            if rec.get("lo", 0) != lo or rec.get("hi", hi) != hi:
                raise ConfigError(f"the checkpoint in {ck} covers sequences "
                                  f"{rec.get('lo', 0)}..{rec.get('hi')}, not {lo}..{hi}")
            skip = lo + int(col.t["n_seqs"][0])
    pad = getattr(tok, "pad_token_id", None)
    pad = int(pad) if pad is not None else 0
    total = hi - lo
    n_ctx = getattr(getattr(source.model, "cfg", None), "n_ctx", None) or cfg.max_len
    max_len = min(cfg.max_len, int(n_ctx))
    tokens, seconds = 0, 0.0
    dev = source.device
    for first, items in iter_batches(corpus, cfg.batch_size, skip, hi):
        t0 = time.perf_counter()
        batch = make_batch(items, first, pad, labels, hes, max_len, hes_types)
        _, acts = source.forward(batch.tokens.to(dev), need_logits=False)
        col.update(batch, acts)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - t0
        tokens += int(batch.valid.sum())
        nb = int(col.t["n_batches"][0])
        if ck is not None and nb % cfg.checkpoint_every == 0:
            col.save_checkpoint(ck, {"total": total, "lo": lo, "hi": hi})
        if progress is not None:
            progress(first + len(items) - lo, total, tokens_per_s=tokens / max(seconds, 1e-9))
    col.prune_sequences()
    return col, {"tokens": tokens, "seconds": seconds,
                 "tokens_per_s": tokens / seconds if seconds else None}
