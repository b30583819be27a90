"""Figures and their data tables for the Reasoning-length page (plotly; no streamlit).

Each ``*_frame`` returns the plotted data as a DataFrame (what the page exports as
CSV/JSON); each ``*_figure`` builds the figure from that frame.
"""

from __future__ import annotations

import textwrap
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..plots.common import (
    DIVERGING,
    ROLE_COLORS,
    fraction_axis,
    heatmap,
    legend_below,
    series_color,
    style,
)

# Every series on this page is the fine-tune (before / after an edit, per α, per split):
# the unedited, unsteered fine-tune is orange, everything else takes SERIES_COLORS.


# ------------------------------------------------------------------ length histograms
def histogram_frame(series: Mapping[str, Sequence[int]], bin_width: int = 10,
                    overflow: int | None = None) -> pd.DataFrame:
    """Counts per length bin for each named series; lengths >= ``overflow`` share the
    last bin (labelled ``≥ overflow``). Columns: series, bin, bin_start, count, fraction."""
    allv = np.concatenate([np.asarray(v, dtype=int) for v in series.values()]) \
        if series else np.zeros(0, int)
    top = int(allv.max()) + 1 if allv.size else 1
    cap = overflow if overflow is not None else top
    edges = list(range(0, max(cap, bin_width), bin_width))
    rows = []
    for name, v in series.items():
        v = np.asarray(v, dtype=int)
        for s in edges:
            e = min(s + bin_width, cap)
            c = int(((v >= s) & (v < e)).sum())
            rows.append({"series": name, "bin": f"{s}–{e - 1}", "bin_start": s, "count": c,
                         "fraction": c / max(len(v), 1)})
        if overflow is not None:
            c = int((v >= cap).sum())
            rows.append({"series": name, "bin": f"≥ {cap}", "bin_start": cap, "count": c,
                         "fraction": c / max(len(v), 1)})
    return pd.DataFrame(rows)


def histogram_figure(df: pd.DataFrame, normalise: bool = True,
                     title: str | None = None) -> go.Figure:
    y = "fraction" if normalise else "count"
    fig = go.Figure()
    for i, (name, g) in enumerate(df.groupby("series", sort=False)):
        fig.add_bar(x=g["bin"], y=g[y], name=str(name),
                    marker_color=series_color(i))
    fig.update_layout(barmode="group", bargap=0.1)
    fig.update_xaxes(type="category")
    return style(fig, title, x_title="thinking tokens",
                 y_title="fraction of responses" if normalise else "responses")


