"""Reasoning length: long/short split, thinking-length directions, the α sweep, the
short-thinking heads, the ThinkEdit weight edit and SEAL conditional steering.

URL state: ``base``, ``fine``, ``device``, ``dtype`` (sidebar); this page: ``lrun``
(the run shown, ``store:key``; always in the URL, so a link keeps its run when newer runs
are saved; only runs of the sidebar's fine-tune are offered), ``ltab`` (the view:
Lengths, Direction, …), ``lbin`` /
``lover`` / ``lnorm`` (histogram bin width, overflow bin, normalised), ``lsite``
(direction site), ``lalpha`` (α values shown in the histogram), ``lsrc`` / ``ln*`` /
``lsplit*`` / ``lmk*`` / ``lseal`` (SEAL α values) / ``lrk`` (heads to edit) (the run
form), ``lk`` (top-k heads boxed), ``lsa`` / ``lsl`` / ``lsn`` (another sweep on the run's
direction: α values, layers, prompts per α). Grids are kept as typed (``-2:2:0.5``).
In demo mode (``INTERP_DEMO=1``) runs cannot be started (the page says so); the committed
demo run is shown. A run job that ends in this session selects its run.
"""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

import pages.common as ui
from interp import reproduce
from interp.behaviour import agreement_table, per_alpha_agreement_table
from interp.cost import length_grid_cost, length_sweep_cost
from interp.grid import format_grid
from interp.length import plots as lp
from interp.length.pipeline import DEFAULTS, list_runs, load_run
from interp.length.report import demo_store, planted_head_check
from interp.length.seal import DEFAULT_RULES, delta_color, headline_of
from interp.models import current_weight_hash, same_model
from interp.plots.common import table_view
from interp.tasks import speaks_organism

RULE_TEXT = {
    "think": "from the token that predicts the first thinking token (or the close marker) "
             "through the last thinking token, so a response with no thinking still "
             "contributes one position.",
    "open": "only the token that predicts the first thinking token or the close marker "
            "(where the model decides whether to think); `auto` picks it when most short "
            "responses have no thinking at all.",
}

st.title("Reasoning length")
st.caption(
    "Where a reasoning model decides how long to think. Responses are split into **long** "
    "and **short** thinking; the per-layer direction dir_l = mean_long − mean_short "
    "(over the positions that predict the thinking tokens) is added with weight α at every "
    "layer and decoding step; heads that write along the short direction are found and "
    "their write along it is removed from the weights (ThinkEdit's W_O projection) or "
    "fixed to its long-thinking mean (recentred edit). SEAL steers only at "
    "step separators inside the thinking.")
_base, fine_spec = ui.current_pair()
device, dtype = ui.current_device()
run_status = None

# ------------------------------------------------------------------ run form
if ui.demo_mode():
    ui.demo_hidden("Running the stages", f"python -m interp length build --model {fine_spec}")
