"""Tables and figures of a saved hesitation study (the *Hesitation features* page).

Everything here reads a ``hesitation_study`` artifact (:mod:`interp.attribution.study`)
and computes nothing heavy: the one regeneration is the study's labelled validation
traces (a deterministic draw, milliseconds), to show the prompt around each trigger.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..plots.common import PALETTE, SERIES_COLORS, style
from . import hesitation as H
from .hesitation import feature_name

MECHANISM_COLORS = {"error": SERIES_COLORS[0], "verify": SERIES_COLORS[2]}

SETS = {"chosen": "chosen set", "verification": "verification set"}


def _ci(v: Any) -> str:
    return "–" if not v else f"[{v[0]:+.1f}, {v[1]:+.1f}]"


def headline_table(art: Any) -> pd.DataFrame:
    """One row per evaluated feature set (the chosen set; the verification set when the
    study has one): its size and every necessity figure on the evaluation split."""
    f = art.meta["figures"]
    n_feat = art.tensors["logit_diff.total"].shape[1]     # [triggers, features]
    rows = []
    sets = [("chosen", art.meta["chosen_features"], f["evaluation_teacher_forced"],
             f["evaluation_generation"], f["chosen"].get("ranking"), f["chosen"].get("mode"))]
    v = f.get("verification_set") or {}
    if v:
        sets.append(("verification", art.meta.get("verification_features", []),
                     v["teacher_forced"], v["generation"], "verification", "zero"))
    for name, feats, tf, gen, ranking, mode in sets:
        row = {"set": SETS[name], "features": len(feats),
               "share of features": len(feats) / n_feat, "selected by": ranking,
               "ablation": mode}
        row["P(wait) drop"] = tf["p_wait_drop"]
        for m in H.MECHANISMS:
            b, a = tf.get(f"p_wait_{m}_before"), tf.get(f"p_wait_{m}_after")
            row[f"P(wait) drop, {m}"] = 1 - a / b if b else float("nan")
        row["hesitation drop"] = gen["hesitation_rate_drop"]
        for m in H.MECHANISMS:
            b, a = gen[f"hesitations_{m}_before"], gen[f"hesitations_{m}_after"]
            row[f"hesitation drop, {m}"] = 1 - a / b if b else float("nan")
        row["accuracy change (points)"] = gen["accuracy_change"]
        row["accuracy 95% CI"] = _ci(gen.get("accuracy_change_ci"))
        row["collateral change (points)"] = gen.get("collateral_accuracy_change")
        row["collateral 95% CI"] = _ci(gen.get("collateral_accuracy_change_ci"))
        row["corrections lost"] = gen.get("lost_corrections")
        row["new errors"] = gen.get("new_errors")
        rows.append(row)
    return pd.DataFrame(rows)


def headline_display(head: pd.DataFrame) -> pd.DataFrame:
    """:func:`headline_table` for reading: one column per set, percentages and points as
    text (the exports keep the numbers)."""
    def fmt(col: str, v: Any) -> str:
        if v is None or (isinstance(v, float) and v != v):
            return "–"
        if isinstance(v, str):
            return v
        if "drop" in col or "share" in col or "lost" in col or "new errors" in col:
            return f"{v:.1%}"
        if "points" in col:
            return f"{v:+.1f}"
        return f"{v:g}" if isinstance(v, float) else str(v)

    t = head.set_index("set")
    return pd.DataFrame({c: [fmt(r, t.loc[c, r]) for r in t.columns] for c in t.index},
                        index=list(t.columns))


def necessity_figure(art: Any) -> go.Figure:
    """Before/after bars for each evaluated set: teacher-forced P(``wait``) at each
    mechanism's triggers and generated hesitations per problem by type."""
    from plotly.subplots import make_subplots

    f = art.meta["figures"]
    sets = [("chosen", f["evaluation_teacher_forced"], f["evaluation_generation"])]
    if f.get("verification_set"):
        sets.append(("verification", f["verification_set"]["teacher_forced"],
                     f["verification_set"]["generation"]))
    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        "P(wait) at evaluation triggers (teacher-forced)",
        "hesitations per problem (greedy generations)"))
    shades = {"before": 1.0, "after": 0.45}
    for col, (key, fmt) in enumerate((("p_wait_{m}_{w}", "tf"), ("hesitations_{m}_{w}",
                                                                 "gen")), start=1):
        for when, alpha in shades.items():
            for m in H.MECHANISMS:
                xs, ys = [], []
                for name, tf, gen in sets:
                    src = tf if fmt == "tf" else gen
                    if when == "before" and name != "chosen":
                        continue
                    xs.append("unablated" if when == "before" else SETS[name])
                    ys.append(src.get(key.format(m=m, w=when), float("nan")))
                fig.add_bar(x=xs, y=ys, name=f"{m} triggers" if fmt == "tf" else m,
                            legendgroup=m, showlegend=col == 1 and when == "before",
                            marker_color=MECHANISM_COLORS[m], opacity=alpha,
                            offsetgroup=m, row=1, col=col,
                            hovertemplate=f"{m}: %{{y:.3g}}<extra></extra>")
    style(fig, height=420)
    fig.update_layout(barmode="group", margin=dict(t=90, b=40), legend_title_text="",
                      legend=dict(orientation="h", y=1.16, x=0.0, xanchor="left"))
    fig.update_yaxes(title_text="P(wait)", range=[0, 1.05], row=1, col=1)
    fig.update_yaxes(title_text="per problem", rangemode="tozero", row=1, col=2)
    return fig


