"""Reasoning-model diffing workbench: ``streamlit run app.py``.

The entry point only sets up the page, the navigation and the sidebar (model pair,
device, dtype); each page lives in ``pages/`` and talks to ``interp/`` through
``pages/common.py``. Sidebar state is mirrored into the URL (``base``, ``fine``,
``device``, ``dtype``), so a copied link reopens the same view.

Environment: ``INTERP_DEMO=1`` turns on the hosted-demo mode (read-only artifact
store, no training, prompts capped); ``INTERP_CACHE`` moves the artifact store.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st
import torch

import pages.common as ui
from interp.models import DEFAULT_PAIR, available_models

ROOT = Path(__file__).resolve().parent
OTHER = "Other…"
OPTIONAL_PAGES = (  # pages other capabilities add; shown once their file exists
    ("pages/adapters.py", "Adapters", ":material/hub:"),
    ("pages/length.py", "Reasoning length", ":material/straighten:"),
    ("pages/vectors.py", "Reasoning vectors", ":material/trending_flat:"),
    ("pages/hesitation.py", "Hesitation graph", ":material/account_tree:"),
)

st.set_page_config(page_title="Reasoning-model diffing workbench", layout="wide",
                   page_icon=":material/compare_arrows:")


def pages() -> list:
    out = [st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
           st.Page("pages/models.py", title="Models", icon=":material/compare:",
                   url_path="models")]
    for path, title, icon in OPTIONAL_PAGES:
        if (ROOT / path).exists():
            out.append(st.Page(path, title=title, icon=icon))
    return out


def model_picker(role: str, label: str, default: str, choices: list[str]) -> str:
    """A select over the known models plus *Other…* with a free-text field.

    The chosen spec is kept in ``st.session_state["pair_<role>"]`` and in the URL.
    """
    select_key, text_key = f"{role}_choice", f"{role}_other"
    options = list(dict.fromkeys([*choices, default])) + [OTHER]
    if select_key not in st.session_state:
        spec = ui.url_param(role, default).strip() or default
        st.session_state[select_key] = spec if spec in options else OTHER
        st.session_state[text_key] = "" if spec in options else spec
    built = set(choices)
    st.selectbox(label, options, key=select_key,
                 format_func=lambda s: s if s in built or s == OTHER else f"{s} (not built)")
    if st.session_state[select_key] == OTHER:
        spec = st.text_input(
            f"{label}: hub name, folder or .gguf", key=text_key,
            placeholder="org/name · /path/to/checkpoint · model.gguf").strip()
    else:
        spec = st.session_state[select_key]
    spec = spec or default
    st.session_state[f"pair_{role}"] = spec
    ui.set_url_param(role, spec, default)
    return spec


def sidebar() -> None:
    with st.sidebar:
        st.markdown("### :material/compare_arrows: Model pair")
        choices = available_models()
        base = model_picker("base", ":blue[Base]", DEFAULT_PAIR[0], choices)
        fine = model_picker("fine", ":orange[Fine-tune]", DEFAULT_PAIR[1], choices)
        if base == fine:
            st.caption(":material/warning: base and fine-tune are the same model")
        devices = ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (
            ["mps"] if torch.backends.mps.is_available() else [])
        c1, c2 = st.columns(2)
        with c1:
            ui.url_widget(st.selectbox, "Device", "device", "auto", options=devices,
                          help="auto: cuda > mps > cpu")
        with c2:
            ui.url_widget(st.selectbox, "Dtype", "dtype", "auto",
                          options=["auto", "float32", "bfloat16", "float16"],
                          help="auto: bfloat16 on CUDA, float32 elsewhere")
        if not choices:
            st.caption(":material/info: No models built yet: "
                       "`python -m interp organisms build`")
        st.divider()
        if ui.demo_mode():
            st.caption(":material/lock: Hosted demo: read-only results, no training, "
                       f"prompts up to {ui.DEMO_MAX_PROMPT_CHARS} characters.")
        st.caption(":material/link: The address bar holds this view: copy it to share.")


nav = st.navigation(pages())
sidebar()
nav.run()
