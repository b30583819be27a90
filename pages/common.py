"""Shared pieces of every page: cached models, URL state, errors, export, progress, jobs.

A page reads like a form::

    import pages.common as ui

    base, fine = ui.current_pair()
    alpha = ui.url_widget(st.slider, "α", "alpha", 1.0, float, min_value=-4.0, max_value=4.0)
    result = ui.attempt(interp.length.sweep, ...)     # InterpError -> st.error, None
    fig = interp.plots.length.alpha_curve(result)
    st.plotly_chart(fig)
    ui.export_panel(fig, result.table, "alpha-sweep", key="alpha")

URL state
    Every widget that defines the view is created with :func:`url_widget`: its first
    value comes from ``st.query_params`` (so a copied link reopens the same view), and
    its current value is written back on every run (only when it differs from the
    default, to keep links short). The URL name and the widget key are the same string;
    keep them short and unique across the sidebar and the page. A link value is checked
    *before* the widget is built (:func:`url_value`): one that does not parse, is not
    finite or not an option falls back to the default, one outside the widget's range
    is clamped to it, and either way the page says so in one line; Streamlit never
    sees a value it would reject.

Models
    :func:`cached_model` loads through ``interp.models.load_model`` inside
    ``st.cache_resource``; spec, device, dtype *and* a stamp of the checkpoint files are
    all hashed, so a rebuilt checkpoint or another device never reuses a stale model.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import streamlit as st

from interp import export as _export
from interp import serving
from interp.errors import InterpError, ModelNotFoundError
from interp.models import DEFAULT_PAIR, LoadedModel, load_model, resolve
from interp.store import Store

log = logging.getLogger("interp.app")
T = TypeVar("T")


def _leave_pages_directory_mode() -> None:
    """Make Streamlit treat ``pages/`` as st.navigation pages, not as a v1 pages folder.

    Streamlit decides per process, before app.py runs, whether a folder named
    ``pages/`` next to the main script means the old multipage mode; only a call of
    ``st.navigation`` switches that off. So the very first run of a fresh server that
    opens a link such as ``/models`` would run ``pages/models.py`` on its own (no
    sidebar, a file-list menu), and stay in that mode. Every page imports this module,
    so on that first run we switch the mode off and rerun through app.py.

    The rerun is *requested* here and happens at the page's first Streamlit call, after
    this module has finished importing. Raising it during the import (``st.rerun()``)
    would leave ``pages.common`` half-initialised for a moment, and another session
    importing it at that moment (an old tab reconnecting after a server restart while
    a new one opens) would get ``ImportError: cannot import name 'common' from 'pages'``.
    """
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    if PagesManager.uses_pages_directory and ctx is not None:
        PagesManager.uses_pages_directory = False
        try:
            from streamlit.runtime.scriptrunner_utils.script_requests import RerunData

            ctx.script_requests.request_rerun(RerunData(
                query_string=ctx.query_string, page_script_hash=ctx.page_script_hash,
                cached_message_hashes=ctx.cached_message_hashes,
                context_info=ctx.context_info))
        except Exception:  # noqa: BLE001 - another Streamlit version: rerun at once
            st.rerun()


_leave_pages_directory_mode()

MAX_URL_TEXT = 2000  # longer text inputs are not mirrored into the URL
NOT_BUILT_HELP = ("No models are built yet. Build the model organisms (a few minutes on a "
                  "CPU) with\n\n```\npython -m interp organisms build\n```\n\nor choose "
                  "*Other* in the sidebar and enter a hub name, a checkpoint folder or a "
                  "`.gguf` file.")


# ------------------------------------------------------------------ mode and store
def demo_settings() -> serving.DemoSettings:
    """The hosted-demo settings (``INTERP_DEMO``, the ``[demo]`` table of ``INTERP_CONFIG``;
    see :mod:`interp.serving`)."""
    return serving.settings()


def demo_mode() -> bool:
    """Hosted demo: read-only store, organisms only, no training, capped work."""
    return demo_settings().enabled


def max_prompt_chars() -> int | None:
    return demo_settings().max_prompt_chars if demo_mode() else None


def max_new_tokens(limit: int) -> int:
    """``limit``, or the demo's cap on new tokens when that is lower."""
    return min(int(limit), demo_settings().max_new_tokens) if demo_mode() else int(limit)


