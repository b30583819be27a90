"""Figures and tables of the Adapters page (plotly; shared style from interp.plots.common).

Colours: base blue, reasoner orange (the fine-tune), adapter model green, hybrid grey.
Every builder takes plain dicts/lists (artifact metadata or progress records) and returns
a figure or a DataFrame; the page exports both.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import pandas as pd
import plotly.graph_objects as go

from ..plots.common import ROLE_COLORS, legend_below, log_axis, series_color, style

MODEL_COLORS = {"base": ROLE_COLORS["base"], "reasoner": ROLE_COLORS["fine"],
                "adapter": ROLE_COLORS["difference"], "hybrid": ROLE_COLORS["other"]}
LOSS_TERMS = ("loss", "kl", "l1", "nmse", "bridge", "l0", "dead", "tokens_per_s")
TERM_LABELS = {"loss": "total loss", "kl": "KL(reasoner‖adapter), nats", "l1": "L1 term",
               "nmse": "residual NMSE", "bridge": "bridged KL, nats",
               "l0": "L0 (active features / token / layer)", "dead": "dead fraction",
               "tokens_per_s": "tokens / s", "lr": "learning rate"}


def curves_frame(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> pd.DataFrame:
    """Long table ``run, step, <terms>`` from progress records (last record per step)."""
    rows = []
    for name, recs in runs.items():
        by_step: dict[int, Mapping[str, Any]] = {}
        for r in recs:
            if "step" in r:
                by_step[int(r["step"])] = r
        for s in sorted(by_step):
            r = by_step[s]
            rows.append({"run": name, "step": s,
                         **{k: r.get(k) for k in (*LOSS_TERMS, "lr") if k in r}})
    return pd.DataFrame(rows)


def loss_curves(df: pd.DataFrame, term: str = "kl", smooth: int = 1, log_y: bool = True
                ) -> go.Figure:
    """One line per run of ``term`` against step (moving average over ``smooth`` steps)."""
    fig = go.Figure()
    shown: list[float] = []
    if not df.empty and term in df:
        for i, (name, g) in enumerate(df.groupby("run", sort=False)):
            y = g[term].astype(float)
            if smooth > 1:
                y = y.rolling(smooth, min_periods=1).mean()
            shown += [v for v in y if v > 0 and math.isfinite(v)]
            fig.add_trace(go.Scatter(x=g["step"], y=y, mode="lines", name=str(name),
                                     line=dict(color=series_color(i))))
    if log_y and shown:
        log_axis(fig, min(shown), max(shown), axis="y", pad=0.05)
    else:
        fig.update_yaxes(type="log" if log_y else "linear")
    return style(fig, f"{TERM_LABELS.get(term, term)} during training", x_title="step",
                 y_title=TERM_LABELS.get(term, term))


def faithfulness_table(evals: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per evaluated run: the faithfulness and sparsity figures."""
    rows = []
    for name, fa in evals.items():
        rows.append({
            "run": name, "KL(reasoner‖adapter)": fa["kl_adapter"],
            "KL(reasoner‖hybrid)": fa["kl_hybrid"], "KL gap closed": fa["kl_gap_closed"],
            "CE adapter": fa["ce_adapter"], "CE hybrid": fa["ce_hybrid"],
            "CE reasoner": fa["ce_reasoner"], "mean L0": fa["mean_l0"],
            "dead fraction": fa["dead_fraction"],
            "mean NMSE (adapter)": sum(fa["nmse_adapter"][1:]) / max(1, len(
                fa["nmse_adapter"]) - 1),
            "tokens": fa["n_tokens"]})
    return pd.DataFrame(rows)


def per_layer_frame(fa: Mapping[str, Any]) -> pd.DataFrame:
    """Per layer: L0, dead fraction, NMSE of the block output (adapter and hybrid)."""
    L = len(fa["l0_layers"])
    return pd.DataFrame({
        "layer": list(range(L)), "L0": fa["l0_layers"], "dead fraction": fa["dead_layers"],
        "NMSE adapter (block output)": fa["nmse_adapter"][1:],
        "NMSE hybrid (block output)": fa["nmse_hybrid"][1:]})


