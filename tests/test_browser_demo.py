"""The hosted demo in headless Chromium: every page says what the demo allows, training
is refused, other models are refused, and four sessions at once (the key interaction of
four pages) get their own results without errors.

The server runs as the Docker image runs it: ``deploy/start.sh`` with
``INTERP_CONFIG=deploy/demo.toml`` (plus a private cache linking the organisms). The
32-session load test is ``python -m interp bench app-latency`` (not part of the default
run); this is the same code with 4 sessions.
"""

from __future__ import annotations

import pytest

from interp import app_load
from interp.bench_app import CHROMIUM_ARGS

from ._browser import (
    CHROMIUM,
    PAGES,
    assert_clean,
    needs_chromium,
    needs_organisms,
    open_page,
    organism_cache,
    screenshot,
    screenshot_dir,
    serve,
)

pytestmark = [pytest.mark.browser, needs_chromium, needs_organisms]


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory):
    cache = organism_cache(tmp_path_factory.mktemp("demo") / "cache")
    yield from serve({"INTERP_CACHE": str(cache), "INTERP_CONFIG": "deploy/demo.toml",
                      "INTERP_DEMO": "1"})


def test_demo_pages_say_what_they_allow_and_refuse_training(demo_server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:  # closed before the asyncio load test below
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            for name, (path, ready) in PAGES.items():
                open_page(page, f"{demo_server}/{path}", ready)
                assert_clean(page)
                main = page.locator("[data-testid='stMain']").inner_text()
                lines = [ln for ln in main.splitlines() if "Hosted demo:" in ln]
                assert len(lines) == 1, main[:500]
                screenshot(page, f"demo-{name}")
                if name == "adapters":
                    assert "training and evaluation are off" in lines[0]
                    assert page.get_by_text("Train", exact=True).count() == 0
                    assert page.get_by_role("button", name="Start training").count() == 0
                if name == "length":
                    assert "new runs and edits are off" in lines[0]
                    assert page.get_by_text("New run", exact=True).count() == 0
                if name == "vectors":
                    assert page.get_by_role("button", name="Run sweep").count() == 0
            # a link naming another model loads the organisms instead, and says so
            open_page(page, f"{demo_server}/models?base=/etc&fine=Qwen/Qwen2.5-0.5B",
                      "[data-testid='stPlotlyChart']")
            side = page.locator("[data-testid='stSidebar']").inner_text()
            assert "/etc is not available in the hosted demo" in side
            assert "Qwen/Qwen2.5-0.5B is not available in the hosted demo" in side
            assert page.get_by_text("Other…").count() == 0
            screenshot(page, "demo-refuses-other-models")
        finally:
            browser.close()


def test_four_sessions_at_once(demo_server):
    """One session per key interaction (generation, α step, view switch, term switch),
    all at the same time: no errors, and each result equals the same computation done
    apart from the app (generations and KL traces) or alone (views, terms)."""
    r = app_load.load_test(demo_server, 4, CHROMIUM, CHROMIUM_ARGS,
                           screenshots=str(screenshot_dir()), offset=100)
    print({k: v for k, v in r.items() if k != "problems"})
    assert r["problems"] == []
    assert r["errors"] == 0 and r["cross_talk"] == 0
    assert r["p95_interaction_seconds"] is not None
