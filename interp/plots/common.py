"""Shared look of every figure, generic builders, and the Models page's figures.

Colour convention (used by every page, and by the UI text): the **base** model is
blue, the **fine-tune** (reasoning model) orange, a **difference** between them
green. Magnitudes use the sequential :data:`SEQUENTIAL` scale (Viridis: readable in
greyscale and by colour-blind readers); signed quantities use the diverging
:data:`DIVERGING` scale centred on 0 (red positive, blue negative).
"""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd
import plotly.graph_objects as go

PALETTE: dict[str, str] = {
    "base": "#1C83E1",        # Streamlit's :blue[] -- the base model, and nothing else
    "fine": "#FF8700",        # Streamlit's :orange[] -- the fine-tune, and nothing else
    "difference": "#21A366",  # Streamlit's :green[]
    "other": "#7F7F7F",
    "positive": "#B2182B",    # RdBu's red end: signed values above 0
    "negative": "#2166AC",    # RdBu's blue end: signed values below 0
    "neutral": "#9E9E9E",
    "panel": "#F6F6F6",       # light background of HTML panels
    "light": "#AAAAAA",       # thin outlines
    "guide": "#666666",       # reference lines (targets, chance, α = 0)
    "ink": "#000000",         # rings around selected items
}
"""The one palette of the workbench: every plot builder takes its colours from here."""
ROLE_COLORS: dict[str, str] = {k: PALETTE[k] for k in ("base", "fine", "difference", "other")}
# Series that are neither the base nor the fine-tune (layers, runs, metrics, α values):
# never blue or orange, so a blue or orange line always means one of the two models.
SERIES_COLORS: list[str] = ["#9467BD", "#21A366", "#8C564B", "#E377C2", "#BCBD22",
                            "#17BECF", "#D62728", "#7F7F7F"]
ROLE_MARKDOWN = {"base": "blue", "fine": "orange", "difference": "green"}
SEQUENTIAL = "Viridis"
DIVERGING = "RdBu_r"
FONT = "Inter, Helvetica, Arial, sans-serif"


def style(fig: go.Figure, title: str | None = None, *, height: int | None = 420,
          x_title: str | None = None, y_title: str | None = None) -> go.Figure:
    """Apply the common layout: white template, title, axis titles, compact margins."""
    fig.update_layout(
        template="plotly_white", font=dict(family=FONT, size=13),
        title=dict(text=title, x=0.0, xanchor="left") if title else None,
        margin=dict(l=60, r=30, t=60 if title else 20, b=50), height=height,
        legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="right", x=1.0),
    )
    if x_title is not None:
        fig.update_xaxes(title_text=x_title)
    if y_title is not None:
        fig.update_yaxes(title_text=y_title)
    return fig


def heatmap(matrix: pd.DataFrame, title: str | None = None, *, colorbar_title: str = "",
            x_title: str | None = None, y_title: str | None = None, signed: bool = False,
            value_format: str = ".3g", annotate: bool | None = None,
            height: int | None = None) -> go.Figure:
    """A labelled heatmap of a DataFrame (rows top to bottom in index order).

    ``signed=True`` uses the diverging scale centred on 0. Cells are annotated with
    their values when the matrix is small (``annotate=None``: at most 300 cells).
    """
    z = matrix.to_numpy(dtype=float)
    x = [str(c) for c in matrix.columns]
    y = [str(i) for i in matrix.index]
    if annotate is None:
        annotate = z.size <= 300
    kw: dict[str, Any] = dict(colorscale=DIVERGING, zmid=0.0) if signed else dict(
        colorscale=SEQUENTIAL)
    fig = go.Figure(go.Heatmap(
        z=z, x=x, y=y, colorbar=dict(title=dict(text=colorbar_title, side="right")),
        hovertemplate=f"{y_title or 'row'} %{{y}}<br>{x_title or 'column'} %{{x}}<br>"
                      f"%{{z:{value_format}}}<extra></extra>",
        texttemplate=f"%{{z:{value_format}}}" if annotate else None,
        xgap=1, ygap=1, **kw))
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category", side="bottom")
    if height is None:
        height = max(260, min(900, 90 + 34 * len(y)))
    return style(fig, title, height=height, x_title=x_title, y_title=y_title)


def bar(labels: Sequence[str], values: Sequence[float], title: str | None = None, *,
        color: str | Sequence[str] = ROLE_COLORS["difference"], y_title: str | None = None,
        x_title: str | None = None, value_format: str = ".3g",
        hover: Sequence[str] | None = None, height: int | None = 380) -> go.Figure:
    """A vertical bar chart with one bar per label (order kept)."""
    fig = go.Figure(go.Bar(
        x=list(labels), y=list(values), marker_color=color,
        customdata=list(hover) if hover is not None else None,
        hovertemplate="%{x}<br>%{y:" + value_format + "}"
                      + ("<br>%{customdata}" if hover is not None else "")
                      + "<extra></extra>"))
    fig.update_xaxes(type="category")
    return style(fig, title, height=height, x_title=x_title, y_title=y_title)


