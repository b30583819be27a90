"""Hesitation features: the cross-prompt hesitation study of an adapter set.

Which adapter features make the reasoner say ``wait`` across many prompts: the features
ranked by their attribution to ``wait`` over labelled triggers, grouped into functional
clusters without labels (and scored against the planted mechanisms), and tested: a set
ablated (necessity: P(``wait``) at triggers, generated hesitations, accuracy, split per
problem into corrections lost and collateral change) and clamped on at clean positions
(sufficiency). Sets are chosen on a validation split and reported on an evaluation
split. The study runs as a job (``python -m interp attribution study``).

URL state: ``study`` (``store:key``), ``rk`` (ranking shown), ``rn`` (rows), ``sel``
(selection paths shown).
"""

from __future__ import annotations

import streamlit as st

import pages.common as ui
from interp import reproduce
from interp.adapters.io import catalog, runs_of_pair
from interp.adapters.report import demo_store
from interp.attribution import study_view as V
from interp.attribution.study import KIND

RANKINGS = {"logit_diff": "wait minus the token it displaces", "logit": "wait logit"}
PCT = st.column_config.NumberColumn(format="percent")
NUM = st.column_config.NumberColumn(format="%.3g")


@st.cache_data(show_spinner=False)
def _studies(roots: tuple[tuple[str, str], ...]) -> list[tuple[str, str, str]]:
    """(store name, key, adapters key) of every saved study, newest first per store."""
    from interp.store import Store

    out = []
    for name, root in roots:
        for a in Store(root, read_only=True).list(KIND):
            out.append((name, a.key, a.meta.get("adapters_key", "?")))
    return out


st.title("Hesitation features")
st.caption(
    "Which adapter features make the reasoner hesitate across many prompts: ranked by "
    "their attribution to **wait** over labelled triggers, grouped into clusters by their "
    "effect profiles (no labels used), then tested: ablating a set (is it necessary?) and "
    "clamping it on where the model does not hesitate (is it sufficient?). Every set is "
    "chosen on a validation split of problems and reported on a separate evaluation split. "
    "One prompt's graph: the [Hesitation graph](hesitation) page.")
demo = ui.demo_mode()
stores = {"demo": demo_store()}
if not demo:
    stores["local"] = ui.store()
base_spec, fine_spec = ui.current_pair()
runs = runs_of_pair(ui.attempt(catalog, stores) or [], base_spec, fine_spec)
pair_keys = {r["artifact"].key for r in runs}
every_study = ui.attempt(_studies, tuple((n, str(s.root)) for n, s in stores.items())) or []
studies = [s for s in every_study if s[2] in pair_keys]   # of the sidebar pair's adapters
if every_study and not studies:
    st.info(f"No hesitation study of the sidebar pair ({ui.short_name(base_spec)} → "
            f"{ui.short_name(fine_spec)}); {len(every_study)} of other pairs are saved: pick "
            "their pair in the sidebar.", icon=":material/info:")
elif not studies:
    st.info("No hesitation study is saved yet: run one below or with `python -m interp "
            "attribution study`.", icon=":material/info:")
labels = {f"{n}:{k}": f"{k} · adapters {a} ({n})" for n, k, a in studies}
pick = ui.run_picker(st.selectbox, "Study", "study", list(labels),
                     next(iter(labels), ""), format_func=labels.get) if labels else None

if not demo:
    with st.expander("Run a new study", icon=":material/play_arrow:", expanded=not studies):
        keys = [r["artifact"].key for r in runs]
        if keys:
            c1, c2, c3 = st.columns(3)
            akey = c1.selectbox("Adapter set", keys, key="st_ad")
            nv = c2.number_input("validation traces", 6, 1000, 120, key="st_nv")
            ne = c3.number_input("evaluation generations", 6, 2000, 300, key="st_ne")
            st.caption("About half an hour on a 2-core CPU with the defaults: one graph "
                       "per validation trace and target, a forward pass per live feature, "
                       "forward selection, then generations for every candidate set.")
            ui.job_panel("attribution.study", {"adapters_key": akey, "n_validation": int(nv),
                                               "n_evaluation": int(nv),
                                               "n_gen_evaluation": int(ne)},
                         key="study_job", label="Run the study")
        else:
            st.caption("Train an adapter set of this pair first (Adapters page).")
if pick is None:
    st.stop()

sname, skey = pick.split(":", 1)
art = ui.attempt(stores[sname].load, KIND, skey)
if art is None:
    st.stop()
_models = art.provenance.get("models", {})
ui.export_context(run=skey, pair=(_models.get("base", {}).get("id"),
                                  _models.get("reasoner", {}).get("id")))
f = art.meta["figures"]

# ------------------------------------------------------------------ necessity
st.subheader("Necessity and sufficiency")
head = V.headline_table(art)
_shown = V.headline_display(head)
st.dataframe(_shown, height=35 * (len(_shown) + 1) + 3,
             column_config={"_index": st.column_config.Column(width="medium")})
