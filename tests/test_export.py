"""interp.export: figure and table bytes, and the message when Chromium is missing."""

from __future__ import annotations

import io
import json
import time

import pandas as pd
import plotly.graph_objects as go
import pytest

import interp.export as export
from interp.errors import ChromiumMissingError, ExportError


@pytest.fixture
def fig():
    return go.Figure(go.Bar(x=["a", "b", "c"], y=[3.0, 1.0, 2.0]), layout=dict(
        width=400, height=300))


def test_html_is_self_contained(fig):
    html = export.figure_bytes(fig, "html").decode()
    assert html.lstrip().lower().startswith(("<html", "<!doctype html"))
    assert "<script src=" not in html and "plotly.min.js" not in html  # plotly.js inline
    assert len(html) > 1_000_000  # plotly.js itself is a few MB


def test_unknown_formats_raise(fig):
    with pytest.raises(ExportError):
        export.figure_bytes(fig, "gif")
    with pytest.raises(ExportError):
        export.table_bytes([{"a": 1}], "xlsx")
    with pytest.raises(ExportError):
        export.table_bytes(object(), "csv")


def test_missing_chromium_raises_with_instructions(fig, monkeypatch):
    monkeypatch.setattr(export, "chromium_path", lambda: None)
    with pytest.raises(ChromiumMissingError, match="apt-get install -y chromium"):
        export.figure_bytes(fig, "png")


@pytest.mark.skipif(not export.static_export_available(), reason="no Chromium installed")
def test_png_and_svg(fig):
    t = time.perf_counter()
    png = export.figure_bytes(fig, "png")
    first = time.perf_counter() - t
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    # width/height at PNG_SCALE x the layout size (IHDR holds big-endian width, height)
    w, h = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (w, h) == (400 * export.PNG_SCALE, 300 * export.PNG_SCALE)
    t = time.perf_counter()
    svgs = [export.figure_bytes(fig, "svg") for _ in range(3)]
    later = (time.perf_counter() - t) / 3
    assert all(s.lstrip().startswith(b"<svg") for s in svgs)
    print(f"first PNG {first:.2f} s, later SVG {later:.3f} s each")
    assert later < 2.0  # the persistent server: no browser start per export


def test_tables_round_trip():
    df = pd.DataFrame({"layer": pd.array([0, 1, None], dtype="Int64"),
                       "value": [0.5, float("nan"), 2.0], "name": ["x", "y", "z"]})
    back = pd.read_csv(io.BytesIO(export.table_bytes(df, "csv")))
    assert list(back.columns) == ["layer", "value", "name"]
    assert back["value"].iloc[0] == 0.5 and pd.isna(back["value"].iloc[1])
    records = json.loads(export.table_bytes(df, "json"))
    assert records[1] == {"layer": 1, "value": None, "name": "y"}
    assert records[2]["layer"] is None
    # a pivot table keeps its index as a column
    pv = pd.DataFrame({"q": [0.1, 0.2]}, index=pd.Index([0, 1], name="layer"))
    assert json.loads(export.table_bytes(pv, "json")) == [
        {"layer": 0, "q": 0.1}, {"layer": 1, "q": 0.2}]
    assert export.table_bytes(pv, "csv").decode().splitlines()[0] == "layer,q"
    # lists of records and plain dicts
    assert json.loads(export.table_bytes([{"a": 1}, {"a": 2}], "json")) == [{"a": 1}, {"a": 2}]
    assert json.loads(export.table_bytes({"acc": 0.5, "n": 3}, "json")) == {"acc": 0.5, "n": 3}
    assert export.table_bytes({"acc": 0.5}, "csv").decode().splitlines() == [
        "key,value", "acc,0.5"]


def _zip(data: bytes) -> dict[str, bytes]:
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {n: z.read(n) for n in z.namelist()}


def test_report_zip_bundles_figures_and_data(fig):
    table = pd.DataFrame({"x": ["a", "b", "c"], "y": [3.0, 1.0, 2.0]})
    items = [("bars", fig, table), ("bars", fig, None), ("numbers", None, {"n": 3}),
             ("broken", None, object())]
    files = _zip(export.report_zip(items, {"page": "Models", "url": "http://h/models",
                                           "query": {"metric": ["delta_norm"]}},
                                   static=False))
    manifest = json.loads(files.pop("report.json"))
    assert set(files) == {"bars.html", "bars.csv", "bars.json", "bars-2.html",
                          "numbers.csv", "numbers.json", "plotly.min.js"}
    assert files["bars.csv"] == export.table_bytes(table, "csv")
    assert json.loads(files["bars.json"]) == json.loads(export.table_bytes(table, "json"))
    assert json.loads(files["numbers.json"]) == {"n": 3}
    html = files["bars.html"].decode()
    assert 'src="plotly.min.js"' in html and len(html) < 100_000  # plotly.js shared
    assert b"plotly" in files["plotly.min.js"][:2000].lower()
    assert manifest["link"] == "http://h/models?metric=delta_norm"
    assert manifest["page"] == "Models" and manifest["items"] == 4
    assert sorted(manifest["files"]) == sorted(files.keys() - {"plotly.min.js"})
    assert set(manifest["errors"]) == {"broken.csv", "broken.json"}
    assert manifest["static_images"] == export.CHROMIUM_HELP  # says why PNG/SVG are missing


@pytest.mark.skipif(not export.static_export_available(), reason="needs Chromium")
def test_report_zip_with_static_images(fig):
    files = _zip(export.report_zip([("f", fig, None)], static=True))
    assert files["f.png"][:4] == b"\x89PNG"
    assert b"<svg" in files["f.svg"][:400]
    assert json.loads(files["report.json"])["static_images"] is True
    assert files["report.json"] and "link" in json.loads(files["report.json"])
