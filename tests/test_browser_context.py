"""One model context in headless Chromium: the sidebar pair drives every page and a
link pins the run it shows.

* Adapters: the run in detail is written into the URL on the first render (also the
  default); choosing another run and reloading shows that run; a link without a run
  key shows the same stable run (the committed one), not the newest.
* Reasoning vectors: the task vector is the sidebar pair's fine − base; choosing
  another fine-tune in the sidebar changes it on the page and in the URL.

The server runs as deployed (``deploy/start.sh``) with a private cache that links the
committed organisms and holds one more adapters run of the organism pair (saved here,
untrained: only its identity matters).
"""

from __future__ import annotations

import urllib.parse

import pytest
import torch

from interp.bench_app import wait_query, wait_rendered

from ._browser import (
    CHART,
    assert_clean,
    chromium,
    needs_chromium,
    needs_organisms,
    open_page,
    organism_cache,
    screenshot,
    serve,
)

pytestmark = [pytest.mark.browser, needs_chromium, needs_organisms]


@pytest.fixture(scope="module")
def extra_run(tmp_path_factory):
    """(cache root, key of a second adapters run of the organism pair)."""
    from interp.adapters.io import save_adapters
    from interp.adapters.train import TrainConfig, setup_models
    from interp.store import Store

    cache = organism_cache(tmp_path_factory.mktemp("context") / "cache")
    cfg = TrainConfig(base="organism:base", reasoner="organism:reasoner", d_sae=16,
                      data="random", max_len=12, device="cpu", steps=3, l1=0.5)
    setup = setup_models(cfg)
    with torch.no_grad():
        for a in setup.model.adapters.layers:
            a.W_dec.normal_(0, 0.1)
    art = save_adapters(setup, cfg, store=Store(cache),
                        history=[{"step": 1, "loss": 1.0, "kl": 0.5}])
    return cache, art.key


@pytest.fixture(scope="module")
def server(extra_run):
    cache, _ = extra_run
    yield from serve({"INTERP_CACHE": str(cache), "INTERP_DEMO": "0"})


@pytest.fixture(scope="module")
def browser():
    yield from chromium()


def _new_page(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    return ctx, ctx.new_page()


def _query(page) -> dict[str, str]:
    return {k: v[0] for k, v in urllib.parse.parse_qs(urllib.parse.urlparse(page.url).query)
            .items()}


def _selectbox(page, label: str):
    return page.locator("[data-testid='stSelectbox']").filter(has_text=label)


def _shown(page, label: str) -> str:
    """The text a selectbox shows (its current choice)."""
    return _selectbox(page, label).get_by_role("combobox").input_value().strip()


def _choose(box, page, option_text: str) -> None:
    """Open the selectbox ``box`` and click its option that contains ``option_text``."""
    field = box.get_by_role("combobox")
    field.click()
    field.fill(option_text)   # the combobox filters its options by what is typed
    page.get_by_role("option").filter(has_text=option_text).first.click(timeout=120_000)


def test_a_link_pins_the_adapters_run(server, browser, extra_run):
    _, key = extra_run
    ctx, page = _new_page(browser)
    try:
        open_page(page, f"{server}/adapters", CHART)
        assert_clean(page)
        first = _query(page).get("run")   # written on the first render, though default
        assert first and first.startswith("demo · ")   # the committed run, not the newest
        assert first.endswith(_shown(page, "Run in detail")[-8:])
        _choose(_selectbox(page, "Run in detail"), page, key[-8:])
        page.wait_for_function(
            "k => decodeURIComponent(location.search.replace(/\\+/g, ' ')).includes(k)",
            arg=key[-8:], timeout=120_000)
        wait_rendered(page, CHART, 180)
        chosen = _query(page)["run"]
        assert chosen.endswith(key[-8:])
        page.reload()
        wait_rendered(page, CHART, 180)
        assert _query(page)["run"] == chosen
        assert _shown(page, "Run in detail").endswith(key[-8:])
        assert_clean(page)
        screenshot(page, "context-adapters-pinned-run")
    finally:
        ctx.close()
    # a link without a run key: the stable choice, written into the URL
    ctx, other = _new_page(browser)
    try:
        open_page(other, f"{server}/adapters", CHART)
        assert _query(other).get("run") == first
    finally:
        ctx.close()


def test_vectors_page_follows_the_sidebar_pair(server, browser):
    ctx, page = _new_page(browser)
    try:
        open_page(page, f"{server}/vectors?base=organism%3Asft&fine=organism%3Agrpo",
                  "span[title^='KL ']")
        assert_clean(page)
        main = page.locator("[data-testid='stMain']")
        assert "v = θ(organism:grpo) − θ(organism:sft) from the sidebar pair" in \
            main.inner_text()
        assert not {"vt", "va", "vb"} & set(_query(page))
        before = page.evaluate("""() => Array.from(document.querySelectorAll(
            'span[title^="KL "]')).map(e => e.getAttribute('title'))""")
        # another fine-tune in the sidebar: the page follows it
        sidebar = page.locator("[data-testid='stSidebar']")
        _choose(sidebar.locator("[data-testid='stSelectbox']").nth(1), page,
                "organism:reasoner")
        wait_query(page, "fine", None)   # the default fine-tune: not in the URL
        wait_rendered(page, "span[title^='KL ']", 180)
        assert "v = θ(organism:reasoner) − θ(organism:sft) from the sidebar pair" in \
            main.inner_text()
        after = page.evaluate("""() => Array.from(document.querySelectorAll(
            'span[title^="KL "]')).map(e => e.getAttribute('title'))""")
        assert after and after != before
        assert_clean(page)
        screenshot(page, "context-vectors-pair")
    finally:
        ctx.close()
