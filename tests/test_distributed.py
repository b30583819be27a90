"""Scale-out: shards, parts merged in the store, data-parallel loss shares, memory
estimates, and real 2-rank torchrun runs (gloo, CPU) against one process.

The torchrun tests share one launch (a module fixture: the ranks import torch once and
run every command line in the same process group, ``tests/_dist_runner.py``) on the
committed organisms: a data-parallel and an FSDP training run, a resume of a
single-process checkpoint on 2 ranks, a 2-rank FSDP run stopped by a NaN whose
checkpoint one process resumes, and a split adapter evaluation. Every figure is
compared with a single-process run computed here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from interp import distributed as D
from interp.store import PROJECT_ROOT, Store

ORGANISMS = PROJECT_ROOT / "cache" / "organisms"
CURVE_KEYS = ("loss", "kl", "l1", "nmse", "bridge", "l0", "grad_norm", "lr", "k", "dead")


# ------------------------------------------------------------------ shards
def test_shard_bounds_tile_balance_and_align():
    for n in range(0, 23):
        for world in range(1, 6):
            for align in (1, 2, 3, 8):
                b = [D.shard_bounds(n, r, world, align) for r in range(world)]
                assert b[0][0] == 0 and b[-1][1] == n
                assert all(b[i][1] == b[i + 1][0] for i in range(world - 1))
                blocks = [-(-(hi - lo) // align) for lo, hi in b]
                assert max(blocks) - min(blocks) <= 1
                assert blocks == sorted(blocks, reverse=True)  # earlier ranks take more
                assert all(lo % align == 0 for lo, _ in b if lo < n)
    items = list(range(10))
    assert sum((D.shard(items, r, 3) for r in range(3)), []) == items
    with pytest.raises(D.ConfigError):
        D.shard_bounds(5, 3, 3)


def test_generation_shards_at_batch_boundaries_sample_like_one_call(tiny_qwen_dir):
    from interp.generation import generate
    from interp.models import load_model

    m = load_model(str(tiny_qwen_dir), device="cpu", dtype="float32")
    prompts = ["1 + 2 =", "hello world", "a b c", "3 - 1 =", "the answer is"]
    kw = dict(max_new_tokens=6, temperature=1.0, seed=3, batch_size=2, stop_at_eos=False)
    whole = generate(m, prompts, **kw)
    split = []
    for r in range(2):
        lo, hi = D.shard_bounds(len(prompts), r, 2, align=2)
        split += generate(m, prompts[lo:hi], first_row=lo, **kw)
    assert [g.output_ids for g in split] == [g.output_ids for g in whole]
    assert [g.row for g in split] == list(range(5))
    # sampled: a shard that restarted the chunk seeds would differ
    assert generate(m, prompts[4:], **kw)[0].output_ids != whole[4].output_ids


# ------------------------------------------------------------------ parts
def _work_fn(calls):
    def work(bounds):
        (lo, hi), (plo, phi) = bounds
        calls.append(bounds)
        x = torch.arange(lo, hi, dtype=torch.float64)
        return D.Part({"sq": x ** 2, "pair": torch.stack([x, -x], 1)},
                      {"records": [{"i": i} for i in range(plo, phi)], "tag": "t"})
    return work


def test_collect_parts_merge_to_the_single_process_artifact(tmp_path):
    config = {"what": "squares", "n": 11}
    single = D.collect("squares", config, (11, 7), _work_fn([]), D.concat_parts,
                       store=Store(tmp_path / "one"), align=(1, 2))
    store = Store(tmp_path / "split")
    calls: list = []
    key = D.final_key("squares", config)
    # the ranks finish in any order; no process group: the store is the channel
    assert D.collect("squares", config, (11, 7), _work_fn(calls), D.concat_parts, store=store,
                     ranks=D.Ranks(2, 3), align=(1, 2)) is None
    st = D.parts_status(store, "squares", key)
    assert st["landed"] == [2] and st["parts"] == 3 and not st["merged"]
    assert D.collect("squares", config, (11, 7), _work_fn(calls), D.concat_parts, store=store,
                     ranks=D.Ranks(0, 3), align=(1, 2)) is None
    # a rank rerun after a crash reuses its landed part instead of recomputing it
    n_calls = len(calls)
    assert D.collect("squares", config, (11, 7), _work_fn(calls), D.concat_parts, store=store,
                     ranks=D.Ranks(0, 3), align=(1, 2)) is None
    assert len(calls) == n_calls
    assert D.parts_status(store, "squares", key)["landed"] == [0, 2]
    merged = D.collect("squares", config, (11, 7), _work_fn(calls), D.concat_parts,
                       store=store, ranks=D.Ranks(1, 3), align=(1, 2))
    assert merged is not None and merged.key == single.key == key
    assert calls == [((8, 11), (6, 7)), ((0, 4), (0, 4)), ((4, 8), (4, 6))]
    for name in ("sq", "pair"):
        assert torch.equal(merged.tensors[name], single.tensors[name])
    assert merged.meta == single.meta
    assert [r["i"] for r in merged.meta["records"]] == list(range(7))
    st = D.parts_status(store, "squares", key)
    assert st["merged"] and st["landed"] == []          # the parts are removed
    assert store.list(D.PART_KIND) == []


def test_parts_cli_reports_landed_parts(tmp_path, capsys):
    from interp.cli import main

    store = Store(tmp_path)
    D.collect("squares", {"n": 4}, 4, lambda b: D.Part({"x": torch.zeros(b[0][1] - b[0][0])}),
              D.concat_parts, store=store, ranks=D.Ranks(1, 2))
    assert main(["distributed", "parts", "squares", D.final_key("squares", {"n": 4}),
                 "--store", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["landed"] == [1] and out["parts"] == 2 and out["bounds"] == [[[2, 4]]]


# ------------------------------------------------------------------ split collections
def _by_hand(fn, world, order):
    """``fn(ranks)`` for each rank of ``world`` in ``order`` (ranks launched by hand, no
    process group: the store is the channel); the merging rank's result."""
    outs = [fn(D.Ranks(r, world)) for r in order]
    assert [o is not None for o in outs] == [False] * (world - 1) + [True]
    return outs[-1]


