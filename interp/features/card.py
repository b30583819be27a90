"""A feature card: everything known about one feature, as data, as HTML, as a file.

* :func:`card_data`: a JSON-able dict (id, label, stats, examples with per-token
  activations, histogram, regions, logit lens, label AUROCs, ablation effect, graphs),
  the content of the card's CSV/JSON export;
* :func:`examples_html`: examples with token-level highlighting (every token text is
  HTML-escaped; the background's opacity is the token's activation over the feature's
  maximum; the example's own position is outlined);
* :func:`card_html`: one standalone HTML file (no scripts, no network: bars are plain
  CSS), the card's "HTML" export;
* :func:`graphs_with_feature`: the saved attribution graphs the feature appears in
  (for links to the hesitation-graph page).
"""

from __future__ import annotations

import html
import json
from typing import Any, Sequence

from ..plots.common import PALETTE
from ..store import Store
from .table import FeatureTable

GRAPH_KIND = "attribution_graph"  # interp.attribution.artifacts.KIND
HIGHLIGHT = (255, 135, 0)  # the fine-tune's orange


def graphs_with_feature(source_key: str, layer: int, feature: int,
                        stores: Sequence[Store]) -> list[dict[str, Any]]:
    """``[{"graph": artifact key, "pin": node id, "prompt": text}]`` for every saved
    ``attribution_graphs`` artifact of ``source_key`` whose graph (``graph.json`` in the
    circuit-tracer format: nodes with ``node_id "{layer}_{feature}_{pos}"``, ``layer``,
    ``feature``) has a node of this feature; [] when no such artifact kind exists."""
    out: list[dict[str, Any]] = []
    for st in stores:
        if not st.kind_dir(GRAPH_KIND).is_dir():
            continue
        for art in st.list(GRAPH_KIND):
            key = (art.meta.get("source_key") or art.meta.get("adapters_key")
                   or art.config.get("source_key") or art.config.get("adapters_key")
                   or art.config.get("adapters"))
            if key != source_key or "graph.json" not in art.files:
                continue
            try:
                g = art.read_json("graph.json")
            except (OSError, ValueError):
                continue
            for node in g.get("nodes", []):
                # feature nodes are "{layer}_{feature}_{pos}" (their "feature" field is
                # circuit-tracer's Cantor pairing of layer and index)
                if node.get("feature_type") != "cross layer transcoder":
                    continue
                parts = str(node.get("node_id", "")).split("_")
                if len(parts) == 3 and parts[0] == str(layer) and parts[1] == str(feature):
                    out.append({"graph": art.key, "pin": str(node.get("node_id")),
                                "prompt": g.get("metadata", {}).get("prompt", "")})
                    break
    return out


