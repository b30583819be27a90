"""Trace sets: generation over a task (same ids as a direct generation, spans, resume
after an interruption), import from a file, the stored artifact, the corpus layout."""

from __future__ import annotations

import json

import numpy as np
import pytest

from interp.errors import ArtifactNotFoundError, ConfigError
from interp.generation import generate
from interp.models import load_model
from interp.store import Store
from interp.tasks import get_task
from interp.tasks.corpus import CODE, traceset_sequences
from interp.tasks.markers import hesitation_id_set
from interp.tasks.traces import generate_traces, import_traces, load_traceset, run_generation
from tests.conftest import make_think_tokenizer, make_tiny_checkpoint

PROMPTS = [{"id": f"p{i}", "prompt": f"Compute {i} + {i + 3}.", "answer": str(2 * i + 3),
            "trace": (f"{i} plus {i + 3}. Wait, check: {i} + {i + 3} = {2 * i + 3}. "
                      + " wait" * (i % 3) + f"</think> The answer is \\boxed{{{2 * i + 3}}}.")}
           for i in range(6)]


@pytest.fixture(scope="module")
def think_model_dir(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("think") / "reasoner", "qwen2", seed=21,
                                tokenizer=make_think_tokenizer())


@pytest.fixture(scope="module")
def think_model(think_model_dir):
    return load_model(str(think_model_dir), device="cpu")


@pytest.fixture
def task_file(tmp_path):
    f = tmp_path / "task.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in PROMPTS))
    return f


def test_generated_traces_match_direct_generation(think_model, task_file, tmp_path):
    task = get_task(str(task_file))
    tok = think_model.tokenizer
    recs = generate_traces(think_model, task, n=None, max_new_tokens=12, temperature=0.0,
                           batch_size=4, chunk=4)
    items = task.items()
    direct = generate(think_model, [task.encode(it, tok) for it in items], max_new_tokens=12,
                      batch_size=4)
    assert [r["id"] for r in recs] == [it.id for it in items]
    for r, g, it in zip(recs, direct, items):
        assert r["prompt_ids"] == tok(tok.apply_chat_template(
            [{"role": "user", "content": it.prompt}], add_generation_prompt=True,
            tokenize=False), add_special_tokens=False)["input_ids"]
        assert r["output_ids"] == g.output_ids
        # the template opened the block: thinking runs from 0 to the close (or the end)
        close = tok.convert_tokens_to_ids("</think>")
        end = r["output_ids"].index(close) if close in r["output_ids"] else len(g.output_ids)
        assert (r["think_start"], r["think_end"], r["closed"]) == (0, end, end < len(
            g.output_ids))
        assert r["reference"] == it.answer


def test_generation_resumes_from_saved_chunks(think_model, task_file, tmp_path, monkeypatch):
    task = get_task(str(task_file))
    kw = dict(n=None, max_new_tokens=10, temperature=0.8, top_p=0.9, seed=3, batch_size=2,
              chunk=2)
    full = generate_traces(think_model, task, **kw)
    work = tmp_path / "work"
    work.mkdir()
    import interp.generation as G

    calls = []
    real = G.generate

    def counting(*a, **k):
        calls.append(len(a[1]))
        if len(calls) == 2:
            raise KeyboardInterrupt   # killed during the second chunk
        return real(*a, **k)

    monkeypatch.setattr(G, "generate", counting)
    with pytest.raises(KeyboardInterrupt):
        generate_traces(think_model, task, work=work, **kw)
    assert sorted(p.name for p in work.iterdir()) == ["chunk-0000000.json"]
    calls.clear()
    monkeypatch.setattr(G, "generate", lambda *a, **k: (calls.append(len(a[1])), real(*a, **k))[1])
    resumed = generate_traces(think_model, task, work=work, **kw)
    assert calls == [2, 2]                 # only the two missing chunks ran
    assert resumed == full


def test_run_generation_saves_an_artifact(tmp_cache, think_model, think_model_dir, task_file):
    res = run_generation({"model": str(think_model_dir), "task": str(task_file),
                          "max_new_tokens": 8, "batch_size": 3, "temperature": 0.0},
                         model=think_model)
    ts = load_traceset(res["key"][:12])
    assert ts.key == res["key"] and len(ts.records) == len(PROMPTS)
    assert ts.config["task"]["sha256"] and ts.config["weight_hash"] == think_model.weight_hash
    assert ts.config["markers"]["starts_open"] is True
    assert ts.meta["summary"]["n"] == len(PROMPTS)
    if ts.meta["summary"]["closed"] == 0:   # a random model rarely closes the block
        assert "no `</think>` found in 6 of 6 generations" in res["marker_warning"]
    with pytest.raises(ArtifactNotFoundError):
        load_traceset("nope")


