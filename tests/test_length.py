"""Reasoning-length tools on tiny random models: every piece of math is checked against
an independent computation (full activation caches, real ablations, HF reloads)."""

import numpy as np
import pytest
import torch

from interp.errors import ConfigError
from interp.generation import ThinkSpan
from interp.length.data import (
    ThinkExample,
    ThinkMarkers,
    ensure_marker_tokenizer,
    examples_from_records,
    generate_thinking,
    mean_activations,
    split_long_short,
    think_example,
    think_span,
)
from interp.length.directions import thinking_length_direction
from interp.length.edit import (
    apply_head_edit,
    edited,
    export_edited_checkpoint,
    head_write_norms,
    max_logit_diff,
)
from interp.length.heads import head_short_scores, top_heads
from interp.length.seal import classify_step, labelled_separators, seal_hooks, seal_vector
from interp.length.stats import auroc, spearman, wilson
from interp.length.steer import alpha_grid, alpha_sweep, steering_hooks
from interp.models import load_model
from interp.steering import n_active_hooks, steered

MK = ThinkMarkers("<think>", "</think>", True, "ok", "wait")
PROMPTS = ["<bos> 1 2 + 3 = <think>", "<bos> 4 5 + 6 7 = <think>", "<bos> 9 = <think>"]


@pytest.fixture(scope="module")
def lm(tiny_qwen_dir, tiny_tokenizer):
    m = load_model(str(tiny_qwen_dir), device="cpu")
    # AutoTokenizer may reload the saved word-level tokenizer as a Qwen2Tokenizer that
    # drops words such as <think>: the guard swaps in the checkpoint's own tokenizer.json.
    ensure_marker_tokenizer(m, MK)
    probe = "<bos> 1 = <think> ok wait </think>"
    assert m.tokenizer(probe, add_special_tokens=False)["input_ids"] == \
        tiny_tokenizer(probe, add_special_tokens=False)["input_ids"]
    return m


def _ids(lm, text):
    return lm.tokenizer(text, add_special_tokens=False)["input_ids"]


def _examples(lm):
    """Teacher-forcing inputs with 0, 1 and 4 thinking tokens."""
    out = []
    for p, think in [(PROMPTS[0], ""), (PROMPTS[1], "7"), (PROMPTS[2], "1 ok 2 wait 3")]:
        pid = _ids(lm, p)
        tid = _ids(lm, think) if think else []
        sp = ThinkSpan(True, True, 0, len(tid), len(tid))
        out.append(think_example(pid, tid + _ids(lm, "</think> 5"), sp, "think"))
    return out


# ------------------------------------------------------------------ data / positions
def test_positions_rule_short_contributes_one_position(lm):
    ex = _examples(lm)
    close = lm.tokenizer.convert_tokens_to_ids("</think>")
    for e in ex:
        # positions predict thinking tokens then the close marker: n_think + 1 of them
        assert len(e.positions) == e.think_tokens + 1
        assert e.ids[e.positions[0]] == lm.tokenizer.convert_tokens_to_ids("<think>")
        assert close not in e.ids
    assert ex[0].positions == [len(ex[0].ids) - 1]


def test_auto_positions_rule():
    import numpy as np

    from interp.errors import ConfigError
    from interp.length.pipeline import make_config, resolve_positions_rule

    labels = np.array([0, 0, 0, 1, 1, -1])
    # short responses without any thinking: compare the same (decision) position
    assert resolve_positions_rule("auto", [0, 0, 3, 40, 50, 9], labels) == "open"
    # short responses that do think (real models): ThinkEdit's thinking positions
    assert resolve_positions_rule("auto", [5, 0, 30, 400, 500, 90], labels) == "think"
    assert resolve_positions_rule("think", [0, 0, 0, 40, 50, 9], labels) == "think"
    with pytest.raises(ConfigError):
        make_config(positions="middle")