# ------------------------------------------------------------------ α sweep
def sweep_frame(per_alpha: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    rows = []
    for p in per_alpha:
        r = {"alpha": p["alpha"], "mean_think_tokens": p["mean_think_tokens"],
             **({"hesitations": p["hesitations"]} if "hesitations" in p else {}),
             "sem_think_tokens": p.get("sem_think_tokens"),
             "short_fraction": p["short_fraction"]["value"],
             "short_ci_low": p["short_fraction"]["ci_low"],
             "short_ci_high": p["short_fraction"]["ci_high"], "n": p["n"]}
        if "accuracy" in p:
            r.update(accuracy=p["accuracy"]["value"], accuracy_ci_low=p["accuracy"]["ci_low"],
                     accuracy_ci_high=p["accuracy"]["ci_high"])
        rows.append(r)
    return pd.DataFrame(rows)


SWEEP_PANELS = (("hesitations", "hesitations / response"),
                ("mean_think_tokens", "mean thinking tokens"),
                ("fractions", "fraction (95% Wilson CI)"))


def sweep_figure(df: pd.DataFrame, title: str | None = None,
                 x_title: str = "α (units of dir_l; negative = towards short)",
                 highlight: float | None = None) -> go.Figure:
    """One panel per measure against α, sharing the x axis: hesitation words per
    response (when the frame has them: SEAL's main measure), mean thinking length
    (±1 s.e.m.) and accuracy / short-thinking fraction (95% Wilson intervals, drawn
    whole: the axis runs a little past 0 and 1). ``highlight``: an α marked with a
    dotted line labelled "headline" (the setting a page reports)."""
    from plotly.subplots import make_subplots

    panels = [p for p in SWEEP_PANELS if p[0] != "hesitations" or "hesitations" in df]
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        row_heights=[1.0] * len(panels))
    row = {name: i + 1 for i, (name, _) in enumerate(panels)}
    if "hesitations" in row:
        fig.add_scatter(x=df["alpha"], y=df["hesitations"], name="hesitations / response",
                        mode="lines+markers", line_color=series_color(0),
                        row=row["hesitations"], col=1)
    fig.add_scatter(x=df["alpha"], y=df["mean_think_tokens"], name="mean thinking tokens",
                    mode="lines+markers", line_color=ROLE_COLORS["fine"],
                    error_y=dict(type="data", array=df["sem_think_tokens"].fillna(0)),
                    row=row["mean_think_tokens"], col=1)
    for k, (col, lo, hi, name) in enumerate((
            ("accuracy", "accuracy_ci_low", "accuracy_ci_high", "accuracy"),
            ("short_fraction", "short_ci_low", "short_ci_high", "short-thinking fraction"))):
        if col in df:
            fig.add_scatter(x=df["alpha"], y=df[col], name=name, mode="lines+markers",
                            line=dict(color=series_color(k + 1), dash="dot"),
                            error_y=dict(type="data", symmetric=False,
                                         array=df[hi] - df[col], arrayminus=df[col] - df[lo]),
                            row=row["fractions"], col=1)
    for name, label in panels:
        fig.update_yaxes(title_text=label, row=row[name], col=1)
        fig.add_vline(x=0, line_dash="dash", line_color=ROLE_COLORS["other"], row=row[name],
                      col=1)
    if highlight is not None and highlight != 0:
        for name, _ in panels:
            fig.add_vline(x=highlight, line_dash="dot", line_color=ROLE_COLORS["other"],
                          row=row[name], col=1)
        fig.add_annotation(x=highlight, y=1.0, xref="x", yref="paper", yanchor="bottom",
                           text=f"headline α = {highlight:g}", showarrow=False,
                           font=dict(size=11, color=ROLE_COLORS["other"]))
    fraction_axis(fig, row=row["fractions"], col=1)
    style(fig, title, height=190 * len(panels) + 150)
    legend_below(fig, y=-0.08 if len(panels) > 2 else -0.12, bottom=110)
    fig.update_xaxes(title_text=x_title, row=len(panels), col=1)
    return fig


# ------------------------------------------------------------------ accuracy vs length
def shortest_frame(groups: Mapping[str, Sequence[Mapping[str, Any]]],
                   fractions: Sequence[float] = (0.05, 0.1, 0.2, 1.0)) -> pd.DataFrame:
    """Accuracy of the shortest ``f`` of responses, for each named record list."""
    rows = []
    for name, recs in groups.items():
        recs = [r for r in recs if "correct" in r]
        order = sorted(range(len(recs)), key=lambda i: (recs[i]["think_tokens"], i))
        for f in fractions:
            k = max(1, int(round(f * len(recs)))) if recs else 0
            sel = [recs[i]["correct"] for i in order[:k]]
            rows.append({"series": name, "shortest": "all" if f >= 1 else f"{f:.0%}",
                         "n": k, "accuracy": float(np.mean(sel)) if sel else np.nan})
    return pd.DataFrame(rows)


def shortest_figure(df: pd.DataFrame, title: str | None = None) -> go.Figure:
    fig = go.Figure()
    for i, (name, g) in enumerate(df.groupby("series", sort=False)):
        fig.add_bar(x=g["shortest"], y=g["accuracy"], name=str(name),
                    marker_color=series_color(i),
                    customdata=g["n"], hovertemplate="%{x}: %{y:.3f} (n=%{customdata})")
    fig.update_layout(barmode="group")
    fig.update_xaxes(type="category")
    style(fig, title, x_title="shortest responses", y_title="accuracy")
    return fraction_axis(fig)


def cumulative_frame(groups: Mapping[str, Sequence[Mapping[str, Any]]]) -> pd.DataFrame:
    """Accuracy of the responses with thinking length <= t, for every observed t."""
    rows = []
    for name, recs in groups.items():
        recs = [r for r in recs if "correct" in r]
        if not recs:
            continue
        L = np.array([r["think_tokens"] for r in recs])
        c = np.array([r["correct"] for r in recs], dtype=float)
        for t in np.unique(L):
            m = L <= t
            rows.append({"series": name, "threshold": int(t), "n": int(m.sum()),
                         "fraction_of_responses": float(m.mean()),
                         "accuracy": float(c[m].mean())})
    return pd.DataFrame(rows)


