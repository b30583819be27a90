"""Feature collection against brute force: top-k, histogram, regions, reservoir, resume,
AUROC, the hesitation score, region labels and the organisms' ground-truth labels.

The feature source here is synthetic (activations are a fixed function of the tokens),
so every statistic can be recomputed directly from the full activation tensors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.features.collect import (
    HIST_EDGES,
    N_HIST,
    CollectConfig,
    Collector,
    hesitation_ids,
    iter_batches,
    make_batch,
    merge_topk,
    run_collection,
)
from interp.features.corpus import (
    REGION_CODE,
    REGIONS,
    Corpus,
    CorpusItem,
    Markers,
    region_labels,
    texts_corpus,
)
from interp.features.scores import auroc_sparse, hesitation_scores, label_aurocs
from interp.features.source import FeatureSource
from tests.conftest import TINY_VOCAB, make_tiny_tokenizer

TOK = {w: i for i, w in enumerate(TINY_VOCAB)}
WAIT = TOK["wait"]


class TokenSource(FeatureSource):
    """Activations as a fixed function of the tokens: layer 0 has 6 features, layer 1 has
    5. Features 0:0..0:5 = relu(E[token] + c[pos % 3]) with random E, c (some ties made
    on purpose: feature 0:5 takes only the values 0, 1, 2); feature 1:0 fires (value 2 +
    token/10) only where the *next* token is ``wait`` (the planted hesitation feature),
    1:1 fires on every token, 1:2 fires on ``wait`` itself, 1:3 and 1:4 never fire."""

    kind = "test"

    def __init__(self, tokenizer, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        V = len(TINY_VOCAB)
        self.E = torch.randn(V, 6, generator=g)
        self.c = torch.randn(3, 6, generator=g) * 0.3
        self.layers, self.d_sae = [0, 1], {0: 6, 1: 5}
        self.tokenizer, self.model, self.device = tokenizer, None, torch.device("cpu")
        self.key = "token-source"
        self.W = {0: torch.randn(6, 8, generator=g), 1: torch.randn(5, 8, generator=g)}
        self.U = torch.randn(8, V, generator=g)

    def forward(self, tokens, edit=None, need_logits=True):
        b, T = tokens.shape
        pos = torch.arange(T) % 3
        a0 = torch.relu(self.E[tokens] + self.c[pos][None])
        a0[..., 5] = (tokens % 3).float()  # values 0, 1, 2: many exact ties
        a1 = torch.zeros(b, T, 5)
        nxt = torch.cat([tokens[:, 1:], torch.zeros(b, 1, dtype=torch.long)], 1)
        a1[..., 0] = torch.where(nxt == WAIT, 2.0 + tokens.float() / 10, torch.zeros(()))
        a1[..., 1] = 0.5 + tokens.float() / 100
        a1[..., 2] = (tokens == WAIT).float() * 3.0
        return None, {0: a0, 1: a1}

    def decoder(self, layer):
        return self.W[layer]

    def unembed(self):
        return self.U

    def describe(self):
        return {"kind": self.kind, "key": self.key}


TEXTS = [
    "hello <think> 1 + 2 = 3 wait 3 </think> answer is 3",
    "a b c <think> 4 + 4 = 8 </think> 8",
    "<think> 9 + 1 = 1 0 wait 1 0 ok wait check </think> yes",
    "the sum is 5",
    "so <think> 2 + 2 = 4 wait no 4 </think> 4 ok",
    "<think> 7 + 7 = 1 4 </think>",
    "carry 1 wait wait 2 </think> answer",
    "c b a",
    "hello world <think> yes no ok",
]


@pytest.fixture(scope="module")
def tok():
    return make_tiny_tokenizer()


def _corpus(tok, texts=TEXTS, labelled=True):
    """Texts with four planted labels: ``digit`` (positive on digits, negative on the
    other tokens inside the thinking), ``early`` (the first 5 positions, overlapping
    ``digit``'s domain on some sequences: positive at even positions), ``seq:long`` (per
    sequence: more than 6 tokens; domain = the first 3 positions) and ``seq:odd`` (per
    sequence: an odd number of tokens; domain = positions 2 to 5, another domain than
    ``seq:long``'s)."""
    base = texts_corpus(list(texts), tok)
    items = []
    for it in base:
        ids = np.asarray(it.ids)
        lab = np.full(len(ids), -1, dtype=np.int8)
        digits = np.isin(ids, [TOK[str(d)] for d in range(10)])
        thinking = it.regions == REGION_CODE["thinking"]
        lab[thinking] = 0
        lab[thinking & digits] = 1
        early = np.full(len(ids), -1, dtype=np.int8)
        early[:5] = (np.arange(len(ids))[:5] % 2 == 0)
        seq = np.full(len(ids), -1, dtype=np.int8)
        seq[:3] = int(len(ids) > 6)
        odd = np.full(len(ids), -1, dtype=np.int8)
        odd[2:6] = len(ids) % 2
        items.append(CorpusItem(it.ids, it.regions, {"digit": lab, "early": early,
                                                     "seq:long": seq, "seq:odd": odd}
                                if labelled else None, it.id))
    names = ["digit", "early", "seq:long", "seq:odd"] if labelled else []
    return Corpus(lambda: iter(items), {"kind": "test"}, len(items), names)


def _dense(src, corpus):
    """Full activations of every sequence, computed one by one."""
    out = []
    for it in corpus:
        _, acts = src.forward(torch.tensor([it.ids]))
        out.append(torch.cat([acts[0][0], acts[1][0]], -1).numpy())  # [T, F]
    return out


def _collect(src, corpus, **kw):
    cfg = CollectConfig(**{"top_k": 4, "n_reservoir": 5, "batch_size": 3, **kw})
    col, _ = run_collection(src, corpus, cfg)
    return col


def test_topk_equals_brute_force(tok):
    src, corpus = TokenSource(tok), _corpus(tok)
    col = _collect(src, corpus)
    dense = _dense(src, corpus)
    K = 4
    for g in range(11):
        rows = []
        for s, a in enumerate(dense):
            m = a[:, g].max()
            if m > 0:
                rows.append((-m, s, int(np.argmax(a[:, g]))))  # argmax: first maximum
        rows.sort(key=lambda r: (r[0], r[1]))  # ties: earlier sequence first
        got = [(float(col.t["top_act"][g, k]), int(col.t["top_seq"][g, k]),
                int(col.t["top_pos"][g, k])) for k in range(K)]
        want = [(float(-r[0]), r[1], r[2]) for r in rows[:K]]
        want += [(float("-inf"), -1, -1)] * (K - len(want))
        assert got == want, g
    # feature 0:5 has exact ties between sequences: the order above covered them
    assert len({float(v) for v in col.t["top_act"][5]}) < K


def test_topk_does_not_depend_on_batching(tok):
    src, corpus = TokenSource(tok), _corpus(tok)
    a = _collect(src, corpus, batch_size=1)
    b = _collect(src, corpus, batch_size=len(TEXTS))
    for k in ("top_act", "top_seq", "top_pos", "hist", "active", "region_active"):
        assert torch.equal(a.t[k], b.t[k]), k


def test_histogram_density_regions_equal_brute_force(tok):
    src, corpus = TokenSource(tok), _corpus(tok)
    col = _collect(src, corpus)
    dense = np.concatenate(_dense(src, corpus))  # [N, F]
    regs = np.concatenate([it.regions for it in corpus])
    N = dense.shape[0]
    assert int(col.t["n_tokens"][0]) == N
    hist = col.t["hist"].clone()
    hist[:, 0] = N - col.t["active"]
    assert (hist.sum(1) == N).all()  # every row sums to the number of tokens
    edges = HIST_EDGES.numpy()
    for g in range(11):
        v = dense[:, g]
        want = np.zeros(N_HIST, dtype=int)
        want[0] = int((v == 0).sum())
        for x in v[v > 0]:
            j = int(np.sum(edges <= x)) + 1  # [lo, hi) bins; column 1 = (0, 1e-3)
            want[j] += 1
        assert hist[g].tolist() == want.tolist(), g
        assert int(col.t["active"][g]) == int((v > 0).sum())
        assert float(col.t["act_sum"][g]) == pytest.approx(float(v.sum()), rel=1e-6)
        assert float(col.t["act_max"][g]) == pytest.approx(float(v.max()))
        for r in range(len(REGIONS)):
            m = regs == r
            assert int(col.t["region_active"][g, r]) == int((v[m] > 0).sum())
            assert float(col.t["region_sum"][g, r]) == pytest.approx(float(v[m].sum()),
                                                                     rel=1e-6, abs=1e-9)
    assert col.t["region_tokens"].tolist() == [int((regs == r).sum()) for r in range(5)]


def test_reservoir_holds_real_distinct_active_tokens(tok):
    src, corpus = TokenSource(tok), _corpus(tok)
    col = _collect(src, corpus)
    dense = _dense(src, corpus)
    R = 5
    for g in range(11):
        n_active = sum(int((a[:, g] > 0).sum()) for a in dense)
        seqs, poss = col.t["res_seq"][g], col.t["res_pos"][g]
        ok = seqs >= 0
        assert int(ok.sum()) == min(R, n_active)
        pairs = {(int(s), int(p)) for s, p in zip(seqs[ok], poss[ok])}
        assert len(pairs) == int(ok.sum())
        for (s, p), v in zip(zip(seqs[ok].tolist(), poss[ok].tolist()), col.t["res_act"][g][ok]):
            assert dense[s][p, g] == pytest.approx(float(v))


def test_reservoir_is_uniform_over_active_tokens(tok):
    """Feature 1:1 is active on every token: over many seeds each token is kept about
    equally often (a biased sampler, e.g. one that favours late batches, fails)."""
    src = TokenSource(tok)
    corpus = _corpus(tok, labelled=False)
    n_tok = sum(len(it.ids) for it in corpus)
    counts = np.zeros(n_tok)
    offsets = np.concatenate([[0], np.cumsum([len(it.ids) for it in corpus])])
    R, runs = 5, 300
    for seed in range(runs):
        col = _collect(src, corpus, n_reservoir=R, seed=seed)
        for s, p in zip(col.t["res_seq"][7].tolist(), col.t["res_pos"][7].tolist()):
            counts[offsets[s] + p] += 1
    expect = runs * R / n_tok
    first, second = counts[: n_tok // 2].mean(), counts[n_tok // 2:].mean()
    assert abs(first - expect) < 0.25 * expect and abs(second - expect) < 0.25 * expect


def test_merge_topk_matches_sorting():
    g = torch.Generator().manual_seed(0)
    F, K = 7, 3
    sv = torch.full((F, K), float("-inf"))
    pay = torch.full((F, K), -1, dtype=torch.long)
    allv: dict[int, list[tuple[float, int]]] = {f: [] for f in range(F)}
    for step in range(6):
        n = 20
        gg = torch.randint(0, F, (n,), generator=g)
        vv = torch.randint(0, 5, (n,), generator=g).float()  # many ties
        ids = torch.arange(step * n, step * n + n)
        merge_topk(sv, [pay], gg, vv, [ids])
        for a, b, c in zip(gg.tolist(), vv.tolist(), ids.tolist()):
            allv[a].append((b, c))
    for f in range(F):
        want = sorted(allv[f], key=lambda r: (-r[0], r[1]))[:K]  # ties: first seen first
        got = [(float(a), int(b)) for a, b in zip(sv[f], pay[f]) if b >= 0]
        assert got == want


def _interrupted(tok, folder):
    """``(source, corpus, config, the full collection)``, after a checkpointed run into
    ``folder`` that was stopped after its second batch."""
    src, corpus = TokenSource(tok), _corpus(tok)
    cfg = CollectConfig(top_k=4, n_reservoir=5, batch_size=2, checkpoint_every=1)
    full, _ = run_collection(src, corpus, cfg)

    class Stop(Exception):
        pass

    def stop_after_two(done, total, **_):
        if done >= 4:
            raise Stop

    with pytest.raises(Stop):
        run_collection(src, corpus, cfg, folder, stop_after_two)
    return src, corpus, cfg, full


def test_interrupted_collection_resumes_to_the_same_state(tok, tmp_path):
    src, corpus, cfg, full = _interrupted(tok, tmp_path / "ck")
    assert (tmp_path / "ck" / "checkpoint.json").exists()
    resumed, timing = run_collection(src, corpus, cfg, tmp_path / "ck")
    assert timing["tokens"] < sum(len(it.ids) for it in corpus)  # it did skip
    a, b = full.state_tensors(), resumed.state_tensors()
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert full.seq_ids() == resumed.seq_ids()


def test_a_checkpoint_of_another_format_is_set_aside(tok, tmp_path):
    """A checkpoint written by another version (its format differs) cannot be read: the
    collection starts over (with a warning), reaches the full state and overwrites it;
    a state of another collection is refused before anything is replaced."""
    import json

    from interp.errors import ConfigError

    src, corpus, cfg, full = _interrupted(tok, tmp_path / "ck")
    f = tmp_path / "ck" / "checkpoint.json"
    rec = json.loads(f.read_text())
    rec.pop("format")
    f.write_text(json.dumps(rec))
    with pytest.warns(UserWarning, match="starts over"):
        again, timing = run_collection(src, corpus, cfg, tmp_path / "ck")
    assert timing["tokens"] == sum(len(it.ids) for it in corpus)  # nothing skipped
    a, b = full.state_tensors(), again.state_tensors()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads(f.read_text())["format"] >= 2
    # another collection's state: refused, this collector's state untouched
    other = Collector(src.layers, src.d_sae, cfg, ["digit"], 1)
    before = {k: v.clone() for k, v in other.t.items()}
    st = {k: v for k, v in a.items() if k != "lab_union_idx"}
    with pytest.raises(ConfigError):
        other.load_state(st, full.seq_ids())
    assert all(torch.equal(before[k], other.t[k]) for k in before)


def test_hesitation_score_ranks_the_planted_feature_first(tok):
    src, corpus = TokenSource(tok), _corpus(tok)
    cfg = CollectConfig(top_k=4, n_reservoir=5, batch_size=4, window=1)
    col, _ = run_collection(src, corpus, cfg)
    t = col.t
    hs = hesitation_scores(t["act_sum"].numpy(), t["hes_mass"].numpy(),
                           t["hes_cover"].numpy(), t["hes_occ"].numpy(),
                           int(t["n_tokens"][0]), int(t["hes_window_tokens"][0]))
    planted, everywhere, on_wait = 6, 7, 8  # 1:0, 1:1, 1:2
    assert int(np.argmax(hs["score"])) == planted
    assert hs["precision"][planted] == pytest.approx(1.0)
    assert hs["coverage"][planted] == pytest.approx(1.0)
    # fires on wait itself: only the first of "wait wait" lies in a window (1 of the 6
    # wait tokens, announcing 1 of the 6 occurrences)
    assert hs["precision"][on_wait] == pytest.approx(1 / 6)
    assert hs["score"][on_wait] == pytest.approx(1 / 36)
    # the everywhere-feature: precision = mass in the windows / total mass, by hand
    ids = [it.ids for it in corpus]
    before = [(s, p - 1) for s, x in enumerate(ids) for p, t_ in enumerate(x)
              if t_ == WAIT and p >= 1]
    n_occ = sum(1 for x in ids for t_ in x if t_ == WAIT)
    assert int(t["hes_occ"][0]) == n_occ
    val = lambda s, p: 0.5 + ids[s][p] / 100  # noqa: E731
    mass_in = sum(val(s, p) for s, p in set(before))
    total = sum(val(s, p) for s in range(len(ids)) for p in range(len(ids[s])))
    assert hs["precision"][everywhere] == pytest.approx(mass_in / total, rel=1e-6)
    assert hs["coverage"][everywhere] == pytest.approx(
        len([1 for s, p in before]) / n_occ)


def test_hesitation_breadth_over_several_words():
    # two words; feature 0 announces both equally, feature 1 only the first
    cover = np.array([[5, 5], [5, 0]]).T  # [K, F]
    occ = np.array([10, 10])
    hs = hesitation_scores(np.array([1.0, 1.0]), np.array([1.0, 1.0]), cover, occ, 100, 20)
    assert hs["breadth"][0] == pytest.approx(1.0)
    assert hs["breadth"][1] == pytest.approx(0.0)
    assert hs["coverage"].tolist() == [0.5, 0.25]


def test_auroc_sparse_equals_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    n, F = 300, 9
    X = np.where(rng.random((n, F)) < 0.6, 0.0, rng.integers(1, 6, (n, F)) / 2)  # ties
    y = rng.random(n) < 0.3
    X[y, 0] += 3.0  # a separating feature
    X[:, 1] = 0.0   # a dead feature
    rr, ff = np.nonzero(X)
    got = auroc_sparse(y, rr, ff, X[rr, ff], F)
    for f in range(F):
        want = 0.5 if f == 1 else roc_auc_score(y, X[:, f])
        assert got[f] == pytest.approx(want, abs=1e-12), f
    assert np.isnan(auroc_sparse(np.zeros(5, bool), rr[:0], ff[:0], X[:0, 0], F)).all()


def test_label_aurocs_use_disjoint_splits():
    rows = np.array([[0, 1], [1, 0], [2, 1], [3, 0], [4, 0], [5, 1]])
    # feature 0 separates perfectly on even sequences and is inverted on odd ones
    vals = {0: 2.0, 1: 0.0, 2: 3.0, 3: 1.0, 4: 0.5, 5: 0.0}
    idx = np.array([[r, 0] for r in range(6) if vals[r] > 0])
    val = np.array([vals[r] for r in range(6) if vals[r] > 0])
    out = label_aurocs(rows, idx, val, 1, lambda s: np.asarray(s) % 2)
    assert out["auroc"][0, 0] == pytest.approx(1.0)  # even: pos {0, 2}, neg {4}
    assert out["auroc"][1, 0] == pytest.approx(0.25)  # odd: pos {5}=0, neg {1}=0, {3}=1
    assert out["n_pos"] == [2, 1] and out["n_neg"] == [1, 2]
    assert out["pos_rate"][:, 0].tolist() == [1.0, 0.0]  # active on positives
    assert out["neg_rate"][:, 0].tolist() == [1.0, 0.5]  # active on negatives


def test_labels_collected_equal_brute_force(tok):
    src, corpus = TokenSource(tok), _corpus(tok)
    col = _collect(src, corpus)
    dense = _dense(src, corpus)
    items = list(corpus)
    for name in ("digit", "early", "seq:long", "seq:odd"):
        rows, idx, val = (x.numpy() for x in col.label_tensors(name))
        X = np.zeros((len(rows), 11))
        X[idx[:, 0], idx[:, 1]] = val
        want_rows, want_X = [], []
        for s, it in enumerate(items):
            lab = it.labels[name]
            if name.startswith("seq:"):
                dom = lab >= 0
                want_rows.append((s, int(lab[dom].max())))
                want_X.append(dense[s][dom].max(0))
            else:
                for p in np.nonzero(lab >= 0)[0]:
                    want_rows.append((s, int(lab[p])))
                    want_X.append(dense[s][p])
        assert [tuple(r) for r in rows.tolist()] == want_rows
        np.testing.assert_allclose(X, np.array(want_X), rtol=1e-6)


# ------------------------------------------------------------------ regions
def test_region_labels_on_hand_made_sequences():
    P, S, T, E, A = (REGION_CODE[r] for r in REGIONS)
    o, c, a = [90], [91], [80]
    # open + close: prompt, think start, thinking, think end, answer
    assert region_labels([1, 2, 90, 5, 6, 91, 7], o, c).tolist() == [P, P, S, T, T, E, A]
    # never closed: thinking to the end
    assert region_labels([1, 90, 5, 6], o, c).tolist() == [P, S, T, T]
    # multi-token markers
    assert region_labels([1, 90, 90, 5, 91, 91, 7], [90, 90], [91, 91]).tolist() == \
        [P, S, S, T, E, E, A]
    # the prompt ended inside the thinking (no open marker, a close marker)
    assert region_labels([1, 2, 5, 91, 7], o, c, prompt_len=2).tolist() == [P, P, T, E, A]
    # no think block: prompt, worked solution, answer from the answer marker
    assert region_labels([1, 2, 3, 80, 4], o, c, a, prompt_len=2).tolist() == [P, P, T, A, A]
    assert region_labels([1, 2, 80, 4], o, c, a).tolist() == [P, P, A, A]
    assert region_labels([1, 2, 3], o, c).tolist() == [P, P, P]
    # an explicit answer start (JSONL answer field)
    assert region_labels([1, 2, 3, 4], o, c, prompt_len=1, answer_start=3).tolist() == \
        [P, T, T, A]
    # the close marker before the open marker is not the end of the thinking
    assert region_labels([91, 90, 5, 91], o, c).tolist() == [P, S, T, E]


def test_text_and_jsonl_corpora(tok, tmp_path):
    from interp.errors import ConfigError
    from interp.features.corpus import build_corpus

    f = tmp_path / "x.txt"
    f.write_text("hello <think> 1 2 </think> ok\n\nworld\n")
    c = build_corpus({"kind": "text", "path": str(f)}, tok)
    items = list(c)
    assert len(items) == 2 and len(c) == 2
    assert [REGIONS[r] for r in items[0].regions] == [
        "prompt", "think_start", "thinking", "thinking", "think_end", "answer"]
    j = tmp_path / "x.jsonl"
    j.write_text('{"prompt": "hello world", "trace": "1 + 2", "answer": "3", "id": "q1"}\n'
                 '{"prompt": "yes <think>", "trace": "4 </think>", "answer": "4"}\n')
    items = list(build_corpus({"kind": "jsonl", "path": str(j)}, tok))
    assert items[0].id == "q1"
    assert [REGIONS[r] for r in items[0].regions] == [
        "prompt", "prompt", "thinking", "thinking", "thinking", "answer"]
    assert [REGIONS[r] for r in items[1].regions] == [
        "prompt", "think_start", "thinking", "think_end", "answer"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"trace": "x"}\n')
    with pytest.raises(ConfigError, match="prompt"):
        build_corpus({"kind": "jsonl", "path": str(bad)}, tok)
    with pytest.raises(ConfigError, match="cannot read"):
        build_corpus({"kind": "text", "path": str(tmp_path / "missing.txt")}, tok)
    with pytest.raises(ConfigError, match="vocabulary"):
        Markers("<nothere>", "</think>").token_ids(tok)


def _column_sum(w: list[str], p: int) -> int:
    """The true sum of the column whose result's first digit is at ``p`` (the column step
    ``x + y + c =`` is the last one before ``p``)."""
    eq = max(i for i in range(p) if w[i] == "=")
    return int(w[eq - 5]) + int(w[eq - 3]) + int(w[eq - 1])


def test_organism_labels_mark_the_right_positions():
    from interp.features.corpus import organism_corpus
    from interp.organisms.task import VOCAB

    n_err = n_ver = n_short = 0
    for it in organism_corpus(120, seed=3):
        w = [VOCAB[i] for i in it.ids]
        L = it.labels
        for p in np.nonzero(L["error"] == 1)[0]:
            assert w[p + 1] == "wait" and w[p + 2] != "check"
            n_err += 1
        for p in np.nonzero(L["verify"] == 1)[0]:
            assert w[p] == ";" and w[p + 1:p + 3] == ["wait", "check"]
            n_ver += 1
        for p in np.nonzero(L["error"] == 0)[0]:  # clean decision points
            assert w[p + 1] in (";", "</think>")
        assert ((L["error.carry_slip"] == 1) | (L["error.random"] == 1)).sum() == \
            (L["error"] == 1).sum()
        for p in np.nonzero(L["carry"] >= 0)[0]:
            assert w[p] == "="
            x, y, c = int(w[p - 5]), int(w[p - 3]), int(w[p - 1])
            assert L["carry"][p] == int(x + y + c >= 10)
        for p in np.nonzero(L["planted_error"] >= 0)[0]:
            assert w[p].isdigit()
        # the halves: carry digits follow '=' or 'wait', units digits a carry digit
        first, units = L["planted_error.carry_digit"], L["planted_error.units_digit"]
        assert ((first >= 0) != (units >= 0))[L["planted_error"] >= 0].all()
        assert (np.maximum(first, units) == L["planted_error"]).all()
        for p in np.nonzero(first >= 0)[0]:
            assert w[p - 1] in ("=", "wait")
            true = _column_sum(w, p)
            assert first[p] == int(int(w[p]) != true // 10)
        for p in np.nonzero(units >= 0)[0]:
            assert first[p - 1] >= 0
            assert units[p] == int(int(w[p]) != _column_sum(w, p - 1) % 10)
        # a wrong digit is always followed (at most one digit later) by wait
        for p in np.nonzero(L["planted_error"] == 1)[0]:
            assert "wait" in w[p + 1:p + 3]
        seq = L["seq:short_thinking"]
        assert w[int(np.nonzero(seq >= 0)[0].max())] == "<think>"
        short = "</think>" == w[w.index("<think>") + 1]
        assert (seq[seq >= 0] == int(short)).all()
        n_short += short
    assert n_err > 10 and n_ver > 10 and n_short > 5


def test_collect_config_rejects_bad_settings():
    from interp.errors import ConfigError

    with pytest.raises(ConfigError):
        CollectConfig(top_k=0)
    with pytest.raises(ConfigError, match="unknown"):
        CollectConfig.from_dict({"topk": 3})


def test_batches_skip_to_a_resume_point(tok):
    corpus = _corpus(tok)
    got = [(first, len(items)) for first, items in iter_batches(corpus, 4, skip=4)]
    assert got == [(4, 4), (8, 1)]
    hes = hesitation_ids(tok, ["wait", "nothere"])
    assert hes == [[WAIT]]
    b = make_batch(list(corpus)[:3], 10, 0, ["digit"], hes, 1024)
    assert b.seq.tolist() == [10, 11, 12]
    assert b.occ.tolist() == [[0, int(np.nonzero(np.array(TEXTS[0].split()) == "wait")[0][0]),
                               0]] + [[2, p, 0] for p in
                                      np.nonzero(np.array(TEXTS[2].split()) == "wait")[0]]


def test_collector_state_roundtrip(tok, tmp_path):
    src, corpus = TokenSource(tok), _corpus(tok)
    col = _collect(src, corpus)
    col.save_checkpoint(tmp_path, {"x": 1})
    other = Collector(src.layers, src.d_sae, col.cfg, corpus.label_names, 1)
    rec = other.load_checkpoint(tmp_path)
    assert rec["x"] == 1
    a, b = col.state_tensors(), other.state_tensors()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_float_order_keys_sort_like_the_floats():
    from interp.features.collect import float_order_key

    x = torch.tensor([float("-inf"), -3.0, -1.0, -1e-30, 0.0, 1e-30, 0.5, 1.0, 7.0,
                      float("inf")])
    k = float_order_key(x)
    assert (k[1:] > k[:-1]).all()
    y = torch.randn(2000)
    assert torch.equal(float_order_key(y).argsort(stable=True), y.argsort(stable=True))


def test_group_max_sparse_branch_equals_dense_and_brute_force():
    from interp.features.collect import _group_max

    g = torch.Generator().manual_seed(0)
    key = torch.randint(0, 50, (400,), generator=g)
    v = torch.rand(400, generator=g).round(decimals=1) + 0.1   # ties on purpose
    pos = torch.randint(0, 30, (400,), generator=g)
    dense = _group_max(key, v, pos, 50, 30)
    sparse = _group_max(key, v, pos, 50, 30, dense_max=10)
    for a, b in zip(dense, sparse):
        assert torch.equal(a, b)
    keys, mx, first = dense
    assert keys.tolist() == sorted(set(key.tolist()))
    for k, m, f in zip(keys.tolist(), mx.tolist(), first.tolist()):
        sel = key == k
        assert m == v[sel].max().item()
        assert f == pos[sel & (v == v[sel].max())].min().item()
    for dm in (1 << 24, 10):  # without positions: the same keys and maxima
        k2, m2, none = _group_max(key, v, None, 50, 30, dense_max=dm)
        assert none is None and torch.equal(k2, keys) and torch.equal(m2, mx)


def test_collection_benchmark_reads_the_same_tokens_on_both_sides():
    """``bench features-collect --quick``: the plain forward runs over every batch the
    collection took in (per-batch interleaving), so both sides count the same tokens."""
    from types import SimpleNamespace

    from interp.features.bench import bench_features_collect
    from interp.features.corpus import organism_corpus

    out = bench_features_collect(SimpleNamespace(quick=True, device="cpu"))
    assert out["interleaving"] == "per batch" and out["repeats"] == 3
    # the bench raises when the sides differ; both cover the whole corpus
    assert out["n_tokens"] == sum(len(it.ids) for it in organism_corpus(256, seed=0))
    lo, hi = out["collect_tokens_per_s_spread"]
    assert lo <= out["collect_tokens_per_s"] <= hi
    assert out["ratio"] == pytest.approx(out["collect_tokens_per_s"]
                                         / out["forward_tokens_per_s"])


def test_map_data_revision_follows_the_drawn_data_only():
    """The map's ``datarevision`` tells the browser whether the points changed: the same
    for another open feature or other search hits (only the ring shapes move), another
    one for another colouring or other coordinates."""
    import pandas as pd

    from interp.features.plots import feature_map

    df = pd.DataFrame({"g": range(6), "id": [f"0:{i}" for i in range(6)],
                       "x": np.arange(6.0), "y": np.arange(6.0) ** 2, "layer": [0, 0, 0, 1, 1, 1],
                       "region": ["prompt"] * 6, "density": [0.1] * 6, "max": [1.0] * 6,
                       "top_token": ["a"] * 6, "hesitation": [0.0] * 6})
    rev = feature_map(df, "layer", selected=1).layout.datarevision
    assert feature_map(df, "layer", selected=4, marked=[2, 3]).layout.datarevision == rev
    assert feature_map(df, "density", selected=1).layout.datarevision != rev
    moved = df.assign(x=df["x"] + 1.0)
    assert feature_map(moved, "layer", selected=1).layout.datarevision != rev
    rings = feature_map(df, "layer", selected=4, marked=[2, 3]).layout.shapes
    assert [(s.name, s.xanchor, s.yanchor) for s in rings] == [
        ("search hits", 2.0, 4.0), ("search hits", 3.0, 9.0), ("feature 0:4", 4.0, 16.0)]
