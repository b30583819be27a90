"""Features: a map of every adapter (or transcoder) feature, search, feature cards with
examples, histogram, logit lens, regions, ground-truth AUROCs and ablation effects,
ablate/clamp in generation, editable labels, and the rankings against ground truth.

URL state: ``base``, ``fine``, ``device``, ``dtype`` (sidebar); this page: ``fset`` (the
collection, ``store:key``), ``feat`` (the feature, ``layer:index``), ``fcol`` / ``fcl``
(map colouring; the label of the AUROC colouring), ``fq`` (search), ``flab`` (label whose
ranking is shown), ``fgen`` / ``fclamp`` / ``fmax`` (generation prompt, clamp values as typed, e.g.
``0,2,4`` or ``0:8:2``, new tokens).
In demo mode (``INTERP_DEMO=1``) nothing is collected or saved; the committed collection is
shown and labels cannot be edited.
"""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

import pages.common as ui
from interp import reproduce
from interp.adapters.report import demo_store
from interp.export import table_bytes
from interp.features import featmap
from interp.features import plots as fp
from interp.features.card import card_data, card_html, examples_html, graphs_with_feature
from interp.features.labels import MAX_LABEL_CHARS, merged_labels, save_label
from interp.features.pipeline import label_display
from interp.features.probe import probe_table, probes_for
from interp.features.table import FeatureTable, describe_corpus, find_features, of_pair
from interp.grid import format_grid

st.title("Features")
st.caption(
    "Every feature of a set of transcoder adapters (what the reasoning fine-tune changed in "
    "the MLPs) or of plain per-layer transcoders, collected over a corpus: where it fires "
    "(prompt, think start, thinking, think end, answer), its strongest and typical examples, "
    "what its decoder direction writes (logit lens), what removing it changes, and, on the "
    "model organisms, how well it separates each planted mechanism (AUROC).")
device, _dtype = ui.current_device()

stores = {"demo": demo_store()}
if not ui.demo_mode():
    stores["local"] = ui.store()


# ------------------------------------------------------------------ cached loading
@st.cache_resource(max_entries=8, show_spinner=False)
def _table(root: str, key: str, stamp: float) -> FeatureTable:
    from interp.store import Store

    return FeatureTable(Store(root, read_only=True).load("features", key))


@st.cache_resource(max_entries=8, show_spinner=False)
def _map(root: str, key: str, stamp: float, table_root: str, table_key: str,
         table_stamp: float) -> pd.DataFrame:
    from interp.store import Store

    art = Store(root, read_only=True).load(featmap.KIND, key)
    tab = _table(table_root, table_key, table_stamp)
    return fp.map_frame(tab.summary, art.tensors["xy"].numpy())


# figures are cached per feature / view: building plotly figures costs more than
# everything else in a rerun (st.plotly_chart serialises them without changing them)
@st.cache_resource(max_entries=128, show_spinner=False)
def _card_figures(root: str, key: str, stamp: float, g: int) -> dict:
    tab = _table(root, key, stamp)
    fid = tab.fid(g)
    au = tab.aurocs(g)
    ab = tab.ablation_of(g)
    return {"histogram": fp.histogram_figure(tab.histogram(g), fid),
            "regions": fp.region_figure(tab.regions(g), fid),
            "logit-lens": fp.lens_figure(tab.lens(g), fid),
            "aurocs": fp.card_auroc_figure(au, fid) if len(au) else None,
            "ablation": fp.ablation_figure(ab, fid) if ab is not None else None}


@st.cache_resource(max_entries=64, show_spinner=False)
def _map_figure(map_root: str, map_key: str, map_stamp: float, root: str, key: str,
                stamp: float, color: str, selected: int | None, marked: tuple) -> object:
    mdf = _map(map_root, map_key, map_stamp, root, key, stamp)
    return fp.feature_map(mdf, color, selected=selected, marked=marked)


@st.cache_resource(max_entries=8, show_spinner=False)
def _best_figure(root: str, key: str, stamp: float) -> object:
    return fp.auroc_figure(_table(root, key, stamp).best_per_label())


@st.cache_resource(max_entries=2, show_spinner="Loading the models…")
def _source(spec_json: str, device: str):
    from interp.features.source import load_source

    return load_source(json.loads(spec_json), device)


def _stamp(art) -> float:
    return (art.path / "meta.json").stat().st_mtime


