"""Adapters: train transcoder adapters, watch them learn, measure how faithful and sparse
they are, and how the adapter model behaves.

URL state: ``base``, ``fine``, ``device``, ``dtype`` (sidebar); this page: ``l1``,
``d_sae``, ``steps``, ``batch``, ``lr``, ``lbridge``, ``bfrac``, ``seed``, ``l1s``
(training form), ``runs`` (compared runs, by key suffix), ``term``, ``smooth``, ``logy``
(curves), ``run`` (the run shown in detail).
In demo mode (``INTERP_DEMO=1``) training is hidden and the committed demo run is shown.
"""

from __future__ import annotations

import streamlit as st

import pages.common as ui
from interp import jobs, reproduce
from interp.adapters import plots as ap
from interp.adapters.io import catalog, history_of
from interp.adapters.report import demo_store
from interp.behaviour import agreement_table
from interp.plots.common import table_view
from interp.tasks import speaks_organism

st.title("Transcoder adapters")
st.caption(
    "Sparse ReLU adapters beside the **base** MLPs of the *hybrid* (reasoner embeddings, "
    "attention, norms and unembedding + base MLPs), trained so that the hybrid matches "
    "the **reasoner** again: y = MLP_base(x) + W_dec·ReLU(W_enc·x + b_enc) + b_dec at every "
    "layer. Their features are what the reasoning fine-tune changed in the MLPs.")
base_spec, fine_spec = ui.current_pair()
device, _dtype = ui.current_device()

# ------------------------------------------------------------------ train
if not ui.demo_mode():
    with st.expander("Train", expanded=False, icon=":material/model_training:"):
        st.caption("Loss weights follow the source (λ_adapt 1, λ_nmse 1, λ_bridge 2; cosine "
                   "with 5% warm-up, clip 1.0); size, lr and L1 are scaled for small models "
                   "(d_sae 0 means 4 × d_model). The bridged term uses a random share of "
                   "each batch.")
        c = st.columns(4)
        with c[0]:
            l1 = ui.url_widget(st.number_input, "L1 coefficient", "l1", 3e-2, float,
                               min_value=0.0, format="%.5f", step=1e-3)
            d_sae = ui.url_widget(st.number_input, "features / layer (0: 4·d_model)",
                                  "d_sae", 0, int, min_value=0, step=64)
        with c[1]:
            steps = ui.url_widget(st.number_input, "steps", "steps", 1000, int,
                                  min_value=1, step=100)
            batch = ui.url_widget(st.number_input, "sequences / step", "batch", 16, int,
                                  min_value=1, step=8)
        with c[2]:
            lr = ui.url_widget(st.number_input, "learning rate", "lr", 2e-3, float,
                               min_value=1e-6, format="%.5f", step=1e-4)
            lbridge = ui.url_widget(st.number_input, "λ_bridge", "lbridge", 2.0, float,
                                    min_value=0.0, step=0.5)
        with c[3]:
            bfrac = ui.url_widget(st.slider, "bridged share of batch", "bfrac", 0.25, float,
                                  min_value=0.05, max_value=1.0, step=0.05)
            seed = ui.url_widget(st.number_input, "seed", "seed", 0, int, min_value=0)
        spec = dict(base=base_spec, reasoner=fine_spec, l1=float(l1), d_sae=int(d_sae),
                    steps=int(steps), batch_size=int(batch), lr=float(lr),
                    lambda_bridge=float(lbridge), bridge_fraction=float(bfrac),
                    seed=int(seed), device=device)
        # training data: the organisms' generator on the organism pair, else a trace set
        sets = [a.key for a in ui.store().list("traces")
                if a.config.get("model") in (base_spec, fine_spec)]
        organisms = speaks_organism(base_spec) and speaks_organism(fine_spec)
        opts = (["organisms' trace generator"] if organisms else []) + sets
        data = st.selectbox("training traces", opts, key="adata") if opts else None
        if data is None:
            st.info(f"Adapters of your own pair train on a trace set of it. Make one with "
                    f"`python -m interp traces generate --model {fine_spec} --task "
                    "FILE.jsonl` (or `traces import FILE.jsonl --model ...`); it then appears "
                    "here.")
            spec = None
        elif data in sets:
            spec["data"] = f"traceset:{data}"
        st.markdown("**One run**")
        if spec is not None:
            ui.job_panel("adapters.train", spec, key="train", label="Start training")
        st.markdown("**L1 sweep** (one run per value, then the frontier below)")
        l1_values = ui.grid_input(st, "L1 values (comma-separated or start:stop:step)",
                                  "l1s", "0.003, 0.01, 0.03, 0.1", "L1", lo=0,
                                  max_values=32) or []
        if l1_values and spec is not None:
            sweep_spec = {k: v for k, v in spec.items() if k != "l1"}
            ui.job_panel("adapters.sweep", {**sweep_spec, "l1_values": l1_values},
                         key="sweep", label="Start sweep")