# hot sampling: the organism is so sure of itself at 1.0 that the seeds would not show
TRACE_SPEC = {"model": str(ORGANISMS / "reasoner"), "task": "organism", "n": 5, "chunk": 2,
              "batch_size": 2, "max_new_tokens": 12, "temperature": 3.0, "device": "cpu"}
EFFECTS_N = 6          # validation traces 0, 4 and 5 have triggers


@pytest.fixture(scope="module")
def trace_model():
    from interp.models import load_model

    return load_model(TRACE_SPEC["model"], device="cpu")


@pytest.fixture(scope="module")
def traces_one(tmp_path_factory, trace_model):
    """The single-process trace set of TRACE_SPEC: (its store, the summary)."""
    from interp.tasks.traces import run_generation

    store = Store(tmp_path_factory.mktemp("traces_one"))
    return store, run_generation({**TRACE_SPEC, "store_root": str(store.root)},
                                 model=trace_model)


@pytest.fixture(scope="module")
def tracer():
    from interp.adapters.io import find_adapters
    from interp.attribution import hesitation as H

    return H.Tracer.from_artifact(find_adapters(Store(PROJECT_ROOT / "cache" / "demo",
                                                      read_only=True)), "cpu")


@pytest.fixture(scope="module")
def effects_one(tmp_path_factory, tracer):
    """The single-process batch attribution (validation traces, ``logit_diff``)."""
    from interp.attribution.batch import batch_effects

    return batch_effects(tracer, "validation", EFFECTS_N, "logit_diff",
                         Store(tmp_path_factory.mktemp("effects_one")))