def test_think_span_single_and_multi_token_markers(lm):
    out = _ids(lm, "1 2 </think> 5")
    assert think_span(out, MK, lm.tokenizer).n_think_tokens == 2
    # a marker that is not one token: the close marker written as two words
    mk2 = ThinkMarkers("<think>", "answer is", True)
    sp = think_span(_ids(lm, "1 2 3 answer is 5"), mk2, lm.tokenizer)
    assert (sp.closed, sp.n_think_tokens) == (True, 3)
    mk3 = ThinkMarkers("so the", "answer is", False)
    sp = think_span(_ids(lm, "a so the 1 2 answer is 5"), mk3, lm.tokenizer)
    assert (sp.opened, sp.start, sp.n_think_tokens) == (True, 3, 2)


def test_mean_activations_match_full_cache(lm):
    ex = _examples(lm)
    feats = mean_activations(lm, ex, batch_size=2)          # padded batches
    for i, e in enumerate(ex):
        _, cache = lm.hooked.run_with_cache(torch.tensor([e.ids]))
        for site in ("resid_mid", "resid_post"):
            for layer in range(lm.cfg.n_layers):
                ref = cache[f"blocks.{layer}.hook_{site}"][0, e.positions].mean(0)
                torch.testing.assert_close(feats[site][i, layer], ref, atol=1e-5, rtol=1e-5)


def test_split_thresholds_and_percentiles():
    lab, info = split_long_short([0, 0, 1, 5, 30, 40, 50], "threshold", 1, 30)
    assert lab.tolist() == [0, 0, 0, -1, 1, 1, 1]
    lab, info = split_long_short(np.arange(10), "percentile", 0.2, 0.8)
    assert info["n_short"] == 2 and info["n_long"] == 2
    with pytest.raises(ConfigError):
        split_long_short([3, 3, 3], "percentile", 0.2, 0.8)


# ------------------------------------------------------------------ directions
def test_direction_sign_on_planted_toy():
    g = torch.Generator().manual_seed(0)
    n, L, d = 80, 3, 16
    x = torch.randn(n, L, d, generator=g)
    y = np.array([1] * 40 + [0] * 40)
    x[:40, :, 2] += 3.0     # long examples sit further along +e2
    dirs = thinking_length_direction({"resid_mid": x}, y)
    v = dirs.dirs["resid_mid"]
    assert (v[:, 2] > 2.0).all()                       # long - short, not short - long
    assert (dirs.unit_short("resid_mid", 0)[2] < -0.5)
    torch.testing.assert_close(v, x[:40].mean(0) - x[40:].mean(0))
    assert min(dirs.auroc["resid_mid"]) > 0.95
    assert dirs.best()["auroc"] > 0.95
    torch.testing.assert_close(dirs.cosine["resid_mid"].diagonal(), torch.ones(L))


def test_stats_against_sklearn_scipy():
    sk = pytest.importorskip("sklearn.metrics")
    st = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 50).astype(float)            # many ties
    y = rng.integers(0, 2, 50)
    assert abs(auroc(s, y) - sk.roc_auc_score(y, s)) < 1e-12
    a, b = rng.normal(size=20), rng.normal(size=20)
    assert abs(spearman(a, b) - st.spearmanr(a, b).statistic) < 1e-12
    lo, hi = wilson(30, 100)
    assert lo < 0.3 < hi and abs(lo - 0.2189) < 1e-3


# ------------------------------------------------------------------ steering
def test_alpha_zero_reproduces_logits_exactly(lm):
    toks = torch.tensor([_ids(lm, PROMPTS[1] + " 1 2")])
    base = lm.hooked(toks)
    dirs = torch.randn(lm.cfg.n_layers, lm.cfg.d_model)
    for site in ("resid_mid", "resid_post"):
        with steered(lm, steering_hooks(dirs, site, 0.0)):
            assert torch.equal(lm.hooked(toks), base)
    assert n_active_hooks(lm) == 0


