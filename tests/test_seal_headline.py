"""SEAL's headline setting is chosen by a rule on the sweep, not the configured α, and
its changes are coloured by whether they serve the goal (shorter thinking, fewer
hesitations, accuracy kept)."""

from __future__ import annotations

import pytest

from interp.errors import ConfigError
from interp.length.seal import delta_color, headline_of, headline_setting
from interp.store import PROJECT_ROOT

APP = str(PROJECT_ROOT / "app.py")


def point(alpha, tokens, acc, lo, hes=0.5, sem=0.5):
    return {"alpha": alpha, "mean_think_tokens": tokens, "sem_think_tokens": sem,
            "hesitations": hes, "n": 100,
            "accuracy": {"value": acc, "ci_low": lo, "ci_high": min(1.0, acc + 0.05)}}


def by_rule(sweep):
    """The rule written out again: shorter than α = 0 and accuracy at or above the
    lower end of α = 0's interval; then the shortest, fewer hesitations, smaller |α|."""
    ref = [p for p in sweep if p["alpha"] == 0][0]
    ok = [p for p in sweep if p["alpha"] != 0
          and p["mean_think_tokens"] < ref["mean_think_tokens"]
          and p["accuracy"]["value"] >= ref["accuracy"]["ci_low"]]
    if not ok:
        return 0.0
    ok.sort(key=lambda p: (p["mean_think_tokens"], p["hesitations"], abs(p["alpha"])))
    return ok[0]["alpha"]


def test_rule_skips_settings_that_break_accuracy_or_lengthen_the_thinking():
    sweep = [point(-1.0, 10.0, 0.0, 0.0, hes=4.0),   # shortest, but the model is broken
             point(-0.5, 20.0, 0.74, 0.70),           # shorter, accuracy in α = 0's CI
             point(-0.25, 25.0, 0.80, 0.75),
             point(0.5, 40.0, 0.80, 0.75),            # longer
             point(0.0, 30.0, 0.80, 0.72)]
    h = headline_setting(sweep)
    assert h["alpha"] == -0.5 == by_rule(sweep)
    assert h["eligible"] == [-0.5, -0.25] and set(h["rejected"]) == {-1.0, 0.5}
    assert "accuracy" in h["rejected"][-1.0] and "not shorter" in h["rejected"][0.5]
    assert h["reference"]["alpha"] == 0.0 and h["chosen"]["alpha"] == -0.5
    assert h["noise"] == pytest.approx((0.5 ** 2 + 0.5 ** 2) ** 0.5)
    # nothing qualifies: the unsteered model is the headline
    bad = [point(-1.0, 10.0, 0.0, 0.0), point(0.0, 30.0, 0.8, 0.72)]
    assert headline_setting(bad)["alpha"] == 0.0 == by_rule(bad)
    # ties on length: fewer hesitations first
    tie = [point(-0.1, 20.0, 0.8, 0.7, hes=0.4), point(-0.2, 20.0, 0.8, 0.7, hes=0.3),
           point(0.0, 30.0, 0.8, 0.7)]
    assert headline_setting(tie)["alpha"] == -0.2 == by_rule(tie)
    with pytest.raises(ConfigError):
        headline_setting([point(-1.0, 10.0, 0.0, 0.0)])


def test_committed_demo_headline_is_computed_from_its_sweep_and_is_not_alpha_minus_1():
    from interp.length.pipeline import list_runs, load_run
    from interp.length.report import demo_store

    stores = {"demo": demo_store()}
    run = load_run(stores["demo"], list_runs(stores)[0]["key"])
    seal = run["seal"]
    assert seal["alpha"] == -1.0            # the configured (paper's) α
    h = headline_of(seal)
    assert h["alpha"] != -1.0
    assert h["alpha"] == by_rule(seal["sweep"])
    chosen = [p for p in seal["sweep"] if p["alpha"] == h["alpha"]][0]
    assert h["chosen"] == chosen
    ref = [p for p in seal["sweep"] if p["alpha"] == 0][0]
    assert chosen["accuracy"]["value"] >= ref["accuracy"]["ci_low"]


def test_headline_without_a_sweep_is_the_configured_alpha_and_says_so():
    seal = {"alpha": -1.0, "hesitations_before": 0.4, "hesitations_after": 0.2,
            "before": {"mean_think_tokens": 30.0, "n": 10},
            "after": {"mean_think_tokens": 20.0, "n": 10}}
    h = headline_of(seal)
    assert h["alpha"] == -1.0 and "no sweep" in h["rule"]
    assert h["chosen"]["hesitations"] == 0.2 and h["reference"]["hesitations"] == 0.4


def test_deltas_are_green_only_when_they_serve_the_goal():
    # Streamlit colours a positive delta green with "normal", red with "inverse"
    assert delta_color("hesitations") == "inverse"
    assert delta_color("mean_think_tokens") == "inverse"
    assert delta_color("accuracy") == "normal"
    assert delta_color("something else") == "off"


def test_seal_view_shows_the_rule_headline_with_goal_colours(_navigation_mode, tmp_cache,
                                                             monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("INTERP_DEMO", "1")
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["ltab"] = "SEAL"
    at.switch_page("pages/length.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    metrics = {m.label: m for m in at.metric}
    captions = " ".join(c.value for c in at.caption)
    assert "Headline α = **-0.25**" in captions and "configured α = -1.0" in captions

    def colour(m):
        return type(m.proto).MetricColor.Name(m.proto.color)

    # fewer hesitations and fewer tokens are good (green), more would be red; the old
    # headline (α = −1: +3.6 hesitations, +38 tokens) was shown green
    for label in ("hesitations / response", "mean thinking tokens"):
        m = metrics[label]
        assert colour(m) == ("GREEN" if m.delta.startswith("-") else "RED"), label
    assert metrics["hesitations / response"].delta.startswith("-")
    assert metrics["hesitations / response"].value == "0.377"     # α = −0.25's value
    names = [t.get("name") for c in at.get("plotly_chart")
             for t in __import__("json").loads(c.proto.spec)["data"]]
    assert "hesitations / response" in names
