"""Figures of the Features page (plotly; shared look from :mod:`interp.plots.common`).

Every builder takes a DataFrame or dict from :class:`interp.features.table.FeatureTable`
and returns a figure; the page exports the figure and the same data.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..plots.common import PALETTE, ROLE_COLORS, SEQUENTIAL, SERIES_COLORS, style
from .corpus import REGIONS

COLOR_BY = ("layer", "region", "density", "hesitation")  # + "auroc:<label>"
# layers and regions are neither base nor fine-tune: no blue or orange among them
QUALITATIVE = list(SERIES_COLORS)
REGION_COLORS = dict(zip(list(REGIONS) + ["none"], QUALITATIVE[:5] + [PALETTE["neutral"]]))
GL_THRESHOLD = 5000  # WebGL markers above this many points


def map_frame(summary: pd.DataFrame, xy: np.ndarray) -> pd.DataFrame:
    """The summary table with map coordinates (rows without a direction dropped)."""
    df = summary.copy()
    df["x"], df["y"] = xy[:, 0], xy[:, 1]
    return df[np.isfinite(df["x"]) & np.isfinite(df["y"])].reset_index(drop=True)


def _hover(df: pd.DataFrame) -> list[str]:
    return [f"<b>{i}</b> · top token {t!r}<br>density {d:.2%} · max {m:.3g}<br>"
            f"region {r} · hesitation {h:.3f}"
            for i, t, d, m, r, h in zip(df["id"], df["top_token"], df["density"], df["max"],
                                        df["region"], df["hesitation"])]


def _xy(df: pd.DataFrame, gs: Sequence[int]) -> tuple[list[float], list[float]]:
    sub = df[df["g"].isin(gs)]
    return sub["x"].astype(float).tolist(), sub["y"].astype(float).tolist()


def _ring(x: float, y: float, radius: float, width: float, name: str, legend: bool
          ) -> dict[str, Any]:
    """A ring of ``radius`` pixels around the point ``(x, y)`` (its size does not change
    with zoom); ``legend``: it has a legend entry (one per kind of ring)."""
    return dict(type="circle", xref="x", yref="y", xsizemode="pixel", ysizemode="pixel",
                xanchor=x, yanchor=y, x0=-radius, x1=radius, y0=-radius, y1=radius,
                line=dict(width=width, color=PALETTE["ink"]), name=name, showlegend=legend,
                layer="above")


def _digest(df: pd.DataFrame) -> str:
    """A digest of every value of the map frame (what the traces draw)."""
    return hashlib.sha1(pd.util.hash_pandas_object(df, index=False).values.tobytes()
                        ).hexdigest()[:16]


def feature_map(df: pd.DataFrame, color: str = "layer", selected: int | None = None,
                marked: Sequence[int] = (), height: int = 560) -> go.Figure:
    """Scatter of the features (``map_frame``) coloured by ``color``: ``layer``,
    ``region`` (categorical), ``density`` (log10), ``hesitation`` or ``auroc:<label>``
    (continuous). Points carry their global number as ``customdata``; ``selected`` is
    drawn as a ring, ``marked`` (search hits) as small rings (layout shapes named
    ``feature <id>`` and ``search hits``)."""
    Scatter = go.Scattergl if len(df) > GL_THRESHOLD else go.Scatter
    fig = go.Figure()
    if color in ("layer", "region"):
        groups = sorted(df[color].unique(), key=lambda v: (str(type(v)), v))
        for k, val in enumerate(groups):
            sub = df[df[color] == val]
            c = REGION_COLORS.get(val, PALETTE["neutral"]) if color == "region" else \
                QUALITATIVE[k % len(QUALITATIVE)]
            fig.add_trace(Scatter(
                x=sub["x"], y=sub["y"], mode="markers", name=f"{color} {val}",
                marker=dict(size=6, color=c, opacity=0.8), customdata=sub["g"],
                hovertext=_hover(sub), hoverinfo="text"))
    else:
        if color == "density":
            vals = np.log10(np.clip(df["density"].to_numpy(float), 1e-7, None))
            title, kw = "log10 density", dict(colorscale=SEQUENTIAL)
        elif color == "hesitation":
            vals = df["hesitation"].to_numpy(float)
            title, kw = "hesitation score", dict(colorscale=SEQUENTIAL, cmin=0.0)
        elif color.startswith("auroc:") and color in df:
            vals = df[color].to_numpy(float)
            title = "AUROC " + color.split(":", 1)[1]
            kw = dict(colorscale="RdBu_r", cmin=0.0, cmax=1.0, cmid=0.5)
        else:
            raise ValueError(f"unknown colouring {color!r}")
        fig.add_trace(Scatter(
            x=df["x"], y=df["y"], mode="markers", name="features",
            marker=dict(size=6, color=np.nan_to_num(vals, nan=0.5 if "auroc" in color else 0),
                        line=dict(width=0.4, color=PALETTE["light"]),  # light values stay visible
                        colorbar=dict(title=dict(text=title, side="right")), **kw),
            customdata=df["g"], hovertext=_hover(df), hoverinfo="text", showlegend=False))
    # the open feature and the search hits are rings drawn as layout shapes, not traces:
    # the traces (and their arrays) stay those of the colouring, and ``datarevision`` (a
    # digest of the drawn data) tells the browser's Plotly.react that they did not change,
    # so opening a feature redraws the shapes only
    rings = [_ring(x, y, 6, 1.5, "search hits", k == 0)
             for k, (x, y) in enumerate(zip(*_xy(df, list(marked))))]
    if selected is not None:
        s = df[df["g"] == selected]
        if len(s):
            rings.append(_ring(float(s["x"].iloc[0]), float(s["y"].iloc[0]), 9, 3,
                               f"feature {s['id'].iloc[0]}", True))
    fig.update_layout(shapes=rings, datarevision=f"{color}:{_digest(df)}")
    fig.update_xaxes(showticklabels=False, zeroline=False, showgrid=False)
    fig.update_yaxes(showticklabels=False, zeroline=False, showgrid=False)
    fig = style(fig, None, height=height)
    # no dragmode here: with lasso as the drag mode a click selects nothing (box and
    # lasso stay in the toolbar)
    fig.update_layout(legend=dict(orientation="h", y=-0.05, yanchor="top", x=0.0,
                                  xanchor="left"))
    return fig


def histogram_figure(hist: pd.DataFrame, fid: str) -> go.Figure:
    """Active-token counts over the log-spaced bins (bins outside the used range are
    left out); the inactive count is in the title."""
    act = hist[hist["bin"] > 0]
    used = act[act["count"] > 0]
    if len(used):
        act = act[(act["bin"] >= used["bin"].min()) & (act["bin"] <= used["bin"].max())]
    zero = int(hist.loc[hist["bin"] == 0, "count"].sum())
    total = int(hist["count"].sum())
    fig = go.Figure(go.Bar(
        x=[f"{lo:.3g}" for lo in act["low"]], y=act["count"], marker_color=ROLE_COLORS["fine"],
        customdata=act["range"], hovertemplate="%{customdata}<br>%{y} tokens<extra></extra>"))
    fig.update_xaxes(type="category")
    return style(fig, f"Activation histogram of {fid}<br><sup>inactive on {zero:,} of "
                      f"{total:,} tokens</sup>", height=340,
                 x_title="activation (bin's lower edge, log bins)", y_title="tokens")


def lens_figure(lens: pd.DataFrame, fid: str) -> go.Figure:
    """Horizontal bars: the decoder direction's most promoted and suppressed tokens."""
    top = lens[lens["side"] == "top"].iloc[::-1]
    bot = lens[lens["side"] == "bottom"]
    d = pd.concat([bot, top])
    colors = [ROLE_COLORS["fine"] if s == "top" else ROLE_COLORS["base"] for s in d["side"]]
    labels = [f"{t!r} " for t in d["token"]]
    fig = go.Figure(go.Bar(x=d["logit"], y=list(range(len(d))), orientation="h",
                           marker_color=colors, customdata=labels,
                           hovertemplate="%{customdata}: %{x:.3g}<extra></extra>"))
    fig.update_yaxes(tickmode="array", tickvals=list(range(len(d))), ticktext=labels)
    return style(fig, f"Logit lens of {fid}'s decoder direction", height=max(300, 22 * len(d)),
                 x_title="logit (W_dec · diag(g) · W_U)")


