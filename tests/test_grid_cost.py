"""Typed grids (interp.grid) and run cost estimates (interp.cost) against instrumented runs."""

from __future__ import annotations

import functools

import pytest

from interp import cost as C
from interp.errors import ConfigError, CostLimitError, GridError
from interp.grid import format_grid, parse_grid
from tests.test_vectors_sweep import _tiny_organism


# ------------------------------------------------------------------ parsing
@pytest.mark.parametrize("text, want", [
    ("−2,−1,0,1,2", [-2.0, -1.0, 0.0, 1.0, 2.0]),
    ("-2:2:0.5", [-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0]),
    ("-2 : 2 : 1", [-2.0, -1.0, 0.0, 1.0, 2.0]),
    ("1; 0.5  0.25", [1.0, 0.5, 0.25]),
    ("0:0.3:0.1", [0.0, 0.1, 0.2, 0.3]),         # float noise does not drop the end
    ("2:-2:-2", [2.0, 0.0, -2.0]),
    ("0, 1, 0, 1:2", [0.0, 1.0, 2.0]),            # repeats dropped, order kept
    ("-1:1:0.75", [-1.0, -0.25, 0.5]),            # a step that does not reach stop
])
def test_parse_grid(text, want):
    assert parse_grid(text, "α") == pytest.approx(want)


def test_parse_integer_grid_and_list_input():
    assert parse_grid("0:3", "layer", integer=True) == [0, 1, 2, 3]
    assert all(isinstance(x, int) for x in parse_grid("0:3", "layer", integer=True))
    assert parse_grid([1, 2.0], "k", integer=True) == [1, 2]


@pytest.mark.parametrize("text, kw, words", [
    ("", {}, "at least 1"),
    ("1, x", {}, "'x' is not a number (item 2"),
    ("nan", {}, "not a finite"),
    ("inf", {}, "not a finite"),
    ("1:2:0", {}, "step of '1:2:0' is 0"),
    ("2:1", {}, "never reaches"),
    ("1:2:3:4", {}, "not a number or a range"),
    ("1::2", {}, "not a range"),
    ("0:1000:0.001", {}, "more than 256"),
    ("1.5", {"integer": True}, "not a whole number"),
    ("0:5", {"integer": True, "hi": 3}, "4 is out of range; values must be <= 3"),
    ("0:5", {"integer": True, "lo": 0, "hi": 3}, "values must be between 0 and 3"),
    ("-1", {"lo": 0}, ">= 0"),
    ("1", {"min_values": 2}, "at least 2 values"),
])
def test_parse_grid_bad_input(text, kw, words):
    with pytest.raises(GridError) as e:
        parse_grid(text, "α", **kw)
    assert words in str(e.value) and str(e.value).startswith("α: ")
    assert isinstance(e.value, ConfigError) and "\n" not in str(e.value)


def test_format_grid_round_trips():
    for g in ([-2.0, -1.0, 0.0, 1.0, 2.0], [0.1, -0.0625, 1e-7, 3.0], [0, 1, 2]):
        text = format_grid(g)
        assert parse_grid(text, "α") == g
    assert format_grid([-1.0, 0.0, 0.5]) == "-1,0,0.5"


# ------------------------------------------------------------------ estimates
def test_estimates_monotone_in_sizes():
    base = C.vectors_experiment_cost({"n_sweep": 10, "n_accuracy": 5, "max_new_tokens": 8,
                                      "alphas": [-1, 0, 1], "accuracy_alphas": [0, 1]})
    for more in ({"n_sweep": 100}, {"n_accuracy": 200}, {"max_new_tokens": 16},
                 {"alphas": [-2, -1, 0, 1, 2]}, {"accuracy_alphas": [-1, 0, 1]}):
        spec = {"n_sweep": 10, "n_accuracy": 5, "max_new_tokens": 8, "alphas": [-1, 0, 1],
                "accuracy_alphas": [0, 1], **more}
        c = C.vectors_experiment_cost(spec)
        assert c.forwards >= base.forwards and c.tokens > base.tokens, more
        assert c.seconds(C.Calibration(1e-3, 1e-6, "cpu")) > \
            base.seconds(C.Calibration(1e-3, 1e-6, "cpu"))
    g1 = C.length_grid_cost(10, [-1, 0, 1], 20, [-1, 0], 8)
    g2 = C.length_grid_cost(10, [-1, 0, 1, 2], 20, [-1, 0], 8)
    g3 = C.length_grid_cost(10, [-1, 0, 1], 20, [-1, -0.5, 0], 8)
    assert g2.generations == g1.generations + 10 and g3.generations == g1.generations + 20
    assert g2.tokens > g1.tokens and g3.tokens > g1.tokens
    assert g1.generations == 10 * 3 + 20 * 2 and g1.new_tokens == 8