def test_per_row_alpha_sweep_equals_separate_runs(lm):
    dirs = 3 * torch.randn(lm.cfg.n_layers, lm.cfg.d_model)
    alphas = alpha_grid(lm.cfg.n_layers, 5)
    kw = dict(site="resid_mid", markers=MK, max_new_tokens=8)
    one = alpha_sweep(lm, PROMPTS, dirs, alphas, batched=True, **kw)
    sep = alpha_sweep(lm, PROMPTS, dirs, alphas, batched=False, **kw)
    assert [r["output_ids"] for r in one["records"]] == [r["output_ids"] for r in sep["records"]]
    # and steering actually does something at the extremes
    outs = [r["output_ids"] for r in one["records"]]
    assert outs[:3] != outs[-3:]
    assert n_active_hooks(lm) == 0


def test_hooks_removed_after_exception_in_steered_generation(lm):
    bad = torch.randn(lm.cfg.n_layers, lm.cfg.d_model + 1)     # wrong width: fails mid-run
    with pytest.raises(RuntimeError):
        generate_thinking(lm, PROMPTS, MK, max_new_tokens=4,
                          fwd_hooks=lambda st: steering_hooks(bad, "resid_mid",
                                                              torch.ones(3), state=st))
    assert n_active_hooks(lm) == 0


# ------------------------------------------------------------------ heads and edit
def test_head_scores_match_ablation(lm):
    ex = _examples(lm)
    u = torch.nn.functional.normalize(torch.randn(lm.cfg.n_layers, lm.cfg.d_model), dim=-1)
    scores = head_short_scores(lm, ex, u, batch_size=2)
    for layer, h in [(0, 1), (1, 3)]:
        ref = []
        for e in ex:
            toks = torch.tensor([e.ids])
            _, c_full = lm.hooked.run_with_cache(toks)

            def kill(z, hook, h=h):
                z[:, :, h] = 0
                return z
            with steered(lm, [(f"blocks.{layer}.attn.hook_z", kill)]):
                _, c_abl = lm.hooked.run_with_cache(toks)
            name = f"blocks.{layer}.hook_attn_out"
            delta = (c_full[name] - c_abl[name])[0, e.positions]     # the head's write
            ref.append((delta @ u[layer]).mean())
        assert abs(float(torch.stack(ref).mean()) - float(scores[layer, h])) < 1e-5
    top = top_heads(scores, 3)
    assert top[0]["score"] == float(scores.max())


def test_edit_zeroes_head_write_and_leaves_rest(lm):
    u = torch.nn.functional.normalize(torch.randn(lm.cfg.n_layers, lm.cfg.d_model), dim=-1)
    heads = [(0, 1), (1, 2)]
    before = {k: v.clone() for k, v in lm.hooked.state_dict().items()}
    with edited(lm, heads, u) as rep:
        assert all(r["norm_before"] > 1e-3 and r["norm_after"] < 1e-5 for r in rep)
        for layer, h in heads:
            assert (lm.hooked.blocks[layer].attn.W_O[h] @ u[layer]).abs().max() < 1e-6
        for k, v in lm.hooked.state_dict().items():
            if k.endswith("attn.W_O"):
                layer = int(k.split(".")[1])
                for hh in range(lm.cfg.n_heads):
                    if (layer, hh) not in heads:
                        assert torch.equal(v[hh], before[k][hh])
            else:
                assert torch.equal(v, before[k])
    for k, v in lm.hooked.state_dict().items():      # restored bit-exactly
        assert torch.equal(v, before[k])