def region_figure(reg: pd.DataFrame, fid: str) -> go.Figure:
    """Per region: share of the feature's activation mass and its firing rate."""
    fig = go.Figure([
        go.Bar(name="share of activation mass", x=reg["region"], y=reg["mass_share"],
               marker_color=ROLE_COLORS["fine"], hovertemplate="%{x}: %{y:.1%}<extra></extra>"),
        go.Bar(name="firing rate in the region", x=reg["region"], y=reg["rate"],
               marker_color=ROLE_COLORS["other"],
               hovertemplate="%{x}: %{y:.1%}<extra></extra>"),
    ])
    fig.update_yaxes(tickformat=".0%", rangemode="tozero")
    fig = style(fig, f"Where {fid} fires", height=340, y_title="fraction")
    fig.update_layout(barmode="group", legend=dict(orientation="h", y=-0.2, yanchor="top",
                                                   x=0.0, xanchor="left"))
    return fig


def auroc_figure(best: pd.DataFrame, target: float | None = 0.95) -> go.Figure:
    """Per label: the report-split AUROC of the feature chosen on the choose split."""
    fig = go.Figure(go.Bar(
        x=best["label"], y=best["report_auroc"], marker_color=ROLE_COLORS["difference"],
        customdata=np.stack([best["feature"].astype(str), best["choose_auroc"].astype(float)],
                            axis=1),
        hovertemplate="%{x}: feature %{customdata[0]}<br>report AUROC %{y:.3f}"
                      "<br>choose AUROC %{customdata[1]:.3f}<extra></extra>",
        text=[f"{f}" for f in best["feature"]], textposition="inside",
        insidetextanchor="middle"))
    if target is not None:   # the label above the plot area, clear of the bars
        fig.add_hline(y=target, line_dash="dot", line_color=PALETTE["guide"],
                      annotation_text=f"target {target}", annotation_position="right",
                      annotation_xanchor="left")
    fig.update_yaxes(range=[0.0, 1.05])
    fig.update_xaxes(type="category")
    fig = style(fig, "Best feature per ground-truth label (chosen on one split, scored on "
                     "the other)", height=360, y_title="AUROC (report split)")
    return fig.update_layout(margin_r=90) if target is not None else fig


