"""Reasoning vectors: task arithmetic θ_target + α·(m ⊙ (θ_A − θ_B)) and control vectors
α·c in the residual stream, seen through KL / entropy / logit lenses and α sweeps.

URL state: ``vmode`` (task | control), ``vsrc`` (pair: the models come from the sidebar
pair, the default; override: ``va`` / ``vb`` / ``vt`` / ``vref`` name the donors,
target and reference; a link with any of those and no ``vsrc`` opens the override),
``vg`` (mask groups, comma list), ``vlo`` / ``vhi`` (block range),
``valpha`` (α), ``vprob`` (organism problem index), ``vtext`` (own text), ``vgen`` (own
generations), ``vcl`` / ``vcs`` / ``vck`` (control layer, site, kind), ``vpos`` /
``vneg`` (control prompt formats), ``vunit`` (nats | bits), ``vsa`` / ``vaa`` (the α
values of the forward and the accuracy sweep, as typed: ``-2:2:0.5`` or ``-1,0,1``),
``vposs`` (positions shown in the layer × token heatmap).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

import pages.common as ui
from interp import reproduce
from interp.behaviour import agreement_table, decomposition_table
from interp.cost import vectors_experiment_cost
from interp.grid import format_grid
from interp.plots.common import table_view
from interp.tasks import speaks_organism
from interp.vectors import plots as vp
from interp.vectors import views
from interp.vectors.demo import DEFAULT_SPEC, demo_store, find_part, full_spec
from interp.vectors.report import vector_behaviour
from interp.vectors.task import GROUPS, Mask

st.title("Reasoning vectors")
st.caption(
    "**Task vectors** move a target model's weights along the difference of two "
    "models (default: the sidebar pair, fine-tune − base applied to the base; *override* "
    "picks others, e.g. organisms grpo − sft applied to instruct): θ = θ_target + "
    "α·(m ⊙ v). **Control vectors** add α·c to one layer's residual stream. "
    "The lenses compare the original and the modified model on the same tokens: "
    "KL(P_orig ‖ P_mod) and entropies per token, promoted / suppressed tokens, a logit-lens "
    "KL heatmap over layers, and sweeps over α.")
device, dtype = ui.current_device()
mode = ui.url_widget(st.segmented_control, "vector", "vmode", "task",
                     options=["task", "control"],
                     format_func=lambda m: {"task": "Task vector (weights)",
                                            "control": "Control vector (activations)"}[m])
unit = ui.url_widget(st.segmented_control, "unit", "vunit", "nats", options=["nats", "bits"])
mode = mode or "task"
unit = unit or "nats"

base_spec, fine_spec = ui.current_pair()
OVERRIDE_KEYS = ("vt", "va", "vb", "vref")
# a link that names models (from before the sidebar pair drove this page) opens them
src = ui.url_widget(st.segmented_control, "models", "vsrc",
                    "override" if any(k in st.query_params for k in OVERRIDE_KEYS)
                    else "pair", options=["pair", "override"], required=True,
                    format_func={"pair": "From the sidebar pair",
                                 "override": "Override (other models)"}.get,
                    help="From the sidebar pair: the task vector is fine-tune − base, "
                         "applied to the base; the control vector is read from the "
                         "fine-tune. Override: choose every model here.") or "pair"
c = st.columns(4)
if src == "pair":
    for k in OVERRIDE_KEYS:   # the link names only the models it uses
        ui.set_url_param(k, None)
    if mode == "task":
        target, donor_a, donor_b, reference = base_spec, fine_spec, base_spec, None
        st.markdown(f"v = θ(:orange[**{ui.short_name(fine_spec)}**]) − "
                    f"θ(:blue[**{ui.short_name(base_spec)}**]) from the sidebar pair, applied "
                    f"to the base: θ = θ_base + α·(m ⊙ v), so α = 1 is the fine-tune and "
                    "α = 0 the base.")
    else:
        target = fine_spec
        st.markdown(f"Control vector read from the sidebar's fine-tune "
                    f":orange[**{ui.short_name(fine_spec)}**] and added to its residual "
                    "stream.")
else:
    st.caption(":material/tune: **Override**: these models replace the sidebar pair on this "
               "page only.")
    target = ui.model_input(c[0], "target model (override)", "vt", "organism:instruct")
if mode == "task":
    if src == "override":
        donor_a = ui.model_input(c[1], "donor A (v = A − B) (override)", "va",
                                 "organism:grpo")
        donor_b = ui.model_input(c[2], "donor B (override)", "vb", "organism:sft")
        reference = ui.model_input(c[3], "reference for cos(v, θ_target − θ_ref) (override)",
                                   "vref", "organism:base")
    c = st.columns([3, 2, 2])
    groups = c[0].multiselect("mask: module groups", list(GROUPS),
                              ui.url_list("vg", ",".join(GROUPS), GROUPS), key="vg_ms")
    ui.set_url_param("vg", ",".join(groups), ",".join(GROUPS))
    lo = ui.url_widget(c[1].number_input, "first block", "vlo", 0, int, min_value=0)
    hi = ui.url_widget(c[2].number_input, "last block (−1 = all)", "vhi", -1, int,
                       min_value=-1)
    mask = ui.attempt(Mask, tuple(groups), None if hi < 0 else (int(lo), int(hi)))
    if mask is None:
        st.stop()
else:
    c2 = st.columns(4)
    layer = ui.url_widget(c[1].number_input, "layer (block index)", "vcl", 1, int,
                          min_value=0)
    site = ui.url_widget(c[2].selectbox, "hook site", "vcs", "resid_post",
                         options=["resid_post", "resid_mid", "resid_pre"])
    kind = ui.url_widget(c[3].selectbox, "vector kind", "vck", "R-C",
                         options=["R-C", "PCA-C", "R"])
    if speaks_organism(target):
        pos_fmt = ui.url_widget(c2[0].selectbox, "positives: organism format", "vpos",
                                "think", options=["think", "direct", "chat", "plain"])
        neg_fmt = ui.url_widget(c2[1].selectbox, "negatives: organism format", "vneg",
                                "direct", options=["think", "direct", "chat", "plain"])
    else:   # another model: two prompt files (text or JSONL), never organism prompts
        pos_file = ui.url_widget(c2[0].text_input, "positives: prompt file", "vposf", "")
        neg_file = ui.url_widget(c2[1].text_input, "negatives: prompt file", "vnegf", "")
    n_ctrl = ui.url_widget(c2[2].number_input, "paired prompts", "vcn", 128, int,
                           min_value=4, max_value=2000 if not ui.demo_mode() else
                           ui.demo_settings().max_control_prompts)
alpha = ui.url_widget(st.slider, "α", "valpha", 1.0, float, min_value=-3.0, max_value=3.0,
                      step=0.25)

ui.export_context(model=target, setting={
    "vector": f"{donor_a} − {donor_b}" if mode == "task" else f"{kind} at block {layer} {site}",
    "α": alpha})
NO_ALPHA = {"setting": {"α": None}}   # figures that do not depend on α
model = ui.attempt(ui.cached_model, target, device, dtype)
if model is None:
    st.stop()

# ------------------------------------------------------------------ weight space
if mode == "task":
    st.subheader("The task vector")
    stats = ui.attempt(views.task_stats_view, donor_a, donor_b, target, reference or None, mask)
    if stats is None:
        st.stop()
    if stats["tied"]:
        st.caption("Tied embeddings: the shared matrix counts once and is applied only when "
                   "both *embed* and *unembed* are selected.")
    fig, data = vp.norms_by_layer(stats["by_layer"])
    st.plotly_chart(fig, key="v_norms")
    ui.export_panel(fig, data, "task-vector-by-layer", key="vx_norms", context=NO_ALPHA)
    ui.reproduce(reproduce.vectors_task_stats(donor_a, donor_b, target, reference or None,
                                              None if mask == Mask() else mask.to_config()))
    with st.expander("Per tensor", icon=":material/table:"):
        tbl = stats["table"].drop(columns=["vv", "dd", "vd"])
        st.dataframe(tbl, hide_index=True)
        ui.export_panel(None, tbl, "task-vector-tensors", key="vx_tensors", context=NO_ALPHA)
    modify_at = views.task_modify(model, donor_a, donor_b, mask)
    spec = {"kind": "task", "target": target, "donor_a": donor_a, "donor_b": donor_b,
            "reference": reference or None, "mask": None if mask == Mask() else mask.to_config()}
else:
    from interp.organisms import task as T

    st.subheader("The control vector")
    if speaks_organism(target):
        probs = T.sample_problems(int(n_ctrl), seed=0, split="train")
        positives = [T.prompt_text(p, pos_fmt) for p in probs]
        negatives = [T.prompt_text(p, neg_fmt) for p in probs]
    else:
        if not (pos_file.strip() and neg_file.strip()):
            st.info("For a model other than the organisms, give two prompt files (one "
                    "prompt a line, or JSONL with 'prompt'): positives and negatives, e.g. "
                    "prompts that make it reason at length and prompts that ask for the "
                    "answer alone. Each prompt is read through the model's chat template.")
            st.stop()
        sets = ui.attempt(views.task_prompt_ids, model, [pos_file, neg_file], int(n_ctrl))
        if sets is None:
            st.stop()
        positives, negatives = sets
    ctrl = ui.attempt_work("the control vector", views.build_control, model,
                           positives, negatives if kind != "R" else None,
                           int(layer), kind, site)
    if ctrl is None:
        st.stop()
    cv = ctrl["vector"]
    st.caption(f"hook `{cv.hook}` · token rule: last prompt token · {cv.info['n_pos']} "
               f"positive / {cv.info['n_neg']} negative prompts · raw ‖c‖ = "
               f"{cv.info['norm']:.4g}" + (f" · PCA share {cv.info['explained']:.3f}"
                                          if "explained" in cv.info else ""))
    cols = st.columns(2)
    for col, key in zip(cols, ("lens_raw", "lens_norm")):
        fig, data = vp.vector_lens(ctrl[key])
        col.plotly_chart(fig, key=f"v_{key}")
        with col:
            ui.export_panel(fig, data, f"control-vector-{key}", key=f"vx_{key}",
                            context=NO_ALPHA)
    if speaks_organism(target):
        ui.reproduce(reproduce.vectors_control(target, int(layer), site, kind, int(n_ctrl),
                                               pos_fmt, neg_fmt, device))
    modify_at = views.control_modify(model, cv)
    spec = {"kind": "control", "target": target, "layer": int(layer), "site": site,
            "vector_kind": kind, "n_control": int(n_ctrl)}
    if speaks_organism(target):
        spec.update(positive_fmt=pos_fmt, negative_fmt=neg_fmt)
    else:
        spec.update(positives=pos_file.strip(), negatives=neg_file.strip())

# ------------------------------------------------------------------ one trace
st.subheader(f"One trace at α = {alpha:g}")
from interp.organisms import task as T  # noqa: E402
from interp.vectors.sweep import organism_batch  # noqa: E402

c = st.columns([1, 3, 1])
prob_i = ui.url_widget(c[0].number_input, "organism problem #", "vprob", 0, int,
                       min_value=0, max_value=499)
text = ui.url_widget(c[1].text_input, "or your own text (teacher-forced)", "vtext", "",
                     max_chars=ui.max_prompt_chars())
own = ui.url_widget(c[2].checkbox, "own generations", "vgen", False, bool)
problem = T.sample_problems(int(prob_i) + 1, seed=0, split="eval")[-1]
if not text.strip() and not speaks_organism(target):
    st.info("Type a text above: the organism problems are not this model's format.")
    tokens = None
elif text.strip():
    tokens = model.tokenizer(text, add_special_tokens=True)["input_ids"]
    prompt_len, own_prompt = 0, text if own else None
else:
    b = organism_batch([problem], "think")
    tokens, prompt_len = b.seqs[0], b.prompt_lens[0]
    own_prompt = T.prompt_text(problem, "think") if own else None
    st.caption(f"Problem {problem.id}; shared trace = the clean reference think trace.")
with st.spinner("running both models…"):
    tv = None if tokens is None else ui.attempt_work(
        "the trace", views.trace_view, model, modify_at, tokens, alpha, own_prompt,
        ui.max_new_tokens(64), 5, unit)
if tv is not None:
    st.markdown(vp.kl_highlight_html(tv["records"], unit, prompt_len=prompt_len),
                unsafe_allow_html=True)
    st.caption(f"Each token is shaded by KL(P_orig ‖ P_mod) [{unit}] of the distribution that "
               "predicted it; dotted underline = prompt.")
    fig, data = vp.per_token(tv["records"], unit)
    st.plotly_chart(fig, key="v_tok")
    ui.export_panel(fig, data, "per-token-kl", key="vx_tok")
    positions = ui.grid_input(st, "positions in the layer × token heatmap (empty = all; "
                              "e.g. 0:20 or 3,7,9)", "vposs", "", "position", integer=True,
                              lo=0, hi=len(tv["tokens"]) - 1, min_values=0)
    fig, data = vp.layer_token_kl(tv["layer_kl"], tv["tokens"], unit,
                                  positions=positions or None)
    st.plotly_chart(fig, key="v_heat")
    ui.export_panel(fig, data, "layer-token-kl", key="vx_heat")
    if spec["kind"] == "task" or speaks_organism(target):
        ui.reproduce(reproduce.vectors_trace(
            {**full_spec(spec), "layer": spec.get("layer")}, alpha,
            problem=int(prob_i), text=text.strip() or None, own=bool(own),
            max_new_tokens=ui.max_new_tokens(64), unit=unit, device=device,
            positions=positions or None))
    with st.expander("Top promoted / suppressed tokens per position", icon=":material/table:"):
        df = pd.DataFrame(tv["records"])
        st.dataframe(df, hide_index=True)
        ui.export_panel(None, df, "top-tokens", key="vx_top")
    if tv["own"] is not None:
        for key, label in (("orig", "original"), ("mod", "modified")):
            o = tv["own"][key]
            st.markdown(f"**{label} model's own generation:** `{o['generation'].text}`")
            recs = o["lens"].to_records(model.tokenizer)
            st.markdown(vp.kl_highlight_html(recs, unit, prompt_len=o["prompt_len"]),
                        unsafe_allow_html=True)
            fig, data = vp.per_token(recs, unit, title=f"Along the {label} model's generation")
            st.plotly_chart(fig, key=f"v_own_{key}")
            ui.export_panel(fig, data, f"per-token-kl-{key}-generation", key=f"vx_own_{key}")

# ------------------------------------------------------------------ sweeps
st.subheader("Sweeps over α")
if not speaks_organism(target):
    vtask = ui.url_widget(st.text_input, "task for the sweeps (prompt file, JSONL with "
                          "'answer' for accuracy, or math:FILE.jsonl)", "vtask", "")
    if not vtask.strip():
        st.info("The sweeps of another model need its prompts: give a task file.")
        st.stop()
    spec["task"] = vtask.strip()
c = st.columns(2)
_sweep_alphas = ui.grid_input(c[0], "α values of the forward sweep", "vsa",
                              format_grid(DEFAULT_SPEC["alphas"]), "α", max_values=41)
_acc_alphas = ui.grid_input(c[1], "α values of the accuracy sweep (generation)", "vaa",
                            format_grid(DEFAULT_SPEC["accuracy_alphas"]), "α", max_values=21)
if _sweep_alphas is None or _acc_alphas is None:
    st.stop()
for _k, _v in (("alphas", _sweep_alphas), ("accuracy_alphas", _acc_alphas)):
    if _v != [float(a) for a in DEFAULT_SPEC[_k]]:
        spec[_k] = _v
sweep = acc = None
for st_ in (ui.store(), demo_store(read_only=True)):   # a damaged artifact: st.error
    sweep = sweep or ui.attempt(find_part, spec, "sweep", st_)
    acc = acc or ui.attempt(find_part, spec, "accuracy", st_)
status = {w: views.saved_result_status(a) for w, a in (("sweep", sweep), ("accuracy", acc))
          if a is not None}
stale = any(v["stale"] for v in status.values())
for w, v in status.items():
    if v["warning"]:
        st.warning(f"The saved {w}: {v['warning']}", icon=":material/history:")
if sweep is None or acc is None or stale:
    if sweep is None or acc is None:
        st.caption("No saved sweep for these settings: run one (organism think prompts; "
                   f"{full_spec(spec)['n_sweep']} prompts for KL / entropy, "
                   f"{full_spec(spec)['n_accuracy']} held-out problems for accuracy)."
                   + (" The committed sweeps are of organism:instruct (task vector grpo − "
                      "sft, control vector at layer 2): choose *Override* above to see "
                      "them." if src == "pair" and speaks_organism(target) else ""))
    job_spec = {**spec, "device": device}
    if stale:  # a new job for the weights now on disk (the old one is done)
        job_spec["weights"] = views.current_hashes(spec)
    if ui.run_cost(ui.attempt(vectors_experiment_cost, job_spec), target, device, dtype):
        ui.job_panel("vectors.sweep", job_spec, key="vjob", label="Run sweep")
if sweep is not None:
    ts = sweep.tensors
    alphas = [float(a) for a in ts["alphas"].tolist()]
    u = sweep.meta.get("unit", "nats")
    cols = st.columns(2)
    for col, metric, title, ylab in (
            (cols[0], "kl_last", "KL(P_α=0 ‖ P_α) at the last prompt token", f"KL [{u}]"),
            (cols[1], "entropy_last", "Entropy of P_α at the last prompt token", f"H [{u}]"),
            (cols[0], "kl_trace", "KL averaged over the reference trace", f"KL [{u}]"),
            (cols[1], "entropy_trace", "Entropy averaged over the reference trace",
             f"H [{u}]")):
        fig, data = vp.alpha_band(alphas, ts[metric].numpy(), title, ylab)
        col.plotly_chart(fig, key=f"v_{metric}")
        with col:
            ui.export_panel(fig, data, f"{metric}-vs-alpha", key=f"vx_{metric}",
                            context={"run": sweep.key, **NO_ALPHA})
    fig, data = vp.stacked_mass(alphas, ts["p_correct"].numpy())
    st.plotly_chart(fig, key="v_mass")
    ui.export_panel(fig, data, "answer-mass-vs-alpha", key="vx_mass",
                    context={"run": sweep.key, **NO_ALPHA})
    st.caption(status["sweep"]["line"])
    ui.reproduce(reproduce.vectors_sweep(spec, "sweep", device))
if acc is not None:
    ta = acc.tensors
    fig, data = vp.accuracy_vs_alpha([float(a) for a in ta["alphas"].tolist()],
                                     ta["correct"].numpy(),
                                     title=f"Accuracy vs α ({acc.config.get('fmt')} format, "
                                           f"greedy, {ta['correct'].shape[1]} held-out problems)")
    st.plotly_chart(fig, key="v_acc")
    ui.export_panel(fig, data, "accuracy-vs-alpha", key="vx_acc",
                    context={"run": acc.key, **NO_ALPHA})
    ui.reproduce(reproduce.vectors_sweep(spec, "accuracy", device))
    st.caption(status["accuracy"]["line"] + f" · code "
               f"{acc.provenance.get('code_version', '?')} · mean think tokens per α: "
               + ", ".join(f"{a:g}: {np.mean(t):.1f}" for a, t in
                           zip(ta["alphas"].tolist(), ta["think_tokens"].numpy())))
    vb = ui.attempt(vector_behaviour, acc) or {}
    if vb:
        st.markdown("**What the vector changes, per prompt tag** (α = 0 vs ±1)")
        st.caption("Accuracy, short thinking, hesitation rates and the kind of each wrong "
                   "answer, split by the prompt's tag (`easy` prompts invite short "
                   "thinking). Error types: short_thinking (answer after empty thinking), "
                   "dropped_final_carry (the sum without its leading 1), carry_error (every "
                   "wrong digit off by one), other.")
        dt = decomposition_table({k: {t: vb["decomposition"][t][k]
                                      for t in ("easy", "add", "all")
                                      if k in vb["decomposition"][t]}
                                  for k in ("without_vector", "plus_vector", "minus_vector")})
        st.dataframe(table_view(dt), hide_index=True)
        ui.export_panel(None, dt, "vectors-decomposition", key="vx_dec",
                        context={"run": acc.key, **NO_ALPHA})
        at = agreement_table(vb["per_example"])
        st.markdown("**Per example, against the target without the vector**")
        st.dataframe(table_view(at), hide_index=True)
        ui.export_panel(None, at, "vectors-agreement", key="vx_agree",
                        context={"run": acc.key, **NO_ALPHA})
