"""Every family the hook wrapper claims: tiny random checkpoints of Llama, Qwen2, Qwen3,
Gemma, Gemma 2 and Gemma 3 (transformers 5.24 classes) through the loader, the pair check
and one forward compared with transformers (fp32, max |Δlogit| <= 1e-4); a Gemma 3 GGUF
file through the converter; a family that cannot be wrapped says why."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from interp.architectures import check_wrappable, gemma_config_dict, wrappable_families
from interp.errors import ModelLoadError
from interp.models import load_model, validate_pair
from tests.conftest import make_tiny_checkpoint, make_tiny_tokenizer, perturbed_copy

ARCHS = ("llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3")


@pytest.fixture(scope="module")
def arch_dirs(tmp_path_factory):
    # the folder names hold "llama" / "gemma", which TransformerLens would read as a hub
    # name if the path reached it unchanged
    root = tmp_path_factory.mktemp("archs")
    return {a: make_tiny_checkpoint(root / f"tiny-{a}" / "ckpt", a, seed=3) for a in ARCHS}


def _hf(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


def _ids(n: int = 14) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    return torch.randint(6, len(make_tiny_tokenizer()), (2, n), generator=g)


@pytest.mark.parametrize("arch", ARCHS)
def test_family_loads_and_matches_transformers(arch_dirs, arch):
    path = arch_dirs[arch]
    m = load_model(str(path), device="cpu", dtype="float32")
    hf = _hf(path)
    assert m.describe()["architecture"] == type(hf).__name__
    ids = _ids()   # 14 tokens: longer than the Gemmas' sliding window of 4
    with torch.no_grad():
        ref = hf(ids).logits
        diff = (m.hooked(ids) - ref).abs().max().item()
    assert ref.abs().max().item() > 0.1   # logits large enough for the bound to mean something
    assert diff <= 1e-4, f"{arch}: max |Δlogit| {diff}"


@pytest.mark.parametrize("arch", ("qwen3", "gemma2", "gemma3"))
def test_family_pair_check(tmp_path, arch_dirs, arch):
    fine = perturbed_copy(arch_dirs[arch], tmp_path / "fine", seed=4, scale=0.01)
    validate_pair(str(arch_dirs[arch]), str(fine))
    other = make_tiny_checkpoint(tmp_path / "other", arch, seed=3, intermediate_size=48)
    with pytest.raises(Exception, match="intermediate_size"):
        validate_pair(str(arch_dirs[arch]), str(other))


def test_gemma2_settings_come_from_the_config(arch_dirs):
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(str(arch_dirs["gemma2"]))
    d = gemma_config_dict(c, "Gemma2ForCausalLM")
    assert d["window_size"] == 4 and d["attn_types"][:2] == ["local", "global"]
    assert d["attn_scale"] == pytest.approx(12 ** 0.5)
    assert d["attn_scores_soft_cap"] == 5.0 and d["output_logits_soft_cap"] == 3.0


def _write_gemma3_gguf(src: Path, out: Path) -> None:
    """A float32 Gemma 3 GGUF laid out as llama.cpp writes it (norm gains stored as 1 + w,
    no row permutation); ``head_dim``, sliding window and RoPE base in the metadata."""
    import gguf

    hf = _hf(src)
    c = hf.config
    tok = make_tiny_tokenizer()
    w = gguf.GGUFWriter(str(out), "gemma3")
    w.add_name("tiny")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_rope_freq_base(float(c.rope_parameters["full_attention"]["rope_theta"]))
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_sliding_window(c.sliding_window)
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
    names = {"model.embed_tokens.weight": "token_embd.weight",
             "model.norm.weight": "output_norm.weight"}
    parts = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
             "input_layernorm": "attn_norm", "post_attention_layernorm": "post_attention_norm",
             "pre_feedforward_layernorm": "ffn_norm",
             "post_feedforward_layernorm": "post_ffw_norm"}
    for layer in range(c.num_hidden_layers):
        for a, b in parts.items():
            names[f"model.layers.{layer}.{a}.weight"] = f"blk.{layer}.{b}.weight"
    for k, v in hf.state_dict().items():
        if k == "lm_head.weight":   # tied: the GGUF holds no output matrix
            continue
        x = v.numpy().astype(np.float32)
        if "norm" in k:
            x = x + 1.0
        w.add_tensor(names[k], np.ascontiguousarray(x))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gemma3_gguf_round_trip(tmp_cache, tmp_path):
    """A Gemma 3 GGUF converts once and wraps to the logits of the checkpoint it was
    written from. GGUF metadata carries neither the attention-layer pattern nor the
    query scale, so the source uses Gemma 3's defaults for both (5 local : 1 global
    layers over 6 layers; query_pre_attn_scalar 256), as the real checkpoints do."""
    src = make_tiny_checkpoint(tmp_path / "gemma3-src", "gemma3", seed=6, num_hidden_layers=6,
                               layer_types=None, query_pre_attn_scalar=256,
                               tie_word_embeddings=True)
    gguf_path = tmp_path / "tiny-gemma3.gguf"
    _write_gemma3_gguf(src, gguf_path)
    m = load_model(str(gguf_path), device="cpu")
    cfg = json.loads((m.path / "config.json").read_text())
    assert cfg["architectures"] == ["Gemma3ForCausalLM"]
    assert m.cfg.attn_types == ["local"] * 5 + ["global"]
    ids = _ids()
    with torch.no_grad():
        diff = (m.hooked(ids) - _hf(src)(ids).logits).abs().max().item()
    assert diff <= 1e-4


def test_unwrappable_family_says_why():
    with pytest.raises(ModelLoadError, match="multimodal Gemma 3"):
        check_wrappable("Gemma3ForConditionalGeneration")
    with pytest.raises(ModelLoadError, match="no converter for MambaForCausalLM.*supported:"):
        check_wrappable("MambaForCausalLM")
    assert {"Gemma2ForCausalLM", "Gemma3ForCausalLM", "Qwen3ForCausalLM",
            "LlamaForCausalLM"} <= set(wrappable_families())


def test_unwrappable_checkpoint_refused_on_load(tmp_path, arch_dirs):
    import shutil

    d = tmp_path / "olmo"
    shutil.copytree(arch_dirs["llama"], d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["OlmoForCausalLM"]
    cfg["model_type"] = "olmo"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="OLMo 1 is wrapped by TransformerLens only"):
        load_model(str(d), device="cpu")