def _source_spec(tab: FeatureTable, store_name: str) -> dict:
    src = tab.meta.get("source", {})
    if src.get("kind") == "transcoders":
        return {"kind": "transcoders", "model": src.get("model"), "dirs": src.get("paths", [])}
    return {"kind": "adapters", "key": src.get("key"),
            "store": "demo" if store_name == "demo" else "main"}


# ------------------------------------------------------------------ collect
if ui.demo_mode():
    ui.demo_hidden("Collecting features", "python -m interp jobs submit features.collect "
                                          "--wait")
else:
    with st.expander("Collect features", expanded=False, icon=":material/dataset:"):
        from interp.adapters.io import catalog

        runs = ui.attempt(catalog, stores) or []
        kind = st.segmented_control("features of", ["adapters", "transcoders"],
                                    default="adapters", key="fc_kind")
        source = None
        if kind == "transcoders":
            c = st.columns(2)
            model = c[0].text_input("model they read (spec)", key="fc_model",
                                    placeholder="organism:reasoner · /path/to/ckpt")
            folder = c[1].text_input("folder of SAELens transcoder folders", key="fc_dir",
                                     placeholder="/path/to/transcoders")
            if model.strip() and folder.strip():
                source = {"kind": "transcoders", "model": model.strip(),
                          "dir": folder.strip()}
        elif runs:
            pick = st.selectbox("adapter set", [r["label"] for r in runs], key="fc_run")
            r = next(r for r in runs if r["label"] == pick)
            source = {"kind": "adapters", "key": r["artifact"].key,
                      "store": "demo" if r["store"] == "demo" else "main"}
        else:
            st.caption("No adapter set saved yet (Adapters page).")
        c = st.columns(4)
        ckind = c[0].selectbox("corpus", ["organism", "text", "jsonl"], key="fc_corpus",
                               help="organism traces carry ground-truth labels; a text file "
                                    "has one sequence per line; a JSONL file has 'prompt' "
                                    "and optional 'trace' / 'answer' fields")
        if ckind == "organism":
            n = c[1].number_input("traces", 64, 100_000, 2000, 64, key="fc_n")
            seed = c[2].number_input("seed", 0, 10_000, 0, key="fc_seed")
            corpus = {"kind": "organism", "n": int(n), "seed": int(seed)}
        else:
            path = c[1].text_input("file path", key="fc_path")
            mo = c[2].text_input("think open / close", "<think> </think>", key="fc_mk")
            parts = mo.split()
            corpus = {"kind": ckind, "path": path.strip(),
                      "markers": {"think_open": parts[0] if parts else None,
                                  "think_close": parts[1] if len(parts) > 1 else None}}
        hes = c[3].text_input("hesitation words", "wait", key="fc_hes",
                              help="comma-separated; the hesitation score looks at the "
                                   "tokens just before them")
        spec = {"source": source, "corpus": corpus, "device": device,
                "config": {"hesitation": [h.strip() for h in hes.split(",") if h.strip()]}}
        if source is None:
            st.info("Choose a feature source above.")
        elif ckind != "organism" and not corpus.get("path"):
            st.info("Enter the corpus file's path.")
        else:
            ui.job_panel("features.collect", spec, key="fjob", label="Collect")

# ------------------------------------------------------------------ which collection
every = ui.attempt(find_features, stores) or []
_base, _fine = ui.current_pair()
found = [(n, a) for n, a in every if of_pair(a, _base, _fine)]   # the sidebar pair's
if not found:
    other = (f" {len(every)} collections of other pairs are saved: pick their pair in the "
             "sidebar." if every else "")
    st.info(f"No feature collection of the sidebar pair ({ui.short_name(_base)} → "
            f"{ui.short_name(_fine)}) is saved yet. Collect one above, or from a shell: "
            f"`python -m interp jobs submit features.collect --wait`.{other}",
            icon=":material/info:")
    st.stop()
options = [f"{name}:{art.key}" for name, art in found]
labels_of = {f"{name}:{art.key}": f"{name} · {describe_corpus(art.config.get('corpus', {}))} · "
             f"{art.config['source']['kind']} {art.config['source']['key'][-8:]} · "
             f"{art.key[-8:]}" for name, art in found}
choice = ui.url_widget(st.selectbox, "Feature collection", "fset", options[0], options=options,
                       format_func=lambda o: labels_of.get(o, o))