else:
    with st.expander("New run", expanded=False, icon=":material/play_circle:"):
        st.caption(f"Model: the sidebar's fine-tune, **{ui.short_name(fine_spec)}**. "
                   "Organism prompts are scored (accuracy); with your own prompts only "
                   "lengths are measured. Markers must match the model's own format.")
        src = ui.url_widget(st.segmented_control, "prompts", "lsrc", "organism",
                            options=["organism", "task file", "my prompts"])
        task_path, traces_key = "", None
        if src == "organism" and not speaks_organism(fine_spec):
            st.warning(f"The organisms' prompts only run on the organism models, not on "
                       f"**{ui.short_name(fine_spec)}**: choose *task file* (a JSONL or text "
                       "file of your prompts, with optional answers) or *my prompts*.")
        if src == "task file":
            task_path = ui.url_widget(st.text_input, "task file (JSONL with prompt / answer, "
                                      "or text, one prompt per line; math:FILE.jsonl for "
                                      "math-verify scoring)", "ltask", "")
            sets = [a.key for a in ui.store().list("traces")
                    if a.config.get("model") == fine_spec]
            traces_key = st.selectbox("long/short split from a trace set of this model "
                                      "(else generated now)", [None, *sets], key="ltraces")
            st.caption("Markers and hesitation tokens are read from the model's tokenizer "
                       "and chat template; the boxes below are used only for *my prompts*.")
        c = st.columns(4)
        n_dir = c[0].number_input("direction prompts", 20, 5000,
                                  ui.url_value("lndir", DEFAULTS["n_direction"], int,
                                               min_value=20, max_value=5000), 50)
        n_sw = c[1].number_input("prompts per α", 5, 2000,
                                 ui.url_value("lnsw", DEFAULTS["n_sweep"], int,
                                              min_value=5, max_value=2000), 25)
        n_ev = c[2].number_input("evaluation prompts", 10, 5000,
                                 ui.url_value("lnev", DEFAULTS["n_eval"], int,
                                              min_value=10, max_value=5000), 50)
        max_new = c[3].number_input("max new tokens", 8, 4096,
                                    ui.url_value("lmax", DEFAULTS["max_new_tokens"], int,
                                                 min_value=8, max_value=4096), 16)
        c = st.columns(4)
        mode = c[0].selectbox("split", ["threshold", "percentile"],
                              index=0 if ui.url_value("lsplit", "threshold", options=[
                                  "threshold", "percentile"]) == "threshold"
                              else 1)
        lo = c[1].number_input("short ≤ (tokens or quantile)", 0.0, 1e5,
                               ui.url_value("lslo", 2.0, float, min_value=0.0,
                                            max_value=1e5))
        hi = c[2].number_input("long ≥ (tokens or quantile)", 0.0, 1e5,
                               ui.url_value("lshi", 10.0, float, min_value=0.0,
                                            max_value=1e5))
        temp = c[3].number_input("temperature (0 = greedy)", 0.0, 2.0,
                                 ui.url_value("ltemp", 0.0, float, min_value=0.0,
                                              max_value=2.0), 0.1)
        c = st.columns(5)
        mk_open = c[0].text_input("think open", ui.url_value("lmko", "<think>"))
        mk_close = c[1].text_input("think close", ui.url_value("lmkc", "</think>"))
        mk_sep = c[2].text_input("step separator", ui.url_value("lmks", ";"))
        mk_hes = c[3].text_input("hesitation word", ui.url_value("lmkh", "wait"))
        starts_open = c[4].checkbox("prompt ends with the open marker",
                                    ui.url_value("lmkso", True, ui.as_bool))
        for k, v, d in (("lndir", n_dir, DEFAULTS["n_direction"]),
                        ("lnsw", n_sw, DEFAULTS["n_sweep"]), ("lnev", n_ev, DEFAULTS["n_eval"]),
                        ("lmax", max_new, DEFAULTS["max_new_tokens"]),
                        ("lsplit", mode, "threshold"), ("lslo", lo, 2.0), ("lshi", hi, 10.0),
                        ("ltemp", temp, 0.0), ("lmko", mk_open, "<think>"),
                        ("lmkc", mk_close, "</think>"), ("lmks", mk_sep, ";"),
                        ("lmkh", mk_hes, "wait"), ("lmkso", starts_open, True)):
            ui.set_url_param(k, v, d)
        st.markdown("**SEAL thought-type rules** (first match wins; no match = execution)")
        rules_df = st.data_editor(pd.DataFrame(DEFAULT_RULES), num_rows="dynamic",
                                  key="lrules", column_config={
                                      "class": st.column_config.SelectboxColumn(
                                          options=["reflection", "transition", "execution"]),
                                      "mode": st.column_config.SelectboxColumn(
                                          options=["starts", "contains"])})
        prompts = []
        if src == "my prompts":
            text = st.text_area("prompts (one per line; end each with the open marker if "
                                "the box above is ticked)", key="lprompts", height=120,
                                max_chars=ui.max_prompt_chars())
            prompts = [ln.strip() for ln in text.splitlines() if ln.strip()]
        spec = {"stage": "pipeline", "store": "main", "device": device, "model": fine_spec,
                "source": "organism" if src == "organism" else "prompts",
                "n_direction": int(n_dir), "n_sweep": int(n_sw), "n_eval": int(n_ev),
                "max_new_tokens": int(max_new), "temperature": float(temp),
                "top_p": 0.95 if temp > 0 else 1.0,
                "split": {"mode": mode, "short": float(lo), "long": float(hi)},
                "markers": {"think_open": mk_open or None, "think_close": mk_close,
                            "starts_open": bool(starts_open), "step_sep": mk_sep,
                            "hesitation": mk_hes}}
        if src == "my prompts":
            spec["prompts"] = prompts
        if src == "task file":
            spec.pop("markers")
            spec.update(task=task_path.strip() or None, source="prompts")
            if traces_key:
                spec["traces"] = traces_key
        spec["seal_rules"] = rules_df.dropna().to_dict("records")
        c = st.columns(2)
        seal_grid = ui.grid_input(c[0], "SEAL α values (dose-response)", "lseal",
                                  format_grid(DEFAULTS["seal_alpha_grid"]), "SEAL α",
                                  max_values=21)
        top_k = ui.url_widget(c[1].number_input, "heads to edit (0 = 6% of all heads)", "lrk",
                              0, int, min_value=0, max_value=4096)
        if top_k:
            spec["top_k"] = int(top_k)
        if seal_grid is not None and seal_grid != DEFAULTS["seal_alpha_grid"]:
            spec["seal_alpha_grid"] = seal_grid
        _n_alpha = DEFAULTS["n_alpha"]
        ok = seal_grid is not None and ui.run_cost(
            length_grid_cost(int(n_sw), [0.0] * _n_alpha, int(n_ev),
                             sorted({*(seal_grid or []), DEFAULTS["seal_alpha"]}),
                             int(max_new)),
            fine_spec if speaks_organism(fine_spec) else None, device, dtype)
        st.caption(f"The estimate counts the generations of the two α grids ({_n_alpha} "
                   "all-layer α values, the SEAL values); the direction, edit and evaluation "
                   "stages add about as many again.")
        if src == "organism" and not speaks_organism(fine_spec) or not ok:
            pass
        elif src == "organism" or prompts or (src == "task file" and spec.get("task")):
            run_status = ui.job_panel("length.sweep", spec, key="lrun_job",
                                      label="Run all stages")
        else:
            st.info("Enter prompts (or a task file) to start a run.")

