"""Home: what the workbench does, what is built, where to start."""

from __future__ import annotations

import streamlit as st

import pages.common as ui
from interp.models import ORGANISM_VARIANTS, available_models, organisms_dir

st.title("Reasoning-model diffing workbench")
st.markdown(
    "Compare a **base** language model with its **reasoning fine-tune**: where the "
    "weights moved, how the two behave, and which mechanisms make the fine-tune hesitate "
    "(`wait`), verify, or think longer. Every figure exports as PNG, SVG and HTML with its "
    "data as CSV/JSON, and the address bar always holds the current view.")

built = [v for v in ORGANISM_VARIANTS if (organisms_dir() / v / "config.json").exists()]
models = available_models()
c1, c2, c3 = st.columns(3)
c1.metric("Model organisms built", f"{len(built)} / {len(ORGANISM_VARIANTS)}")
c2.metric("Models available", len(models))
c3.metric("Mode", "hosted demo" if ui.demo_mode() else "full")

if not built:
    st.info(ui.NOT_BUILT_HELP, icon=":material/info:")
else:
    st.caption("Built organisms: " + ", ".join(f"`{v}`" for v in built))

st.subheader("Start here")
st.page_link("pages/models.py", label="Models: weight differences, side-by-side generation, "
             "behaviour", icon=":material/compare:")
st.markdown(
    "- The **model organisms** are tiny Qwen2-architecture models trained on multi-digit "
    "arithmetic with planted, known hesitation mechanisms, so every method can be checked "
    "against ground truth.\n"
    "- Any pair of causal LMs with the same architecture and tokenizer works too: choose "
    "*Other…* in the sidebar and give a hub name, a checkpoint folder or a `.gguf` file.\n"
    "- Colours: :blue[**base**] is blue, :orange[**fine-tune**] orange, "
    ":green[**difference**] green, on every page.")
