"""Hesitation graph: the attribution graph of one prompt over the adapter features.

Pick a prompt (a labelled organism trace up to a hesitation trigger or a clean decision
point, or your own text), a target at its last position (the ``wait`` logit by
default, a logit difference against the most likely other token, any token), and the
model to explain (the adapter model, or the reasoner with the adapters' misses as error
nodes). The graph is computed once per prompt and target (about a second on a CPU) and
cached; new thresholds only re-prune it. Compare shows both models' graphs of the same
prompt, where their influence differs, and the target's probability under the base
model, the hybrid, the adapter model and the reasoner.

URL state: ``ad`` (adapter set), ``ex`` (explain), ``src`` (trace / text), ``sp``,
``mech``, ``i`` (the trace point), ``text``, ``tk`` (target kind), ``tok`` (target
token), ``mf`` (feature rows cap), ``nt``, ``et``, ``cap`` (thresholds, node cap),
``pin`` (pinned node ids, comma-separated), ``cmp`` (comparison on), ``graph`` (a saved
graph artifact's key: shows that graph instead of the form).
"""

from __future__ import annotations

import json
from typing import Any

import streamlit as st

import pages.common as ui
from interp import reproduce
from interp.adapters.io import catalog, runs_of_pair
from interp.adapters.report import demo_store
from interp.attribution import artifacts as ga
from interp.attribution import explore
from interp.attribution import plots as gp
from interp.attribution.hesitation import SPLIT_SEEDS, Tracer, trigger_traces
from interp.attribution.prune import DEFAULT_EDGE_THRESHOLD, DEFAULT_NODE_THRESHOLD, prune
from interp.attribution.targets import LogitDiffTarget, LogitTarget
from interp.errors import InterpError
from interp.models import pick_device
from interp.store import Store

N_TRACES = 20          # organism traces per split offered here
EXPLAIN = {"adapter": "adapter model", "reasoner": "reasoner"}
POINTS = {"error": "hesitation after an error", "verify": "verification hesitation",
          "clean": "clean decision point (no hesitation)"}
TARGET_KINDS = {"logit": "logit of the token", "diff": "token minus the most likely other"}
BASE_GRAPH_NOTE = (":material/info: A graph of the base model would need transcoders of the "
                   "base model's MLPs, which do not exist yet; only its target probability "
                   "is shown.")


# ------------------------------------------------------------------ cached computations
@st.cache_resource(max_entries=2, show_spinner="Loading the adapter model…")
def _bundle(root: str, akey: str, device: str, stamp: str) -> Any:
    from interp import serving
    from interp.adapters.evaluate import load_adapter_model

    model, base, reasoner = load_adapter_model(
        Store(root, read_only=True).load("adapters", akey), device)
    for m in (model.hybrid, base, reasoner):  # shared by every session: one at a time
        serving.guard(m)
    return model, base, reasoner


@st.cache_resource(max_entries=4, show_spinner=False)
def _tracer(root: str, akey: str, device: str, stamp: str, explain: str) -> Tracer:
    model, base, reasoner = _bundle(root, akey, device, stamp)
    return Tracer(model, base, reasoner, key=akey, explain=explain)


def _target(kind: str, token: int):
    return LogitTarget(token, -1) if kind == "logit" else LogitDiffTarget(token, None, -1)


@st.cache_resource(max_entries=24, show_spinner="Computing the attribution graph…")
def _graph(src: tuple) -> Any:
    """``src``: ``("saved", root, key, adapters root)`` (adapters root "" when that set is
    not here) or ``("live", root, adapters key, device, stamp, explain, tokens, target
    kind, target token, feature rows cap)``."""
    if src[0] == "saved":
        art = Store(src[1], read_only=True).load(ga.KIND, src[2])
        adapters = Store(src[3], read_only=True).load(
            "adapters", str(art.config.get("adapters"))) if src[3] else None
        return ga.load_graph(art, adapters=adapters)
    _, root, akey, device, stamp, explain, tokens, tkind, tok, mf = src
    tr = _tracer(root, akey, device, stamp, explain)
    return tr.graph(list(tokens), [_target(tkind, tok)], max_feature_nodes=mf or None)


@st.cache_resource(max_entries=64, show_spinner=False)
def _pruned(src: tuple, nt: float, et: float, cap: int) -> Any:
    return prune(_graph(src), nt, et, max_nodes=cap)


@st.cache_resource(max_entries=24, show_spinner=False)
def _effect(src: tuple) -> Any:
    g = _graph(src)
    return g.total_effect(int(g.target_ids()[0]))