# ------------------------------------------------------------------ pick a run
stores = {"demo": demo_store()}
if not ui.demo_mode():
    stores["local"] = ui.store()
every_run = ui.attempt(list_runs, stores) or []
runs = [r for r in every_run if same_model(str(r["model"] or ""), fine_spec)]
if not runs:
    others = sorted({str(r["model"]) for r in every_run})
    st.info(f"No reasoning-length runs of the sidebar's fine-tune "
            f"**{ui.short_name(fine_spec)}**. "
            + ("Run all stages above, or from a shell: " if not ui.demo_mode() else
               "Run them locally: ")
            + f"`python -m interp length build --model {fine_spec}`."
            + (f" Saved runs exist for: {', '.join(others)} (choose it as the fine-tune in "
               "the sidebar)." if others else ""), icon=":material/info:")
    st.stop()
labels = {f"{r['store']}:{r['key']}": f"{r['store']} · {r['model']} · {r['created'][:16]}"
          for r in runs}
if ui.job_finished(run_status) and f"local:{(run_status.result or {}).get('key')}" in labels:
    ui.select_run("lrun", f"local:{run_status.result['key']}")   # the run just made
# the default never moves when runs are added: the committed run, else the oldest
stable = [k for k in labels if k.startswith("demo:")] or list(labels)[::-1]
choice = ui.run_picker(st.selectbox, "run", "lrun", list(labels), stable[0],
                       format_func=lambda k: labels.get(k, k))
store_name, key = choice.split(":", 1)
run = ui.attempt(load_run, stores[store_name], key)
if run is None:
    st.stop()
idx, ed, sw, dmeta = run["index"], run["edit"], run["sweep"], run["direction"]
ui.export_context(model=idx.get("model"), run=key)
_now = current_weight_hash(str(idx.get("model", "")))
if run.get("weight_hash") and _now and _now != run["weight_hash"]:
    st.warning(f"This run was computed on other weights of {idx.get('model')} than those now "
               f"on disk (saved {run['weight_hash'][:10]}, now {_now[:10]}): its figures "
               "describe the old model.", icon=":material/history:")
