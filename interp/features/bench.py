"""``python -m interp bench features-collect``: collection throughput vs a plain forward.

Both sides run over the same token sequences (organism reasoner traces, built once
before timing; data generation is not timed), in the same batches:

* **forward**: pad each batch and run the source's model forward (the adapter model:
  hybrid + adapters, logits included);
* **collect**: :func:`interp.features.collect.run_collection` (batching, the forward
  pass without the unembedding, and every streaming statistic: top-k, reservoir,
  histogram, regions, hesitation windows, labelled activations; no checkpoints).

The two are interleaved ``repeats`` times (>= 3) so that load on a shared machine hits
both alike; the output has the median and the spread (min, max) of each and
``ratio = collect_tokens_per_s / forward_tokens_per_s`` (of the medians). The
finalisation (AUROCs, logit lens, example activations) is timed once and reported
apart. Without ``--quick`` it also times the Features page (Streamlit AppTest, demo
artifacts): the first run and the slowest of several cached interactions.

The source is the committed demo adapter set when the organisms are built; otherwise
random adapters on a tiny random pair (said in the output).
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

import torch


def _source(device: str):
    from ..adapters.report import demo_adapters
    from ..errors import InterpError
    from .source import AdapterSource

    try:
        return AdapterSource.from_artifact(demo_adapters(), device), None
    except InterpError:
        return _random_source(device), "random adapters on a tiny random pair (organisms " \
                                       "or the demo adapter set missing)"


def _random_source(device: str):
    import tempfile
    from pathlib import Path

    from ..adapters.model import AdapterModel, build_hybrid
    from ..adapters.module import AdapterSet
    from ..bench_app import make_tiny_pair
    from ..models import load_model
    from .source import AdapterSource

    tmp = Path(tempfile.mkdtemp(prefix="features-bench-"))
    b, f = make_tiny_pair(tmp)
    base, fine = load_model(str(b), device=device), load_model(str(f), device=device)
    ad = AdapterSet(fine.cfg.n_layers, fine.cfg.d_model, 4 * fine.cfg.d_model, seed=0)
    with torch.no_grad():
        for a in ad.layers:
            a.W_dec.normal_(0, 0.05)
            a.b_enc.fill_(-0.3)
    model = AdapterModel(build_hybrid(base, fine), fine, ad.to(fine.device)).eval()

    class _Art:
        key = "random-adapters"
        meta: dict = {}
        config: dict = {}

    return AdapterSource(_Art(), model, base, fine)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def forward_pass(source, items, batch_size: int, max_len: int) -> tuple[int, float]:
    """``(tokens, seconds)`` of padding + a full forward pass over ``items``."""
    from .collect import iter_batches

    pad = getattr(source.tokenizer, "pad_token_id", None) or 0
    n_tok, t0 = 0, time.perf_counter()
    for _, chunk in iter_batches(items, batch_size):
        lens = [min(len(it.ids), max_len) for it in chunk]
        toks = torch.full((len(chunk), max(lens)), pad, dtype=torch.long)
        for i, (it, n) in enumerate(zip(chunk, lens)):
            toks[i, :n] = torch.as_tensor(it.ids[:n])
        source.forward(toks.to(source.device))
        n_tok += sum(lens)
    _sync(source.device)
    return n_tok, time.perf_counter() - t0


def page_latency(repeats: int = 3) -> dict[str, Any]:
    """The Features page in AppTest on the demo artifacts: first run, then cached
    interactions (change the colouring, open a feature by id, switch back), each
    timed until the rerun finished; the slowest interaction of each of ``repeats``
    rounds."""
    import os

    from streamlit.testing.v1 import AppTest

    from ..store import PROJECT_ROOT

    os.environ["INTERP_DEMO"] = "1"
    at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=300)
    at.switch_page("pages/features.py")
    t0 = time.perf_counter()
    at.run()
    first = time.perf_counter() - t0
    if at.exception:
        return {"page_error": str(at.exception[0].value)}
    rounds = []
    for _ in range(repeats):
        times = []
        for action in (lambda: at.selectbox(key="fcol").set_value("density"),
                       lambda: at.text_input(key="fq").set_value("2:5"),
                       lambda: at.selectbox(key="fcol").set_value("layer"),
                       lambda: at.text_input(key="fq").set_value("")):
            action()
            t = time.perf_counter()
            at.run()
            times.append(time.perf_counter() - t)
            if at.exception:
                return {"page_error": str(at.exception[0].value)}
        rounds.append(max(times))
    return {"page_first_run_seconds": first,
            "page_cached_interaction_seconds": statistics.median(rounds),
            "page_cached_interaction_max_seconds": max(rounds),
            "page_interactions_per_round": 4}


def bench_features_collect(args) -> dict[str, Any]:
    from .collect import CollectConfig, run_collection
    from .corpus import Corpus, organism_corpus
    from .pipeline import finalize

    quick = bool(getattr(args, "quick", False))
    source, note = _source(getattr(args, "device", "auto"))
    n, repeats = (256, 3) if quick else (1024, 3)
    corpus = organism_corpus(n, seed=0)
    items = list(corpus)  # generated once; not timed
    fixed = Corpus(lambda: iter(items), corpus.spec, len(items), corpus.label_names)
    cfg = CollectConfig(batch_size=128)
    forward_pass(source, items[:256], cfg.batch_size, cfg.max_len)  # warm-up
    run_collection(source, Corpus(lambda: iter(items[:256]), corpus.spec, 256,
                                  corpus.label_names), cfg)
    fwd, col_t = [], []
    last = None
    for r in range(repeats):
        n_tok, s = forward_pass(source, items, cfg.batch_size, cfg.max_len)
        fwd.append(n_tok / s)
        last, timing = run_collection(source, fixed, cfg)
        _sync(source.device)
        col_t.append(timing["tokens_per_s"])
        print(f"[features-collect] round {r + 1}: forward {fwd[-1]:.0f} tok/s, "
              f"collect {col_t[-1]:.0f} tok/s", file=sys.stderr)
    t = time.perf_counter()
    finalize(last, source, cfg, fixed.label_names, ablation="none")
    fin = time.perf_counter() - t
    out: dict[str, Any] = {
        "collect_tokens_per_s": statistics.median(col_t),
        "forward_tokens_per_s": statistics.median(fwd),
        "ratio": statistics.median(col_t) / statistics.median(fwd),
        "collect_tokens_per_s_spread": [min(col_t), max(col_t)],
        "forward_tokens_per_s_spread": [min(fwd), max(fwd)],
        "ratios_per_round": [c / f for c, f in zip(col_t, fwd)],
        "repeats": repeats, "n_sequences": n, "n_tokens": n_tok,
        "seconds_per_region": s, "batch_size": cfg.batch_size,
        "finalize_seconds": fin, "n_features": source.n_features,
        "source": source.key if note is None else note,
        "device": str(source.device), "target_ratio": 0.8,
        "target_met": statistics.median(col_t) / statistics.median(fwd) >= 0.8,
    }
    if not quick:
        out.update(page_latency())
    return out
