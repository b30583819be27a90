"""Per-token comparison of a pair against a direct full-forward softmax in plain torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from interp.errors import PairMismatchError, PromptError
from interp.models import load_model
from interp.organisms.task import TOKEN_ID, VOCAB, Problem, encode, make_trace
from interp.tokendiff import organism_marks, token_diff, token_diffs

TEXT = "<bos> hello world the answer is 4 2 wait check 4 2 so yes"


@pytest.fixture(scope="module")
def pair(tiny_pair_dirs):
    base, fine = tiny_pair_dirs
    return load_model(str(base), device="cpu"), load_model(str(fine), device="cpu")


def _direct_logprobs(path, ids: list[int]) -> torch.Tensor:
    """log softmax of the transformers model's own logits, float64: ``[n, vocab]``."""
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    with torch.no_grad():
        logits = hf(torch.tensor([ids])).logits[0].double()
    return torch.log_softmax(logits, -1)


def test_logprobs_and_kl_match_a_direct_softmax(pair, tiny_pair_dirs):
    base, fine = pair
    ids = base.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    d = token_diff(base, fine, ids, k=4)
    lb = _direct_logprobs(tiny_pair_dirs[0], ids)
    lf = _direct_logprobs(tiny_pair_dirs[1], ids)
    n = len(ids)
    assert len(d) == n - 1
    for j in range(1, n):   # target token j is predicted at position j - 1
        assert float(d.logprob_base[j - 1]) == pytest.approx(float(lb[j - 1, ids[j]]), abs=1e-4)
        assert float(d.logprob_fine[j - 1]) == pytest.approx(float(lf[j - 1, ids[j]]), abs=1e-4)
        pf, pb = lf[j - 1].exp(), lb[j - 1].exp()
        kl_fb = float((pf * (lf[j - 1] - lb[j - 1])).sum())
        kl_bf = float((pb * (lb[j - 1] - lf[j - 1])).sum())
        assert float(d.kl_fine_base[j - 1]) == pytest.approx(kl_fb, rel=1e-3, abs=1e-6)
        assert float(d.kl_base_fine[j - 1]) == pytest.approx(kl_bf, rel=1e-3, abs=1e-6)
        assert d.top_base_ids[j - 1].tolist() == lb[j - 1].topk(4).indices.tolist()
        assert d.top_fine_ids[j - 1].tolist() == lf[j - 1].topk(4).indices.tolist()
    # the two directions differ (KL is not symmetric) and are positive
    assert (d.kl_fine_base > 0).all() and (d.kl_base_fine > 0).all()
    assert not torch.allclose(d.kl_fine_base, d.kl_base_fine, rtol=1e-3)
    df = d.frame(base.tokenizer)
    assert list(df["pos"]) == list(range(1, n))
    assert list(df["token"]) == base.tokenizer.convert_ids_to_tokens(ids[1:])
    assert np.allclose(df["delta_logprob"], df["logprob_fine"] - df["logprob_base"])


def test_swapping_the_models_swaps_the_directions(pair):
    base, fine = pair
    ids = base.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    d, s = token_diff(base, fine, ids), token_diff(fine, base, ids)
    assert torch.allclose(d.kl_fine_base, s.kl_base_fine)
    assert torch.allclose(d.kl_base_fine, s.kl_fine_base)
    assert torch.equal(d.logprob_base, s.logprob_fine)
    assert torch.equal(d.top_fine_ids, s.top_base_ids)
    # the same model on both sides: exactly zero
    same = token_diff(base, base, ids)
    assert torch.equal(same.kl_fine_base, torch.zeros_like(same.kl_fine_base))


def test_batches_of_different_lengths_equal_one_at_a_time(pair):
    base, fine = pair
    texts = [TEXT, "<bos> 1 + 2 = 3", "<bos> ok so 7"]
    many = token_diffs(base, fine, [base.tokenizer(t, add_special_tokens=False)["input_ids"]
                                    for t in texts], k=3, batch_size=3)
    for t, d in zip(texts, many):
        one = token_diff(base, fine, base.tokenizer(t, add_special_tokens=False)["input_ids"],
                         k=3)
        assert torch.allclose(d.kl_fine_base, one.kl_fine_base, atol=1e-5)
        assert torch.allclose(d.logprob_fine, one.logprob_fine, atol=1e-5)
        assert torch.equal(d.top_base_ids, one.top_base_ids)


