"""From a source and a corpus to a saved ``features`` artifact; the ``features.collect`` job.

:func:`collect_features` runs the streaming pass (:mod:`interp.features.collect`),
then finalises it (:func:`finalize`): label AUROCs on two splits, hesitation scores,
the logit lens of every decoder direction, the per-token activations of each feature's
shown examples (one more forward pass over the sequences they come from), and ablation
effects for chosen features; and saves everything as one artifact.

Artifact ``features/<key>`` (config: source kind + key, corpus spec, collection
settings):

* ``tensors.safetensors``: per feature ``[F]`` / ``[F, ...]`` arrays (``active``,
  ``act_sum``, ``act_max``, ``hist``, ``region_active``, ``region_sum``, ``top_*``,
  ``hes_*``, ``lens_*``, ``auroc`` ``[n_labels, 3, F]`` (choose split, report split,
  both)), the shown examples (``ex_*``: feature, kind, sequence, position, activation)
  and their per-token activations (``tok_*``: example pair, position, value), and the
  referenced sequences (``seq_index``, ``seq_offsets``, ``seq_tokens``,
  ``seq_regions``);
* ``sequences.json`` (their string ids), ``vocab.json`` (token strings of every token id
  used), ``ablation.json`` (ablation effects);
* meta: sizes, labels (counts, best feature chosen on one split and its AUROC on the
  other, ranked tables), hesitation ranking, timing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..store import Artifact, Store, provenance
from .collect import (
    KIND,
    N_HIST,
    CollectConfig,
    Collector,
    hist_bin_edges,
    run_collection,
)
from .corpus import REGIONS, SEQ_PREFIX, Corpus, build_corpus
from .scores import (
    ablation_effects,
    hesitation_scores,
    label_aurocs,
    logit_lens,
    split_by_parity,
)
from .source import FeatureSource, load_source

EXAMPLE_KINDS = ("top", "quantile", "random")
ABLATION_MODES = ("none", "top", "all")
RANKING_SIZE = 10


def label_display(name: str) -> str:
    """A label's name without the ``seq:`` prefix (report keys, tables)."""
    return name.removeprefix(SEQ_PREFIX)