def store(root: str | os.PathLike | None = None) -> Store:
    """The artifact store (read-only in demo mode)."""
    return Store(root, read_only=demo_mode())


@contextlib.contextmanager
def work_slot(what: str = "this computation") -> Iterator[None]:
    """Around a heavy computation (a generation, a lens trace). In demo mode it spends
    one of the session's tokens and waits for one of the process's slots; either may
    raise :class:`~interp.errors.BusyError` (shown by :func:`attempt`). Put it inside
    cached functions, so a cached answer costs nothing."""
    if not demo_mode():
        yield
        return
    demo = demo_settings()
    bucket = st.session_state.get("_work_bucket")
    if bucket is None or (bucket.burst, bucket.rate * 60) != (demo.session_burst,
                                                             demo.session_per_minute):
        bucket = st.session_state["_work_bucket"] = serving.TokenBucket(
            demo.session_burst, demo.session_per_minute)
    bucket.take()
    with serving.limiter(demo).slot(what):
        yield


def model_input(container: Any, label: str, key: str, default: str, **kwargs: Any) -> str:
    """A model spec field mirrored to the URL: free text normally, a choice among the
    organisms and the demo config's models in demo mode (the only models it loads)."""
    if demo_mode():
        options = serving.demo_models(demo_settings())
        return url_widget(container.selectbox, label, key, default, options=options, **kwargs)
    return url_widget(container.text_input, label, key, default, **kwargs)


# ------------------------------------------------------------------ URL state
def url_param(key: str, default: T, cast: Callable[[str], T] = str) -> T:
    """``st.query_params[key]`` cast with ``cast``; ``default`` when absent or invalid."""
    raw = st.query_params.get(key)
    if raw is None:
        return default
    try:
        return cast(raw)
    except (TypeError, ValueError):
        return default


def set_url_param(key: str, value: Any, default: Any = None) -> None:
    """Write ``value`` to the URL (removed when it equals ``default`` or is None)."""
    if value is None or value == default or (isinstance(value, str) and
                                            len(value) > MAX_URL_TEXT):
        if key in st.query_params:
            del st.query_params[key]
        return
    text = ("1" if value else "0") if isinstance(value, bool) else str(value)
    if st.query_params.get(key) != text:
        st.query_params[key] = text


def as_bool(text: str) -> bool:
    """Cast for boolean URL values (``1/0``, ``true/false``, ``yes/no``)."""
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def url_value(key: str, default: T, cast: Callable[[str], Any] = str, *,
              options: Any = None, min_value: float | None = None,
              max_value: float | None = None, max_chars: int | None = None) -> T:
    """The link's ``key`` as a checked value (see :func:`interp.validate.url_value`): the
    default when absent; a one-line warning on the page when the link's value could
    not be used as it is."""
    from interp.validate import url_value as check

    raw = st.query_params.get(key)
    if raw is None:
        return default
    if cast is bool:
        cast = as_bool
    value, problem = check(raw, default, cast,
                           options=list(options) if options is not None else None,
                           min_value=min_value, max_value=max_value, max_chars=max_chars)
    if problem:
        shown = raw if len(raw) <= 40 else raw[:37] + "..."
        st.warning(f"The link's `{key}={shown}` {problem}; using `{value}` instead.",
                   icon=":material/link_off:")
    return value


def url_list(key: str, default: str, allowed: Any, sep: str = ",") -> list[str]:
    """The link's ``key`` as a list (``a,b,c``) of entries among ``allowed``; unknown
    entries are dropped with a one-line warning."""
    raw = st.query_params.get(key)
    text = default if raw is None else raw
    items = [x.strip() for x in text.split(sep) if x.strip()]
    allowed = list(allowed)
    bad = [x for x in items if x not in allowed]
    if bad and raw is not None:
        shown = ", ".join(bad[:5]) if len(", ".join(bad[:5])) <= 60 else f"{len(bad)} entries"
        st.warning(f"The link's `{key}` names {shown}, which is not available here; "
                   "left out.", icon=":material/link_off:")
    return [x for x in items if x in allowed]


