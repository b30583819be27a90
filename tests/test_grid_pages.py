"""Editable grids and "Reproduce in Python" on the pages (AppTest): a grid typed in a
field is kept in the URL and read back from a link, bad input gives one clear error,
the run's cost is shown before it starts, and every view has its reproduce expander."""

from __future__ import annotations

import pytest

from interp.store import PROJECT_ROOT
from tests.test_vectors_page import setup  # noqa: F401 - the tiny organisms + saved sweep

APP = str(PROJECT_ROOT / "app.py")


def _code(at) -> list[str]:
    return [c.value for c in at.code]


def _expanders(at) -> list[str]:
    return [e.label for e in at.expander]


@pytest.fixture
def vectors_app(setup, monkeypatch, tmp_cache, _navigation_mode):  # noqa: F811
    from streamlit.testing.v1 import AppTest

    import interp.vectors.demo as D

    m, demo, spec = setup
    monkeypatch.setattr(D, "DEMO_ROOT", demo.root)
    monkeypatch.setattr(D, "DEFAULT_SPEC", {**D.DEFAULT_SPEC, "n_sweep": 4, "n_accuracy": 5,
                                            "max_new_tokens": 4, "alphas": [-1.0, 0.0, 1.0],
                                            "accuracy_alphas": [-1.0, 0.0, 1.0]})

    def make(**params):
        at = AppTest.from_file(APP, default_timeout=180)
        at.switch_page("pages/vectors.py")
        at.query_params.update({"vt": m["instruct"], "va": m["grpo"], "vb": m["sft"],
                                "vref": m["base"], **params})
        return at

    return m, make


def test_vectors_grid_round_trips_and_estimates(vectors_app):
    m, make = vectors_app
    at = make()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    # the saved sweep (α -1, 0, 1) is shown with its reproduce snippets
    assert at.text_input(key="vsa").value == "-1,0,1"
    assert _expanders(at).count("Reproduce in Python") >= 4   # stats, trace, sweep, accuracy
    assert any("run_experiment" in c and "parts=('sweep',)" in c for c in _code(at))
    assert any("views.trace_view" in c and "0.0" not in c.split("trace_view")[0][-5:]
               for c in _code(at))
    assert not any("Run sweep" in b.label for b in at.button)
    # another grid: no saved sweep, so the run is offered with its estimated cost
    at.text_input(key="vsa").set_value("−1:1:0.5").run()
    assert not at.exception
    assert at.query_params.get("vsa") in ("−1:1:0.5", ["−1:1:0.5"])
    captions = [c.value for c in at.caption]
    cost = [c for c in captions if "forward passes" in c]
    assert cost and "generations × 4 tokens" in cost[0] and " s on cpu" in cost[0], captions
    assert any("Run sweep" in b.label for b in at.button)
    # the link reopens the same grid (and the snippets carry it)
    at2 = make(vsa="−1:1:0.5")
    at2.run()
    assert at2.text_input(key="vsa").value == "−1:1:0.5"
    # positions of the heatmap: a grid of integers within the trace, kept in the link
    import json

    at.text_input(key="vposs").set_value("0:3").run()
    heat = [json.loads(c.proto.spec) for c in at.get("plotly_chart")
            if "by layer and token" in c.proto.spec][0]
    assert [x.split(":")[0] for x in heat["data"][0]["x"]] == ["0", "1", "2", "3"]
    assert at.query_params.get("vposs") in ("0:3", ["0:3"])
    assert any("heat = result[\"layer_kl\"][:, [0, 1, 2, 3]]" in c for c in _code(at))
    at.text_input(key="vposs").set_value("2, 9999").run()
    assert any(e.value.startswith("position: 9999 is out of range; values must be between 0")
               for e in at.error), [e.value for e in at.error]
    at.text_input(key="vposs").set_value("").run()
    # bad input: one line naming the problem, no run button, no traceback
    at.text_input(key="vsa").set_value("-1, x").run()
    assert not at.exception
    assert any("α: 'x' is not a number" in e.value for e in at.error)
    assert not any("Run sweep" in b.label for b in at.button)


def _cost_script():
    import streamlit as st

    import pages.common as ui
    from interp.cost import Cost, generation_cost

    n = int(st.query_params.get("n", "2"))
    ok = ui.run_cost(Cost(forwards=4, tokens=40) + generation_cost([5] * n, 8, 1))
    st.write("start" if ok else "refused")


