"""``python -m interp bench length-sweep``: a 9-value α sweep as one batched generation
vs 9 sequential generations (same prompts, greedy, same hooks)."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def _model(device: str):
    """The organism reasoner when built, else a tiny random Qwen2 (said in the output)."""
    from ..errors import ModelNotFoundError
    from ..models import load_model

    try:
        return load_model("organism:reasoner", device=device), None
    except ModelNotFoundError:
        from transformers import Qwen2Config, Qwen2ForCausalLM

        tmp = Path(tempfile.mkdtemp(prefix="length-bench-"))
        from ..organisms.task import build_tokenizer

        tok = build_tokenizer()
        torch.manual_seed(0)
        cfg = Qwen2Config(vocab_size=len(tok), hidden_size=128, intermediate_size=512,
                          num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                          max_position_embeddings=256, tie_word_embeddings=False)
        Qwen2ForCausalLM(cfg).save_pretrained(tmp)
        tok.save_pretrained(tmp)
        return load_model(str(tmp), device=device), "random tiny Qwen2 (organism not built)"


def _direction(model) -> torch.Tensor:
    from .report import demo_store

    try:
        from .pipeline import latest_index, load_directions

        st = demo_store()
        idx = latest_index(st)
        if idx is not None and idx.meta.get("model") == model.spec:
            return load_directions(st, idx.meta["keys"]["direction"]).dirs["resid_mid"]
    except Exception:  # noqa: BLE001 - any problem: fall back to a random direction
        pass
    g = torch.Generator().manual_seed(0)
    return torch.randn(model.cfg.n_layers, model.cfg.d_model, generator=g)


def bench_length_sweep(args) -> dict[str, Any]:
    from .data import ThinkMarkers
    from .steer import alpha_grid, alpha_sweep

    quick = bool(getattr(args, "quick", False))
    model, note = _model(getattr(args, "device", "auto"))
    from .data import ensure_marker_tokenizer

    ensure_marker_tokenizer(model, ThinkMarkers.organism())
    n_prompts, max_new = (8, 24) if quick else (32, 64)
    from .data import organism_eval_set

    _, prompts, _ = organism_eval_set(n_prompts, seed=123)
    dirs = _direction(model).to(model.device)
    alphas = alpha_grid(model.cfg.n_layers, 9)
    kw = dict(site="resid_mid", markers=ThinkMarkers.organism(), max_new_tokens=max_new,
              batch_size=9 * n_prompts)
    alpha_sweep(model, prompts[:2], dirs, alphas[:2], **{**kw, "max_new_tokens": 4})  # warm-up

    def sync():
        if model.device.type == "cuda":
            torch.cuda.synchronize()

    sync()
    t = time.perf_counter()
    b = alpha_sweep(model, prompts, dirs, alphas, batched=True, **kw)
    sync()
    tb = time.perf_counter() - t
    t = time.perf_counter()
    s = alpha_sweep(model, prompts, dirs, alphas, batched=False, **kw)
    sync()
    ts = time.perf_counter() - t
    same = [r["output_ids"] for r in b["records"]] == [r["output_ids"] for r in s["records"]]
    print(f"[length-sweep] batched {tb:.2f}s, sequential {ts:.2f}s", file=sys.stderr)
    return {"batched_seconds": tb, "sequential_seconds": ts, "speedup": ts / tb,
            "n_alpha": len(alphas), "n_prompts": n_prompts, "max_new_tokens": max_new,
            "identical_outputs": same, "model": model.spec if note is None else note,
            "device": str(model.device), "dtype": str(model.dtype).removeprefix("torch.")}