ui.export_panel(None, head, "hesitation-study-headline", key="exp_head")
ui.reproduce(reproduce.hesitation_study(sname, skey, ui.url_param("rk", "logit_diff"),
                                        ui.url_param("rn", 30, int)))
fig_n = V.necessity_figure(art)
st.plotly_chart(fig_n, key="hs_necessity")
ui.export_panel(fig_n, head, "hesitation-study-necessity", key="exp_nec")
gen = f["evaluation_generation"]
st.caption(
    f"Evaluation split: {gen['n']} greedy generations per setting, "
    f"{f['evaluation_teacher_forced']['n_triggers']} labelled triggers. In these organisms "
    "an error hesitation is followed by the correction of a wrong column result, so removing "
    "error hesitations leaves those results wrong. Problems are split by the unablated "
    "generation: *corrections lost* is the share of problems where it wrote (and corrected) "
    "a wrong column result that were right and are now wrong with a wrong result left; "
    "*collateral change* is the paired accuracy change over the problems where it wrote "
    "none, i.e. everything else the ablation did, new arithmetic errors included "
    "(*new errors*: the share of them that now keep a wrong column result). Verification "
    "hesitations are redundant re-checks.")
cl = f["clamp"]
st.markdown(
    f"**Sufficiency:** clamping the chosen set on (to its mean activation at validation "
    f"triggers) at {cl['n_points']} clean decision points, one at a time, makes **wait** the "
    f"top token at **{cl['clamp_induced_rate']:.1%}** of them (P(wait) "
    f"{cl['p_wait_clean_before']:.3f} → {cl['p_wait_clean_after']:.3f}).")
path = V.selection_path(art)
if len(path):
    ch = f["chosen"]
    kinds = list(dict.fromkeys(path["selection"]))
    shown = ui.url_widget(st.segmented_control, "Selections shown", "sel", "all",
                          options=["all", *kinds]) or "all"
    part = path if shown == "all" else path[path["selection"] == shown]
    fig_s = V.selection_figure(part, ch["k"] if ch.get("ranking") == "ablation" else None)
    st.plotly_chart(fig_s, key="hs_path")
    st.caption("Forward selection on validation triggers: each step ablates the feature that "
               "most lowers the P(wait) left (mean over mechanisms; dotted: verification "
               "triggers alone; dashed: added to the ranking's top features) plus a price × "
               "the set's collateral KL (nats, next-token "
               "distributions at every other position), so that features whose removal "
               "disturbs everything are not picked for their effect on wait; one path per "
               "price (marker).")
    ui.export_panel(fig_s, path, "hesitation-study-selection", key="exp_path")

# ------------------------------------------------------------------ ranking and clusters
st.subheader("Ranking and clusters")
rk = ui.url_widget(st.radio, "Ranked by attribution to", "rk", "logit_diff",
                   options=list(RANKINGS), format_func=RANKINGS.get, horizontal=True)
rn = ui.url_widget(st.slider, "Rows", "rn", 30, int, min_value=10, max_value=200, step=10)
table = V.ranking_table(art, rk, int(rn))
st.dataframe(table, hide_index=True, column_config={
    "card": st.column_config.LinkColumn("card", display_text="open"),
    "share active": PCT, **{c: NUM for c in table.columns if "effect" in c or "drop" in c}})
ui.export_panel(None, table, f"hesitation-study-ranking-{rk}", key="exp_rank")
single = V.single_ablation_table(art)
if len(single):
    st.caption("Measured necessity of each feature alone (zeroed everywhere; validation "
               "triggers): the graph ranking is linear with attention frozen, this is not.")
    st.dataframe(single, hide_index=True, column_config={
        "card": st.column_config.LinkColumn("card", display_text="open"),
        **{c: NUM for c in single.columns if "drop" in c or "KL" in c}})
    ui.export_panel(None, single, "hesitation-study-single-ablation", key="exp_single")
clusters = V.clusters_table(art)
st.markdown(f"**Functional clusters** of the top {len(art.meta['clusters']['features'])} "
            f"features (k = {f['clusters_k']} by silhouette, {f['cluster_silhouette']:.2f}); "
            f"purity against the planted mechanisms **{f['cluster_purity']:.2f}**, against "
            f"the error's cause {f['error_cause_purity']:.2f}.")
st.dataframe(clusters, hide_index=True, column_config={"share of majority": PCT})
ui.export_panel(None, clusters, "hesitation-study-clusters", key="exp_clusters")

# ------------------------------------------------------------------ candidates
with st.expander("Every candidate set (validation split)"):
    cands = V.candidates_table(art)
    st.dataframe(cands, hide_index=True, column_config={
        c: PCT for c in ("P(wait) drop", "hesitation drop", "corrections lost",
                         "new errors", "thinking length change")})
    st.caption("The evaluated set has the largest validation hesitation drop among sets "
               "that keep thinking length within "
               f"{art.config.get('max_length_change', 0.25):.0%} and lose at most "
               f"{art.config.get('max_collateral_loss', 2.0):g} points of collateral "
               "accuracy.")
    ui.export_panel(None, cands, "hesitation-study-candidates", key="exp_cands")