def test_exported_checkpoint_reproduces_edited_model(lm, tiny_qwen_dir, tmp_path):
    from safetensors.torch import load_file

    u = torch.nn.functional.normalize(torch.randn(lm.cfg.n_layers, lm.cfg.d_model), dim=-1)
    heads = [(0, 3), (1, 0)]
    out = export_edited_checkpoint(lm, heads, u, tmp_path / "edited")
    re = load_model(str(out), device="cpu")
    toks = torch.tensor([_ids(lm, PROMPTS[1] + " 1 2 ok 3")])
    with edited(lm, heads, u):
        assert max_logit_diff(lm, re, toks) < 1e-5
        for layer, h in heads:
            torch.testing.assert_close(re.hooked.blocks[layer].attn.W_O[h],
                                       lm.hooked.blocks[layer].attn.W_O[h], atol=0, rtol=0)
    assert max(head_write_norms(re.hooked, heads, u)) < 1e-5
    # untouched tensors of the HF checkpoint are bit-identical, o_proj only in edited columns
    a, b = load_file(str(tiny_qwen_dir / "model.safetensors")), load_file(
        str(out / "model.safetensors"))
    dh = lm.cfg.d_head
    for k in a:
        if "o_proj" in k:
            layer = int(k.split(".")[2])
            for hh in range(lm.cfg.n_heads):
                same = torch.equal(a[k][:, hh * dh:(hh + 1) * dh], b[k][:, hh * dh:(hh + 1) * dh])
                assert same == ((layer, hh) not in heads)
        else:
            assert torch.equal(a[k], b[k])
    # apply_head_edit on the reloaded copy is idempotent (already projected)
    rep = apply_head_edit(re.hooked, heads, u)
    assert all(r["norm_before"] < 1e-5 for r in rep)


@pytest.fixture(scope="module")
def mha(tmp_path_factory, tiny_tokenizer):
    """A tiny Qwen2 with one value head per query head (the recentred edit needs it)."""
    from .conftest import make_tiny_checkpoint

    d = make_tiny_checkpoint(tmp_path_factory.mktemp("mha") / "m", seed=3,
                             tokenizer=tiny_tokenizer, num_key_value_heads=4)
    m = load_model(str(d), device="cpu")
    ensure_marker_tokenizer(m, MK)
    return m, d


def _head_write_along(model, toks, layer, h, v):
    """The head's actual write ``z_h W_O[h]`` along ``v`` at every position."""
    _, c = model.hooked.run_with_cache(toks)
    z = c[f"blocks.{layer}.attn.hook_z"][0, :, h]                       # [pos, d_head]
    return z @ model.hooked.blocks[layer].attn.W_O[h] @ v


