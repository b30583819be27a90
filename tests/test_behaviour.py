"""Per-example behaviour metrics (interp.behaviour) against hand-worked and independent
computations."""

from __future__ import annotations

import numpy as np
import pytest

from interp.behaviour import (
    agreement_brief,
    answer_start,
    compare,
    compare_records,
    decompose,
    decomposed_change,
    error_type,
    first_divergence,
    token_agreement,
)
from interp.errors import ConfigError
from interp.organisms.task import Problem
from interp.stats import bootstrap_mean_ci


def test_compare_on_a_hand_worked_example():
    ref = [[1, 2, 3, 4], [5, 6], [7], []]
    oth = [[1, 2, 9, 4], [5, 6], [7, 8], []]
    c = compare([10, 20, 30, None], [11, 20, 30, None], ref, oth, answer_starts=[2, 0, 5, 0])
    # answers: 10 != 11, the rest equal (two unreadable answers count as equal)
    assert c["answer_agreement"] == pytest.approx(3 / 4)
    assert c["completion_agreement"] == pytest.approx(2 / 4)
    # 3 of 4 positions; identical; 1 match over the longer length 2; two empty lists
    assert c["token_agreement"] == pytest.approx((3 / 4 + 1 + 1 / 2 + 1) / 4)
    fd = c["first_divergence"]
    # divergences at 2 (= answer start 2: answer) and 1 (prefix; < 5: thinking)
    assert fd["n_diverging"] == 2 and fd["median"] == pytest.approx(1.5)
    assert fd["in_thinking"] == pytest.approx(0.5) and fd["in_answer"] == pytest.approx(0.5)
    lo, hi = c["completion_agreement_ci95"]
    assert lo < 0.5 < hi


def test_token_agreement_and_divergence_match_a_padded_numpy_computation():
    rng = np.random.default_rng(0)
    for _ in range(300):
        a = rng.integers(0, 3, rng.integers(0, 7)).tolist()
        b = a[: rng.integers(0, len(a) + 1)] + rng.integers(0, 3, rng.integers(0, 4)).tolist()
        n = max(len(a), len(b))
        pa = np.full(n, -1)
        pb = np.full(n, -2)     # different fillers: padded positions never match
        pa[: len(a)], pb[: len(b)] = a, b
        eq = pa == pb
        want_tok = eq.mean() if n else 1.0
        want_div = None if (len(a) == len(b) and eq.all()) else int(np.argmin(eq))
        assert token_agreement(a, b) == pytest.approx(want_tok)
        assert first_divergence(a, b) == want_div


def test_answer_start_and_compare_records_groups():
    close = 21
    assert answer_start([5, 6, close, 19, 4], close) == 3
    assert answer_start([5, 6], close) == 2          # never closes: all thinking
    assert answer_start([19, 4], close, thinking=False) == 0
    ref = [{"answer": 5, "output_ids": [close, 19, 9], "closed": True, "think_end": 0,
            "think_tokens": 0},
           {"answer": 7, "output_ids": [4, close, 19, 7], "closed": True, "think_end": 1,
            "think_tokens": 1}]
    oth = [{"answer": 6, "output_ids": [close, 19, 8]},
           {"answer": 7, "output_ids": [4, close, 19, 7]}]
    c = compare_records(ref, oth)
    assert c["groups"]["short"] == {"n": 1, "answer_agreement": 0.0,
                                    "completion_agreement": 0.0}
    assert c["groups"]["long"]["answer_agreement"] == 1.0
    assert c["first_divergence"]["in_answer"] == 1.0       # position 2 >= start 1
    b = agreement_brief(ref, oth)
    assert b["answer_agreement"] == 0.5 and b["first_divergence_median"] == 2.0
    with pytest.raises(ConfigError):
        compare([1], [1, 2], [[1]], [[1]])


def test_error_types_of_wrong_answers():
    p = Problem(9999, 1)                     # 10000: final carry
    assert error_type(p, 10000, False) is None
    assert error_type(p, 0, False) == "dropped_final_carry"
    assert error_type(p, None, False) == "no_answer"
    assert error_type(p, 1234, True) == "short_thinking"
    q = Problem(15, 27)                      # 00042
    assert error_type(q, 32, False) == "carry_error"      # tens digit one short
    assert error_type(q, 52, False) == "carry_error"
    assert error_type(q, 1042, False) == "carry_error"    # a carry added in front
    assert error_type(q, 47, False) == "other"
    assert error_type(q, 1000042, False) == "other"       # too many digits


def test_decompose_by_tag_and_the_change_split():
    ps = [Problem(1, 1, easy=True), Problem(2, 2, easy=False), Problem(3, 3, easy=False),
          Problem(9999, 1, easy=False)]

    def res(correct, short, err=0, ver=0, ans=None):
        return {"correct": correct, "short": short, "hesitations_error": err,
                "hesitations_verify": ver, "answer": ans}
    before = [res(False, True, ans=5), res(True, False, ans=4), res(True, False, 1, ans=6),
              res(False, False, 0, 1, ans=0)]
    after = [res(True, False, ans=2), res(True, False, ans=4), res(True, False, ans=6),
             res(True, False, ans=10000)]
    d0, d1 = decompose(ps, before), decompose(ps, after)
    assert d0["easy"]["n"] == 1 and d0["add"]["n"] == 3 and d0["all"]["n"] == 4
    assert d0["easy"]["short_fraction"] == 1.0 and d0["add"]["accuracy"] == pytest.approx(2 / 3)
    assert d0["add"]["hesitation_rate_error"] == pytest.approx(1 / 3)
    assert d0["add"]["hesitation_rate_verify"] == pytest.approx(1 / 3)
    assert d0["all"]["errors"]["counts"]["short_thinking"] == 1
    assert d0["all"]["errors"]["counts"]["dropped_final_carry"] == 1
    ch = decomposed_change(d0, d1)
    assert ch["accuracy_change"] == pytest.approx(0.5)
    assert ch["contribution_easy"] + ch["contribution_add"] == pytest.approx(0.5)
    assert ch["contribution_easy"] == pytest.approx(0.25)


def test_bootstrap_mean_ci_covers_the_mean_and_narrows_with_n():
    rng = np.random.default_rng(1)
    x = rng.normal(size=50)
    lo, hi = bootstrap_mean_ci(x, 2000)
    assert lo < x.mean() < hi
    lo2, hi2 = bootstrap_mean_ci(np.tile(x, 16), 2000)
    assert hi2 - lo2 < (hi - lo) / 2
    assert all(np.isnan(v) for v in bootstrap_mean_ci([]))


def test_answer_code_stores_any_answer_as_int64():
    import torch

    from interp.behaviour import ANSWER_CAP, answer_code

    codes = [answer_code(x) for x in (None, 0, 10342, 10**40)]
    assert codes == [-1, 0, 10342, ANSWER_CAP]
    assert torch.tensor(codes).dtype == torch.int64
    assert error_type(Problem(1, 2), codes[-1], False) == "other"
