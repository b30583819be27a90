"""The Hesitation graph page (AppTest) on the organisms and the committed demo adapters.

Each test points the store at a temp folder (with the organisms linked in); the demo
store is read as committed. Streamlit's caches live for the whole process, so only the
first test pays for loading the models and computing the graphs.
"""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from interp.store import PROJECT_ROOT, Store

APP = str(PROJECT_ROOT / "app.py")
PAGE = "pages/hesitation.py"

pytestmark = [
    pytest.mark.usefixtures("_navigation_mode"),
    pytest.mark.skipif(not (PROJECT_ROOT / "cache" / "organisms" / "base" / "config.json")
                       .exists(), reason="the organisms are not built"),
]


@pytest.fixture
def organisms(tmp_cache, monkeypatch):
    monkeypatch.delenv("INTERP_DEMO", raising=False)
    (tmp_cache / "organisms").symlink_to(PROJECT_ROOT / "cache" / "organisms")
    return tmp_cache


@pytest.fixture(scope="module")
def reference():
    """The page's default graph computed here: the first error trigger of the evaluation
    split, the ``wait`` logit, the adapter model."""
    from interp.adapters.report import demo_adapters
    from interp.attribution.hesitation import Tracer, trigger_traces

    tr = Tracer.from_artifact(demo_adapters(), "cpu", explain="adapter")
    t = trigger_traces("evaluation", 20)[0]
    return tr.graph(t.tokens[: t.triggers[0][0] + 1])


def _page(params: dict | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300)
    at.switch_page(PAGE)
    at.query_params.update(params or {})
    return at.run()


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def _graph_spec(at: AppTest) -> dict:
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    return next(s for s in specs if any(
        (t.get("meta") or {}).get("role") == "nodes" for t in s["data"]))


def test_renders_graph_comparison_and_probabilities(organisms, reference):
    from interp.attribution.prune import prune

    at = _page()
    _ok(at)
    assert not at.error, [e.value for e in at.error]
    # graph, comparison, influence overlay, probabilities
    assert len(at.get("plotly_chart")) == 4
    pr = prune(reference, 0.8, 0.98, max_nodes=200)
    assert _metric(at, "nodes shown") == f"{pr.nodes.numel()} of {len(reference.nodes)}"
    assert _metric(at, "edges shown") == str(pr.n_edges())
    assert any("transcoders of the base model" in c.value for c in at.caption)
    assert [b for b in at.button if b.key == "save_graph"]
    assert dict(at.query_params) == {}   # defaults are not written to the link


def test_threshold_link_is_applied_and_reprunes_without_recomputing(organisms, reference,
                                                                    monkeypatch):
    from interp.attribution.hesitation import Tracer
    from interp.attribution.prune import prune

    calls = []
    graph = Tracer.graph
    monkeypatch.setattr(Tracer, "graph", lambda self, *a, **k: calls.append(1) or
                        graph(self, *a, **k))
    at = _page({"nt": "0.6", "et": "0.9", "cap": "20", "cmp": "0"})
    _ok(at)
    assert at.slider(key="nt").value == 0.6 and at.slider(key="et").value == 0.9
    pr = prune(reference, 0.6, 0.9, max_nodes=20)
    assert _metric(at, "nodes shown") == f"{pr.nodes.numel()} of {len(reference.nodes)}"
    assert _metric(at, "edges shown") == str(pr.n_edges())
    assert len(at.get("plotly_chart")) == 1
    before = len(calls)
    at.slider(key="nt").set_value(0.7).run()
    _ok(at)
    assert len(calls) == before       # a new threshold re-prunes the cached graph
    pr = prune(reference, 0.7, 0.9, max_nodes=20)
    assert _metric(at, "nodes shown") == f"{pr.nodes.numel()} of {len(reference.nodes)}"
    assert at.query_params.get("nt") in ("0.7", ["0.7"])


@pytest.mark.parametrize("tok,msg", [("banana", "not in the model's vocabulary"),
                                     ("wait wait", "2 tokens")])
