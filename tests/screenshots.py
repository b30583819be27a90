"""Full-page screenshots of every page of the running app:
``.venv/bin/python -m tests.screenshots OUTDIR [--demo]``.

Serves the app as deployed (``deploy/start.sh``, like the browser tests) on a free
127.0.0.1 port with a private cache that links the committed organisms, opens each page
in headless Chromium, waits until its script has finished (no skeleton, no running
indicator) and saves ``OUTDIR/<nn>-<page>.png`` at the page's whole height. The server
is always stopped. ``--demo`` serves the hosted demo's settings instead.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from interp.app_load import PROBLEMS_JS, SETTLED_JS
from interp.bench_app import CHROMIUM_ARGS, wait_rendered

from ._browser import CHROMIUM, organism_cache, serve

PAGES = (  # (file name, URL path)
    ("home", ""),
    ("models", "models"),
    ("adapters", "adapters"),
    ("features", "features"),
    ("hesitation", "hesitation"),
    ("hesitation_study", "hesitation_study"),
    ("length", "length"),
    ("vectors", "vectors"),
    ("amplify", "amplify"),
)
WIDTH = 1400
# the height of the page's content: Streamlit scrolls inside its own container
HEIGHT_JS = """() => {
  const main = document.querySelector('[data-testid="stMain"]');
  const side = document.querySelector('[data-testid="stSidebarContent"]');
  return Math.max(main ? main.scrollHeight : 0, side ? side.scrollHeight : 0,
                  document.body.scrollHeight);
}"""


def shoot(page, url: str, path: Path, timeout_s: float = 300.0) -> list[str]:
    """Open ``url``, wait until it has settled, save the whole page; returns the
    page's error boxes (exceptions, error messages), if any."""
    page.set_viewport_size({"width": WIDTH, "height": 1000})
    page.goto(url, timeout=timeout_s * 1000)
    wait_rendered(page, "h1", timeout_s)
    height = min(int(page.evaluate(HEIGHT_JS)) + 40, 16000)
    page.set_viewport_size({"width": WIDTH, "height": max(height, 1000)})
    page.wait_for_function(SETTLED_JS, timeout=timeout_s * 1000)
    page.wait_for_timeout(500)  # charts re-layout to the new viewport
    page.screenshot(path=str(path))
    return page.evaluate(PROBLEMS_JS)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.screenshots", description=__doc__)
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--demo", action="store_true", help="the hosted demo's settings")
    ap.add_argument("--only", nargs="+", metavar="PAGE",
                    help=f"only these pages ({', '.join(n for n, _ in PAGES)})")
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    args.outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="interp-shots-") as tmp:
        env = {"INTERP_CACHE": str(organism_cache(Path(tmp) / "cache")),
               "INTERP_DEMO": "1" if args.demo else "0"}
        if args.demo:
            env["INTERP_CONFIG"] = "deploy/demo.toml"
        server = serve(env)
        base = next(server)
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    page = browser.new_page(viewport={"width": WIDTH, "height": 1000})
                    for i, (name, path) in enumerate(PAGES):
                        if args.only and name not in args.only:
                            continue
                        out = args.outdir / f"{i:02d}-{name}.png"
                        problems = shoot(page, f"{base}/{path}", out)
                        print(f"{out}" + (f"  problems: {problems}" if problems else ""),
                              flush=True)
                finally:
                    browser.close()
        finally:
            server.close()  # stops the server (the generator's finally)
    return 0


if __name__ == "__main__":
    sys.exit(main())
