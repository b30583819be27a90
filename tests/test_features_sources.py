"""Feature sources on tiny real models: logit lens against the checkpoint's own weights,
per-row edits against the adapter model's FeatureMask, SAELens transcoders on a plain
model, ablation effects against a direct computation, the features.collect job with an
interruption, labels, cards, graph links and the map."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from interp.errors import ConfigError, StorageError
from interp.features.collect import CollectConfig
from interp.features.corpus import texts_corpus
from interp.features.pipeline import collect_features
from interp.features.scores import ablation_effects, logit_lens
from interp.features.source import AdapterSource, RowEdit, TranscoderSource
from interp.features.table import FeatureTable
from interp.store import Store

TEXTS = ["hello <think> 1 + 2 = 3 wait 3 </think> answer is 3",
         "a b c <think> 4 + 4 = 8 </think> 8", "the sum is 5 so yes",
         "<think> 9 + 1 = 1 0 wait 1 0 </think> 1 0", "carry 1 wait 2 ok",
         "hello world <think> yes no ok </think> no", "c b a 7 7 7"]


def save_tiny_adapters(pair_dirs, store: Store, seed: int = 0):
    """A saved adapter set (d_sae 16) on a tiny pair, with a random decoder and encoder
    bias, so that its features fire and write something."""
    from interp.adapters.io import save_adapters
    from interp.adapters.train import TrainConfig, setup_models

    b, f = pair_dirs
    cfg = TrainConfig(base=str(b), reasoner=str(f), d_sae=16, data="random", max_len=12,
                      device="cpu", steps=1)
    setup = setup_models(cfg)
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed)
        for a in setup.model.adapters.layers:
            a.W_dec.copy_(torch.randn(a.W_dec.shape, generator=g) * 0.3)
            a.b_enc.copy_(torch.randn(a.b_enc.shape, generator=g) * 0.3)
    return save_adapters(setup, cfg, store=store), setup


@pytest.fixture(scope="module")
def adapters_art(tiny_pair_dirs, tmp_path_factory):
    return save_tiny_adapters(tiny_pair_dirs, Store(tmp_path_factory.mktemp("adstore")))[0]


@pytest.fixture(scope="module")
def source(adapters_art):
    return AdapterSource.from_artifact(adapters_art, "cpu")


def _tokens(src, texts=TEXTS[:3]):
    ids = [src.tokenizer(t)["input_ids"] for t in texts]
    T = max(map(len, ids))
    toks = torch.full((len(ids), T), src.tokenizer.pad_token_id, dtype=torch.long)
    for i, x in enumerate(ids):
        toks[i, :len(x)] = torch.tensor(x)
    return toks, ids


def test_logit_lens_equals_checkpoint_weights(source, adapters_art, tiny_pair_dirs):
    _, fine = tiny_pair_dirs
    hf = load_file(str(fine / "model.safetensors"))
    W_U = hf["lm_head.weight"].T  # [d, vocab]
    gain = hf["model.norm.weight"]
    U = gain[:, None] * W_U
    assert torch.allclose(source.unembed(), U, atol=1e-6)
    for layer in source.layers:
        W_dec = load_file(str(adapters_art.path / f"layer_{layer}" /
                              "sae_weights.safetensors"))["W_dec"]
        direct = W_dec @ U  # [d_sae, vocab]
        lens = logit_lens(source.decoder(layer), source.unembed(), k=5)
        top = direct.topk(5, -1)
        bot = direct.topk(5, -1, largest=False)
        assert torch.allclose(lens["top_vals"], top.values, atol=1e-5)
        assert torch.allclose(lens["bot_vals"], bot.values, atol=1e-5)
        assert torch.equal(lens["top_ids"], top.indices)


def test_features_only_pass_equals_the_full_pass(source):
    """Collection's pass without logits (which skips the last layer's MLP output) gives
    every layer's activations of the full adapter model, bit for bit."""
    toks, _ = _tokens(source)
    full = source.am(toks, "adapt")
    logits, acts = source.forward(toks, need_logits=False)
    assert logits is None and sorted(acts) == source.layers
    for layer in source.layers:
        assert torch.equal(acts[layer], full.acts[layer])
        assert acts[layer].gt(0).any()