store_name, key = choice.split(":", 1)
store = stores[store_name]
art = next(a for n, a in found if f"{n}:{a.key}" == choice)
ui.export_context(run=art.key)
tab = ui.attempt(_table, str(store.root), key, _stamp(art))
if tab is None:
    st.stop()
label_stores = list(stores.values())
labels = merged_labels(tab.source_key, label_stores)
m = tab.meta
st.caption(f"{m['n_features']:,} features ({len(tab.layers)} layers × "
           f"{next(iter(tab.d_sae.values())):,}) · {m['n_sequences']:,} sequences, "
           f"{m['n_tokens']:,} tokens · {m['alive_fraction']:.0%} of the features fire at least "
           "once")

# ------------------------------------------------------------------ selection events
# The feature shown is st.session_state["feat"] (the text box below the map, mirrored to
# the URL). Map, search and card are one fragment: colouring, searching, selecting and
# opening a feature rerun only it. A feature opened from the map, the search or the side
# tables is written to "feat" before the text box exists in that rerun; the ground-truth
# tables below the fragment rerun the page and are read here.
if "feat" not in st.session_state:
    st.session_state["feat"] = ui.url_param("feat", "")


def _taken(sig_key: str, gs: list[int]) -> int | None:
    """The feature a new single-item selection opens (None: no new single selection)."""
    sig = ",".join(map(str, gs))
    if st.session_state.get(sig_key) != sig:
        st.session_state[sig_key] = sig
        if len(gs) == 1:
            return gs[0]
    return None


def _points(event) -> list[int]:
    out = []
    for p in (event or {}).get("selection", {}).get("points", []):
        cd = p.get("customdata")
        cd = cd[0] if isinstance(cd, list) else cd
        if cd is not None:
            out.append(int(cd))
    return sorted(set(out))


def _rows(event, frame_key: str) -> list[int]:
    rows = (event or {}).get("selection", {}).get("rows", [])
    frame = st.session_state.get(frame_key)
    if frame is None:
        return []
    return [int(frame.iloc[r]["g"]) for r in rows if r < len(frame)]  # the table may shrink


for tkey in ("fbest", "frank"):  # tables outside the fragment
    hit = _taken(f"_{tkey}_sig", _rows(st.session_state.get(tkey), f"_{tkey}_frame"))
    if hit is not None:
        st.session_state["feat"] = tab.fid(hit)
map_art = featmap.find_map(tab.source_key, label_stores)


def _open(g_new: int) -> None:
    """Open another feature (in the fragment's rerun, before the card's text box)."""
    st.session_state["feat"] = tab.fid(g_new)


# ------------------------------------------------------------------ map + search
def map_section() -> None:
    map_sel = _points(st.session_state.get("fmap"))
    for sig, gs in (("_fmap_sig", map_sel),
                    ("_fhes_sig", _rows(st.session_state.get("fhes"), "_fhes_frame")),
                    ("_fhits_sig", _rows(st.session_state.get("fhits"), "_fhits_frame"))):
        hit = _taken(sig, gs)
        if hit is not None:
            _open(hit)
    left, right = st.columns([3, 2])
    with left:
        color = ui.url_widget(st.segmented_control, "Colour by", "fcol", "layer",
                              options=list(fp.COLOR_BY) + (["AUROC"] if tab.label_names
                                                           else []))
        label_names = [label_display(n) for n in tab.label_names]
        lab_c = ui.url_widget(st.selectbox, "AUROC against", "fcl", label_names[0],
                              options=label_names) if color == "AUROC" else None
    with right:
        query = ui.url_widget(st.text_input, "Search: feature id (2:17) or a token", "fq",
                              "", placeholder="2:17 · wait")
    hits: list[int] = tab.search(query) if query.strip() else []
    if st.session_state.get("_fq_last") != query:  # a new search (also after clearing)
        st.session_state["_fq_last"] = query
        if len(hits) == 1 and tab.parse(query) is not None:
            _open(hits[0])
    coloring = f"auroc:{lab_c}" if color == "AUROC" else (color or "layer")
    g = tab.parse(st.session_state.get("feat", ""))   # after any opening above
    with left:
        if map_art is None:
            st.info("No feature map is saved for this source yet.", icon=":material/map:")
            if not ui.demo_mode():
                method = st.segmented_control("method", ["umap", "pca"], default="umap",
                                              key="fmap_method")
                if st.button("Compute the map", key="fmap_go", icon=":material/scatter_plot:",
                             help="UMAP of the decoder directions (cosine); its first run in "
                                  "a process compiles numba code (about half a minute)"):
                    with st.spinner("Placing the features…"):
                        src = ui.attempt(_source, json.dumps(_source_spec(tab, store_name)),
                                         device)
                        if src is not None:
                            ui.attempt(featmap.compute_map, src, ui.store(), method or "umap")
                    st.rerun(scope="app")
        else:
            map_args = (str(map_art.path.parent.parent), map_art.key, _stamp(map_art),
                        str(store.root), key, _stamp(art))
            mdf = _map(*map_args)
            fig_map = _map_figure(*map_args, coloring, g, tuple(hits))
            st.plotly_chart(fig_map, key="fmap", on_select="rerun",
                            selection_mode=("points", "box", "lasso"))
            n_out = tab.F - len(mdf)
            st.caption(f"{map_art.config['method'].upper()} of the decoder directions "
                       "(cosine), computed once per feature set. Click a point to open its "
                       "card; box or lasso (toolbar) to compare a group."
                       + (f" {n_out} feature{'s' if n_out != 1 else ''} without a decoder "
                          f"direction {'are' if n_out != 1 else 'is'} not shown."
                          if n_out else ""))
            ui.export_panel(fig_map, mdf.drop(columns=["g"]), "features-map", key="exp_map")
    with right:
        _side_panel(map_sel, query, hits)