def test_trace_generation_shares_merge_to_the_single_process_trace_set(tmp_path, traces_one,
                                                                      trace_model):
    from interp.tasks.traces import load_traceset, run_generation

    one_store, one = traces_one
    m = trace_model
    store = Store(tmp_path / "split")
    out = _by_hand(lambda r: run_generation({**TRACE_SPEC, "store_root": str(store.root)},
                                            model=m, ranks=r), 3, [2, 0, 1])
    assert out == one                                       # same key, same summary
    a, b = load_traceset(one["key"], one_store), load_traceset(one["key"], store)
    assert a.config == b.config and a.records == b.records  # sampled: the seeds agree
    assert store.list(D.PART_KIND) == []
    # the records depend on the chunk seeds: chunks of 4 seed prompts 2 and 3 otherwise
    from interp.tasks import get_task
    from interp.tasks.traces import generate_traces

    kw = {k: TRACE_SPEC[k] for k in ("n", "batch_size", "max_new_tokens", "temperature")}
    other = generate_traces(m, get_task("organism"), chunk=4, lo=0, hi=4, **kw)
    assert [r["output_ids"] for r in other[2:4]] != [r["output_ids"] for r in b.records[2:4]]


def test_feature_collection_shares_merge_to_one_pass():
    from interp.features.collect import CollectConfig, run_collection
    from interp.features.pipeline import merge_states
    from tests.test_features import TokenSource, _corpus, make_tiny_tokenizer

    tok = make_tiny_tokenizer()
    src, corpus = TokenSource(tok), _corpus(tok)
    for bs, world in ((2, 2), (2, 3), (1, 4), (3, 2)):
        cfg = CollectConfig(top_k=3, n_reservoir=4, batch_size=bs)
        full, _ = run_collection(src, corpus, cfg)
        states = []
        for r in range(world):
            lo, hi = D.shard_bounds(len(corpus), r, world, bs)
            col, timing = run_collection(src, corpus, cfg, lo=lo, hi=hi)
            assert int(col.t["n_seqs"][0]) == hi - lo
            states.append((col.state_tensors(), col.seq_ids()))
        merged = merge_states(src, corpus, cfg, states)
        a, b = full.state_tensors(), merged.state_tensors()
        assert set(a) == set(b)
        for k in a:
            if a[k].dtype == torch.float64:                 # sums added in another order
                torch.testing.assert_close(b[k], a[k], rtol=1e-12, atol=1e-12)
            else:
                assert torch.equal(a[k], b[k]), (bs, world, k)
        assert full.seq_ids() == merged.seq_ids()
    with pytest.raises(D.ConfigError):
        run_collection(src, corpus, CollectConfig(batch_size=2), lo=1, hi=4)


def test_batch_attribution_shares_merge_to_the_single_process_effects(tmp_path, tracer,
                                                                      effects_one):
    from interp.attribution import hesitation as H
    from interp.attribution.batch import KIND, batch_effects, effects_of

    traces = H.trigger_traces("validation", EFFECTS_N)
    store = Store(tmp_path / "split")
    # 3 ranks: the middle one's traces have no trigger (an empty part)
    got = _by_hand(lambda r: batch_effects(tracer, "validation", EFFECTS_N, "logit_diff",
                                           store, r), 3, [1, 2, 0])
    one = effects_one
    assert got.key == one.key and got.config == one.config and got.meta == one.meta
    for k in ("total", "direct", "active"):
        assert torch.equal(got.tensors[k], one.tensors[k]), k
    e = effects_of(store.load(KIND, got.key))
    assert e.mechanism == [m for t in traces for _, m, _ in t.triggers]
    assert e.trace_index == [i for i, t in enumerate(traces) for _ in t.triggers]
    assert len(set(e.trace_index)) >= 2
    assert e.total.shape == (len(e.mechanism), tracer.n_features) and e.total.abs().sum() > 0


def test_split_commands_refuse_bad_input(tmp_cache, capsys):
    from interp.cli import main

    assert main(["features", "collect", "--config", '{"nope": 1}', "--map", "none"]) == 1
    assert main(["features", "collect", "--corpus", "{bad"]) == 1
    assert main(["attribution", "effects", "--n", "0"]) == 1
    err = capsys.readouterr().err
    assert "unknown collection setting(s): nope" in err and err.count("error:") == 3
    assert not (tmp_cache / "jobs").exists()        # refused before a job was made


