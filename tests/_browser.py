"""Shared pieces of the browser tests: the served app, waits, checks, screenshots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from interp.app_load import PROBLEMS_JS
from interp.bench_app import app_log, free_port, start_app, stop_app, wait_healthy, wait_rendered
from interp.store import PROJECT_ROOT

CHROMIUM = "/usr/bin/chromium"
ORGANISMS = PROJECT_ROOT / "cache" / "organisms"
CHART = "[data-testid='stPlotlyChart']"
PAGES = {  # name -> (path, what shows that it rendered)
    "home": ("", "text=Start here"),
    "models": ("models", CHART),
    "adapters": ("adapters", CHART),
    "length": ("length", CHART),
    "vectors": ("vectors", "span[title^='KL ']"),
}
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                    reason=f"Chromium not installed at {CHROMIUM} "
                                           "(apt-get install -y chromium)")
needs_organisms = pytest.mark.skipif(not (ORGANISMS / "reasoner" / "config.json").exists(),
                                     reason="the committed organisms are missing")


def screenshot_dir() -> Path:
    d = Path(os.environ.get("SCREENSHOT_DIR") or PROJECT_ROOT / "out" / "screenshots")
    d.mkdir(parents=True, exist_ok=True)
    return d


def organism_cache(root: Path) -> Path:
    """A private cache folder with the committed organisms linked in."""
    root.mkdir(parents=True, exist_ok=True)
    if ORGANISMS.exists():
        (root / "organisms").symlink_to(ORGANISMS, target_is_directory=True)
    return root


def serve(env: dict[str, str]):
    port = free_port()
    proc = start_app(port, env)
    try:
        wait_healthy(port, proc, timeout_s=180)
        yield f"http://127.0.0.1:{port}"
    finally:
        print("--- streamlit log (tail) ---\n" + app_log(proc))  # shown when a test fails
        stop_app(proc)


def open_page(page, url: str, ready: str = "h1") -> None:
    page.goto(url, timeout=180_000)
    wait_rendered(page, ready, 180)


def assert_clean(page) -> None:
    """No exception box and no error message on the page."""
    problems = page.evaluate(PROBLEMS_JS)
    assert problems == [], problems
    assert "Traceback" not in page.inner_text("body")


def screenshot(page, name: str, height: int = 2600) -> Path:
    """The whole page: Streamlit scrolls inside its own container, so grow the viewport."""
    path = screenshot_dir() / f"{name}.png"
    page.set_viewport_size({"width": 1400, "height": height})
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stSkeleton\"]')")
    page.screenshot(path=str(path))
    page.set_viewport_size({"width": 1400, "height": 1000})
    return path


def chromium():
    """Headless Chromium for a module's tests: ``yield from chromium()`` in a fixture."""
    from interp.bench_app import CHROMIUM_ARGS

    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
