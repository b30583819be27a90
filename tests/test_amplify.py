"""Logit-diff amplification against plain sampling and a hand-made combined softmax."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from interp.amplify import amplified_logits, amplify, summarise
from interp.errors import ConfigError, PromptError
from interp.generation import generate
from interp.models import load_model

PROMPT = "<bos> 1 + 2 = wait"


@pytest.fixture(scope="module")
def pair(tiny_pair_dirs):
    base, fine = tiny_pair_dirs
    return load_model(str(base), device="cpu"), load_model(str(fine), device="cpu")


@pytest.fixture(scope="module")
def hf_pair(tiny_pair_dirs):
    return [AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32).eval()
            for p in tiny_pair_dirs]


def _ids(model) -> list[int]:
    return model.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]


def test_alpha_zero_is_plain_fine_tune_sampling(pair):
    base, fine = pair
    r = amplify(base, fine, _ids(fine), alphas=[0.0, 2.0], n_samples=5, max_new_tokens=12,
                temperature=1.0, seed=7, batch_size=2)
    plain = generate(fine, [_ids(fine)] * 5, max_new_tokens=12, temperature=1.0, seed=7,
                     batch_size=2)
    got = r.samples[r.samples["alpha"] == 0.0]
    assert list(got["text"]) == [g.text for g in plain]
    assert list(got["new_tokens"]) == [len(g.output_ids) for g in plain]
    # α = 2 moved at least one sample (same random numbers, other distribution)
    assert list(r.samples[r.samples["alpha"] == 2.0]["text"]) != list(got["text"])


def _combined_next(hf_pair, seq: list[int], alpha: float) -> torch.Tensor:
    with torch.no_grad():
        lb, lf = (m(torch.tensor([seq])).logits[0, -1].double() for m in hf_pair)
    return lf + alpha * (lf - lb)


def test_greedy_amplified_tokens_follow_the_combined_logits(pair, hf_pair):
    base, fine = pair
    alpha = 3.0
    r = amplify(base, fine, _ids(fine), alphas=[alpha], n_samples=1, max_new_tokens=10,
                temperature=0.0)
    out = fine.tokenizer(r.samples["text"][0], add_special_tokens=False)["input_ids"]
    # a manual loop: both models re-run on the whole sequence at every step, no cache
    seq = list(_ids(fine))
    want = []
    for _ in range(len(out)):
        nxt = int(_combined_next(hf_pair, seq, alpha).argmax())
        want.append(nxt)
        seq.append(nxt)
    assert out == want
    # and it is not the fine-tune's own greedy continuation
    plain = generate(fine, [_ids(fine)], max_new_tokens=10, temperature=0.0)[0]
    assert plain.output_ids[:len(out)] != out


def test_both_models_are_stepped_on_the_sampled_tokens(pair, hf_pair):
    """The logits handed to ``combine`` at every step are each model's logits on the
    sequence so far (checked against full forwards without a cache), sampling at T=1."""
    base, fine = pair
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def combine(f, b):
        seen.append((f[0].double().clone(), b[0].double().clone()))
        return amplified_logits(f, b, 2.0)

    g = generate(fine, [_ids(fine)], max_new_tokens=12, temperature=1.0, seed=5,
                 partner=base, combine=combine, stop_at_eos=False)[0]
    seq = g.prompt_ids + g.output_ids
    assert len(seen) == len(g.output_ids) == 12
    assert len(set(g.output_ids)) > 2   # a varied sequence, not one repeated token
    with torch.no_grad():
        lb, lf = (m(torch.tensor([seq])).logits[0].double() for m in hf_pair)
    for s, (f, b) in enumerate(seen):
        at = len(g.prompt_ids) - 1 + s
        assert torch.allclose(f, lf[at], atol=1e-4) and torch.allclose(b, lb[at], atol=1e-4)


def test_first_token_distribution_is_the_combined_softmax(pair, hf_pair):
    base, fine = pair
    alpha, n = 4.0, 4000
    p = torch.softmax(_combined_next(hf_pair, _ids(fine), alpha), -1)
    p_fine = torch.softmax(_combined_next(hf_pair, _ids(fine), 0.0), -1)
    p_swap = torch.softmax(_combined_next(hf_pair[::-1], _ids(fine), alpha), -1)
    # the test can tell the right distribution from the fine-tune's and a swapped pair's
    assert 0.5 * (p - p_fine).abs().sum() > 0.15 and 0.5 * (p - p_swap).abs().sum() > 0.15
    gens = generate(fine, [_ids(fine)] * n, max_new_tokens=1, temperature=1.0, seed=3,
                    batch_size=n, partner=base,
                    combine=lambda f, b: amplified_logits(f, b, alpha))
    counts = torch.bincount(torch.tensor([g.output_ids[0] for g in gens]),
                            minlength=p.numel()).double()
    tv = 0.5 * (counts / n - p).abs().sum()
    assert tv < 0.06, tv


def test_counts_and_summary(pair):
    base, fine = pair
    r = amplify(base, fine, PROMPT, alphas=[0.0, 1.0], n_samples=4, max_new_tokens=16,
                temperature=1.0, seed=1)
    wait = fine.tokenizer.convert_tokens_to_ids("wait")
    for row in r.samples.itertuples():
        ids = fine.tokenizer(row.text, add_special_tokens=False)["input_ids"]
        assert row.hesitations == sum(1 for t in ids if t == wait)
    s = summarise(r.samples)
    assert list(s["alpha"]) == [0.0, 1.0] and list(s["n"]) == [4, 4]
    for a, g in r.samples.groupby("alpha"):
        row = s[s["alpha"] == a].iloc[0]
        assert row["mean_hesitations"] == pytest.approx(g["hesitations"].mean())
        assert row["share_with_hesitation"] == pytest.approx((g["hesitations"] > 0).mean())


def test_bad_settings(pair):
    base, fine = pair
    with pytest.raises(ConfigError, match="finite"):
        amplify(base, fine, PROMPT, alphas=[float("nan")])
    with pytest.raises(ConfigError, match="no α"):
        amplify(base, fine, PROMPT, alphas=[])
    with pytest.raises(PromptError, match="empty"):
        amplify(base, fine, "  ")
    with pytest.raises(ConfigError, match="together"):
        generate(fine, [PROMPT], partner=base)


def test_several_prompts_in_one_batch(pair):
    from interp.amplify import amplify_many

    base, fine = pair
    prompts = [PROMPT, "<bos> 3 + 4 ="]
    r = amplify_many(base, fine, prompts, alphas=[0.0], n_samples=2, max_new_tokens=6,
                     temperature=1.0, seed=2)
    plain = generate(fine, [p for p in prompts for _ in range(2)], max_new_tokens=6,
                     temperature=1.0, seed=2)
    assert list(r.samples["text"]) == [g.text for g in plain]
    assert list(r.samples["prompt"]) == [0, 0, 1, 1]
    assert list(r.samples["sample"]) == [0, 1, 0, 1]