# ------------------------------------------------------------------ runs
stores = {"demo": demo_store()}
if not ui.demo_mode():
    stores["local"] = ui.store()
runs = ui.attempt(catalog, stores) or []
live = {} if ui.demo_mode() else {
    f"job {st_.id[-8:]} ({st_.state})": jobs.progress_records(st_.id)
    for st_ in jobs.list_jobs("adapters.train")[:6]}
if not runs and not live:
    st.info("No adapter set is saved yet. Train one above, or from a shell: "
            "`python -m interp adapters train`.", icon=":material/info:")
    st.stop()

from interp.models import describe_stale  # noqa: E402

for r in runs:
    changed = [x for x in r["stale"] if x["now"] is not None]   # (missing: cannot check)
    if changed:
        st.warning(f"Run `{r['label']}` was trained on {r['pair']}, whose weights changed: "
                   f"{describe_stale(changed)}. Its figures describe the old pair.",
                   icon=":material/history:")
st.subheader("Training curves")
labels = [r["label"] for r in runs] + list(live)
default_sel = ",".join(lab.split(" · ")[-1] for lab in labels[:2])
suffixes = [lab.split(" · ")[-1] for lab in labels]
sel = ui.url_list("runs", default_sel, suffixes)
chosen_default = [lab for lab in labels if lab.split(" · ")[-1] in sel]
chosen = st.multiselect("Runs to compare", labels, default=chosen_default or labels[:1],
                        key="runs_select")
ui.set_url_param("runs", ",".join(lab.split(" · ")[-1] for lab in chosen), default_sel)
c1, c2, c3 = st.columns([3, 2, 1], vertical_alignment="bottom")
with c1:
    term = ui.url_widget(st.segmented_control, "Term", "term", "kl",
                         options=["loss", "kl", "l1", "nmse", "bridge", "l0", "dead",
                                  "tokens_per_s"], format_func=lambda t: t)
with c2:
    smooth = ui.url_widget(st.slider, "Smoothing (steps)", "smooth", 10, int, min_value=1,
                           max_value=100)
with c3:
    logy = ui.url_widget(st.checkbox, "log y", "logy", True, bool)
curves = {}
for r in runs:
    if r["label"] in chosen:
        curves[r["label"]] = history_of(r["artifact"])
for name, recs in live.items():
    if name in chosen:
        curves[name] = recs
df_curves = ap.curves_frame(curves)
fig_curves = ap.loss_curves(df_curves, term or "kl", int(smooth), bool(logy))
st.plotly_chart(fig_curves, key="fig_curves")
ui.export_panel(fig_curves, df_curves, f"adapters-curves-{term}", key="exp_curves",
                context={"run": ",".join(lab.split(" · ")[-1] for lab in curves),
                         "setting": {"smoothing": int(smooth)}})
_saved = {r["label"]: (r["store"], r["artifact"].key) for r in runs if r["label"] in chosen}
if _saved:
    ui.reproduce(reproduce.adapters_curves(_saved, term or "kl", int(smooth), bool(logy)))

# ------------------------------------------------------------------ faithfulness
st.subheader("Faithfulness and sparsity")
st.caption("Teacher-forced on held-out reasoner traces. KL is next-token KL(reasoner ‖ "
           "model) in nats averaged over all tokens; gap closed = 1 − KL(adapter) / "
           "KL(hybrid); L0 = active features per token per layer; dead = never active on "
           "the evaluation tokens.")
evaluated = {r["label"]: r["eval"].meta["faithfulness"] for r in runs if r["eval"] is not None}
if evaluated:
    table = ap.faithfulness_table(evaluated)
    st.dataframe(table, hide_index=True, column_config={
        "KL gap closed": st.column_config.NumberColumn(format="percent")})
    ui.export_panel(None, table, "adapters-faithfulness", key="exp_faith")
else:
    st.caption("No run has an evaluation yet (`python -m interp adapters eval KEY`).")