def legend_below(fig: go.Figure, y: float = -0.16, bottom: int = 90) -> go.Figure:
    """Put the legend in a row under the plot (for figures whose top holds subplot
    titles, where :func:`style`'s legend above the plot would cover them)."""
    fig.update_layout(legend=dict(orientation="h", yanchor="top", y=y, xanchor="left", x=0.0),
                      margin=dict(b=bottom))
    return fig


def series_color(i: int) -> str:
    """The ``i``-th colour for series that are neither base nor fine-tune."""
    return SERIES_COLORS[i % len(SERIES_COLORS)]


FRACTION_RANGE = (-0.05, 1.05)  # a little past [0, 1]: error bars that end at 0 or 1 show


def fraction_axis(fig: go.Figure, **selector: Any) -> go.Figure:
    """A y axis for fractions in [0, 1] (accuracy, rates): range :data:`FRACTION_RANGE`
    (so markers and interval ends at exactly 0 or 1 are drawn whole, not cut off),
    ticks 0, 0.2, ..., 1. ``selector`` is passed to ``update_yaxes`` (e.g. row, col)."""
    fig.update_yaxes(range=list(FRACTION_RANGE), tickmode="array",
                     tickvals=[0, 0.2, 0.4, 0.6, 0.8, 1.0], **selector)
    return fig


def log_ticks(lo: float, hi: float) -> list[float]:
    """Tick values for a log axis over ``lo`` to ``hi`` (both > 0): 1-2-5 steps per
    decade (1, 2, 5, 10, 20, ...), or every decade when the span is wide, from the last
    tick at or below ``lo`` to the first at or above ``hi`` (so the range is enclosed);
    written out in full by :func:`log_axis` instead of plotly's minor labels
    ("6 7 8 9 10 2 3")."""
    import math

    if not (lo > 0 and hi > 0):
        raise ValueError("log ticks need positive bounds")
    lo, hi = min(lo, hi), max(lo, hi)
    d0, d1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    steps = (1, 2, 5) if d1 - d0 <= 2 else (1,)
    ticks = [float(f"{m * 10.0 ** d:.12g}") for d in range(d0, d1 + 1) for m in steps]
    first = max(i for i, t in enumerate(ticks) if t <= lo * (1 + 1e-12))
    last = min(i for i, t in enumerate(ticks) if t >= hi * (1 - 1e-12))
    return ticks[first:last + 1]


def log_axis(fig: go.Figure, lo: float, hi: float, axis: str = "x", pad: float = 0.12
             ) -> go.Figure:
    """Make ``axis`` a log axis over [lo, hi] (padded by ``pad`` decades) with readable
    ticks (:func:`log_ticks`, labelled ``%g``)."""
    import math

    ticks = log_ticks(lo, hi)
    kw = dict(type="log", range=[math.log10(ticks[0]) - pad, math.log10(ticks[-1]) + pad],
              tickmode="array", tickvals=ticks, ticktext=[f"{t:g}" for t in ticks],
              minor=dict(showgrid=False))
    (fig.update_xaxes if axis == "x" else fig.update_yaxes)(**kw)
    return fig


MISSING = "–"  # how a table shows a value that does not apply (never "None" or "nan")


def table_view(df: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """``df`` for display in a table: every column with a missing value (None, NaN)
    shows it as :data:`MISSING` (its numbers written with ``digits`` significant digits,
    whole numbers without decimals); columns without missing values are left as they
    are (numeric, sortable). Exports use the DataFrame itself. (Streamlit writes a
    missing cell as "None" whatever a Styler says, so the cells themselves change.)"""
    out = df.copy()
    for c in out.columns:
        col = out[c]
        if not col.isna().any():
            continue
        vals = col.dropna()
        numeric = len(vals) > 0 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                        for v in vals)
        whole = numeric and all(float(v).is_integer() for v in vals)

        def show(v: Any, numeric: bool = numeric, whole: bool = whole) -> str:
            if v is None or (isinstance(v, float) and v != v):
                return MISSING
            if numeric:
                return f"{v:,.0f}" if whole else f"{v:.{digits}g}"
            return str(v)

        out[c] = [show(v) for v in col]
    return out


# --------------------------------------------------------------------- Models page
METRIC_LABELS = {
    "relative": "relative change ‖Δθ‖ / ‖θ_base‖",
    "delta_norm": "absolute change ‖Δθ‖",
}


def weight_diff_heatmap(pivot: pd.DataFrame, metric: str = "relative") -> go.Figure:
    """Layer x module heatmap of :func:`interp.weights.weight_diff_pivot`."""
    return heatmap(pivot, None, colorbar_title="‖Δθ‖/‖θ‖" if metric == "relative" else "‖Δθ‖",
                   x_title="module", y_title="layer")


def weight_diff_bars(groups: pd.DataFrame, metric: str = "relative") -> go.Figure:
    """One bar per group of :func:`interp.weights.weight_diff_groups`."""
    hover = [f"{n:,} parameters" for n in groups["numel"]]
    colors = [ROLE_COLORS["difference"] if g.startswith("layer") else ROLE_COLORS["other"]
              for g in groups["group"]]
    return bar(groups["group"], groups[metric], None, color=colors,
               y_title=METRIC_LABELS[metric], hover=hover)