def _shown_examples(t: dict[str, torch.Tensor], cfg: CollectConfig
                    ) -> dict[str, torch.Tensor]:
    """The examples a card shows, per feature: the top-k, then from the reservoir (sorted
    by activation and cut into ``n_quantiles`` equal bands) two per band, then up to
    ``n_random`` reservoir entries in their (random) priority order."""
    F, K = t["top_act"].shape
    feats, kinds, seqs, poss, acts = [], [], [], [], []
    top_ok = t["top_seq"] >= 0
    g, k = top_ok.nonzero(as_tuple=True)
    feats.append(g)
    kinds.append(torch.zeros_like(g))
    seqs.append(t["top_seq"][g, k])
    poss.append(t["top_pos"][g, k])
    acts.append(t["top_act"][g, k])
    res_ok = t["res_seq"] >= 0
    n_res = res_ok.sum(1)
    ract = torch.where(res_ok, t["res_act"], torch.full_like(t["res_act"], float("inf")))
    srt = ract.argsort(1)  # ascending activation, empties last
    q = cfg.n_quantiles
    for f in (n_res > 0).nonzero().flatten().tolist():
        n = int(n_res[f])
        picks: list[int] = []
        for band in range(q):
            lo, hi = band * n // q, (band + 1) * n // q
            if hi > lo:
                picks += sorted({lo + (hi - lo) // 3, lo + 2 * (hi - lo) // 3})
        for j in picks:
            c = int(srt[f, j])
            feats.append(torch.tensor([f]))
            kinds.append(torch.tensor([1]))
            seqs.append(t["res_seq"][f, c:c + 1])
            poss.append(t["res_pos"][f, c:c + 1])
            acts.append(t["res_act"][f, c:c + 1])
    n_random = max(1, cfg.n_reservoir // 4)
    order = t["res_key"].argsort(1, descending=True)[:, :n_random]  # priority order
    for j in range(order.shape[1]):
        c = order[:, j]
        rows = torch.arange(F)
        ok = res_ok[rows, c]
        feats.append(rows[ok])
        kinds.append(torch.full((int(ok.sum()),), 2))
        seqs.append(t["res_seq"][rows, c][ok])
        poss.append(t["res_pos"][rows, c][ok])
        acts.append(t["res_act"][rows, c][ok])
    ex = {"ex_feat": torch.cat(feats), "ex_kind": torch.cat(kinds), "ex_seq": torch.cat(seqs),
          "ex_pos": torch.cat(poss), "ex_act": torch.cat(acts).float()}
    # order by (feature, kind), stable
    o = torch.sort(ex["ex_kind"], stable=True).indices
    o = o[torch.sort(ex["ex_feat"][o], stable=True).indices]
    return {k: v[o].contiguous() for k, v in ex.items()}


@torch.no_grad()
def example_activations(source: FeatureSource, ex: dict[str, torch.Tensor],
                        seqs: dict[int, list[int]], offsets: dict[int, int], pad_id: int,
                        batch_size: int = 64) -> dict[str, torch.Tensor]:
    """Per-token activations of each example's feature on its sequence (nonzero only):
    ``tok_pair [M]`` indexes ``pair_feat``/``pair_seq`` (one pair per distinct
    (feature, sequence)), ``tok_pos [M]``, ``tok_act [M]``; ``ex_pair [E]`` maps each
    example to its pair."""
    layers = sorted(offsets, key=offsets.get)
    pair_key = ex["ex_feat"] * (max(seqs, default=0) + 1) + ex["ex_seq"]
    uniq, ex_pair = torch.unique(pair_key, return_inverse=True)
    n_s = max(seqs, default=0) + 1
    pair_feat, pair_seq = uniq // n_s, uniq % n_s
    by_seq: dict[int, list[int]] = {}
    for p, s in enumerate(pair_seq.tolist()):
        by_seq.setdefault(s, []).append(p)
    seq_list = sorted(by_seq)
    bounds = torch.tensor([offsets[layer] for layer in layers] + [10**18])
    tp, tpos, tact = [], [], []
    for s0 in range(0, len(seq_list), batch_size):
        chunk = seq_list[s0:s0 + batch_size]
        T = max(len(seqs[s]) for s in chunk)
        toks = torch.full((len(chunk), T), pad_id, dtype=torch.long)
        for j, s in enumerate(chunk):
            toks[j, :len(seqs[s])] = torch.tensor(seqs[s])
        _, acts = source.forward(toks, need_logits=False)
        acts = {k: v.float().cpu() for k, v in acts.items()}
        for j, s in enumerate(chunk):
            n = len(seqs[s])
            for p in by_seq[s]:
                g = int(pair_feat[p])
                li = int(torch.searchsorted(bounds, torch.tensor(g), right=True)) - 1
                layer = layers[li]
                col = acts[layer][j, :n, g - offsets[layer]]
                nz = (col > 0).nonzero().flatten()
                tp.append(torch.full((len(nz),), p, dtype=torch.long))
                tpos.append(nz)
                tact.append(col[nz])

    def cat(xs: list[torch.Tensor], dt: torch.dtype) -> torch.Tensor:
        return torch.cat(xs).to(dt) if xs else torch.zeros(0, dtype=dt)

    return {"pair_feat": pair_feat, "pair_seq": pair_seq, "ex_pair": ex_pair,
            "tok_pair": cat(tp, torch.int32), "tok_pos": cat(tpos, torch.int32),
            "tok_act": cat(tact, torch.float16)}


def _vocab(tokenizer: Any, ids: Sequence[int]) -> dict[str, str]:
    out = {}
    for i in sorted(set(int(x) for x in ids)):
        try:
            s = tokenizer.convert_ids_to_tokens(i)
            text = tokenizer.decode([i], skip_special_tokens=False)
        except Exception:  # noqa: BLE001 - an id the tokenizer cannot show
            s, text = None, None
        out[str(i)] = text if text not in (None, "") else (s or f"<{i}>")
    return out


def finalize(col: Collector, source: FeatureSource, cfg: CollectConfig,
             label_names: Sequence[str], ablation: str = "top", ablation_top: int = 64,
             progress: Callable[..., None] | None = None
             ) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """``(tensors, meta, files)`` of the artifact (see the module docstring)."""
    if ablation not in ABLATION_MODES:
        raise ConfigError(f"ablation must be one of {ABLATION_MODES}")
    t0 = time.perf_counter()
    st = col.state_tensors()
    F = col.F
    n_tokens = int(st["n_tokens"][0])
    tensors: dict[str, torch.Tensor] = {k: st[k] for k in (
        "region_tokens", "active", "act_sum", "act_max", "region_active", "region_sum",
        "top_act", "top_seq", "top_pos", "hes_mass", "hes_cover", "hes_occ")}
    hist = st["hist"].clone()
    hist[:, 0] = n_tokens - st["active"]
    tensors["hist"] = hist
    tensors["top_act"] = torch.where(st["top_seq"] >= 0, st["top_act"],
                                     torch.zeros_like(st["top_act"]))
    # labels: AUROC on the choose split (0), the report split (1), and both
    labels_meta: dict[str, Any] = {}
    au = np.full((len(label_names), 3, F), np.nan, dtype=np.float32)
    for li, name in enumerate(label_names):
        rows, idx, val = col.label_tensors(name)
        r = label_aurocs(rows.numpy(), idx.numpy(), val.numpy(), F, split_by_parity)
        both = label_aurocs(rows.numpy(), idx.numpy(), val.numpy(), F,
                            lambda s: np.zeros(len(s), dtype=int))
        au[li, :2] = r["auroc"]
        au[li, 2] = both["auroc"][0]
        labels_meta[name] = {"n_pos": r["n_pos"], "n_neg": r["n_neg"],
                             **_best(r, col)}
    tensors["auroc"] = torch.from_numpy(au)
    # hesitation
    hs = hesitation_scores(st["act_sum"].numpy(), st["hes_mass"].numpy(),
                           st["hes_cover"].numpy(), st["hes_occ"].numpy(), n_tokens,
                           int(st["hes_window_tokens"][0]))
    for k, v in hs.items():
        tensors[f"hes_{k}"] = torch.from_numpy(np.asarray(v, dtype=np.float32))
    # logit lens and decoder norms
    W = torch.cat([source.decoder(layer) for layer in source.layers])
    lens = logit_lens(W, source.unembed(), cfg.lens_k)
    for k, v in lens.items():
        tensors[f"lens_{k}"] = v
    tensors["decoder_norm"] = W.norm(dim=-1)
    # shown examples + their per-token activations
    ex = _shown_examples(st, cfg)
    seqs = {i: v[0] for i, v in col.seqs.items()}
    pad = getattr(source.tokenizer, "pad_token_id", None)
    pad = int(pad) if pad is not None else 0
    ea = example_activations(source, ex, seqs, col.offsets, pad, cfg.batch_size)
    tensors.update(ex)
    tensors.update(ea)
    for k in ("seq_index", "seq_offsets", "seq_tokens", "seq_regions"):
        tensors[k] = st[k]
    # ablation effects
    abl: list[dict[str, Any]] = []
    t_abl = time.perf_counter()
    if ablation != "none":
        alive = (st["active"] > 0).nonzero().flatten()
        if ablation == "top":
            chosen = set(np.argsort(-hs["score"])[:ablation_top // 2].tolist())
            chosen |= {m["best"]["g"] for m in labels_meta.values() if m.get("best")}
            dens = st["active"].float() / max(n_tokens, 1)
            chosen |= set(dens.argsort(descending=True)[:ablation_top // 4].tolist())
            picked = [g for g in sorted(chosen) if int(st["active"][g]) > 0][:ablation_top]
        else:
            picked = alive.tolist()
        feats = [col_lid(col, g) for g in picked]

        def seq_of(layer: int, i: int) -> list[list[int]]:
            g = col.offsets[layer] + i
            return [seqs[int(s)] for s in st["top_seq"][g].tolist()
                    if s >= 0 and int(s) in seqs][:8]

        abl = ablation_effects(source, feats, seq_of, pad_id=pad,
                               batch_rows=max(8, cfg.batch_size // 2),
                               progress=(lambda d, n: progress(d, n, stage="ablation"))
                               if progress else None)
        for a, g in zip(abl, picked):
            a["g"] = int(g)
    t_end = time.perf_counter()
    # vocabulary of every id shown
    used = torch.cat([st["seq_tokens"], lens["top_ids"].flatten(), lens["bot_ids"].flatten()]
                     + [torch.tensor([t for a in abl for t, _ in a["up"] + a["down"]],
                                     dtype=torch.long)])
    tensors = compact(tensors)
    files = {"sequences.json": json.dumps(col.seq_ids()),
             "vocab.json": json.dumps(_vocab(source.tokenizer, used.tolist())),
             "ablation.json": json.dumps(abl)}
    alive_n = int((st["active"] > 0).sum())
    order = np.argsort(-hs["score"], kind="stable")[:20]
    meta = {
        "layers": col.layers, "d_sae": {str(k): v for k, v in col.d_sae.items()},
        "offsets": {str(k): v for k, v in col.offsets.items()}, "n_features": F,
        "n_tokens": n_tokens, "n_sequences": int(st["n_seqs"][0]),
        "alive_fraction": alive_n / F if F else 0.0,
        "regions": list(REGIONS), "hist_edges": hist_bin_edges(), "n_hist": N_HIST,
        "labels": labels_meta, "label_names": list(label_names),
        "best_auroc_per_label": {label_display(n): m.get("best", {}).get("eval_auroc")
                                 for n, m in labels_meta.items()},
        "hesitation": {
            "words": cfg.hesitation, "window": cfg.window,
            "n_occurrences": st["hes_occ"].tolist(),
            "n_window_tokens": int(st["hes_window_tokens"][0]),
            "top": [{"g": int(g), "id": _fid(col, int(g)), "score": float(hs["score"][g]),
                     "precision": float(hs["precision"][g]),
                     "coverage": float(hs["coverage"][g]), "lift": _finite(hs["lift"][g])}
                    for g in order if hs["score"][g] > 0]},
        "ablation_mode": ablation, "n_ablation": len(abl),
        "timing": {"finalize_seconds": t_end - t0 - (t_end - t_abl),
                   "ablation_seconds": t_end - t_abl},
    }
    return tensors, meta, files


def compact(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Integer tensors in the smallest of int32 / uint8 that holds them exactly (ids,
    positions and counts of a small corpus), so committed artifacts stay small."""
    out = {}
    for k, v in tensors.items():
        if v.dtype == torch.int64 and v.numel():
            lo, hi = int(v.min()), int(v.max())
            if 0 <= lo and hi < 256 and k.endswith("_kind"):
                v = v.to(torch.uint8)
            elif -2**31 <= lo and hi < 2**31:
                v = v.to(torch.int32)
        out[k] = v.contiguous()
    return out


def _finite(x: float) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def col_lid(col: Collector, g: int) -> tuple[int, int]:
    for layer in reversed(col.layers):
        if g >= col.offsets[layer]:
            return layer, g - col.offsets[layer]
    raise ConfigError(f"feature {g} out of range")


def _fid(col: Collector, g: int) -> str:
    layer, i = col_lid(col, g)
    return f"{layer}:{i}"


def _best(r: dict[str, Any], col: Collector) -> dict[str, Any]:
    """The feature chosen on split 0 (highest AUROC) with its AUROC on split 1 and the
    share of split 1's positives and negatives it fires on, and the top features of
    split 0 with both AUROCs."""
    sel, rep = r["auroc"][0], r["auroc"][1]
    if not np.isfinite(sel).any():
        return {}
    s = np.where(np.isfinite(sel), sel, -np.inf)
    order = np.argsort(-s, kind="stable")[:RANKING_SIZE]
    g = int(order[0])
    return {"best": {"g": g, "id": _fid(col, g), "select_auroc": float(sel[g]),
                     "eval_auroc": _finite(rep[g]),
                     "eval_pos_rate": _finite(r["pos_rate"][1, g]),
                     "eval_neg_rate": _finite(r["neg_rate"][1, g])},
            "ranking": [{"g": int(i), "id": _fid(col, int(i)), "select_auroc": float(sel[i]),
                         "eval_auroc": _finite(rep[i])} for i in order]}


# ------------------------------------------------------------------ save
def artifact_config(source: FeatureSource, corpus: Corpus, cfg: CollectConfig,
                    ablation: str) -> dict[str, Any]:
    return {"source": {"kind": source.kind, "key": source.key}, "corpus": corpus.spec,
            "collect": cfg.identity(), "ablation": ablation}


def collect_features(source: FeatureSource, corpus: Corpus, cfg: CollectConfig | None = None,
                     store: Store | None = None, checkpoint_dir: str | Path | None = None,
                     progress: Callable[..., None] | None = None, ablation: str = "top",
                     ablation_top: int = 64, ranks: Any = None) -> Artifact | None:
    """Collect, finalise and save a ``features`` artifact (module docstring).

    Under torchrun (``ranks``, default this process's) each rank streams its block of
    whole batches (:func:`run_collection` with ``lo``/``hi``; its checkpoints in a
    sub-folder of ``checkpoint_dir`` named by the block) and lands the collector's state
    in the store as a part; the rank that completes the set merges the states in rank
    order (:meth:`Collector.absorb`: the state of one pass), finalises and saves the
    artifact one process saves (:func:`interp.distributed.collect`). Returns it on the
    merging rank (or the only process), None on the others."""
    from .. import distributed as D

    cfg = cfg or CollectConfig()
    store = store or Store()
    ranks = ranks or D.current()

    def work(bounds: D.Bounds) -> D.Part:
        (lo, hi), = bounds
        ck = checkpoint_dir
        if ck is not None and ranks.world > 1:
            ck = Path(ck) / f"seqs-{lo}-{hi}"
        col, timing = run_collection(source, corpus, cfg, ck, progress, lo, hi)
        return D.Part(col.state_tensors(), {"seq_ids": col.seq_ids(), "timing": timing})

    def merge(parts: list[D.Part]) -> D.Part:
        col = merge_states(source, corpus, cfg, [(p.tensors, p.meta["seq_ids"])
                                                 for p in parts])
        tensors, meta, files = finalize(col, source, cfg, corpus.label_names, ablation,
                                        ablation_top, progress)
        tokens = sum(p.meta["timing"]["tokens"] for p in parts)
        seconds = max(p.meta["timing"]["seconds"] for p in parts)
        meta["timing"].update({"collect_seconds": seconds, "collect_tokens": tokens,
                               "tokens_per_s": tokens / seconds if seconds else None})
        meta["source"] = source.describe()
        meta["corpus"] = corpus.spec
        return D.Part(tensors, meta, files=files)

    models = {"source": source.describe()}
    return D.collect(KIND, artifact_config(source, corpus, cfg, ablation), len(corpus), work,
                     merge, store=store, ranks=ranks, align=cfg.batch_size,
                     provenance=provenance(models=models, seed=cfg.seed,
                                           device=str(source.device)))


def merge_states(source: FeatureSource, corpus: Corpus, cfg: CollectConfig,
                 states: Sequence[tuple[dict[str, torch.Tensor], Sequence[str]]]
                 ) -> Collector:
    """One collector holding the states of consecutive shares of the corpus, in order
    (``(state_tensors, seq_ids)`` each): the state one pass over them reaches."""
    from .collect import hesitation_patterns

    n_hes = len(set(hesitation_patterns(source.tokenizer, cfg.hesitation)[1]))
    col = Collector(source.layers, source.d_sae, cfg, list(corpus.label_names), n_hes,
                    source.device)
    for st, ids in states:
        col.absorb(st, ids)
    return col


# ------------------------------------------------------------------ the job
def _store_of(name: str) -> Store:
    from .source import source_stores

    stores = source_stores()
    if name == "demo":
        from ..adapters.report import demo_store

        return demo_store(read_only=False)
    if name not in stores:
        raise ConfigError(f"unknown store {name!r}; choose from {', '.join(stores)}")
    return stores[name]


def collect_job(spec: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """Job ``features.collect``. Spec: ``source`` (see
    :func:`interp.features.source.load_source`), ``corpus`` (see
    :func:`interp.features.corpus.build_corpus`), ``config`` (:class:`CollectConfig`
    fields), ``ablation`` (``none`` | ``top`` | ``all``), ``ablation_top``, ``map``
    (compute the feature map when the source has none: true (UMAP), ``"umap"``,
    ``"pca"`` or false), ``device``,
    ``store`` (``main`` | ``demo``: where the result goes). Checkpoints live in the
    job's folder; submitting the same spec again resumes."""
    validate_spec(spec)
    store = _store_of(spec.get("store", "main"))
    source, corpus, cfg = collect_corpus_source(spec, spec.get("device", "auto"))
    total = [len(corpus)]

    def progress(done: int, n: int, **info: Any) -> None:
        if info.get("stage") == "ablation":
            ctx.progress(total[0] + done, total[0] + n, message="ablation effects")
        else:
            ctx.progress(done, n, message="collecting", **info)

    from .. import distributed as D

    ranks = D.current()
    art = collect_features(source, corpus, cfg, store,
                           Path(ctx.dir) / "checkpoint" if ctx.dir else None, progress,
                           spec.get("ablation", "top"), int(spec.get("ablation_top", 64)),
                           ranks)
    art = D.merged(store, KIND, artifact_config(source, corpus, cfg,
                                                spec.get("ablation", "top")), art, ranks)
    if art is None:      # a rank other than 0: rank 0 reports
        return {}
    out = {"key": art.key, "n_tokens": art.meta["n_tokens"],
           "tokens_per_s": art.meta["timing"]["tokens_per_s"]}
    method = spec.get("map", True)
    if method:
        from .featmap import ensure_map

        m = ensure_map(source, store, "umap" if method is True else str(method))
        out["map_key"] = m.key
    return out


JOB_FIELDS = {"source", "corpus", "config", "ablation", "ablation_top", "map", "device",
              "store"}


def validate_spec(spec: dict[str, Any]) -> None:
    """The ``features.collect`` spec, checked before any model loads: known fields,
    collection settings, and no organism corpus for another pair's source (read from
    the adapters artifact's pair or the transcoders' model)."""
    unknown = set(spec) - JOB_FIELDS
    if unknown:
        raise ConfigError(f"unknown features.collect field(s): {', '.join(sorted(unknown))}")
    CollectConfig.from_dict(spec.get("config"))
    if spec.get("ablation", "top") not in ABLATION_MODES:
        raise ConfigError(f"ablation must be one of {ABLATION_MODES}")
    src = spec.get("source") or {"kind": "adapters", "store": "demo"}
    models: set[str] = set()
    if src.get("kind", "adapters") == "adapters":
        from ..adapters.io import find_adapters
        from .source import source_stores

        stores = source_stores()
        sname = src.get("store", "demo")
        if sname not in stores:
            raise ConfigError(f"unknown store {sname!r}; choose from {', '.join(stores)}")
        art = find_adapters(stores[sname], src.get("key"))
        models = {str(v.get("id")) for v in (art.meta.get("pair") or {}).values()
                  if isinstance(v, dict) and v.get("id")}
    elif src.get("model"):
        models = {str(src["model"])}
    check_corpus_fits(models, spec.get("corpus") or {"kind": "organism"})


def collect_corpus_source(spec: dict[str, Any], device: str = "auto"
                          ) -> tuple[FeatureSource, Corpus, CollectConfig]:
    """Source, corpus and settings of a job spec (CLI, bench)."""
    cfg = CollectConfig.from_dict(spec.get("config"))
    source = load_source(spec.get("source") or {"kind": "adapters", "store": "demo"}, device)
    cspec = spec.get("corpus") or {"kind": "organism"}
    check_corpus_fits(source_models(source), cspec)
    corpus = build_corpus(cspec, source.tokenizer, cfg.max_len)
    if corpus.spec.get("kind") == "traceset":
        made = corpus.spec.get("weight_hash")
        mine = source_hashes(source)
        if made and mine and made not in mine:
            raise ConfigError(
                f"trace set {corpus.spec['key']} was made with {corpus.spec.get('model')}, "
                f"not with the model(s) this {source.kind} source reads "
                f"({', '.join(sorted(source_models(source)))})")
    return source, corpus, cfg


def source_models(source: FeatureSource) -> set[str]:
    """The model specs a source reads (an adapter set: its pair)."""
    d = source.describe()
    if d.get("kind") == "adapters":
        return {str(v) for v in (d.get("pair") or {}).values() if v}
    return {str(d["model"])} if d.get("model") else set()


def source_hashes(source: FeatureSource) -> set[str]:
    d = source.describe()
    if d.get("kind") == "adapters":
        return {str(v) for v in (d.get("pair_hashes") or {}).values() if v}
    return {str(d["weight_hash"])} if d.get("weight_hash") else set()


def check_corpus_fits(models: set[str], cspec: dict[str, Any]) -> None:
    """ConfigError when the organisms' corpus (their traces and planted labels) is asked
    of a source whose ``models`` do not read the organisms' format."""
    from ..tasks import speaks_organism

    if cspec.get("kind", "organism") != "organism":
        return
    others = sorted(m for m in models if not speaks_organism(m))
    if others:
        raise ConfigError(
            f"the organism corpus only runs on the organism models, not on "
            f"{', '.join(others)}: collect over a trace set of yours (corpus "
            '{"kind": "traceset", "key": KEY}, `features collect --traces KEY`) or a '
            "text / JSONL file")