def test_demo_refuses_a_costly_grid(monkeypatch, _navigation_mode):
    """In the hosted demo a grid over the demo's forward-pass limit is refused in words."""
    from streamlit.testing.v1 import AppTest

    from interp import serving

    monkeypatch.setattr(serving, "settings",
                        lambda: serving.DemoSettings(enabled=True, max_grid_forwards=20))
    at = AppTest.from_function(_cost_script, default_timeout=60)
    at.query_params["n"] = "3"        # 4 + 3 x 8 = 28 forward passes > 20
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("needs about 28 forward passes; the hosted demo runs at most 20" in e.value
               for e in at.error), [e.value for e in at.error]
    assert at.markdown[-1].value == "refused"
    assert any("≈ 3 generations × 8 tokens + 4 forward passes" in c.value for c in at.caption)
    at = AppTest.from_function(_cost_script, default_timeout=60)
    at.query_params["n"] = "2"        # 20: allowed
    at.run()
    assert not at.error and at.markdown[-1].value == "start"


@pytest.mark.usefixtures("tmp_cache", "_navigation_mode")
@pytest.mark.parametrize("tab", ["Lengths", "Direction", "α sweep", "Accuracy vs length",
                                 "Heads", "Edit", "SEAL"])
def test_length_views_have_reproduce(tab):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("pages/length.py")
    at.query_params.update({"ltab": tab})
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Reproduce in Python" in _expanders(at)
    assert any("load_run(demo_store()" in c for c in _code(at))


@pytest.mark.usefixtures("tmp_cache", "_navigation_mode")
def test_length_grids_round_trip():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("pages/length.py")
    at.query_params.update({"ltab": "Heads", "lk": "3"})
    at.run()
    assert not at.exception
    assert at.number_input(key="lk").value == 3
    assert any("top_heads(torch.from_numpy(scores), 3)" in c for c in _code(at))
    at.number_input(key="lk").set_value(5).run()
    assert at.query_params.get("lk") in ("5", ["5"])
    assert any("top_heads(torch.from_numpy(scores), 5)" in c for c in _code(at))

    at = AppTest.from_file(APP, default_timeout=120)
    at.switch_page("pages/length.py")
    at.query_params.update({"ltab": "α sweep", "lalpha": "-0.25:0.25:0.25"})
    at.run()
    assert not at.exception
    assert any("shown = [-0.25, 0.0, 0.25]" in c for c in _code(at))
    at.text_input(key="lalpha").set_value("0, 1e").run()
    assert any("α: '1e' is not a number" in e.value for e in at.error)


# ------------------------------------------------------------------ features: clamp grid
from tests.test_features_page import collection  # noqa: E402, F401