def test_describe_and_demo_limit():
    from interp.serving import DemoSettings

    c = C.Cost(forwards=10, tokens=100) + C.generation_cost([5] * 3, 4, 2)
    assert c.generations == 3 and c.forwards == 10 + 2 * 4
    text = c.describe(C.Calibration(0.5, 0.0, "cpu"))
    assert text.startswith("≈ 3 generations × 4 tokens + 10 forward passes")
    assert text.endswith("≈ 9 s on cpu")
    C.check_demo(c, DemoSettings(enabled=False, max_grid_forwards=1))
    C.check_demo(c, DemoSettings(enabled=True, max_grid_forwards=18))
    with pytest.raises(CostLimitError, match="18 forward passes"):
        C.check_demo(c, DemoSettings(enabled=True, max_grid_forwards=17))


@pytest.fixture(scope="module")
def organisms(tmp_path_factory):
    root = tmp_path_factory.mktemp("cost")
    return {n: _tiny_organism(root / n, i) for i, n in enumerate(("instruct", "grpo", "sft"))}


def count_forwards(monkeypatch, generating_module) -> dict:
    """Count every forward of any HookedTransformer (``calls["n"]``); the ``generate``
    that ``generating_module`` calls never stops early (a generation's estimate is its
    upper bound, reached exactly when nothing stops)."""
    import transformer_lens

    calls = {"n": 0}
    fwd = transformer_lens.HookedTransformer.forward

    def counting(self, *a, **k):
        calls["n"] += 1
        return fwd(self, *a, **k)

    monkeypatch.setattr(transformer_lens.HookedTransformer, "forward", counting)
    monkeypatch.setattr(generating_module, "generate",
                        functools.partial(generating_module.generate, stop_at_eos=False))
    return calls


@pytest.fixture
def counted(monkeypatch):
    import interp.generation as G

    return count_forwards(monkeypatch, G)


def test_generation_cost_equals_instrumented_forwards(organisms, counted):
    from interp.generation import generate
    from interp.models import load_model

    m = load_model(organisms["instruct"], device="cpu", dtype="float32")
    prompts = ["Q 1 2 + 3 4 <think>"] * 7
    counted["n"] = 0
    generate(m, prompts, max_new_tokens=3, batch_size=3)
    assert counted["n"] == C.generation_cost([5] * 7, 3, 3).forwards == 9


@pytest.mark.parametrize("kind", ["task", "control"])
def test_vectors_estimate_equals_instrumented_run(organisms, counted, tmp_cache, kind):
    from interp.store import Store
    from interp.vectors.demo import run_experiment

    spec = {"kind": kind, "target": organisms["instruct"], "n_sweep": 70, "n_accuracy": 3,
            "max_new_tokens": 4, "alphas": [-1.0, 0.0, 1.0], "accuracy_alphas": [0.0, 1.0]}
    if kind == "task":
        spec.update(donor_a=organisms["grpo"], donor_b=organisms["sft"], reference=None)
    else:
        spec.update(n_control=8, layer=1)
    est = C.vectors_experiment_cost(spec)
    counted["n"] = 0
    run_experiment(spec, Store(tmp_cache / "v"), device="cpu", progress=lambda *a: None)
    assert counted["n"] == est.forwards
    # the parts: 2 chunks of the 70-row sweep x (1 + 3 α); 2 α x 4 new tokens
    assert est.parts["forward sweep"] == 2 * 4 and est.parts["accuracy sweep"] == 2 * 4
    assert est.generations == 2 * 3 + 2
