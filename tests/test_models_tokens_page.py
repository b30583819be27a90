"""AppTest of the Models page's per-head weight chart and token-by-token comparison."""

from __future__ import annotations

import json

import pytest
import torch
from streamlit.testing.v1 import AppTest
from transformers import AutoModelForCausalLM

from interp.store import PROJECT_ROOT
from interp.tokendiff import FRAME_COLUMNS
from interp.weights import head_diff_pivot, head_diff_table

APP = str(PROJECT_ROOT / "app.py")
MODELS = "pages/models.py"
TEXT = "hello world the answer is 4 2 so yes"

pytestmark = pytest.mark.usefixtures("_navigation_mode")


def _app(params: dict[str, str]) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.query_params.update(params)
    at.switch_page(MODELS)
    return at.run()


def _figures(at) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


@pytest.fixture
def pair_params(tmp_cache, tiny_pair_dirs):
    base, fine = tiny_pair_dirs
    return {"base": str(base), "fine": str(fine), "device": "cpu"}


def test_head_heatmap_shows_the_per_head_table(pair_params, tiny_pair_dirs):
    at = _app(pair_params)
    assert not at.exception, at.exception
    assert not at.error
    heat = [f for f in _figures(at) if f["data"][0]["type"] == "heatmap"
            and f["layout"]["xaxis"]["title"]["text"] == "projection and head"]
    assert len(heat) == 1
    pv = head_diff_pivot(head_diff_table(*tiny_pair_dirs))
    assert heat[0]["data"][0]["x"] == list(pv.columns)
    keys = {b.key for b in at.get("download_button")}
    assert {"exp_heads_html", "exp_heads_csv"} <= keys


def test_token_comparison_on_typed_text(pair_params, tiny_pair_dirs):
    at = _app({**pair_params, "ttext": TEXT, "tsrc": "text", "tk": "3"})
    assert not at.exception, at.exception
    at.button(key="compare").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    table = next(d.value for d in at.dataframe if "kl_fine_base" in d.value.columns)
    assert list(table.columns) == FRAME_COLUMNS
    # the shown log-probs are those of a direct forward of each checkpoint
    from interp.models import load_tokenizer

    tok = load_tokenizer(tiny_pair_dirs[0])
    ids = tok(TEXT, add_special_tokens=True)["input_ids"]
    assert list(table["token"]) == tok.convert_ids_to_tokens(ids[1:])
    for path, col in zip(tiny_pair_dirs, ("logprob_base", "logprob_fine")):
        hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
        with torch.no_grad():
            lp = torch.log_softmax(hf(torch.tensor([ids])).logits[0].double(), -1)
        want = [float(lp[j - 1, ids[j]]) for j in range(1, len(ids))]
        assert table[col].tolist() == pytest.approx(want, abs=1e-4)
    assert table["top_base"].str.count(",").eq(2).all()   # k = 3
    # the strip figure and the URL state
    assert any(f["data"][0]["type"] == "heatmap" and "texttemplate" in f["data"][0]
               for f in _figures(at))
    at.radio(key="tdir").set_value("kl_base_fine").run()
    assert not at.exception
    assert at.query_params["tdir"] in ("kl_base_fine", ["kl_base_fine"])
    assert at.query_params["tok"] in ("1", ["1"])
    assert {"exp_strip_csv", "exp_token_table_json"} <= {b.key for b in
                                                          at.get("download_button")}


def test_token_comparison_on_a_continuation_and_bad_input(pair_params):
    at = _app({**pair_params, "ttext": "1 + 2 =", "tnew": "5"})
    at.button(key="compare").click().run()
    assert not at.exception, at.exception
    table = next(d.value for d in at.dataframe if "kl_fine_base" in d.value.columns)
    assert set(table["part"]) == {"prompt", "generated"}
    assert (table["part"] == "generated").sum() <= 5
    at.text_area(key="ttext").set_value("   ")
    at.button(key="compare").click().run()
    assert not at.exception
    assert "empty" in " ".join(str(e.value) for e in at.error)