def _side_panel(map_sel: list[int], query: str, hits: list[int]) -> None:
    """A selected group, the search hits, or the strongest hesitation features."""
    if len(map_sel) > 1:
        comp = tab.summary[tab.summary["g"].isin(map_sel)]
        st.markdown(f"**{len(map_sel)} selected features**")
        by_layer = ", ".join(f"{n} in layer {k}" for k, n in
                             comp["layer"].value_counts().sort_index().items())
        by_region = ", ".join(f"{n} {k}" for k, n in comp["region"].value_counts().items())
        st.caption(f"{by_layer}; main region: {by_region}; median density "
                   f"{comp['density'].median():.2e}; mean hesitation score "
                   f"{comp['hesitation'].mean():.3f}")
        st.dataframe(comp.drop(columns=["g"]), hide_index=True, height=300,
                     column_config={"density": st.column_config.NumberColumn(format="%.2e")})
        ui.export_panel(None, comp, "features-selection", key="exp_sel")
    if query.strip():
        if hits:
            hit_df = tab.summary[tab.summary["g"].isin(hits)].set_index("g").loc[hits]
            hit_df = hit_df.reset_index()[["id", "g", "top_token", "density", "max", "region"]]
            st.session_state["_fhits_frame"] = hit_df
            st.markdown(f"**{len(hits)} match{'es' if len(hits) != 1 else ''}** "
                        "(select a row to open it)")
            st.dataframe(hit_df.drop(columns=["g"]), hide_index=True, key="fhits",
                         on_select="rerun", selection_mode="single-row", height=250)
        else:
            st.caption(f"Nothing matches {query!r}.")
    if len(map_sel) <= 1 and not query.strip():
        st.markdown("**Strongest hesitation features**")
        hes_df = tab.hesitation_ranking(10)
        st.session_state["_fhes_frame"] = hes_df
        st.dataframe(hes_df[["id", "score", "precision", "coverage", "top_token"]],
                     hide_index=True, key="fhes", on_select="rerun",
                     selection_mode="single-row", height=390,
                     column_config={k: st.column_config.NumberColumn(format="%.3f")
                                    for k in ("score", "precision", "coverage")})
        ui.export_panel(None, hes_df, "features-hesitation-ranking", key="exp_hes")
        st.caption("Hesitation score = precision × coverage × breadth: the share of the "
                   f"feature's activation in the {m['hesitation']['window']} tokens before "
                   f"{', '.join(repr(w) for w in m['hesitation']['words'])}, times the share "
                   "of those hesitations it fires before.")


