"""Amplify: sample from the fine-tune with its difference to the base turned up,
logits_fine + α·(logits_fine − logits_base), to surface behaviours the fine-tune made rare.

URL state: ``base``, ``fine``, ``device``, ``dtype`` (sidebar); ``aprompt``, ``aalpha``
(α of the side-by-side samples), ``agrid`` (α values of the count chart), ``an``
(samples per α), ``anew`` (new tokens), ``atemp`` (temperature), ``aseed``, ``asam``
(results shown).
"""

from __future__ import annotations

import streamlit as st

import pages.common as ui
from interp import reproduce
from interp.amplify import amplify
from interp.generation import encode_user_prompt
from interp.models import validate_pair
from interp.plots.pair import amplify_curve
from interp.tasks.markers import hesitation_ids
from interp.validate import finite_values

DEFAULT_PROMPT = "what is 12 + 34 ?"
ORGANISM_PROMPT = "Q add 0 3 7 5 + 4 9 2 8 = <think>"
MAX_ALPHAS = 8
DEMO_SAMPLES, DEMO_ALPHAS = 8, 4


@st.cache_data(max_entries=16, show_spinner=False)
def _validate(base: str, fine: str, stamp_base: str, stamp_fine: str) -> None:
    validate_pair(base, fine)


def parse_alphas(text: str, chosen: float) -> list[float]:
    """The comma-separated α grid, with 0 and the chosen α, sorted and unique."""
    items = [x for x in text.replace(";", ",").split(",") if x.strip()]
    values = finite_values(items, "α grid") if items else []
    return sorted(set([0.0, float(chosen), *values]))


st.title("Amplify the fine-tune")
st.caption(
    "Both models read the same tokens (each with its own KV cache); the next token is "
    "sampled from **logits_fine + α·(logits_fine − logits_base)**. α = 0 is the "
    "fine-tune's own sampling, α > 0 exaggerates what fine-tuning changed, α = −1 samples "
    "from the base. Every α uses the same seed, so its samples share their random "
    "numbers with the α = 0 samples.")
base_spec, fine_spec, device, dtype, stamps = ui.pair_header()
if not ui.attempt(lambda: _validate(base_spec, fine_spec, *stamps) or True):
    st.stop()
base = ui.attempt(ui.cached_model, base_spec, device, dtype)
fine = ui.attempt(ui.cached_model, fine_spec, device, dtype) if base is not None else None
if fine is None:
    st.stop()

demo = ui.demo_mode()
organisms = base.source == fine.source == "organism"
with st.container(border=True):
    prompt = ui.url_widget(st.text_area, "Prompt", "aprompt",
                           ORGANISM_PROMPT if organisms else DEFAULT_PROMPT, height=80,
                           max_chars=ui.max_prompt_chars())
    c = st.columns([3, 3, 2, 2, 2, 2], vertical_alignment="bottom")
    alpha = ui.url_widget(c[0].slider, "α", "aalpha", 1.0, float, min_value=-1.0,
                          max_value=8.0, step=0.25,
                          help="the samples shown next to the fine-tune's own")
    grid_text = ui.url_widget(c[1].text_input, "α values of the chart", "agrid", "0, 1, 2, 4",
                              help=f"comma-separated; 0 and the chosen α are always run; "
                                   f"at most {DEMO_ALPHAS if demo else MAX_ALPHAS} values")
    n_samples = ui.url_widget(c[2].number_input, "Samples per α", "an", 8, int, min_value=1,
                              max_value=DEMO_SAMPLES if demo else 64)
    max_new = ui.url_widget(c[3].number_input, "New tokens", "anew", 48, int, min_value=1,
                            max_value=ui.max_new_tokens(256), step=8)
    temperature = ui.url_widget(c[4].number_input, "Temperature", "atemp", 1.0, float,
                                min_value=0.0, max_value=4.0, step=0.1,
                                help="0 is greedy: every sample of one α is the same")
    seed = ui.url_widget(c[5].number_input, "Seed", "aseed", 0, int, min_value=0)