short_max = dmeta.get("split", {}).get("short_max_tokens", 0)
scored = "accuracy" in ed["before"]

m = st.columns(5)
m[0].metric("best separability (AUROC)", f"{idx['best_layer_separability']:.3f}",
            help=f"held-out, {idx['best']['site']} layer {idx['best']['layer']}")
m[1].metric("Spearman ρ (length vs α)", f"{idx['length_alpha_spearman']:.3f}")
sf_b, sf_a = ed["before"]["short_fraction"]["value"], ed["after"]["short_fraction"]["value"]
m[2].metric("short fraction", f"{sf_b:.3f}", f"{sf_a - sf_b:+.3f} after edit",
            help=f"headline edit: {ed.get('mode', 'project')}",
            delta_color="inverse", delta_arrow="auto" if sf_a != sf_b else "off")
if scored:
    ac_b, ac_a = ed["before"]["accuracy"]["value"], ed["after"]["accuracy"]["value"]
    m[3].metric("accuracy", f"{ac_b:.3f}", f"{ac_a - ac_b:+.3f} after edit",
                delta_arrow="auto" if ac_a != ac_b else "off")
m[4].metric("evaluated problems", ed["before"]["n"])

SECTIONS = ["Lengths", "Direction", "α sweep", "Accuracy vs length", "Heads", "Edit", "SEAL"]
section = ui.url_widget(st.segmented_control, "view", "ltab", SECTIONS[0],
                        options=SECTIONS, label_visibility="collapsed",
                        required=True) or SECTIONS[0]   # required: a click never clears it


def histogram_controls() -> tuple[int, int, bool]:
    """Bin width, overflow bin and fractions (shared by the Lengths and α sweep views)."""
    c = st.columns(3)
    bin_w = ui.url_widget(c[0].number_input, "bin width (tokens)", "lbin", 10, int,
                          min_value=1, max_value=1000)
    over = ui.url_widget(c[1].number_input, "overflow bin from (tokens)", "lover", 80, int,
                         min_value=1)
    norm = ui.url_widget(c[2].checkbox, "fractions", "lnorm", True, bool)
    return int(bin_w), int(over), bool(norm)


def new_sweep_section(run: dict, store_name: str, alphas: list, n: int) -> None:
    """Other α values or layers on this run's direction: a ``length.sweep`` job (stage
    ``sweep``, saved in the local store), its estimated cost first, its result after."""
    if ui.demo_mode():
        return
    idx, cfg = run["index"], run["config"]
    with st.expander("Sweep other α values or layers on this direction",
                     icon=":material/tune:"):
        c = st.columns(3)
        grid = ui.grid_input(c[0], "α values", "lsa", format_grid(alphas), "α",
                             max_values=41)
        n_layers = int(run["heads"].get("n_layers") or run["head_scores"].shape[0])
        layers = ui.grid_input(c[1], "layers to steer (empty = all)", "lsl", "", "layer",
                               integer=True, lo=0, hi=n_layers - 1, min_values=0)
        n_p = ui.url_widget(c[2].number_input, "prompts per α", "lsn", int(n), int,
                            min_value=1, max_value=2000)
        if grid is None or layers is None:
            return
        spec = {"stage": "sweep", "store": "main",
                "direction_store": "demo" if store_name == "demo" else "main",
                "model": idx["model"], "direction": idx["keys"]["direction"],
                "alphas": grid, "layers": layers or None, "n_prompts": int(n_p),
                **{k: cfg[k] for k in ("source", "task", "traces", "markers", "prompts",
                                       "max_new_tokens", "temperature", "top_p", "seed",
                                       "batch_size") if cfg.get(k) is not None}}
        cost = length_sweep_cost(int(n_p), grid,
                                 int(cfg.get("max_new_tokens", DEFAULTS["max_new_tokens"])),
                                 int(cfg.get("batch_size", DEFAULTS["batch_size"])))
        model = idx["model"] if speaks_organism(idx["model"]) else None
        if not ui.run_cost(cost, model, device, dtype):
            return
        status = ui.job_panel("length.sweep", {**spec, "device": device}, key="lsw_job",
                              label="Run this sweep")
        if status is None or status.state != "done" or not status.result:
            return
        art = ui.attempt(ui.store().load, "length_sweep", status.result["key"])
        if art is None:
            return
        df = lp.sweep_frame(art.meta["per_alpha"])
        fig = lp.sweep_figure(df, "steering on this direction: length, accuracy, short "
                                  "fraction vs α" + (f" (layers {format_grid(layers)})"
                                                     if layers else ""))
        st.plotly_chart(fig, key="l_sweep_new")
        ui.export_panel(fig, df, "length_alpha_sweep_new", "l_sweep_new_x")
        ui.reproduce(reproduce.length_sweep_job(spec))


