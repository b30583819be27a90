"""Shared pytest fixtures: tiny real checkpoints, seeded RNGs, a private cache root.

No test downloads anything. Models are built from a small config with random weights,
saved with ``save_pretrained`` into a session temp dir, and then loaded through the
project's normal loader (``interp.models.load_model(str(dir))``), exactly like a user's
local checkpoint. Treat the session-scoped folders as **read-only**: copy them
(``shutil.copytree``) before editing files in them.

Fixtures
--------
``tiny_tokenizer`` (session)
    A ``PreTrainedTokenizerFast`` over a word-level vocabulary (``TINY_VOCAB``: special
    tokens, digits 0-9, ``+ - = <think> </think> wait`` and a few words), split on
    whitespace. ``bos_token="<bos>"``, ``eos_token="<eos>"``, ``pad_token="<pad>"``,
    ``unk_token="<unk>"``; no automatic BOS. A chat template renders
    ``<|user|> {content} <eos> `` per message and ``<|assistant|>`` as the generation
    prompt, so ``apply_chat_template`` works.
``tiny_qwen_dir`` (session) -> Path
    ``Qwen2ForCausalLM``: 2 layers, d_model 32, 4 heads (2 KV heads), d_mlp 64,
    128 positions, vocab = the tiny tokenizer, seed 0. Folder has config.json,
    model.safetensors and the tokenizer files.
``tiny_llama_dir`` (session) -> Path
    ``LlamaForCausalLM`` with the same sizes and tokenizer, seed 1.
``tiny_pair_dirs`` (session) -> tuple[Path, Path]
    ``(base_dir, fine_dir)``: two Qwen2 checkpoints with the identical config and
    tokenizer but different weights (fine = base + small noise), i.e. a valid pair.
``tmp_cache`` (function) -> Path
    An empty temp folder that becomes the artifact-store / model-registry root for the
    test: ``interp.store.DEFAULT_ROOT`` is monkeypatched and ``INTERP_CACHE`` is set (for
    subprocesses). Use it in any test that saves artifacts or registers models, so the
    project's ``cache/`` is never touched. The committed organisms are *not* visible
    under it; symlink ``PROJECT_ROOT/cache/organisms`` in yourself if a test needs them.
``_seed_everything`` (autouse)
    Seeds ``random``, ``numpy`` and ``torch`` with 0 before every test.

Helpers (importable as ``from tests.conftest import ...``): ``TINY_VOCAB``,
``make_tiny_tokenizer()``, ``make_tiny_checkpoint(out_dir, arch, seed, **overrides)`` (arch:
qwen2, llama, qwen3, gemma, gemma2, gemma3), ``make_think_tokenizer()`` (a byte-level BPE
with a chat template that opens ``<think>``),
``perturbed_copy(src, dst, seed, scale=0.05)`` (a stand-in fine-tune: same config, noisy weights).

Markers (pyproject.toml): ``slow`` (deselected by default; ``pytest -m slow`` runs
them) and ``browser`` (needs Chromium).
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>", "<|user|>", "<|assistant|>"]
TINY_VOCAB: list[str] = SPECIALS + [str(d) for d in range(10)] + [
    "+", "-", "=", "<think>", "</think>", "wait", "answer", "is", "the", "so",
    "carry", "check", "hello", "world", "a", "b", "c", "yes", "no", "ok",
]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <eos> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

TINY_SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128)


def make_tiny_tokenizer(vocab: list[str] | None = None):
    """A word-level fast tokenizer over ``vocab`` (default ``TINY_VOCAB``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = list(vocab or TINY_VOCAB)
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        unk_token="<unk>", additional_special_tokens=["<|user|>", "<|assistant|>"])
    tok.chat_template = CHAT_TEMPLATE
    return tok


# per-architecture config defaults of the tiny checkpoints: Qwen3 and the Gemmas get an
# explicit head size; the Gemmas a sliding window shorter than the test prompts, a mix of
# local and global layers, a query scale unlike sqrt(head_dim), soft caps (Gemma 2) and
# larger weights (initializer_range) so that a wrong setting in the hook wrapper moves the
# logits far beyond the 1e-4 comparison
ARCH_DEFAULTS: dict[str, dict] = {
    "qwen2": {}, "llama": {},
    "qwen3": dict(head_dim=8),
    "gemma": dict(head_dim=8, initializer_range=0.3),
    "gemma2": dict(head_dim=8, initializer_range=0.3, sliding_window=4,
                   query_pre_attn_scalar=12, attn_logit_softcapping=5.0,
                   final_logit_softcapping=3.0),
    "gemma3": dict(head_dim=8, initializer_range=0.3, sliding_window=4,
                   layer_types=["sliding_attention", "full_attention"],
                   query_pre_attn_scalar=12),
}