def test_row_edits_equal_feature_masks(source):
    from interp.adapters.module import FeatureMask

    toks, _ = _tokens(source)
    _, acts = source.forward(toks)
    layer = 1
    # the most active feature of each row, ablated / clamped per row
    feats = acts[layer].amax(1).argmax(-1)
    for value in (0.0, 2.5):
        logits, acts_e = source.forward(toks, RowEdit(layer, feats, torch.full((3,), value)))
        for r in range(3):
            mask = FeatureMask(source.d_sae[layer]).clamp(layer, [int(feats[r])], value)
            want = source.am(toks[r:r + 1], "adapt", mask=mask)
            assert torch.allclose(logits[r], want.logits[0], atol=1e-5)
            assert torch.allclose(acts_e[layer][r], want.acts[layer][0], atol=1e-6)
    # an unedited row (-1) is the plain adapter model
    logits, _ = source.forward(toks, RowEdit(layer, torch.tensor([-1, -1, -1]), torch.zeros(3)))
    assert torch.allclose(logits, source.forward(toks)[0], atol=1e-6)


def test_edit_hooks_run_the_edited_adapter_model(source):
    from interp.adapters.module import FeatureMask

    toks, _ = _tokens(source)
    hooked = source.model
    plain = hooked.run_with_hooks(toks, fwd_hooks=source.edit_hooks({}))
    assert torch.allclose(plain, source.am(toks, "adapt").logits, atol=1e-5)
    edited = hooked.run_with_hooks(toks, fwd_hooks=source.edit_hooks({0: {3: 0.0, 5: 1.5}}))
    mask = FeatureMask(source.d_sae[0]).zero(0, [3]).clamp(0, [5], 1.5)
    assert torch.allclose(edited, source.am(toks, "adapt", mask=mask).logits, atol=1e-5)
    assert not torch.allclose(edited, plain)


def test_transcoders_on_a_plain_model(adapters_art, tiny_pair_dirs):
    from interp.models import load_model

    _, fine = tiny_pair_dirs
    model = load_model(str(fine), device="cpu", dtype="float32")
    dirs = [adapters_art.path / "layer_0", adapters_art.path / "layer_1"]
    src = TranscoderSource.from_dirs(model, dirs)
    assert src.layers == [0, 1] and src.key.startswith("tc-")
    toks, _ = _tokens(src)
    logits, acts = src.forward(toks)
    _, cache = model.hooked.run_with_cache(toks)
    for layer in (0, 1):
        tc = src.tc[layer]
        x = cache[f"blocks.{layer}.ln2.hook_normalized"]
        assert torch.allclose(acts[layer], torch.relu(x @ tc.W_enc + tc.b_enc), atol=1e-5)
    assert torch.allclose(logits, model.hooked(toks), atol=1e-5)  # reading changes nothing
    # an edit adds (v - f) W_dec to the layer's MLP output
    feats = acts[1].amax(1).argmax(-1)
    _, acts_e = src.forward(toks, RowEdit(1, feats, torch.zeros(3)))
    delta = {}

    def grab(out, hook):
        delta[hook.name] = out
        return out

    model.hooked.run_with_hooks(toks, fwd_hooks=[("blocks.1.hook_mlp_out", grab)])
    base_out = delta.pop("blocks.1.hook_mlp_out")
    model.hooked.run_with_hooks(
        toks, fwd_hooks=src.edit_hooks({1: {int(feats[0]): 0.0}})
        + [("blocks.1.hook_mlp_out", grab)])
    f0 = acts[1][0, :, int(feats[0])]
    want = base_out[0] - f0[:, None] * src.tc[1].W_dec[int(feats[0])]
    assert torch.allclose(delta["blocks.1.hook_mlp_out"][0], want, atol=1e-5)
    assert float(acts_e[1][0, :, int(feats[0])].abs().max()) == 0.0
    with pytest.raises(ConfigError, match="cfg.json"):
        TranscoderSource.from_dirs(model, [adapters_art.path])