def test_features_clamp_grid_generates_and_reproduces(collection, monkeypatch):  # noqa: F811
    from streamlit.testing.v1 import AppTest

    monkeypatch.delenv("INTERP_DEMO", raising=False)
    at = AppTest.from_file(APP, default_timeout=180)
    from tests.test_features_page import pair_params

    at.query_params.update({"fset": f"local:{collection.key}", "feat": "1:3", "device": "cpu",
                            "fgen": "hello 1 + 2", "fclamp": "0:2:1", "fmax": "5",
                            **pair_params(f"local:{collection.key}")})
    at.switch_page("pages/features.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.text_input(key="fclamp").value == "0:2:1"
    # the card's snippet: the histogram of feature 1:3 from the collection
    from interp.features.table import FeatureTable

    card = [c.value for c in at.code if "tab.histogram" in c.value]
    ns: dict = {}
    exec(card[0], ns)
    want = FeatureTable(collection).histogram(FeatureTable(collection).parse("1:3"))
    assert ns["result"].equals(want) and ns["tab"].fid(ns["g"]) == "1:3"
    # counts before the models are loaded, the time once they are
    assert any("≈ 5 generations × 5 tokens" in c.value for c in at.caption)
    at.button(key="fgen_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    shown = [m.value for m in at.markdown if m.value.startswith("**clamped")]
    assert sorted(shown) == ["**clamped 0**", "**clamped 1**", "**clamped 2**"]
    at.run()   # the next run times the loaded models
    assert any("≈ 5 generations × 5 tokens" in c.value and " on cpu" in c.value
               for c in at.caption), [c.value for c in at.caption]
    code = [c.value for c in at.code if "clamp_generations" in c.value]
    assert code and "[0.0, 1.0, 2.0], 5)" in code[0]
    texts = {k: v for k, v in at.session_state.items()
             if k.startswith("_gen_")}
    ns: dict = {}
    exec(code[0], ns)
    page = next(iter(texts.values()))
    assert ns["result"] == page
    # the link keeps the grid; a bad grid is one line, no button
    at.text_input(key="fclamp").set_value("1, 2, three").run()
    assert any("clamp value: 'three' is not a number" in e.value for e in at.error)
    assert not [b for b in at.button if b.key == "fgen_go"]


def test_clamp_generations_cost_and_single_clamp(collection, monkeypatch):  # noqa: F811
    import interp.features.steer as S
    from interp.features.source import load_source
    from tests.test_grid_cost import count_forwards

    src = load_source({"kind": "adapters", "key": collection.config["source"]["key"],
                       "store": "main"}, "cpu")
    one = S.compare_generations(src, "hello 1 + 2", 1, 3, 2.5, 4)
    many = S.clamp_generations(src, "hello 1 + 2", 1, 3, [0.0, 2.5], 4)
    assert one["clamped"] == many["clamped 2.5"] and one["ablated"] == many["ablated"]
    calls = count_forwards(monkeypatch, S)
    S.clamp_generations(src, "hello 1 + 2", 1, 3, [0.0, 1.0, 2.5], 4)
    est = S.clamp_cost("hello 1 + 2", [0.0, 1.0, 2.5], 4, src.tokenizer)
    assert calls["n"] == est.forwards == 5 * 4


# ------------------------------------------------------------------ models, adapters
from tests.test_adapters_page import saved_run  # noqa: E402, F401


@pytest.mark.usefixtures("tmp_cache", "_navigation_mode")
def test_models_page_reproduces_weights_and_generations(tiny_pair_dirs):
    from streamlit.testing.v1 import AppTest

    base, fine = tiny_pair_dirs
    at = AppTest.from_file(APP, default_timeout=180)
    at.query_params.update({"base": str(base), "fine": str(fine), "device": "cpu",
                            "metric": "delta_norm"})
    at.switch_page("pages/models.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("weight_diff_pivot(table, 'delta_norm')" in c and str(base) in c
               for c in _code(at))
    at.button(key="generate").click().run()
    assert not at.exception
    assert any("encode_user_prompt" in c for c in _code(at))
    assert _expanders(at).count("Reproduce in Python") == 2


def test_adapters_page_reproduce_and_l1_grid(saved_run, tiny_pair_dirs,  # noqa: F811
                                             monkeypatch, _navigation_mode):
    from streamlit.testing.v1 import AppTest

    art, ev = saved_run
    monkeypatch.delenv("INTERP_DEMO", raising=False)
    at = AppTest.from_file(APP, default_timeout=180)
    at.query_params.update({"base": str(tiny_pair_dirs[0]), "fine": str(tiny_pair_dirs[1])})
    at.switch_page("pages/adapters.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    code = _code(at)
    assert any("history_of" in c and art.key in c for c in code)
    assert any("per_layer_frame" in c and "adapters_eval" in c for c in code)
    assert any("frontier_frame" in c for c in code)
    at.text_input(key="l1s").set_value("0.001:0.004:0.001").run()
    assert not at.exception and not at.error
    assert at.query_params.get("l1s") in ("0.001:0.004:0.001", ["0.001:0.004:0.001"])
    at.text_input(key="l1s").set_value("0.01, -1").run()
    assert any(e.value.startswith("L1: -1 is out of range") for e in at.error)


# ------------------------------------------------------------------ hesitation graphs
@pytest.mark.skipif(not (PROJECT_ROOT / "cache" / "organisms" / "base" / "config.json")
                    .exists(), reason="the organisms are not built")
def test_hesitation_graph_snippet_recomputes_the_page(tmp_cache, monkeypatch,
                                                      _navigation_mode):
    """The page's default graph (first error trigger, `wait` logit); the snippet computes
    it again and its visible nodes and edges match the page's counts and an independent
    graph from Tracer.from_artifact."""
    from streamlit.testing.v1 import AppTest

    from interp.adapters.report import demo_adapters
    from interp.attribution.hesitation import Tracer, trigger_traces
    from interp.attribution.prune import prune

    monkeypatch.delenv("INTERP_DEMO", raising=False)
    (tmp_cache / "organisms").symlink_to(PROJECT_ROOT / "cache" / "organisms")
    at = AppTest.from_file(APP, default_timeout=300)
    at.switch_page("pages/hesitation.py")
    at.query_params.update({"nt": "0.7", "cap": "120"})
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    code = [c for c in _code(at) if "explore.graph_view" in c]
    assert code and "prune(graph, 0.7," in code[0] and "max_nodes=120" in code[0]
    ns: dict = {}
    exec(code[0], ns)
    view = ns["result"]
    shown = {m.label: m.value for m in at.metric}
    assert shown["nodes shown"] == f"{len(view.nodes)} of {view.n_nodes_full}"
    assert shown["edges shown"] == str(len(view.edges))
    tr = Tracer.from_artifact(demo_adapters(), "cpu", explain="adapter")
    t = trigger_traces("evaluation", 20)[0]
    ref = prune(tr.graph(t.tokens[: t.triggers[0][0] + 1]), 0.7, 0.98, max_nodes=120)
    assert len(view.nodes) == ref.nodes.numel() and len(view.edges) == ref.n_edges()