def per_layer_figure(fa: Mapping[str, Any]) -> go.Figure:
    """Grouped bars: residual NMSE after each block, adapter model vs hybrid (log y), with
    each layer's L0 (active features per token) written over the adapter's bar. Layers
    are labelled ``layer 0``, ``layer 1``, ... so "L0" only ever means sparsity."""
    df = per_layer_frame(fa)
    x = [f"layer {v}" for v in df["layer"]]
    fig = go.Figure([
        go.Bar(x=x, y=df["NMSE hybrid (block output)"], name="hybrid",
               marker_color=MODEL_COLORS["hybrid"]),
        go.Bar(x=x, y=df["NMSE adapter (block output)"],
               name="adapter model (text: L0 = active features / token)",
               marker_color=MODEL_COLORS["adapter"],
               text=[f"L0 = {v:.1f}" for v in df["L0"]], textposition="outside")])
    vals = [v for v in list(df["NMSE hybrid (block output)"]) + list(
        df["NMSE adapter (block output)"]) if v > 0 and math.isfinite(v)]
    if vals:
        log_axis(fig, min(vals), max(vals), axis="y", pad=0.05)
    else:
        fig.update_yaxes(type="log")
    fig.update_xaxes(type="category")
    style(fig, "Residual NMSE to the reasoner after each block", x_title="layer",
          y_title="NMSE (log)", height=460)
    return legend_below(fig, y=-0.22, bottom=110)


OFF_SCALE = 5.0  # a reference line this many times above the data is written, not drawn


def bridged_figure(fa: Mapping[str, Any]) -> go.Figure:
    """Bridged KL to the reasoner per cutoff k (a2r and r2a). The y axis is fitted to
    the two curves (from 0 to a little above their maximum, stated in the title); the
    hybrid's KL is drawn as a line when it lies near them, else written on the chart
    (it is often hundreds of times larger and would flatten both curves)."""
    k = list(range(len(fa["bridged_a2r"])))
    a2r = [float(v) for v in fa["bridged_a2r"]]
    r2a = [float(v) for v in fa["bridged_r2a"]]
    top = max([*a2r, *r2a, 0.0]) or 1e-6
    fig = go.Figure([
        go.Scatter(x=k, y=a2r, mode="lines+markers", line=dict(color=series_color(0)),
                   name="a2r (adapter < k, reasoner ≥ k)"),
        go.Scatter(x=k, y=r2a, mode="lines+markers", line=dict(color=series_color(2)),
                   name="r2a (reasoner < k, adapter ≥ k)")])
    hybrid = fa.get("kl_hybrid")
    upper = top * 1.15
    if hybrid is not None and hybrid <= OFF_SCALE * top:
        fig.add_hline(y=hybrid, line_dash="dot", line_color=MODEL_COLORS["hybrid"],
                      annotation_text="hybrid")
        upper = max(upper, hybrid * 1.1)
    elif hybrid is not None:
        fig.add_annotation(text=f"hybrid: KL {hybrid:.3g} nats (off this scale)",
                           xref="paper", yref="paper", x=0.01, y=0.98, showarrow=False,
                           xanchor="left", yanchor="top",
                           font=dict(size=11, color=MODEL_COLORS["hybrid"]))
    fig.update_yaxes(range=[0, upper], tickformat=".2g")
    fig = style(fig, f"Bridged KL(reasoner ‖ bridged model) by cutoff (y: 0–{upper:.2g} nats)",
                x_title="cutoff k", y_title="KL, nats")
    fig.update_xaxes(tickmode="array", tickvals=k)
    fig.update_layout(height=460)
    # under the plot: the two long trace names would cover the title or the curves
    return legend_below(fig, y=-0.22, bottom=110)