def cumulative_figure(df: pd.DataFrame, title: str | None = None) -> go.Figure:
    fig = go.Figure()
    for i, (name, g) in enumerate(df.groupby("series", sort=False)):
        fig.add_scatter(x=g["threshold"], y=g["accuracy"], name=str(name), mode="lines+markers",
                        line=dict(shape="hv", color=series_color(i)),
                        customdata=g["n"], hovertemplate="≤ %{x}: %{y:.3f} (n=%{customdata})")
    style(fig, title, x_title="thinking length threshold t (tokens)",
          y_title="accuracy of responses with length ≤ t")
    return fraction_axis(fig)


# ------------------------------------------------------------------ direction
def separability_frame(auroc: Mapping[str, Sequence[float]],
                       probe: Mapping[str, Sequence[float]],
                       norms: Mapping[str, Sequence[float]]) -> pd.DataFrame:
    rows = []
    for s, vals in auroc.items():
        for layer, a in enumerate(vals):
            rows.append({"site": s, "layer": layer, "auroc": a,
                         "probe_accuracy": probe[s][layer], "norm": norms[s][layer]})
    return pd.DataFrame(rows)


PROBE_OFFSET = 0.12  # probe-accuracy points sit this far right of their layer


def separability_figure(df: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Held-out AUROC and probe accuracy per layer, one panel per site. Within a panel
    the probe-accuracy points are drawn :data:`PROBE_OFFSET` to the right of their layer
    with another marker, so curves that coincide (e.g. all at 1.0) stay visible; the
    hover gives the true layer and value."""
    from plotly.subplots import make_subplots

    sites = list(dict.fromkeys(df["site"]))
    fig = make_subplots(rows=1, cols=max(1, len(sites)), shared_yaxes=True,
                        subplot_titles=sites, horizontal_spacing=0.05)
    for i, s in enumerate(sites):
        g = df[df["site"] == s]
        for k, (col, name, dx, marker, dash) in enumerate((
                ("auroc", "AUROC", 0.0, dict(symbol="circle", size=9), "solid"),
                ("probe_accuracy", "probe accuracy", PROBE_OFFSET,
                 dict(symbol="diamond-open", size=10, line=dict(width=2)), "dot"))):
            fig.add_scatter(x=g["layer"] + dx, y=g[col], name=name, legendgroup=name,
                            showlegend=i == 0, mode="lines+markers", marker=marker,
                            line=dict(color=series_color(k), dash=dash),
                            customdata=np.stack([g["layer"], g[col]], axis=1),
                            hovertemplate=f"{s} layer %{{customdata[0]}}<br>{name} "
                                          "%{customdata[1]:.3f}<extra></extra>",
                            row=1, col=i + 1)
        fig.update_xaxes(tickmode="array", tickvals=list(g["layer"]), title_text="layer",
                         row=1, col=i + 1)
    style(fig, title, y_title=None, height=460)
    legend_below(fig, y=-0.18, bottom=120)
    fig.update_yaxes(range=[0.4, 1.04], title_text="held-out separability", row=1, col=1)
    both = df[(df["auroc"] >= 0.999) & (df["probe_accuracy"] >= 0.999)]
    if len(both):
        fig.add_annotation(text=f"{len(both)} site-layer(s) at 1.0 on both measures; the "
                                "probe points sit just right of their layer", xref="paper",
                           yref="paper", x=1.0, y=-0.18, showarrow=False, xanchor="right",
                           yanchor="top", font=dict(size=11, color=ROLE_COLORS["other"]))
    return fig


def cosine_figure(cos: np.ndarray, title: str | None = None) -> go.Figure:
    n = cos.shape[0]
    df = pd.DataFrame(np.asarray(cos), index=range(n), columns=range(n))
    return heatmap(df, title, colorbar_title="cosine", x_title="layer", y_title="layer",
                   signed=True, value_format=".2f")


# ------------------------------------------------------------------ heads
def head_frame(scores: np.ndarray) -> pd.DataFrame:
    L, H = scores.shape
    return pd.DataFrame([{"layer": ly, "head": h, "score": float(scores[ly, h])}
                         for ly in range(L) for h in range(H)])


def head_figure(scores: np.ndarray, highlight: Sequence[Sequence[int]] = (),
                title: str | None = None) -> go.Figure:
    """``[layers × heads]`` map, diverging colours with symmetric limits ±max|score|;
    ``highlight`` heads (the edited ones) get a box."""
    s = np.asarray(scores, dtype=float)
    m = float(np.abs(s).max()) or 1.0
    L, H = s.shape
    fig = go.Figure(go.Heatmap(
        z=s, x=[str(h) for h in range(H)], y=[str(ly) for ly in range(L)],
        colorscale=DIVERGING, zmin=-m, zmax=m, zmid=0,
        colorbar=dict(title=dict(text="write onto short dir.", side="right")),
        hovertemplate="layer %{y} head %{x}<br>%{z:.4g}<extra></extra>",
        texttemplate="%{z:.2g}" if s.size <= 300 else None, xgap=1, ygap=1))
    for ly, h in highlight:
        fig.add_shape(type="rect", x0=h - 0.5, x1=h + 0.5, y0=ly - 0.5, y1=ly + 0.5,
                      line=dict(color="black", width=2))
    fig.update_yaxes(autorange="reversed")
    return style(fig, title, x_title="head", y_title="layer",
                 height=max(260, min(900, 90 + 34 * L)))


# ------------------------------------------------------------------ edit
def edit_frame(before: Mapping[str, Any], afters: Mapping[str, Mapping[str, Any]]
               ) -> pd.DataFrame:
    """Long table of the unedited summary and one summary per edit (``afters``:
    ``{label: summary}``)."""
    rows = []
    for label, s in (("before", before), *afters.items()):
        for metric in ("short_fraction", "accuracy"):
            if metric in s:
                rows.append({"model": label, "metric": metric, "value": s[metric]["value"],
                             "ci_low": s[metric]["ci_low"], "ci_high": s[metric]["ci_high"],
                             "n": s[metric]["n"]})
        rows.append({"model": label, "metric": "mean_think_tokens",
                     "value": s["mean_think_tokens"], "ci_low": np.nan, "ci_high": np.nan,
                     "n": s["n"]})
    return pd.DataFrame(rows)


def edit_figure(df: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Short-thinking fraction and accuracy before / after each edit, with 95% Wilson
    intervals: one panel per metric, one bar per model (no legend to crowd the bars)."""
    from plotly.subplots import make_subplots

    d = df[df["metric"] != "mean_think_tokens"]
    metrics = [m for m in ("short_fraction", "accuracy") if m in set(d["metric"])]
    if not metrics:
        return style(go.Figure(), title)
    titles = {"short_fraction": "short-thinking fraction", "accuracy": "accuracy"}
    fig = make_subplots(rows=1, cols=len(metrics), shared_yaxes=True,
                        subplot_titles=[titles[m] for m in metrics], horizontal_spacing=0.06)
    models = list(dict.fromkeys(d["model"]))
    # the unedited fine-tune ("before") is orange; every edit gets a series colour
    colors = {m: ROLE_COLORS["fine"] if m == "before" else series_color(i)
              for i, m in enumerate(x for x in models if x != "before")}
    colors.setdefault("before", ROLE_COLORS["fine"])
    for col, metric in enumerate(metrics, start=1):
        g = d[d["metric"] == metric]
        fig.add_bar(x=["<br>".join(textwrap.wrap(m, 18)) for m in g["model"]], y=g["value"],
                    marker_color=[colors[m] for m in g["model"]], showlegend=False,
                    error_y=dict(type="data", symmetric=False, array=g["ci_high"] - g["value"],
                                 arrayminus=g["value"] - g["ci_low"]),
                    hovertemplate="%{x}<br>%{y:.3f}<extra></extra>", row=1, col=col)
    fig = style(fig, title, height=460)
    fraction_axis(fig)
    fig.update_yaxes(title_text="fraction (95% CI)", row=1, col=1)
    fig.update_xaxes(tickangle=0)
    return fig
