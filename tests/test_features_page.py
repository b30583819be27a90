"""The Features page in AppTest on a tiny collection (tmp store), and the demo report."""

from __future__ import annotations

import json
import re
import time

import pytest
from streamlit.testing.v1 import AppTest

from interp.store import PROJECT_ROOT, Store

APP = str(PROJECT_ROOT / "app.py")
PAGE = "pages/features.py"

pytestmark = pytest.mark.usefixtures("_navigation_mode")

TEXTS = ["hello <think> 1 + 2 = 3 wait 3 </think> answer is 3",
         "a b c <think> 4 + 4 = 8 </think> 8", "the sum is 5 so yes",
         "<think> 9 + 1 = 1 0 wait 1 0 </think> 1 0", "carry 1 wait 2 ok",
         "hello world <think> yes no ok </think> no", "c b a 7 7 7 <script>"]


@pytest.fixture
def collection(tiny_pair_dirs, tmp_cache):
    """A tiny adapter set, its feature collection (text corpus) and a PCA map, all in
    the temp cache ("local" store on the page)."""
    from interp.features.collect import CollectConfig
    from interp.features.corpus import texts_corpus
    from interp.features.featmap import compute_map
    from interp.features.pipeline import collect_features
    from interp.features.source import AdapterSource
    from tests.test_features_sources import save_tiny_adapters

    store = Store(tmp_cache)
    art, setup = save_tiny_adapters(tiny_pair_dirs, store)
    src = AdapterSource(art, setup.model, setup.base, setup.reasoner)
    feats = collect_features(src, texts_corpus(TEXTS, src.tokenizer),
                             CollectConfig(top_k=3, n_reservoir=4), store, ablation="top",
                             ablation_top=4)
    compute_map(src, store, "pca")
    return feats


def pair_params(fset: str) -> dict:
    """The sidebar pair of a local collection (the page lists only the pair's)."""
    from interp.store import Store

    key = fset.split(":", 1)[1]
    pair = Store().load("features", key).meta["source"]["pair"]
    return {"base": pair["base"], "fine": pair["reasoner"]}


def _app(params):
    at = AppTest.from_file(APP, default_timeout=180)
    if str(params.get("fset", "")).startswith("local:") and "base" not in params:
        params = {**pair_params(params["fset"]), **params}
    at.query_params.update(params)
    at.switch_page(PAGE)
    return at.run()


def _arr(v) -> list:
    """A figure JSON array (plain, or plotly's typed {dtype, bdata})."""
    if isinstance(v, dict):
        import base64

        import numpy as np

        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"]).tolist()
    return list(v)


def _titles(at) -> str:
    return " | ".join(str(json.loads(c.proto.spec)["layout"].get("title", {}).get("text"))
                      for c in at.get("plotly_chart"))


def test_page_shows_map_and_card_from_the_url(collection, monkeypatch):
    monkeypatch.delenv("INTERP_DEMO", raising=False)
    at = _app({"fset": f"local:{collection.key}", "feat": "1:3", "device": "cpu"})
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    titles = _titles(at)
    assert "Activation histogram of 1:3" in titles and "Where 1:3 fires" in titles
    assert "Logit lens of 1:3" in titles
    assert any("Feature 1:3" in str(h.value) for h in at.subheader)
    html = " ".join(str(getattr(e.proto, "body", "")) for e in at.get("html"))
    assert "fx-tok" in html and "<script>" not in html.replace("<style>", "")
    # the map: one trace per layer (default colouring) and the selected feature ringed
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    names = [t.get("name") for t in spec["data"]]
    assert "layer 0" in names and "layer 1" in names
    # the open feature is ringed: a shape anchored at its point
    ring = [s for s in spec["layout"]["shapes"] if s.get("name") == "feature 1:3"]
    assert len(ring) == 1 and ring[0]["type"] == "circle"
    pts = [(x, y, h) for t in spec["data"]
           for x, y, h in zip(_arr(t["x"]), _arr(t["y"]), t["hovertext"])]
    at_ring = [h for x, y, h in pts if (x, y) == (ring[0]["xanchor"], ring[0]["yanchor"])]
    assert at_ring and all(h.startswith("<b>1:3</b>") for h in at_ring)
    # colouring and search go to the URL; an id in the search opens that feature
    at.segmented_control(key="fcol").set_value("density").run()
    assert at.query_params.get("fcol") == "density"
    assert "log10 density" in json.dumps(json.loads(at.get("plotly_chart")[0].proto.spec))
    at.text_input(key="fq").set_value("0:5").run()
    assert not at.exception
    assert at.query_params.get("feat") == "0:5"
    assert any("Feature 0:5" in str(h.value) for h in at.subheader)
    assert at.query_params.get("fq") == "0:5"
    # another feature, then the same search again after clearing it: opens it again
    at.text_input(key="feat").set_value("1:2").run()
    at.text_input(key="fq").set_value("").run()
    at.text_input(key="fq").set_value("0:5").run()
    assert at.query_params.get("feat") == "0:5"