def test_ablation_effect_equals_direct_computation(source):
    from interp.adapters.module import FeatureMask

    toks, ids = _tokens(source, TEXTS)
    _, acts = source.forward(toks)
    layer = 0
    f = int(acts[layer].flatten(0, 1).gt(0).sum(0).argmax())  # the densest feature
    seqs = [x for x in ids]
    res = ablation_effects(source, [(layer, f)], lambda _l, _i: seqs,
                           pad_id=source.tokenizer.pad_token_id, batch_rows=3)[0]
    kl_sum, n = 0.0, 0
    with torch.no_grad():
        for x in seqs:
            t = torch.tensor([x])
            p = torch.log_softmax(source.am(t, "adapt").logits.double(), -1)
            q = torch.log_softmax(source.am(t, "adapt", mask=FeatureMask(16).zero(layer, [f]))
                                  .logits.double(), -1)
            on = source.am(t, "adapt").acts[layer][0, :, f] > 0
            kl = (p.exp() * (p - q)).sum(-1)[0]
            kl_sum += float(kl[on].sum())
            n += int(on.sum())
    assert n > 0 and res["n_positions"] == n and res["n_sequences"] == len(seqs)
    assert res["kl_mean"] == pytest.approx(kl_sum / n, rel=1e-6)


def test_example_activations_in_the_artifact_are_exact(source, tmp_path):
    corpus = texts_corpus(TEXTS, source.tokenizer)
    art = collect_features(source, corpus, CollectConfig(top_k=3, n_reservoir=4, batch_size=3),
                           Store(tmp_path), ablation="none")
    tab = FeatureTable(art)
    toks = {i: source.tokenizer(t)["input_ids"] for i, t in enumerate(TEXTS)}
    checked = 0
    for g in range(tab.F):
        layer, i = tab.lid(g)
        for e in tab.examples(g, context=None):
            _, acts = source.forward(torch.tensor([toks[e["seq"]]]))
            want = acts[layer][0, :, i].numpy()
            np.testing.assert_allclose(e["acts"], want, rtol=2e-3, atol=1e-3)  # float16
            assert e["acts"][e["pos"]] == pytest.approx(e["act"], rel=2e-3)
            checked += 1
    assert checked > 20
    hist = tab.t["hist"]
    assert (hist.sum(1) == tab.meta["n_tokens"]).all()
    assert tab.search(tab.fid(5)) == [5]


@pytest.fixture
def job_env(adapters_art, tmp_cache):
    """The tiny adapter set copied into the temp cache (store "main") and a text corpus."""
    import shutil

    dst = tmp_cache / "adapters" / adapters_art.key
    shutil.copytree(adapters_art.path, dst)
    corpus = tmp_cache.parent / "corpus.txt"
    corpus.write_text("\n".join(TEXTS * 2))
    return {"source": {"kind": "adapters", "key": adapters_art.key, "store": "main"},
            "corpus": {"kind": "text", "path": str(corpus)}, "device": "cpu",
            "config": {"batch_size": 2, "top_k": 3, "n_reservoir": 4, "checkpoint_every": 1},
            "ablation": "top", "ablation_top": 8, "map": "pca"}


