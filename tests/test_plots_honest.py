"""Plots that do not mislead: one palette, intervals inside [0, 1] drawn whole, visible
coinciding curves, fitted axes, unambiguous labels, readable log ticks, sorted lenses."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from interp.plots.common import FRACTION_RANGE, PALETTE, ROLE_COLORS, SERIES_COLORS, log_ticks

ROOT = Path(__file__).resolve().parents[1]
HEX = re.compile(r"#[0-9A-Fa-f]{6}\b|#[0-9A-Fa-f]{3}\b")


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval, written out here independently of the code."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


# ------------------------------------------------------------------ palette
def test_every_plot_builder_takes_its_colours_from_the_one_palette():
    builders = sorted(ROOT.glob("interp/**/plots.py"))
    assert len(builders) >= 5
    for path in builders:
        text = path.read_text()
        assert not HEX.findall(text), f"{path.name} has its own colour literals"
        assert "plots.common import" in text
    # the palette itself: base blue and fine-tune orange, never among the series colours
    assert ROLE_COLORS["base"] == PALETTE["base"] and ROLE_COLORS["fine"] == PALETTE["fine"]
    assert PALETTE["base"] not in SERIES_COLORS and PALETTE["fine"] not in SERIES_COLORS
    # the feature card's HTML bars too
    from interp.features.card import _bars

    html = _bars([("up", 1.0), ("down", -1.0)], signed=True)
    assert PALETTE["positive"] in html and PALETTE["negative"] in html


def test_series_that_are_not_the_base_model_are_never_blue():
    from interp.adapters.plots import bridged_figure, curves_frame, loss_curves
    from interp.features.plots import QUALITATIVE, REGION_COLORS
    from interp.length.plots import histogram_figure, histogram_frame

    df = histogram_frame({"direction set": [1, 5, 9], "eval, before edit": [2, 30],
                          "eval, after edit": [3, 4]}, 5, 20)
    colors = [t.marker.color for t in histogram_figure(df).data]
    assert len(set(colors)) == 3 and PALETTE["base"] not in colors
    runs = {f"run {i}": [{"step": s, "kl": 1.0 / (s + 1)} for s in range(3)] for i in range(3)}
    colors = [t.line.color for t in loss_curves(curves_frame(runs)).data]
    assert len(set(colors)) == 3 and not {PALETTE["base"], PALETTE["fine"]} & set(colors)
    fa = {"bridged_a2r": [0.1, 0.2], "bridged_r2a": [0.2, 0.1], "kl_hybrid": 0.3}
    colors = [t.line.color for t in bridged_figure(fa).data]
    assert not {PALETTE["base"], PALETTE["fine"]} & set(colors)
    assert not {PALETTE["base"], PALETTE["fine"]} & set(QUALITATIVE + list(
        REGION_COLORS.values()))


# ------------------------------------------------------------------ intervals
def _error_ends(trace):
    y = np.asarray(trace.y, float)
    up = np.asarray(trace.error_y.array, float)
    down = np.asarray(trace.error_y.arrayminus, float)
    return y - down, y + up


def test_accuracy_vs_alpha_wilson_intervals_stay_in_0_1_and_are_drawn_whole():
    from interp.vectors.plots import accuracy_vs_alpha

    correct = np.array([[1] * 20, [0] * 20, [1] * 15 + [0] * 5])
    fig, df = accuracy_vs_alpha([-1.0, 0.0, 1.0], correct)
    for (k, n), lo, hi in zip(((20, 20), (0, 20), (15, 20)), df["ci_low"], df["ci_high"]):
        want = wilson(k, n)
        assert (lo, hi) == pytest.approx(want, abs=1e-6)   # z = 1.96
    lo, hi = _error_ends(fig.data[0])
    assert np.all(lo >= -1e-12) and np.all(hi <= 1 + 1e-12)
    assert fig.data[0].error_y.symmetric is False
    assert np.asarray(fig.data[0].error_y.array)[1] > 0       # 0/20: the bar points up
    assert np.asarray(fig.data[0].error_y.arrayminus)[0] > 0  # 20/20: the bar points down
    rng = fig.layout.yaxis.range
    assert rng[0] < 0 and rng[1] > 1                           # ends at 0 and 1 not cut off
    assert tuple(rng) == FRACTION_RANGE


def test_length_sweep_fractions_use_their_own_asymmetric_intervals_unclipped():
    from interp.length.plots import sweep_figure, sweep_frame

    def rate(k, n):
        lo, hi = wilson(k, n)
        return {"value": k / n, "ci_low": lo, "ci_high": hi, "n": n}

    per_alpha = [{"alpha": a, "mean_think_tokens": m, "sem_think_tokens": 1.0, "n": 30,
                  "hesitations": h, "short_fraction": rate(s, 30), "accuracy": rate(c, 30)}
                 for a, m, h, s, c in ((-1.0, 10, 0.1, 30, 0), (0.0, 30, 0.5, 3, 30),
                                       (1.0, 50, 2.0, 0, 20))]
    df = sweep_frame(per_alpha)
    fig = sweep_figure(df)
    names = [t.name for t in fig.data]
    assert "hesitations / response" in names   # SEAL's main measure is on the chart
    for name, col in (("accuracy", "accuracy"), ("short-thinking fraction", "short_fraction")):
        t = fig.data[names.index(name)]
        lo, hi = _error_ends(t)
        want = np.array([wilson(int(round(v * 30)), 30) for v in df[col]])
        assert lo == pytest.approx(want[:, 0]) and hi == pytest.approx(want[:, 1])
        assert np.all(lo >= -1e-12) and np.all(hi <= 1 + 1e-12)
        axis = fig.layout[t.yaxis.replace("y", "yaxis")]
        assert axis.range[0] < 0 and axis.range[1] > 1
    hes = fig.data[names.index("hesitations / response")]
    assert list(hes.y) == [0.1, 0.5, 2.0]
    marked = sweep_figure(df, highlight=-1.0)
    assert any("headline α = -1" in (a.text or "") for a in marked.layout.annotations)
    assert len(marked.layout.shapes) == len(fig.layout.shapes) + 3   # one line per panel
    # without hesitations in the data (the all-layer sweep) there is no such panel
    fig2 = sweep_figure(df.drop(columns=["hesitations"]))
    assert "hesitations / response" not in [t.name for t in fig2.data]


# ------------------------------------------------------------------ coinciding curves
def test_separability_curves_that_coincide_stay_visible():
    from interp.length.plots import separability_figure, separability_frame

    ones = [1.0, 1.0, 1.0, 1.0]
    df = separability_frame({"resid_mid": ones, "resid_post": ones},
                            {"resid_mid": ones, "resid_post": ones},
                            {"resid_mid": ones, "resid_post": ones})
    fig = separability_figure(df)
    assert len(fig.data) == 4
    by_axes: dict = {}
    for t in fig.data:
        by_axes.setdefault((t.xaxis, t.yaxis), []).append(
            (tuple(np.round(t.x, 6)), tuple(t.y), t.marker.symbol))
    for traces in by_axes.values():   # no two curves in one panel draw the same points
        pts = [(x, y) for x, y, _ in traces]
        assert len(set(pts)) == len(pts)
        assert len({s for _, _, s in traces}) == len(traces)
    # the true layer and value are in the hover data
    t = fig.data[1]
    assert [int(c[0]) for c in t.customdata] == [0, 1, 2, 3]
    assert any("1.0" in a.text for a in fig.layout.annotations if a.text)


# ------------------------------------------------------------------ fitted axes, labels
def test_bridged_kl_axis_is_fitted_to_the_curves_and_says_its_range():
    from interp.adapters.plots import bridged_figure

    fa = {"bridged_a2r": [0.001, 0.004, 0.008, 0.002, 0.0],
          "bridged_r2a": [0.0, 0.003, 0.006, 0.009, 0.001], "kl_hybrid": 5.5}
    fig = bridged_figure(fa)
    lo, hi = fig.layout.yaxis.range
    assert lo == 0 and 0.009 <= hi <= 0.02
    assert "0.01" in fig.layout.title.text or "0.0104" in fig.layout.title.text
    assert any("5.5" in a.text for a in fig.layout.annotations)   # the hybrid is written
    assert not fig.layout.shapes                                 # not drawn off the scale
    near = bridged_figure({**fa, "kl_hybrid": 0.012})            # near the curves: a line
    assert len(near.layout.shapes) == 1 and near.layout.yaxis.range[1] >= 0.012


def test_per_layer_chart_keeps_layer_names_apart_from_l0_sparsity():
    from interp.adapters.plots import per_layer_figure

    fa = {"l0_layers": [4.0, 6.5, 3.2], "dead_layers": [0.1, 0.0, 0.2],
          "nmse_adapter": [0.0, 0.01, 0.02, 0.03], "nmse_hybrid": [0.0, 0.1, 0.2, 0.3]}
    fig = per_layer_figure(fa)
    for t in fig.data:
        assert [str(x) for x in t.x] == ["layer 0", "layer 1", "layer 2"]
        assert not any(re.fullmatch(r"L\d+", str(x)) for x in t.x)
    text = list(fig.data[1].text)
    assert text == ["L0 = 4.0", "L0 = 6.5", "L0 = 3.2"]
    assert "active features" in fig.data[1].name
    # its log axis (and the training curves') has labelled ticks, not plotly's minor digits
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis.tickmode == "array"
    assert list(fig.layout.yaxis.ticktext) == ["0.01", "0.02", "0.05", "0.1", "0.2", "0.5"]
    from interp.adapters.plots import curves_frame, loss_curves

    curves = loss_curves(curves_frame({"r": [{"step": s, "kl": 10.0 ** -s} for s in range(4)]}))
    assert list(curves.layout.yaxis.ticktext) == ["0.001", "0.01", "0.1", "1"]


def test_log_ticks_are_readable_and_cover_the_range():
    assert log_ticks(2.28, 12.66) == [2, 5, 10, 20]   # enclosing the range
    assert log_ticks(6, 30) == [5, 10, 20, 50]
    assert log_ticks(0.003, 0.1) == pytest.approx([0.002, 0.005, 0.01, 0.02, 0.05, 0.1])
    assert log_ticks(2, 10) == [2, 5, 10]
    t = log_ticks(1, 1e6)                        # wide: one tick per decade
    assert t == pytest.approx([10.0 ** k for k in range(7)])
    assert log_ticks(6.5, 7.5) == [5, 10]        # narrow: a tick either side


def test_frontier_log_axis_has_explicit_readable_ticks_and_says_its_steps():
    from interp.adapters.plots import frontier_figure

    pts = [{"l1": l1, "mean_l0": l0, "kl_gap_closed": g} for l1, l0, g in
           ((0.003, 12.66, 0.9998), (0.01, 7.12, 0.9996), (0.1, 2.29, 0.998))]
    fig = frontier_figure(pts, steps=3000, table_steps=[3000])
    ax = fig.layout.xaxis
    assert ax.type == "log" and ax.tickmode == "array"
    assert list(ax.ticktext) == [f"{v:g}" for v in ax.tickvals] == ["2", "5", "10", "20"]
    lo, hi = ax.range
    assert 10 ** lo <= 2.29 and 10 ** hi >= 12.66
    assert "3,000 training steps" in fig.layout.title.text
    assert "table" not in fig.layout.title.text
    other = frontier_figure(pts, steps=3000, table_steps=[600])
    assert "table above: 600 steps" in other.layout.title.text


# ------------------------------------------------------------------ logit lens
def test_vector_lens_puts_the_most_positive_logits_on_top():
    from interp.vectors.plots import vector_lens

    # as a lens returns them: top k descending, bottom k from the most negative up; here
    # the logits are mostly positive, so the bottom list holds positive values too
    logits = {"a": 5.0, "b": 4.0, "c": 3.0, "d": 1.5, "e": 0.5, "f": -0.2}
    ordered = sorted(logits.items(), key=lambda kv: -kv[1])
    lens = {"mode": "raw", "top": ordered[:4], "bottom": ordered[::-1][:4]}
    fig, df = vector_lens(lens)
    bar = fig.data[0]
    assert list(df["logit"]) == sorted(logits.values(), reverse=True)   # once each
    assert [y.strip() for y in bar.y] == ["a", "b", "c", "d", "e", "f"]
    assert fig.layout.yaxis.autorange == "reversed"    # first row drawn at the top
    assert list(bar.x)[0] == max(logits.values()) and list(bar.x)[-1] == min(logits.values())
    sides = dict(zip(df["token"], df["side"]))
    assert sides["e"] == "promoted" and sides["f"] == "suppressed"
    colors = dict(zip([y.strip() for y in bar.y], bar.marker.color))
    assert colors["e"] == PALETTE["positive"] and colors["f"] == PALETTE["negative"]


def test_vector_lens_on_a_real_lens_sorts_by_value(tiny_lens):
    from interp.vectors.plots import vector_lens

    fig, df = vector_lens(tiny_lens)
    x = np.asarray(fig.data[0].x, float)
    assert np.all(np.diff(x) <= 0)
    top_value = float(tiny_lens["logits"].max())
    assert x[0] == pytest.approx(top_value)


@pytest.fixture
def tiny_lens(tmp_path):
    import torch

    from interp.models import load_model
    from interp.vectors.lens import vector_logit_lens
    from tests._tiny import save_tiny_qwen

    model = load_model(str(save_tiny_qwen(tmp_path / "tiny")), device="cpu")
    torch.manual_seed(0)
    v = torch.randn(model.hooked.cfg.d_model) + 3.0
    return vector_logit_lens(model, v, k=12)


def test_fraction_axis_frame_shows_whole_markers_at_0_and_1():
    from interp.length.plots import cumulative_figure, shortest_figure

    df = pd.DataFrame({"series": ["a", "a"], "shortest": ["5%", "all"], "n": [1, 20],
                       "accuracy": [0.0, 1.0]})
    fig = shortest_figure(df)
    assert fig.layout.yaxis.range[0] < 0 and fig.layout.yaxis.range[1] > 1
    dfc = pd.DataFrame({"series": ["a"], "threshold": [3], "n": [4], "accuracy": [1.0],
                        "fraction_of_responses": [1.0]})
    assert cumulative_figure(dfc).layout.yaxis.range[1] > 1


# ------------------------------------------------------------------ tables
def test_table_view_shows_missing_values_as_a_dash_and_keeps_full_columns_numeric():
    from interp.plots.common import MISSING, table_view

    df = pd.DataFrame({"format": ["think", None, np.nan], "n": [512.0, np.nan, 3.0],
                       "accuracy": [0.958984, np.nan, 0.5], "full": [0.1, 0.2, 0.3]},
                      index=["a", "b", "c"])
    view = table_view(df)
    cells = [str(v) for v in view.to_numpy().ravel()]
    assert "None" not in cells and "nan" not in cells
    assert cells.count(MISSING) == 4
    assert list(view["n"]) == ["512", MISSING, "3"]
    assert list(view["accuracy"]) == ["0.959", MISSING, "0.5"]
    assert view["full"].dtype.kind == "f"              # no missing value: stays numeric
    assert df["n"].isna().sum() == 1                   # the data itself is unchanged


def test_behaviour_table_is_compact_with_the_rest_on_demand(_navigation_mode, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from interp.organisms.report import (
        BEHAVIOUR_KEY_COLUMNS,
        behaviour_artifact,
        behaviour_key_table,
        behaviour_table,
    )

    art, _ = behaviour_artifact()
    full = behaviour_table(art)
    key = behaviour_key_table(full)
    assert full.shape[1] > 30 and key.shape[1] <= len(BEHAVIOUR_KEY_COLUMNS) <= 10
    assert key.loc["reasoner", "accuracy"] == full.loc["reasoner", "accuracy"]
    monkeypatch.setenv("INTERP_DEMO", "1")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.switch_page("pages/models.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    tables = [d.value for d in at.dataframe]
    shown = [t for t in tables if "accuracy" in t.columns and "reasoner" in t.index]
    assert shown and shown[0].shape[1] <= 10                 # the compact one comes first
    assert any(t.shape[1] == full.shape[1] for t in tables)  # all measures, in an expander
    assert any(f"All {full.shape[1]} measures" in str(e.label) for e in at.expander)