def test_bad_feature_id_and_label_editing(collection, monkeypatch):
    from interp.features.labels import load_labels

    monkeypatch.delenv("INTERP_DEMO", raising=False)
    at = _app({"fset": f"local:{collection.key}", "feat": "9:99"})
    assert not at.exception
    assert "not a feature of this set" in " ".join(str(e.value) for e in at.error)
    at.text_input(key="feat").set_value("0:2").run()
    key = [t.key for t in at.text_input if (t.key or "").startswith("flabel_")][0]
    at.text_input(key=key).set_value("digits <b>").run()
    at.button(key="flabel_save").click().run()
    assert not at.exception
    src_key = collection.config["source"]["key"]
    assert load_labels(src_key, Store()) == {(0, 2): "digits <b>"}
    assert any("digits <b>" in str(h.value) for h in at.subheader)


def test_cached_interactions_are_fast(collection, monkeypatch):
    monkeypatch.delenv("INTERP_DEMO", raising=False)
    at = _app({"fset": f"local:{collection.key}", "feat": "1:3"})
    times = []
    for col in ("density", "hesitation", "layer", "region"):
        at.segmented_control(key="fcol").set_value(col)
        t = time.perf_counter()
        at.run()
        times.append(time.perf_counter() - t)
        assert not at.exception
    assert max(times) < 3.0, times  # < 1 s measured on an idle machine (bench)


def test_demo_mode_shows_committed_collection_read_only(monkeypatch):
    from interp.features.report import demo_features

    try:
        demo_features()
    except Exception:
        pytest.skip("no committed demo feature collection")
    monkeypatch.setenv("INTERP_DEMO", "1")
    at = _app({"feat": "3:0"})
    assert not at.exception, [e.value for e in at.exception]
    assert not [e for e in at.expander if "Collect" in str(e.label)]
    assert "cannot be saved" in " ".join(str(c.value) for c in at.caption)
    assert "Best feature per ground-truth label" in _titles(at)
    at.segmented_control(key="fcol").set_value("AUROC").run()
    at.selectbox(key="fcl").set_value("verify").run()
    assert not at.exception
    assert at.query_params.get("fcl") == "verify"
    assert "AUROC verify" in json.dumps(json.loads(at.get("plotly_chart")[0].proto.spec))


def test_report_features_on_the_committed_demo():
    import argparse

    from interp.features.report import demo_features, report_features

    try:
        demo_features()
    except Exception:
        pytest.skip("no committed demo feature collection")
    out = report_features(argparse.Namespace(recompute=False))
    assert set(out["best_auroc_per_label"]) == {
        "error", "error.carry_slip", "error.random", "verify", "carry", "planted_error",
        "planted_error.carry_digit", "planted_error.units_digit", "short_thinking"}
    assert all(0.0 <= v <= 1.0 for v in out["best_auroc_per_label"].values())
    assert out["map"]["method"] == "umap"
    assert out["collection_bytes"] < 5e6
    # the committed probes: per token label, the best read-out of the reasoner and the
    # read-out of the best feature's layer input, both taken from the artifact's table
    from interp.adapters.report import demo_store
    from interp.features.probe import probes_for

    art = demo_store().load("features_probe", out["probe_key"])
    probe = art.meta["labels"]
    # the probes are those of the model the features read: never another model's
    h = art.config["weight_hash"]
    assert probes_for(demo_store(), {"kind": "transcoders", "weight_hash": h}).key == art.key
    assert probes_for(demo_store(), {"kind": "adapters", "pair_hashes": {"base": h}}) is None
    assert probes_for(demo_store(), {"kind": "transcoders", "weight_hash": "0" * 64}) is None
    assert set(out["label_probes"]) == set(probe)
    for label, row in out["label_probes"].items():
        assert row["best_site_auroc"] == pytest.approx(max(probe[label].values()), abs=0.005)
        layer = out["best_feature_per_label"][label].split(":")[0]
        assert row["feature_layer_mlp_input_auroc"] == probe[label][f"L{layer} MLP input"]


