"""Batched generation with left padding and KV cache; steering hooks and their removal."""

import pytest
import torch

from interp.generation import generate, parse_think_text, think_span_ids
from interp.models import load_hf, load_model
from interp.steering import add_vector, at_tokens, n_active_hooks, project_out, steered

from ._tiny import save_tiny_qwen

PROMPTS = ["<bos> 1 2 + 3 =", "<bos> 4 5 6 7 8 + 9 9 =", "<bos> 7"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = save_tiny_qwen(tmp_path_factory.mktemp("gen") / "m", seed=1)
    return load_model(str(d), device="cpu"), d


def test_batched_equals_single_and_hf(tiny):
    lm, d = tiny
    batched = generate(lm, PROMPTS, max_new_tokens=10, stop_at_eos=False)
    hf = load_hf(d)
    for g, p in zip(batched, PROMPTS):
        single = generate(lm, [p], max_new_tokens=10, stop_at_eos=False)[0]
        nocache = generate(lm, [p], max_new_tokens=10, stop_at_eos=False, use_kv_cache=False)[0]
        ids = lm.tokenizer(p, return_tensors="pt")["input_ids"]
        ref = hf.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=0,
                          eos_token_id=None)[0, ids.shape[1]:].tolist()
        assert g.output_ids == single.output_ids == nocache.output_ids == ref


def test_sampling_is_seeded(tiny):
    lm, _ = tiny
    a = generate(lm, PROMPTS, max_new_tokens=8, temperature=1.0, seed=3)
    b = generate(lm, PROMPTS, max_new_tokens=8, temperature=1.0, seed=3)
    assert [g.output_ids for g in a] == [g.output_ids for g in b]


def test_alpha_zero_and_per_row_alpha(tiny):
    lm, _ = tiny
    toks = lm.tokenizer(PROMPTS[1], return_tensors="pt")["input_ids"]
    v = torch.randn(lm.cfg.d_model)
    base = lm.hooked(toks)
    with steered(lm, [add_vector("blocks.0.hook_resid_post", v, 0.0)]):
        assert torch.equal(lm.hooked(toks), base)
    # one batch, one alpha per row == separate runs
    alphas = torch.tensor([0.0, 2.0, -2.0])
    rows = [PROMPTS[1]] * 3
    batch = generate(lm, rows, max_new_tokens=6, stop_at_eos=False,
                     fwd_hooks=lambda st: [add_vector("blocks.1.hook_resid_post", v * 3,
                                                      alphas, state=st)])
    for i, a in enumerate(alphas.tolist()):
        one = generate(lm, [rows[i]], max_new_tokens=6, stop_at_eos=False,
                       fwd_hooks=[add_vector("blocks.1.hook_resid_post", v * 3, a)])[0]
        assert one.output_ids == batch[i].output_ids
    assert n_active_hooks(lm) == 0


def test_finished_rows_leave_the_batch_without_changing_outputs(tiny):
    """Rows that stop early are dropped from the batch and the KV cache; the others (each
    with its own α) must continue exactly as they would alone."""
    lm, _ = tiny
    free = generate(lm, PROMPTS, max_new_tokens=12, stop_at_eos=False)

    def stop_lengths(t):
        return [o.output_ids.index(t) + 1 if t in o.output_ids else 12 for o in free]

    cands = {t for g in free for t in g.output_ids}
    stop = max(cands, key=lambda t: (len(set(stop_lengths(t))), -min(stop_lengths(t))))
    assert len(set(stop_lengths(stop))) > 1, "no token ends the rows at different steps"
    v = torch.randn(lm.cfg.d_model, generator=torch.Generator().manual_seed(0))
    alphas = torch.tensor([0.0, 0.0, 0.0, 1.5, -1.5, 0.7])
    rows = PROMPTS * 2
    batch = generate(lm, rows, max_new_tokens=12, stop_at_eos=False, stop_token_ids=[stop],
                     fwd_hooks=lambda st: [add_vector("blocks.0.hook_resid_post", v, alphas,
                                                      state=st)])
    assert [len(g.output_ids) for g in batch[:3]] == stop_lengths(stop)
    for i, a in enumerate(alphas.tolist()):
        one = generate(lm, [rows[i]], max_new_tokens=12, stop_at_eos=False,
                       stop_token_ids=[stop],
                       fwd_hooks=[add_vector("blocks.0.hook_resid_post", v, a)])[0]
        assert one.output_ids == batch[i].output_ids
        assert one.finished == batch[i].finished == (one.output_ids[-1] == stop)
    assert n_active_hooks(lm) == 0


