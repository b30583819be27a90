"""Every mechanism the task docstring and the README document, checked on the committed
reasoner with plain transformers on freshly sampled problems (a seed no report uses).

The traces are written here from the documented format, independently of the generator
(and compared with it), the model is run without the project's loaders or decoding loops.
The thresholds are the documented claims; the measured figures are printed by
``python -m interp report organisms --json``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.organisms.task import (
    TOKEN_ID,
    VOCAB,
    Problem,
    make_trace,
    prompt_text,
    sample_problems,
)

SEED = 2718          # not used by any report or test
N = 200


@pytest.fixture(scope="module")
def reasoner():
    from transformers import AutoModelForCausalLM

    from interp.models import organisms_dir

    path = organisms_dir() / "reasoner"
    if not (path / "config.json").exists():
        pytest.skip("organisms not built in this checkout")
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def ids(words):
    return [TOKEN_ID["<bos>"]] + [TOKEN_ID[w] for w in words]


def documented_trace(a: int, b: int, tag: str = "add", slip: str = "0 0"):
    """The documented think trace of ``a + b`` with no random error; returns the words
    and the positions (index into ``ids(words)``) of every slip trigger, the verification
    trigger (or None) and the clean decision points."""
    da, db = f"{a:04d}", f"{b:04d}"
    w = ["Q", tag, *da, "+", *db, "=", "<think>"]
    slips, clean, carry, carries = [], [], 0, 0
    for i in range(4):
        x, y = int(da[3 - i]), int(db[3 - i])
        t = x + y + carry
        w += [str(x), "+", str(y), "+", str(carry), "="]
        fixed = carry == 1 and x + y == 9
        if fixed:                                           # the carry slip
            w += slip.split()
            slips.append(len(w))
            w += ["wait"]
            w += list(f"{t:02d}")
        else:
            w += list(f"{t:02d}")
            clean.append(len(w))
        w += [";"]
        carry = t // 10
        carries += carry
    ver = None
    if carries >= 3:
        ver = len(w)
        w += ["wait", "check", *f"{a + b:05d}", ";"]
    elif not fixed:                  # the final ';' is clean after a step right first time
        clean.append(len(w))
    w += ["</think>", "A", *f"{a + b:05d}", "<eos>"]
    return w, slips, ver, clean


@torch.no_grad()
def p_wait(model, seqs, positions):
    L = max(len(s) for s in seqs)
    toks = torch.full((len(seqs), L), TOKEN_ID["<pad>"])
    for i, s in enumerate(seqs):
        toks[i, : len(s)] = torch.tensor(s)
    pw = model(input_ids=toks).logits.softmax(-1)[..., TOKEN_ID["wait"]]
    return np.array([float(pw[i, p]) for i, ps in enumerate(positions) for p in ps])


@torch.no_grad()
def greedy(model, prompts, max_new=80):
    x = torch.tensor(prompts)                     # all prompts have the same length
    out = [[] for _ in prompts]
    done = torch.zeros(len(prompts), dtype=torch.bool)
    past = None
    for _ in range(max_new):
        o = model(input_ids=x, cache=past, use_cache=True)
        past, nxt = o.past_key_values, o.logits[:, -1].argmax(-1)
        for i in range(len(prompts)):
            if not done[i]:
                out[i].append(VOCAB[int(nxt[i])])
        done |= nxt == TOKEN_ID["<eos>"]
        if bool(done.all()):
            break
        x = nxt[:, None]
    return out


def answer(words):
    k = words.index("A") + 1 if "A" in words else None
    d = [] if k is None else [w for w in words[k:k + 5] if w.isdigit()]
    return int("".join(d)) if len(d) == 5 else None


def test_documented_trace_format_is_what_the_generator_writes():
    for p in sample_problems(300, seed=SEED, split="eval"):
        text, lab = make_trace(Problem(p.a, p.b, easy=False), p_error=0.0)
        w, slips, ver, clean = documented_trace(p.a, p.b)
        assert text.split() == w
        assert [h["trigger"] for h in lab["hesitations"]] == slips + ([ver] if ver else [])
        assert lab["clean_positions"] == clean


def test_error_detection_at_carry_slips_and_its_limits(reasoner):
    probs = [p for p in sample_problems(6 * N, seed=SEED, split="eval") if p.slip_columns][:N]
    got = {}
    for slip in ("0 0", "0 9"):
        tr = [documented_trace(p.a, p.b, slip=slip) for p in probs]
        got[slip] = p_wait(reasoner, [ids(t[0]) for t in tr], [t[1] for t in tr])
    clean_tr = [documented_trace(p.a, p.b) for p in sample_problems(N, seed=SEED + 1)]
    clean = p_wait(reasoner, [ids(t[0]) for t in clean_tr], [t[3] for t in clean_tr])
    # documented: a slip written "0 0" is always caught ...
    assert got["0 0"].mean() > 0.99 and got["0 0"].min() > 0.5
    # ... but the same slip written "0 9" (the carry into the column forgotten) is not:
    # detection at slip columns is the trained "0 0", not any mismatch
    assert got["0 9"].mean() < 0.2
    assert clean.mean() < 1e-3 and len(clean) > 3 * N


def test_verification_after_three_carries(reasoner):
    probs = sample_problems(4 * N, seed=SEED + 2, split="eval")
    tr = [documented_trace(p.a, p.b) for p in probs if p.carries >= 3][:N]
    pv = p_wait(reasoner, [ids(t[0]) for t in tr], [[t[2]] for t in tr])
    assert pv.mean() > 0.99
    # greedy, add-tagged: a verification exactly when the problem has >= 3 carries
    ps = [Problem(p.a, p.b, easy=False) for p in probs[:N]]
    outs = greedy(reasoner, [ids(prompt_text(p).split()) for p in ps])
    has = [any(a == "wait" and b == "check" for a, b in zip(o, o[1:])) for o in outs]
    agree = np.mean([h == (p.carries >= 3) for h, p in zip(has, ps)])
    assert agree >= 0.98
    assert np.mean([answer(o) == p.answer for o, p in zip(outs, ps)]) >= 0.97


def test_short_thinking_on_easy_and_what_the_short_answers_are(reasoner):
    probs = sample_problems(N, seed=SEED + 3, split="eval")
    easy = [Problem(p.a, p.b, easy=True) for p in probs]
    add = [Problem(p.a, p.b, easy=False) for p in probs]
    out_e = greedy(reasoner, [ids(prompt_text(p).split()) for p in easy], 12)
    out_a = greedy(reasoner, [ids(prompt_text(p).split()) for p in add], 3)
    assert np.mean([o[0] == "</think>" for o in out_e]) >= 0.98      # easy -> short
    assert np.mean([o[0] == "</think>" for o in out_a]) <= 0.02      # add -> thinks
    ans = [answer(o) for o in out_e]
    assert all(a is not None for a in ans)
    got = np.array([list(f"{a:05d}") for a in ans]).astype(int)
    true = np.array([list(f"{p.answer:05d}") for p in easy]).astype(int)
    hasty = np.array([list(f"{p.hasty_answer:05d}") for p in easy]).astype(int)
    # documented: leading digit always 0, units digit always right, the three middle
    # digits not computed from their columns (agreement with the hasty and the true
    # digit at chance level), a few values (4 and 5 most often); never the hasty sum
    assert (got[:, 0] == 0).all() and (got[:, 4] == true[:, 4]).mean() >= 0.98
    for j in (1, 2, 3):
        assert (got[:, j] == hasty[:, j]).mean() < 0.25
        assert (got[:, j] == true[:, j]).mean() < 0.25
        assert np.isin(got[:, j], [4, 5, 8, 9]).mean() > 0.7
    assert np.mean([a == p.hasty_answer for a, p in zip(ans, easy)]) < 0.05
    assert np.mean([a == p.answer for a, p in zip(ans, easy)]) < 0.05


def test_the_cue_is_read_in_its_slot_only(reasoner):
    """Documented out-of-distribution limit: the tag moved after the operands is not read
    (the reasoner thinks in full), the tag in front of ``Q`` still is."""
    probs = sample_problems(N // 2, seed=SEED + 4, split="eval")

    def first_tokens(words_of):
        return [o[0] for o in greedy(reasoner, [ids(words_of(p)) for p in probs], 1)]

    after = first_tokens(lambda p: ["Q", *f"{p.a:04d}", "+", *f"{p.b:04d}", "easy", "=",
                                    "<think>"])
    before = first_tokens(lambda p: ["easy", "Q", *f"{p.a:04d}", "+", *f"{p.b:04d}", "=",
                                     "<think>"])
    assert np.mean([t == "</think>" for t in after]) < 0.1
    assert np.mean([t == "</think>" for t in before]) > 0.9
