"""Start the app for serving: ``python deploy/serve.py [streamlit options]``.

Starts ``streamlit run app.py`` in this process and, meanwhile, in a background thread,
imports everything app.py and the pages import at module level (torch, transformers,
TransformerLens, plotly, the backend and ``pages.common``; found by reading their
import statements), plus the Qwen2 model class the organisms load with. app.py waits
for that thread before its own imports (``interp.serving.wait_until_warm``). So:

* the first visitor of a fresh server does not pay for those imports (about 5 s on 2
  CPU cores) after their browser has connected: they overlap the server start, the
  browser start and the page load;
* sessions that open at the same moment on a fresh server never import the same
  modules concurrently (a partly imported ``pages.common`` seen by a second session
  failed its page with an ImportError);
* Streamlit is told up front that the app uses ``st.navigation`` (not the old
  ``pages/`` folder mode), so a deep link as the very first request runs app.py.

The health check (``GET /_stcore/health``) answers as soon as the server is up.
deploy/start.sh runs this with the serving options.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# what loading the organisms imports inside functions
EXTRA = ("transformer_lens", "transformers.models.qwen2.modeling_qwen2")


def _top_level_imports(tree: ast.AST) -> list[str]:
    """Modules imported outside functions and classes (inside if/with/try included)."""
    out: list[str] = []
    todo = list(getattr(tree, "body", []))
    while todo:
        node = todo.pop(0)
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append(node.module)  # and names that are submodules (from interp import jobs)
            out += [f"{node.module}.{a.name}?" for a in node.names]
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for name in ("body", "orelse", "finalbody", "handlers"):
                todo += getattr(node, name, [])
    return out


def app_modules() -> list[str]:
    """The modules app.py and pages/*.py import at module level, in file order (a name
    ending in ``?`` is imported only if it is a submodule: ``from a import b``)."""
    names: list[str] = []
    for f in [ROOT / "app.py", *sorted((ROOT / "pages").glob("*.py"))]:
        names += _top_level_imports(ast.parse(f.read_text(), str(f)))
    return list(dict.fromkeys([*names, *EXTRA]))


def warm_imports() -> float:
    """Import :func:`app_modules`; returns the seconds it took."""
    t0 = time.perf_counter()
    for name in app_modules():
        if name.endswith("?"):
            parent, _, attr = name[:-1].rpartition(".")
            if hasattr(importlib.import_module(parent), attr) or (
                    importlib.util.find_spec(parent) is None
                    or importlib.util.find_spec(name[:-1]) is None):
                continue
            name = name[:-1]
        importlib.import_module(name)
    return time.perf_counter() - t0


def main(argv: list[str]) -> int:
    os.chdir(ROOT)  # .streamlit/config.toml is read from the working directory
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    # the server's own modules first, in this thread, so the two threads import apart
    import streamlit.web.bootstrap  # noqa: F401
    import streamlit.web.server  # noqa: F401
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.web import cli

    from interp import serving

    PagesManager.uses_pages_directory = False  # app.py uses st.navigation

    def warm() -> None:
        seconds = warm_imports()
        print(f"imports ready in {seconds:.1f} s", file=sys.stderr, flush=True)

    serving.warm_up_in_background(warm)
    sys.argv = ["streamlit", "run", str(ROOT / "app.py"), *argv]
    return cli.main()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
