"""Pages under bad links and changed models (AppTest): a link value outside a widget's
range or of the wrong kind is replaced before the widget exists, with one warning line;
text longer than the context is one st.error; saved results name their models and warn
when those weights changed; the pages-folder switch never leaves ``pages.common``
half-imported."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from interp.store import PROJECT_ROOT, Store

APP = str(PROJECT_ROOT / "app.py")


def _warnings(at) -> str:
    return " | ".join(str(w.value) for w in at.warning)


def _errors(at) -> str:
    return " | ".join(str(e.value) for e in at.error)


# ------------------------------------------------------------------ pure check
@pytest.mark.parametrize("raw,kw,want,problem", [
    ("1e9", dict(cast=float, min_value=-3.0, max_value=3.0), 3.0, "above the maximum 3"),
    ("-7", dict(cast=float, min_value=-3.0, max_value=3.0), -3.0, "below the minimum -3"),
    ("nan", dict(cast=float, min_value=-3.0, max_value=3.0), 1.0, "not a finite number"),
    ("inf", dict(cast=float), 1.0, "not a finite number"),
    ("abc", dict(cast=int), 1.0, "not an integer"),
    ("7", dict(cast=float, min_value=0.05, max_value=1.0), 1.0, "above the maximum 1"),
    ("tpu", dict(options=["auto", "cpu"]), 1.0, "not one of auto, cpu"),
    ("0.5", dict(cast=float, min_value=-3.0, max_value=3.0), 0.5, None),
])
def test_link_values_are_checked_before_widgets(raw, kw, want, problem):
    from interp.validate import url_value

    value, why = url_value(raw, 1.0, **kw)
    assert value == want and type(value) is type(want)
    assert (why is None) if problem is None else (problem in why)


# ------------------------------------------------------------------ pages
@pytest.fixture(scope="module")
def organisms(tmp_path_factory):
    from tests.test_vectors_sweep import _tiny_organism

    root = tmp_path_factory.mktemp("pin")
    return {n: _tiny_organism(root / n, i) for i, n in enumerate(("instruct", "grpo", "sft",
                                                                   "base"))}


def _vectors_app(organisms, params):
    at = AppTest.from_file(APP, default_timeout=180)
    at.switch_page("pages/vectors.py")
    at.query_params.update({"vt": organisms["instruct"], "va": organisms["grpo"],
                            "vb": organisms["sft"], "vref": organisms["base"], **params})
    return at.run()


@pytest.mark.usefixtures("_navigation_mode")
def test_vectors_page_out_of_range_link_values(organisms, tmp_cache, monkeypatch, tmp_path):
    """Hole: `?valpha=1e9` raised Streamlit's range exception on the page; NaN drew NaN
    charts; junk was dropped silently."""
    import interp.vectors.demo as D

    monkeypatch.setattr(D, "DEMO_ROOT", tmp_path / "nodemo")
    at = _vectors_app(organisms, {"valpha": "1e9", "vprob": "-4", "vg": "attn,bogus",
                                  "vunit": "furlongs"})
    assert not at.exception, [e.value for e in at.exception]
    assert at.slider(key="valpha").value == 3.0
    assert at.number_input(key="vprob").value == 0
    w = _warnings(at)
    for text in ("valpha=1e9", "above the maximum 3", "vprob=-4", "bogus", "vunit=furlongs"):
        assert text in w, w
    at = _vectors_app(organisms, {"valpha": "nan"})
    assert not at.exception and at.slider(key="valpha").value == 1.0
    assert "not a finite number" in _warnings(at)


@pytest.mark.usefixtures("_navigation_mode")
def test_vectors_page_text_longer_than_the_context(organisms, tmp_cache, monkeypatch,
                                                   tmp_path):
    """Hole: the page's own text longer than the context failed with IndexError."""
    import interp.vectors.demo as D

    monkeypatch.setattr(D, "DEMO_ROOT", tmp_path / "nodemo")
    at = _vectors_app(organisms, {"vtext": " ".join(["1"] * 400)})
    assert not at.exception, [e.value for e in at.exception]
    assert "more than the model's context" in _errors(at)


@pytest.mark.usefixtures("_navigation_mode")
def test_vectors_page_warns_when_a_saved_sweep_is_for_other_weights(organisms, tmp_cache,
                                                                    monkeypatch, tmp_path):
    """Hole: saved sweeps were shown for a pair whose weights changed."""
    import interp.vectors.demo as D
    from interp.vectors.demo import run_experiment

    target = tmp_path / "instruct"
    shutil.copytree(organisms["instruct"], target)
    spec = {"target": str(target), "donor_a": organisms["grpo"], "donor_b": organisms["sft"],
            "reference": organisms["base"], "n_sweep": 3, "n_accuracy": 3,
            "max_new_tokens": 3, "alphas": [-1.0, 0.0, 1.0],
            "accuracy_alphas": [-1.0, 0.0, 1.0]}
    demo = Store(tmp_path / "demo")
    run_experiment(spec, demo, device="cpu", parts=("sweep", "accuracy"),
                   progress=lambda *a: None)
    monkeypatch.setattr(D, "DEMO_ROOT", demo.root)
    monkeypatch.setattr(D, "DEFAULT_SPEC", {**D.DEFAULT_SPEC, **{
        k: spec[k] for k in ("n_sweep", "n_accuracy", "max_new_tokens", "alphas",
                             "accuracy_alphas")}})
    params = {"vt": str(target)}
    at = _vectors_app(organisms, params)
    assert not at.exception, [e.value for e in at.exception]
    captions = " | ".join(str(c.value) for c in at.caption)
    assert f"target {target}" in captions and "weights" in captions
    assert "other weights" not in _warnings(at)
    _retrain(target)
    at = _vectors_app(organisms, params)
    assert not at.exception
    w = _warnings(at)
    assert "other weights" in w and str(target) in w, w
    assert [b for b in at.button if (b.key or "").startswith("vjob")]   # a rerun is offered


