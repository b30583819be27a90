"""Adapter evaluation on an organism-vocabulary pair (random weights): per-example
comparison with the reasoner, faithfulness on the reasoner's own generations, the split
of problems, and the L1 selection rule."""

from __future__ import annotations

import json

import pytest
import torch

from interp.store import Store


@pytest.fixture(scope="module")
def org_setup(tmp_path_factory):
    from interp.adapters.train import TrainConfig, setup_models
    from interp.organisms.train import random_organism_checkpoint

    root = tmp_path_factory.mktemp("orgpair")
    b = random_organism_checkpoint(root / "base", 0)
    r = random_organism_checkpoint(root / "reasoner", 1)
    cfg = TrainConfig(base=b, reasoner=r, d_sae=16, device="cpu", max_len=64)
    return cfg, setup_models(cfg)


def test_zero_adapters_compare_with_the_reasoner_exactly_as_the_hybrid(org_setup):
    """With zero decoders the adapter model is the hybrid, so its per-example comparison
    with the reasoner is the hybrid's; each figure is checked against the generations."""
    from interp.adapters.evaluate import behaviour
    from interp.generation import generate
    from interp.organisms.task import TOKEN_ID, prompt_text, sample_problems, score_completion

    _, s = org_setup
    with torch.no_grad():
        for a in s.model.adapters.layers:
            a.W_dec.zero_()
            a.b_dec.zero_()
        # random base MLPs barely move a random model: make the hybrid's count
        for blk in s.model.hybrid.blocks:
            blk.mlp.W_out.mul_(10.0)
    be = behaviour(s.model.hybrid, s.model.adapters, None, s.reasoner, n=12,
                   max_new_tokens=10, keep_generations=True)
    assert be["split"] == "evaluation"
    ad, hy = be["per_example"]["adapter_vs_reasoner"], be["per_example"]["hybrid_vs_reasoner"]
    assert json.dumps(ad, sort_keys=True) == json.dumps(hy, sort_keys=True)
    # independent: regenerate both models and compare the completions directly
    probs = sample_problems(12, seed=4321, split="evaluation")
    prompts = [prompt_text(p, "think") for p in probs]
    gr = generate(s.reasoner, prompts, max_new_tokens=10, seed=4321)
    gh = generate(s.model.hybrid, prompts, max_new_tokens=10, seed=4321)
    assert [g.output_ids for g in be["_reasoner_gens"]] == [g.output_ids for g in gr]
    same = [a.output_ids == b.output_ids for a, b in zip(gr, gh)]
    assert hy["completion_agreement"] == pytest.approx(sum(same) / 12)
    tok = []
    for a, b in zip(gr, gh):
        x, y = a.output_ids, b.output_ids
        tok.append(sum(u == v for u, v in zip(x, y)) / max(len(x), len(y), 1))
    assert hy["token_agreement"] == pytest.approx(sum(tok) / 12)
    assert 0 < hy["token_agreement"] < 1, "the test needs partial agreement"

    def ans(g, p):
        w = " ".join(s.reasoner.tokenizer.convert_ids_to_tokens(g.output_ids))
        return score_completion(p, w)["answer"]
    agree = [ans(a, p) == ans(b, p) for a, b, p in zip(gr, gh, probs)]
    assert hy["answer_agreement"] == pytest.approx(sum(agree) / 12)
    assert TOKEN_ID["</think>"] == s.reasoner.tokenizer.get_vocab()["</think>"]


def test_evaluation_adds_faithfulness_on_the_reasoners_own_generations(org_setup, tmp_path):
    from interp.adapters.evaluate import evaluate_artifact
    from interp.adapters.io import save_adapters
    from interp.hybrid import next_token_kl

    cfg, s = org_setup
    with torch.no_grad():
        for a in s.model.adapters.layers:
            a.W_dec.normal_(0, 0.1)
    store = Store(tmp_path)
    art = save_adapters(s, cfg, store=store, history=[])
    ev = evaluate_artifact(art, store, n_faith=8, n_behaviour=6,
                           model_bundle=(s.model, s.base, s.reasoner))
    assert ev.config["split"] == "evaluation" and ev.meta["split"] == "evaluation"
    own = ev.meta["faithfulness_own_generations"]
    be = ev.meta["behaviour"]
    assert "_reasoner_gens" not in be
    # independent: KL(reasoner || hybrid) over every token of prompt + own generation
    from interp.generation import generate
    from interp.organisms.task import prompt_text, sample_problems

    probs = sample_problems(6, seed=4321, split="evaluation")
    gens = generate(s.reasoner, [prompt_text(p, "think") for p in probs],
                    max_new_tokens=96, seed=4321, batch_size=128)
    tot = n = 0.0
    for g in gens:
        seq = torch.tensor((list(g.prompt_ids) + list(g.output_ids))[:64])[None]
        kl = next_token_kl(s.reasoner, s.model.hybrid, seq)[0]
        tot += float(kl.sum())
        n += kl.numel()
    assert own["kl_hybrid"] == pytest.approx(tot / n, rel=1e-4)
    assert own["n_tokens"] == n


def test_l1_selection_rule():
    from interp.adapters.report import select_l1

    runs = [{"l1": 0.003, "mean_l0": 40.0, "kl_gap_closed": 0.999},
            {"l1": 0.01, "mean_l0": 9.0, "kl_gap_closed": 0.998},
            {"l1": 0.03, "mean_l0": 4.0, "kl_gap_closed": 0.997},
            {"l1": 0.1, "mean_l0": 2.0, "kl_gap_closed": float("nan")}]
    assert select_l1(runs) == 0.01
    assert select_l1(runs, max_l0=5.0) == 0.03
    assert select_l1(runs, max_l0=1.0) is None


def test_compare_with_reasoner_reads_each_side_and_groups_by_the_reasoner():
    """Hand-made scores: answers agree on the first problem only, completions on the
    second only; groups follow the reasoner's (not the other model's) short thinking."""
    from interp.adapters.evaluate import compare_with_reasoner

    ref = [{"answer": 5, "short": False, "output_ids": [1, 2, 3]},
           {"answer": 7, "short": True, "output_ids": [4, 5]}]
    other = [{"answer": 5, "short": True, "output_ids": [1, 2, 9]},
             {"answer": 8, "short": False, "output_ids": [4, 5]}]
    c = compare_with_reasoner(other, ref, None)
    assert c["n"] == 2 and c["answer_agreement"] == 0.5
    assert c["completion_agreement"] == 0.5
    assert c["token_agreement"] == pytest.approx((2 / 3 + 1) / 2)
    g = c["groups"]
    assert g["reasoner_short"] == {"n": 1, "answer_agreement": 0.0, "completion_agreement": 1.0}
    assert g["reasoner_long"] == {"n": 1, "answer_agreement": 1.0, "completion_agreement": 0.0}
