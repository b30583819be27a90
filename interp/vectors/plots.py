"""Figures of the Reasoning vectors page (plotly; style from :mod:`interp.plots.common`).

Every builder takes plain arrays / DataFrames and returns ``(figure, data)`` where
``data`` is the DataFrame plotted (for CSV / JSON export), except the HTML highlighter.
Units are put in the axis titles. Colours: original model = base blue, modified =
fine-tune orange, differences (KL, ||v||) green.
"""

from __future__ import annotations

import html
from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..plots.common import PALETTE, ROLE_COLORS, fraction_axis, heatmap, style


def _band(fig: go.Figure, x, lo, hi, color: str, name: str) -> None:
    fig.add_trace(go.Scatter(x=list(x) + list(x)[::-1], y=list(hi) + list(lo)[::-1],
                             fill="toself", fillcolor=color, opacity=0.2, line=dict(width=0),
                             hoverinfo="skip", name=name, showlegend=True))


def norms_by_layer(agg: pd.DataFrame, title: str = "Task vector by layer"
                   ) -> tuple[go.Figure, pd.DataFrame]:
    """Bars of ||v|| per group (embed, layer i, final norm, unembed) and a line of
    cosine(v, θ_target − θ_reference) on a second axis."""
    fig = go.Figure(go.Bar(x=agg["key"], y=agg["v_norm"], name="‖v‖ (Frobenius)",
                           marker_color=ROLE_COLORS["difference"]))
    if agg["cosine"].notna().any():
        fig.add_trace(go.Scatter(x=agg["key"], y=agg["cosine"], yaxis="y2", mode="lines+markers",
                                 name="cos(v, θ_target − θ_ref)",
                                 line=dict(color=PALETTE["guide"])))
        fig.update_layout(yaxis2=dict(title="cosine", overlaying="y", side="right",
                                      range=[-1, 1], zeroline=True))
    style(fig, title, x_title="", y_title="‖v‖")
    return fig, agg


def alpha_band(alphas: Sequence[float], values: np.ndarray, title: str, y_title: str,
               color: str = ROLE_COLORS["difference"], q: tuple[float, float] = (0.1, 0.9)
               ) -> tuple[go.Figure, pd.DataFrame]:
    """Mean over prompts vs α with a band from the ``q`` quantiles across prompts.
    ``values``: ``[A, n]``."""
    v = np.asarray(values, float)
    df = pd.DataFrame({"alpha": list(alphas), "mean": v.mean(1),
                       f"q{int(q[0] * 100)}": np.quantile(v, q[0], axis=1),
                       f"q{int(q[1] * 100)}": np.quantile(v, q[1], axis=1),
                       "n_prompts": v.shape[1]})
    fig = go.Figure()
    _band(fig, df["alpha"], df.iloc[:, 2], df.iloc[:, 3], color,
          f"{int(q[0] * 100)}–{int(q[1] * 100)}% of prompts")
    fig.add_trace(go.Scatter(x=df["alpha"], y=df["mean"], mode="lines+markers", name="mean",
                             line=dict(color=color)))
    style(fig, title, x_title="α", y_title=y_title)
    return fig, df


def accuracy_vs_alpha(alphas: Sequence[float], correct: np.ndarray, title: str = "Accuracy vs α"
                      ) -> tuple[go.Figure, pd.DataFrame]:
    """Accuracy (fraction correct) per α with 95% Wilson intervals. ``correct [A, n]``."""
    from .report import wilson_ci

    c = np.asarray(correct)
    rows = []
    for a, row in zip(alphas, c):
        lo, hi = wilson_ci(int(row.sum()), len(row))
        rows.append({"alpha": a, "accuracy": row.mean(), "ci_low": lo, "ci_high": hi,
                     "n": len(row)})
    df = pd.DataFrame(rows)
    fig = go.Figure(go.Scatter(
        x=df["alpha"], y=df["accuracy"], mode="lines+markers", name="accuracy",
        line=dict(color=ROLE_COLORS["fine"]),
        error_y=dict(type="data", symmetric=False, array=df["ci_high"] - df["accuracy"],
                     arrayminus=df["accuracy"] - df["ci_low"])))
    style(fig, title, x_title="α", y_title="accuracy (95% Wilson CI)")
    return fraction_axis(fig), df


def stacked_mass(alphas: Sequence[float], p_correct: np.ndarray,
                 title: str = "Probability mass on the correct answer"
                 ) -> tuple[go.Figure, pd.DataFrame]:
    """Stacked bars: mean P(correct answer) and the rest, per α. ``p_correct [A, n]``."""
    p = np.asarray(p_correct, float).mean(1)
    df = pd.DataFrame({"alpha": [str(a) for a in alphas], "p_correct": p, "p_rest": 1 - p})
    fig = go.Figure([
        go.Bar(x=df["alpha"], y=df["p_correct"], name="correct answer",
               marker_color=ROLE_COLORS["difference"]),
        go.Bar(x=df["alpha"], y=df["p_rest"], name="everything else",
               marker_color=ROLE_COLORS["other"])])
    fig.update_layout(barmode="stack")
    style(fig, title, x_title="α", y_title="probability (teacher-forced, mean over prompts)")
    return fig, df


