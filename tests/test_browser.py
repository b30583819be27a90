"""The running app in headless Chromium: every page renders, its key interaction works,
its link reproduces the view, and the report zip holds the page's figures and data.

One server per module, started as deployed (``deploy/start.sh``) on a free 127.0.0.1
port, with ``INTERP_CACHE`` pointed at a temp folder that links the committed organisms
(read-only use; the committed demo results are read from the project's cache/demo).
Waits are on the page's own state (the script finished, the URL holds the new value,
the expected elements exist), never on fixed sleeps. Screenshots of every page go to
``$SCREENSHOT_DIR`` (default ``out/screenshots/``, git-ignored), which the run leaves
behind. The server is always stopped.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest

from interp.app_load import CHART_TITLES_JS, KL_TITLES_JS, option
from interp.bench_app import models_url, wait_query, wait_rendered

from ._browser import (
    CHART,
    PAGES,
    assert_clean,
    chromium,
    needs_chromium,
    needs_organisms,
    open_page,
    organism_cache,
    screenshot,
    serve,
)

pytestmark = [pytest.mark.browser, needs_chromium]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    cache = organism_cache(tmp_path_factory.mktemp("browser") / "cache")
    yield from serve({"INTERP_CACHE": str(cache), "INTERP_DEMO": "0"})


@pytest.fixture(scope="module")
def browser():
    yield from chromium()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000},
                              accept_downloads=True)
    try:
        yield ctx.new_page()
    finally:
        ctx.close()


# ------------------------------------------------------------------ tiny pair (first request)
def test_models_page_from_a_deep_link(server, page, tiny_pair_dirs):
    """The first request of a fresh server is a deep link to /models with a pair of
    local checkpoints and generations in the URL."""
    base, fine = tiny_pair_dirs
    port = int(server.rsplit(":", 1)[1])
    open_page(page, models_url(port, str(base), str(fine)) + "&gen=1&max_new=12", CHART)
    # the two generations are there once the script has finished (not a race)
    gens = page.locator("[data-testid='stColumn'] [data-testid='stCode']")
    assert gens.count() == 2
    assert page.get_by_text("new tokens ·").count() == 2
    assert_clean(page)
    assert page.locator(CHART).count() == 3   # by module, by block, by head
    assert page.locator("[data-testid='stSidebar']").is_visible()  # app.py ran: sidebar
    assert page.locator("[data-testid='stDownloadButton']").count() >= 10
    screenshot(page, "models-tiny-pair")
    # the export buttons produce their files on click (deferred downloads)
    for label, magic in (("PNG", b"\x89PNG"), ("HTML", b"<!DOCTYPE html"),
                         ("CSV data", b"layer,")):
        with page.expect_download(timeout=120_000) as info:
            page.get_by_role("button", name=label, exact=True).first.click()
        data = Path(info.value.path()).read_bytes()
        assert data[:len(magic)].lower() == magic.lower(), (label, data[:40])
    # the URL keeps the view: change the measure, reload, same view
    option(page, "absolute change ‖Δθ‖").click()
    wait_query(page, "metric", "delta_norm")
    page.reload()
    wait_rendered(page, CHART, 180)
    assert page.get_by_role("radio", name="absolute change ‖Δθ‖", exact=True).is_checked()
    assert gens.count() == 2  # gen=1 in the URL: the generations come back too


# ------------------------------------------------------------------ every page
@needs_organisms
@pytest.mark.parametrize("name", list(PAGES))
def test_every_page_renders(server, page, name):
    path, ready = PAGES[name]
    open_page(page, f"{server}/{path}", ready)
    assert_clean(page)
    assert page.locator("h1").count() == 1
    # the sidebar's report button is on every page
    assert page.get_by_role("button", name="Download report (zip)").count() == 1
    screenshot(page, f"page-{name}")


def _same_view(browser, url: str, ready: str, probe) -> None:
    """Open ``url`` in a fresh browser context (a new session) and compare ``probe``."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        other = ctx.new_page()
        open_page(other, url, ready)
        assert_clean(other)
        return probe(other)
    finally:
        ctx.close()


