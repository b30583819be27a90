"""Exported figures say what they show (models, run, setting) and their files are named
by measure and run."""

from __future__ import annotations

import io
import zipfile

import plotly.graph_objects as go
import pytest

from interp import export
from interp.errors import ExportError
from interp.store import PROJECT_ROOT

APP = str(PROJECT_ROOT / "app.py")
CTX = {"pair": ("organism:base", "organism:reasoner"), "run": "length_demo-a047d43e",
       "setting": {"α": -0.25, "layer": 2}}


def test_context_line_names_pair_run_and_setting():
    line = export.context_line(CTX)
    assert line == ("organism:base → organism:reasoner · run length_demo-a047d43e · "
                    "α = -0.25 · layer = 2")
    assert export.context_line({"model": "m", "setting": {"α": None}}) == "model m"
    assert export.context_line(None) == ""
    with pytest.raises(ExportError):
        export.context_line({"alpha": 1})


def test_exported_figure_carries_the_context_and_the_page_figure_does_not_change():
    fig = go.Figure(go.Scatter(x=[0, 1], y=[1, 2]))
    fig.update_layout(title=dict(text="SEAL sweep"))
    out = export.with_context(fig, CTX, "length_seal_sweep")
    assert fig.layout.title.text == "SEAL sweep"                    # untouched
    assert out.layout.title.text.startswith("SEAL sweep<br><sup>")
    for part in ("organism:base → organism:reasoner", "run length_demo-a047d43e",
                 "α = -0.25"):
        assert part in out.layout.title.text
    html = export.figure_bytes(out, "html").decode()
    assert "run length_demo-a047d43e" in html
    bare = export.with_context(go.Figure(), {"run": "k"}, "per-token-kl")
    assert bare.layout.title.text == "per-token-kl<br><sup>run k</sup>"
    assert export.with_context(fig, {}, "x") is fig


def test_file_names_differ_across_measures_and_runs_and_carry_the_run_key():
    a = export.file_stem("length_alpha_sweep", CTX)
    b = export.file_stem("length_seal_sweep", CTX)
    c = export.file_stem("length_alpha_sweep", {**CTX, "run": "length_demo-ffff"})
    assert len({a, b, c}) == 3
    assert a == "length_alpha_sweep__length_demo-a047d43e__alpha-0.25__layer2"
    plus = export.file_stem("length_alpha_sweep", {**CTX, "setting": {"α": 0.25, "layer": 2}})
    assert plus == "length_alpha_sweep__length_demo-a047d43e__alpha0.25__layer2" != a
    assert "length_demo-a047d43e" in b and "length_demo-ffff" in c
    assert all(ch.isascii() for ch in a + b + c)
    assert export.file_stem("x y/z", {"setting": {"α": [-1.0, 0.0]}}) == "x-y-z__alpha-1_0"
    assert export.file_stem("x", {"setting": {"node threshold": 0.8}}) == "x__nodethreshold0.8"


def _panel_script():
    import plotly.graph_objects as go

    import pages.common as ui

    ui.export_context(model="organism:reasoner", run="length_demo-a047d43e")
    f1 = go.Figure(go.Bar(x=["a"], y=[1]), layout=dict(title=dict(text="sweep")))
    f2 = go.Figure(go.Bar(x=["a"], y=[2]), layout=dict(title=dict(text="hist")))
    ui.export_panel(f1, {"y": [1]}, "length_alpha_sweep", key="a",
                    context={"setting": {"α": [-1.0, 0.0]}})
    ui.export_panel(f2, {"y": [2]}, "length_alpha_histograms", key="b",
                    context={"setting": {"α": [0.0]}})


def test_export_panel_names_and_annotates_with_the_page_context():
    from streamlit.testing.v1 import AppTest

    import pages.common as ui

    at = AppTest.from_function(_panel_script, default_timeout=60).run()
    assert not at.exception
    items = at.session_state["_report_items"]
    stems = [n for n, _, _ in items]
    assert stems == ["length_alpha_sweep__length_demo-a047d43e__alpha-1_0",
                     "length_alpha_histograms__length_demo-a047d43e__alpha0"]
    fig = items[0][1].build()
    assert "model organism:reasoner · run length_demo-a047d43e · α = -1,0" in \
        fig.layout.title.text
    html = ui._figure_bytes(items[1][1], "html").decode()
    assert "run length_demo-a047d43e" in html and ("α = 0" in html or "\\u03b1 = 0" in html)
    # the report zip holds the annotated figures under those names
    made = [(n, f.build(), d) for n, f, d in items]
    z = zipfile.ZipFile(io.BytesIO(export.report_zip(made, static=False)))
    names = set(z.namelist())
    assert {f"{s}.{e}" for s in stems for e in ("html", "csv", "json")} <= names
    assert "run length_demo-a047d43e" in z.read(f"{stems[0]}.html").decode()


def test_length_page_exports_carry_model_and_run(_navigation_mode, tmp_cache, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from interp.length.pipeline import list_runs
    from interp.length.report import demo_store

    monkeypatch.setenv("INTERP_DEMO", "1")
    run_key = list_runs({"demo": demo_store()})[0]["key"]
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["ltab"] = "SEAL"
    at.switch_page("pages/length.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    items = at.session_state["_report_items"]
    assert items and all(run_key in n for n, _, _ in items)
    assert len({n for n, _, _ in items}) == len(items)
    figs = [f.build() for _, f, _ in items if f is not None]
    assert figs and all(f"run {run_key}" in f.layout.title.text
                        and "organism:reasoner" in f.layout.title.text for f in figs)
    assert any("α = -1,-0.5,-0.25,-0.1,0" in f.layout.title.text for f in figs)