def _arch_classes(arch: str):
    import transformers as T

    return {"qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM),
            "llama": (T.LlamaConfig, T.LlamaForCausalLM),
            "qwen3": (T.Qwen3Config, T.Qwen3ForCausalLM),
            "gemma": (T.GemmaConfig, T.GemmaForCausalLM),
            "gemma2": (T.Gemma2Config, T.Gemma2ForCausalLM),
            "gemma3": (T.Gemma3TextConfig, T.Gemma3ForCausalLM)}[arch]


THINK_SPECIALS = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<think>", "</think>"]
THINK_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|><think>\n{% endif %}"
)
THINK_CORPUS = [
    "Let me add the numbers. 12 plus 30 is 42. Wait, I should check: 12 + 30 = 42.",
    "Hmm, wait. That is not right. Wait, let me redo it: 7 times 6 is 42.",
    "So the answer is 42. Wait, wait. The answer is \\boxed{42}.",
    "First compute 3 + 4 = 7. Then 7 * 2 = 14. Wait, check again. Yes, 14.",
    "The sum of 5 and 9 is 14. Okay. So the final answer is 14.",
    "Compute 15 - 6. That is 9. Hmm, wait, 15 - 6 = 9. Yes.",
    "Step one.\n\nStep two. Wait, check.\n\nSo 8.",
]


def make_think_tokenizer():
    """A byte-level BPE tokenizer (about 300 entries) trained on a fixed text in which
    ``Wait``, `` wait`` and `` Wait`` are frequent enough to become entries of their own,
    with R1-style think markers as special tokens and a chat template that opens the
    thinking in the prompt (``<|assistant|><think>\n``, as DeepSeek-R1-Distill does).
    ``bos_token="<s>"``, ``eos_token="</s>"``, ``pad_token="<pad>"``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=THINK_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tk.train_from_iterator(THINK_CORPUS * 20, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        additional_special_tokens=["<|user|>", "<|assistant|>", "<think>", "</think>"])
    tok.chat_template = THINK_TEMPLATE
    return tok


def make_tiny_checkpoint(out_dir: str | os.PathLike, arch: str = "qwen2", seed: int = 0,
                         tokenizer=None, **overrides) -> Path:
    """Build a random causal LM of ``arch`` (``qwen2``, ``llama``, ``qwen3``, ``gemma``,
    ``gemma2``, ``gemma3``: transformers 5.24 classes) and ``save_pretrained`` it.

    ``overrides`` replace entries of the config (e.g. ``hidden_size=48``); defaults are
    :data:`TINY_SIZES` plus :data:`ARCH_DEFAULTS` of the architecture.
    """
    tok = tokenizer if tokenizer is not None else make_tiny_tokenizer()
    cls_cfg, cls_model = _arch_classes(arch)
    kw = dict(TINY_SIZES, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
              tie_word_embeddings=False, rms_norm_eps=1e-6)
    kw.update(ARCH_DEFAULTS[arch])
    kw.update(overrides)
    cfg = cls_cfg(**kw)
    torch.manual_seed(seed)
    model = cls_model(cfg).eval()
    # Random RMSNorm gains so a wrapper that drops or folds them is caught.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    out = Path(out_dir)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_qwen_dir(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_qwen") / "ckpt", "qwen2", 0)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_llama") / "ckpt", "llama", 1)


@pytest.fixture(scope="session")
def tiny_pair_dirs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny_pair")
    base = make_tiny_checkpoint(root / "base", "qwen2", seed=10)
    return base, perturbed_copy(base, root / "fine", seed=11)


def perturbed_copy(src: Path, dst: Path, seed: int, scale: float = 0.05) -> Path:
    """Copy a checkpoint folder and add ``scale`` x N(0, 1) noise to every parameter
    (a stand-in fine-tune of ``src``: same config and tokenizer, other weights)."""
    from transformers import AutoModelForCausalLM

    shutil.copytree(src, dst)
    model = AutoModelForCausalLM.from_pretrained(str(dst), dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    model.save_pretrained(dst)
    return dst


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch) -> Path:
    import interp.store

    root = tmp_path / "cache"
    root.mkdir()
    monkeypatch.setattr(interp.store, "DEFAULT_ROOT", root)
    monkeypatch.setenv("INTERP_CACHE", str(root))
    return root


@pytest.fixture
def _navigation_mode(monkeypatch):
    """AppTest resets Streamlit's "a pages/ folder means v1 multipage" flag before every
    run, so ``switch_page`` would run a page file without app.py (no sidebar). A real
    server clears the flag once per process (pages/common.py); do the same here. Page
    tests use it (``pytestmark = pytest.mark.usefixtures("_navigation_mode")``)."""
    import streamlit.testing.v1.app_test as app_test
    from streamlit.runtime.pages_manager import PagesManager

    class V2PagesManager(PagesManager):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            PagesManager.uses_pages_directory = False

    monkeypatch.setattr(app_test, "PagesManager", V2PagesManager)