def card_data(table: FeatureTable, g: int, label: str = "",
              graphs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Everything on the card of feature ``g`` (see the module docstring)."""
    st = table.stats(g)
    return {
        "feature": st["id"], "label": label, "source_key": table.source_key,
        "collection_key": table.key, "stats": st,
        "examples": table.examples(g),
        "histogram": table.histogram(g).to_dict("records"),
        "regions": table.regions(g).to_dict("records"),
        "logit_lens": table.lens(g).to_dict("records"),
        "aurocs": table.aurocs(g).to_dict("records"),
        "ablation": table.ablation_of(g),
        "graphs": graphs or [],
    }


def _tok_text(t: str) -> str:
    return html.escape(t.replace("\n", "↵").replace("\t", "⇥")) or "&#8203;"


def examples_html(examples: list[dict[str, Any]], act_max: float, kinds: Sequence[str]
                  = ("top", "quantile", "random")) -> str:
    """The examples as HTML (escaped; see the module docstring), grouped by kind."""
    r, g_, b = HIGHLIGHT
    scale = act_max if act_max > 0 else 1.0
    titles = {"top": "Top activations", "quantile": "Across the activation range",
              "random": "Random active tokens"}
    parts = []
    for kind in kinds:
        rows = [e for e in examples if e["kind"] == kind]
        if not rows:
            continue
        parts.append(f'<div class="fx-kind">{titles.get(kind, kind)}</div>')
        for e in rows:
            spans = []
            if e["start"] > 0:
                spans.append('<span class="fx-more">…</span>')
            for j, (tok, a) in enumerate(zip(e["tokens"], e["acts"])):
                alpha = min(1.0, max(0.0, a / scale))
                here = e["start"] + j == e["pos"]
                style = f"background:rgba({r},{g_},{b},{alpha:.3f})"
                if here:
                    style += ";outline:2px solid #333"
                title = html.escape(f"{tok!r} act {a:.4g} · {e['regions'][j]}", quote=True)
                spans.append(f'<span class="fx-tok" style="{style}" title="{title}">'
                             f"{_tok_text(tok)}</span>")
            if e["start"] + len(e["tokens"]) < e["length"]:
                spans.append('<span class="fx-more">…</span>')
            head = html.escape(f"{e['act']:.3g} · {e['name']} · pos {e['pos']}")
            parts.append(f'<div class="fx-ex"><span class="fx-act">{head}</span> '
                         + "".join(spans) + "</div>")
    return STYLE + '<div class="fx-examples">' + "".join(parts) + "</div>"


STYLE = """<style>
.fx-examples{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px;line-height:1.9}
.fx-kind{font-family:Inter,Helvetica,Arial,sans-serif;font-weight:600;margin:10px 0 2px}
.fx-ex{margin:2px 0;padding:2px 4px;border-bottom:1px solid #eee}
.fx-tok{padding:1px 2px;margin:0 1px;border-radius:3px}
.fx-act{color:#666;font-size:11px;margin-right:6px}
.fx-more{color:#999}
</style>"""


def _bars(rows: list[tuple[str, float]], fmt: str = "{:.3g}", color: str = PALETTE["difference"],
          signed: bool = False) -> str:
    top = max((abs(v) for _, v in rows), default=0.0) or 1.0
    out = ['<table class="fx-bars">']
    for name, v in rows:
        w = 100 * abs(v) / top
        c = (PALETTE["positive"] if v > 0 else PALETTE["negative"]) if signed else color
        out.append(f"<tr><td>{html.escape(str(name))}</td><td class='fx-bar'>"
                   f"<div style='width:{w:.1f}%;background:{c}'></div></td>"
                   f"<td>{html.escape(fmt.format(v))}</td></tr>")
    return "".join(out) + "</table>"


def card_html(card: dict[str, Any]) -> str:
    """One standalone HTML page of a card (no scripts; works offline)."""
    st = card["stats"]
    esc = html.escape
    title = f"Feature {card['feature']}" + (f" — {card['label']}" if card.get("label") else "")
    stats = "".join(f"<tr><td>{esc(k)}</td><td>{esc(_fmt(v))}</td></tr>"
                    for k, v in st.items())
    hist = [r for r in card["histogram"] if r["count"] > 0 and r["bin"] > 0]
    lens = card["logit_lens"]
    ab = card.get("ablation")
    au = [r for r in card["aurocs"] if r.get("both") is not None]
    sections = [
        f"<h1>{esc(title)}</h1>",
        f"<p class='fx-sub'>source {esc(card['source_key'])} · collection "
        f"{esc(card['collection_key'])}</p>",
        f"<h2>Summary</h2><table class='fx-stats'>{stats}</table>",
        "<h2>Examples</h2>" + examples_html(card["examples"], float(st["max"])),
        "<h2>Activation histogram (active tokens)</h2>"
        + _bars([(r["range"], r["count"]) for r in hist], "{:.0f}"),
        "<h2>Where it fires (share of activation mass)</h2>"
        + _bars([(r["region"], r["mass_share"]) for r in card["regions"]], "{:.1%}"),
        "<h2>Logit lens of the decoder direction</h2>"
        + _bars([(r["token"], r["logit"]) for r in lens], "{:+.3g}", signed=True),
    ]
    if au:
        sections.append("<h2>Ground-truth labels (AUROC, both splits)</h2>"
                        + _bars([(r["label"], r["both"]) for r in au], "{:.3f}"))
    if ab:
        sections.append(
            f"<h2>Ablation effect</h2><p>mean KL(p ‖ p_ablated) = {_fmt(ab['kl_mean'])} nats "
            f"over {ab['n_positions']} active positions in {ab['n_sequences']} sequences</p>"
            + _bars([(f"↑ {t}", v) for t, v in ab["up"]]
                    + [(f"↓ {t}", v) for t, v in ab["down"]], "{:+.3g}", signed=True))
    if card.get("graphs"):
        sections.append("<h2>Attribution graphs</h2><ul>" + "".join(
            f"<li>{esc(x['graph'])} · node {esc(x['pin'])}</li>" for x in card["graphs"])
            + "</ul>")
    sections.append("<h2>Data</h2><pre class='fx-json'>"
                    + esc(json.dumps({k: card[k] for k in ("feature", "label", "stats")},
                                     indent=1)) + "</pre>")
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{esc(title)}</title>" + PAGE_STYLE + "</head><body>"
            + "".join(sections) + "</body></html>")


PAGE_STYLE = """<style>
body{font-family:Inter,Helvetica,Arial,sans-serif;max-width:1000px;margin:24px auto;color:#222}
h1{font-size:22px}h2{font-size:16px;margin-top:22px}
.fx-sub{color:#666;font-size:12px}
.fx-stats td{padding:1px 10px 1px 0;font-size:13px}
.fx-bars{border-collapse:collapse;font-size:12px;width:100%}
.fx-bars td{padding:1px 6px;white-space:nowrap}
.fx-bar{width:70%}.fx-bar div{height:12px;border-radius:2px}
.fx-json{font-size:11px;background:#f6f6f6;padding:8px}
</style>"""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "—" if v is None else str(v)
