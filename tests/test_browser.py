"""The running app in headless Chromium: the Models page renders with a tiny pair.

Starts ``streamlit run app.py`` on a free port (INTERP_CACHE pointed at a temp folder),
opens the Models page from a link with the pair in the URL, waits until Streamlit has
finished rendering, checks the page, and saves screenshots to ``$SCREENSHOT_DIR``
(default: pytest's temp folder). The server is always stopped.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from interp.bench_app import (
    CHROMIUM_ARGS,
    app_log,
    free_port,
    models_url,
    start_app,
    stop_app,
    wait_healthy,
)
from interp.bench_app import wait_rendered as wait_idle

CHROMIUM = "/usr/bin/chromium"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"Chromium not installed at {CHROMIUM} "
                              "(apt-get install -y chromium)"),
]


@pytest.fixture
def server(tmp_cache):
    port = free_port()
    proc = start_app(port, {"INTERP_CACHE": str(tmp_cache)})
    try:
        wait_healthy(port, proc)
        yield port, proc
    finally:
        print("--- streamlit log (tail) ---\n" + app_log(proc))  # shown when a test fails
        stop_app(proc)


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _goto(page, url: str) -> None:
    page.goto(url, timeout=60_000)


def _screenshot(page, path: Path, height: int = 2600) -> None:
    """Whole page: Streamlit scrolls inside its own container, so grow the viewport."""
    page.set_viewport_size({"width": 1400, "height": height})
    wait_idle(page, "h1")
    page.screenshot(path=str(path))
    page.set_viewport_size({"width": 1400, "height": 1000})


def _shots(tmp_path) -> Path:
    d = Path(os.environ.get("SCREENSHOT_DIR") or tmp_path)
    d.mkdir(parents=True, exist_ok=True)
    return d


def test_models_page_renders(server, browser, tiny_pair_dirs, tmp_path):
    port, _ = server
    base, fine = tiny_pair_dirs
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    # the very first request of a fresh server is a deep link to /models
    _goto(page, models_url(port, str(base), str(fine)) + "&gen=1&max_new=12")
    wait_idle(page, "[data-testid='stPlotlyChart']")
    body = page.inner_text("body")
    assert "Models" in body and "Where the weights moved" in body
    assert "Traceback" not in body and "Error" not in body
    assert page.locator("[data-testid='stPlotlyChart']").count() == 2
    assert page.locator("[data-testid='stSidebar']").is_visible()  # app.py ran: sidebar
    assert page.locator("[data-testid='stCode']").count() >= 2  # the two generations
    assert page.locator("[data-testid='stDownloadButton']").count() >= 10
    shots = _shots(tmp_path)
    _screenshot(page, shots / "models_page.png")
    # the export buttons produce their files on click (deferred downloads)
    for label, magic in (("PNG", b"\x89PNG"), ("HTML", b"<!DOCTYPE html"),
                         ("CSV data", b"layer,")):
        with page.expect_download(timeout=60_000) as info:
            page.get_by_role("button", name=label, exact=True).first.click()
        data = Path(info.value.path()).read_bytes()
        assert data[:len(magic)].lower() == magic.lower(), (label, data[:40])
    # the URL keeps the view: change the measure, reload, same view
    page.get_by_text("absolute change").click()
    page.wait_for_function("() => location.search.includes('metric=delta_norm')")
    wait_idle(page, "[data-testid='stPlotlyChart']")
    page.reload()
    wait_idle(page, "[data-testid='stPlotlyChart']")
    assert page.locator("input[type=radio]").nth(1).is_checked()
    assert "metric=delta_norm" in page.url
    _screenshot(page, shots / "models_page_absolute.png")


def test_home_without_models(server, browser, tmp_path):
    port, _ = server
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    _goto(page, f"http://127.0.0.1:{port}/")
    wait_idle(page, "h1")
    body = page.inner_text("body")
    assert "python -m interp organisms build" in body
    assert "Traceback" not in body
    _screenshot(page, _shots(tmp_path) / "home_no_models.png", height=900)