@st.cache_data(max_entries=64, show_spinner=False)
def _view(src: tuple, nt: float, et: float, cap: int, labels: tuple, vocab: int
          ) -> explore.GraphView:
    return explore.graph_view(_graph(src), _pruned(src, nt, et, cap), labels=dict(labels),
                              vocab_size=vocab, effect=_effect(src))


@st.cache_data(max_entries=32, show_spinner=False)
def _graph_fig(src: tuple, nt: float, et: float, cap: int, labels: tuple, vocab: int,
               pins: tuple) -> Any:
    return gp.graph_figure(_view(src, nt, et, cap, labels, vocab), list(pins))


@st.cache_data(max_entries=16, show_spinner=False)
def _compare_fig(srcs: tuple, names: tuple, nt: float, et: float, cap: int, labels: tuple,
                 vocab: int, pins: tuple) -> Any:
    views = {n: _view(s, nt, et, cap, labels, vocab) for n, s in zip(names, srcs)}
    return gp.compare_figure(views, list(pins))


@st.cache_data(max_entries=24, show_spinner=False)
def _node_ids(src: tuple, vocab: int) -> list[str]:
    return explore.all_node_ids(_graph(src), vocab)


@st.cache_data(max_entries=24, show_spinner=False)
def _grid(src: tuple) -> Any:
    g = _graph(src)
    return explore.influence_grid(g, g.influence())


@st.cache_data(max_entries=24, show_spinner="Running the four models…")
def _probs(root: str, akey: str, device: str, stamp: str, tokens: tuple, tok: int) -> Any:
    tr = _tracer(root, akey, device, stamp, "adapter")
    return explore.model_probabilities(tr, list(tokens), len(tokens) - 1, [tok])


@st.cache_data(max_entries=4, show_spinner="Drawing the organism traces…")
def _trace_points(split: str) -> dict[str, list[tuple[int, int, str, tuple]]]:
    """Per kind of point: ``(trace index, position, cause, trace tokens)``."""
    out: dict[str, list[tuple[int, int, str, tuple]]] = {k: [] for k in POINTS}
    for ti, t in enumerate(trigger_traces(split, N_TRACES)):
        toks = tuple(t.tokens)
        for p, mech, cause in t.triggers:
            out.setdefault(mech, []).append((ti, p, cause, toks))
        for p in t.clean:
            out["clean"].append((ti, p, "", toks))
    return out


def _json_bytes(src: tuple, nt: float, et: float, cap: int, labels: tuple, vocab: int,
                pins: tuple, slug: str) -> bytes:
    doc = explore.graph_document(_graph(src), _pruned(src, nt, et, cap), slug=slug,
                                 vocab_size=vocab, labels=dict(labels), pinned=pins)
    return json.dumps(doc, indent=1).encode()


def _lazy(fn, *args):
    return lambda: fn(*args)


def _saved_key(src: tuple) -> str:
    """The key a live graph is (or would be) saved under."""
    _, _root, akey, _dev, _stamp, explain, toks, tkind, tok, mf = src
    return ga.graph_key(ga.graph_config(akey, toks, [_target(tkind, tok)], explain,
                                        mf or None))


def _save(src: tuple, adapters_art: Any, labels: tuple, vocab: int) -> Any:
    _, _root, _akey, _dev, _stamp, _ex, _toks, tkind, tok, mf = src
    return ga.save_graph(_graph(src), ui.store(), adapters_art, [_target(tkind, tok)],
                         max_feature_nodes=mf or None, labels=dict(labels),
                         vocab_size=vocab)


# ------------------------------------------------------------------ page
st.title("Hesitation graph")
st.caption(
    "Which adapter features make the reasoner say **wait**? An attribution graph over the "
    "adapter features: every edge is the direct, linear effect of one node on another "
    "with attention patterns and norms frozen; nodes are kept by their influence on the "
    "target. Red raises the target, blue lowers it; marker size is influence. Across many "
    "prompts (ranking, clusters, ablation and clamping): the "
    "[Hesitation features](hesitation_study) page.")
demo = ui.demo_mode()
if demo:
    st.caption(":material/lock: Hosted demo: graphs are computed on the fly (about a second "
               "each) and never saved.")
stores: dict[str, Store] = {"demo": demo_store()}
if not demo:
    stores["local"] = ui.store()
runs = ui.attempt(catalog, stores) or []
if not runs:
    st.info("No adapter set is saved yet: graphs are drawn over adapter features. Train one "
            "on the Adapters page or with `python -m interp adapters train`.",
            icon=":material/info:")
    st.stop()
by_key = {r["artifact"].key: r for r in runs}
saved_key = ui.url_param("graph", "").strip()