def test_bad_target_token_is_an_error(organisms, tok, msg):
    at = _page({"tok": tok, "cmp": "0"})
    _ok(at)
    assert any(msg in e.value for e in at.error), [e.value for e in at.error]
    assert not at.get("plotly_chart")


def test_pins_from_the_link(organisms, reference):
    from interp.attribution import explore
    from interp.attribution.prune import prune

    view = explore.graph_view(reference, prune(reference, 0.8, 0.98, max_nodes=200))
    feat = view.nodes[view.nodes["kind"] == "feature"]["id"].iat[0]
    at = _page({"pin": f"{feat},9_9_9", "cmp": "0"})
    _ok(at)
    assert any("9_9_9" in w.value for w in at.warning)     # an unknown id is dropped
    assert at.multiselect(key="pins").value == [feat]
    table = at.dataframe[0].value
    assert table["id"].tolist() == [feat]
    assert table["strongest inputs"].iat[0]
    spec = _graph_spec(at)
    rings = {cd[0]: w for t in spec["data"] if (t.get("meta") or {}).get("role") == "nodes"
             for cd, w in zip(t["customdata"], t["marker"]["line"]["width"])}
    assert rings[feat] == 3 and sum(w > 1 for w in rings.values()) == 1
    assert at.query_params.get("pin") in (feat, [feat])
    at.multiselect(key="pins").set_value([]).run()
    _ok(at)
    assert at.query_params.get("pin") is None


def test_own_text_and_reasoner(organisms):
    at = _page({"src": "text", "text": "Q add 1 2 + 3 4 = <think> 2 + 4 = 6 ;", "ex": "reasoner",
                "tk": "diff", "cmp": "0"})
    _ok(at)
    assert not at.error, [e.value for e in at.error]
    spec = _graph_spec(at)
    assert spec["layout"]["xaxis"]["ticktext"][-1] == ";"
    assert "minus" in spec["layout"]["title"]["text"]
    at = _page({"src": "text", "text": "hello world", "cmp": "0"})
    _ok(at)
    assert any("not in the model's vocabulary" in e.value for e in at.error)


def test_save_then_open_the_saved_graph(organisms):
    from interp.attribution.artifacts import KIND

    at = _page({"cmp": "0", "mech": "verify", "i": "1"})
    _ok(at)
    at.button(key="save_graph").click().run()
    _ok(at)
    arts = Store(organisms).list(KIND)
    assert len(arts) == 1 and any(arts[0].key in s.value for s in at.success)
    nodes = _metric(at, "nodes shown")
    at.run()
    assert not [b for b in at.button if b.key == "save_graph"]
    assert any(f"Saved as `{arts[0].key}`" in c.value for c in at.caption)
    at = _page({"graph": arts[0].key})
    _ok(at)
    assert not at.error, [e.value for e in at.error]
    assert _metric(at, "nodes shown") == nodes
    assert not [b for b in at.button if b.key == "save_graph"]
    at = _page({"graph": "attribution_graph-0000000000000000"})
    _ok(at)
    assert any("No saved graph" in e.value for e in at.error)


def test_demo_mode_computes_but_never_saves(organisms, monkeypatch):
    monkeypatch.setenv("INTERP_DEMO", "1")
    at = _page({"cmp": "0"})
    _ok(at)
    assert at.get("plotly_chart")
    assert not [b for b in at.button if b.key == "save_graph"]
    assert any("never saved" in c.value for c in at.caption)


def test_saved_graph_of_other_weights_is_refused(organisms, reference):
    import dataclasses

    from interp.adapters.report import demo_adapters
    from interp.attribution.artifacts import save_graph
    from interp.attribution.targets import LogitTarget

    art = demo_adapters()
    pair = json.loads(json.dumps(art.meta["pair"]))
    pair["reasoner"]["weight_hash"] = "0" * 64
    moved = dataclasses.replace(art, meta={**art.meta, "pair": pair})
    saved = save_graph(reference, Store(organisms), moved,
                       [LogitTarget(reference.targets[0]["token"], -1)])
    at = _page({"graph": saved.key})
    _ok(at)
    assert any("other weights" in e.value for e in at.error), [e.value for e in at.error]
    assert not at.get("plotly_chart")