@pytest.mark.browser
def test_map_click_and_box_select_in_chromium(tmp_cache, tmp_path):
    """What AppTest cannot do: click a point of the map (opens its card, URL updated) and
    box-select a group (comparison table), in headless Chromium on the demo artifacts."""
    from pathlib import Path

    from interp.bench_app import (
        CHROMIUM_ARGS,
        free_port,
        start_app,
        stop_app,
        wait_healthy,
        wait_rendered,
    )
    from interp.features.report import demo_features
    from tests._browser import CHROMIUM, screenshot_dir

    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    try:
        demo_features()
    except Exception:
        pytest.skip("no committed demo feature collection")
    port = free_port()
    proc = start_app(port, {"INTERP_CACHE": str(tmp_cache), "INTERP_DEMO": "1"})
    chart = "[data-testid='stPlotlyChart']"
    try:
        wait_healthy(port, proc)
        with sync_api.sync_playwright() as pw:
            b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = b.new_page(viewport={"width": 1400, "height": 1200})
            page.goto(f"http://127.0.0.1:{port}/features?feat=3:81", timeout=120_000)
            wait_rendered(page, chart)
            assert page.locator("h3", has_text="Feature 3:81").count() == 1
            pts = page.locator(chart).first.locator(".scatterlayer .trace .points path")
            bb = pts.nth(40).bounding_box()
            x, y = bb["x"] + bb["width"] / 2, bb["y"] + bb["height"] / 2
            page.mouse.move(x - 20, y - 20)
            page.mouse.move(x, y, steps=5)
            page.mouse.click(x, y)
            page.wait_for_function("() => !location.search.includes('feat=3%3A81') && "
                                   "!location.search.includes('feat=3:81')", timeout=60_000)
            wait_rendered(page, chart)
            assert page.locator("h3", has_text="Feature 3:81").count() == 0
            assert page.locator("h3", has_text=re.compile(r"^Feature \d+:\d+")).count() == 1
            # box select a region of the map: the group's table appears
            m = page.locator(chart).first
            m.hover()
            m.locator(".modebar-btn[data-title='Box Select']").first.click(force=True)
            cb = m.bounding_box()
            page.mouse.move(cb["x"] + cb["width"] * 0.2, cb["y"] + cb["height"] * 0.2)
            page.mouse.down()
            page.mouse.move(cb["x"] + cb["width"] * 0.7, cb["y"] + cb["height"] * 0.7,
                            steps=10)
            page.mouse.up()
            page.get_by_text("selected features").wait_for(timeout=60_000)
            body = page.inner_text("body")
            assert "Traceback" not in body
            page.set_viewport_size({"width": 1400, "height": 3000})
            wait_rendered(page, chart)
            page.screenshot(path=str(screenshot_dir() / "features_page.png"))
            b.close()
    finally:
        stop_app(proc)


def test_collections_are_those_of_the_sidebar_pair(collection, monkeypatch):
    """The organisms' pair in the sidebar: the tiny pair's collection is not listed."""
    monkeypatch.delenv("INTERP_DEMO", raising=False)
    at = _app({"base": "organism:sft", "fine": "organism:grpo"})
    assert not at.exception
    assert any("No feature collection of the sidebar pair" in i.value and "other pairs"
               in i.value for i in at.info)
    from interp.features.table import of_pair

    pair = pair_params(f"local:{collection.key}")
    assert of_pair(collection, pair["base"], pair["fine"])
    assert not of_pair(collection, pair["fine"], pair["base"])     # the order matters
    assert not of_pair(collection, "organism:base", "organism:reasoner")


@pytest.mark.browser
def test_page_latency_is_timed_from_the_input_to_the_settled_result():
    """``bench features-collect``'s page timing (one cache-filling round, one timed):
    every in-page time lies between a rerun's round trip and the same interaction timed
    around the browser driver's calls, and the interactions reached their results (a
    wait that resolved before the result showed would time almost nothing)."""
    from pathlib import Path

    from interp.features.bench import page_latency
    from interp.features.report import demo_features
    from tests._browser import CHROMIUM

    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium not installed")
    pytest.importorskip("playwright.sync_api")
    try:
        demo_features()
    except Exception:
        pytest.skip("no committed demo feature collection")
    out = page_latency(rounds=1, chromium=CHROMIUM)
    assert len(out["page_first_interactions_seconds"]) == 4
    assert len(out["page_slowest_per_round"]) == 1
    for key in ("page_first_interactions_seconds", "page_slowest_per_round"):
        assert all(0.03 < t < 60 for t in out[key]), out
    assert 0.03 < out["page_cached_interaction_seconds"] \
        <= out["page_cached_interaction_seconds_driver"]
    assert out["page_max_cached_interaction_seconds"] \
        <= out["page_max_cached_interaction_seconds_driver"]
