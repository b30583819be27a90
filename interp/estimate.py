"""Memory and time of the pipelines for a model pair, from the checkpoints' configs alone.

``python -m interp estimate --base SPEC --reasoner SPEC --d-sae N --seq-len T --batch B``
prints, for the pair's shape (read from ``config.json``; no weights are loaded):

* **adapter training** (:mod:`interp.adapters.train`, as it runs: base, reasoner and the
  hybrid each held in float32, all-layer adapters trained jointly with AdamW, bf16
  autocast on CUDA): weights, adapter parameters + gradients + AdamW moments, the
  activations one step keeps for its backward pass (the adapter-model pass through every
  layer, the bridged share of the batch, the reasoner's residual stream, the logits and
  their log-softmaxes), and the time per step and for the run at an assumed throughput;
* **trace generation** (:mod:`interp.tasks.traces`): weights in the generation dtype, the
  KV cache of a batch, and the decode time at an assumed memory bandwidth (each decoding
  step reads every weight once) or throughput, whichever is slower, plus a fixed cost
  per layer and step (kernel launches).

``--ranks N`` (and ``--shard fsdp``) plans a torchrun launch of N ranks
(:mod:`interp.distributed`): memory is per rank (each holds its share of the global batch;
with FSDP a 1/N share of the frozen models and the adapters), time per step is one rank's
share of the compute; the gradient all-reduce and FSDP's weight gathers are not counted
(they overlap the compute on NVLink, less so across nodes).

These are estimates from counting tensors and FLOPs (2 per parameter per token forward,
4 backward to inputs; frozen weights get no weight gradients), not measurements: allow
about ±30 % for allocator overhead and kernels' workspaces. ``--tflops`` and
``--bandwidth`` set the assumed effective throughput (defaults: :data:`DEVICE_DEFAULTS`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

GiB = 1024 ** 3
# effective (not peak) throughput assumed per device kind: TFLOP/s and memory GB/s
# and the fixed cost of one decoding step per layer (TransformerLens runs a layer as some
# twenty small kernels: ~10 µs each to launch on a GPU)
DEVICE_DEFAULTS = {"cuda": {"tflops": 250.0, "bandwidth": 2500.0, "layer_ms": 0.2},
                   "cpu": {"tflops": 0.1, "bandwidth": 20.0, "layer_ms": 0.0}}


@dataclass(frozen=True)
class Shape:
    """What the estimate needs of a decoder-only transformer."""

    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    vocab: int
    gated: bool = True
    post_norms: bool = False   # Gemma 2/3: norms after attention and MLP too

    @property
    def block_params(self) -> int:
        d, h, kv, dh = self.d_model, self.n_heads, self.n_kv_heads, self.d_head
        attn = d * h * dh + 2 * d * kv * dh + h * dh * d
        mlp = (3 if self.gated else 2) * d * self.d_mlp
        norms = (4 if self.post_norms else 2) * d
        return attn + mlp + norms

    @property
    def n_params(self) -> int:
        """Parameters of the HookedTransformer (embedding and unembedding counted apart:
        TransformerLens holds both, tied or not; biases left out)."""
        return self.n_layers * self.block_params + 2 * self.vocab * self.d_model + self.d_model

    @property
    def matmul_params(self) -> int:
        """Parameters a token multiplies through (blocks + unembedding)."""
        return self.n_layers * self.block_params + self.vocab * self.d_model


def shape_from_config(cfg: dict[str, Any]) -> Shape:
    c = {**cfg, **(cfg.get("text_config") or {})}
    try:
        d, h = int(c["hidden_size"]), int(c["num_attention_heads"])
        arch = (c.get("architectures") or [""])[0]
        return Shape(int(c["num_hidden_layers"]), d, int(c["intermediate_size"]), h,
                     int(c.get("num_key_value_heads") or h), int(c.get("head_dim") or d // h),
                     int(c["vocab_size"]),
                     gated=not arch.startswith(("GPT2", "GPTNeo", "OPT", "Bloom", "GPTJ")),
                     post_norms=arch.startswith(("Gemma2", "Gemma3")))
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"the config lacks a size the estimate needs ({e})") from None


def shape_of(spec: str) -> Shape:
    """The shape of a model spec (a local folder, registered name, organism, GGUF already
    converted, or a hub name already downloaded): only ``config.json`` is read."""
    from .models import local_checkpoint

    _, path = local_checkpoint(spec)
    try:
        return shape_from_config(json.loads((Path(path) / "config.json").read_text()))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the config of {spec}: {e}") from e


def _bytes(dtype: str) -> int:
    return {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}[dtype]


def adapter_training(s: Shape, d_sae: int, seq_len: int, batch: int, *, steps: int = 1000,
                     device: str = "cuda", bridge_fraction: float = 0.25,
                     tflops: float | None = None, ranks: int = 1, shard: str = "none"
                     ) -> dict[str, Any]:
    """Memory (GiB) per rank and time of adapter training (module docstring).

    ``ranks``: data-parallel ranks (torchrun) sharing the global ``batch``: each holds
    ``ceil(batch / ranks)`` sequences' activations and computes that share of the step.
    ``shard="fsdp"``: the reasoner and the hybrid are sharded over the ranks and the
    base released once the hybrid is built (``2 / ranks`` of the weights, plus two of
    the largest unit gathered at a time), and so are the adapters with their gradients
    and AdamW moments; without sharding every rank holds all three models."""
    if shard not in ("none", "fsdp"):
        raise ConfigError("shard must be 'none' or 'fsdp'")
    if ranks < 1:
        raise ConfigError("ranks must be >= 1")
    act_b = 2 if device == "cuda" else 4           # bf16 autocast on CUDA, fp32 elsewhere
    L, d, T, B = s.n_layers, s.d_model, seq_len, -(-batch // ranks)
    tok = B * T
    fsdp = shard == "fsdp"
    largest = max(s.block_params, s.vocab * s.d_model)
    weights = (2 * s.n_params * 4 / ranks + 2 * largest * 4 if fsdp
               else 3 * s.n_params * 4)            # base, reasoner, hybrid in float32
    adapter_params = L * (2 * d * d_sae + d_sae + d)
    optim = adapter_params * 4 * 4 / (ranks if fsdp else 1)  # weights, grads, AdamW m, v
    per_layer = (10 * d + 2 * s.n_kv_heads * s.d_head + s.n_heads * s.d_head
                 + 3 * s.d_mlp + 2 * d_sae)        # per token, saved for backward
    attn = 2 * s.n_heads * T                       # scores and probabilities per token
    grad_pass = tok * L * (per_layer + attn) * act_b * (1 + bridge_fraction)
    ref = tok * (L + 1) * d * 4                    # the reasoner's residual stream
    logits = tok * s.vocab * 4 * 5                 # ref / adapter / bridged, log-softmaxes
    total = weights + optim + grad_pass + ref + logits
    n = s.matmul_params
    flops_tok = 2 * n + (2 * n + 4 * n) * (1 + bridge_fraction) + 6 * 2 * L * d * d_sae
    tf = tflops or DEVICE_DEFAULTS.get(device, DEVICE_DEFAULTS["cuda"])["tflops"]
    step_s = flops_tok * tok / (tf * 1e12)
    return {"ranks": ranks, "shard": shard, "sequences_per_rank": B,
            "weights_gib": weights / GiB, "adapters_and_adamw_gib": optim / GiB,
            "activations_gib": (grad_pass + ref + logits) / GiB,
            "logits_gib": logits / GiB, "total_gib": total / GiB,
            "adapter_params": adapter_params, "tokens_per_step": batch * T,
            "flops_per_token": flops_tok, "assumed_tflops": tf,
            "seconds_per_step": step_s, "tokens_per_s": batch * T / step_s,
            "run_minutes": step_s * steps / 60, "steps": steps}


def trace_generation(s: Shape, n_prompts: int, prompt_len: int, new_tokens: int, batch: int,
                     *, dtype: str = "bfloat16", device: str = "cuda",
                     tflops: float | None = None, bandwidth: float | None = None,
                     ranks: int = 1) -> dict[str, Any]:
    """Memory (GiB) per rank and time of generating traces (module docstring); with
    ``ranks`` each rank holds the whole model and generates ``ceil(n_prompts / ranks)``
    of the prompts."""
    n_prompts = -(-n_prompts // max(1, ranks))
    b = _bytes(dtype)
    dd = DEVICE_DEFAULTS.get(device, DEVICE_DEFAULTS["cuda"])
    tf, bw = tflops or dd["tflops"], bandwidth or dd["bandwidth"]
    weights = s.n_params * b
    ctx = prompt_len + new_tokens
    kv = 2 * s.n_layers * s.n_kv_heads * s.d_head * ctx * batch * b
    logits = batch * s.vocab * 4 * 2
    step_read = weights + kv / 2                   # weights + the average cache read
    step_s = max(step_read / (bw * 1e9), 2 * s.matmul_params * batch / (tf * 1e12)) \
        + s.n_layers * dd["layer_ms"] / 1e3
    n_batches = -(-n_prompts // batch)
    prefill_s = 2 * s.matmul_params * prompt_len * n_prompts / (tf * 1e12)
    total_s = n_batches * new_tokens * step_s + prefill_s
    return {"weights_gib": weights / GiB, "kv_cache_gib": kv / GiB,
            "total_gib": (weights + kv + logits) / GiB,
            "decode_step_ms": step_s * 1e3, "tokens_per_s": batch / step_s,
            "minutes": total_s / 60, "assumed_bandwidth_gb_s": bw, "assumed_tflops": tf}


def estimate(base: str, reasoner: str, d_sae: int, seq_len: int, batch: int, *,
             steps: int = 1000, device: str = "cuda", n_traces: int = 1000,
             prompt_len: int = 128, gen_batch: int = 64, tflops: float | None = None,
             bandwidth: float | None = None, ranks: int = 1, shard: str = "none"
             ) -> dict[str, Any]:
    """The whole report for a pair (shapes must agree, as for the pair check)."""
    sb, sr = shape_of(base), shape_of(reasoner)
    if sb != sr:
        raise ConfigError(f"{base} and {reasoner} differ in shape: {asdict(sb)} vs "
                          f"{asdict(sr)}")
    if min(d_sae, seq_len, batch, steps, n_traces, gen_batch) < 1:
        raise ConfigError("sizes must be >= 1")
    return {"shape": {**asdict(sr), "n_params": sr.n_params},
            "settings": {"d_sae": d_sae, "seq_len": seq_len, "batch": batch, "steps": steps,
                         "device": device, "ranks": ranks, "shard": shard},
            "adapter_training": adapter_training(sr, d_sae, seq_len, batch, steps=steps,
                                                 device=device, tflops=tflops, ranks=ranks,
                                                 shard=shard),
            "trace_generation": trace_generation(
                sr, n_traces, prompt_len, seq_len, gen_batch, device=device,
                dtype="bfloat16" if device == "cuda" else "float32", tflops=tflops,
                bandwidth=bandwidth, ranks=ranks)}


def _cmd(args) -> int:
    import sys

    r = estimate(args.base, args.reasoner, args.d_sae, args.seq_len, args.batch,
                 steps=args.steps, device=args.for_device, n_traces=args.n_traces,
                 prompt_len=args.prompt_len, gen_batch=args.gen_batch, tflops=args.tflops,
                 bandwidth=args.bandwidth, ranks=args.ranks, shard=args.shard)
    a, g, s = r["adapter_training"], r["trace_generation"], r["shape"]
    print(f"pair: {s['n_layers']} layers, d_model {s['d_model']}, d_mlp {s['d_mlp']}, "
          f"vocab {s['vocab']}, {s['n_params'] / 1e9:.2f}B parameters (hook wrapper)",
          file=sys.stderr)
    per = f" per rank of {args.ranks} (shard {args.shard})" if args.ranks > 1 else ""
    print(f"adapter training ({args.for_device}, d_sae {args.d_sae}, {args.batch} x "
          f"{args.seq_len} tokens): {a['total_gib']:.1f} GiB{per} = weights "
          f"{a['weights_gib']:.1f} + adapters/AdamW {a['adapters_and_adamw_gib']:.1f} + "
          f"activations {a['activations_gib']:.1f}; {a['seconds_per_step']:.2f} s/step at "
          f"{a['assumed_tflops']:g} TFLOP/s, {a['run_minutes']:.0f} min for {args.steps} "
          "steps", file=sys.stderr)
    print(f"trace generation ({args.n_traces} x {args.seq_len} new tokens, batch "
          f"{args.gen_batch}): {g['total_gib']:.1f} GiB (KV cache {g['kv_cache_gib']:.1f}); "
          f"{g['tokens_per_s']:.0f} tokens/s, {g['minutes']:.0f} min", file=sys.stderr)
    print(json.dumps(r))
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("estimate", help="memory and time of adapter training and trace "
                                        "generation for a pair (from configs only)")
    p.add_argument("--base", required=True)
    p.add_argument("--reasoner", required=True)
    p.add_argument("--d-sae", type=int, required=True, help="adapter features per layer")
    p.add_argument("--seq-len", type=int, required=True, help="tokens per sequence")
    p.add_argument("--batch", type=int, required=True, help="sequences per training step")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--for-device", dest="for_device", default="cuda", choices=["cuda", "cpu"],
                   help="the machine the run is planned for (nothing is loaded here)")
    p.add_argument("--n-traces", type=int, default=1000)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--gen-batch", type=int, default=64)
    p.add_argument("--tflops", type=float, help="effective TFLOP/s (default by device)")
    p.add_argument("--bandwidth", type=float, help="memory GB/s (default by device)")
    p.add_argument("--ranks", type=int, default=1,
                   help="torchrun ranks (GPUs) sharing the batch (default 1)")
    p.add_argument("--shard", default="none", choices=["none", "fsdp"],
                   help="fsdp: shard the frozen models and the adapters over the ranks")
    p.set_defaults(func=_cmd)