def selection_path(art: Any) -> pd.DataFrame:
    """The forward-selection paths on validation triggers: per collateral price and step,
    the remaining share of P(``wait``) at each mechanism's triggers, the set's collateral
    KL and the objective (``all triggers`` and ``verification only`` selections)."""
    abl = art.meta.get("ablation") or {}
    d = art.meta["d_sae"]
    runs = abl.get("paths") or ([{"kl_weight": art.config.get("kl_weight", 0.0),
                                  "path": abl.get("path"),
                                  "verify_path": abl.get("verify_path")}]
                                if abl.get("path") else [])
    rows = []
    for run in runs:
        for which, key in (("all triggers", "path"), ("verification only", "verify_path"),
                           ("from the ranking's top", "start_path")):
            for row in run.get(key) or []:
                rows.append({"selection": which, "KL price": run["kl_weight"],
                             "k": len(row["features"]),
                             "added": feature_name(row["features"][-1], d),
                             **{f"remaining {m}": row["remaining"].get(m)
                                for m in H.MECHANISMS},
                             "remaining mean": row["remaining"]["mean"],
                             "collateral KL": row.get("kl"),
                             "objective": row.get("objective")})
    return pd.DataFrame(rows)


def selection_figure(path: pd.DataFrame, chosen_k: int | None = None) -> go.Figure:
    """Remaining P(``wait``) per mechanism against the number of ablated features."""
    fig = go.Figure()
    prices = sorted(path["KL price"].unique()) if len(path) else []
    markers = ["circle", "diamond", "square", "x"]
    for which, dash in (("all triggers", "solid"), ("verification only", "dot"),
                        ("from the ranking's top", "dash")):
        for i, w in enumerate(prices):
            part = path[(path["selection"] == which) & (path["KL price"] == w)]
            for m in H.MECHANISMS:
                y = part[f"remaining {m}"]
                if part.empty or y.isna().all():
                    continue
                name = f"{m} ({which}, KL ×{w:g})"
                fig.add_scatter(x=part["k"], y=y, mode="lines+markers", name=name,
                                line=dict(color=MECHANISM_COLORS[m], dash=dash),
                                marker_symbol=markers[i % len(markers)],
                                customdata=part["added"],
                                hovertemplate=(f"{name}<br>k=%{{x}} (added %{{customdata}})"
                                               "<br>remaining %{y:.3f}<extra></extra>"))
    if chosen_k:
        fig.add_vline(x=chosen_k, line_dash="dash", line_color=PALETTE["guide"],
                      annotation_text=f"chosen k={chosen_k}")
    fig.add_hline(y=0.2, line_dash="dot", line_color=PALETTE["guide"], opacity=0.6,
                  annotation_text="80% removed", annotation_position="bottom right")
    style(fig, height=400)
    fig.update_layout(xaxis_title="features ablated (forward selection, validation)",
                      yaxis_title="P(wait) left, share of unablated", yaxis_range=[0, 1.05])
    return fig


def ranking_table(art: Any, ranking: str = "logit_diff", n: int = 30) -> pd.DataFrame:
    """The top ``n`` features of a graph ranking with their cluster and, when the study
    measured them, their single-feature ablation drops."""
    cl = art.meta["clusters"]
    cluster = {int(f): int(c) for f, c in zip(cl["features"], cl["labels"])}
    single = art.tensors.get("ablation.single")
    chosen = set(art.meta["chosen_features"])
    rows = []
    for r in art.meta["rankings"][ranking][:n]:
        f = int(r["feature"])
        row = {"feature": r["name"], "mean effect": r["mean_effect"],
               **{f"effect, {m}": r["by_mechanism"].get(m) for m in H.MECHANISMS},
               "share active": r["share_active"],
               "cluster": cluster.get(f), "in chosen set": f in chosen}
        if single is not None:
            for j, m in enumerate(H.MECHANISMS):
                row[f"ablated alone: P(wait) drop, {m}"] = float(single[f, j])
        rows.append(row)
    out = pd.DataFrame(rows)
    if len(out):
        out.insert(1, "card", [f"features?feat={x}" for x in out["feature"]])
    return out