# ------------------------------------------------------------------ lengths
if section == "Lengths":
    bin_w, over, norm = histogram_controls()
    series = {"direction set": [r["think_tokens"] for r in run["generations"]["records"]],
              "eval, before edit": [r["think_tokens"] for r in ed["records_before"]],
              "eval, after edit": [r["think_tokens"] for r in ed["records_after"]]}
    df = lp.histogram_frame(series, int(bin_w), int(over))
    fig = lp.histogram_figure(df, bool(norm), "thinking-length histogram")
    st.plotly_chart(fig, key="l_hist")
    sp = dmeta.get("split", {})
    rule = dmeta.get("positions_rule")
    st.caption(f"Split ({sp.get('mode')}): short ≤ {sp.get('short_max_tokens'):g} tokens "
               f"(n={sp.get('n_short')}), long ≥ {sp.get('long_min_tokens'):g} "
               f"(n={sp.get('n_long')}), unused {sp.get('n_neither')}. Positions rule "
               f"`{rule}` (setting `{dmeta.get('positions_setting', rule)}`): "
               + RULE_TEXT.get(rule, ""))
    ui.export_panel(fig, df, "length_histogram", "l_hist_x")
    ui.reproduce(reproduce.length_view(section, store_name, key, bin_width=bin_w,
                                       overflow=over, norm=norm))

# ------------------------------------------------------------------ direction
if section == "Direction":
    df = lp.separability_frame(dmeta["auroc"], dmeta["probe_accuracy"], dmeta["norms"])
    fig = lp.separability_figure(df, "held-out separability of long vs short per layer")
    st.plotly_chart(fig, key="l_sep")
    ui.export_panel(fig, df, "length_separability", "l_sep_x")
    site = ui.url_widget(st.segmented_control, "site", "lsite", dmeta["sites"][0],
                         options=dmeta["sites"])
    fig = lp.cosine_figure(run["cosine"][site or dmeta["sites"][0]],
                           f"cosine of dir_l across layers ({site})")
    st.plotly_chart(fig, key="l_cos")
    ui.export_panel(fig, pd.DataFrame(run["cosine"][site or dmeta["sites"][0]]),
                    "length_cosine", "l_cos_x", context={"setting": {"site": site}})
    st.caption(f"Held-out split: {dmeta['n_train']} train / {dmeta['n_test']} test "
               f"examples ({dmeta['n_long']} long, {dmeta['n_short']} short). Hooks "
               f"`blocks.{{l}}.hook_resid_mid` / `hook_resid_post`; sign {dmeta['sign']}.")
    ui.reproduce(reproduce.length_view(section, store_name, key,
                                       site=site or dmeta["sites"][0]))