def url_widget(widget: Callable[..., T], label: str, key: str, default: T,
               cast: Callable[[str], Any] = str, **kwargs: Any) -> T:
    """Create ``widget(label, key=key, **kwargs)`` initialised from and mirrored to the URL.

    ``cast`` parses the URL text (use :func:`as_bool` for checkboxes, ``int``/``float``
    for numbers). The link's value is checked against ``options=`` (selectbox, radio,
    segmented control) and ``min_value`` / ``max_value`` before the widget exists
    (:func:`url_value`). Returns the widget's value.
    """
    if cast is bool:
        cast = as_bool
    if key not in st.session_state:
        # (text longer than max_chars is left to the backend, which says so clearly)
        value = url_value(key, default, cast, options=kwargs.get("options"),
                          min_value=kwargs.get("min_value"),
                          max_value=kwargs.get("max_value"))
        st.session_state[key] = value
    value = widget(label, key=key, **kwargs)
    set_url_param(key, value, default)
    return value


def run_picker(widget: Callable[..., T], label: str, key: str, options: Any, default: T,
               **kwargs: Any) -> T:
    """A choice among saved runs (``widget``: ``st.selectbox`` or ``st.radio``) that a
    link pins: unlike :func:`url_widget` the value is *always* in the URL, also the
    default, so a link copied before newer runs exist opens the same run later. Pass a
    ``default`` that does not move when runs are added (the committed run, else the
    oldest). A session value that is no longer an option (the sidebar pair changed)
    falls back to ``default``."""
    options = list(options)
    if key in st.session_state and st.session_state[key] not in options:
        st.session_state[key] = default
    value = url_widget(widget, label, key, default, options=options, **kwargs)
    set_url_param(key, value)
    return value


def select_run(key: str, value: Any) -> None:
    """Make ``value`` the choice of the run picker ``key`` (and of the URL) from the
    next widget creation on, e.g. the run a job just saved."""
    st.session_state[key] = value
    set_url_param(key, value)


def demo_hidden(what: str, command: str) -> None:
    """The one line where demo mode hides a section: what is off and how to run it
    locally."""
    st.caption(f":material/lock: {what} is off in this hosted demo; run it locally: "
               f"`{command}`")


# ------------------------------------------------------------------ pair and device
def current_pair() -> tuple[str, str]:
    """(base spec, fine-tune spec) chosen in the sidebar (URL ``base`` / ``fine``)."""
    base = st.session_state.get("pair_base") or url_param("base", DEFAULT_PAIR[0])
    fine = st.session_state.get("pair_fine") or url_param("fine", DEFAULT_PAIR[1])
    return base.strip(), fine.strip()


def current_device() -> tuple[str, str]:
    """(device, dtype) chosen in the sidebar: ``auto``/``cpu``/``cuda``/``mps`` and
    ``auto``/``float32``/``bfloat16``/``float16``."""
    return (st.session_state.get("device") or url_param("device", "auto"),
            st.session_state.get("dtype") or url_param("dtype", "auto"))


def short_name(spec: str) -> str:
    """A model spec for headings: organism/registry/hub names as they are, a path as its
    last two components (``…/pair/base``)."""
    if spec.startswith(("/", "~", ".")) or os.sep in spec and Path(spec).exists():
        parts = Path(spec).parts
        return spec if len(parts) <= 2 else "…/" + "/".join(parts[-2:])
    return spec


def count(n: int) -> str:
    """1234 -> '1,234'; 1.5e6 -> '1.50 M'; 1.5e9 -> '1.50 B'."""
    if n >= 1e9:
        return f"{n / 1e9:.2f} B"
    if n >= 1e6:
        return f"{n / 1e6:.2f} M"
    return f"{n:,}"


def unbuilt_organisms(*specs: str) -> list[str]:
    """The organism specs among ``specs`` whose checkpoints are not built yet."""
    out = []
    for s in specs:
        try:
            resolve(s)
        except ModelNotFoundError as e:
            if "organisms build" in str(e):
                out.append(s)
    return out


