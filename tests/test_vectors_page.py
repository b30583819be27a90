"""The Reasoning vectors page (AppTest) on tiny organism-vocabulary models."""

from __future__ import annotations

import pytest

from interp.store import PROJECT_ROOT, Store
from tests.test_vectors_sweep import _tiny_organism

APP = str(PROJECT_ROOT / "app.py")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from interp.vectors.demo import run_experiment

    root = tmp_path_factory.mktemp("vpage")
    m = {n: _tiny_organism(root / n, i) for i, n in enumerate(("instruct", "grpo", "sft",
                                                                "base"))}
    demo = Store(root / "demo")
    spec = {"target": m["instruct"], "donor_a": m["grpo"], "donor_b": m["sft"],
            "reference": m["base"], "n_sweep": 4, "n_accuracy": 5, "max_new_tokens": 4,
            "alphas": [-1.0, 0.0, 1.0], "accuracy_alphas": [-1.0, 0.0, 1.0]}
    run_experiment(spec, demo, device="cpu", parts=("sweep", "accuracy"),
                   progress=lambda *a: None)
    return m, demo, spec


@pytest.mark.parametrize("mode", ["task", "control"])
def test_vectors_page(setup, monkeypatch, tmp_cache, _navigation_mode, mode):
    from streamlit.testing.v1 import AppTest

    import interp.vectors.demo as D

    m, demo, spec = setup
    monkeypatch.setattr(D, "DEMO_ROOT", demo.root)
    monkeypatch.setattr(D, "DEFAULT_SPEC", {**D.DEFAULT_SPEC, "n_sweep": 4, "n_accuracy": 5,
                                            "max_new_tokens": 4, "alphas": [-1.0, 0.0, 1.0],
                                            "accuracy_alphas": [-1.0, 0.0, 1.0]})
    at = AppTest.from_file(APP, default_timeout=180)
    at.switch_page("pages/vectors.py")
    at.query_params.update({"vt": m["instruct"], "va": m["grpo"], "vb": m["sft"],
                            "vref": m["base"], "vmode": mode, "vcl": "1", "vcn": "8",
                            "valpha": "0.5"})
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    charts = at.get("plotly_chart")
    if mode == "task":
        assert len(charts) >= 9  # norms, per-token, heatmap, 4 bands, mass, accuracy
        # the per-tag decomposition and the per-example agreement under the accuracy
        assert any("per prompt tag" in x.value for x in at.markdown)
        assert any("against the target without the vector" in x.value for x in at.markdown)
    else:
        assert len(charts) >= 4  # two vector lenses, per-token, heatmap (no saved sweep)
    at.slider(key="valpha").set_value(-1.0).run()
    assert not at.exception
    assert at.query_params.get("valpha") in ("-1.0", ["-1.0"])


def test_control_vector_of_another_model(tmp_path, tmp_cache, _navigation_mode, monkeypatch):
    """Another model gets no organism prompts: the page asks for two prompt files, builds
    the vector from them, lenses only typed text, and asks for a task before sweeps."""
    from streamlit.testing.v1 import AppTest

    from tests.conftest import make_think_tokenizer, make_tiny_checkpoint

    monkeypatch.delenv("INTERP_DEMO", raising=False)
    target = str(make_tiny_checkpoint(tmp_path / "m", "qwen2", seed=2,
                                      tokenizer=make_think_tokenizer()))
    pos, neg = tmp_path / "pos.txt", tmp_path / "neg.txt"
    pos.write_text("Think step by step.\nWait, check it.\n")
    neg.write_text("Answer now.\nJust the number.\n")

    def page(extra):
        at = AppTest.from_file(APP, default_timeout=180)
        at.switch_page("pages/vectors.py")
        at.query_params.update({"vt": target, "vmode": "control", "vcl": "1", **extra})
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    at = page({})
    assert any("two prompt files" in i.value for i in at.info)
    at = page({"vposf": str(pos), "vnegf": str(neg)})
    assert not [i for i in at.info if "two prompt files" in i.value]
    assert any("2 positive / 2 negative prompts" in c.value for c in at.caption)
    assert any("Type a text above" in i.value for i in at.info)
    assert any("give a task file" in i.value for i in at.info)


def test_vectors_page_follows_the_sidebar_pair(setup, monkeypatch, tmp_cache,
                                               _navigation_mode):
    """Without override models in the link, the task vector is the sidebar pair's
    fine − base applied to the base: at α = 1 the modified model *is* the fine-tune, so
    the trace's per-token KL is KL(P_base ‖ P_fine) of the two checkpoints, computed here
    with transformers alone."""
    import numpy as np
    import torch
    from streamlit.testing.v1 import AppTest
    from transformers import AutoModelForCausalLM

    from interp.organisms import task as T
    from interp.vectors.sweep import organism_batch

    monkeypatch.delenv("INTERP_DEMO", raising=False)
    m, _demo, _spec = setup
    base, fine = m["sft"], m["grpo"]
    at = AppTest.from_file(APP, default_timeout=180)
    at.switch_page("pages/vectors.py")
    at.query_params.update({"base": base, "fine": fine, "valpha": "1.0"})
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.segmented_control(key="vsrc").value == "pair"
    assert not [w for w in ("vt", "va", "vb") if w in [x.key for x in at.selectbox]
                + [x.key for x in at.text_input]]   # no model fields of its own
    got = next(d.value for d in at.dataframe if "kl_nats" in d.value.columns)

    problem = T.sample_problems(1, seed=0, split="eval")[-1]
    ids = torch.tensor([organism_batch([problem], "think").seqs[0]])
    with torch.no_grad():
        lp = [torch.log_softmax(AutoModelForCausalLM.from_pretrained(p).eval()(ids).logits[0]
                                .double(), -1) for p in (base, fine)]
    want = (lp[0].exp() * (lp[0] - lp[1])).sum(-1).numpy()
    assert len(got) == len(want)
    np.testing.assert_allclose(got["kl_nats"].to_numpy(), want, rtol=1e-3, atol=1e-5)

    # another sidebar pair: the page follows it (α = 1 is now that fine-tune)
    at.query_params.update({"fine": m["instruct"]})
    at2 = AppTest.from_file(APP, default_timeout=180)
    at2.switch_page("pages/vectors.py")
    at2.query_params.update({"base": base, "fine": m["instruct"], "valpha": "1.0"})
    at2.run()
    other = next(d.value for d in at2.dataframe if "kl_nats" in d.value.columns)
    assert not np.allclose(other["kl_nats"].to_numpy(), want, rtol=1e-3, atol=1e-5)

    # override: the page's own fields, labelled so, and in the link
    at.segmented_control(key="vsrc").set_value("override").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.query_params.get("vsrc") in ("override", ["override"])
    assert "(override)" in at.text_input(key="vt").label