def per_token(records: Sequence[dict], unit: str = "nats", title: str = "Per-token KL and entropy"
              ) -> tuple[go.Figure, pd.DataFrame]:
    """KL(P_orig ‖ P_mod) and both entropies at each position (x: the token the
    distribution is computed at, hover: the token it predicts)."""
    df = pd.DataFrame(records)
    x = [f"{r['pos']}:{r['token']}" for r in records]
    fig = go.Figure([
        go.Bar(x=x, y=df[f"kl_{unit}"], name=f"KL(orig ‖ mod) [{unit}]",
               marker_color=ROLE_COLORS["difference"], customdata=df["next_token"],
               hovertemplate="%{x} → %{customdata}<br>KL %{y:.4g}<extra></extra>"),
        go.Scatter(x=x, y=df[f"entropy_orig_{unit}"], name=f"H(orig) [{unit}]",
                   mode="lines", line=dict(color=ROLE_COLORS["base"])),
        go.Scatter(x=x, y=df[f"entropy_mod_{unit}"], name=f"H(mod) [{unit}]",
                   mode="lines", line=dict(color=ROLE_COLORS["fine"]))])
    style(fig, title, x_title="position:token (distribution of the next token)",
          y_title=unit)
    fig.update_xaxes(type="category", tickangle=-60)
    return fig, df


def layer_token_kl(matrix, tokens: Sequence[str], unit: str = "nats",
                   title: str = "Logit-lens KL(orig ‖ mod) by layer and token",
                   positions: Sequence[int] | None = None) -> tuple[go.Figure, pd.DataFrame]:
    """``matrix [n_layers, pos]`` as a heatmap (rows: block outputs resid_post 0..L−1);
    ``positions``: only these columns (labels keep each column's position)."""
    m = np.asarray(matrix, float)
    df = pd.DataFrame(m, index=[f"L{i}" for i in range(m.shape[0])],
                      columns=[f"{i}:{t}" for i, t in enumerate(tokens)])
    if positions is not None:
        df = df.iloc[:, list(positions)]
    fig = heatmap(df, title, colorbar_title=f"KL [{unit}]", x_title="position:token",
                  y_title="layer (resid_post)", annotate=False)
    return fig, df.reset_index(names="layer")


def vector_lens(lens: dict, title: str | None = None) -> tuple[go.Figure, pd.DataFrame]:
    """Horizontal bars of the tokens a vector promotes and suppresses, sorted by logit:
    the most positive at the top of the chart, the most negative at the bottom. A
    token's side is the sign of its logit (``promoted`` > 0 red, ``suppressed`` < 0
    blue, diverging colours); ``rank`` says whether it came from the lens's ``top`` or
    ``bottom`` list (a token in both, when k is large for the vocabulary, is shown once)."""
    rows: dict[str, dict] = {}
    for rank, items in (("top", lens["top"]), ("bottom", lens["bottom"])):
        for t, v in items:
            rows.setdefault(str(t), {"token": str(t), "logit": float(v), "rank": rank})
    df = pd.DataFrame(sorted(rows.values(), key=lambda r: -r["logit"]),
                      columns=["token", "logit", "rank"])
    df["side"] = np.where(df["logit"] > 0, "promoted",
                          np.where(df["logit"] < 0, "suppressed", "zero"))
    colors = {"promoted": PALETTE["positive"], "suppressed": PALETTE["negative"],
              "zero": PALETTE["neutral"]}
    fig = go.Figure(go.Bar(
        y=[f"{t} " for t in df["token"]], x=df["logit"], orientation="h",
        marker_color=[colors[s] for s in df["side"]], customdata=df["side"],
        hovertemplate="%{y}: %{x:.4g} (%{customdata})<extra></extra>"))
    style(fig, title or f"Logit lens of the vector: {lens['mode']}",
          x_title="logit (red: promoted, blue: suppressed)", y_title="",
          height=max(300, 22 * len(df) + 100))
    # rows top to bottom in the frame's order: largest logit first
    fig.update_yaxes(autorange="reversed", type="category")
    return fig, df


def kl_highlight_html(records: Sequence[dict], unit: str = "nats", vmax: float | None = None,
                      prompt_len: int = 0) -> str:
    """The trace as HTML, each token's background green in proportion to the KL of the
    distribution that *predicted* it (position ``i − 1``); prompt tokens are grey-underlined.
    Hover shows the value."""
    kls = [r[f"kl_{unit}"] for r in records]
    top = vmax or (max(kls[:-1]) if len(kls) > 1 else 0.0) or 1.0
    out = []
    for i, r in enumerate(records):
        k = kls[i - 1] if i > 0 else 0.0
        a = min(1.0, max(0.0, k / top))
        deco = f"text-decoration: underline dotted {PALETTE['guide']};" if i < prompt_len else ""
        out.append(
            f'<span title="KL {k:.4g} {unit}" style="background: rgba(33,163,102,{a:.3f});'
            f'padding: 1px 2px; margin: 1px; border-radius: 3px; {deco}">'
            f"{html.escape(str(r['token']))}</span>")
    return ('<div style="line-height: 2.0; font-family: monospace; flex-wrap: wrap;">'
            + " ".join(out) + "</div>")