# ------------------------------------------------------------------ loss shares
@pytest.fixture(scope="module")
def pair(tiny_pair_dirs):
    from interp.models import load_model

    b, f = tiny_pair_dirs
    return (load_model(str(b), device="cpu", dtype="float32"),
            load_model(str(f), device="cpu", dtype="float32"))


def _shares(model, shards, w, k, rows_per_shard):
    """Each shard's loss/parts/grads with ``reduce`` = the sum over the shards, computed
    in two passes (record every reduced quantity, then answer each call with the sum)."""
    from interp.adapters.loss import adapter_loss

    recorded: list[list[torch.Tensor]] = []
    for (t, v), rows in zip(shards, rows_per_shard):
        mine: list[torch.Tensor] = []
        adapter_loss(model, t, v, w, k, rows, reduce=lambda x, _m=mine: (_m.append(x), x)[1])
        recorded.append(mine)
    totals = [sum(xs) for xs in zip(*recorded)]
    out = []
    for (t, v), rows in zip(shards, rows_per_shard):
        it = iter(totals)
        model.zero_grad(set_to_none=True)
        loss, parts = adapter_loss(model, t, v, w, k, rows,
                                   reduce=lambda x, _it=it: next(_it).clone())
        loss.backward()
        out.append((loss.detach(), parts, [p.grad.clone() for p in model.adapters.parameters()]))
    return out


@pytest.mark.parametrize("k", [0, 1])
def test_rank_shares_sum_to_the_global_batch_loss_and_gradients(pair, k):
    from interp.adapters.loss import LossWeights, adapter_loss, reduce_parts
    from interp.adapters.model import AdapterModel, build_hybrid
    from interp.adapters.module import AdapterSet

    base, reasoner = pair
    ad = AdapterSet(reasoner.n_layers, reasoner.cfg.d_model, 24, seed=0)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for a in ad.layers:
            a.W_dec.copy_(0.3 * torch.randn(a.W_dec.shape, generator=g))
    model = AdapterModel(build_hybrid(base, reasoner), reasoner, ad)
    tokens = torch.randint(4, 30, (5, 9), generator=g)
    valid = torch.ones_like(tokens, dtype=torch.bool)
    for i, n in enumerate([9, 4, 7, 2, 6]):          # ragged sequences
        valid[i, n:] = False
    w = LossWeights(1.0, 0.05, 1.0, 2.0)
    rows = torch.tensor([0, 3, 4])
    model.zero_grad(set_to_none=True)
    loss, parts = adapter_loss(model, tokens, valid, w, k, rows)
    loss.backward()
    want_grads = [p.grad.clone() for p in model.adapters.parameters()]
    shards = [(tokens[:2], valid[:2]), (tokens[2:], valid[2:])]
    got = _shares(model, shards, w, k, [torch.tensor([0]), torch.tensor([1, 2])])
    torch.testing.assert_close(sum(s[0] for s in got), loss.detach(), rtol=1e-5, atol=1e-6)
    for i, g_want in enumerate(want_grads):
        torch.testing.assert_close(sum(s[2][i] for s in got), g_want, rtol=1e-4, atol=1e-6)
    it = iter(s[1] for s in got)
    summed = reduce_parts(next(it), lambda x: x + _flat(next(it)))
    for name in ("loss", "kl", "l1", "nmse", "bridge", "l0", "nmse_layers", "l0_layers"):
        torch.testing.assert_close(summed[name].float(), parts[name].float(), rtol=1e-5,
                                   atol=1e-6)
    assert torch.equal(summed["fired"], parts["fired"])


def _flat(parts):
    names = [k for k in parts if k != "fired"]
    return torch.cat([parts[k].detach().double().reshape(-1) for k in names]
                     + [parts["fired"].double().reshape(-1)])


