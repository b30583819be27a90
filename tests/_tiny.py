"""Tiny random checkpoints for tests that do not need conftest's fixtures."""

from pathlib import Path

import torch

WORDS = ["<pad>", "<bos>", "<eos>"] + [str(i) for i in range(10)] + ["+", "-", "=", ";", "wait",
                                                                       "<think>", "</think>"]


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(WORDS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>")


def save_tiny_qwen(path: Path, seed: int = 0, layers: int = 2, d: int = 32) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=len(WORDS), hidden_size=d, intermediate_size=2 * d,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=128, tie_word_embeddings=False)
    m = Qwen2ForCausalLM(cfg).eval()
    m.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path