def test_import_traces(tmp_cache, think_model_dir, task_file):
    res = import_traces(task_file, str(think_model_dir))
    ts = load_traceset(res["key"])
    tok = make_think_tokenizer()
    hes = hesitation_id_set(tok, ("wait",))
    assert ts.config["source"] == "imported" and res["accuracy"] == 1.0
    for r, src in zip(ts.records, PROMPTS):
        assert tok.decode(r["output_ids"]) == src["trace"]
        body = src["trace"].split("</think>")[0]
        # thinking = the tokens of the text before </think>
        assert r["think_tokens"] == len(tok(body, add_special_tokens=False)["input_ids"])
        assert r["closed"] and r["correct"] is True
        n_wait = 1 + src["trace"].count(" wait")           # "Wait," + the " wait"s
        assert r["hesitations"] == n_wait
        assert sum(t in hes for t in r["output_ids"]) == n_wait
    bare = task_file.with_name("bare.jsonl")
    bare.write_text('{"prompt": "x"}\n')
    with pytest.raises(ConfigError, match="no record with a 'trace'"):
        import_traces(bare, str(think_model_dir))


def test_traceset_corpus_regions_and_labels(tmp_cache, think_model_dir, task_file):
    ts = load_traceset(import_traces(task_file, str(think_model_dir))["key"])
    tok = make_think_tokenizer()
    close = tok.convert_tokens_to_ids("</think>")
    hes = hesitation_id_set(tok, ("wait",))
    seqs = list(traceset_sequences(ts, tok))
    assert [s[3] for s in seqs] == [r["id"] for r in ts.records]
    for (ids, reg, lab, _), r in zip(seqs, ts.records):
        p = len(r["prompt_ids"])
        assert ids == r["prompt_ids"] + r["output_ids"]
        c = ids.index(close)
        want = np.array([CODE["prompt"]] * p + [CODE["thinking"]] * (c - p)
                        + [CODE["think_end"]] + [CODE["answer"]] * (len(ids) - c - 1))
        assert (reg == want).all()
        h = lab["hesitation"]
        for pos in range(len(ids) - 1):
            inside = p - 1 <= pos < c
            assert h[pos] == ((1 if ids[pos + 1] in hes else 0) if inside else -1)
        assert (lab["seq:correct"][:p] == 1).all() and (lab["seq:correct"][p:] == -1).all()
    cut = list(traceset_sequences(ts, tok, max_len=5))
    assert all(len(s[0]) == 5 and len(s[1]) == 5 for s in cut)


def test_store_keys_by_config(tmp_cache, think_model_dir, task_file):
    a = import_traces(task_file, str(think_model_dir))
    b = import_traces(task_file, str(think_model_dir))
    assert a["key"] == b["key"] and len(Store().list("traces")) == 1
    task_file.write_text(task_file.read_text() + json.dumps(
        {"prompt": "extra", "trace": "x </think> y"}) + "\n")
    c = import_traces(task_file, str(think_model_dir))
    assert c["key"] != a["key"]


def test_adapter_batches_from_a_trace_set(tmp_cache, think_model_dir, task_file, tmp_path):
    """Training draws every train trace once per pass (seeded order), evaluation reads the
    eval traces in order, padded on the right; another tokenizer's trace set is refused."""
    from interp.adapters.data import BatchSource, check_source, eval_batches

    rows = [{**r, "split": "eval" if i < 2 else "train"} for i, r in enumerate(PROMPTS)]
    task_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    key = import_traces(task_file, str(think_model_dir))["key"]
    ts = load_traceset(key)
    tok = make_think_tokenizer()
    train = [tuple(r["prompt_ids"] + r["output_ids"]) for r in ts.records if r["split"] ==
             "train"]
    ev = [tuple(r["prompt_ids"] + r["output_ids"]) for r in ts.records if r["split"] == "eval"]
    src = BatchSource(tok, 2, seed=5, source=f"traceset:{key[:10]}", split="train",
                      max_len=1000)

    def rows_of(tokens, valid):
        return [tuple(t[v].tolist()) for t, v in zip(tokens, valid)]

    one_pass = rows_of(*src.batch(0)) + rows_of(*src.batch(1))
    assert sorted(one_pass) == sorted(train)            # a pass sees each once
    assert rows_of(*src.batch(0)) == rows_of(*BatchSource(
        tok, 2, seed=5, source=f"traceset:{key}", split="train", max_len=1000).batch(0))
    toks, valid = src.batch(2)
    assert (toks[~valid] == tok.pad_token_id).all()
    (b,) = eval_batches(tok, 2, batch_size=2, source=f"traceset:{key}", max_len=1000)
    assert rows_of(*b) == ev
    with pytest.raises(ConfigError, match="outside the model's vocabulary"):
        BatchSource(tok, 2, source=f"traceset:{key}", vocab_size=50)
    from tests.conftest import make_tiny_tokenizer

    with pytest.raises(ConfigError, match="vocabulary differs"):
        BatchSource(make_tiny_tokenizer(), 2, source=f"traceset:{key}", vocab_size=1000)
    with pytest.raises(ConfigError, match="only runs on the organism pair"):
        check_source("traces", ("organism:base", str(think_model_dir)))
    check_source("traces", ("organism:base", "organism:reasoner"))