def test_job_interrupted_and_resumed_equals_uninterrupted(job_env, tmp_cache, tmp_path):
    from interp import jobs
    from interp.features.pipeline import collect_corpus_source

    spec = job_env
    seen = []

    def stop_early(st):
        seen.append(st.step)
        if st.step >= 6:
            (jobs.jobs_dir() / st.id / "cancel").touch()

    st1 = jobs.run_inline("features.collect", spec, on_progress=stop_early,
                          raise_on_error=False)
    assert st1.state == "cancelled"
    st2 = jobs.run_inline("features.collect", spec)
    assert st2.state == "done" and st2.result["map_key"]
    assert min(r["step"] for r in jobs.progress_records(st2.id) if r["t"] >= 0) <= 6
    got = Store(tmp_cache).load("features", st2.result["key"])
    # the same collection without interruption, straight through
    src, corpus, cfg = collect_corpus_source(spec, "cpu")
    want = collect_features(src, corpus, cfg, Store(tmp_path), ablation="top", ablation_top=8)
    assert got.key == want.key
    a, b = got.tensors, want.tensors
    assert set(a) == set(b)
    for k in a:  # bit for bit (NaN where a ratio is undefined)
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, equal_nan=True, msg=k)
    assert got.read_json("ablation.json") == want.read_json("ablation.json")
    # the map was saved for the source
    from interp.features.featmap import find_map

    assert find_map(adapters_key := spec["source"]["key"], [Store(tmp_cache)]) is not None
    assert adapters_key


def test_job_rejects_bad_specs(job_env):
    from interp import jobs

    with pytest.raises(Exception, match="unknown features.collect field"):
        jobs.run_inline("features.collect", {**job_env, "sorce": {}})
    with pytest.raises(Exception, match="unknown corpus kind"):
        jobs.run_inline("features.collect", {**job_env, "corpus": {"kind": "csv"}})


# ------------------------------------------------------------------ labels
def test_labels_roundtrip_and_read_only(tmp_path):
    from interp.features.labels import load_labels, merged_labels, save_label

    st = Store(tmp_path / "a")
    assert load_labels("src", st) == {}
    save_label("src", 2, 17, "  before   wait ", st)
    save_label("src", 0, 3, "carry", st)
    save_label("other", 0, 3, "x", st)
    assert load_labels("src", st) == {(2, 17): "before wait", (0, 3): "carry"}
    save_label("src", 0, 3, "", st)  # removes
    assert load_labels("src", st) == {(2, 17): "before wait"}
    ro = Store(tmp_path / "a", read_only=True)
    with pytest.raises(StorageError, match="read-only"):
        save_label("src", 1, 1, "x", ro)
    with pytest.raises(ConfigError):
        save_label("src", 1, 1, "x" * 500, st)
    st2 = Store(tmp_path / "b")
    save_label("src", 2, 17, "local", st2)
    assert merged_labels("src", [st, st2])[(2, 17)] == "local"


