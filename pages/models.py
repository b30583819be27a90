"""Models: the pair, where their weights differ, and how they answer the same prompt.

URL state: ``base``, ``fine``, ``device``, ``dtype`` (sidebar); ``metric``, ``prompt``,
``chat``, ``max_new``, ``gen`` (this page); the token-by-token comparison: ``ttext``,
``tsrc``, ``tnew``, ``tk``, ``tdir``, ``tok``.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

import pages.common as ui
from interp import reproduce
from interp.generation import encode_user_prompt, generate
from interp.models import cache_root, validate_pair
from interp.organisms.report import behaviour_key_table, behaviour_table, decomposition_frame
from interp.plots.common import METRIC_LABELS, table_view, weight_diff_bars, weight_diff_heatmap
from interp.plots.pair import TOKEN_MEASURES, head_diff_heatmap, token_logprob_lines, token_strip
from interp.tokendiff import continuation, token_diff
from interp.weights import (
    head_diff_pivot,
    head_diff_table,
    weight_diff_groups,
    weight_diff_pivot,
    weight_diff_table,
)

DEFAULT_PROMPT = "what is 12 + 34 ?"
# the organisms' think format (see interp/organisms/task.py); `easy` instead of `add`
# makes the reasoner skip its thinking
ORGANISM_PROMPT = "Q add 0 3 7 5 + 4 9 2 8 = <think>"


# ------------------------------------------------------------------ cached backend calls
@st.cache_data(max_entries=16, show_spinner=False)
def _validate(base: str, fine: str, stamp_base: str, stamp_fine: str) -> None:
    validate_pair(base, fine)


@st.cache_data(max_entries=8, show_spinner=False)
def _weight_table(path_a: str, path_b: str, stamp_a: str, stamp_b: str) -> pd.DataFrame:
    return weight_diff_table(path_a, path_b)


@st.cache_data(max_entries=8, show_spinner=False)
def _head_table(path_a: str, path_b: str, stamp_a: str, stamp_b: str) -> pd.DataFrame:
    return head_diff_table(path_a, path_b)


@st.cache_data(max_entries=16, show_spinner=False)
def _token_diff(base_spec: str, fine_spec: str, device: str, dtype: str, stamps: tuple,
                text: str, source: str, max_new: int, k: int,
                max_chars: int | None) -> dict:
    base = ui.cached_model(base_spec, device, dtype)
    fine = ui.cached_model(fine_spec, device, dtype)
    ids = encode_user_prompt(base.tokenizer, text, max_chars=max_chars,
                             max_new_tokens=max_new if source != "text" else 0,
                             n_ctx=base.cfg.n_ctx)
    with ui.work_slot("the token comparison"):
        seq = ids if source == "text" else continuation(
            fine if source == "fine" else base, ids, ui.max_new_tokens(max_new))
        d = token_diff(base, fine, seq, k=k, prompt_len=len(ids))
    return {"frame": d.frame(base.tokenizer), "summary": d.summary(),
            "prompt_tokens": len(ids), "tokens": len(seq)}


@st.cache_data(max_entries=32, show_spinner=False)
def _generate(spec: str, device: str, dtype: str, stamp: str, prompt: str, chat: bool,
              max_new: int, max_chars: int | None) -> dict:
    model = ui.cached_model(spec, device, dtype)
    max_new = ui.max_new_tokens(max_new)  # the demo's cap, whatever the widget held
    ids = encode_user_prompt(model.tokenizer, prompt, chat=chat, max_chars=max_chars,
                             max_new_tokens=max_new, n_ctx=model.cfg.n_ctx)
    with ui.work_slot("the generation"):
        g = generate(model, [ids], max_new_tokens=max_new, temperature=0.0)[0]
    return {"prompt": model.tokenizer.decode(ids), "prompt_tokens": len(ids),
            "text": g.text, "new_tokens": len(g.output_ids), "finished": g.finished}


def results_shown(state_key: str, url_key: str, clicked: bool, inputs: tuple) -> bool:
    """Whether a section shows its results: after its button was pressed for exactly
    these inputs, or when the page was opened from a link with ``url_key=1``; the flag
    is kept in the URL."""
    if clicked:
        st.session_state[state_key] = inputs
    elif state_key not in st.session_state and ui.url_param(url_key, False, ui.as_bool):
        st.session_state[state_key] = inputs  # opened from a link with results
    show = st.session_state.get(state_key) == inputs
    ui.set_url_param(url_key, show, False)
    return show


# ------------------------------------------------------------------ page
st.title("Models")
base_spec, fine_spec, device, dtype, stamps = ui.pair_header()
failure: Exception | None = None
with st.status("Loading the pair…", expanded=False) as status:
    bar = ui.progress_callback("", container=status)
    bar(0, 3, step="checking that the pair is comparable")
    try:
        _validate(base_spec, fine_spec, *stamps)
        bar(1, 3, step=f"loading {ui.short_name(base_spec)}")
        base = ui.cached_model(base_spec, device, dtype)
        bar(2, 3, step=f"loading {ui.short_name(fine_spec)}")
        fine = ui.cached_model(fine_spec, device, dtype)
        bar(3, 3, step="ready")
    except Exception as e:  # noqa: BLE001 - shown below, outside the collapsed box
        failure = e
        status.update(label="Could not load the pair", state="error", expanded=False)
    else:
        status.update(label=f"Pair loaded · {ui.count(base.n_params())} parameters each · "
                            f"{base.device} · {str(base.dtype).removeprefix('torch.')}",
                      state="complete", expanded=False)
if failure is not None:
    ui.show_error(failure)
    st.stop()

# ------------------------------------------------------------------ model cards
st.subheader("The pair")
cards = st.columns(2)
for col, role, colour, model in ((cards[0], "Base", "blue", base),
                                 (cards[1], "Fine-tune", "orange", fine)):
    d = model.describe()
    with col.container(border=True):
        st.markdown(f"#### :{colour}[{role}] · `{ui.short_name(model.spec)}`",
                    help=f"spec: {model.spec}")
        m = st.columns([3, 2, 2])
        m[0].metric("parameters", ui.count(model.n_params()))
        m[1].metric("layers", d["n_layers"])
        m[2].metric("d_model", d["d_model"])
        st.caption(f"{d['architecture']} · {d['n_heads']} heads · d_mlp {d['d_mlp']} · "
                   f"vocab {d['d_vocab']:,} · "
                   f"source {d['source']} · weights sha256 `{d['weight_hash'][:12]}`")

# ------------------------------------------------------------------ weight differences
st.subheader("Where the weights moved")
table = ui.attempt(_weight_table, str(base.path), str(fine.path), *stamps)
if table is not None:
    metric = ui.url_widget(st.radio, "Measure", "metric", "relative",
                           options=list(METRIC_LABELS), format_func=METRIC_LABELS.get,
                           horizontal=True)
    st.caption(
        "Per parameter tensor in the checkpoints' own (HF) parameter space: "
        "Δθ = θ_fine − θ_base; relative change ‖Δθ‖ / ‖θ_base‖ (Frobenius norms). "
        "A cell or bar pools its tensors: √Σ‖Δθ‖² / √Σ‖θ_base‖². Tied embeddings are "
        "counted once, as embed.")
    left, right = st.columns([3, 2])
    with left:
        pivot = weight_diff_pivot(table, metric)
        fig_h = weight_diff_heatmap(pivot, metric)
        st.markdown("**By layer and module**")
        st.plotly_chart(fig_h, key="fig_weight_heatmap")
        ui.export_panel(fig_h, pivot, "weight-diff-heatmap", key="exp_heatmap")
    with right:
        groups = weight_diff_groups(table)
        fig_b = weight_diff_bars(groups, metric)
        st.markdown("**By block** (embedding and unembedding in grey)")
        st.plotly_chart(fig_b, key="fig_weight_bars")
        ui.export_panel(fig_b, groups, "weight-diff-by-block", key="exp_bars")
    heads = ui.attempt(_head_table, str(base.path), str(fine.path), *stamps)
    if heads is not None and not heads.empty:
        st.markdown("**By attention head**")
        st.caption(
            "Each head's slice of the projection weights: rows h·d_head … (h+1)·d_head−1 "
            "of W_Q, W_K, W_V (K and V count key-value heads), columns of W_O; biases "
            "left out. Cell: ‖ΔW_h‖ / ‖W_h,base‖ (or ‖ΔW_h‖).")
        head_pivot = head_diff_pivot(heads, metric)
        fig_heads = head_diff_heatmap(head_pivot, metric)
        st.plotly_chart(fig_heads, key="fig_weight_heads")
        ui.export_panel(fig_heads, head_pivot.reset_index(), "weight-diff-by-head",
                        key="exp_heads")
    ui.reproduce(reproduce.models_weights(base_spec, fine_spec, metric))
    with st.expander(f"All {len(table)} tensors"):
        shown = table.assign(shape=table["shape"].map(lambda s: "×".join(map(str, s))))
        st.dataframe(shown, hide_index=True, column_config={
            "relative": st.column_config.NumberColumn(format="%.4g"),
            "delta_norm": st.column_config.NumberColumn("‖Δθ‖", format="%.4g"),
            "norm_a": st.column_config.NumberColumn("‖θ_base‖", format="%.4g"),
            "norm_b": st.column_config.NumberColumn("‖θ_fine‖", format="%.4g"),
            "cosine": st.column_config.NumberColumn(format="%.6f")})
        ui.export_panel(None, shown, "weight-diff-tensors", key="exp_tensors")

# ------------------------------------------------------------------ generation
st.subheader("Side by side")
st.caption("Greedy decoding (temperature 0) from both models on the same prompt.")
organisms = base.source == fine.source == "organism"   # as the loader resolved the specs
has_template = bool(getattr(base.tokenizer, "chat_template", None))
with st.container(border=True):
    prompt = ui.url_widget(st.text_area, "Prompt", "prompt",
                           ORGANISM_PROMPT if organisms else DEFAULT_PROMPT, height=90,
                           max_chars=ui.max_prompt_chars(),
                           help="organisms: `Q add a3 a2 a1 a0 + b3 b2 b1 b0 = <think>`; "
                                "`easy` instead of `add` is the short-thinking cue"
                           if organisms else None)
    c1, c2, c3 = st.columns([2, 2, 1], vertical_alignment="bottom")
    with c1:
        # never on by itself: the template changes what the models read (and answer)
        chat = ui.url_widget(st.checkbox, "Use the chat template", "chat", False, bool,
                             disabled=not has_template,
                             help="wrap the prompt in the tokenizer's chat template as a "
                                  "user turn" if has_template
                             else "this tokenizer has no chat template")
    with c2:
        max_new = ui.url_widget(st.number_input, "New tokens", "max_new", 48, int,
                                min_value=1, max_value=ui.max_new_tokens(512), step=8)
    with c3:
        clicked = st.button("Generate", key="generate", type="primary",
                            icon=":material/play_arrow:")
chat = bool(chat and has_template)
st.caption(":material/chat: Chat template **on**: the prompt is wrapped as a user turn in "
           "the tokenizer's chat template." if chat else
           ":material/notes: Chat template **off**: the models read the prompt exactly as "
           "typed" + (" (tick the box to wrap it as a user turn)." if has_template else "."))
inputs = (base_spec, fine_spec, prompt, chat, int(max_new))
if results_shown("generated_for", "gen", clicked, inputs):
    outs = {}
    for role, spec, stamp in (("base", base_spec, stamps[0]), ("fine", fine_spec, stamps[1])):
        with st.spinner(f"Generating with {spec}…"):
            outs[role] = ui.attempt(_generate, spec, device, dtype, stamp, prompt, chat,
                                    int(max_new), ui.max_prompt_chars())
        if outs[role] is None:
            break
    if all(o is not None for o in outs.values()) and len(outs) == 2:
        with st.expander("Prompt as the models see it"):
            st.code(outs["base"]["prompt"], language=None, wrap_lines=True)
        cols = st.columns(2)
        for col, role, colour, spec in ((cols[0], "base", "blue", base_spec),
                                        (cols[1], "fine", "orange", fine_spec)):
            o = outs[role]
            with col.container(border=True):
                st.markdown(f"**:{colour}[{'Base' if role == 'base' else 'Fine-tune'}]** "
                            f"`{ui.short_name(spec)}`")
                st.code(o["text"] or "(no text)", language=None, wrap_lines=True)
                st.caption(f"{o['new_tokens']} new tokens · "
                           + ("stopped at end-of-sequence" if o["finished"]
                              else "stopped at the token limit"))
        ui.export_panel(None, [{"model": r, "spec": s, **outs[r]} for r, s in
                               (("base", base_spec), ("fine", fine_spec))],
                        "generations", key="exp_gen")
        ui.reproduce(reproduce.models_generate(base_spec, fine_spec, prompt, chat,
                                               ui.max_new_tokens(int(max_new)), device, dtype))
else:
    st.caption(":material/keyboard_return: Press **Generate** to compare the two answers.")

# ------------------------------------------------------------------ token by token
st.subheader("Token by token")
st.caption(
    "Both models read the same tokens (teacher forcing). For each token: its "
    "log-probability under each model given the tokens before it, the KL divergence of "
    "the two next-token distributions that predicted it, both ways, from the full "
    "softmaxes (nats), and the tokens each model preferred there. Where the organisms' "
    "arithmetic fixes a token (answer digits after `A` and `check`, column results) it is "
    "marked ✓ or ✗.")
SOURCES = {"fine": "the fine-tune's continuation", "base": "the base's continuation",
           "text": "the text as typed"}
with st.container(border=True):
    ttext = ui.url_widget(st.text_area, "Prompt or text", "ttext",
                          ORGANISM_PROMPT if organisms else DEFAULT_PROMPT, height=80,
                          max_chars=ui.max_prompt_chars(),
                          help="with a continuation, the prompt the model continues "
                               "(greedy); with the text as typed, any sequence, e.g. a "
                               "whole organism trace")
    c1, c2, c3, c4 = st.columns([5, 2, 1, 1.4], vertical_alignment="bottom")
    with c1:
        tsrc = ui.url_widget(st.segmented_control, "Compare on", "tsrc", "fine",
                             options=list(SOURCES), format_func=SOURCES.get) or "fine"
    with c2:
        tnew = ui.url_widget(st.number_input, "New tokens", "tnew", 48, int, min_value=1,
                             max_value=ui.max_new_tokens(512), step=8,
                             disabled=tsrc == "text")
    with c3:
        tk = ui.url_widget(st.number_input, "Top k", "tk", 5, int, min_value=1,
                           max_value=20, help="tokens each model prefers, per position")
    with c4:
        compare = st.button("Compare", key="compare", type="primary",
                            icon=":material/compare_arrows:")
tinputs = (base_spec, fine_spec, ttext, tsrc, int(tnew), int(tk))
if results_shown("compared_for", "tok", compare, tinputs):
    with st.spinner("Comparing token by token…"):
        res = ui.attempt(_token_diff, base_spec, fine_spec, device, dtype, stamps, ttext,
                         tsrc, int(tnew), int(tk), ui.max_prompt_chars())
    if res is not None:
        frame, summ = res["frame"], res["summary"]
        m = st.columns(4)
        m[0].metric("tokens compared", summ["n_tokens"],
                    help=f"{res['prompt_tokens']} of {res['tokens']} tokens are the prompt")
        m[1].metric("mean KL(fine ‖ base)", f"{summ['mean_kl_fine_base']:.3g} nats")
        m[2].metric("mean KL(base ‖ fine)", f"{summ['mean_kl_base_fine']:.3g} nats")
        if summ["n_marked"]:
            m[3].metric("marked tokens right", f"{summ['marked_correct']:.0%}",
                        help=f"{summ['n_marked']} tokens the task fixes; top-1 right: base "
                             f"{summ['base_top1_correct']:.0%}, fine-tune "
                             f"{summ['fine_top1_correct']:.0%}")
        else:
            m[3].metric("marked tokens", "none", help="no token of this text is fixed by "
                        "the organisms' arithmetic")
        tdir = ui.url_widget(st.radio, "Colour by", "tdir", "kl_fine_base",
                             options=list(TOKEN_MEASURES), format_func=TOKEN_MEASURES.get,
                             horizontal=True)
        fig_strip = token_strip(frame, tdir)
        st.plotly_chart(fig_strip, key="fig_token_strip")
        ui.export_panel(fig_strip, frame, f"token-strip-{tdir}", key="exp_strip")
        fig_lp = token_logprob_lines(frame)
        st.plotly_chart(fig_lp, key="fig_token_logprob")
        ui.export_panel(fig_lp, frame, "token-logprobs", key="exp_token_lp")
        st.dataframe(frame, hide_index=True, key="token_table", column_config={
            "logprob_base": st.column_config.NumberColumn("log p base", format="%.3f"),
            "logprob_fine": st.column_config.NumberColumn("log p fine", format="%.3f"),
            "delta_logprob": st.column_config.NumberColumn("Δ log p", format="%+.3f"),
            "kl_fine_base": st.column_config.NumberColumn("KL(fine‖base)", format="%.4g"),
            "kl_base_fine": st.column_config.NumberColumn("KL(base‖fine)", format="%.4g"),
            "top_base": st.column_config.TextColumn(f"base top {int(tk)} (p)"),
            "top_fine": st.column_config.TextColumn(f"fine top {int(tk)} (p)")})
        ui.export_panel(None, frame, "token-table", key="exp_token_table")
else:
    st.caption(":material/keyboard_return: Press **Compare** to compare the two models "
               "token by token.")

# ------------------------------------------------------------------ behaviour
st.subheader("Behaviour of the organisms")
arts = ui.attempt(ui.store(cache_root() / "demo").list, "organism_behaviour") or []
behaviour = behaviour_table(arts[0]) if arts else None
if behaviour is not None and behaviour.empty:
    behaviour = None
if behaviour is None:
    st.caption(":material/info: No behaviour table yet: it is written when the organisms "
               "are built and evaluated (`python -m interp organisms build`), as the "
               "`organism_behaviour` artifact.")
else:
    st.caption("Accuracy, hesitation rate and thinking length per organism, measured on "
               f"held-out problems (artifact `{arts[0].key}`).")
    st.dataframe(table_view(behaviour_key_table(behaviour)))
    with st.expander(f"All {behaviour.shape[1]} measures per variant", icon=":material/table:"):
        st.dataframe(table_view(behaviour))
    ui.export_panel(None, behaviour, "organism-behaviour", key="exp_behaviour",
                    context={"run": arts[0].key})
    dec = decomposition_frame(arts[0])
    if len(dec):
        st.markdown("**By prompt tag** (think format; `easy` prompts invite short thinking)")
        st.caption("Per variant and prompt tag: accuracy, short thinking, hesitation rates "
                   "and the kind of each wrong answer (short_thinking: after empty "
                   "thinking; dropped_final_carry: the sum without its leading 1; "
                   "carry_error: every wrong digit off by one; other). Compare sft and grpo "
                   "to see where grpo's gain comes from.")
        st.dataframe(table_view(dec), hide_index=True)
        ui.export_panel(None, dec, "organism-behaviour-by-tag", key="exp_behaviour_tag")
