"""Export figures (PNG, SVG, HTML) and their data (CSV, JSON) as bytes.

* PNG and SVG go through kaleido, which drives a headless Chromium. The first static
  export in a process starts a persistent kaleido server (``kaleido.start_sync_server``,
  about 2 s); every later export reuses the browser and takes a fraction of a second.
  Exports are serialised by a lock (the kaleido server answers one call at a time).
  Without a Chromium binary :class:`~interp.errors.ChromiumMissingError` is raised,
  with install instructions, before anything is started.
* HTML is written by plotly with plotly.js inline, so the file works offline.
* Tables: a DataFrame, a list of records, or a dict (of lists or of scalars) -> CSV or
  JSON (records orientation; NaN becomes null).
* A report: :func:`report_zip` bundles a page's figures and tables into one zip with a
  ``report.json`` manifest (what is in it, the page's link, what could not be exported).
* Context: an exported figure says what it shows. :func:`with_context` adds a line under
  its title with the models (``pair`` or ``model``), the ``run`` key and the ``setting``
  (α, layer, ...); :func:`file_stem` names the files by measure, run and setting, so
  files of different measures or runs never share a name.
"""

from __future__ import annotations

import functools
import io
import json
import math
import threading
import time
import warnings
import zipfile
from typing import Any, Mapping

import pandas as pd

from .errors import ChromiumMissingError, ExportError

FIGURE_FORMATS = ("png", "svg", "html")
TABLE_FORMATS = ("csv", "json")
MIME = {"png": "image/png", "svg": "image/svg+xml", "html": "text/html",
        "csv": "text/csv", "json": "application/json"}
PNG_SCALE = 2  # PNGs at twice the layout size: crisp in papers and slides
DEFAULT_SIZE = (900, 550)  # used when a figure has no width / height of its own

CHROMIUM_HELP = (
    "Static image export (PNG, SVG) needs a Chromium browser, and none was found. "
    "Install one, e.g. `sudo apt-get install -y chromium` (Debian/Ubuntu), "
    "`brew install --cask chromium` (macOS), or `plotly_get_chrome` (downloads a copy "
    "for kaleido); or point the BROWSER_PATH environment variable at a Chrome/Chromium "
    "binary. HTML export and the data downloads work without it.")

_lock = threading.Lock()
_server_started = False


@functools.lru_cache(maxsize=1)
def chromium_path() -> str | None:
    """The Chromium/Chrome binary kaleido will use, or None when there is none."""
    try:
        from choreographer.browsers.chromium import Chromium

        return Chromium.find_browser(skip_local=False)
    except Exception:  # an unusual platform: let kaleido try and fail clearly
        return None


def static_export_available() -> bool:
    return chromium_path() is not None


def _ensure_server() -> None:
    global _server_started
    if _server_started:
        return
    import kaleido

    kaleido.start_sync_server(silence_warnings=True)
    _server_started = True


def figure_bytes(fig: Any, fmt: str, width: int | None = None,
                 height: int | None = None) -> bytes:
    """The figure as ``png``, ``svg`` or ``html`` bytes."""
    fmt = fmt.lower()
    if fmt not in FIGURE_FORMATS:
        raise ExportError(f"unknown figure format {fmt!r}; use one of {FIGURE_FORMATS}")
    import plotly.io as pio

    if fmt == "html":
        return pio.to_html(fig, include_plotlyjs=True, full_html=True,
                           config={"displaylogo": False}).encode()
    if not static_export_available():
        raise ChromiumMissingError(CHROMIUM_HELP)
    layout = fig.layout
    w = width or layout.width or DEFAULT_SIZE[0]
    h = height or layout.height or DEFAULT_SIZE[1]
    try:
        with _lock, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "kopts is ignored if using a server"
            _ensure_server()
            return pio.to_image(fig, format=fmt, width=w, height=h,
                                scale=PNG_SCALE if fmt == "png" else 1)
    except Exception as e:  # kaleido/browser failures: a typed, readable error
        raise ExportError(f"could not export the figure as {fmt.upper()}: {e}") from e


