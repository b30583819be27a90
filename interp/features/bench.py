"""``python -m interp bench features-collect``: collection throughput vs a plain forward.

Both sides run over the same token sequences (organism reasoner traces, built once
before timing; data generation is not timed), in the same batches:

* **forward**: pad each batch and run the source's model forward (the adapter model:
  hybrid + adapters, logits included);
* **collect**: :func:`interp.features.collect.run_collection` (batching, the features'
  forward pass, and every streaming statistic: top-k, reservoir, histogram, regions,
  hesitation windows, labelled activations; no checkpoints). Its forward pass computes
  what collection reads: it stops at the last layer's encoder (no unembedding, no last
  MLP output).

The two are interleaved per batch: after each batch of the collection (from its progress
callback, outside the collection's own timing) the plain forward runs over the same
batch. The load of a shared machine changes over seconds, and a batch takes about 0.15 s,
so both sides see the same load. A run over the corpus is repeated ``repeats`` times (>=
3); the output has the median and the spread (min, max) of each side and of the per-run
ratio, and ``ratio = collect_tokens_per_s / forward_tokens_per_s`` (of the medians). The
finalisation (AUROCs, logit lens, example activations) is timed once and reported
apart. Without ``--quick`` it also times the Features page in headless Chromium (demo
mode, committed artifacts): the first render and cached interactions (:func:`page_latency`).

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


# in the page: the time of the user's input (a click, or Enter in a text box), and the
# first animation frame at which the page shows the action's result and has settled
_INPUT_JS = """() => {
  window.__t0 = null;
  if (window.__armed) return;
  window.__armed = true;
  const mark = e => { if (window.__t0 === null && (e.type === 'click' || e.key === 'Enter'))
    window.__t0 = performance.now(); };
  document.addEventListener('click', mark, true);
  document.addEventListener('keydown', mark, true);
}"""
_DONE_JS = """([settled, result, arg]) => {
  const ok = window.__t0 !== null && new Function('arg', result)(arg)
    && new Function(settled)();
  if (ok) window.__t1 = performance.now();
  return ok;
}"""


def _body(js: str) -> str:
    """The body of a ``() => {...}`` / ``() => expr`` snippet, for ``new Function``."""
    rest = js.split("=>", 1)[1].strip()
    return rest[1:-1] if rest.startswith("{") else f"return ({rest});"


def page_latency(rounds: int = 3, chromium: str = "/usr/bin/chromium") -> dict[str, Any]:
    """The Features page on the demo artifacts (hosted-demo mode) in headless Chromium:
    the first render from launch, then rounds of cached interactions (colour by density,
    open a feature by typing its id, click a point of the map, colour by layer). A first
    round fills the app's caches (its times are reported apart); ``rounds`` more are
    timed.

    Each interaction is timed in the page, from the user's input event (the click, or the
    Enter that submits the id) to the first animation frame at which the page shows the
    result and the rerun is over (``page_cached_interaction_seconds``, per round the
    slowest). The same interaction timed around the browser driver's calls (which add
    the driver's own checks and polling) is reported as ``…_driver``."""
    import json
    import os

    from ..app_load import SETTLED_JS
    from ..bench_app import (
        CHROMIUM_ARGS,
        free_port,
        start_app,
        stop_app,
        wait_healthy,
        wait_rendered,
    )

    if not os.path.exists(chromium):
        return {"page_note": f"no Chromium at {chromium}; page latency not measured"}
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return {"page_note": "playwright is not installed; page latency not measured"}
    port = free_port()
    t0 = time.perf_counter()
    proc = start_app(port, {"INTERP_DEMO": "1"})
    chart = "[data-testid='stPlotlyChart']"
    settled = _body(SETTLED_JS)
    chart_has = (f"const c = document.querySelector({json.dumps(chart)});"
                 "return !!c && c.textContent.includes(arg);")
    heading = ("[...document.querySelectorAll('h3')].map(e => e.innerText)"
               ".find(t => t.startsWith('Feature')) || ''")
    try:
        wait_healthy(port, proc)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1200})
                page.goto(f"http://127.0.0.1:{port}/features?feat=3:81", timeout=120_000)
                wait_rendered(page, chart)
                first = time.perf_counter() - t0

                def done(result: str, arg: str) -> None:
                    page.wait_for_function(_DONE_JS, arg=[settled, result, arg],
                                           polling="raf", timeout=60_000)

                def colour(name: str, expect: str) -> None:
                    page.locator(".st-key-fcol").get_by_text(name, exact=True).click()
                    done(chart_has, expect)

                def submit_search(text: str) -> None:
                    box = page.get_by_label("Search: feature id (2:17) or a token")
                    box.fill(text)
                    box.press("Enter")

                def search(text: str) -> None:
                    submit_search(text)
                    done(f"return ({heading}).startsWith('Feature ' + arg);", text)

                def click_point() -> None:
                    before = page.evaluate(f"() => {heading}")
                    pts = page.locator(chart).first.locator(".scatterlayer .trace .points path")
                    pts.nth(7).wait_for(state="visible", timeout=30_000)
                    bb = pts.nth(7).bounding_box()
                    x, y = bb["x"] + bb["width"] / 2, bb["y"] + bb["height"] / 2
                    page.mouse.move(x - 20, y - 20)
                    page.mouse.move(x, y, steps=5)
                    page.mouse.click(x, y)
                    done(f"const h = {heading}; return h !== '' && h !== arg;", before)

                actions = [lambda: colour("density", "log10 density"), lambda: search("2:5"),
                           click_point, lambda: colour("layer", "layer 0")]
                rounds_max, all_times, driver, warm = [], [], [], []
                for r in range(rounds + 1):
                    times = []
                    for act in actions:
                        page.evaluate(_INPUT_JS)
                        t = time.perf_counter()
                        act()
                        driver.append(time.perf_counter() - t)
                        times.append(page.evaluate("() => (window.__t1 - window.__t0) / 1000"))
                    submit_search("")
                    page.wait_for_timeout(100)
                    wait_rendered(page, chart)
                    if r == 0:   # the first round fills the app's caches: not counted
                        warm, driver = times, []
                        print("[features-collect] first interactions (uncached, not "
                              "counted) (s): " + ", ".join(f"{x:.2f}" for x in times),
                              file=sys.stderr)
                        continue
                    rounds_max.append(max(times))
                    print("[features-collect] page interactions (s): "
                          + ", ".join(f"{x:.2f}" for x in times)
                          + " (with the driver: "
                          + ", ".join(f"{x:.2f}" for x in driver[-len(actions):]) + ")",
                          file=sys.stderr)
                    all_times += times
            finally:
                browser.close()
    finally:
        stop_app(proc)
    return {"page_first_render_seconds": first,
            "page_cached_interaction_seconds": statistics.median(all_times),
            "page_max_cached_interaction_seconds": max(rounds_max),
            "page_slowest_per_round": rounds_max,
            "page_first_interactions_seconds": warm,
            "page_cached_interaction_seconds_driver": statistics.median(driver),
            "page_max_cached_interaction_seconds_driver": max(driver),
            "page_interactions": "colour by density, open 2:5 by id, click a map point, "
                                 "colour by layer (headless Chromium, demo mode; from the "
                                 "input event to the rendered, settled result)"}


