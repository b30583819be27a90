"""interp.models: loading (local dir, registered name, GGUF), hook wrapper, pairs, errors.

The wrapper is checked against transformers loaded independently (``from_pretrained`` on
the same folder), never against itself.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from interp.errors import ModelLoadError, ModelNotFoundError, PairMismatchError
from interp.models import (
    available_models,
    load_model,
    load_pair,
    pick_device,
    pick_dtype,
    read_registry,
    register_model,
    resolve,
    validate_pair,
)
from interp.store import PROJECT_ROOT
from tests.conftest import TINY_VOCAB, make_tiny_checkpoint, make_tiny_tokenizer

ARCH_DIRS = {"qwen2": "tiny_qwen_dir", "llama": "tiny_llama_dir"}
EXPECTED_HOOKS = ["hook_embed", "blocks.0.hook_resid_pre", "blocks.1.hook_resid_post",
                  "blocks.0.ln1.hook_normalized", "blocks.1.ln2.hook_normalized",
                  "blocks.0.attn.hook_q", "blocks.0.attn.hook_z", "blocks.1.attn.hook_pattern",
                  "blocks.0.hook_attn_out", "blocks.0.mlp.hook_post", "blocks.1.hook_mlp_out",
                  "ln_final.hook_normalized"]


def _hf(path: Path):
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def _ids(batch: int = 2, pos: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, len(TINY_VOCAB), (batch, pos), generator=g)


@pytest.fixture(scope="module")
def loaded(request):
    """Both tiny architectures loaded once through the normal loader (CPU, fp32)."""
    out = {}
    for arch, fixture in ARCH_DIRS.items():
        path = request.getfixturevalue(fixture)
        out[arch] = (path, load_model(str(path), device="cpu"))
    return out


# --------------------------------------------------------------------------- loading
@pytest.mark.parametrize("arch", list(ARCH_DIRS))
def test_load_local_dir(loaded, arch):
    path, m = loaded[arch]
    assert m.source == "local"
    assert m.device == torch.device("cpu") and m.dtype == torch.float32
    d = m.describe()
    assert d["architecture"] == {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}[arch]
    assert (d["n_layers"], d["d_model"], d["n_heads"], d["d_mlp"]) == (2, 32, 4, 64)
    assert d["d_vocab"] == len(TINY_VOCAB)
    # weight hash: independent SHA-256 over file name + bytes of the one weight file
    h = hashlib.sha256()
    h.update(b"model.safetensors")
    h.update((path / "model.safetensors").read_bytes())
    assert d["weight_hash"] == h.hexdigest()
    assert m.tokenizer.pad_token == "<pad>"
    assert all(not p.requires_grad for p in m.hooked.parameters())


@pytest.mark.parametrize("arch", list(ARCH_DIRS))
def test_wrapper_logits_match_transformers(loaded, arch):
    path, m = loaded[arch]
    hf = _hf(path)
    ids = _ids()
    with torch.no_grad():
        ours = m.hooked(ids)
        ref = hf(ids).logits
    assert ours.shape == ref.shape == (2, 12, len(TINY_VOCAB))
    assert (ours - ref).abs().max().item() < 1e-4


@pytest.mark.parametrize("arch", list(ARCH_DIRS))
def test_weights_are_unprocessed(loaded, arch):
    """No LayerNorm folding / centring: weights equal the checkpoint's, in its basis."""
    path, m = loaded[arch]
    hf = _hf(path)
    layer = hf.model.layers[1]
    blk = m.hooked.blocks[1]
    torch.testing.assert_close(m.hooked.W_E, hf.model.embed_tokens.weight, rtol=0, atol=0)
    torch.testing.assert_close(blk.ln1.w, layer.input_layernorm.weight, rtol=0, atol=0)
    torch.testing.assert_close(blk.ln2.w, layer.post_attention_layernorm.weight, rtol=0, atol=0)
    # W_U is [d_model, d_vocab]; lm_head.weight is [d_vocab, d_model]
    torch.testing.assert_close(m.hooked.W_U, hf.lm_head.weight.T, rtol=0, atol=0)
    # W_in of the gated MLP is up_proj^T
    torch.testing.assert_close(blk.mlp.W_in, layer.mlp.up_proj.weight.T, rtol=0, atol=0)
    # RMSNorm gains were randomised in the fixture, so folding would have changed them
    assert not torch.allclose(blk.ln1.w, torch.ones_like(blk.ln1.w))