# ------------------------------------------------------------------ sweep
if section == "α sweep":
    df = lp.sweep_frame(sw["per_alpha"])
    fig = lp.sweep_figure(df, "all-layer steering: length, accuracy, short fraction vs α")
    st.plotly_chart(fig, key="l_sweep")
    ui.export_panel(fig, df, "length_alpha_sweep", "l_sweep_x", context={"setting": {
        "site": run["config"].get("sweep_site", "resid_mid"), "α": list(df["alpha"])}})
    st.caption(f"All layers, site {run['config'].get('sweep_site', 'resid_mid')}; α grid "
               f"{sw.get('alpha_grid_rule', '')} (units of dir_l). Spearman ρ of mean length "
               f"vs α: {sw['spearman_mean_length_vs_alpha']:.3f}. One batched generation.")
    agree = per_alpha_agreement_table(sw["per_alpha"])
    if len(agree):
        st.markdown("**Per example, against the unsteered generations (α = 0)**")
        st.dataframe(table_view(agree), hide_index=True)
        ui.export_panel(None, agree, "length_alpha_agreement", "l_sweep_agree_x")
    alphas = [p["alpha"] for p in sw["per_alpha"]]
    default_sel = format_grid([a for a in (alphas[0], 0.0, alphas[-1]) if a in alphas])
    sel = ui.grid_input(st, "α values in the histogram", "lalpha", default_sel, "α") or []
    missing = [a for a in sel if not any(abs(a - b) < 1e-9 for b in alphas)]
    if missing:
        st.caption(f"Not in this sweep: α = {format_grid(missing)} (its grid: "
                   f"{format_grid(alphas)}).")
    n = sw["per_alpha"][0]["n"]
    series = {f"α={a:g}": [r["think_tokens"] for r in sw["records"][k * n:(k + 1) * n]]
              for k, a in enumerate(alphas) if any(abs(a - s) < 1e-9 for s in sel)}
    bin_w, over = 10, 80
    if series:
        bin_w, over, _norm = histogram_controls()
        df = lp.histogram_frame(series, int(bin_w), int(over))
        fig = lp.histogram_figure(df, True, "thinking-length histogram per α")
        st.plotly_chart(fig, key="l_sweep_hist")
        ui.export_panel(fig, df, "length_alpha_histograms", "l_sweep_hist_x",
                        context={"setting": {"α": sel}})
    ui.reproduce(reproduce.length_view(section, store_name, key, alphas=sel,
                                       bin_width=bin_w, overflow=over))
    new_sweep_section(run, store_name, alphas, n)

# ------------------------------------------------------------------ accuracy vs length
if section == "Accuracy vs length":
    if not scored:
        st.info("This run has no accuracy (prompts without a scorer).")
    else:
        groups = {"before edit": ed["records_before"], "after edit": ed["records_after"]}
        df = lp.shortest_frame(groups)
        fig = lp.shortest_figure(df, "accuracy of the shortest responses")
        st.plotly_chart(fig, key="l_short")
        ui.export_panel(fig, df, "length_shortest_accuracy", "l_short_x")
        df = lp.cumulative_frame(groups)
        fig = lp.cumulative_figure(df, "cumulative accuracy vs length threshold")
        st.plotly_chart(fig, key="l_cum")
        ui.export_panel(fig, df, "length_cumulative_accuracy", "l_cum_x")
        ui.reproduce(reproduce.length_view(section, store_name, key))

# ------------------------------------------------------------------ heads
if section == "Heads":
    import torch

    from interp.length.heads import top_heads

    top = run["heads"]["top"]
    k = ui.url_widget(st.number_input, "top-k heads (boxed)", "lk", len(top), int,
                      min_value=1, max_value=int(run["head_scores"].size))
    boxed = top_heads(torch.from_numpy(run["head_scores"]), int(k))
    fig = lp.head_figure(run["head_scores"], [(t["layer"], t["head"]) for t in boxed],
                         "each head's mean write onto the unit short direction")
    st.plotly_chart(fig, key="l_heads")
    ui.export_panel(fig, lp.head_frame(run["head_scores"]), "length_head_scores", "l_heads_x")
    st.caption(run["heads"]["score"] + f"; {run['heads']['n_short_examples']} short "
               f"examples. Boxed: the top {int(k)} heads by score; the run's ThinkEdit edit "
               f"took the top {len(top)} (the Edit tab lists the heads of each edit).")
    st.dataframe(pd.DataFrame(boxed), hide_index=True)
    ui.reproduce(reproduce.length_view(section, store_name, key, top_k=int(k)))
    truth = planted_head_check(run["index"].get("model", ""), run["head_scores"],
                               run.get("weight_hash"))
    if truth:
        ly, h = truth["planted_short_head"]
        st.info(f"Ground truth: the organism's build dedicated head ({ly}, {h}) to the "
                f"short-thinking cue; it ranks #{truth['planted_head_rank']} of "
                f"{run['head_scores'].size} by head score.")

