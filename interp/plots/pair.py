"""Figures of the pair comparisons: the per-token strip (:mod:`interp.tokendiff`), the
per-head weight differences (:func:`interp.weights.head_diff_table`) and logit-diff
amplification (:mod:`interp.amplify`)."""

from __future__ import annotations

import html
from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .common import DIVERGING, ROLE_COLORS, SEQUENTIAL, heatmap, style

TOKEN_MEASURES = {
    "kl_fine_base": "KL(fine ‖ base) [nats]",
    "kl_base_fine": "KL(base ‖ fine) [nats]",
    "delta_logprob": "log p_fine − log p_base of the token [nats]",
}
MARK = {True: " ✓", False: " ✗"}


def token_strip(frame: pd.DataFrame, measure: str = "kl_fine_base", width: int = 16,
                title: str | None = None) -> go.Figure:
    """The sequence as text wrapped into rows of ``width`` tokens, each target token
    coloured by ``measure`` (a column of :meth:`interp.tokendiff.TokenDiff.frame`, see
    :data:`TOKEN_MEASURES`) of the distributions that predicted it; tokens the task fixes
    carry ✓ / ✗. Hover: both log-probs, both KLs, each model's top tokens."""
    if measure not in TOKEN_MEASURES:
        raise ValueError(f"measure must be one of {list(TOKEN_MEASURES)}")
    n = len(frame)
    rows = max(1, -(-n // width))
    z = np.full((rows, width), np.nan)
    text = np.full((rows, width), "", dtype=object)
    hover = np.full((rows, width), "", dtype=object)
    for i, r in enumerate(frame.itertuples()):
        y, x = divmod(i, width)
        z[y, x] = getattr(r, measure)
        mark = MARK.get(r.correct, "") if r.expected is not None and not pd.isna(
            r.correct) else ""
        text[y, x] = html.escape(str(r.token)) + mark
        exp = "" if r.expected is None else (
            f"<br>task wants {html.escape(str(r.expected))} ({r.role})")
        hover[y, x] = (
            f"#{r.pos} {html.escape(str(r.token))} ({r.part}){exp}"
            f"<br>log p base {r.logprob_base:.3f} · fine {r.logprob_fine:.3f}"
            f"<br>KL(fine‖base) {r.kl_fine_base:.4g} · KL(base‖fine) {r.kl_base_fine:.4g}"
            f"<br>base prefers {html.escape(r.top_base)}"
            f"<br>fine prefers {html.escape(r.top_fine)}")
    signed = measure == "delta_logprob"
    vals = frame[measure].to_numpy(float) if n else np.zeros(1)
    kw = dict(colorscale=DIVERGING, zmid=0.0) if signed else dict(
        colorscale=SEQUENTIAL, zmin=0.0, zmax=float(max(vals.max(), 1e-9)))
    fig = go.Figure(go.Heatmap(
        z=z, text=text, customdata=hover, texttemplate="%{text}", textfont=dict(size=13),
        hovertemplate="%{customdata}<extra></extra>", xgap=2, ygap=2,
        colorbar=dict(title=dict(text=TOKEN_MEASURES[measure], side="right")), **kw))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed")
    return style(fig, title, height=90 + 42 * rows)


def token_logprob_lines(frame: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Log-probability of each actual token under the base (blue) and the fine-tune
    (orange); tokens the task fixes are ringed, green when right, red when wrong."""
    x = [f"{r.pos}:{r.token}" for r in frame.itertuples()]
    fig = go.Figure([
        go.Scatter(x=x, y=frame["logprob_base"], name="base", mode="lines+markers",
                   line=dict(color=ROLE_COLORS["base"])),
        go.Scatter(x=x, y=frame["logprob_fine"], name="fine-tune", mode="lines+markers",
                   line=dict(color=ROLE_COLORS["fine"]))])
    marked = frame[frame["expected"].notna()]
    if len(marked):
        fig.add_trace(go.Scatter(
            x=[f"{r.pos}:{r.token}" for r in marked.itertuples()], y=marked["logprob_fine"],
            mode="markers", name="task answer (✓ green, ✗ red)",
            marker=dict(size=14, symbol="circle-open", line=dict(width=2),
                        color=["#21A366" if bool(c) else "#D62728"
                               for c in marked["correct"]])))
    style(fig, title, height=320, x_title="position:token",
          y_title="log p(token | tokens before) [nats]")
    fig.update_xaxes(type="category", tickangle=-60)
    return fig


def head_diff_heatmap(pivot: pd.DataFrame, metric: str = "relative") -> go.Figure:
    """Layer x head heatmap of :func:`interp.weights.head_diff_pivot`."""
    return heatmap(pivot, None,
                   colorbar_title="‖ΔW_h‖/‖W_h‖" if metric == "relative" else "‖ΔW_h‖",
                   x_title="projection and head", y_title="layer")


def amplify_curve(summary: pd.DataFrame, words: Sequence[str] = ("wait",),
                  title: str | None = None) -> go.Figure:
    """Mean hesitation tokens per sample against α (± one standard error of the mean);
    α = 0 is the fine-tune's own sampling."""
    fig = go.Figure(go.Scatter(
        x=summary["alpha"], y=summary["mean_hesitations"], mode="lines+markers",
        line=dict(color=ROLE_COLORS["fine"]),
        error_y=dict(type="data", array=summary["sem_hesitations"], visible=True),
        customdata=np.stack([summary["share_with_hesitation"], summary["mean_new_tokens"],
                             summary["n"]], axis=-1),
        hovertemplate="α %{x}<br>%{y:.3g} per sample<br>%{customdata[0]:.0%} of samples "
                      "with one or more<br>%{customdata[1]:.1f} new tokens on average"
                      "<br>%{customdata[2]} samples<extra></extra>"))
    style(fig, title, height=340, x_title="α (0: the fine-tune's own sampling)",
          y_title=f"{' / '.join(words)} tokens per sample")
    fig.update_yaxes(rangemode="tozero")
    fig.add_vline(x=0.0, line=dict(color=ROLE_COLORS["other"], dash="dot"))
    return fig
