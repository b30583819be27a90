"""Adapters: train transcoder adapters, watch them learn, measure how faithful and sparse
they are, and how the adapter model behaves.

URL state: ``base``, ``fine``, ``device``, ``dtype`` (sidebar); this page: ``l1``,
``d_sae``, ``steps``, ``batch``, ``lr``, ``lbridge``, ``bfrac``, ``seed``, ``l1s``
(training form), ``runs`` (compared runs, by key suffix), ``term``, ``smooth``, ``logy``
(curves), ``run`` (the run shown in detail). Only runs of the sidebar pair are listed;
``runs`` and ``run`` are always in the URL, so a link keeps its runs when newer ones
are saved. Training and evaluation run as jobs; a finished training job's run is
selected. In demo mode (``INTERP_DEMO=1``) training and evaluation are hidden (the page
says so) and the committed demo run is shown.
"""

from __future__ import annotations

import streamlit as st

import pages.common as ui
from interp import jobs, reproduce
from interp.adapters import plots as ap
from interp.adapters.io import catalog, history_of, runs_of_pair
from interp.adapters.report import demo_store
from interp.behaviour import agreement_table
from interp.models import same_model
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
train_status = None


def _of_pair(config: dict) -> bool:
    """Whether a training config (a run's, a sweep's, a job's spec) is of the sidebar
    pair."""
    return same_model(str(config.get("base") or ""), base_spec) and same_model(
        str(config.get("reasoner") or ""), fine_spec)


def _job_of_pair(jid: str) -> bool:
    try:
        return _of_pair(jobs.spec_of(jid))
    except Exception:  # noqa: BLE001 - an unreadable job folder is not this pair's
        return False


# ------------------------------------------------------------------ train
if ui.demo_mode():
    ui.demo_hidden("Training", f"python -m interp adapters train --base {base_spec} "
                               f"--reasoner {fine_spec}")
else:
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
            train_status = ui.job_panel("adapters.train", spec, key="train",
                                        label="Start training")
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
every_run = ui.attempt(catalog, stores) or []
runs = runs_of_pair(every_run, base_spec, fine_spec)   # only the sidebar pair's runs
pair_text = f"**{ui.short_name(fine_spec)}** − **{ui.short_name(base_spec)}**"
live = {} if ui.demo_mode() else {   # running jobs of this pair (a finished one is a run)
    f"job {st_.id[-8:]} ({st_.state})": jobs.progress_records(st_.id)
    for st_ in jobs.list_jobs("adapters.train")[:6]
    if st_.state != "done" and _job_of_pair(st_.id)}
if train_status is not None and ui.job_finished(train_status):
    new_key = (train_status.result or {}).get("key")
    new = next((r for r in runs if r["artifact"].key == new_key), None)
    if new is not None:   # the run the job just saved: compared and shown in detail
        ui.select_run("runs", new["label"].split(" · ")[-1])
        st.session_state.pop("runs_select", None)
        ui.select_run("run", new["label"])
if not runs and not live:
    others = sorted({r["pair"] for r in every_run})
    st.info(f"No adapter runs for the pair {pair_text}. "
            + ("Train one above, or from a shell: " if not ui.demo_mode() else
               "Train one locally: ")
            + f"`python -m interp adapters train --base {base_spec} --reasoner {fine_spec}`."
            + (f" Saved runs exist for: {', '.join(others)} (choose that pair in the "
               "sidebar)." if others else ""), icon=":material/info:")
    st.stop()

from interp.models import describe_stale  # noqa: E402

for r in runs:
    changed = [x for x in r["stale"] if x["now"] is not None]   # (missing: cannot check)
    if changed:
        st.warning(f"Run `{r['label']}` was trained on {r['pair']}, whose weights changed: "
                   f"{describe_stale(changed)}. Its figures describe the old pair.",
                   icon=":material/history:")
st.subheader("Training curves")
st.caption(f"Runs of the sidebar pair {pair_text}.")
labels = [r["label"] for r in runs] + list(live)
suffixes = [lab.split(" · ")[-1] for lab in labels]
stable = [r["label"] for r in runs if r["store"] == "demo"] or [r["label"] for r in runs[::-1]]
default_sel = (stable or labels)[0].split(" · ")[-1]   # never the newest by default
sel = ui.url_list("runs", default_sel, suffixes)
chosen_default = [lab for lab in labels if lab.split(" · ")[-1] in sel]
if not set(st.session_state.get("runs_select") or ()) <= set(labels):
    del st.session_state["runs_select"]   # another pair's runs: start from the link
chosen = st.multiselect("Runs to compare", labels, default=chosen_default or labels[:1],
                        key="runs_select")
ui.set_url_param("runs", ",".join(lab.split(" · ")[-1] for lab in chosen))  # always: pinned
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
    st.caption("No run of this pair has an evaluation yet.")

names = [r["label"] for r in runs]
pick = ui.run_picker(st.selectbox, "Run in detail", "run", names,
                     stable[0] if stable else names[0])
picked = next(r for r in runs if r["label"] == pick)
if picked["eval"] is None:
    st.caption(f"`{pick}` has no evaluation yet (faithfulness on held-out traces, then "
               "greedy generation): `python -m interp adapters eval "
               f"{picked['artifact'].key}`.")
    if picked["store"] == "local" and not ui.demo_mode():
        eval_status = ui.job_panel("adapters.eval", {"key": picked["artifact"].key,
                                                     "device": device},
                                   key="eval", label="Evaluate")
    elif ui.demo_mode():
        ui.demo_hidden("Evaluation", f"python -m interp adapters eval "
                                     f"{picked['artifact'].key}")

if pick in evaluated:
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
    ev = picked["eval"]
    be = ev.meta.get("behaviour") or {}
    if be:
        bt = ap.behaviour_table(be)
        st.dataframe(table_view(bt), hide_index=True)
        der = be.get("derived", {})
        m = st.columns(3)
        m[0].metric("accuracy recovered", f"{der.get('accuracy_recovered', float('nan')):.1%}")
        m[1].metric("max hesitation-rate error",
                    f"{der.get('hesitation_rate_rel_error', float('nan')):.1%}")
        m[2].metric("thinking-length error", f"{der.get('think_tokens_rel_error', 0):.1%}")
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
sweeps = [a for s in stores.values() for a in s.list("adapters_sweep") if _of_pair(a.config)]
points = [{"steps": a.config.get("steps"), **p} for a in sweeps for p in a.meta.get("runs", [])]
if points:
    fig_f = ap.frontier_figure(points, table_steps=[
        r["artifact"].config.get("steps") for r in runs
        if r["eval"] is not None and r["artifact"].config.get("steps")])
    st.plotly_chart(fig_f, key="fig_frontier")
    ui.export_panel(fig_f, ap.frontier_frame(points), "adapters-frontier", key="exp_frontier",
                    context={"run": ",".join(a.key for a in sweeps)})
    ui.reproduce(reproduce.adapters_frontier([(n, a.key) for n, s in stores.items()
                                              for a in s.list("adapters_sweep")
                                              if _of_pair(a.config)]))
else:
    st.caption("No L1 sweep of this pair saved yet.")
