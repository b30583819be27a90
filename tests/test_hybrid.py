"""Hybrid model (reasoner + base MLPs) and mean next-token KL."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.hybrid import build_hybrid, mean_next_token_kl
from interp.models import load_hf, load_model


@pytest.fixture(scope="module")
def pair(tiny_pair_dirs):
    base_dir, fine_dir = tiny_pair_dirs
    return load_model(str(base_dir), device="cpu"), load_model(str(fine_dir), device="cpu")


def test_hybrid_has_base_mlps_and_reasoner_everything_else(pair):
    base, fine = pair
    before_b = {k: v.clone() for k, v in base.hooked.state_dict().items()}
    before_f = {k: v.clone() for k, v in fine.hooked.state_dict().items()}
    hyb = build_hybrid(base, fine)
    sd = hyb.state_dict()
    n_mlp = 0
    for k, v in sd.items():
        if ".mlp." in k:
            n_mlp += 1
            assert torch.equal(v, before_b[k]), k
        else:
            assert torch.equal(v, before_f[k]), k
    assert n_mlp >= 3 * base.n_layers  # W_in, W_gate, W_out per layer (+ zero biases)
    assert not torch.equal(sd["blocks.0.mlp.W_in"], before_f["blocks.0.mlp.W_in"])
    # inputs untouched, and the hybrid owns its weights
    for k, v in base.hooked.state_dict().items():
        assert torch.equal(v, before_b[k])
    for k, v in fine.hooked.state_dict().items():
        assert torch.equal(v, before_f[k])
    assert hyb.blocks[0].mlp.W_in.data_ptr() != base.hooked.blocks[0].mlp.W_in.data_ptr()
    # behaviour: the hybrid equals a reasoner whose MLP outputs are the base MLP's outputs
    toks = torch.randint(6, 20, (2, 9))
    toks[:, 0] = fine.tokenizer.bos_token_id
    hb = base.hooked

    def swap(layer):
        def hook(mlp_out, hook):
            # TL's RMSNorm hook is before the gain: the MLP input is normalized * w
            normed = cache[f"blocks.{layer}.ln2.hook_normalized"]
            return hb.blocks[layer].mlp(normed * fine.hooked.blocks[layer].ln2.w)
        return hook

    cache = {}

    def keep(act, hook):
        cache[hook.name] = act

    hooks = []
    for layer in range(fine.n_layers):
        hooks.append((f"blocks.{layer}.ln2.hook_normalized", keep))
        hooks.append((f"blocks.{layer}.hook_mlp_out", swap(layer)))
    want = fine.hooked.run_with_hooks(toks, fwd_hooks=hooks)
    got = hyb(toks)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, fine.hooked(toks), atol=1e-3)


def _np_kl(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    def logsm(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))
    lp, lq = logsm(p_logits), logsm(q_logits)
    return (np.exp(lp) * (lp - lq)).sum(-1)


def test_mean_next_token_kl_matches_a_direct_softmax_computation(pair, tiny_pair_dirs):
    base, fine = pair
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(6, 20, (3, 7), generator=g), torch.randint(6, 20, (2, 5), generator=g)]
    masks = [torch.rand(b.shape, generator=g) > 0.3 for b in batches]
    # independent: the transformers models' logits, KL in numpy float64
    hf_b, hf_f = load_hf(tiny_pair_dirs[0]), load_hf(tiny_pair_dirs[1])
    vals = []
    for toks, m in zip(batches, masks):
        with torch.no_grad():
            pl = hf_f(input_ids=toks).logits.double().numpy()
            ql = hf_b(input_ids=toks).logits.double().numpy()
        vals.append(_np_kl(pl, ql)[m.numpy()])
    want = float(np.concatenate(vals).mean())
    got = mean_next_token_kl(fine, base, batches, masks)
    assert got == pytest.approx(want, rel=1e-4)
    assert got > 0
    assert mean_next_token_kl(fine, fine, batches, masks) == pytest.approx(0.0, abs=1e-9)
    # pad positions are left out by default
    pad = fine.tokenizer.pad_token_id
    padded = batches[0].clone()
    padded[:, -2:] = pad
    keep = padded != pad
    assert mean_next_token_kl(fine, base, [padded]) == pytest.approx(
        mean_next_token_kl(fine, base, [padded], [keep]))
