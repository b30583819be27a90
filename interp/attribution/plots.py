"""Figures of attribution graphs (plotly, no streamlit): data in, figure out.

Graph figure (:func:`graph_figure`): x is the token position (tick labels: the tokens),
y the row of the node: token embeddings at the bottom (``emb``), then layers ``L0`` ..
``L{n-1}`` (features and that layer's error node), the target on top. Nodes sharing a
cell are spread side by side (by layer, then feature index). Symbols tell the kind
(circle feature, diamond error, square token, star target); colour the sign of the
node's total effect on the target (red raises it, blue lowers it, grey none); marker
area grows with the node's influence. Edges are straight lines, red positive and blue
negative, wider and more opaque for larger ``|weight|`` (five width classes, scaled to
the largest visible edge). Pinned nodes get a black ring and their edges stay opaque
while the others fade. Each node's ``customdata`` is its node id (for click events).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..plots.common import DIVERGING, PALETTE, ROLE_COLORS, SEQUENTIAL, style
from .explore import MODEL_ORDER, GraphView

POSITIVE = PALETTE["positive"]   # RdBu's red end: positive edges / effects
NEGATIVE = PALETTE["negative"]   # RdBu's blue end
NEUTRAL = PALETTE["neutral"]
KIND_SYMBOL = {"feature": "circle", "error": "diamond", "token": "square", "target": "star"}
KIND_LABEL = {"feature": "features", "error": "error nodes", "token": "tokens",
              "target": "target"}
WIDTHS = (0.6, 1.2, 2.0, 3.2, 5.0)
MODEL_COLORS = {"base": ROLE_COLORS["base"], "hybrid": ROLE_COLORS["other"],
                "adapter model": ROLE_COLORS["difference"], "reasoner": ROLE_COLORS["fine"]}


def row_of(kind: str, layer: int, n_layers: int) -> int:
    """The y row of a node: 0 for tokens, ``layer + 1`` for features and errors,
    ``n_layers + 1`` for targets."""
    if kind == "token":
        return 0
    if kind == "target":
        return n_layers + 1
    return int(layer) + 1


def row_labels(n_layers: int) -> list[str]:
    return ["emb"] + [f"L{i}" for i in range(n_layers)] + ["target"]


def column_widths(views: Sequence[GraphView]) -> list[float]:
    """Width of each position's column: 1, or more where a cell holds many nodes (the
    largest cell of that position over ``views``, half a unit per node)."""
    P = max(len(v.token_strs) for v in views)
    most = [1] * P
    for v in views:
        nd = v.nodes
        rows = [row_of(k, la, v.n_layers) for k, la in zip(nd["kind"], nd["layer"])]
        counts = pd.Series(1, index=pd.MultiIndex.from_arrays([nd["pos"], rows])).groupby(
            level=[0, 1]).sum()
        for (p, _), c in counts.items():
            most[int(p)] = max(most[int(p)], int(c))
    return [max(1.0, 0.5 * m) for m in most]


def column_centres(widths: Sequence[float]) -> list[float]:
    out, left = [], 0.0
    for w in widths:
        out.append(left + w / 2)
        left += w
    return out


def node_positions(view: GraphView, widths: Sequence[float] | None = None) -> pd.DataFrame:
    """``x``, ``y`` of every node of ``view`` (index aligned with ``view.nodes``): ``y``
    the row (:func:`row_of`), ``x`` inside its position's column (:func:`column_widths`),
    nodes of one cell spread over 85% of the column, by kind and feature index."""
    nd = view.nodes
    widths = list(widths) if widths is not None else column_widths([view])
    centre = column_centres(widths)
    y = [row_of(k, la, view.n_layers) for k, la in zip(nd["kind"], nd["layer"])]
    x = [centre[int(p)] for p in nd["pos"]]
    order = {"feature": 0, "error": 1, "token": 2, "target": 3}
    cells: dict[tuple[int, int], list[int]] = {}
    for i, (p, r) in enumerate(zip(nd["pos"], y)):
        cells.setdefault((int(p), r), []).append(i)
    for (p, _), members in cells.items():
        k = len(members)
        if k == 1:
            continue
        members.sort(key=lambda i: (order[nd["kind"].iat[i]], int(nd["feature"].iat[i])))
        step = 0.85 * widths[p] / k
        for j, i in enumerate(members):
            x[i] += (j - (k - 1) / 2) * step
    return pd.DataFrame({"x": x, "y": y}, index=nd.index)


def _sign_color(v: float) -> str:
    return POSITIVE if v > 0 else NEGATIVE if v < 0 else NEUTRAL


def _fmt(v: float) -> str:
    return f"{v:+.3g}"


def _hover(view: GraphView, k: int = 3) -> list[str]:
    nd, ed = view.nodes, view.edges
    name = dict(zip(nd["id"], nd["name"]))
    ins: dict[str, list[tuple[float, str]]] = {}
    outs: dict[str, list[tuple[float, str]]] = {}
    for s, t, w in zip(ed["source"], ed["target"], ed["weight"]):
        ins.setdefault(t, []).append((float(w), s))
        outs.setdefault(s, []).append((float(w), t))

    def top(edges: list[tuple[float, str]]) -> str:
        best = sorted(edges, key=lambda e: -abs(e[0]))[:k]
        return ", ".join(f"{name.get(o, o)} {_fmt(w)}" for w, o in best)

    out = []
    for r in nd.itertuples(index=False):
        head = f"<b>{r.name}</b> · {r.kind}"
        if r.kind == "feature":
            head += f" (layer {r.layer}, index {r.feature})"
        lines = [head, f"token {r.token!r} at position {r.pos}"]
        if r.kind == "target":
            lines.append(f"{r.label}: value {r.activation:.4g}")
        else:
            if r.kind in ("feature", "error"):
                what = "activation" if r.kind == "feature" else "error norm"
                lines.append(f"{what} {r.activation:.4g}")
            lines.append(f"influence {r.influence:.3g} (cumulative {r.cumulative:.3f})")
            lines.append(f"total effect on target {_fmt(r.effect)}")
            if r.label:
                lines.append(f"label: {r.label}")
        if r.id in ins:
            lines.append(f"top in: {top(ins[r.id])}")
        if r.id in outs:
            lines.append(f"top out: {top(outs[r.id])}")
        out.append("<br>".join(lines))
    return out


def graph_traces(view: GraphView, pinned: Sequence[str] = (), show_legend: bool = True,
                 widths: Sequence[float] | None = None) -> list[go.Scatter]:
    """Edge traces (lines, by sign and width class) then node traces (one per kind)."""
    nd, ed = view.nodes, view.edges
    xy = node_positions(view, widths)
    where = {i: (x, y) for i, x, y in zip(nd["id"], xy["x"], xy["y"])}
    pins = set(pinned) & set(nd["id"])
    traces: list[go.Scatter] = []
    wmax = float(ed["weight"].abs().max()) if len(ed) else 0.0
    groups: dict[tuple[int, int, bool], list[tuple[str, str]]] = {}
    for s, t, w in zip(ed["source"], ed["target"], ed["weight"]):
        frac = math.sqrt(abs(w) / wmax) if wmax > 0 else 0.0
        b = min(len(WIDTHS) - 1, int(frac * len(WIDTHS)))
        lit = not pins or s in pins or t in pins
        groups.setdefault((1 if w > 0 else -1, b, lit), []).append((s, t))
    shown: set[int] = set()
    # widest class first, so that each sign's legend entry shows a visible line
    for (sign, b, lit), pairs in sorted(groups.items(), key=lambda kv: (kv[0][0], -kv[0][1],
                                                                           not kv[0][2])):
        xs: list[float | None] = []
        ys: list[float | None] = []
        for s, t in pairs:
            (x0, y0), (x1, y1) = where[s], where[t]
            xs += [x0, x1, None]
            ys += [y0, y1, None]
        opacity = (0.3 + 0.14 * b) if lit else 0.08
        traces.append(go.Scatter(
            x=xs, y=ys, mode="lines", hoverinfo="skip", opacity=opacity,
            line=dict(width=WIDTHS[b], color=POSITIVE if sign > 0 else NEGATIVE),
            name="positive edges" if sign > 0 else "negative edges",
            legendgroup=f"edges{sign}", showlegend=show_legend and sign not in shown,
            meta={"role": "edges", "sign": sign, "n": len(pairs)}))
        shown.add(sign)
    hover = _hover(view)
    body = nd["kind"] != "target"
    imax = float(nd.loc[body, "influence"].max()) if bool(body.any()) else 0.0
    for kind in ("token", "error", "feature", "target"):
        sel = (nd["kind"] == kind).to_numpy()
        if not sel.any():
            continue
        sub = nd[sel]
        if kind == "target":
            sizes = [22.0] * len(sub)
            colors = [ROLE_COLORS["difference"]] * len(sub)
        else:
            sizes = [6.0 + 16.0 * math.sqrt(max(v, 0.0) / imax) if imax > 0 else 7.0
                     for v in sub["influence"]]
            colors = [_sign_color(v) for v in sub["effect"]]
        ring = [3.0 if i in pins else 0.5 for i in sub["id"]]
        traces.append(go.Scatter(
            x=xy["x"][sel].tolist(), y=xy["y"][sel].tolist(), mode="markers",
            name=KIND_LABEL[kind], legendgroup=kind, showlegend=show_legend,
            marker=dict(symbol=KIND_SYMBOL[kind], size=sizes, color=colors, opacity=0.95,
                        line=dict(width=ring, color="black")),
            customdata=[[i] for i in sub["id"]],
            hovertext=[h for h, s in zip(hover, sel) if s],
            hovertemplate="%{hovertext}<extra></extra>",
            meta={"role": "nodes", "kind": kind}))
    return traces


def _axes(fig: go.Figure, view: GraphView, widths: Sequence[float],
          row: int | None = None) -> None:
    kw = dict(row=row, col=1) if row is not None else {}
    P = len(view.token_strs)
    fig.update_xaxes(tickmode="array", tickvals=column_centres(widths),
                     ticktext=view.token_strs, tickangle=-60 if P > 12 else 0,
                     range=[-0.3, sum(widths) + 0.3], showgrid=False, zeroline=False, **kw)
    fig.update_yaxes(tickmode="array", tickvals=list(range(view.n_layers + 2)),
                     ticktext=row_labels(view.n_layers), range=[-0.6, view.n_layers + 1.6],
                     zeroline=False, **kw)


def graph_title(view: GraphView) -> str:
    t = view.targets[0] if view.targets else {}
    what = {"logit": f'logit of "{t.get("token_str")}"',
            "logit_diff": f'"{t.get("token_str")}" minus the runner-up',
            "logit_set": f'summed logits of "{t.get("token_str")}"'}.get(
        str(t.get("kind")), "direction")
    n_feat = int((view.nodes["kind"] == "feature").sum())
    return (f"{what} at position {t.get('pos')} · {len(view.nodes)} of {view.n_nodes_full} "
            f"nodes ({n_feat} feature{'' if n_feat == 1 else 's'}), {len(view.edges)} edges")


def graph_figure(view: GraphView, pinned: Sequence[str] = (), title: str | None = None,
                 height: int | None = None) -> go.Figure:
    """The attribution graph (module docstring)."""
    widths = column_widths([view])
    fig = go.Figure(graph_traces(view, pinned, widths=widths))
    _axes(fig, view, widths)
    style(fig, title if title is not None else graph_title(view),
          height=height or max(460, 150 + 80 * (view.n_layers + 2)),
          x_title="token position", y_title=None)
    # the legend on its own line under the title (a long title would run into it)
    fig.update_layout(hovermode="closest", clickmode="event+select", dragmode="pan",
                      margin=dict(t=95, b=90),
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="left",
                                  x=0.0))
    return fig


def compare_figure(views: Mapping[str, GraphView], pinned: Sequence[str] = ()) -> go.Figure:
    """Graphs of the same prompt stacked, one per row, on one shared token axis."""
    names = list(views)
    widths = column_widths(list(views.values()))

    def sub(n: str) -> str:
        sc = views[n].scores
        return (f"{n}: {graph_title(views[n])} · replacement "
                f"{sc.get('replacement', float('nan')):.2f}")

    fig = make_subplots(rows=len(names), cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=[sub(n) for n in names])
    seen: set[str] = set()
    for r, n in enumerate(names, start=1):
        for tr in graph_traces(views[n], pinned, widths=widths):
            tr.showlegend = tr.name not in seen     # one legend entry per name
            seen.add(tr.name)
            fig.add_trace(tr, row=r, col=1)
        _axes(fig, views[n], widths, row=r)
    fig.update_annotations(font_size=12, x=0.0, xanchor="left")
    L = views[names[0]].n_layers if names else 0
    style(fig, None, height=max(700, len(names) * (120 + 70 * (L + 2))))
    fig.update_layout(hovermode="closest", dragmode="pan", margin=dict(t=50, b=90))
    return fig


def influence_overlay(grids: Mapping[str, pd.DataFrame], token_strs: Sequence[str]
                      ) -> go.Figure:
    """Per layer x position influence of two graphs of one prompt (one colour scale)
    and their difference (second minus first, diverging scale)."""
    (a, ga), (b, gb) = list(grids.items())[:2]
    diff = gb - ga
    P = ga.shape[1]
    x = [f"{p}: {token_strs[p]}" for p in range(P)]
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=[f"influence in the {a} graph",
                                        f"influence in the {b} graph", f"{b} − {a}"])
    for r, (g, ax) in enumerate(((ga, "coloraxis"), (gb, "coloraxis"), (diff, "coloraxis2")),
                                start=1):
        fig.add_trace(go.Heatmap(
            z=g.to_numpy(), x=x, y=list(g.index), coloraxis=ax, xgap=1, ygap=1,
            hovertemplate="%{y} · %{x}<br>%{z:.3g}<extra></extra>"), row=r, col=1)
    zmax = float(max(ga.to_numpy().max(), gb.to_numpy().max(), 1e-12))
    dmax = float(max(abs(diff.to_numpy()).max(), 1e-12))
    style(fig, None, height=220 + 40 * 3 * len(ga.index))
    fig.update_layout(
        coloraxis=dict(colorscale=SEQUENTIAL, cmin=0.0, cmax=zmax,
                       colorbar=dict(title="influence", y=0.68, len=0.62)),
        coloraxis2=dict(colorscale=DIVERGING, cmid=0.0, cmin=-dmax, cmax=dmax,
                        colorbar=dict(title="difference", y=0.16, len=0.3)),
        margin=dict(t=40, b=90))
    fig.update_xaxes(type="category", tickangle=-60 if P > 12 else 0)
    fig.update_annotations(font_size=12, x=0.0, xanchor="left")
    return fig


def probability_figure(table: pd.DataFrame) -> go.Figure:
    """Bars of each ``P(token)`` column of :func:`~.explore.model_probabilities`, one
    bar per model in the base / hybrid / adapter model / reasoner colours."""
    cols = [c for c in table.columns if c.startswith("P(") and c != "P(top)"]
    models = [m for m in MODEL_ORDER if m in set(table["model"])] or list(table["model"])
    t = table.set_index("model").loc[models]
    fig = go.Figure()
    for j, c in enumerate(cols):
        fig.add_trace(go.Bar(
            x=models, y=t[c].tolist(), name=c,
            marker=dict(color=[MODEL_COLORS.get(m, NEUTRAL) for m in models],
                        pattern_shape="" if j == 0 else "/"),
            text=[f"{v:.3g}" for v in t[c]], textposition="outside",
            hovertemplate="%{x}<br>" + c + " = %{y:.4f}<extra></extra>"))
    fig.update_yaxes(range=[0, 1.1])
    fig.update_layout(barmode="group", showlegend=len(cols) > 1)
    return style(fig, "Target probability at this position", height=360,
                 y_title="probability")


def figure_data(view: GraphView) -> pd.DataFrame:
    """The plotted data of a graph figure as one table (nodes with their x, y)."""
    return view.nodes.join(node_positions(view))


def compare_data(views: Mapping[str, GraphView]) -> pd.DataFrame:
    """The plotted data of :func:`compare_figure`: every graph's nodes with their x, y
    and a ``graph`` column."""
    widths = column_widths(list(views.values()))
    return pd.concat([v.nodes.join(node_positions(v, widths)).assign(graph=n)
                      for n, v in views.items()], ignore_index=True)