def test_recentred_edit_fixes_head_write_to_long_mean(mha, tmp_path):
    from safetensors.torch import load_file

    from interp.length.edit import long_value_means, value_coordinate

    lm, d = mha
    u = torch.nn.functional.normalize(torch.randn(lm.cfg.n_layers, lm.cfg.d_model,
                                                  generator=torch.Generator().manual_seed(1)),
                                      dim=-1)
    heads = [(0, 1), (1, 2)]
    ex = _examples(lm)
    means = long_value_means(lm, ex, heads, u, batch_size=2)
    # the means against a direct computation from the activation cache
    for (layer, h), m in zip(heads, means):
        e, g = value_coordinate(lm.hooked.blocks[layer].attn.W_O[h], u[layer])
        ref = []
        for x in ex:
            _, c = lm.hooked.run_with_cache(torch.tensor([x.ids]))
            ref.append((c[f"blocks.{layer}.attn.hook_z"][0, x.positions, h] @ e).mean())
        assert abs(float(torch.stack(ref).mean()) - m) < 1e-5
    before = {k: v.clone() for k, v in lm.hooked.state_dict().items()}
    toks_a = torch.tensor([_ids(lm, PROMPTS[0] + " 1 2 wait 3")])
    toks_b = torch.tensor([_ids(lm, PROMPTS[1] + " ok ok 4 </think> 5")])
    free = _head_write_along(lm, toks_b, 0, 1, u[0])
    with edited(lm, heads, u, mode="recentre", means=means) as rep:
        for (layer, h), r, m in zip(heads, rep, means):
            assert r["norm_before"] > 1e-3 and r["norm_after"] < 1e-5
            e, g = value_coordinate(lm.hooked.blocks[layer].attn.W_O[h], u[layer])
            for toks in (toks_a, toks_b):     # any input: the constant long-class write
                w = _head_write_along(lm, toks, layer, h, u[layer])
                torch.testing.assert_close(w, torch.full_like(w, m * g), atol=1e-5, rtol=0)
        assert (free - _head_write_along(lm, toks_b, 0, 1, u[0])).abs().max() > 1e-4
        # W_O and the other heads' value weights are untouched
        for k, v in lm.hooked.state_dict().items():
            if k.endswith(("attn._W_V", "attn._b_V", "attn.W_V", "attn.b_V")):
                layer = int(k.split(".")[1])
                for hh in range(lm.cfg.n_heads):
                    assert torch.equal(v[hh], before[k][hh]) == ((layer, hh) not in heads)
            else:
                assert torch.equal(v, before[k]), k
        out = export_edited_checkpoint(lm, heads, u, tmp_path / "rec", mode="recentre",
                                       means=means)
        re = load_model(str(out), device="cpu")
        assert max_logit_diff(lm, re, toks_b) < 1e-5
    for k, v in lm.hooked.state_dict().items():      # restored bit-exactly
        assert torch.equal(v, before[k])
    a, b = load_file(str(d / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert [k for k in a if not torch.equal(a[k], b[k])] == [
        f"model.layers.{ly}.self_attn.v_proj.{w}" for ly in (0, 1) for w in ("bias", "weight")]


def test_recentred_edit_refuses_grouped_query_attention(lm):
    from interp.errors import ConfigError

    u = torch.nn.functional.normalize(torch.randn(lm.cfg.n_layers, lm.cfg.d_model), dim=-1)
    with pytest.raises(ConfigError, match="value head"):
        apply_head_edit(lm.hooked, [(0, 1)], u, mode="recentre", means=[0.0])


# ------------------------------------------------------------------ SEAL
def test_seal_rules_and_anchors(lm):
    rules = [{"class": "reflection", "mode": "starts", "keyword": "wait"},
             {"class": "transition", "mode": "contains", "keyword": "so the"}]
    assert classify_step("Wait, let me", rules) == "reflection"
    assert classify_step("1 + 2 so  the", rules) == "transition"
    assert classify_step("1 + 2", rules) == "execution"
    pid, tid = _ids(lm, PROMPTS[0]), _ids(lm, "1 2 ok wait 3 ok 4")
    sep = lm.tokenizer.convert_tokens_to_ids("ok")
    end = labelled_separators(pid, tid, lm.tokenizer, sep, rules, "end")
    start = labelled_separators(pid, tid, lm.tokenizer, sep, rules, "start")
    p = len(pid)
    assert end == [(p + 2, "execution"), (p + 5, "reflection")]
    assert start == [(p - 1, "execution"), (p + 2, "reflection"), (p + 5, "execution")]


def test_seal_steering_only_at_separators_inside_think(lm):
    items = [(_ids(lm, PROMPTS[i % 3]), _ids(lm, t)) for i, t in
             enumerate(["1 ok wait 2 ok 3", "4 ok 5 ok wait 6 ok", "wait 7 ok 8 ok"])]
    sv = seal_vector(lm, items, MK, layer=0, rules=[
        {"class": "reflection", "mode": "starts", "keyword": "wait"}])
    assert sv["counts"]["reflection"] >= 2 and sv["counts"]["execution"] >= 2
    vec = 5 * sv["vector"] / sv["vector"].norm()
    seen = []

    def spy(act, hook):
        seen.append(act.detach().clone())
        return act

    sep = lm.tokenizer.convert_tokens_to_ids("ok")
    close = lm.tokenizer.convert_tokens_to_ids("</think>")
    # feed tokens as a teacher-forced "generation" prompt: separators before and after close
    text = "<bos> 1 = <think> 2 ok 3 </think> ok 4"
    factory = seal_hooks(lm, vec, 0, MK, alpha=1.0)
    from interp.generation import GenState

    ids = torch.tensor([_ids(lm, text)])
    st = GenState(rows=torch.arange(1), tokens=ids, positions=None, step=-1, history=ids[:, :6])
    hooks = factory(st) + [("blocks.0.hook_resid_post", spy)]
    base = lm.hooked.run_with_cache(ids)[1]["blocks.0.hook_resid_post"]
    with steered(lm, hooks):
        lm.hooked(ids)
    diff = (seen[0] - base)[0].norm(dim=-1)
    is_sep = (ids[0] == sep)
    # history has no close marker yet -> the row is inside think: every separator steered
    assert (diff[is_sep] > 1).all() and (diff[~is_sep] < 1e-5).all()
    st.history = ids                       # history now contains </think>: nothing steered
    seen.clear()
    with steered(lm, factory(st) + [("blocks.0.hook_resid_post", spy)]):
        lm.hooked(ids)
    assert (seen[0] - base).abs().max() < 1e-6
    assert close in ids[0].tolist() and n_active_hooks(lm) == 0


def test_examples_from_generation_records(lm):
    recs = generate_thinking(lm, PROMPTS, MK, max_new_tokens=6)
    ex = examples_from_records(recs, "think")
    for r, e in zip(recs, ex):
        assert len(e.positions) == r["think_tokens"] + 1
        assert isinstance(e, ThinkExample)
    ex_open = examples_from_records(recs, "open")
    assert all(len(e.positions) == 1 for e in ex_open)


def test_report_length_on_the_committed_demo():
    """``report length`` reads the committed artifacts: the headline edit's figures are
    those of the edit it names, and every exported edit reproduces its in-place model."""
    from interp.length.report import collect, demo_store

    r = collect(demo_store())
    head = r["edit_modes"][r["edit_mode"]]
    assert head["short_fraction_after"] == r["short_fraction_after_edit"]
    assert head["accuracy_after"] == r["accuracy_after_edit"]
    assert {"project", "recentre"} <= set(r["edit_modes"])
    assert all(m["export_max_logit_diff"] < 1e-4 for m in r["edit_modes"].values())
    assert r["n_eval"] >= 500 and r["best_layer_separability"] >= 0.9
    assert r["targets"]["spearman_ge_0.9"] == (r["length_alpha_spearman"] >= 0.9)
    # the edit targets, as significant paired changes over >= 500 problems
    assert r["short_fraction_change_ci"][1] < 0 and r["accuracy_change_ci"][0] > 0
    assert all(r["targets"].values()), r["targets"]
    # ground truth: the head the reasoner's build dedicated to the cue tops the head
    # scores and is among the edited heads
    assert "planted_head_rank" in r, "the demo was computed on other reasoner weights"
    assert r["planted_head_rank"] == 1 and r["planted_short_head"] in r["edited_heads"]
    # per-example behaviour: every prompt whose short / long class changed has another
    # completion; the unsteered α = 0 of the sweeps reproduces the generations exactly
    for name, m in r["edit_modes"].items():
        b = m["behaviour"]
        assert b["n"] == r["n_eval"]
        moved = abs(m["short_fraction_after"] - r["short_fraction_before"])
        assert 1 - b["completion_agreement"] >= moved - 1e-9, name
        assert b["answer_agreement"] >= b["completion_agreement"]
    assert r["edit_behaviour"] == r["edit_modes"][r["edit_mode"]]["behaviour"]
    assert r["agreement_per_alpha"]["0.0"]["completion_agreement"] == 1.0
    seal0 = [p for p in r["seal"]["alpha_sweep"] if p["alpha"] == 0.0]
    assert seal0 and seal0[0]["agreement"]["completion_agreement"] == 1.0


def test_effect_head_selection_follows_measured_effects(lm):
    """``effect_heads`` reads each candidate's edit off the live weights: a planted
    evaluation (heads A and B help alone and together, C helps alone but spoils the
    combination, D hurts) must give [A, B]; the weights are restored afterwards."""
    from interp.length.edit import edited
    from interp.length.pipeline import effect_heads

    g = torch.Generator().manual_seed(0)
    units = torch.randn(lm.cfg.n_layers, lm.cfg.d_model, generator=g)
    units = units / units.norm(dim=-1, keepdim=True)
    A, B, C, D = (0, 1), (1, 2), (0, 3), (1, 0)
    before = [b.attn.W_O.detach().clone() for b in lm.hooked.blocks]

    def edited_now():   # the heads whose write along v is gone (the projection's mark)
        return {hh for hh in [A, B, C, D]
                if float((lm.hooked.blocks[hh[0]].attn.W_O[hh[1]] @ units[hh[0]]).norm())
                < 1e-5}

    def evaluate():
        e = edited_now()
        acc = 0.5 + 0.10 * (A in e) + 0.05 * (B in e) + 0.07 * (C in e) - 0.2 * (D in e)
        if C in e and len(e) > 1:
            acc -= 0.3
        return {"short_fraction": {"value": 0.2 - 0.01 * len(e)}, "accuracy": {"value": acc}}

    base = evaluate()
    heads, scan, chosen_sm = effect_heads(lm, [A, B, C, D], units, evaluate, base, k=3)
    assert heads == [A, B]
    with edited(lm, heads, units, "project"):      # the returned result is the chosen edit's
        assert chosen_sm == evaluate()
    by = {(r["layer"], r["head"]): r["gain"] for r in scan}
    assert by[A][0] == pytest.approx(0.10) and by[D][0] == pytest.approx(-0.2)
    assert all(torch.equal(b.attn.W_O, w) for b, w in zip(lm.hooked.blocks, before))
    # at most k heads; no helpful head gives no heads
    assert effect_heads(lm, [A, B, C, D], units, evaluate, base, k=1)[0] == [A]
    none_heads, _, none_sm = effect_heads(lm, [D], units, evaluate, base, k=3)
    assert none_heads == [] and none_sm is None


def test_seal_alpha_sweep_batched_matches_per_alpha_and_unsteered(lm):
    """SEAL's conditional steering as one batched α sweep (``make_hooks``): every α's rows
    equal a separate greedy generation under that α, and α = 0 equals no steering."""
    g = torch.Generator().manual_seed(1)
    vec = 20 * torch.randn(lm.cfg.d_model, generator=g)
    prompts = [PROMPTS[0], PROMPTS[1], "<bos> 2 ok = <think> 3 ok"]
    alphas = [-1.0, 0.0, 0.5]

    def make(a, st):
        return seal_hooks(lm, vec, 0, MK, a)(st)

    kw = dict(markers=MK, max_new_tokens=8, make_hooks=make)
    b = alpha_sweep(lm, prompts, vec[None], alphas, batched=True, **kw)
    s = alpha_sweep(lm, prompts, vec[None], alphas, batched=False, **kw)
    assert [r["output_ids"] for r in b["records"]] == [r["output_ids"] for r in s["records"]]
    plain = generate_thinking(lm, prompts, MK, max_new_tokens=8)
    assert [r["output_ids"] for r in b["records"][3:6]] == [r["output_ids"] for r in plain]
    assert b["records"][2]["output_ids"] != plain[2]["output_ids"]   # steering acted
    assert n_active_hooks(lm) == 0


def test_planted_head_check_ranks_the_recorded_head_and_ignores_other_weights():
    from interp.length.report import planted_head_check
    from interp.models import files_hash, organisms_dir
    from interp.organisms.train import read_task

    try:
        head = read_task()["build"]["found"]["reasoner"]["cue_head"]
    except (OSError, KeyError):
        pytest.skip("organisms not built with a recorded cue head")
    scores = np.arange(16, dtype=float).reshape(4, 4)[::-1].copy()   # 15 at (0, 0)
    want = int(np.argsort(-scores, axis=None).tolist().index(head[0] * 4 + head[1])) + 1
    now = files_hash(organisms_dir() / "reasoner")
    got = planted_head_check("organism:reasoner", scores, now)
    assert got == {"planted_short_head": head, "planted_head_rank": want}
    assert planted_head_check("organism:reasoner", scores, "0" * 64) == {}
    assert planted_head_check("organism:reasoner", scores, None) == {}
    assert planted_head_check("organism:base", scores, now) == {}


def test_edit_figure_has_one_panel_per_metric_and_one_bar_per_model():
    from interp.length.plots import edit_figure, edit_frame

    def summary(short, acc, n=100):
        def rate(v):
            return {"value": v, "ci_low": v - 0.05, "ci_high": v + 0.04, "n": n}
        return {"short_fraction": rate(short), "accuracy": rate(acc), "mean_think_tokens": 30,
                "n": n}
    afters = {f"edit {i}": summary(0.1 * i, 0.5 + 0.05 * i) for i in range(8)}
    df = edit_frame(summary(0.2, 0.8), afters)
    fig = edit_figure(df, "t")
    assert [t.type for t in fig.data] == ["bar", "bar"]
    for trace, metric in zip(fig.data, ("short_fraction", "accuracy")):
        want = df[df["metric"] == metric]
        assert list(trace.y) == pytest.approx(list(want["value"]))
        assert list(trace.error_y.array) == pytest.approx(list(want["ci_high"] - want["value"]))
        colors = list(trace.marker.color)   # "before" (the fine-tune) orange, 8 edits
        from interp.plots.common import ROLE_COLORS
        assert colors[0] == ROLE_COLORS["fine"]
        assert len(set(colors[1:])) == 8 and ROLE_COLORS["base"] not in colors
        assert ROLE_COLORS["fine"] not in colors[1:]
    # user prompts without a scorer: no accuracy, one panel
    no_acc = {k: {kk: vv for kk, vv in v.items() if kk != "accuracy"}
              for k, v in {"before": summary(0.2, 0.8), "after": summary(0.1, 0.9)}.items()}
    df1 = edit_frame(no_acc["before"], {"after": no_acc["after"]})
    assert len(edit_figure(df1).data) == 1


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _flat_approx(d):
    return pytest.approx(_flat(d), nan_ok=True)


def test_committed_length_figures_recompute_from_their_records():
    """The committed demo's headline figures are what the code computes from the
    artifacts' own per-response records (not thresholds read off stored numbers): the
    before/after summaries, the paired changes with their intervals, the sweep's
    per-α summaries and its Spearman ρ."""
    from interp.length.pipeline import latest_index
    from interp.length.report import demo_store
    from interp.length.stats import paired_change
    from interp.length.steer import short_flags, summarize

    st = demo_store()
    idx = latest_index(st)
    if idx is None:
        pytest.skip("no committed length demo")
    keys, seed = idx.meta["keys"], idx.config["config"]["seed"]
    short_max = st.load("length_direction", keys["direction"]).meta["split"][
        "short_max_tokens"]
    ed = st.load("length_edit", keys["edit"]).meta
    before, after = ed["records_before"], ed["records_after"]
    assert _flat(ed["before"]) == _flat_approx(summarize(before, short_max))
    assert _flat(ed["after"]) == _flat_approx(summarize(after, short_max))
    assert ed["short_fraction_change"] == pytest.approx(paired_change(
        short_flags(before, short_max), short_flags(after, short_max), seed=seed))
    assert ed["accuracy_change"] == pytest.approx(paired_change(
        [r["correct"] for r in before], [r["correct"] for r in after], seed=seed))
    sw = st.load("length_sweep", keys["sweep"]).meta
    n = sw["per_alpha"][0]["n"]
    alphas = [p["alpha"] for p in sw["per_alpha"]]
    for k, p in enumerate(sw["per_alpha"]):
        want = summarize(sw["records"][k * n:(k + 1) * n], sw["short_max_tokens"])
        assert _flat({q: v for q, v in p.items() if q not in ("alpha", "agreement")}
                     ) == _flat_approx(want)
        if 0.0 in alphas:   # each α's answer agreement with the unsteered generations
            ref = sw["records"][alphas.index(0.0) * n:(alphas.index(0.0) + 1) * n]
            same = [a["answer"] == b["answer"] for a, b in
                    zip(ref, sw["records"][k * n:(k + 1) * n])]
            got = p["agreement"]["answer_agreement"]
            assert (got["value"] if isinstance(got, dict) else got) == pytest.approx(
                np.mean(same))
    assert sw["spearman_mean_length_vs_alpha"] == pytest.approx(
        spearman([p["alpha"] for p in sw["per_alpha"]],
                 [p["mean_think_tokens"] for p in sw["per_alpha"]]))
