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

from ..plots.common import DIVERGING, ROLE_COLORS, heatmap, style

SERIES_COLORS = [ROLE_COLORS["base"], ROLE_COLORS["fine"], ROLE_COLORS["difference"],
                 "#9467BD", "#8C564B", "#E377C2", "#7F7F7F", "#BCBD22", "#17BECF"]


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
                    marker_color=SERIES_COLORS[i % len(SERIES_COLORS)])
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


def sweep_figure(df: pd.DataFrame, title: str | None = None,
                 x_title: str = "α (units of dir_l; negative = towards short)") -> go.Figure:
    """Mean thinking length (left axis, ±1 s.e.m.) and accuracy / short fraction (right
    axis, 95% Wilson intervals) against α."""
    fig = go.Figure()
    fig.add_scatter(x=df["alpha"], y=df["mean_think_tokens"], name="mean thinking tokens",
                    mode="lines+markers", line_color=ROLE_COLORS["fine"],
                    error_y=dict(type="data", array=df["sem_think_tokens"].fillna(0)))
    for col, lo, hi, color, name in (
            ("accuracy", "accuracy_ci_low", "accuracy_ci_high", ROLE_COLORS["difference"],
             "accuracy"),
            ("short_fraction", "short_ci_low", "short_ci_high", ROLE_COLORS["base"],
             "short-thinking fraction")):
        if col in df:
            fig.add_scatter(x=df["alpha"], y=df[col], name=name, yaxis="y2",
                            mode="lines+markers", line=dict(color=color, dash="dot"),
                            error_y=dict(type="data", array=df[hi] - df[col],
                                         arrayminus=df[col] - df[lo]))
    fig.update_layout(yaxis2=dict(overlaying="y", side="right", range=[0, 1.02],
                                  title="fraction"))
    fig.add_vline(x=0, line_dash="dash", line_color="#999")
    style(fig, title, x_title=x_title, y_title="mean thinking tokens")
    # style() titles every y axis: the right one holds the fractions
    fig.update_layout(yaxis2=dict(title_text="fraction", tickmode="linear", tick0=0,
                                  dtick=0.2, showgrid=False))
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
                    marker_color=SERIES_COLORS[i % len(SERIES_COLORS)],
                    customdata=g["n"], hovertemplate="%{x}: %{y:.3f} (n=%{customdata})")
    fig.update_layout(barmode="group")
    fig.update_yaxes(range=[0, 1.02])
    fig.update_xaxes(type="category")
    return style(fig, title, x_title="shortest responses", y_title="accuracy")


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
                        line=dict(shape="hv", color=SERIES_COLORS[i % len(SERIES_COLORS)]),
                        customdata=g["n"], hovertemplate="≤ %{x}: %{y:.3f} (n=%{customdata})")
    fig.update_yaxes(range=[0, 1.02])
    return style(fig, title, x_title="thinking length threshold t (tokens)",
                 y_title="accuracy of responses with length ≤ t")


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


def separability_figure(df: pd.DataFrame, title: str | None = None) -> go.Figure:
    fig = go.Figure()
    for i, (s, g) in enumerate(df.groupby("site", sort=False)):
        col = SERIES_COLORS[i % len(SERIES_COLORS)]
        fig.add_scatter(x=g["layer"], y=g["auroc"], name=f"{s} AUROC", mode="lines+markers",
                        line_color=col)
        fig.add_scatter(x=g["layer"], y=g["probe_accuracy"], name=f"{s} probe accuracy",
                        mode="lines+markers", line=dict(color=col, dash="dot"))
    fig.update_yaxes(range=[0.4, 1.02])
    fig.update_xaxes(dtick=1)
    return style(fig, title, x_title="layer", y_title="held-out separability")


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
    palette = [ROLE_COLORS["base"], ROLE_COLORS["fine"], "#7F7F7F",
               *(c for c in SERIES_COLORS[3:] if c != "#7F7F7F")]
    colors = {m: palette[i % len(palette)] for i, m in enumerate(models)}
    for col, metric in enumerate(metrics, start=1):
        g = d[d["metric"] == metric]
        fig.add_bar(x=["<br>".join(textwrap.wrap(m, 18)) for m in g["model"]], y=g["value"],
                    marker_color=[colors[m] for m in g["model"]], showlegend=False,
                    error_y=dict(type="data", array=g["ci_high"] - g["value"],
                                 arrayminus=g["value"] - g["ci_low"]),
                    hovertemplate="%{x}<br>%{y:.3f}<extra></extra>", row=1, col=col)
    fig = style(fig, title, height=460)
    fig.update_yaxes(range=[0, 1.05])
    fig.update_yaxes(title_text="fraction (95% CI)", row=1, col=1)
    fig.update_xaxes(tickangle=0)
    return fig