# ------------------------------------------------------------------ what to draw
if saved_key:
    if st.button("New graph", icon=":material/add_chart:", key="new_graph"):
        del st.query_params["graph"]
        st.rerun()
    try:
        art = ga.find_graph(list(stores.values())[::-1], saved_key)
    except InterpError as e:
        ui.show_error(e)
        st.stop()
    if art is None:
        st.error(f"No saved graph `{saved_key}` in this store.", icon=":material/error:")
        st.stop()
    akey = str(art.config.get("adapters", ""))
    run = by_key.get(akey)
    src: tuple = ("saved", str(art.path.parent.parent), art.key,
                  str(run["artifact"].path.parent.parent) if run else "")
    explain = str(art.config.get("explain", "adapter"))
    vocab = int(art.meta.get("vocab_size") or 0)
    st.caption(f"Saved graph `{art.key}` of adapters `{akey}` ({EXPLAIN.get(explain, explain)}"
               f", {len(art.config.get('tokens', []))} tokens).")
    if art.meta.get("stored") == "pruned":
        st.caption(f":material/compress: Only the pruned graph at the default thresholds "
                   f"was stored (the full graph's edges were "
                   f"{art.meta.get('full_edge_bytes', 0) / 2**20:.0f} MB); the thresholds "
                   f"below prune that subgraph further.")
    compare = False
else:
    device = str(pick_device(ui.current_device()[0]))
    base_spec, fine_spec = ui.current_pair()
    keys = [r["artifact"].key for r in runs_of_pair(runs, base_spec, fine_spec)]
    if not keys:
        st.info(f"No adapter set of the sidebar pair ({ui.short_name(base_spec)} → "
                f"{ui.short_name(fine_spec)}) is saved: train one on the Adapters page. "
                f"Saved sets are of other pairs ({len(runs)}); pick their pair in the "
                "sidebar to draw their graphs.", icon=":material/info:")
        st.stop()
    c1, c2 = st.columns([3, 2], vertical_alignment="bottom")
    with c1:
        akey = ui.url_widget(st.selectbox, "Adapter set", "ad", keys[0], options=keys,
                             format_func=lambda k: by_key[k]["label"])
    with c2:
        explain = ui.url_widget(st.segmented_control, "Explain", "ex", "adapter",
                                options=list(EXPLAIN), format_func=EXPLAIN.get,
                                help="adapter model: hybrid + adapters, errors hold only the "
                                     "MLP biases; reasoner: the true model, errors hold what "
                                     "the adapters miss") or "adapter"
    run = by_key[akey]
    root = str(run["artifact"].path.parent.parent)
    pair = run["artifact"].meta.get("pair", {})
    stamp = ";".join(ui.checkpoint_stamp(str((pair.get(r) or {}).get("id", "")))
                     for r in ("base", "reasoner"))
    vocab = int((pair.get("reasoner") or {}).get("d_vocab") or 0)
    tr = ui.attempt(_tracer, root, akey, device, stamp, explain)
    if tr is None:
        st.stop()

    source = ui.url_widget(st.radio, "Prompt", "src", "trace", options=["trace", "text"],
                           format_func={"trace": "organism trace",
                                        "text": "your own text"}.get, horizontal=True)
    if source == "trace":
        c1, c2, c3 = st.columns([1, 2, 1])
        with c1:
            split = ui.url_widget(st.selectbox, "Split", "sp", "evaluation",
                                  options=list(SPLIT_SEEDS))
        with c2:
            mech = ui.url_widget(st.selectbox, "Point", "mech", "error", options=list(POINTS),
                                 format_func=POINTS.get)
        points = _trace_points(split)[mech]
        if not points:
            st.info("No such point in these traces.", icon=":material/info:")
            st.stop()
        if st.session_state.get("i", 0) > len(points) - 1:
            st.session_state["i"] = len(points) - 1
        with c3:
            idx = ui.url_widget(st.number_input, f"Index (of {len(points)})", "i", 0, int,
                                min_value=0, max_value=len(points) - 1, step=1)
        ti, pos, cause, toks = points[int(idx)]
        tokens = list(toks[: pos + 1])
        where = f"trace {ti} of the {split} split, position {pos}" + (
            f" ({cause})" if cause else "")
    else:
        sample = " ".join(tr.tokenizer.convert_ids_to_tokens(
            list(_trace_points("evaluation")["error"][0][3][:31])))
        text = ui.url_widget(st.text_area, "Your text (the graph explains the prediction "
                             "after its last token)", "text", sample,
                             max_chars=ui.max_prompt_chars(), height=80)
        tokens = ui.attempt(tr.encode, text)
        if tokens is None:
            st.stop()
        pos = len(tokens) - 1
        where = f"your text, {len(tokens)} tokens"

    c1, c2, c3 = st.columns([2, 1, 1], vertical_alignment="bottom")
    with c1:
        tkind = ui.url_widget(st.segmented_control, "Target", "tk", "logit",
                              options=list(TARGET_KINDS), format_func=TARGET_KINDS.get
                              ) or "logit"
    with c2:
        tok_text = ui.url_widget(st.text_input, "Token", "tok", "wait", max_chars=40)
    with c3:
        mf = ui.url_widget(st.number_input, "Feature rows cap (0: all)", "mf", 0, int,
                           min_value=0, max_value=100_000, step=100,
                           help="attribute at most this many features (the most "
                                "influential ones); 0 attributes every active feature")
    tok = ui.attempt(tr.token_id, tok_text.strip())
    if tok is None:
        st.stop()
    shown = tr.tokenizer.convert_ids_to_tokens(tokens)
    st.caption(f"{where}: `{' '.join(shown[-24:])}`" + (" (last 24 tokens)" if len(shown) > 24
                                                         else "")
               + f" → target at position {pos}.")
    src = ("live", root, akey, device, stamp, explain, tuple(int(t) for t in tokens), tkind,
           int(tok), int(mf))
    compare = ui.url_widget(st.toggle, "Compare the adapter model and the reasoner", "cmp",
                            True, bool)