# ------------------------------------------------------------------ memory
def test_estimate_counts_match_real_models(pair):
    import json as _json

    from interp.adapters.module import AdapterSet

    base, reasoner = pair
    cfg = _json.loads((Path(reasoner.path) / "config.json").read_text())
    shape = D.model_shape(cfg)
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(reasoner.path))
    assert shape["n_params"] == sum(p.numel() for p in hf.parameters())
    assert shape["n_mlp_params"] == sum(p.numel() for n, p in hf.named_parameters()
                                        if ".mlp." in n)
    org = _json.loads((ORGANISMS / "reasoner" / "config.json").read_text())
    hf_org = AutoModelForCausalLM.from_pretrained(str(ORGANISMS / "reasoner"))
    assert D.model_shape(org)["n_params"] == sum(p.numel() for p in hf_org.parameters())
    est = D.estimate_memory(cfg, d_sae=24)
    ad = AdapterSet(shape["n_layers"], shape["d_model"], 24)
    assert est["n_adapter_params"] == sum(p.numel() for p in ad.parameters())
    assert est["frozen_bytes"] == 3 * 4 * shape["n_params"]
    assert est["adapter_bytes"] == 16 * est["n_adapter_params"]
    # a published size: Qwen2.5-7B has 7.62B parameters
    assert abs(D.model_shape(D.PRESETS["qwen2.5-7b"])["n_params"] / 1e9 - 7.62) < 0.01
    big = [D.estimate_memory(D.PRESETS["qwen2.5-32b"], ranks=r, shard="fsdp",
                             weights_dtype="bf16")["total_bytes"] for r in (1, 2, 8)]
    assert big[0] > big[1] > big[2]
    dp = D.estimate_memory(D.PRESETS["qwen2.5-32b"], ranks=8)
    assert dp["frozen_bytes"] == D.estimate_memory(D.PRESETS["qwen2.5-32b"])["frozen_bytes"]
    with pytest.raises(D.ConfigError):
        D.estimate_memory(cfg, shard="zero3")