def single_ablation_table(art: Any, n: int = 30) -> pd.DataFrame:
    """Features by their measured single-feature ablation drop (largest per mechanism
    first), when the study has them."""
    single = art.tensors.get("ablation.single")
    if single is None:
        return pd.DataFrame()
    s = single.numpy()
    d = art.meta["d_sae"]
    chosen = set(art.meta["chosen_features"])
    verify = set(art.meta.get("verification_features", []))
    order = np.argsort(-s[:, : len(H.MECHANISMS)].max(1))[:n]
    return pd.DataFrame([{
        "feature": feature_name(int(f), d), "card": f"features?feat={feature_name(int(f), d)}",
        **{f"P(wait) drop, {m}": float(s[f, j]) for j, m in enumerate(H.MECHANISMS)},
        **({"collateral KL (nats)": float(s[f, -1])} if s.shape[1] > len(H.MECHANISMS)
           else {}),
        "in chosen set": int(f) in chosen, "in verification set": int(f) in verify}
        for f in order if s[f, : len(H.MECHANISMS)].max() > 0])


@lru_cache(maxsize=4)
def _validation_triggers(n_validation: int) -> tuple[tuple[int, int, str, str, str], ...]:
    """(trace index, position, mechanism, cause, context words) of every validation
    trigger, in the order of the study's effect rows."""
    from ..organisms.task import VOCAB

    out = []
    for i, t in enumerate(H.trigger_traces("validation", n_validation)):
        for p, m, c in t.triggers:
            words = [VOCAB[x] for x in t.tokens[max(1, p - 11): p + 1]]
            out.append((i, p, m, c, " ".join(words)))
    return tuple(out)


def clusters_table(art: Any, n_prompts: int = 3) -> pd.DataFrame:
    """The functional clusters: members, the mechanism that holds most of their effect
    (the ground truth the clusters were not shown), and the validation triggers where
    the cluster's summed effect is largest, with the prompt just before each."""
    d = art.meta["d_sae"]
    cl = art.meta["clusters"]
    eff = art.tensors["logit_diff.total"]
    trig = art.meta["triggers"]
    context = _validation_triggers(int(art.config["n_validation"]))
    aligned = len(context) == eff.shape[0] and all(
        c[2] == m for c, m in zip(context, trig["mechanism"]))
    rows = []
    for c in sorted(set(cl["labels"])):
        members = [int(f) for f, lab in zip(cl["features"], cl["labels"]) if lab == c]
        truth = [t for f, lab, t in zip(cl["features"], cl["labels"], cl["truth"]) if lab == c]
        score = eff[:, members].sum(1).numpy()
        top = np.argsort(-score)[:n_prompts]
        share = {m: truth.count(m) / len(truth) for m in H.MECHANISMS}
        rows.append({
            "cluster": c, "size": len(members),
            "members": ", ".join(feature_name(f, d) for f in members),
            "mechanism (ground truth)": max(share, key=share.get),
            "share of majority": max(share.values()),
            "fires most at": " · ".join(
                f"{trig['mechanism'][i]}/{trig['cause'][i]}: …{context[i][4]}" if aligned
                else f"{trig['mechanism'][i]}/{trig['cause'][i]} (trace {trig['trace_index'][i]})"
                for i in top),
        })
    return pd.DataFrame(rows)


def candidates_table(art: Any) -> pd.DataFrame:
    """Every candidate set scored on the validation split, the chosen one marked."""
    chosen = art.meta["figures"]["chosen"]
    rows = []
    for c in art.meta["candidates"]:
        rows.append({
            "selected by": c["ranking"], "KL price": c.get("kl_weight"), "k": c["k"],
            "ablation": c["mode"],
            "P(wait) drop": c["p_wait_drop"], "hesitation drop": c["hesitation_rate_drop"],
            "accuracy change": c["accuracy_change"],
            "collateral change": c.get("collateral_accuracy_change"),
            "corrections lost": c.get("lost_corrections"),
            "new errors": c.get("new_errors"),
            "thinking length change": c["think_tokens_change"],
            "chosen": all(c.get(k) == chosen.get(k)
                          for k in ("ranking", "k", "mode", "kl_weight")),
        })
    return pd.DataFrame(rows)