def test_out_of_range_link_values_are_clamped(organisms):
    at = _page({"i": "999", "nt": "5", "mech": "nope", "cmp": "0"})
    _ok(at)
    warned = " ".join(w.value for w in at.warning)
    assert "`i=999`" in warned and "`nt=5`" in warned and "`mech=nope`" in warned
    assert at.slider(key="nt").value == 1.0
    ni = at.number_input(key="i")
    assert ni.value == ni.proto.max and ni.value > 0
    assert at.get("plotly_chart")


def test_without_the_organisms_the_page_says_how_to_build_them(tmp_cache, monkeypatch):
    monkeypatch.delenv("INTERP_DEMO", raising=False)
    at = _page()
    _ok(at)
    assert any("organisms build" in i.value for i in at.info), [i.value for i in at.info]
    assert not at.get("plotly_chart")


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(not __import__("pathlib").Path("/usr/bin/chromium").exists(),
                    reason="Chromium not installed at /usr/bin/chromium")
def test_clicking_a_node_pins_it_in_the_browser(organisms):
    """A real click on a feature node (headless Chromium) pins it: the link gains
    ``pin=<node id>`` and the pinned table lists it; a second click unpins it."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    from interp.bench_app import (
        CHROMIUM_ARGS,
        app_log,
        free_port,
        start_app,
        stop_app,
        wait_healthy,
        wait_rendered,
    )

    port = free_port()
    proc = start_app(port, {"INTERP_CACHE": str(organisms)})
    where = """() => {
      const gd = document.querySelectorAll('.js-plotly-plot')[0];
      const fl = gd._fullLayout, r = gd.getBoundingClientRect();
      const tr = gd._fullData.find(t => t.meta && t.meta.kind === 'feature');
      return {x: fl.xaxis.l2p(tr.x[0]) + fl._size.l + r.left,
              y: fl.yaxis.l2p(tr.y[0]) + fl._size.t + r.top, id: tr.customdata[0][0]};
    }"""
    try:
        wait_healthy(port, proc)
        with sync_api.sync_playwright() as pw:
            b = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = b.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/hesitation?cmp=0", timeout=120_000)
            page.wait_for_selector(".js-plotly-plot", timeout=300_000)
            wait_rendered(page, "h1", 300)
            page.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
            pt = page.evaluate(where)
            page.mouse.click(pt["x"], pt["y"])
            page.wait_for_function(f"() => location.search.includes('pin={pt['id']}')",
                                   timeout=120_000)
            wait_rendered(page, "h1", 300)
            page.wait_for_selector('[data-testid="stMultiSelect"] [data-tag]', timeout=120_000)
            chips = page.locator('[data-testid="stMultiSelect"] [data-tag]')
            assert chips.count() == 1      # the node is in the list of pinned nodes
            page.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
            pt2 = page.evaluate(where)
            page.mouse.click(pt2["x"], pt2["y"])
            page.wait_for_function("() => !location.search.includes('pin=')", timeout=120_000)
            b.close()
    finally:
        print("--- streamlit log (tail) ---\n" + app_log(proc))
        stop_app(proc)


def test_adapter_sets_are_those_of_the_sidebar_pair(organisms):
    """Another pair in the sidebar: the organisms' adapter sets are not offered (their
    graphs would explain a different model); the page says so and stops cleanly."""
    at = _page({"base": "organism:sft", "fine": "organism:grpo"})
    _ok(at)
    assert any("No adapter set of the sidebar pair" in i.value for i in at.info)
    assert not at.get("plotly_chart")
    at = _page()
    _ok(at)
    assert at.selectbox(key="ad").options  # the organisms' own pair: the demo set