def test_concurrent_label_writers_keep_every_label(tmp_path):
    from interp.features.labels import load_labels, save_label

    st = Store(tmp_path)
    threads = [threading.Thread(target=save_label, args=("src", 0, i, f"f{i}", st))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert load_labels("src", st) == {(0, i): f"f{i}" for i in range(8)}


# ------------------------------------------------------------------ card and graphs
def test_card_html_escapes_and_graph_links(source, tmp_path):
    from interp.features.card import card_data, card_html, examples_html, graphs_with_feature

    ex = [{"kind": "top", "seq": 0, "name": "<b>x</b>", "pos": 1, "act": 1.0, "start": 0,
           "length": 3, "tokens": ["<script>alert(1)</script>", "wait", "&"],
           "acts": [0.0, 1.0, 0.5], "regions": ["prompt", "thinking", "answer"]}]
    h = examples_html(ex, 1.0)
    assert "<script>" not in h and "&lt;script&gt;" in h and "&amp;" in h
    assert "&lt;b&gt;x&lt;/b&gt;" in h
    st = Store(tmp_path)
    assert graphs_with_feature("src", 1, 4, [st]) == []
    ft = "cross layer transcoder"  # the graph files' feature nodes (interp.attribution)
    graph = {"metadata": {"prompt": "1 + 2"},
             "nodes": [{"node_id": "1_4_7", "layer": "1", "feature": 19, "feature_type": ft},
                       {"node_id": "0_2_3", "layer": "0", "feature": 3, "feature_type": ft},
                       {"node_id": "err_3_3", "layer": "3", "feature": -1,
                        "feature_type": "mlp reconstruction error"}]}
    st.save("attribution_graph", {"adapters": "src", "g": 1}, meta={"adapters_key": "src"},
            files={"graph.json": json.dumps(graph)})
    st.save("attribution_graph", {"adapters": "other", "g": 2},
            files={"graph.json": json.dumps(graph)})
    got = graphs_with_feature("src", 1, 4, [st])
    assert len(got) == 1 and got[0]["pin"] == "1_4_7"
    assert graphs_with_feature("src", 0, 2, [st])[0]["pin"] == "0_2_3"
    assert graphs_with_feature("src", 0, 3, [st]) == []  # 3 is 0:2's pairing, not an index
    assert graphs_with_feature("src", 3, 3, [st]) == []
    corpus = texts_corpus(TEXTS, source.tokenizer)
    art = collect_features(source, corpus, CollectConfig(top_k=3, n_reservoir=4),
                           Store(tmp_path / "f"), ablation="top", ablation_top=4)
    tab = FeatureTable(art)
    g = int(tab.t["act_max"].argmax())
    card = card_data(tab, g, "my <label>", got)
    page = card_html(card)
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    assert "my &lt;label&gt;" in page and tab.fid(g) in page
    json.dumps(card)  # JSON-able


# ------------------------------------------------------------------ map
def test_map_is_saved_once_and_skips_zero_directions(source, tmp_path):
    from interp.features import featmap

    st = Store(tmp_path)
    with torch.no_grad():
        keep = source.am.adapters[0].W_dec[2].clone()
        source.am.adapters[0].W_dec[2] = 0.0
    try:
        art = featmap.ensure_map(source, st, "pca")
    finally:
        with torch.no_grad():
            source.am.adapters[0].W_dec[2] = keep
    xy = art.tensors["xy"].numpy()
    assert xy.shape == (source.n_features, 2)
    assert np.isnan(xy[2]).all() and np.isfinite(np.delete(xy, 2, 0)).all()
    again = featmap.ensure_map(source, st, "pca")  # found, not recomputed
    assert again.key == art.key and again.provenance["created"] == art.provenance["created"]
    assert featmap.find_map(source.key, [st]).key == art.key
    assert featmap.find_map("nope", [st]) is None
    with pytest.raises(ConfigError):
        featmap.map_config("k", "tsne")


@pytest.mark.slow
def test_umap_layout_keeps_neighbours_together():
    from interp.features.featmap import layout

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16))
    W = np.concatenate([c + 0.05 * rng.normal(size=(40, 16)) for c in centres])
    xy = layout(W, "umap", n_neighbors=10)
    lab = np.repeat(np.arange(3), 40)
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    same = d[lab[:, None] == lab[None]].mean()
    other = d[lab[:, None] != lab[None]].mean()
    assert same < 0.5 * other


def test_paths_in_artifacts_are_plain(adapters_art):
    assert Path(adapters_art.path).exists()


def test_table_text_round_trips_prompts(source, tmp_path):
    corpus = texts_corpus(TEXTS[:3], source.tokenizer)
    art = collect_features(source, corpus, CollectConfig(top_k=2, n_reservoir=2),
                           Store(tmp_path), ablation="none")
    tab = FeatureTable(art)
    assert tab.word_level  # the tiny vocabulary has no leading-space tokens
    for s in tab.t["seq_index"]:
        ids, _, _ = tab.sequence(int(s))
        again = source.tokenizer(tab.text(ids))["input_ids"]
        assert list(again) == [int(i) for i in ids[1:]] or list(again) == [int(i) for i in ids]