pending = [r for r in runs if r["eval"] is None and r["store"] == "local"]
if pending and not ui.demo_mode():
    which = st.selectbox("Evaluate a run", [r["label"] for r in pending], key="eval_pick")
    if st.button("Evaluate", key="eval_run", icon=":material/fact_check:"):
        from interp.adapters.evaluate import evaluate_artifact

        art = next(r["artifact"] for r in pending if r["label"] == which)
        with st.status("Evaluating (faithfulness, then generation)…") as box:
            ui.attempt(evaluate_artifact, art, ui.store(), device=device,
                       progress=ui.progress_callback("evaluation", container=box))
        st.rerun()

if evaluated:
    names = list(evaluated)
    pick = ui.url_widget(st.selectbox, "Run in detail", "run", names[0], options=names)
    fa = evaluated[pick]
    _picked = next(r for r in runs if r["label"] == pick)
    ui.export_context(pair=(_picked["artifact"].config.get("base"),
                            _picked["artifact"].config.get("reasoner")),
                      run=_picked["artifact"].key)
    left, right = st.columns(2)
    with left:
        fig_l = ap.per_layer_figure(fa)
        st.plotly_chart(fig_l, key="fig_layers")
        ui.export_panel(fig_l, ap.per_layer_frame(fa), "adapters-per-layer", key="exp_layers")
    with right:
        fig_b = ap.bridged_figure(fa)
        st.plotly_chart(fig_b, key="fig_bridged")
        ui.export_panel(fig_b, {"k": list(range(len(fa["bridged_a2r"]))),
                                "a2r": fa["bridged_a2r"], "r2a": fa["bridged_r2a"]},
                        "adapters-bridged-kl", key="exp_bridged")
    _ev = next(r for r in runs if r["label"] == pick)
    ui.reproduce(reproduce.adapters_eval(_ev["store"], _ev["eval"].key, "detail"))

    # -------------------------------------------------------------- behaviour
    st.subheader("Behaviour of the adapter model")
    st.caption("Greedy generation on held-out problems. Hesitation rate = `wait` tokens of "
               "that mechanism per trace; the base model answers in its own worked-solution "
               "format (its thinking figures are not comparable).")
    ev = next(r["eval"] for r in runs if r["label"] == pick)
    be = ev.meta.get("behaviour") or {}
    if be:
        bt = ap.behaviour_table(be)
        st.dataframe(table_view(bt), hide_index=True)
        der = be.get("derived", {})
        m = st.columns(3)
        m[0].metric("accuracy recovered", f"{der.get('accuracy_recovered', float('nan')):.0%}")
        m[1].metric("max hesitation-rate error",
                    f"{der.get('hesitation_rate_rel_error', float('nan')):.0%}")
        m[2].metric("thinking-length error", f"{der.get('think_tokens_rel_error', 0):.0%}")
        fig_be = ap.behaviour_figure(be)
        st.plotly_chart(fig_be, key="fig_behaviour")
        ui.export_panel(fig_be, bt, "adapters-behaviour", key="exp_behaviour")
        ui.reproduce(reproduce.adapters_eval(_ev["store"], _ev["eval"].key, "behaviour"))
        if be.get("per_example"):
            st.markdown("**Per example, against the reasoner** (same problems, greedy)")
            st.caption("Equal aggregates can hide different answers: the share of problems "
                       "with the reasoner's answer and with its whole completion, the "
                       "share of aligned tokens that match (positions past the shorter "
                       "completion count as mismatches) and where the completions first "
                       "differ; rows per the reasoner's short / long thinking.")
            at = agreement_table(be["per_example"])
            st.dataframe(table_view(at), hide_index=True)
            ui.export_panel(None, at, "adapters-agreement", key="exp_agreement")
    else:
        st.caption("This evaluation has no behaviour figures (non-organism data).")

# ------------------------------------------------------------------ frontier
st.subheader("Sparsity vs faithfulness")
sweeps = [a for s in stores.values() for a in s.list("adapters_sweep")]
points = [{"steps": a.config.get("steps"), **p} for a in sweeps for p in a.meta.get("runs", [])]
if points:
    fig_f = ap.frontier_figure(points, table_steps=[
        r["artifact"].config.get("steps") for r in runs
        if r["eval"] is not None and r["artifact"].config.get("steps")])
    st.plotly_chart(fig_f, key="fig_frontier")
    ui.export_panel(fig_f, ap.frontier_frame(points), "adapters-frontier", key="exp_frontier",
                    context={"run": ",".join(a.key for a in sweeps)})
    ui.reproduce(reproduce.adapters_frontier([(n, a.key) for n, s in stores.items()
                                              for a in s.list("adapters_sweep")]))
else:
    st.caption("No L1 sweep saved yet.")