# ------------------------------------------------------------------ the card
def card_section() -> None:
    """The open feature's card (after the map, in the same fragment: opening a
    feature from the map, the search or the side tables reruns only the fragment)."""
    st.text_input("Feature (layer:index)", key="feat", help="also set by the map, the search "
                  "and the tables")
    ui.set_url_param("feat", st.session_state.get("feat") or None)
    g = tab.parse(st.session_state.get("feat", ""))
    if g is None:
        if st.session_state.get("feat"):
            st.error(f"{st.session_state['feat']!r} is not a feature of this set "
                     f"(layers {tab.layers}, 0..{next(iter(tab.d_sae.values())) - 1}).")
        else:
            st.info("Open a feature: click it on the map, pick it in a table, or type its id.")
        return
    fid = tab.fid(g)
    layer, index = tab.lid(g)
    # the generation inputs default to this feature's prompt and maximum: forget the
    # previous feature's values when another one is opened
    last = st.session_state.get("_card_feat")
    if last is not None and last != f"{tab.key}:{fid}":
        for k in ("fgen", "fclamp"):
            st.session_state.pop(k, None)
            if k in st.query_params:
                del st.query_params[k]
    st.session_state["_card_feat"] = f"{tab.key}:{fid}"
    stats = tab.stats(g)
    label = labels.get((layer, index), "")
    st.subheader(f"Feature {fid}" + (f" · {label}" if label else ""))
    mc = st.columns(6)
    mc[0].metric("density", f"{stats['density']:.2%}")
    mc[1].metric("max activation", f"{stats['max']:.3g}")
    mc[2].metric("mean when active", f"{stats['mean_when_active']:.3g}")
    mc[3].metric("hesitation score", f"{stats['hesitation_score']:.3f}")
    mc[4].metric("main region", stats["main_region"] or "—")
    mc[5].metric("decoder norm", f"{stats['decoder_norm']:.3g}")
    with st.container(horizontal=True, vertical_alignment="bottom"):
        if ui.demo_mode() or stores.get("local") is None:
            st.caption(":material/lock: Labels cannot be saved in the hosted demo (the "
                       "artifact store is read-only).")
        else:
            new = st.text_input("Label", value=label, key=f"flabel_{tab.source_key}_{fid}",
                                max_chars=MAX_LABEL_CHARS,
                                help="a short description; saved with the feature set and "
                                     "exported with cards and graph JSON")
            if st.button("Save label", key="flabel_save", icon=":material/label:"):
                if ui.attempt(save_label, tab.source_key, layer, index, new, ui.store()) \
                        is None:
                    st.rerun()
    if stats["active_tokens"] == 0:
        st.warning("This feature never fired on the corpus (a dead feature).")

    ex = tab.examples(g)
    st.markdown("**Examples** (orange: the feature's activation on each token, relative to "
                "its maximum; outlined: the example's position)")
    st.html(examples_html(ex, stats["max"]))

    figs = _card_figures(str(store.root), key, _stamp(art), g)
    hist, reg, lens, au = tab.histogram(g), tab.regions(g), tab.lens(g), tab.aurocs(g)
    fig_h, fig_r, fig_l = figs["histogram"], figs["regions"], figs["logit-lens"]
    ab = tab.ablation_of(g)
    cols = st.columns(2)
    for col, fig, data, name, k in ((cols[0], fig_h, hist, "histogram", "exp_hist"),
                                    (cols[1], fig_r, reg, "regions", "exp_reg")):
        with col:
            st.plotly_chart(fig, key=f"fig_{name}")
            ui.export_panel(fig, data, f"feature-{fid.replace(':', '_')}-{name}", key=k)
    cols = st.columns(2)
    with cols[0]:
        st.plotly_chart(fig_l, key="fig_logit-lens")
        ui.export_panel(fig_l, lens, f"feature-{fid.replace(':', '_')}-logit-lens",
                        key="exp_lens")
    if len(au):
        with cols[1]:
            fig_a = figs["aurocs"]
            st.plotly_chart(fig_a, key="fig_card_auroc")
            ui.export_panel(fig_a, au, f"feature-{fid.replace(':', '_')}-aurocs", key="exp_au")
    ui.reproduce(reproduce.feature_card(str(store.root), key, fid))
    with st.columns(2)[0]:
        if ab is None and stats["active_tokens"] > 0:
            if st.button("Compute the ablation effect", key="fabl", icon=":material/block:"):
                from interp.features.scores import ablation_effects

                src = ui.attempt(_source, json.dumps(_source_spec(tab, store_name)), device)
                if src is not None:
                    seqs = [tab.sequence(int(e["seq"]))[0].tolist()
                            for e in ex if e["kind"] == "top"][:8]
                    res = ui.attempt_work("a feature's ablation effect", ablation_effects,
                                          src, [(layer, index)], lambda _l, _i: seqs,
                                          pad_id=src.tokenizer.pad_token_id or 0)
                    if res:
                        tok = tab.token
                        st.session_state[f"_abl_{tab.key}_{g}"] = {
                            **res[0], "up": [[tok(t), v] for t, v in res[0]["up"]],
                            "down": [[tok(t), v] for t, v in res[0]["down"]]}
            ab = st.session_state.get(f"_abl_{tab.key}_{g}")
        if ab is not None:
            fig_ab = figs["ablation"] or fp.ablation_figure(ab, fid)
            st.plotly_chart(fig_ab, key="fig_abl")
            st.caption(f"Feature set to 0 at every position of its {ab['n_sequences']} top "
                       f"sequences; KL(p ‖ p_ablated) averaged over the {ab['n_positions']} "
                       "positions where it was active.")
            ui.export_panel(fig_ab, {"token": [t for t, _ in ab["up"] + ab["down"]],
                                     "change": [v for _, v in ab["up"] + ab["down"]]},
                            f"feature-{fid.replace(':', '_')}-ablation", key="exp_abl")

    graphs = graphs_with_feature(tab.source_key, layer, index, label_stores)
    if graphs:
        st.markdown("**In hesitation graphs**")
        for gr in graphs:
            st.markdown(f"- [{gr['graph']}](./hesitation?graph={gr['graph']}&pin={gr['pin']}) "
                        f"· node `{gr['pin']}`")

    # ---- ablate / clamp in generation
    with st.expander("Ablate or clamp it in generation", icon=":material/tune:"):
        top = next((e for e in ex if e["kind"] == "top"), None)
        default_prompt = ""
        if top is not None:
            ids, regs, _ = tab.sequence(top["seq"])
            cut = [i for i, r in enumerate(regs) if r <= 1]  # prompt + think start
            default_prompt = tab.text(ids[:cut[-1] + 1]) if cut else ""
        c = st.columns([4, 1, 1])
        prompt = ui.url_widget(c[0].text_input, "prompt", "fgen", default_prompt,
                               max_chars=ui.max_prompt_chars())
        clamps = ui.grid_input(c[1], "clamp values", "fclamp",
                               format_grid([round(float(stats["max"]), 3)]), "clamp value",
                               max_values=16)
        max_new = ui.url_widget(c[2].number_input, "new tokens", "fmax",
                                ui.max_new_tokens(48), int, min_value=1,
                                max_value=ui.max_new_tokens(256))
        gen_key = f"_gen_{tab.key}_{g}_{format_grid(clamps or [])}"
        from interp.features.steer import clamp_cost, clamp_generations

        src_json = json.dumps(_source_spec(tab, store_name))
        # the models load on the first generation; the time estimate follows from then on
        src = (ui.attempt(_source, src_json, device)
               if st.session_state.get(f"_fsrc_{src_json}") else None)
        allowed = clamps is not None and ui.run_cost(
            clamp_cost(prompt, clamps, int(max_new), src.tokenizer if src else None),
            model=src.model if src else None)
        if allowed and st.button("Generate side by side", key="fgen_go",
                                 icon=":material/play_arrow:"):
            src = ui.attempt(_source, src_json, device)
            if src is not None:
                st.session_state[f"_fsrc_{src_json}"] = True
                st.session_state[gen_key] = ui.attempt_work(
                    "generations", clamp_generations, src, prompt, layer, index,
                    clamps, int(max_new))
        res = st.session_state.get(gen_key)
        if res:
            cc = st.columns(min(len(res), 4))
            for i, (name, r) in enumerate(res.items()):
                with cc[i % len(cc)]:
                    st.markdown(f"**{name}**")
                    st.code(r["text"], language=None, wrap_lines=True)
                    st.caption(f"{r['n_tokens']} tokens · "
                               f"{r['hesitations']} hesitation word(s)")
            ui.export_panel(None, [{"run": k, **v} for k, v in res.items()],
                            f"feature-{fid.replace(':', '_')}-generations", key="exp_gen")
        if clamps is not None and prompt.strip():
            ui.reproduce(reproduce.feature_clamps(_source_spec(tab, store_name), prompt,
                                                  layer, index, clamps, int(max_new),
                                                  device))

    # ---- card exports
    stem = f"feature-{fid.replace(':', '_')}"

    def _card() -> dict:
        c = card_data(tab, g, label, graphs)
        if c["ablation"] is None and ab is not None:
            c["ablation"] = ab  # computed on this page
        return c

    def _examples_csv() -> bytes:
        return table_bytes(pd.DataFrame([{k: v for k, v in e.items() if k != "token_ids"}
                                         for e in ex]), "csv")

    with st.container(horizontal=True, gap="small", key="card_exports"):
        st.caption(":material/download: This card", width="content")
        for text, data, fname, mime, k in (
                ("Standalone HTML", lambda: card_html(_card()).encode(), f"{stem}.html",
                 "text/html", "card_html"),
                ("JSON", lambda: json.dumps(_card(), indent=1).encode(), f"{stem}.json",
                 "application/json", "card_json"),
                ("Examples CSV", _examples_csv, f"{stem}-examples.csv", "text/csv",
                 "card_ex_csv")):
            st.download_button(text, data=data, file_name=fname, mime=mime, on_click="ignore",
                               type="tertiary", key=k)