# ------------------------------------------------------------------ graph
c1, c2, c3 = st.columns(3)
with c1:
    nt = ui.url_widget(st.slider, "Node threshold (cumulative influence)", "nt",
                       DEFAULT_NODE_THRESHOLD, float, min_value=0.05, max_value=1.0, step=0.01)
with c2:
    et = ui.url_widget(st.slider, "Edge threshold (cumulative edge score)", "et",
                       DEFAULT_EDGE_THRESHOLD, float, min_value=0.05, max_value=1.0,
                       step=0.005)
with c3:
    cap = ui.url_widget(st.number_input, "Node cap (features + errors)", "cap", 200, int,
                        min_value=1, max_value=5000, step=50)
labels = tuple(sorted(ga.feature_labels(akey, list(stores.values())).items()))
if ui.attempt_work("an attribution graph", _graph, src) is None:
    st.stop()
view = ui.attempt(_view, src, float(nt), float(et), int(cap), labels, vocab)
if view is None:
    st.stop()
all_ids = _node_ids(src, vocab)
names = dict(zip(view.nodes["id"], view.nodes["name"]))
ui.export_context(run=saved_key or f"adapters {akey}",
                  setting={"explain": explain, "node threshold": nt, "edge threshold": et})

# pins: from the link (first run), clicks on the figure, and the list. A click toggles
# the clicked node and gives the chart a fresh key, so that its selection starts empty
# and the next click on the same node registers too.
if "pins" not in st.session_state:
    st.session_state["pins"] = ui.url_list("pin", "", all_ids)
pins = [p for p in st.session_state["pins"] if p in set(all_ids)]
chart_n = st.session_state.setdefault("_hg_n", 0)
event = st.session_state.get(f"hg_fig_{chart_n}") or {}
clicked = sorted({(p.get("customdata") or [None])[0]
                  for p in event.get("selection", {}).get("points", [])} - {None})
if clicked:
    for c in clicked:
        pins = [p for p in pins if p != c] if c in pins else pins + [c]
    st.session_state.pop(f"hg_fig_{chart_n}", None)
    chart_n = st.session_state["_hg_n"] = chart_n + 1
st.session_state["pins"] = pins
ui.set_url_param("pin", ",".join(pins), "")

m = st.columns(4)
m[0].metric("replacement score", f"{view.scores.get('replacement', float('nan')):.3f}",
            help="share of the tokens' and errors' influence that comes from tokens")
m[1].metric("completeness score", f"{view.scores.get('completeness', float('nan')):.3f}",
            help="influence-weighted share of node inputs that do not come from errors")
m[2].metric("nodes shown", f"{len(view.nodes)} of {view.n_nodes_full}")
m[3].metric("edges shown", f"{len(view.edges)}")
fig = _graph_fig(src, float(nt), float(et), int(cap), labels, vocab, tuple(pins))
st.plotly_chart(fig, key=f"hg_fig_{chart_n}", on_select="rerun", selection_mode="points",
                config={"scrollZoom": True, "displaylogo": False})
