"""AppTest of the Amplify page on a tiny pair: samples, the count chart, URL state."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from interp.generation import generate
from interp.models import load_model
from interp.store import PROJECT_ROOT

APP = str(PROJECT_ROOT / "app.py")
PAGE = "pages/amplify.py"

pytestmark = pytest.mark.usefixtures("_navigation_mode")


def _app(params: dict[str, str]) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.query_params.update(params)
    at.switch_page(PAGE)
    return at.run()


def _values(v) -> list[float]:
    """A plotly array (plain list or base64 typed array) as floats."""
    if isinstance(v, dict):
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"])).tolist()
    return [float(x) for x in v]


@pytest.fixture
def params(tmp_cache, tiny_pair_dirs):
    base, fine = tiny_pair_dirs
    return {"base": str(base), "fine": str(fine), "device": "cpu", "aprompt": "1 + 2 = wait",
            "an": "3", "anew": "6", "agrid": "0, 2", "aalpha": "2"}


def test_samples_and_chart(params, tiny_pair_dirs):
    at = _app(params)
    assert not at.exception, at.exception
    assert "Amplify" in {i["page_name"] for i in at._registered_pages.values()}
    at.button(key="sample").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    summary = next(d.value for d in at.dataframe if "mean_hesitations" in d.value.columns)
    assert list(summary["alpha"]) == [0.0, 2.0] and list(summary["n"]) == [3, 3]
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert _values(fig["data"][0]["x"]) == [0.0, 2.0]
    assert _values(fig["data"][0]["y"]) == pytest.approx(list(summary["mean_hesitations"]))
    # the α = 0 column is the fine-tune's own sampling with the same seed
    fine = load_model(str(tiny_pair_dirs[1]), device="cpu")
    ids = fine.tokenizer("1 + 2 = wait", add_special_tokens=True)["input_ids"]
    plain = generate(fine, [ids] * 3, max_new_tokens=6, temperature=1.0, seed=0)
    shown = [c.value for c in at.code if c.language != "python"]
    assert shown[:3] == [g.text or "(no text)" for g in plain]
    assert len(shown) == 6
    # "Reproduce in Python" carries the page's settings
    snippet = [c.value for c in at.code if c.language == "python"]
    assert len(snippet) == 1 and "[0.0, 2.0], n_samples=3" in snippet[0]
    assert "max_new_tokens=6" in snippet[0] and "seed=0" in snippet[0]
    assert at.query_params["asam"] in ("1", ["1"])
    keys = {b.key for b in at.get("download_button")}
    assert {"exp_amp_curve_csv", "exp_amp_samples_json"} <= keys


def test_bad_grid_and_empty_prompt(params):
    at = _app({**params, "agrid": "0, nan"})
    assert not at.exception
    assert "finite" in " ".join(str(e.value) for e in at.error)
    at = _app({**params, "agrid": ", ".join(str(i) for i in range(12))})
    assert not at.exception
    assert "at most" in " ".join(str(e.value) for e in at.error)
    at = _app({**params, "aprompt": " "})
    at.button(key="sample").click().run()
    assert not at.exception
    assert "empty" in " ".join(str(e.value) for e in at.error)


ORGANISMS = PROJECT_ROOT / "cache" / "organisms"


@pytest.mark.skipif(not (ORGANISMS / "reasoner" / "config.json").exists(),
                    reason="the committed organisms are missing")
def test_demo_caps_samples_alphas_and_tokens(tmp_cache, monkeypatch):
    (tmp_cache / "organisms").symlink_to(ORGANISMS, target_is_directory=True)
    monkeypatch.setenv("INTERP_DEMO", "1")
    at = _app({"an": "50", "anew": "500", "agrid": "0, 1, 2, 3, 4"})
    assert not at.exception, at.exception
    captions = " ".join(str(c.value) for c in at.main.get("caption"))
    assert "Hosted demo" in captions and "up to 8 samples" in captions
    assert at.number_input(key="an").max == 8 and at.number_input(key="an").value == 8
    assert at.number_input(key="anew").max == 64
    assert "at most 4" in " ".join(str(e.value) for e in at.error)
