"""``python -m interp bench adapters-step``: training step time vs the unavoidable work.

``bound_seconds`` = one reference forward without grad + one adapter-model forward and
backward (the KL to fixed reference log-probs), measured separately in the same process
on the same batch. ``step_seconds`` = a full training step with the default loss
(reference pass, adapter pass, L1, NMSE, bridged term, backward, clipping, AdamW).
The cutoff ``k`` changes the bridged work, so every timed repetition runs each
``k = 0..L`` once: the reported step time is the expectation under the uniform draw.
Timings are interleaved (step, reference, adapter pass in turn) and medians taken, which
keeps a shared machine's load drift out of the ratio. Also reported: the ratio with the
bridged term on the whole batch (``bridge_fraction = 1``) and without bridging.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from .data import BatchSource
from .loss import kl_loss, reference_pass
from .train import Setup, TrainConfig, _autocast, _sync, setup_models, train_step


def _tiny_pair(root: Path) -> tuple[str, str]:
    """An organism-sized random Qwen2 pair (4 layers, d_model 128) when no organisms."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    words = ["<pad>", "<unk>", "<bos>", "<eos>"] + [f"w{i}" for i in range(28)]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>",
                                  pad_token="<pad>", unk_token="<unk>")
    out = []
    for name, seed in (("base", 0), ("fine", 1)):
        torch.manual_seed(seed)
        cfg = Qwen2Config(vocab_size=len(words), hidden_size=128, intermediate_size=512,
                          num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=256, tie_word_embeddings=False)
        m = Qwen2ForCausalLM(cfg)
        m.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        out.append(str(root / name))
    return out[0], out[1]


def _time(fn, dev: torch.device) -> float:
    _sync(dev)
    t = time.perf_counter()
    fn()
    _sync(dev)
    return time.perf_counter() - t


def measure(setup: Setup, cfg: TrainConfig, reps: int = 5, warmup: int = 1,
            variants: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Median seconds of: each training-step variant (expectation over k), the reference
    forward, the adapter forward+backward; all on the same batch, interleaved."""
    model, dev = setup.model, setup.device
    L = model.n_layers
    src = BatchSource(setup.tokenizer, cfg.batch_size, cfg.seed, cfg.data, "train",
                      cfg.max_len, vocab_size=model.hybrid.cfg.d_vocab)
    tokens, valid = (t.to(dev) for t in src.batch(0))
    params = list(model.adapters.parameters())
    variants = variants or {"default": {}}
    cfgs = {name: dataclasses.replace(cfg, **kw) for name, kw in variants.items()}
    opts = {name: torch.optim.AdamW(params, lr=1e-6, weight_decay=0.0) for name in cfgs}
    n_rows = {name: max(1, int(round(c.bridge_fraction * tokens.shape[0])))
              for name, c in cfgs.items()}
    g = torch.Generator().manual_seed(0)

    def step(name: str) -> float:
        c = cfgs[name]
        tot = 0.0
        for k in range(L + 1):
            rows = torch.randperm(tokens.shape[0], generator=g)[:n_rows[name]].sort().values
            tot += _time(lambda _k=k, _r=rows: train_step(
                model, opts[name], params, tokens, valid, c.weights(), _k, _r.to(dev), c), dev)
        return tot / (L + 1)

    def ref_fwd() -> None:
        with _autocast(dev, cfg.autocast):
            reference_pass(model, tokens)

    with _autocast(dev, cfg.autocast):
        _, logp_ref = reference_pass(model, tokens)

    def adapt_fb() -> None:
        with _autocast(dev, cfg.autocast):
            loss = kl_loss(logp_ref, model(tokens, "adapt").logits, valid)
        loss.backward()
        for p in params:
            p.grad = None

    times: dict[str, list[float]] = {f"step_{n}": [] for n in cfgs}
    times["ref_forward"], times["adapter_fwd_bwd"] = [], []
    for r in range(warmup + reps):
        row = {f"step_{n}": step(n) for n in cfgs}
        row["ref_forward"] = _time(ref_fwd, dev)
        row["adapter_fwd_bwd"] = _time(adapt_fb, dev)
        if r >= warmup:
            for key, v in row.items():
                times[key].append(v)
        print(f"bench rep {r + 1}/{warmup + reps}: " + ", ".join(
            f"{k}={v * 1e3:.1f}ms" for k, v in row.items()), file=sys.stderr)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"median": med, "tokens_per_step": int(valid.sum()),
            "batch_shape": list(tokens.shape)}


def bench_adapters_step(args) -> dict[str, Any]:
    """Step time vs bound (REPORTS.md ``bench adapters-step``)."""
    quick = bool(getattr(args, "quick", False))
    device = getattr(args, "device", "auto") or "auto"
    from ..models import organisms_dir, pick_device

    dev = pick_device(device)
    if dev.type == "cpu":
        torch.set_num_threads(1)  # shared CPUs; also makes timings steadier
    have_org = all((organisms_dir() / v / "config.json").exists() for v in ("base", "reasoner"))
    tmp = None
    if have_org:
        cfg = TrainConfig(device=device)
        pair_desc = "organism:base / organism:reasoner"
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench-adapters-")
        b, r = _tiny_pair(Path(tmp.name))
        cfg = TrainConfig(base=b, reasoner=r, data="random", max_len=48, device=device)
        pair_desc = "random Qwen2 pair (4 layers, d_model 128; organisms not built)"
    if quick:
        cfg = dataclasses.replace(cfg, batch_size=8)
    try:
        setup = setup_models(cfg)
        variants = {"default": {}, "full_bridge": {"bridge_fraction": 1.0},
                    "no_bridge": {"lambda_bridge": 0.0}}
        m = measure(setup, cfg, reps=2 if quick else 5, variants=variants)
    finally:
        if tmp is not None:
            tmp.cleanup()
    med = m["median"]
    bound = med["ref_forward"] + med["adapter_fwd_bwd"]
    step = med["step_default"]
    out = {
        "step_seconds": step, "bound_seconds": bound, "ratio": step / bound,
        "ref_forward_seconds": med["ref_forward"],
        "adapter_fwd_bwd_seconds": med["adapter_fwd_bwd"],
        "tokens_per_s": m["tokens_per_step"] / step,
        "bound_tokens_per_s": m["tokens_per_step"] / bound,
        "step_seconds_full_bridge": med["step_full_bridge"],
        "ratio_full_bridge": med["step_full_bridge"] / bound,
        "step_seconds_no_bridge": med["step_no_bridge"],
        "ratio_no_bridge": med["step_no_bridge"] / bound,
        "bridge_fraction_default": cfg.bridge_fraction,
        "tokens_per_step": m["tokens_per_step"], "batch_shape": m["batch_shape"],
        "d_sae": setup.model.adapters.d_sae, "n_layers": setup.model.n_layers,
        "device": str(dev), "threads": torch.get_num_threads(), "pair": pair_desc,
        "autocast_bf16": dev.type == "cuda" and cfg.autocast,
    }
    if dev.type == "cuda":
        out["gpu_name"] = torch.cuda.get_device_name(dev)
        out["cuda_tokens_per_s"] = out["tokens_per_s"]
        out["cuda_peak_bytes"] = float(torch.cuda.max_memory_allocated(dev))
    return out