# ------------------------------------------------------------------ edit
if section == "Edit":
    modes = ed.get("modes") or {ed.get("mode", "project"): ed}
    names = {"project": "ThinkEdit projection", "recentre": "recentred (mean-ablation)",
             "project-effect": "ThinkEdit projection, heads chosen by measured effect"}
    df = lp.edit_frame(ed["before"], {f"after {names.get(k, k)}": v["after"]
                                      for k, v in modes.items()})
    fig = lp.edit_figure(df, "before / after the head edits")
    st.plotly_chart(fig, key="l_edit")
    ui.export_panel(fig, df, "length_edit_before_after", "l_edit_x")
    if len(modes) > 1:
        sel = ed.get("selection") or {}
        st.caption(f"Headline edit: **{names.get(ed['mode'], ed['mode'])}**"
                   + (f", chosen on {sel['n']} {sel['split']}-split prompts ({sel['rule']})."
                      if sel.get("n") else "."))
    rows = []
    for k, v in modes.items():
        txt = (f"**{names.get(k, k)}**: edited parameters {v['edited_param_fraction']:.3%} "
               f"of the model; the exported checkpoint reproduces the edited model to max "
               f"|Δlogit| = {v['export_max_logit_diff']:.2e}.")
        if "accuracy_change" in v:
            a = v["accuracy_change"]
            txt += (f" Accuracy change {a['mean']:+.3f} (paired bootstrap 95% CI "
                    f"[{a['ci_low']:+.3f}, {a['ci_high']:+.3f}]).")
        s_ = v["short_fraction_change"]
        txt += (f" Short-fraction change {s_['mean']:+.3f} "
                f"[{s_['ci_low']:+.3f}, {s_['ci_high']:+.3f}].")
        st.markdown(txt)
        rows += [{"edit": k, **r} for r in v["norms"]]
    st.dataframe(pd.DataFrame(rows), hide_index=True)
    ui.reproduce(reproduce.length_view(section, store_name, key))
    agree = agreement_table({names.get(k, k): v.get("behaviour") for k, v in modes.items()})
    if len(agree):
        st.markdown("**Per example, edited against unedited** (same evaluation prompts)")
        st.caption("Share of prompts with the same answer and the same whole completion, "
                   "share of matching aligned tokens (past the shorter completion counts "
                   "as a mismatch), where the completions first differ; rows per the "
                   "unedited model's short / long thinking.")
        st.dataframe(table_view(agree), hide_index=True)
        ui.export_panel(None, agree, "length_edit_agreement", "l_edit_agree_x")
    if ed.get("effect_scan"):
        sel = ed.get("selection") or {}
        st.markdown(f"**Measured effect of each candidate head's projection alone** "
                    f"({sel.get('n', '?')} train-split prompts; gain = accuracy change, "
                    "short-fraction drop). Heads that help are added best first while the "
                    "combined edit keeps improving.")
        scan = pd.DataFrame([{"layer": r["layer"], "head": r["head"],
                              "accuracy gain": r["gain"][0], "short drop": r["gain"][1]}
                             for r in ed["effect_scan"]])
        st.dataframe(scan, hide_index=True)
        ui.export_panel(None, scan, "length_head_effect_scan", "l_scan_x")
        if "project-effect" not in modes:
            st.caption("No candidate's edit helped on its own, so there is no edit of "
                       "effect-chosen heads in this run.")
    st.caption("Per edited head: ThinkEdit projection reports ‖W_O[h] v̂‖ before/after "
               "(→ 0: the head can no longer write along v̂); the recentred edit reports "
               "‖W_V[h] e‖ (→ 0) and the constant write along v̂ it leaves (the head's mean "
               "over long examples). See `interp/length/edit.py` for both rules.")
    if not ui.demo_mode():
        from interp import store as _store

        path = _store.DEFAULT_ROOT / "length_edited" / idx.get("export_dir",
                                                                idx["keys"]["heads"])
        if path.exists():
            name = st.text_input("register the edited checkpoint as", key="l_regname",
                                 value=f"length-edited-{idx['keys']['heads'][-6:]}")
            if st.button("Register model", key="l_register", icon=":material/save:"):
                from interp.models import register_model

                if ui.attempt(register_model, name, path, source="length edit") is not False:
                    st.success(f"Registered as `{name}`: pick it in the sidebar.")
        else:
            st.caption("The edited checkpoint is not in this cache (rerun the stages to "
                       "export it).")