@needs_organisms
def test_models_generate_and_link(server, browser, page):
    open_page(page, f"{server}/models?max_new=16", CHART)
    page.get_by_role("button", name="Generate").click()
    wait_query(page, "gen", "1")
    gens = page.locator("[data-testid='stColumn'] [data-testid='stCode']")
    texts = gens.all_inner_texts()
    assert len(texts) == 2 and all(t.strip() for t in texts)
    assert_clean(page)
    screenshot(page, "interaction-models-generate")
    assert _same_view(browser, page.url, CHART, lambda p: p.locator(
        "[data-testid='stColumn'] [data-testid='stCode']").all_inner_texts()) == texts


@needs_organisms
@pytest.mark.parametrize("name, key, label, value", [
    ("adapters", "term", "l0", "l0"),
    ("length", "ltab", "Heads", "Heads"),
])
def test_view_switch_and_link(server, browser, page, name, key, label, value):
    open_page(page, f"{server}/{name}", CHART)
    before = page.evaluate(CHART_TITLES_JS)
    option(page, label).click()
    wait_query(page, key, value)
    after = page.evaluate(CHART_TITLES_JS)
    assert after and after != before  # the view changed
    assert_clean(page)
    screenshot(page, f"interaction-{name}-{value}")

    def probe(p):
        assert p.get_by_role("radio", name=label, exact=True).is_checked()
        return p.evaluate(CHART_TITLES_JS)

    assert _same_view(browser, page.url, CHART, probe) == after


@needs_organisms
def test_vectors_alpha_step_and_link(server, browser, page):
    open_page(page, f"{server}/vectors?valpha=0.5", "span[title^='KL ']")
    before = page.evaluate(KL_TITLES_JS)
    slider = page.locator("[data-testid='stSlider'] input[type='range']").first
    slider.focus()
    slider.press("ArrowRight")
    wait_query(page, "valpha", "0.75")
    page.get_by_text("One trace at α = 0.75").wait_for()
    after = page.evaluate(KL_TITLES_JS)
    assert after and after != before and len(after) == len(before)  # same trace, new α
    assert_clean(page)
    screenshot(page, "interaction-vectors-alpha")
    assert _same_view(browser, page.url, "span[title^='KL ']",
                      lambda p: p.evaluate(KL_TITLES_JS)) == after


@needs_organisms
def test_home_links_to_models(server, page):
    open_page(page, f"{server}/", "text=Start here")
    page.get_by_role("link", name="Models: weight differences").click()
    page.wait_for_url("**/models**", timeout=60_000)
    wait_rendered(page, CHART, 180)
    assert page.locator("h1").inner_text() == "Models"


@needs_organisms
def test_report_zip_has_the_page(server, page):
    """The sidebar's report zip on the Reasoning length page (Direction view): every
    figure as HTML (+ PNG/SVG with Chromium) and its data, the link with the view."""
    open_page(page, f"{server}/length?ltab=Direction", CHART)
    n_charts = page.locator(CHART).count()
    with page.expect_download(timeout=180_000) as info:
        page.get_by_role("button", name="Download report (zip)").click()
    z = zipfile.ZipFile(io.BytesIO(Path(info.value.path()).read_bytes()))
    names = set(z.namelist())
    manifest = json.loads(z.read("report.json"))
    assert manifest["errors"] == {}
    assert manifest["page"] == "Reasoning length"
    assert "ltab=Direction" in manifest["link"] and manifest["link"].startswith(server)
    html = sorted(n for n in names if n.endswith(".html"))
    assert len(html) == n_charts == 2
    for h in html:
        stem = h[:-5]
        assert {f"{stem}.png", f"{stem}.svg", f"{stem}.csv", f"{stem}.json"} <= names
        assert z.read(f"{stem}.png")[:4] == b"\x89PNG"
    assert "plotly.min.js" in names