alphas = ui.attempt(parse_alphas, grid_text, alpha)
if alphas is None:
    st.stop()
limit = DEMO_ALPHAS if demo else MAX_ALPHAS
if len(alphas) > limit:
    st.error(f"{len(alphas)} α values (with 0 and the chosen α); at most {limit}: "
             "shorten the list.", icon=":material/error:")
    st.stop()
n_samples = min(int(n_samples), DEMO_SAMPLES) if demo else int(n_samples)
max_new = ui.max_new_tokens(int(max_new))
words = ("wait",)
counted = ui.attempt(hesitation_ids, fine.tokenizer, words) or {}
st.caption(f"{len(alphas)} α × {n_samples} samples × up to {max_new} new tokens, both models "
           f"stepped at every token: up to {2 * len(alphas) * n_samples * max_new:,} "
           "single-token forward passes (batched over the samples). Counted behaviour: "
           "hesitation tokens "
           + ", ".join(f"`{w}` (ids {', '.join(map(str, ids))})" for w, ids in counted.items())
           + ".")

inputs = (base_spec, fine_spec, device, dtype, prompt, tuple(alphas), n_samples, max_new,
          float(temperature), int(seed))
clicked = st.button("Sample", key="sample", type="primary", icon=":material/play_arrow:")
if clicked or ("amp_for" not in st.session_state and ui.url_param("asam", False, ui.as_bool)):
    st.session_state["amp_for"] = inputs
show = st.session_state.get("amp_for") == inputs
ui.set_url_param("asam", show, False)
if not show:
    st.caption(":material/keyboard_return: Press **Sample** to draw the samples.")
    st.stop()

held = st.session_state.get("amp_result")
if held is None or held[0] != inputs:
    def run():
        ids = encode_user_prompt(fine.tokenizer, prompt, max_chars=ui.max_prompt_chars(),
                                 max_new_tokens=max_new, n_ctx=fine.cfg.n_ctx)
        bar = ui.progress_callback("sampling")
        return amplify(base, fine, ids, alphas, n_samples=n_samples, max_new_tokens=max_new,
                       temperature=float(temperature), seed=int(seed), words=words,
                       progress=bar)

    result = ui.attempt_work("the amplified sampling", run)
    if result is None:
        st.stop()
    st.session_state["amp_result"] = held = (inputs, result)
result = held[1]

st.subheader("Hesitations against α")
fig = amplify_curve(result.summary, words)
st.plotly_chart(fig, key="fig_amplify")
ui.export_panel(fig, result.summary, "amplify-hesitations-vs-alpha", key="exp_amp_curve")
ui.reproduce(reproduce.amplify_samples(base_spec, fine_spec, prompt, alphas, n_samples,
                                       max_new, float(temperature), int(seed), device, dtype))
st.dataframe(result.summary, hide_index=True, column_config={
    "mean_hesitations": st.column_config.NumberColumn("hesitations / sample", format="%.3g"),
    "sem_hesitations": st.column_config.NumberColumn("± s.e.m.", format="%.2g"),
    "share_with_hesitation": st.column_config.NumberColumn("share with ≥ 1",
                                                           format="percent"),
    "mean_new_tokens": st.column_config.NumberColumn("new tokens", format="%.1f")})

st.subheader("Samples side by side")
cols = st.columns(2)
for col, a, label in ((cols[0], 0.0, "**:orange[Fine-tune]** (α = 0)"),
                      (cols[1], float(alpha), f"**:green[Amplified]** (α = {alpha:g})")):
    with col:
        st.markdown(label)
        rows = result.samples[result.samples["alpha"] == a]
        for r in rows.itertuples():
            st.code(r.text or "(no text)", language=None, wrap_lines=True)
            st.caption(f"sample {r.sample} · {r.new_tokens} new tokens · "
                       f"{r.hesitations} hesitation token(s)"
                       + (" · stopped at end-of-sequence" if r.finished else ""))
ui.export_panel(None, result.samples, "amplify-samples", key="exp_amp_samples")
