"""Reasoning-model diffing workbench: ``streamlit run app.py``.

The entry point only sets up the page, the navigation and the sidebar (model pair,
device, dtype); each page lives in ``pages/`` and talks to ``interp/`` through
``pages/common.py``. Sidebar state is mirrored into the URL (``base``, ``fine``,
``device``, ``dtype``), so a copied link reopens the same view.

Environment: ``INTERP_DEMO=1`` (or ``enabled = true`` in the ``[demo]`` table of the
``INTERP_CONFIG`` file, see ``deploy/demo.toml``) turns on the hosted-demo mode: organism
models only, read-only artifact store, no training, capped prompts, tokens and work; each
page says in one line what it allows. ``INTERP_CACHE`` moves the artifact store.
The sidebar's *Download report (zip)* bundles the current page's figures and data.
"""

from __future__ import annotations

from pathlib import Path

from interp.serving import wait_until_warm

wait_until_warm()  # deploy/serve.py may still be importing what follows: never twice at once

import streamlit as st  # noqa: E402
import torch  # noqa: E402

import pages.common as ui  # noqa: E402
from interp import serving  # noqa: E402
from interp.models import DEFAULT_PAIR, available_models  # noqa: E402

ROOT = Path(__file__).resolve().parent
OTHER = "Other…"
DEMO_ALLOWS = {  # page title -> what the hosted demo allows there (one line)
    "Home": "browse the committed results of the model organisms; nothing is trained or "
            "saved, and only the organisms load.",
    "Models": "weight differences and side-by-side generation of the organisms ({limits}).",
    "Adapters": "the committed adapter runs and their evaluations; training and "
                "evaluation are off.",
    "Reasoning length": "the committed run, every tab; new runs and edits are off.",
    "Reasoning vectors": "task and control vectors of the organisms, traces at any α and "
                         "own generations ({limits}); the committed sweeps, no new ones.",
    "Features": "the committed feature collection and map of the demo adapters; ablate or "
                "clamp a feature in a short generation ({limits}); labels are not saved.",
    "Hesitation graph": "attribution graphs of short organism prompts ({limits}); graphs "
                        "are computed, never saved.",
    "Hesitation features": "the committed hesitation study of the demo adapters (ranking, "
                           "clusters, ablation and clamping); no new studies.",
    "Amplify": "logit-diff amplified sampling of the organisms, up to 8 samples and 4 α "
               "values at a time ({limits}).",
}
DEMO_DEFAULT = ("the committed results and light computation on the organisms ({limits}); "
                "no training, no other models.")
OPTIONAL_PAGES = (  # pages other capabilities add; shown once their file exists
    ("pages/adapters.py", "Adapters", ":material/hub:"),
    ("pages/length.py", "Reasoning length", ":material/straighten:"),
    ("pages/vectors.py", "Reasoning vectors", ":material/trending_flat:"),
    ("pages/features.py", "Features", ":material/scatter_plot:"),
    ("pages/hesitation.py", "Hesitation graph", ":material/account_tree:"),
    ("pages/hesitation_study.py", "Hesitation features", ":material/troubleshoot:"),
    ("pages/amplify.py", "Amplify", ":material/volume_up:"),
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

    The chosen spec is kept in ``st.session_state["pair_<role>"]`` and in the URL. In
    demo mode only the organisms and the models the demo config lists are offered (no
    *Other…*, so nothing can be typed); a link naming another model falls back to the
    default and says so.
    """
    select_key, text_key = f"{role}_choice", f"{role}_other"
    demo = ui.demo_mode()
    if demo:   # the organisms and the models the demo config lists: never a typed name
        allowed = serving.demo_models(ui.demo_settings())
        choices = [c for c in choices if c in allowed] + [
            m for m in allowed if not m.startswith("organism:")]
    options = list(dict.fromkeys([*choices, default])) + ([] if demo else [OTHER])
    if select_key not in st.session_state:
        spec = ui.url_param(role, default).strip() or default
        if demo and spec not in options:
            st.session_state[f"{role}_refused"] = spec
            spec = default
        st.session_state[select_key] = spec if spec in options else OTHER
        st.session_state[text_key] = "" if spec in options else spec
    built = set(choices)
    st.selectbox(label, options, key=select_key,
                 format_func=lambda s: s if s in built or s == OTHER else f"{s} (not built)")
    refused = st.session_state.get(f"{role}_refused")
    if refused and st.session_state[select_key] == default:  # until another is chosen
        st.caption(f":material/lock: `{refused[:80]}` is not available in the hosted demo "
                   f"(it loads {', '.join(options)}); showing `{default}`.")
    if st.session_state[select_key] == OTHER:
        spec = st.text_input(
            f"{label}: hub name, folder or .gguf", key=text_key,
            placeholder="org/name · /path/to/checkpoint · model.gguf").strip()
    else:
        spec = st.session_state[select_key]
    spec = spec or default
    if demo and not serving.demo_allows_model(spec, ui.demo_settings()):
        st.error(serving.refusal(spec[:80], ui.demo_settings()) + ".",
                 icon=":material/lock:")   # a last guard: nothing else reaches the loaders
        spec = default
    st.session_state[f"pair_{role}"] = spec
    ui.set_url_param(role, spec, default)
    return spec


def demo_line(title: str) -> str:
    """The one line a page shows in demo mode: what it allows."""
    limits = ui.demo_settings().describe()
    return DEMO_ALLOWS.get(title, DEMO_DEFAULT).format(limits=limits)


def sidebar(page_title: str) -> None:
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
            st.caption(":material/lock: Hosted demo: organism models only, read-only "
                       f"results, no training; {ui.demo_settings().describe()}.")
        st.caption(":material/link: The address bar holds this view: copy it to share.")
        ui.report_button(page_title)


if ui.attempt(ui.demo_settings) is None:  # a broken config: say so, serve nothing
    st.stop()
nav = st.navigation(pages())
sidebar(nav.title)
if ui.demo_mode():
    st.caption(f":material/lock: **Hosted demo**: {demo_line(nav.title)}")
nav.run()