def test_hooks_removed_after_exception(tiny):
    lm, _ = tiny

    def boom(act, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        generate(lm, PROMPTS, max_new_tokens=3, fwd_hooks=[("blocks.0.hook_resid_post", boom)])
    assert n_active_hooks(lm) == 0
    with pytest.raises(RuntimeError), steered(lm, [("blocks.0.hook_resid_post", boom)]):
        lm.hooked(torch.tensor([[1, 2, 3]]))
    assert n_active_hooks(lm) == 0


def test_project_out_and_token_conditional(tiny):
    lm, _ = tiny
    seen = {}
    d = torch.randn(lm.cfg.d_model)

    def grab(act, hook):
        seen["a"] = act.clone()

    with steered(lm, [project_out("blocks.0.hook_resid_post", d),
                      ("blocks.0.hook_resid_post", grab)]):
        lm.hooked(torch.tensor([[1, 4, 5, 6]]))
    assert (seen["a"] @ (d / d.norm())).abs().max() < 1e-5
    # steering only at ';' tokens changes nothing when no ';' is fed
    semi = lm.tokenizer.convert_tokens_to_ids(";")
    plain = generate(lm, [PROMPTS[0]], max_new_tokens=5, stop_at_eos=False)[0]
    cond = generate(lm, [PROMPTS[0]], max_new_tokens=5, stop_at_eos=False, fwd_hooks=lambda st: [
        add_vector("blocks.0.hook_resid_post", d * 100, 1.0, state=st, where=at_tokens([semi]))])[0]
    if semi not in plain.output_ids[:-1]:
        assert cond.output_ids == plain.output_ids


def test_think_parsing():
    s = think_span_ids([5, 6, 20, 7], open_id=19, close_id=20, starts_open=True)
    assert (s.opened, s.closed, s.n_think_tokens) == (True, True, 2)
    s = think_span_ids([19, 5, 6, 7], open_id=19, close_id=20)
    assert (s.opened, s.closed, s.n_think_tokens) == (True, False, 3)
    p = parse_think_text("hi <think> a b </think> 42")
    assert p["thinking"].strip() == "a b" and p["answer"].strip() == "42"


def test_encode_user_prompt(tiny_tokenizer):
    from interp.errors import PromptError
    from interp.generation import encode_user_prompt

    with pytest.raises(PromptError):
        encode_user_prompt(tiny_tokenizer, "   ")
    with pytest.raises(PromptError):
        encode_user_prompt(tiny_tokenizer, "1 2 3", max_chars=3)
    with pytest.raises(PromptError):
        encode_user_prompt(tiny_tokenizer, "1 2 3", max_new_tokens=10, n_ctx=12)
    plain = encode_user_prompt(tiny_tokenizer, "1 2 3")
    chat = encode_user_prompt(tiny_tokenizer, "1 2 3", chat=True)
    templ = tiny_tokenizer.apply_chat_template([{"role": "user", "content": "1 2 3"}],
                                               add_generation_prompt=True, tokenize=False)
    assert chat == tiny_tokenizer(templ, add_special_tokens=False)["input_ids"]
    assert chat != plain and len(chat) > len(plain)


def test_preallocated_kv_entry_matches_transformer_lens_entry():
    """Appends, frozen appends and dropped rows give what TransformerLens' concatenating
    entry gives; running past the capacity is an error, not a silent overwrite."""
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

    from interp.generation import PreallocatedKVEntry

    g = torch.Generator().manual_seed(0)
    ref = TransformerLensKeyValueCacheEntry(torch.empty(3, 0, 2, 4), torch.empty(3, 0, 2, 4))
    pre = PreallocatedKVEntry(torch.empty(3, 0, 2, 4), capacity=6)
    for m in (3, 1, 1):
        k, v = torch.randn(3, m, 2, 4, generator=g), torch.randn(3, m, 2, 4, generator=g)
        for a, b in zip(ref.append(k, v), pre.append(k, v)):
            assert torch.equal(a, b)
    ref.frozen = pre.frozen = True
    k = torch.randn(3, 1, 2, 4, generator=g)
    assert torch.equal(ref.append(k, k)[0], pre.append(k, k)[0])
    assert pre.past_keys.shape[1] == ref.past_keys.shape[1] == 5
    keep = torch.tensor([True, False, True])
    pre.keep_rows(keep)
    assert torch.equal(pre.past_values, ref.past_values[keep])
    pre.frozen = False
    pre.append(k[keep], k[keep])
    with pytest.raises(RuntimeError, match="capacity"):
        pre.append(k[keep], k[keep])


def test_fast_rotary_matches_full_rotation_and_is_removed(tiny):
    """Rotating each cached key once gives the keys TransformerLens' full re-rotation
    gives (left padding included), and the per-instance override is gone afterwards."""
    from interp.generation import fast_rotary, init_kv_cache, left_pad

    hooked = tiny[0].hooked
    toks, mask = left_pad([[1, 5, 6, 7], [1, 8]], 0, torch.device("cpu"))
    cache = init_kv_cache(hooked, 2, 8, "cpu")
    seen = []
    with fast_rotary(hooked, cache):
        assert "apply_rotary" in vars(hooked.blocks[0].attn)
        hooked.run_with_hooks(toks, attention_mask=mask, past_kv_cache=cache, fwd_hooks=[
            ("blocks.0.attn.hook_rot_k", lambda x, hook: seen.append(x.clone()))])
        for t in (9, 10):
            nxt = torch.tensor([[t], [t]])
            hooked.run_with_hooks(nxt, attention_mask=torch.ones_like(nxt),
                                  past_kv_cache=cache, fwd_hooks=[
                ("blocks.0.attn.hook_rot_k", lambda x, hook: seen.append(x.clone()))])
    assert not any("apply_rotary" in vars(b.attn) for b in hooked.blocks)
    entry = cache.entries[0]
    full_mask = cache.previous_attention_mask
    ref = hooked.blocks[0].attn.apply_rotary(entry.past_keys, 0, full_mask)
    torch.testing.assert_close(seen[-1], ref, rtol=0, atol=0)
    assert seen[-1].shape[1] == 6 and entry._n_rot == 6   # the override did the work


# ------------------------------------------------------------------ per-step logits
def _logit_recorder(lm, seen):
    """fwd_hooks factory recording, at every forward of generate(), each row's next-token
    logits (final norm output at the last position, unembedded): seen[(row, step)]."""
    h = lm.hooked

    def factory(state):
        def rec(act, hook):
            logits = act[:, -1].float() @ h.W_U.float() + h.b_U.float()
            for i, r in enumerate(state.rows.tolist()):
                seen[(r, state.step + 1)] = logits[i].clone()
            seen.setdefault("batch_sizes", []).append(len(state.rows))
        return [("ln_final.hook_normalized", rec)]

    return factory


def test_per_step_logits_match_a_full_recompute(tiny):
    """Every logit vector generate() samples from equals a fresh forward over
    prompt + tokens so far: with left padding, sampling, rows that stop and leave the
    batch (and the KV cache) while others go on. Comparing logits (not argmax ids) catches
    a KV cache that is off by a rotated key (~1e-3 in the hidden states)."""
    lm, _ = tiny
    prompts = [PROMPTS[i % 3] + " " + " ".join(["1"] * (i % 4)) for i in range(8)]
    stop = lm.tokenizer.convert_tokens_to_ids("+")
    seen: dict = {}
    gens = generate(lm, prompts, max_new_tokens=16, temperature=1.5, seed=5, batch_size=8,
                    stop_token_ids=[stop], stop_at_eos=False,
                    fwd_hooks=_logit_recorder(lm, seen))
    lengths = [len(g.output_ids) for g in gens]
    assert min(lengths) < 8 and max(lengths) == 16, lengths   # rows stopped at different steps
    assert min(seen["batch_sizes"]) < 8, "no finished row left the batch"
    n = 0
    with torch.no_grad():
        for g in gens:
            for t in range(len(g.output_ids)):
                seq = torch.tensor([g.prompt_ids + g.output_ids[:t]])
                want = lm.hooked(seq)[0, -1].float()
                torch.testing.assert_close(seen[(g.row, t)], want, rtol=1e-5, atol=2e-5)
                n += 1
    assert n == sum(lengths)


# ------------------------------------------------------------------ sampling settings
def _nucleus(logits: torch.Tensor, temperature: float, top_p: float):
    """The definition, in numpy: softmax(logits / T), the smallest top set whose mass
    reaches top_p (a token is in when the mass before it is < top_p), renormalised."""
    import numpy as np

    x = logits.double().numpy() / temperature
    p = np.exp(x - x.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    before = np.concatenate([[0.0], np.cumsum(p[order])[:-1]])
    q = np.zeros_like(p)
    keep = order[before < top_p]
    q[keep] = p[keep]
    return q / q.sum(), set(keep.tolist())


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (0.7, 0.8),
                                               (1.3, 0.5)])