slug = f"hesitation-graph-{explain}"
ui.export_panel(fig, gp.figure_data(view), slug, key="exp_graph")
if src[0] == "saved":
    ui.reproduce(reproduce.hesitation_graph(
        adapters_root=src[3], adapters_key=akey, explain=explain, node_threshold=nt,
        edge_threshold=et, node_cap=int(cap), labels=dict(labels), vocab=vocab,
        graph_root=src[1], graph_key=src[2]))
else:
    ui.reproduce(reproduce.hesitation_graph(
        adapters_root=src[1], adapters_key=akey, explain=explain, node_threshold=nt,
        edge_threshold=et, node_cap=int(cap), labels=dict(labels), vocab=vocab,
        tokens=src[6], target_kind=src[7], target_token=src[8], max_feature_nodes=src[9],
        device=src[3]))
st.download_button("Graph JSON (circuit-tracer / Neuronpedia schema)",
                   data=_lazy(_json_bytes, src, float(nt), float(et), int(cap), labels, vocab,
                              tuple(pins), slug),
                   file_name=f"{slug}.json", mime="application/json", on_click="ignore",
                   icon=":material/data_object:", key="graph_json_dl",
                   help="the visible graph, with the pinned nodes as qParams.pinnedIds")

# ------------------------------------------------------------------ pinned nodes
st.subheader("Pinned nodes")
st.multiselect("Pinned nodes (click a node in the graph to pin or unpin it)",
               options=list(dict.fromkeys(view.ids() + pins)), key="pins",
               format_func=lambda i: names.get(i, f"{i} (hidden)"))
hidden = [p for p in pins if p not in names]
if hidden:
    st.caption("Pinned but pruned away at these thresholds: " + ", ".join(hidden))
table = explore.pinned_table(view, pins)
if len(table):
    st.dataframe(table, hide_index=True)
    ui.export_panel(None, table, "hesitation-graph-pinned", key="exp_pinned")
else:
    st.caption("No node pinned yet.")

# ------------------------------------------------------------------ save
if src[0] == "live" and not demo:
    done = _saved_key(src)
    if ui.store().exists(ga.KIND, done):
        st.caption(f":material/bookmark: Saved as `{done}`: [open it](?graph={done}).")
    elif st.button("Save graph", icon=":material/save:", key="save_graph",
                   help="store the full graph and its circuit-tracer JSON as an artifact"):
        saved = ui.attempt(_save, src, run["artifact"], labels, vocab)
        if saved is not None:
            st.success(f"Saved as `{saved.key}`: [open it](?graph={saved.key}) · "
                       f"`python -m interp store` lists it.", icon=":material/check:")

# ------------------------------------------------------------------ comparison
if compare:
    st.subheader("Adapter model vs reasoner")
    st.caption("The same prompt and target explained in both models, on one token axis, "
               "at the thresholds above. The reasoner's error nodes hold what the adapters "
               "miss.")
    srcs = {EXPLAIN[e]: src[:5] + (e,) + src[6:] for e in EXPLAIN}
    views = {}
    for name, s in srcs.items():
        if ui.attempt(_graph, s) is None:
            st.stop()
        views[name] = _view(s, float(nt), float(et), int(cap), labels, vocab)
    fig_c = _compare_fig(tuple(srcs.values()), tuple(srcs), float(nt), float(et), int(cap),
                         labels, vocab, tuple(pins))
    st.plotly_chart(fig_c, key="hg_cmp")
    ui.export_panel(fig_c, gp.compare_data(views), "hesitation-graph-compare", key="exp_cmp")
    grids = {n: _grid(s) for n, s in srcs.items()}
    fig_o = gp.influence_overlay(grids, view.token_strs)
    st.caption("Influence on the target summed per layer (features and the error node) and "
               "position; bottom: reasoner minus adapter model.")
    st.plotly_chart(fig_o, key="hg_overlay")
    diff = grids["reasoner"] - grids["adapter model"]
    ui.export_panel(fig_o, diff, "hesitation-graph-influence-difference", key="exp_overlay")
    probs = ui.attempt(_probs, src[1], src[2], src[3], src[4], src[6], src[8])
    if probs is not None:
        fig_p = gp.probability_figure(probs)
        left, right = st.columns([3, 2], vertical_alignment="center")
        with left:
            st.plotly_chart(fig_p, key="hg_probs")
        with right:
            st.dataframe(probs, hide_index=True, column_config={
                c: st.column_config.NumberColumn(format="%.3g") for c in probs.columns
                if c.startswith("P(")})
        ui.export_panel(fig_p, probs, "hesitation-graph-probabilities", key="exp_probs")
    st.caption(BASE_GRAPH_NOTE)