def stop_server() -> None:
    """Close the persistent kaleido browser (it also closes at interpreter exit)."""
    global _server_started
    if _server_started:
        import kaleido

        with _lock:
            kaleido.stop_sync_server(silence_warnings=True)
            _server_started = False


# ------------------------------------------------------------------ context
CONTEXT_KEYS = ("pair", "model", "run", "setting")


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ",".join(_fmt_value(x) for x in v)
    return str(v)


def context_line(context: Mapping[str, Any] | None) -> str:
    """One line saying what a figure shows: ``base → fine · run KEY · α = -0.25``.

    ``context`` keys: ``pair`` (``(base, fine)`` or text), ``model`` (one model),
    ``run`` (an artifact key), ``setting`` (``{name: value}``, e.g. ``{"α": -0.25}``);
    missing or empty keys are left out. Unknown keys raise ExportError.
    """
    ctx = dict(context or {})
    unknown = set(ctx) - set(CONTEXT_KEYS)
    if unknown:
        raise ExportError(f"unknown export context {sorted(unknown)}; use {CONTEXT_KEYS}")
    parts = []
    pair = ctx.get("pair")
    if pair:
        parts.append(" → ".join(map(str, pair)) if isinstance(pair, (list, tuple))
                     else str(pair))
    if ctx.get("model"):
        parts.append(f"model {ctx['model']}")
    if ctx.get("run"):
        parts.append(f"run {ctx['run']}")
    for k, v in (ctx.get("setting") or {}).items():
        if v is not None and v != "":
            parts.append(f"{k} = {_fmt_value(v)}")
    return " · ".join(parts)


def with_context(fig: Any, context: Mapping[str, Any] | None, name: str = "") -> Any:
    """A copy of ``fig`` whose title carries :func:`context_line` as a second, smaller
    line (a figure without a title gets ``name`` as its title). The figure on the page
    is not changed. Without context the copy equals the figure."""
    line = context_line(context)
    if fig is None or not line:
        return fig
    import html

    import plotly.graph_objects as go

    out = go.Figure(fig)
    title = out.layout.title.text or name
    text = (f"{title}<br>" if title else "") + f"<sup>{html.escape(line)}</sup>"
    top = (out.layout.margin.t if out.layout.margin.t is not None else 60) + 24
    out.update_layout(title=dict(text=text, x=0.0, xanchor="left"), margin=dict(t=top))
    return out


def _slug(text: str, collapse: bool = True) -> str:
    out = "".join(c if (c.isascii() and c.isalnum()) or c in "-_." else "-" for c in str(text))
    while collapse and "--" in out:
        out = out.replace("--", "-")
    return out.strip(".") if not collapse else out.strip("-.")


def file_stem(name: str, context: Mapping[str, Any] | None = None) -> str:
    """The file name (without extension) of an export: the measure ``name``, then the
    run key and the setting, each setting as name and value with the value's sign kept
    (``length_seal_sweep__length_demo-a047__alpha-0.25__layer2``; lists joined by
    ``_``), safe for every file system. Different measures, runs or settings never give
    the same stem."""
    ctx = dict(context or {})
    parts = [_slug(name) or "figure"]
    if ctx.get("run"):
        parts.append(_slug(ctx["run"]))
    for k, v in (ctx.get("setting") or {}).items():
        if v is not None and v != "":
            key = _slug({"α": "alpha"}.get(k, k)).replace("-", "")
            val = "_".join(map(_fmt_value, v)) if isinstance(v, (list, tuple)) \
                else _fmt_value(v)
            parts.append(key + _slug(val, collapse=False))
    return "__".join(p for p in parts if p)[:180]