@st.fragment
def explorer() -> None:
    """Map, search and card: one fragment, so that opening a feature is one rerun of
    it (the ground-truth tables below are not re-sent)."""
    map_section()
    card_section()


explorer()

# ------------------------------------------------------------------ ground truth
if tab.label_names:
    st.subheader("Ground truth: the best feature for each planted label")
    st.caption("Each label's feature is chosen on the even-numbered sequences (highest AUROC) "
               "and scored on the odd-numbered ones (report AUROC). Positives and negatives: "
               "error/verify triggers vs clean decision points, carry-out at each column's "
               "'=', wrong vs right result digits (all, then carry-out and units digits apart), "
               "short vs long thinking per sequence "
               "(maximum over the prompt and <think>).")
    best = tab.best_per_label()
    st.session_state["_fbest_frame"] = best
    pct = st.column_config.NumberColumn
    st.dataframe(best.drop(columns=["g"]), hide_index=True, key="fbest", on_select="rerun",
                 selection_mode="single-row",
                 column_config={"choose_auroc": pct("choose AUROC", format="%.3f"),
                                "report_auroc": pct("report AUROC", format="%.3f"),
                                "fires_on_positives": pct("fires on positives",
                                                          format="percent"),
                                "fires_on_negatives": pct("fires on negatives",
                                                          format="percent")})
    fig_b = _best_figure(str(store.root), key, _stamp(art))
    st.plotly_chart(fig_b, key="fig_best")
    ui.export_panel(fig_b, best, "features-best-per-label", key="exp_best")
    _probes = probes_for(store, tab.meta.get("source") or {})
    if _probes is not None:
        ptab = probe_table(best, _probes.meta, tab.label_names)
        st.markdown("**Does the model represent the label?** A logistic-regression read-out "
                    "of the reasoner's activations at each layer (fitted on the even "
                    "sequences, scored on the odd ones). A feature's activation is a "
                    "function of one linear read-out of its layer's MLP input, so the last "
                    "column is about the most any single feature of that layer can reach; a "
                    "label readable only after a layer's MLP is computed by it, "
                    "non-linearly, and need not sit in one of its features.")
        st.dataframe(ptab, hide_index=True, column_config={
            c: st.column_config.NumberColumn(format="%.3f") for c in ptab.columns
            if "AUROC" in c or "input" in c})
        ui.export_panel(None, ptab, "features-label-probes", key="exp_probe")
    names = [label_display(n) for n in tab.label_names]
    lab = ui.url_widget(st.segmented_control, "Ranking for", "flab", names[0], options=names)
    full = next((n for n in tab.label_names if label_display(n) == lab), tab.label_names[0])
    rank = tab.label_ranking(full)
    st.session_state["_frank_frame"] = rank
    st.dataframe(rank.drop(columns=["g"]), hide_index=True, key="frank", on_select="rerun",
                 selection_mode="single-row",
                 column_config={"select_auroc": st.column_config.NumberColumn(
                     "choose AUROC", format="%.3f"), "eval_auroc": st.column_config.NumberColumn(
                     "report AUROC", format="%.3f")})
    ui.export_panel(None, rank, f"features-ranking-{lab}", key="exp_rank")