def test_same_hook_names_across_architectures(loaded):
    names = {}
    for arch, (_, m) in loaded.items():
        _, cache = m.hooked.run_with_cache(_ids(1, 5))
        names[arch] = set(cache.keys())
    assert names["qwen2"] == names["llama"]
    missing = [h for h in EXPECTED_HOOKS if h not in names["qwen2"]]
    assert not missing, missing


def test_resid_hook_matches_hf_hidden_states(loaded):
    """blocks.{l}.hook_resid_pre is HF's hidden_states[l] (same convention)."""
    path, m = loaded["qwen2"]
    hf = _hf(path)
    ids = _ids(1, 7)
    with torch.no_grad():
        _, cache = m.hooked.run_with_cache(ids)
        hs = hf(ids, output_hidden_states=True).hidden_states
    for layer in range(2):
        diff = (cache[f"blocks.{layer}.hook_resid_pre"] - hs[layer]).abs().max().item()
        assert diff < 1e-5


def test_chat_template_survives_loading(loaded):
    _, m = loaded["qwen2"]
    text = m.tokenizer.apply_chat_template([{"role": "user", "content": "1 + 2 ="}],
                                           tokenize=False, add_generation_prompt=True)
    assert text == "<|user|> 1 + 2 = <eos> <|assistant|>"


def test_bf16_override_on_cpu(tiny_qwen_dir):
    m = load_model(str(tiny_qwen_dir), device="cpu", dtype="bfloat16")
    assert m.dtype == torch.bfloat16
    assert m.hooked.W_E.dtype == torch.bfloat16
    ref = _hf(tiny_qwen_dir)
    ids = _ids(1, 6)
    with torch.no_grad():
        diff = (m.hooked(ids).float() - ref(ids).logits).abs().max().item()
    assert diff < 0.1  # bf16 rounding only, no structural mismatch


def test_registered_name(tmp_cache, tiny_qwen_dir):
    inside = tmp_cache / "models" / "tiny"
    shutil.copytree(tiny_qwen_dir, inside)
    register_model("tiny-in-cache", inside, note="x")
    register_model("tiny-outside", tiny_qwen_dir)
    reg = read_registry()
    assert reg["tiny-in-cache"]["path"] == "models/tiny"  # relative: the cache can move
    assert Path(reg["tiny-outside"]["path"]).is_absolute()
    assert {"tiny-in-cache", "tiny-outside"} <= set(available_models())
    r = resolve("tiny-in-cache")
    assert r.source == "registry" and r.path == inside
    m = load_model("tiny-in-cache", device="cpu")
    assert m.spec == "tiny-in-cache" and m.n_layers == 2
    with pytest.raises(ModelLoadError):
        register_model("bad name/", inside)


def test_hub_name_resolves_without_download():
    r = resolve("Qwen/Qwen2.5-Math-1.5B")
    assert r.source == "hub"