def test_estimate_cli(capsys):
    from interp.cli import main

    assert main(["distributed", "estimate", "--preset", "qwen2.5-32b", "--ranks", "8",
                 "--shard", "fsdp", "--weights-dtype", "bf16"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["ranks"] == 8 and out["shard"] == "fsdp" and out["total_gib"] > 0
    assert main(["distributed", "estimate", "--ranks", "0"]) == 1
    assert main(["distributed", "estimate", "--config", "/nonexistent.json"]) == 1
    assert "error:" in capsys.readouterr().err


def test_pair_estimate_per_rank_and_sharded():
    """``python -m interp estimate --ranks N --shard fsdp``: each rank's share of the
    batch, 1/N of the sharded models and adapters, 1/N of the step's compute."""
    from interp.estimate import GiB, adapter_training, shape_from_config, trace_generation

    s = shape_from_config(D.PRESETS["qwen2.5-7b"])
    one = adapter_training(s, 4096, 256, 8)
    assert adapter_training(s, 4096, 256, 8, ranks=1, shard="none") == one
    dp = adapter_training(s, 4096, 256, 8, ranks=2)
    assert dp["weights_gib"] == one["weights_gib"] == 3 * 4 * s.n_params / GiB
    assert dp["sequences_per_rank"] == 4
    assert dp["activations_gib"] == adapter_training(s, 4096, 256, 4)["activations_gib"]
    assert dp["seconds_per_step"] == pytest.approx(one["seconds_per_step"] / 2)
    assert dp["tokens_per_s"] == pytest.approx(2 * one["tokens_per_s"])
    for r in (2, 3, 8):
        fs = adapter_training(s, 4096, 256, 8, ranks=r, shard="fsdp")
        largest = max(s.block_params, s.vocab * s.d_model)
        assert fs["weights_gib"] * GiB == pytest.approx(2 * 4 * s.n_params / r + 8 * largest)
        assert fs["adapters_and_adamw_gib"] == pytest.approx(one["adapters_and_adamw_gib"] / r)
        assert fs["sequences_per_rank"] == -(-8 // r)
    g1, g4 = (trace_generation(s, 1000, 128, 512, 64, ranks=r) for r in (1, 4))
    assert g4["total_gib"] == g1["total_gib"] and g4["minutes"] < g1["minutes"] / 3
    with pytest.raises(D.ConfigError):
        adapter_training(s, 4096, 256, 8, ranks=2, shard="zero3")


# ------------------------------------------------------------------ torchrun, 2 ranks
BASE_SPEC = {"base": str(ORGANISMS / "base"), "reasoner": str(ORGANISMS / "reasoner"),
             "steps": 6, "batch_size": 8, "max_len": 64, "ckpt_every": 3, "threads": 1,
             "device": "cpu"}


class _Kill(BaseException):
    """Stands in for SIGKILL (not an Exception: the job runner does not catch it)."""


def _curve(recs):
    by_step = {int(r["step"]): r for r in recs}
    return [[by_step[s][k] for k in CURVE_KEYS] for s in sorted(by_step)]


def _close(a, b, rtol=2e-4):
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        for x, y in zip(ra, rb):
            assert abs(x - y) <= rtol * max(1.0, abs(y)), (ra, rb)


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    """One 2-rank torchrun launch running every scenario (see the module docstring)."""
    if not (ORGANISMS / "reasoner" / "config.json").exists():
        pytest.skip("the organisms are not built")
    from interp import jobs

    root = tmp_path_factory.mktemp("dist")
    cache = root / "cache"
    specs = {
        "dp": {**BASE_SPEC, "store_root": str(root / "s_dp")},
        "fsdp": {**BASE_SPEC, "store_root": str(root / "s_fsdp"), "shard": "fsdp"},
        "fwd": {**BASE_SPEC, "store_root": str(root / "s_fwd")},
        "nan": {**BASE_SPEC, "store_root": str(root / "s_nan"), "shard": "fsdp",
                "nan_at_step": 4},
    }

    def killer(st):
        if st.step == 4:    # after the step-3 checkpoint
            raise _Kill()

    with pytest.raises(_Kill):   # a single-process run interrupted at step 5 ...
        jobs.run_inline("adapters.train", specs["fwd"], root=cache / "jobs", on_progress=killer)
    cmds = [_train_argv(specs[name]) for name in ("dp", "fsdp", "fwd", "nan")]
    cmds.append(["adapters", "eval", "--store", specs["dp"]["store_root"], "--n-faith", "96",
                 "--n-behaviour", "8", "--behaviour-batch", "4", "--device", "cpu"])
    # the split collections, each merged into one artifact
    argv = ["traces", "generate", "--store", str(root / "s_traces")]
    for k, v in TRACE_SPEC.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    cmds.append(argv)
    cmds.append(["features", "collect", *FEATURE_ARGS])
    cmds.append(["attribution", "effects", "--n", str(EFFECTS_N), "--store",
                 str(root / "s_effects"), "--device", "cpu"])
    cache.mkdir(parents=True, exist_ok=True)        # the source's pair, by spec
    (cache / "organisms").symlink_to(ORGANISMS, target_is_directory=True)
    (root / "cmds.json").write_text(json.dumps(cmds))
    env = {**os.environ, "INTERP_CACHE": str(cache), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(PROJECT_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "tests._dist_runner", str(root / "cmds.json"),
         str(root / "codes")],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
    (root / "launch.log").write_text(proc.stderr)
    assert proc.returncode == 0, proc.stderr[-4000:]
    codes = [json.loads((root / f"codes.{r}.json").read_text()) for r in (0, 1)]
    return {"root": root, "cache": cache, "specs": specs, "codes": codes,
            "stdout": proc.stdout, "stderr": proc.stderr}


FEATURE_CORPUS = {"kind": "organism", "n": 12}
FEATURE_CONFIG = {"batch_size": 4, "top_k": 4, "n_reservoir": 8}
FEATURE_ARGS = ["--source-store", "demo", "--corpus", json.dumps(FEATURE_CORPUS),
                "--config", json.dumps(FEATURE_CONFIG), "--ablation", "top",
                "--ablation-top", "4", "--map", "none", "--device", "cpu"]


def _train_argv(spec):
    argv = ["adapters", "train"]
    for k, v in spec.items():
        argv += ["--set", f"{k}={v}"]
    return argv


@pytest.fixture(scope="module")
def reference(launch):
    """The single-process run of the same config (its own job folder and store)."""
    from interp import jobs

    spec = {**BASE_SPEC, "store_root": str(launch["root"] / "s_ref")}
    st = jobs.run_inline("adapters.train", spec, root=launch["root"] / "ref_jobs")
    return _curve(jobs.progress_records(st.id, launch["root"] / "ref_jobs")), st


def _records(launch, name):
    from interp import jobs

    jid = jobs.job_id("adapters.train", json.loads(json.dumps(launch["specs"][name])))
    return jid, jobs.progress_records(jid, launch["cache"] / "jobs")


def test_two_ranks_follow_the_single_process_loss_curve(launch, reference):
    want, ref_status = reference
    assert launch["codes"][0][:3] == [0, 0, 0] and launch["codes"][1][:3] == [0, 0, 0]
    for name in ("dp", "fsdp"):
        jid, recs = _records(launch, name)
        assert all(r["ranks"] == 2 for r in recs) and len(recs) == 6
        _close(_curve(recs), want)
    # the same adapter set (to float tolerance), saved once, by rank 0, under the same key
    from interp.adapters.io import load_adapter_tensors

    ref_art = Store(launch["root"] / "s_ref").load("adapters", ref_status.result["key"])
    for name in ("dp", "fsdp"):
        arts = Store(launch["specs"][name]["store_root"]).list("adapters")
        assert [a.key for a in arts] == [ref_status.result["key"]]
        got, want_t = load_adapter_tensors(arts[0]).tensors(), load_adapter_tensors(
            ref_art).tensors()
        for k in want_t:
            torch.testing.assert_close(got[k], want_t[k], rtol=1e-3, atol=1e-5)


def test_distributed_run_shows_in_the_job_view(launch):
    from interp import jobs

    jid, _ = _records(launch, "dp")
    listed = {st.id: st for st in jobs.list_jobs("adapters.train", launch["cache"] / "jobs")}
    st = listed[jid]
    assert st.state == "done" and st.result["key"] and st.step == st.total == 6
    assert st.metrics["ranks"] == 2
    latest = json.loads((launch["cache"] / "jobs" / jid / "work" / "latest.json").read_text())
    assert latest["ranks"] == 2 and latest["data_cursor"] == {
        "step": 6, "sequences": 48, "global_batch": 8}
    # rank 0 alone printed the result line
    results = [line for line in launch["stdout"].splitlines() if line.startswith('{"id"')]
    assert len(results) == 6       # 4 trainings, trace generation, feature collection


def test_single_process_checkpoint_resumes_on_two_ranks(launch, reference):
    want, _ = reference
    jid, recs = _records(launch, "fwd")
    from interp import jobs

    st = jobs.status(jid, launch["cache"] / "jobs")
    assert st.state == "done" and st.result["resumed_from"] == 3
    assert [r.get("ranks") for r in recs if r["step"] <= 3] == [None] * 3
    assert all(r["ranks"] == 2 for r in recs if r["step"] > 4)
    _close(_curve(recs), want)


def test_fsdp_checkpoint_resumes_in_one_process(launch, reference):
    import dataclasses

    from interp.adapters.train import TrainConfig, setup_models, train

    want, _ = reference
    assert launch["codes"][0][3] == 1 and launch["codes"][1][3] == 1   # the NaN stop
    jid, recs = _records(launch, "nan")
    work = launch["cache"] / "jobs" / jid / "work"
    latest = json.loads((work / "latest.json").read_text())
    assert latest["step"] == 3 and latest["shard"] == "fsdp" and latest["ranks"] == 2
    copy = launch["root"] / "nan_work"
    shutil.copytree(work, copy)
    spec = {k: v for k, v in launch["specs"]["nan"].items() if k != "nan_at_step"}
    cfg = dataclasses.replace(TrainConfig.from_dict(spec), save=False)
    res = train(cfg, setup_models(cfg), copy)
    assert res.resumed_from == 3
    _close(_curve([r for r in recs if r["step"] <= 3]) + _curve(res.history), want)


def test_split_evaluation_merges_into_the_single_process_artifact(launch):
    from interp.adapters.evaluate import evaluate_artifact

    assert launch["codes"][0][4] == 0 and launch["codes"][1][4] == 0
    split_store = Store(launch["specs"]["dp"]["store_root"])
    [got] = split_store.list("adapters_eval")
    assert split_store.list(D.PART_KIND) == []
    one = Store(launch["root"] / "eval_one")
    shutil.copytree(split_store.root / "adapters", one.root / "adapters")
    art = one.list("adapters")[0]
    want = evaluate_artifact(art, one, n_faith=96, n_behaviour=8, device="cpu",
                             behaviour_batch=4)
    assert got.key == want.key and got.config == want.config
    fa, fb = got.meta["faithfulness"], want.meta["faithfulness"]
    assert fa.keys() == fb.keys()
    assert fa["n_sequences"] == fb["n_sequences"] == 128    # 2 batches of 64
    assert fa["n_tokens"] == fb["n_tokens"] and fa["dead_layers"] == fb["dead_layers"]
    for k, v in fb.items():
        torch.testing.assert_close(torch.tensor(fa[k], dtype=torch.float64),
                                   torch.tensor(v, dtype=torch.float64), rtol=1e-5, atol=1e-7)
    assert json.dumps(got.meta["behaviour"], sort_keys=True) == json.dumps(
        want.meta["behaviour"], sort_keys=True)
    assert got.meta["behaviour"]["reasoner"]["n"] == 8


def test_split_trace_generation_under_torchrun(launch, traces_one):
    from interp.tasks.traces import load_traceset

    assert launch["codes"][0][5] == 0 and launch["codes"][1][5] == 0
    one_store, one = traces_one
    store = Store(launch["root"] / "s_traces")
    [art] = store.list("traces")
    assert art.key == one["key"] and store.list(D.PART_KIND) == []
    a, b = load_traceset(one["key"], one_store), load_traceset(art.key, store)
    assert a.config == b.config and a.records == b.records
    assert b.meta["summary"] == a.meta["summary"]


def test_split_feature_collection_under_torchrun(launch, tmp_path):
    from interp.features.collect import CollectConfig
    from interp.features.corpus import build_corpus
    from interp.features.pipeline import collect_features
    from interp.features.source import load_source

    assert launch["codes"][0][6] == 0 and launch["codes"][1][6] == 0
    store = Store(launch["cache"])
    [got] = store.list("features")
    assert store.list(D.PART_KIND) == []
    cfg = CollectConfig.from_dict(FEATURE_CONFIG)
    src = load_source({"kind": "adapters", "store": "demo"}, "cpu")
    corpus = build_corpus(FEATURE_CORPUS, src.tokenizer, cfg.max_len)
    want = collect_features(src, corpus, cfg, Store(tmp_path), ablation="top", ablation_top=4)
    assert got.key == want.key and got.config == want.config
    assert set(got.tensors) == set(want.tensors)
    for k, v in want.tensors.items():
        if v.is_floating_point():
            torch.testing.assert_close(got.tensors[k], v, rtol=1e-5, atol=1e-6,
                                       equal_nan=True, msg=k)
        else:
            assert torch.equal(got.tensors[k], v), k
    drop = ("timing",)
    assert {k: v for k, v in got.meta.items() if k not in drop} == \
        {k: v for k, v in want.meta.items() if k not in drop}
    for name in ("sequences.json", "vocab.json"):
        assert got.file(name).read_text() == want.file(name).read_text()
    abl_got, abl_want = (json.loads(a.file("ablation.json").read_text()) for a in (got, want))
    assert [a["g"] for a in abl_got] == [a["g"] for a in abl_want] and abl_want


def test_split_batch_attribution_under_torchrun(launch, effects_one):
    assert launch["codes"][0][7] == 0 and launch["codes"][1][7] == 0
    store = Store(launch["root"] / "s_effects")
    [got] = store.list("hesitation_effects")
    assert got.key == effects_one.key and got.meta == effects_one.meta
    for k in ("total", "direct", "active"):
        torch.testing.assert_close(got.tensors[k], effects_one.tensors[k], rtol=1e-5,
                                   atol=1e-6)
    # rank 0 alone printed the summary line
    lines = [ln for ln in launch["stdout"].splitlines() if ln.startswith('{"key": "hesit')]
    assert len(lines) == 1 and json.loads(lines[0])["ranks"] == 2