def card_auroc_figure(aurocs: pd.DataFrame, fid: str) -> go.Figure:
    """A feature's AUROC against each label on both splits."""
    fig = go.Figure([
        go.Bar(name="choose split", x=aurocs["label"], y=aurocs["choose"],
               marker_color=ROLE_COLORS["other"]),
        go.Bar(name="report split", x=aurocs["label"], y=aurocs["report"],
               marker_color=ROLE_COLORS["difference"]),
    ])
    fig.add_hline(y=0.5, line_dash="dot", line_color=PALETTE["guide"])
    fig.update_yaxes(range=[0, 1.02])
    fig.update_xaxes(type="category")
    fig = style(fig, f"{fid} against the ground-truth labels", height=380, y_title="AUROC")
    fig.update_layout(barmode="group", legend=dict(orientation="h", y=-0.3, yanchor="top",
                                                   x=0.0, xanchor="left"))
    return fig


def ablation_figure(ab: dict[str, Any], fid: str) -> go.Figure:
    """Tokens whose mean probability rises (orange) or falls (blue) most when the
    feature is ablated, at the positions where it was active."""
    rows = [(f"↑ {t!r}", v) for t, v in ab["up"]] + [(f"↓ {t!r}", v) for t, v in ab["down"]]
    fig = go.Figure(go.Bar(
        x=[v for _, v in rows], y=[n for n, _ in rows], orientation="h",
        marker_color=[ROLE_COLORS["fine"] if v > 0 else ROLE_COLORS["base"] for _, v in rows],
        hovertemplate="%{y}: %{x:+.3g}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", type="category")
    kl = ab.get("kl_mean")
    return style(fig, f"Ablating {fid}: mean KL {kl:.3g} nats" if kl is not None else
                 f"Ablating {fid}", height=max(260, 26 * len(rows) + 90),
                 x_title="mean change of probability")