def test_bad_input_raises_typed_errors(pair, tiny_qwen_dir, tmp_path):
    base, fine = pair
    with pytest.raises(PromptError, match="no prompts"):
        token_diffs(base, fine, [])
    with pytest.raises(PromptError, match="empty"):
        token_diff(base, fine, "   ")
    with pytest.raises(PromptError, match="at least two"):
        token_diff(base, fine, [2])
    with pytest.raises(PromptError, match="context"):
        token_diff(base, fine, [5] * 200)   # the tiny models hold 128 positions
    from tests.conftest import TINY_VOCAB, make_tiny_checkpoint, make_tiny_tokenizer

    other = make_tiny_checkpoint(tmp_path / "other", "qwen2", 3,
                                 tokenizer=make_tiny_tokenizer(TINY_VOCAB[::-1]))
    with pytest.raises(PairMismatchError, match="token by token"):
        token_diff(base, load_model(str(other), device="cpu"), [2, 5, 6])


def test_organism_marks_follow_the_task():
    p = Problem(375, 4928, easy=False)   # 0375 + 4928 = 05303, slip in column 1
    text, labels = make_trace(p, np.random.default_rng(0), p_error=0.0)
    words = ["<bos>"] + text.split()
    expected, role = organism_marks(words)
    marked = {j + 1: (VOCAB[e], r) for j, (e, r) in enumerate(zip(expected, role))
              if e is not None}
    # the answer after A: the true sum, zero-padded
    a = words.index("A")
    assert [marked[a + 1 + d] for d in range(5)] == [(c, "answer") for c in "05303"]
    # every column result: the first write of the slip column (0 0) is wrong, the
    # correction after wait is right, every other result right as written
    wrong = [j for j, (e, r) in marked.items() if words[j] != e]
    slip = labels["hesitations"][0]
    assert slip["cause"] == "carry_slip"
    assert wrong == [slip["trigger"] - 1] or wrong == [slip["trigger"] - 1, slip["trigger"]]
    assert words[slip["pos"] + 1] == marked[slip["pos"] + 1][0]
    assert marked[slip["pos"] + 1][1] == "correction"
    # another format gets no marks
    assert organism_marks(["<bos>", "hello", "A", "1", "2"]) == ([None] * 4, [""] * 4)


def test_a_wrong_answer_is_marked_wrong():
    p = Problem(1, 2, easy=True)
    words = ["<bos>"] + "Q easy 0 0 0 1 + 0 0 0 2 = <think> </think> A 0 0 0 0 4 <eos>".split()
    expected, role = organism_marks(words)
    got = [(words[j + 1], VOCAB[e]) for j, e in enumerate(expected) if e is not None]
    assert got == [("0", "0"), ("0", "0"), ("0", "0"), ("0", "0"), ("4", "3")]
    assert p.answer == 3


def test_marks_reach_the_frame_on_the_organisms():
    from interp.models import organisms_dir

    if not (organisms_dir() / "grpo" / "model.safetensors").exists():
        pytest.skip("organisms not built")
    base, fine = (load_model(f"organism:{v}", device="cpu") for v in ("sft", "grpo"))
    text, _ = make_trace(Problem(375, 4928, easy=False), np.random.default_rng(0))
    d = token_diff(base, fine, encode(text))
    df = d.frame(base.tokenizer)
    ans = df[df["role"] == "answer"]
    assert list(ans["expected"]) == list("05303") and ans["correct"].all()
    assert TOKEN_ID["A"] == encode("A")[1]
    # top-1 correctness is each model's own argmax at that position
    for row in ans.itertuples():
        i = row.pos - 1
        assert row.fine_top1_correct == (int(d.top_fine_ids[i, 0]) == TOKEN_ID[row.expected])


def test_batches_respect_the_size_and_memory_caps(monkeypatch):
    import interp.tokendiff as td

    assert td._batches([3, 5, 4, 2, 6], 2, 10) == [(0, 2), (2, 4), (4, 5)]
    monkeypatch.setattr(td, "MAX_LOGITS", 100)
    # 2 × 5 × 10 = 100 fits, a third sequence would not; 6 × 10 alone is kept whole
    assert td._batches([3, 5, 4, 2, 6], 8, 10) == [(0, 2), (2, 4), (4, 5)]
    assert td._batches([20, 1], 8, 10) == [(0, 1), (1, 2)]


def test_report_token_figures_on_the_organisms():
    from interp.models import organisms_dir
    from interp.pair_report import token_figures

    if not (organisms_dir() / "grpo" / "model.safetensors").exists():
        pytest.skip("organisms not built")
    base, fine = (load_model(f"organism:{v}", device="cpu") for v in ("sft", "grpo"))
    out = token_figures(base, fine, n=4)
    assert out["by_role"]["answer"]["n"] == 4 * 5
    assert len(out["answer_digit_top1_right"]["fine"]) == 5
    n = sum(r["n"] for r in out["by_role"].values())
    assert n == out["n_tokens"]
    mean = sum(r["n"] * r["mean_kl_fine_base"] for r in out["by_role"].values()) / n
    assert mean == pytest.approx(out["mean_kl_fine_base"])
