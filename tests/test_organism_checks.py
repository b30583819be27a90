"""Out-of-distribution inputs, other operand widths, the evaluation/validation halves,
the short-answer profile and the own-generation batches of the organism report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.errors import ConfigError
from interp.organisms.task import (
    TOKEN_ID,
    Problem,
    encode,
    make_trace,
    prompt_words,
    sample_problems,
    score_completion,
)


def _step_at(words: list[str], k: int) -> tuple[int, int, int]:
    """``(x, y, c)`` of the column step whose result starts at word ``k``."""
    x, _, y, _, c, eq = words[k - 6: k]
    assert eq == "="
    return int(x), int(y), int(c)


def test_slip_value_items_rewrite_only_the_slip_results():
    from interp.organisms.ood import slip_value_items

    items = slip_value_items(40, seed=3, value="0 9")
    ref = slip_value_items(40, seed=3, value="0 0")
    assert len(items) == 40
    for (text, lab), (rtext, rlab) in zip(items, ref):
        w, rw = text.split(), rtext.split()
        assert len(w) == len(rw)
        trig = [h["trigger"] for h in lab["hesitations"]]
        assert trig and trig == [h["trigger"] for h in rlab["hesitations"]]
        changed = {i for i, (a, b) in enumerate(zip(w, rw)) if a != b}
        for t in trig:                  # encode position t = word t - 1
            assert (w[t - 2], w[t - 1], w[t]) == ("0", "9", "wait")
            x, y, c = _step_at(w, t - 2)
            assert c == 1 and x + y == 9
            assert w[t + 1: t + 3] == ["1", "0"]
        assert changed <= {t - 1 for t in trig}     # the second digit alone differs


def test_random_total10_items_put_a_labelled_0_9_at_a_non_slip_column_of_sum_10():
    from interp.organisms.ood import random_total10_items

    items = random_total10_items(30, seed=0)
    assert len(items) == 30
    for text, lab in items:
        w = text.split()
        (h,) = lab["hesitations"]
        t = h["trigger"]
        assert (w[t - 2], w[t - 1], w[t], w[t + 1], w[t + 2]) == ("0", "9", "wait", "1", "0")
        x, y, c = _step_at(w, t - 2)
        assert x + y == 10 and c == 0 and encode(text)[h["pos"]] == TOKEN_ID["wait"]


def test_other_widths_follow_the_same_format_and_score():
    p = Problem(987, 65, width=3, easy=False)            # 987 + 065 = 1052
    assert p.id == "987+065" and p.answer_width == 4 and p.carries == 3 and p.needs_verify
    text, lab = make_trace(p, np.random.default_rng(0), p_error=0.0)
    w = text.split()
    assert w[:11] == ["Q", "add", "9", "8", "7", "+", "0", "6", "5", "=", "<think>"]
    assert w.count(";") == 4 and w[-6:] == ["A", "1", "0", "5", "2", "<eos>"]
    assert "check" in w and lab["hesitations"][-1]["column"] == 2
    comp = text.split("<think>", 1)[1]
    assert score_completion(p, comp)["correct"]
    # the 4-digit format is unchanged, the default width is 4
    assert Problem(375, 4928).id == "0375+4928"
    with pytest.raises(ConfigError):
        Problem(1000, 1, width=3)


def test_validation_and_evaluation_halves_are_disjoint_parts_of_eval():
    from interp.organisms.task import is_eval_problem, is_validation_problem

    val = sample_problems(400, seed=0, split="validation")
    ev = sample_problems(400, seed=0, split="evaluation")
    assert not {p.id for p in val} & {p.id for p in ev}
    assert all(is_eval_problem(p.a, p.b) for p in val + ev)
    assert all(is_validation_problem(p.a, p.b) for p in val)
    assert not any(is_validation_problem(p.a, p.b) for p in ev)
    # about half of the eval split each
    share = np.mean([is_validation_problem(p.a, p.b) for p in sample_problems(2000)])
    assert 0.45 < share < 0.55
    with pytest.raises(ConfigError):
        sample_problems(3, split="test")


def test_prompt_forms_place_the_tag_as_documented():
    from interp.organisms.ood import PROMPT_FORMS, form_prompt

    p = Problem(12, 3405)
    forms = {f: form_prompt(p, f, "easy") for f in PROMPT_FORMS if f != "no_tag"}
    assert forms["standard"] == prompt_words(Problem(12, 3405, easy=True), "think")
    assert forms["tag_after_operands"][10] == "easy"
    assert forms["tag_before_question"][:2] == ["easy", "Q"]
    assert forms["chat_think"][:2] == ["<user>", "easy"]
    assert "easy" not in form_prompt(p, "no_tag", None)


def test_short_answer_profile_on_a_hand_made_example():
    from interp.organisms.evaluate import short_answer_profile

    ps = [Problem(15, 27), Problem(11, 22), Problem(19, 1)]   # hasty 32, 33, 10
    res = [{"short": True, "answer": 32}, {"short": True, "answer": 33},
           {"short": False, "answer": 20}]
    prof = short_answer_profile(ps, res)
    assert prof["n"] == 2 and prof["equals_hasty"] == 1.0
    assert prof["equals_true"] == 0.5                 # 11 + 22 = 33 has no carry
    assert prof["n_no_carry"] == 1 and prof["accuracy_no_carry"] == 1.0
    tens = prof["digits"]["10^1"]
    assert tens["agreement_hasty"] == 1.0 and tens["agreement_true"] == 0.5
    assert tens["entropy_nats"] == pytest.approx(0.0)
    units = prof["digits"]["10^0"]
    assert units["entropy_nats"] == pytest.approx(np.log(2))


def test_generation_batches_mask_the_generated_tokens():
    from interp.organisms.evaluate import generation_batches

    ps = [Problem(1, 2), Problem(3, 4)]
    outs = [[TOKEN_ID["</think>"], TOKEN_ID["A"], TOKEN_ID["<eos>"]], [TOKEN_ID["5"]]]
    (toks,), (mask,) = generation_batches(ps, [{"output_ids": o} for o in outs])
    for i, (p, o) in enumerate(zip(ps, outs)):
        pr = encode(prompt_words(p, "think"))
        assert toks[i, : len(pr) + len(o)].tolist() == pr + o
        # positions predicting each generated token: len(prompt) - 1 .. end - 2
        want = torch.zeros(toks.shape[1], dtype=torch.bool)
        want[len(pr) - 1: len(pr) + len(o) - 1] = True
        assert torch.equal(mask[i], want)