# --------------------------------------------------------------------------- GGUF
def _write_tiny_gguf(src: Path, out: Path) -> None:
    """Write a float32 llama GGUF the way llama.cpp lays it out (q/k rows permuted)."""
    import gguf

    hf = _hf(src)
    c = hf.config
    tok = make_tiny_tokenizer()
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_name("tiny")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    vocab = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(vocab)
    w.add_token_types([gguf.TokenType.CONTROL if t.startswith("<") else gguf.TokenType.NORMAL
                       for t in vocab])
    w.add_token_merges([])
    w.add_token_scores([0.0] * len(vocab))
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)

    def permute(x: np.ndarray, n_head: int) -> np.ndarray:  # llama.cpp's rope row order
        return (x.reshape(n_head, 2, x.shape[0] // n_head // 2, *x.shape[1:])
                .swapaxes(1, 2).reshape(x.shape))

    names = {"model.embed_tokens.weight": "token_embd.weight",
             "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
    hf_to_gguf = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                  "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                  "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                  "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
                  "post_attention_layernorm": "ffn_norm"}
    for layer in range(c.num_hidden_layers):
        for a, b in hf_to_gguf.items():
            names[f"model.layers.{layer}.{a}.weight"] = f"blk.{layer}.{b}.weight"
    for k, v in hf.state_dict().items():
        x = v.numpy().astype(np.float32)
        if k.endswith("q_proj.weight"):
            x = permute(x, c.num_attention_heads)
        elif k.endswith("k_proj.weight"):
            x = permute(x, c.num_key_value_heads)
        w.add_tensor(names[k], np.ascontiguousarray(x))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_round_trip(tmp_cache, tmp_path, tiny_llama_dir):
    """A GGUF written from a checkpoint loads (converted once) to the same logits."""
    gguf_path = tmp_path / "tiny-model.gguf"
    _write_tiny_gguf(tiny_llama_dir, gguf_path)
    m = load_model(str(gguf_path), device="cpu")
    assert m.source == "gguf"
    assert m.path == tmp_cache / "models" / "tiny-model"
    assert (m.path / "config.json").exists()
    cfg = json.loads((m.path / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in cfg
    ids = _ids()
    with torch.no_grad():
        diff = (m.hooked(ids) - _hf(tiny_llama_dir)(ids).logits).abs().max().item()
    assert diff < 1e-4
    # converted once: a second load reuses the folder
    mtime = (m.path / "model.safetensors").stat().st_mtime_ns
    load_model(str(gguf_path), device="cpu")
    assert (m.path / "model.safetensors").stat().st_mtime_ns == mtime


# --------------------------------------------------------------------------- pairs
def test_valid_pair(tiny_pair_dirs):
    base, fine = tiny_pair_dirs
    assert validate_pair(str(base), str(fine)) == (base, fine)
    pair = load_pair(str(base), str(fine), device="cpu")
    a, b = pair.describe()["base"], pair.describe()["fine"]
    assert a["weight_hash"] != b["weight_hash"]
    assert {k: v for k, v in a.items() if k not in ("id", "weight_hash")} == \
        {k: v for k, v in b.items() if k not in ("id", "weight_hash")}


def test_pair_different_d_model(tmp_path, tiny_qwen_dir):
    wide = make_tiny_checkpoint(tmp_path / "wide", "qwen2", seed=5, hidden_size=48)
    with pytest.raises(PairMismatchError) as ei:
        validate_pair(str(tiny_qwen_dir), str(wide))
    assert ei.value.differences == ["config hidden_size: 32 vs 48"]
    assert "hidden_size: 32 vs 48" in str(ei.value)


def test_pair_different_vocab(tmp_path, tiny_qwen_dir):
    tok = make_tiny_tokenizer(TINY_VOCAB + ["extra1", "extra2"])
    other = make_tiny_checkpoint(tmp_path / "vocab", "qwen2", seed=6, tokenizer=tok)
    with pytest.raises(PairMismatchError) as ei:
        validate_pair(str(tiny_qwen_dir), str(other))
    diffs = ei.value.differences
    n = len(TINY_VOCAB)
    assert f"config vocab_size: {n} vs {n + 2}" in diffs
    tok_diff = [d for d in diffs if d.startswith("tokenizer vocabularies differ")]
    assert len(tok_diff) == 1
    assert f"{n} vs {n + 2} tokens" in tok_diff[0]
    assert "['extra1', 'extra2']" in tok_diff[0]


def test_pair_different_architecture(tiny_qwen_dir, tiny_llama_dir):
    with pytest.raises(PairMismatchError) as ei:
        validate_pair(str(tiny_qwen_dir), str(tiny_llama_dir))
    assert "config architectures: ['Qwen2ForCausalLM'] vs ['LlamaForCausalLM']" in \
        ei.value.differences


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("spec", ["", "   ", None])
def test_empty_spec(spec):
    with pytest.raises(ModelNotFoundError, match="no model given"):
        load_model(spec)


def test_unknown_name(tmp_cache):
    with pytest.raises(ModelNotFoundError, match="unknown model 'no-such-model'"):
        load_model("no-such-model")
    with pytest.raises(ModelNotFoundError, match="unknown organism"):
        resolve("organism:nope")


def test_organism_not_built(tmp_cache):
    with pytest.raises(ModelNotFoundError, match="not built"):
        resolve("organism:base")


def test_missing_dir(tmp_path):
    with pytest.raises(ModelNotFoundError):
        load_model(str(tmp_path / "does-not-exist"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="without a config.json"):
        load_model(str(tmp_path / "empty"))
    with pytest.raises(ModelNotFoundError, match="GGUF file not found"):
        load_model(str(tmp_path / "missing.gguf"))


def test_registered_model_with_missing_folder(tmp_cache, tmp_path, tiny_qwen_dir):
    gone = tmp_path / "gone"
    shutil.copytree(tiny_qwen_dir, gone)
    register_model("gone", gone)
    shutil.rmtree(gone)
    with pytest.raises(ModelNotFoundError, match="missing folder"):
        load_model("gone")


def test_broken_gguf(tmp_cache, tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ModelLoadError, match="could not read GGUF file x.gguf"):
        load_model(str(bad))
    assert not (tmp_cache / "models" / "x").exists()


def test_broken_weights(tmp_path, tiny_qwen_dir):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_qwen_dir, broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ModelLoadError):
        load_model(str(broken), device="cpu")


# --------------------------------------------------------------------------- device/dtype
def test_pick_device(monkeypatch):
    assert pick_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(ModelLoadError, match="CUDA"):
        pick_device("cuda")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("cuda")  # cuda > mps > cpu
    assert pick_device("cpu") == torch.device("cpu")   # an override wins


def test_pick_dtype():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert pick_dtype(cuda) == torch.bfloat16
    assert pick_dtype(cpu) == torch.float32
    assert pick_dtype(torch.device("mps")) == torch.float32
    assert pick_dtype(cuda, "float32") == torch.float32
    assert pick_dtype(cpu, "bfloat16") == torch.bfloat16
    assert pick_dtype(cpu, "torch.float16") == torch.float16
    assert pick_dtype(cpu, torch.float64) == torch.float64
    for bad in ("bogus", "Tensor"):
        with pytest.raises(ModelLoadError):
            pick_dtype(cpu, bad)


# --------------------------------------------------------------------------- SmolLM2
SMOLLM2_DIR = PROJECT_ROOT / "cache" / "models" / "smollm2-135m-instruct"


@pytest.mark.slow
@pytest.mark.skipif(not (SMOLLM2_DIR / "config.json").exists(),
                    reason="run `python -m interp models fetch-smollm2` first")
def test_smollm2_wrapper_matches_transformers():
    m = load_model(str(SMOLLM2_DIR), device="cpu", dtype="float32")
    hf = _hf(SMOLLM2_DIR)
    text = m.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 17 + 25? Think step by step."}],
        tokenize=False, add_generation_prompt=True)
    ids = m.tokenizer(text, return_tensors="pt").input_ids
    assert ids.shape[1] > 20
    with torch.no_grad():
        diff = (m.hooked(ids) - hf(ids).logits).abs().max().item()
    assert diff < 1e-4, diff


def test_custom_word_level_tokenizer_keeps_its_vocabulary(tiny_qwen_dir, tiny_tokenizer):
    """A plain tokenizer.json beside a Qwen2 config must not be swapped for Qwen2's own
    tokenizer class (which silently drops words such as <think> and wait)."""
    from interp.models import load_tokenizer

    tok = load_tokenizer(tiny_qwen_dir)
    text = "<think> 1 + 2 = 3 wait </think>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tok.convert_tokens_to_ids("<think>") in ids and tok.convert_tokens_to_ids("wait") in ids
    assert tok.decode(ids).split() == text.split()


def test_hooked_model_keeps_the_loaded_tokenizer(tiny_qwen_dir):
    """TransformerLens re-loads a tokenizer by name; the wrapper must keep ours, or a
    word-level vocabulary may lose added words such as <think> (raw HookedTransformer
    users, e.g. the hybrid, read ``hooked.tokenizer``)."""
    from interp.hybrid import build_hybrid

    m = load_model(str(tiny_qwen_dir), device="cpu")
    text = "1 2 + 3 = <think> 4 wait </think> 5"
    want = m.tokenizer(text)["input_ids"]
    assert m.hooked.tokenizer(text)["input_ids"] == want
    assert build_hybrid(m, m).tokenizer(text)["input_ids"] == want