def bench_features_collect(args) -> dict[str, Any]:
    from .collect import CollectConfig, run_collection
    from .corpus import Corpus, organism_corpus
    from .pipeline import finalize

    quick = bool(getattr(args, "quick", False))
    source, note = _source(getattr(args, "device", "auto"))
    n, repeats = (256, 3) if quick else (4096, 5)
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
        plain = {"done": 0, "tokens": 0, "seconds": 0.0}

        def then_forward(done: int, total: int, plain: dict = plain, **_) -> None:
            # the plain forward over the batch the collection has just taken in
            n, sec = forward_pass(source, items[plain["done"]:done], cfg.batch_size,
                                  cfg.max_len)
            plain["done"], plain["tokens"], plain["seconds"] = \
                done, plain["tokens"] + n, plain["seconds"] + sec

        last, timing = run_collection(source, fixed, cfg, progress=then_forward)
        _sync(source.device)
        n_tok, s = plain["tokens"], plain["seconds"]
        if n_tok != timing["tokens"]:
            raise RuntimeError(f"the two sides read {n_tok} and {timing['tokens']} tokens")
        fwd.append(n_tok / s)
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
        "interleaving": "per batch",
        "repeats": repeats, "n_sequences": n, "n_tokens": n_tok,
        "forward_seconds_per_run": s, "batch_size": cfg.batch_size,
        "finalize_seconds": fin, "n_features": source.n_features,
        "source": source.key if note is None else note,
        "device": str(source.device), "target_ratio": 0.8,
        "target_met": statistics.median(col_t) / statistics.median(fwd) >= 0.8,
    }
    if not quick:
        out.update(page_latency())
    return out