def test_sampling_follows_temperature_and_top_p(temperature, top_p):
    import numpy as np

    from interp.generation import sample_next

    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, 0.7])
    want, kept = _nucleus(logits, temperature, top_p)
    n = 40000
    g = torch.Generator().manual_seed(0)
    draws = sample_next(logits.expand(n, -1).clone(), temperature, top_p, g)
    freq = np.bincount(draws.numpy(), minlength=len(logits)) / n
    assert set(np.flatnonzero(freq).tolist()) == kept
    sigma = np.sqrt(want * (1 - want) / n)
    assert np.all(np.abs(freq - want) <= 5 * sigma + 1e-9), (freq, want)
    # temperature 0 is greedy whatever top_p says
    assert torch.equal(sample_next(logits[None], 0.0, top_p, g), torch.tensor([0]))


def test_sampling_settings_are_checked(tiny):
    from interp.errors import ConfigError

    lm, _ = tiny
    for kw in ({"temperature": float("nan")}, {"temperature": -1.0}, {"top_p": 0.0},
               {"top_p": 1.5}, {"max_new_tokens": 0}, {"batch_size": 0}):
        with pytest.raises(ConfigError):
            generate(lm, PROMPTS, **{"max_new_tokens": 3, **kw})


# ------------------------------------------------------------------ context length
def test_prompt_longer_than_the_context_is_a_prompt_error(tiny):
    """len(prompt) + max_new_tokens - 1 positions must fit n_ctx (128 here): the boundary
    case generates, one more is a PromptError naming the numbers, not an IndexError."""
    from interp.errors import PromptError

    lm, _ = tiny
    n_ctx = lm.cfg.n_ctx
    ids = lm.tokenizer(" ".join(["1"] * 120), add_special_tokens=False)["input_ids"]
    assert len(ids) == 120 and n_ctx == 128
    out = generate(lm, [ids], max_new_tokens=n_ctx - 120 + 1, stop_at_eos=False)[0]
    assert len(out.output_ids) == 9
    with pytest.raises(PromptError, match="context of 128"):
        generate(lm, [ids], max_new_tokens=n_ctx - 120 + 2)
    with pytest.raises(PromptError, match="context of 128"):
        generate(lm, [ids * 2], max_new_tokens=1)
    with pytest.raises(PromptError, match="vocabulary"):
        generate(lm, [[1, 2, 10_000]], max_new_tokens=1)


def test_nan_alpha_or_vector_is_refused(tiny):
    from interp.errors import ConfigError, NonFiniteError

    lm, _ = tiny
    v = torch.ones(lm.cfg.d_model)
    for bad in (float("nan"), float("inf"), torch.tensor([0.0, float("nan")])):
        with pytest.raises(ConfigError):
            add_vector("blocks.0.hook_resid_post", v, bad)
    with pytest.raises(NonFiniteError):
        add_vector("blocks.0.hook_resid_post", v * float("nan"), 1.0)
    with pytest.raises(ConfigError):
        project_out("blocks.0.hook_resid_post", torch.zeros(lm.cfg.d_model))
