"""Real weights through the pipelines: SmolLM2-135M-Instruct on CPU at reduced sizes.

Needs ``python -m interp models fetch-smollm2`` first (skipped otherwise); slow. The
model writes no think tags, so its *answer* is its "thinking": markers ``think_open`` none,
``starts_open`` true, ``think_close`` ``<|im_end|>`` (its end of turn), and the length
direction separates long from short answers (prompts that ask for a detailed explanation
vs a one-word answer). Each test prints its figures and times (``-s`` shows them).
"""

from __future__ import annotations

import json
import time

import pytest

from interp.errors import ModelNotFoundError
from interp.store import Store

pytestmark = pytest.mark.slow
SMOL = "smollm2-135m-instruct"
MARKERS = {"think_open": None, "think_close": "<|im_end|>", "starts_open": True,
           "step_sep": "."}
TOPICS = ["the moon", "rain", "bread", "a bicycle", "volcanoes", "bees", "glass", "tides",
          "snow", "paper", "coffee", "a compass", "rivers", "bridges", "clocks", "salt"]


@pytest.fixture(scope="module")
def smol():
    import interp.models as M

    try:
        M.resolve(SMOL)
    except ModelNotFoundError:
        pytest.skip("run `python -m interp models fetch-smollm2` first")
    return M.load_model(SMOL, device="cpu")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("smol")
    rows = []
    for i, t in enumerate(TOPICS):
        rows.append({"id": f"long{i}", "prompt": f"Explain in detail, step by step, how "
                     f"{t} works. Write several sentences.", "split": "train" if i < 12
                     else "eval"})
        rows.append({"id": f"short{i}", "prompt": f"In one word: what colour is {t}?",
                     "split": "train" if i < 12 else "eval"})
    (d / "length.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "pos.txt").write_text("".join(f"Think carefully step by step: why does {t} "
                                       "matter?\n" for t in TOPICS[:8]))
    (d / "neg.txt").write_text("".join(f"Answer in one word: name of {t}?\n"
                                       for t in TOPICS[:8]))
    arith = [{"id": f"a{i}", "prompt": f"What is {i + 2} + {2 * i + 1}? Answer with the "
              "number.", "answer": str(3 * i + 3), "split": "eval"} for i in range(8)]
    (d / "arith.jsonl").write_text("".join(json.dumps(r) + "\n" for r in arith))
    return d


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A store of its own (the model registry stays the project's)."""
    return Store(tmp_path_factory.mktemp("smolstore"))


@pytest.fixture(scope="module")
def traceset(smol, files, cache):
    from interp.tasks.traces import load_traceset, run_generation

    t0 = time.time()
    res = run_generation({"model": SMOL, "task": str(files / "length.jsonl"), "n": 32,
                          "max_new_tokens": 48, "temperature": 0.0, "batch_size": 16,
                          "markers": MARKERS, "store_root": str(cache.root)}, model=smol)
    print(f"\ntraces: 32 x <= 48 tokens in {time.time() - t0:.1f} s; {json.dumps(res)}")
    return load_traceset(res["key"], cache)


def test_control_vector_kl_entropy(smol, files, cache):
    from interp.vectors.demo import run_experiment

    t0 = time.time()
    keys = run_experiment({"kind": "control", "target": SMOL, "task": str(files /
                                                                          "arith.jsonl"),
                           "positives": str(files / "pos.txt"),
                           "negatives": str(files / "neg.txt"), "layer": 15,
                           "n_control": 8, "n_sweep": 6, "n_accuracy": 6,
                           "alphas": [-4.0, -2.0, 0.0, 2.0, 4.0],
                           "accuracy_alphas": [0.0, 4.0], "max_new_tokens": 24},
                          cache, device="cpu", parts=("sweep", "accuracy", "trace"))
    sw = cache.load("vectors.sweep", keys["sweep"])
    kl = sw.tensors["kl_last"].mean(1)
    ent = sw.tensors["entropy_last"].mean(1)
    acc = cache.load("vectors.accuracy", keys["accuracy"]).tensors["correct"].float().mean(1)
    cv = cache.load("vectors.control", keys["control"])
    print(f"\ncontrol vector |c| {cv.meta['norm']:.2f}; KL(last) by α {kl.tolist()}; "
          f"entropy {ent.tolist()}; accuracy α=0 / 4: {acc.tolist()}; "
          f"{time.time() - t0:.1f} s")
    assert float(kl[2]) == 0.0 and float(kl[0]) > 0 and float(kl[4]) > 0
    assert float(kl[0]) > float(kl[1]) and float(kl[4]) > float(kl[3])


def test_length_direction_long_vs_short(smol, files, traceset, cache, monkeypatch):
    import interp.store
    from interp.length.pipeline import build, make_config

    monkeypatch.setattr(interp.store, "DEFAULT_ROOT", cache.root)  # trace set lookup
    lens = [r["think_tokens"] for r in traceset.split("train")]
    t0 = time.time()
    cfg = make_config(model=SMOL, task=str(files / "length.jsonl"), traces=traceset.key,
                      markers=MARKERS, split={"mode": "percentile", "short": 0.4,
                                             "long": 0.6},
                      n_sweep=4, n_eval=4, n_select=4, n_alpha=3, max_new_tokens=32,
                      batch_size=16, n_candidates=4, seal_alpha_grid=[0.0])
    idx = build(smol, cfg, cache, export_dir=cache.root / "edited")
    d = cache.load("length_direction", idx["keys"]["direction"])
    print(f"\nlength: train answer lengths {sorted(lens)}; split {d.meta['split']}; "
          f"best layer {idx['best']}; rho(length, alpha) {idx['length_alpha_spearman']}; "
          f"timings {idx['timings']}; {time.time() - t0:.1f} s")
    assert d.meta["split"]["n_short"] >= 5 and d.meta["split"]["n_long"] >= 5
    assert idx["best_layer_separability"] >= 0.9


@pytest.fixture(scope="module")
def transcoders(smol, traceset, cache):
    """Transcoders of layers 0-3 (of 30) trained on the trace set of its generations."""
    import interp.store
    from interp.transcoders import train_transcoders

    mp = pytest.MonkeyPatch()
    mp.setattr(interp.store, "DEFAULT_ROOT", cache.root)
    t0 = time.time()
    try:
        res = train_transcoders(smol, traceset.key, "0-3", d_sae=1152, l1=3e-4, steps=300,
                                lr=2e-3, batch_tokens=512, max_tokens=3000, eval_tokens=1500,
                                store=cache)
    finally:
        mp.undo()
    res["total_seconds"] = round(time.time() - t0, 1)
    return res


def test_transcoders_on_own_generations(transcoders):
    res = transcoders
    print(f"\ntranscoders layers 0-3: {json.dumps(res['held_out'])}; collect "
          f"{res['collect']} s, train {res['train']} s; total {res['total_seconds']} s")
    for ly in ("0", "1", "2", "3"):
        h = res["held_out"][ly]
        assert h["variance_explained"] > 0.5 and h["l0"] < 1152 / 4


def test_attribution_graph_through_transcoders(smol, traceset, transcoders, cache, capsys):
    """One attribution graph through the transcoders of layers 0-3 (the other 26 MLPs
    are error nodes), on a trace set record, to the summed logits of every spelling of
    ``wait``, from the command line as a user types it; the target's value is checked
    against a plain forward pass."""
    import torch

    from interp.cli import main
    from interp.tasks import hesitation_id_set
    from interp.tasks.corpus import hesitation_labels

    art = cache.load("transcoders", transcoders["key"])
    t0 = time.time()
    rc = main(["attribution", "graph", "--transcoders", str(art.path), "--model", SMOL,
               "--traces", traceset.key, "--index", "0", "--store", str(cache.root),
               "--max-feature-nodes", "256", "--device", "cpu"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    g = json.loads(out.out.strip().splitlines()[-1])
    with capsys.disabled():
        print(f"\nattribution graph (SmolLM2, transcoders on layers 0-3): "
              f"{g['n_tokens']} tokens, {g['graph_nodes']} graph nodes "
              f"({g['feature_nodes']} features), pruned {g['nodes']} nodes / {g['links']} "
              f"links, scores {json.dumps(g['scores'])}, seconds {g['seconds']} "
              f"(command {time.time() - t0:.1f} s)")
    assert g["covered_layers"] == [0, 1, 2, 3]
    hes = sorted(hesitation_id_set(smol.tokenizer, ["wait"]))
    assert len(hes) > 1 and sorted(g["target"]["tokens"]) == hes
    rec = traceset.records[0]
    ids = rec["prompt_ids"] + rec["output_ids"]
    hit = [i for i, v in enumerate(hesitation_labels(rec, set(hes))) if v == 1]
    n = hit[0] + 1 if hit else len(rec["prompt_ids"])
    assert g["n_tokens"] == n
    with torch.no_grad():
        lg = smol.hooked(torch.tensor([ids[:n]]))[0, -1].double()
    want = float(lg[hes].sum() - len(hes) * lg.mean())
    assert g["target"]["value"] == pytest.approx(want, rel=1e-3, abs=1e-3)
    assert 0 < g["scores"]["replacement"] < 1 and 0 < g["scores"]["completeness"] < 1
    assert 0 < g["feature_nodes"] <= 256