def _retrain(ckpt: Path) -> None:
    """Stand-in for rebuilding a model in place: same config, other weights."""
    from safetensors.torch import load_file, save_file

    f = ckpt / "model.safetensors"
    sd = load_file(str(f))
    name = sorted(sd)[0]
    sd[name] = sd[name] + 0.01
    save_file(sd, str(f), metadata={"format": "pt"})


@pytest.mark.usefixtures("_navigation_mode")
def test_adapters_page_names_the_pair_and_warns_on_changed_weights(tiny_pair_dirs, tmp_cache,
                                                                   tmp_path, monkeypatch):
    """Hole: the Adapters page listed runs without naming their pair, and showed them for a
    pair whose weights changed; `?bfrac=7` raised a range exception."""
    from interp.adapters.io import save_adapters
    from interp.adapters.train import TrainConfig, setup_models

    monkeypatch.delenv("INTERP_DEMO", raising=False)
    b, f = tmp_path / "b", tmp_path / "f"
    shutil.copytree(tiny_pair_dirs[0], b)
    shutil.copytree(tiny_pair_dirs[1], f)
    cfg = TrainConfig(base=str(b), reasoner=str(f), d_sae=8, data="random", max_len=12,
                      device="cpu", steps=2)
    save_adapters(setup_models(cfg), cfg, store=Store(tmp_cache),
                  history=[{"step": 1, "loss": 1.0, "kl": 0.5}])

    def app(params):   # the sidebar pair is the run's pair: the page lists its runs only
        at = AppTest.from_file(APP, default_timeout=180)
        at.switch_page("pages/adapters.py")
        at.query_params.update({"base": str(b), "fine": str(f), **params})
        return at.run()

    at = app({"bfrac": "7", "smooth": "0"})
    assert not at.exception, [e.value for e in at.exception]
    assert at.slider(key="bfrac").value == 1.0 and at.slider(key="smooth").value == 1
    w = _warnings(at)
    assert "bfrac=7" in w and "smooth=0" in w and "weights changed" not in w
    labels = at.multiselect(key="runs_select").options
    mine = [lab for lab in labels if str(f) in lab or "…" in lab]
    assert mine and all(" − " in lab for lab in labels)
    _retrain(f)
    at = app({})
    assert not at.exception
    w = _warnings(at)
    assert "weights changed" in w and "has other weights now" in w, w


@pytest.mark.usefixtures("_navigation_mode")
def test_length_page_form_link_values(tmp_cache, monkeypatch):
    monkeypatch.delenv("INTERP_DEMO", raising=False)
    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("pages/length.py")
    at.query_params.update({"lndir": "99999", "ltemp": "-1", "lsplit": "zigzag",
                            "lnsw": "ten"})
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    w = _warnings(at)
    for text in ("lndir=99999", "ltemp=-1", "lsplit=zigzag", "lnsw=ten"):
        assert text in w, w


# ------------------------------------------------------------------ v1 pages switch
SWITCH_SCRIPT = '''
import sys
import streamlit as st
from streamlit.runtime.pages_manager import PagesManager

runs = st.session_state.setdefault("runs", 0)
st.session_state["runs"] = runs + 1
if runs == 0:                      # a fresh server still in pages-folder mode
    sys.modules.pop("pages.common", None)
    PagesManager.uses_pages_directory = True
try:
    import pages.common as ui
except BaseException as e:
    st.session_state.setdefault("failed_imports", []).append(type(e).__name__)
    raise
st.session_state["imported"] = ui.__name__
st.write("page body")
'''


def test_pages_folder_switch_never_breaks_the_import(tmp_path):
    """Hole: after a server restart, a page opened while an old tab reconnects could show
    `ImportError: cannot import name 'common' from 'pages'`: the switch out of the
    pages-folder mode interrupted the import of pages.common with a rerun, and another
    session importing it at that moment got the half-made module. The import now always
    completes; the rerun comes at the page's first element."""
    import sys

    script = tmp_path / "switch.py"
    script.write_text(SWITCH_SCRIPT)
    at = AppTest.from_file(str(script), default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.session_state["runs"] == 2            # the switch reran the script once
    assert "failed_imports" not in at.session_state
    assert at.session_state["imported"] == "pages.common"
    assert "pages.common" in sys.modules