def _frame(data: Any) -> pd.DataFrame:
    if isinstance(data, pd.DataFrame):
        return data
    if isinstance(data, pd.Series):
        return data.to_frame()
    if isinstance(data, dict):
        if data and all(not isinstance(v, (list, tuple, dict, pd.Series)) for v in data.values()):
            return pd.DataFrame({"key": list(data), "value": list(data.values())})
        return pd.DataFrame(data)
    if isinstance(data, (list, tuple)):
        return pd.DataFrame(list(data))
    raise ExportError(f"cannot export {type(data).__name__} as a table")


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "tolist"):
        return _clean(obj.tolist())
    if obj is pd.NA or obj is pd.NaT:
        return None
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def table_bytes(data: Any, fmt: str) -> bytes:
    """A table (DataFrame, list of records, dict) as ``csv`` or ``json`` bytes.

    JSON is a list of records for tables; a plain dict of scalars is written as is.
    """
    fmt = fmt.lower()
    if fmt not in TABLE_FORMATS:
        raise ExportError(f"unknown table format {fmt!r}; use one of {TABLE_FORMATS}")
    if fmt == "json" and isinstance(data, dict) and not any(
            isinstance(v, (list, tuple, pd.Series)) for v in data.values()):
        return json.dumps(_clean(data), indent=1).encode()
    df = _frame(data)
    if fmt == "csv":
        buf = io.StringIO()
        df.to_csv(buf, index=not isinstance(df.index, pd.RangeIndex))
        return buf.getvalue().encode()
    if not isinstance(df.index, pd.RangeIndex):
        df = df.reset_index()
    records = df.astype(object).where(df.notna(), None).to_dict(orient="records")
    return json.dumps(_clean(records), indent=1).encode()


def _unique(name: str, used: set[str]) -> str:
    base = "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-.") or "item"
    out, i = base, 2
    while out in used:
        out, i = f"{base}-{i}", i + 1
    used.add(out)
    return out


def report_zip(items: list[tuple[str, Any, Any]], meta: dict[str, Any] | None = None,
               static: bool | None = None) -> bytes:
    """One zip of ``items`` = ``[(name, figure or None, data or None), ...]``.

    Per item: ``name.html`` (+ ``name.png`` and ``name.svg`` when ``static``, default:
    when Chromium is there) for a figure, ``name.csv`` and ``name.json`` for its data.
    The HTML files share one ``plotly.min.js`` in the zip (they work offline once
    unzipped), instead of carrying plotly.js each.
    Repeated names get ``-2``, ``-3``, ... A file that cannot be made is left out and
    its error is listed in ``report.json`` (with ``meta``, the file list and, from
    ``meta["url"]`` and ``meta["query"]``, the page's ``link``).
    """
    from urllib.parse import urlencode

    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    def html(fig: Any, fmt: str) -> bytes:
        return pio.to_html(fig, include_plotlyjs="directory", full_html=True,
                           config={"displaylogo": False}).encode()

    meta = dict(meta or {})
    static = static_export_available() if static is None else static
    fig_formats = ("html", "png", "svg") if static else ("html",)
    used: set[str] = set()
    files: dict[str, bytes] = {}
    errors: dict[str, str] = {}
    for name, fig, data in items:
        stem = _unique(name, used)
        jobs = [(f"{stem}.{f}", html if f == "html" else figure_bytes, fig, f)
                for f in fig_formats if fig is not None]
        jobs += [(f"{stem}.{f}", table_bytes, data, f) for f in TABLE_FORMATS
                 if data is not None]
        for fname, fn, obj, fmt in jobs:
            try:
                files[fname] = fn(obj, fmt)
            except Exception as e:  # noqa: BLE001 - one bad file must not lose the rest
                errors[fname] = f"{type(e).__name__}: {e}"
    query = meta.get("query") or {}
    link = meta.get("url")
    if link and query:
        link += "?" + urlencode(query, doseq=True)
    manifest = {**meta, "link": link, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "items": len(items), "files": sorted(files), "errors": errors,
                "static_images": static or CHROMIUM_HELP}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("report.json", json.dumps(_clean(manifest), indent=1))
        for fname, b in files.items():
            z.writestr(fname, b)
        if any(f.endswith(".html") for f in files):
            z.writestr("plotly.min.js", get_plotlyjs())
    return buf.getvalue()