def checkpoint_stamp(spec: str) -> str:
    """Cheap fingerprint (names, sizes, mtimes) of a spec's checkpoint files, so caches
    notice a rebuilt model. Hub names that are not downloaded yet give ``""``."""
    try:
        r = resolve(spec)
    except InterpError:
        return ""
    p = Path(r.path)
    if not p.exists():
        return ""
    files = [p] if p.is_file() else sorted(p.glob("*.safetensors")) + sorted(p.glob("*.json"))
    return ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)


@st.cache_resource(max_entries=4, show_spinner=False)
def _load_cached(spec: str, device: str, dtype: str, stamp: str) -> LoadedModel:
    return serving.guard(load_model(spec, device=device, dtype=dtype))


def cached_model(spec: str, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """``interp.models.load_model`` cached across reruns and sessions.

    Every argument is part of the cache key (plus the checkpoint's file stamp). The
    model is shared by every session of the process, so it is guarded
    (:func:`interp.serving.guard`: one session's hooks or weight edits never reach
    another's forward pass). In demo mode only the organisms load.
    Raises the loader's InterpErrors (ModelNotFoundError, ModelLoadError) and
    DemoRestrictedError.
    """
    serving.check_model_allowed(spec, demo_settings())
    return _load_cached(spec.strip(), str(device), str(dtype), checkpoint_stamp(spec))


# ------------------------------------------------------------------ errors
def show_error(exc: BaseException) -> None:
    """Show an exception in the page: an InterpError's own message, otherwise a short
    one-line note (details go to the server log, never a traceback in the page)."""
    if isinstance(exc, InterpError):
        text = str(exc)
        if "organisms build" in text:
            st.info(NOT_BUILT_HELP, icon=":material/info:")
        else:
            st.error(text, icon=":material/error:")
    else:
        log.exception("unexpected error in the app", exc_info=exc)
        st.error(f"Unexpected error ({type(exc).__name__}): {exc}. "
                 "The server log has the details.", icon=":material/error:")


def attempt_work(what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """:func:`attempt` of a heavy computation inside :func:`work_slot` (demo limits)."""
    def run() -> T:
        with work_slot(what):
            return fn(*args, **kwargs)

    return attempt(run)


def attempt(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """``fn(*args, **kwargs)``; on an exception show it with :func:`show_error` and
    return None (the page goes on; call ``st.stop()`` if nothing else makes sense)."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - everything is shown, nothing is swallowed
        show_error(e)
        return None


# ------------------------------------------------------------------ export
def export_context(**context: Any) -> None:
    """Say what this page's exported figures show (keys of
    :func:`interp.export.context_line`: ``pair``, ``model``, ``run``, ``setting``); every
    :func:`export_panel` of this run of the page uses it, merged with its own
    ``context``. Without it the sidebar's pair is used."""
    ctx = st.session_state.setdefault("_export_context", {})
    ctx.update({k: v for k, v in context.items()})


def _page_context() -> dict[str, Any]:
    ctx = dict(st.session_state.get("_export_context") or {})
    if not ctx.get("pair") and not ctx.get("model"):
        ctx["pair"] = current_pair()
    return ctx


def export_panel(fig: Any | None, data: Any | None, name: str, key: str,
                 context: dict[str, Any] | None = None) -> None:
    """A row of download buttons: the figure as PNG, SVG, HTML and ``data`` as CSV, JSON.

    ``name`` is the measure shown (``length_alpha_sweep``). ``context`` (merged over the
    page's :func:`export_context`; its ``setting`` dicts are merged too) says what the
    figure shows: the exported figure carries it as a line under its title, and the
    file names carry the measure, the run key and the setting
    (:func:`interp.export.file_stem`), so two exports never share a name.
    Not inside any ``if st.button``: the buttons are rebuilt on every run. Files are
    produced lazily, only when a button is clicked (Streamlit's deferred downloads),
    so an unused export costs nothing. Pass ``fig=None`` for a data-only panel and
    ``data=None`` for a figure-only one.
    """
    ctx = _page_context()
    own = dict(context or {})
    setting = {**(ctx.get("setting") or {}), **(own.pop("setting", None) or {})}
    ctx.update(own)
    if setting:
        ctx["setting"] = setting
    stem = _export.file_stem(name, ctx)
    out_fig = None if fig is None else _LazyFigure(fig, ctx, name)
    _report_items().append((stem, out_fig, data))
    static = fig is not None and _export.static_export_available()
    with st.container(horizontal=True, gap="small", key=f"export_{key}"):
        st.caption(":material/download: Export", width="content")
        if fig is not None:
            for fmt in (("png", "svg") if static else ()) + ("html",):
                st.download_button(
                    fmt.upper(), data=_lazy(_figure_bytes, out_fig, fmt),
                    file_name=f"{stem}.{fmt}", mime=_export.MIME[fmt], key=f"{key}_{fmt}",
                    on_click="ignore", type="tertiary",
                    help=f"the figure as {fmt.upper()}" + (
                        " (self-contained, works offline)" if fmt == "html" else "")
                    + " with its models, run and setting under the title")
        if data is not None:
            for fmt in _export.TABLE_FORMATS:
                st.download_button(
                    f"{fmt.upper()} data", data=_lazy(_export.table_bytes, data, fmt),
                    file_name=f"{stem}.{fmt}", mime=_export.MIME[fmt], key=f"{key}_{fmt}",
                    on_click="ignore", type="tertiary", help=f"the plotted data as {fmt.upper()}")
    if fig is not None and not static:
        st.info("PNG and SVG export are off: " + _export.CHROMIUM_HELP,
                icon=":material/image_not_supported:")


class _LazyFigure:
    """A figure with its export context, annotated only when a file is made."""

    def __init__(self, fig: Any, context: dict[str, Any], name: str) -> None:
        self.fig, self.context, self.name = fig, context, name

    def build(self) -> Any:
        return _export.with_context(self.fig, self.context, self.name)


def _figure_bytes(fig: Any, fmt: str) -> bytes:
    return _export.figure_bytes(fig.build() if isinstance(fig, _LazyFigure) else fig, fmt)


def _report_items() -> list:
    """The figures and tables :func:`export_panel` has shown in this run of the page."""
    return st.session_state.setdefault("_report_items", [])


def report_button(page: str, container: Any = None) -> None:
    """"Download report (zip)": every figure (HTML, plus PNG and SVG when Chromium is
    there) and table (CSV, JSON) that :func:`export_panel` shows in this run of the
    page, with a ``report.json`` manifest holding the page's link.

    Call it once per run *before* the page runs (app.py does, in the sidebar): it starts
    a new, empty list that the page's export panels fill, and the zip is built from that
    list only when the button is clicked (Streamlit's deferred download).
    """
    items: list = []
    st.session_state["_report_items"] = items
    st.session_state["_export_context"] = {}   # the page sets its own (export_context)
    query = {k: st.query_params.get_all(k) for k in st.query_params}
    try:
        base_url = st.context.url
    except Exception:  # noqa: BLE001 - no browser context (tests): the link is left out
        base_url = None
    slug = "".join(c if c.isalnum() else "-" for c in page.lower()).strip("-") or "page"

    def build() -> bytes:
        made = [(n, f.build() if isinstance(f, _LazyFigure) else f, d) for n, f, d in items]
        return _export.report_zip(made, {"page": page, "url": base_url, "query": query,
                                         "demo": demo_mode()})

    target = container if container is not None else st
    target.download_button(
        "Download report (zip)", data=build, file_name=f"interp-{slug}-report.zip",
        mime="application/zip", key="report_zip", on_click="ignore",
        icon=":material/folder_zip:",
        help="this page's figures (HTML" + (", PNG, SVG" if _export.static_export_available()
                                            else "; PNG/SVG need Chromium")
             + ") and data (CSV, JSON), with the page's link, in one zip")


def _lazy(fn: Callable[..., bytes], *args: Any) -> Callable[[], bytes]:
    def make() -> bytes:
        return fn(*args)

    return make


# ------------------------------------------------------------------ progress
def progress_callback(label: str = "", container: Any = None,
                      min_interval: float = 0.1) -> Callable[..., None]:
    """A ``progress(done, total, **info)`` function for backend calls, drawn as a
    progress bar (in ``container``, e.g. an ``st.status``, or in the page).

    ``info`` items (loss=..., message=...) are shown after the count; an ETA is
    estimated from the elapsed time. Updates are throttled to one per ``min_interval``
    seconds (the last one always shows).
    """
    target = container if container is not None else st
    bar = target.progress(0.0, text=label or "starting…")
    t0 = time.perf_counter()
    last = [0.0]

    def progress(done: int, total: int, **info: Any) -> None:
        now = time.perf_counter()
        if now - last[0] < min_interval and done < total:
            return
        last[0] = now
        frac = min(1.0, done / total) if total else 0.0
        parts = [label, f"{done}/{total}" if total else str(done)]
        parts += [f"{k} {_fmt(v)}" for k, v in info.items() if v is not None]
        if 0 < frac < 1:
            parts.append(f"ETA {_duration((now - t0) / frac * (1 - frac))}")
        bar.progress(frac, text=" · ".join(p for p in parts if p))

    return progress


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _duration(s: float) -> str:
    s = max(0.0, s)
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


# ------------------------------------------------------------------ jobs
def job_panel(kind: str, spec: dict[str, Any], key: str, label: str = "Start",
              refresh_seconds: float = 1.0) -> Any | None:
    """Start, watch and cancel the background job ``(kind, spec)``.

    The job id is derived from kind + spec (:func:`interp.jobs.job_id`), so a page
    reload, another session or a copied link finds the same job. While it runs, a
    fragment refreshes every ``refresh_seconds`` (progress, metrics, ETA, Cancel);
    when it ends the whole page reruns once so it can show the result. In demo mode
    nothing can be started. Returns the job's :class:`~interp.jobs.JobStatus` (None
    when it was never started).
    """
    from interp import jobs
    from interp.errors import JobError

    jid = jobs.job_id(kind, spec)
    try:
        status = jobs.status(jid)
    except JobError:
        status = None
    active = status is not None and status.active
    if active:   # remembered, so that job_finished() can tell when it ends
        st.session_state[f"_job_watched_{jid}"] = True
    with st.container(border=True, key=f"job_{key}"):
        if not active:
            if demo_mode():
                st.caption(":material/lock: Training and sweeps are off in the hosted demo; "
                           "the results shown were computed offline.")
            else:
                again = status is not None and status.state in (
                    "failed", "cancelled", "interrupted")
                text = "Resume" if status is not None and status.state == "interrupted" else (
                    "Run again" if again else label)
                if status is None or again:
                    if st.button(text, key=f"{key}_start", type="primary",
                                 icon=":material/play_arrow:"):
                        attempt(jobs.submit, kind, spec)
                        st.rerun()
        if status is not None:
            _job_body(jobs, jid, key, refresh_seconds if active else None, active)
    return status


def job_finished(status: Any | None) -> bool:
    """True once, in the run where a job that this session saw running is found done
    (the page then selects what it made); False before and after."""
    if status is None or status.state != "done":
        return False
    return st.session_state.pop(f"_job_watched_{status.id}", False)


def _job_body(jobs: Any, jid: str, key: str, run_every: float | None, was_active: bool):
    @st.fragment(run_every=run_every)
    def body() -> None:
        st_ = jobs.status(jid)
        if was_active and not st_.active:
            st.rerun(scope="app")
        icon = {"queued": ":material/schedule:", "running": ":material/sync:",
                "done": ":material/check_circle:", "failed": ":material/error:",
                "cancelled": ":material/cancel:",
                "interrupted": ":material/pause_circle:"}.get(st_.state, "")
        st.markdown(f"{icon} **{st_.state}** · job `{jid}`")
        if st_.total:
            text = f"step {st_.step}/{st_.total}"
            if st_.eta_seconds is not None and st_.active:
                text += f" · ETA {_duration(st_.eta_seconds)}"
            st.progress(st_.fraction, text=text)
        if st_.metrics:
            cols = st.columns(min(4, len(st_.metrics)))
            for i, (k, v) in enumerate(st_.metrics.items()):
                cols[i % len(cols)].metric(k, _fmt(v))
        if st_.message:
            st.caption(st_.message)
        if st_.error and st_.state != "done":
            (st.warning if st_.state == "cancelled" else st.error)(st_.error)
        if st_.active and not demo_mode():
            if st.button("Cancel", key=f"{key}_cancel", icon=":material/stop:"):
                attempt(jobs.cancel, jid)

    body()


# ------------------------------------------------------------------ grids, cost, reproduce
def grid_input(container: Any, label: str, key: str, default: str, name: str,
               **limits: Any) -> list | None:
    """A text field for a grid of values (``-2,-1,0,1,2`` or ``-2:2:0.5``; see
    :func:`interp.grid.parse_grid`, whose keywords ``integer``, ``lo``, ``hi``,
    ``max_values`` pass through), kept in the URL as typed. Returns the values, or None
    after a one-line ``st.error`` naming what does not parse."""
    from interp.errors import GridError
    from interp.grid import parse_grid

    text = url_widget(container.text_input, label, key, default,
                      help="values separated by commas (−2,−1,0,1,2) or a range "
                           "start:stop:step (−2:2:0.5)")
    try:
        return parse_grid(text, name, **limits)
    except GridError as e:
        container.error(str(e), icon=":material/error:")
        return None


@st.cache_resource(max_entries=8, show_spinner=False)
def _calibration(spec: str, device: str, dtype: str, stamp: str):
    from interp.cost import calibrate

    return calibrate(cached_model(spec, device, dtype))


def run_cost(cost: Any, spec: str | None = None, device: str = "auto",
             dtype: str = "auto", container: Any = None, model: Any = None) -> bool:
    """Show a run's estimated cost (``≈ N generations × T tokens, ≈ X s on cpu``; the time
    from a forward of ``spec``, or of a loaded ``model``, timed once per server and
    device) and, in the hosted demo, refuse a cost over its limit. Returns False when
    the run must not start."""
    from interp.cost import calibrate, check_demo

    target = container if container is not None else st
    if cost is None:
        return True
    cal = None
    if model is not None:
        cals = st.session_state.setdefault("_calibrations", {})
        if id(model) not in cals:
            cals[id(model)] = calibrate(model)
        cal = cals[id(model)]
    elif spec is not None:
        try:
            cal = _calibration(spec.strip(), str(device), str(dtype), checkpoint_stamp(spec))
        except InterpError:
            cal = None   # the model does not load: the counts are still shown
    target.caption(":material/timer: " + cost.describe(cal) + " (estimate)")
    try:
        check_demo(cost, demo_settings())
    except InterpError as e:
        target.error(str(e), icon=":material/block:")
        return False
    return True


def reproduce(code: str) -> None:
    """An expander "Reproduce in Python" holding ``code`` (from :mod:`interp.reproduce`):
    the few lines that recompute the view's figure with its current settings."""
    with st.expander("Reproduce in Python", icon=":material/code:"):
        st.caption("Recomputes this view with its current settings; the numbers end up in "
                   "`result`.")
        st.code(code, language="python")


def pair_header() -> tuple[str, str, str, str, tuple[str, str]]:
    """The sidebar pair named under a page's title (base blue, fine-tune orange); stops the
    page when an organism of the pair is not built. Returns ``(base_spec, fine_spec,
    device, dtype, stamps)`` (``stamps``: each checkpoint's, for caches keyed by weights)."""
    base_spec, fine_spec = current_pair()
    device, dtype = current_device()
    st.markdown(f":blue[**base**] `{short_name(base_spec)}` vs :orange[**fine-tune**] "
                f"`{short_name(fine_spec)}`")
    if unbuilt_organisms(base_spec, fine_spec):
        st.info(NOT_BUILT_HELP, icon=":material/info:")
        st.stop()
    return base_spec, fine_spec, device, dtype, (checkpoint_stamp(base_spec),
                                                  checkpoint_stamp(fine_spec))