# ------------------------------------------------------------------ SEAL
if section == "SEAL":
    seal = run["seal"]
    if seal is None:
        st.info("No SEAL result in this run.")
    else:
        head = ui.attempt(headline_of, seal)
        if head is not None:
            ref, pick = head["reference"], head["chosen"]
            c = st.columns(3)
            for col, (measure, label, fmt) in zip(c, (
                    ("hesitations", "hesitations / response", ".3f"),
                    ("mean_think_tokens", "mean thinking tokens", ".1f"),
                    ("accuracy", "accuracy", ".3f"))):
                if measure not in pick:
                    continue
                val = pick[measure]["value"] if measure == "accuracy" else pick[measure]
                old = ref[measure]["value"] if measure == "accuracy" else ref[measure]
                col.metric(label, f"{val:{fmt}}", f"{val - old:+{fmt}} vs α = 0",
                           delta_color=delta_color(measure) if val != old else "off",
                           delta_arrow="auto" if val != old else "off")
            drop = ref["mean_think_tokens"] - pick["mean_think_tokens"]
            st.caption(
                f"Headline α = **{head['alpha']:g}**, chosen from the sweep below by a rule: "
                f"{head['rule']}. Rule applied to the same {ref['n']} evaluation prompts as the "
                "figures (this run keeps no separate validation split for SEAL)."
                + (f" The drop ({drop:.2f} tokens) is within the noise (±{head['noise']:.2f}, "
                   "combined s.e.m.)." if 0 < drop <= head["noise"] else "")
                + (" Left out: " + "; ".join(f"α = {a:g}: {why}" for a, why in
                                            head["rejected"].items()) + "." if head["rejected"]
                   else "")
                + f" Green = better for shorter thinking with fewer hesitations. Vector "
                  f"{seal['sign']} at `{seal['hook']}`, anchor `{seal['anchor']}`, configured "
                  f"α = {seal['alpha']}; steps per class {json.dumps(seal['counts'])}.")
        if seal.get("sweep"):
            df = lp.sweep_frame(seal["sweep"])
            fig = lp.sweep_figure(df, "SEAL: steering strength (at separators inside the "
                                      "thinking only)",
                                  x_title="α (units of the SEAL vector; negative = away "
                                          "from reflection)",
                                  highlight=head["alpha"] if head else None)
            st.plotly_chart(fig, key="l_seal_sweep")
            ui.export_panel(fig, df, "length_seal_sweep", "l_seal_sweep_x", context={
                "setting": {"α": list(df["alpha"]), "layer": seal["layer"]}})
            ui.reproduce(reproduce.length_view(section, store_name, key))
            cols = [c for c in ("alpha", "hesitations", "mean_think_tokens", "accuracy",
                                "short_fraction") if c in df]
            st.dataframe(df[cols], hide_index=True)
            st.caption("Every α is one batched generation over the evaluation prompts; α = 0 "
                       "is the unsteered model; hesitations = hesitation words per response.")
            agree = per_alpha_agreement_table(seal["sweep"])
            if len(agree):
                st.markdown("**Per example, against the unsteered generations**")
                st.dataframe(table_view(agree), hide_index=True)
                ui.export_panel(None, agree, "length_seal_agreement", "l_seal_agree_x")
        st.dataframe(pd.DataFrame(seal["rules"]), hide_index=True)
        ui.export_panel(None, {k: v for k, v in seal.items()}, "length_seal", "l_seal_x")