def frontier_frame(runs: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame([{k: r.get(k) for k in ("l1", "mean_l0", "kl_gap_closed",
                                                 "dead_fraction", "kl_adapter", "key",
                                                 "steps")}
                         for r in runs]).sort_values("mean_l0")


def frontier_figure(runs: Sequence[Mapping[str, Any]], target_l0: float = 10.0,
                    target_gap: float = 0.9, steps: int | None = None,
                    table_steps: Sequence[int] = ()) -> go.Figure:
    """L0 vs fraction of the KL gap closed, one point per L1 coefficient, with targets.

    The log x axis has explicit ticks (1-2-5 per decade, labelled in full). ``steps``:
    the training steps of the sweep's runs (a point's own ``steps`` wins); when the
    page's table shows runs of other step counts (``table_steps``) the subtitle says so.
    """
    df = frontier_frame(runs)
    if steps is not None:
        df["steps"] = df["steps"].fillna(steps)
    fig = go.Figure(go.Scatter(
        x=df["mean_l0"], y=df["kl_gap_closed"], mode="lines+markers+text",
        text=[f"l1={v:g}" for v in df["l1"]], textposition="top center",
        marker=dict(size=10, color=MODEL_COLORS["adapter"]), name="L1 sweep"))
    fig.add_hline(y=target_gap, line_dash="dot", annotation_text=f"{target_gap:.0%} target")
    # on a log axis annotations take log10 coordinates (shapes take data values)
    fig.add_vline(x=target_l0, line_dash="dot")
    fig.add_annotation(x=math.log10(target_l0), y=1, yref="paper", yanchor="bottom",
                       text=f"L0 {target_l0:g}", showarrow=False)
    xs = [v for v in list(df["mean_l0"]) + [target_l0] if v and v > 0]
    log_axis(fig, min(xs), max(xs))
    fig.update_yaxes(tickformat=".0%")
    point_steps = sorted({int(v) for v in df["steps"].dropna()}) if "steps" in df else []
    title = "Sparsity vs faithfulness (L1 sweep)"
    if point_steps:
        title += "<br><sup>points: runs of " + "/".join(f"{s:,}" for s in point_steps)
        title += " training steps"
        other = sorted({int(s) for s in table_steps} - set(point_steps))
        if other:
            title += " (the table above: " + "/".join(f"{s:,}" for s in sorted(
                {int(s) for s in table_steps})) + " steps)"
        title += "</sup>"
    fig = style(fig, title, x_title="mean L0 (active features / token / layer, log)",
                y_title="fraction of the hybrid→reasoner KL gap closed")
    if point_steps:
        fig.update_layout(margin=dict(t=80))
    return fig


BEHAVIOUR_COLUMNS = {"accuracy": "accuracy", "think_tokens": "thinking tokens",
                     "short_fraction": "short-thinking fraction",
                     "hesitation_rate_error": "hesitations / trace: error",
                     "hesitation_rate_verify": "hesitations / trace: verify"}


def behaviour_table(be: Mapping[str, Any]) -> pd.DataFrame:
    rows = []
    for name in ("base", "hybrid", "adapter", "reasoner"):
        if name in be:
            rows.append({"model": name, **{lab: be[name].get(k)
                                           for k, lab in BEHAVIOUR_COLUMNS.items()},
                         "n": be[name].get("n")})
    return pd.DataFrame(rows)


def behaviour_figure(be: Mapping[str, Any]) -> go.Figure:
    """Grouped bars of accuracy and hesitation rates per model (base in its own format)."""
    keys = ["accuracy", "hesitation_rate_error", "hesitation_rate_verify", "short_fraction"]
    fig = go.Figure()
    for name in ("base", "hybrid", "adapter", "reasoner"):
        if name in be:
            fig.add_trace(go.Bar(x=[BEHAVIOUR_COLUMNS[k] for k in keys],
                                 y=[be[name].get(k) for k in keys], name=name,
                                 marker_color=MODEL_COLORS[name]))
    fig.update_layout(barmode="group")
    return style(fig, "Behaviour under greedy generation (held-out problems)",
                 y_title="rate")
