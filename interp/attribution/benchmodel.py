"""The attribution benchmark's model, transcoders and prompt, built deterministically.

One shape serves ``bench attribution-vs-circuit-tracer`` and ``bench
attribution-scaling`` (so their numbers compare):

* model: a Llama-style TransformerLens ``HookedTransformer`` (4 layers, d_model 128,
  4 heads x 32, gated SiLU MLP d_mlp 512, RMSNorm, rotary, vocab 100, n_ctx 4096),
  TransformerLens's own init with ``seed`` (default 0). All biases are zero and all
  RMSNorm gains are one after that init.
* transcoders: one single-layer ReLU transcoder per layer, d_sae 1024, reading the
  MLP input (``ln2`` output *after* its gain, circuit-tracer's ``mlp.hook_in``) and
  writing the MLP output (``hook_mlp_out``, circuit-tracer's ``mlp.hook_out``).
  ``W_enc`` rows are unit vectors, ``b_enc = -2.4``, ``W_dec ~ N(0, 0.05^2)``,
  ``b_dec = 0``. The MLP input has RMS 1, so a pre-activation is about N(0, 1) and
  ``P(> 2.4) * 1024`` gives about 8 active features per token per layer.
* prompt: ``[BOS] + ids`` with ``BOS = 0`` and ``ids`` uniform in ``[1, vocab)``
  (seed 1234); ``n_tokens`` counts the BOS.

Orientation (circuit-tracer's): ``W_enc`` and ``W_dec`` are ``[d_sae, d_model]``, one row
per feature; ``acts = relu(x @ W_enc.T + b_enc)``, ``out = acts @ W_dec + b_dec``.

Transcoder weights and the prompt come from plain ``torch.Generator`` draws, and the
model's weights are saved, so a second virtual environment (another TransformerLens
version) rebuilds bit-identical tensors from :func:`save_bench_setup`'s folder.

Folder written by :func:`save_bench_setup`::

    setup.json                  format, HookedTransformerConfig kwargs, transcoder
                                settings, hook names, prompt settings and input_ids
    model.safetensors           the model's parameters (named_parameters; no buffers)
    transcoders.safetensors     "{layer}.W_enc|b_enc|W_dec|b_dec" for every layer
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import ArtifactError, ConfigError, StorageError
from ..store import write_json_atomic

SETUP_FORMAT = "interp-attribution-bench-v1"
SETUP_FILE = "setup.json"
MODEL_FILE = "model.safetensors"
TRANSCODERS_FILE = "transcoders.safetensors"

BOS_ID = 0
VOCAB = 100
PROMPT_SEED = 1234
MODEL_SEED = 0
TRANSCODER_SEED = 0
D_SAE = 1024
B_ENC = -2.4
W_DEC_STD = 0.05
# circuit-tracer hook names (relative to ``blocks.{l}``) of the transcoders' input/output
FEATURE_INPUT_HOOK = "mlp.hook_in"
FEATURE_OUTPUT_HOOK = "mlp.hook_out"


def bench_config_kwargs(n_ctx: int = 4096, seed: int = MODEL_SEED) -> dict[str, Any]:
    """The ``HookedTransformerConfig`` keyword arguments of the benchmark model.

    JSON-ready: ``dtype`` is the string ``"float32"``; the device is not part of it."""
    return {
        "n_layers": 4, "d_model": 128, "n_heads": 4, "d_head": 32, "d_mlp": 512,
        "act_fn": "silu", "gated_mlp": True, "normalization_type": "RMS", "final_rms": True,
        "positional_embedding_type": "rotary", "rotary_dim": 32, "d_vocab": VOCAB,
        "n_ctx": int(n_ctx), "seed": int(seed), "dtype": "float32",
    }


@contextlib.contextmanager
def _rng_kept() -> Iterator[None]:
    """TransformerLens seeds torch, numpy and random globally; give callers theirs back."""
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def model_from_config(kwargs: dict[str, Any], device: str | torch.device = "cpu"):
    """A ``HookedTransformer`` from :func:`bench_config_kwargs` output (TL's own init)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    kw = dict(kwargs)
    kw["dtype"] = getattr(torch, kw.get("dtype", "float32"))
    kw["device"] = str(device)
    with _rng_kept():
        model = HookedTransformer(HookedTransformerConfig(**kw))
    return model.eval()


def build_bench_model(n_ctx: int = 4096, seed: int = MODEL_SEED,
                      device: str | torch.device = "cpu"):
    """The benchmark's ``HookedTransformer`` (TransformerLens init with ``seed``)."""
    return model_from_config(bench_config_kwargs(n_ctx=n_ctx, seed=seed), device=device)


@dataclass(frozen=True)
class BenchTranscoder:
    """One single-layer ReLU transcoder, circuit-tracer orientation (rows = features)."""

    layer: int
    W_enc: torch.Tensor  # [d_sae, d_model]
    b_enc: torch.Tensor  # [d_sae]
    W_dec: torch.Tensor  # [d_sae, d_model]
    b_dec: torch.Tensor  # [d_model]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``relu(x @ W_enc.T + b_enc)``: ``[..., d_model] -> [..., d_sae]``."""
        return torch.relu(x @ self.W_enc.T + self.b_enc)

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        """``acts @ W_dec + b_dec``: ``[..., d_sae] -> [..., d_model]``."""
        return acts @ self.W_dec + self.b_dec


def build_bench_transcoders(n_layers: int = 4, d_model: int = 128, d_sae: int = D_SAE,
                            b_enc: float = B_ENC, w_dec_std: float = W_DEC_STD,
                            seed: int = TRANSCODER_SEED) -> list[BenchTranscoder]:
    """The benchmark's transcoders, from one ``torch.Generator(seed)``.

    Draw order: for layer 0, 1, ...: ``W_enc`` (``randn``, rows then scaled to unit
    norm), then ``W_dec`` (``randn * w_dec_std``). ``b_enc`` is the constant ``b_enc``,
    ``b_dec`` is zero."""
    if n_layers < 1 or d_model < 1 or d_sae < 1 or not w_dec_std > 0:
        raise ConfigError("transcoders need n_layers, d_model, d_sae >= 1 and w_dec_std > 0")
    g = torch.Generator().manual_seed(int(seed))
    out = []
    for layer in range(n_layers):
        w_enc = torch.randn(d_sae, d_model, generator=g, dtype=torch.float32)
        w_enc = w_enc / w_enc.norm(dim=1, keepdim=True)
        w_dec = torch.randn(d_sae, d_model, generator=g, dtype=torch.float32) * w_dec_std
        out.append(BenchTranscoder(layer=layer, W_enc=w_enc.contiguous(),
                                   b_enc=torch.full((d_sae,), float(b_enc)),
                                   W_dec=w_dec.contiguous(), b_dec=torch.zeros(d_model)))
    return out


def bench_prompt(n_tokens: int, seed: int = PROMPT_SEED, vocab: int = VOCAB,
                 bos_id: int = BOS_ID) -> torch.Tensor:
    """``[bos_id] + (n_tokens - 1)`` ids uniform in ``[1, vocab)`` from
    ``torch.Generator(seed)``: a ``[n_tokens]`` long tensor."""
    if n_tokens < 2:
        raise ConfigError(f"the prompt needs at least 2 tokens (BOS + one), got {n_tokens}")
    g = torch.Generator().manual_seed(int(seed))
    ids = torch.randint(1, vocab, (n_tokens - 1,), generator=g, dtype=torch.long)
    return torch.cat([torch.tensor([bos_id], dtype=torch.long), ids])


def mlp_inputs(model, input_ids: torch.Tensor) -> torch.Tensor:
    """What the transcoders read: ``ln2(resid_mid)`` after the gain (circuit-tracer's
    ``mlp.hook_in``) = ``blocks.{l}.ln2.hook_normalized * ln2.w``, per layer:
    ``[n_layers, n_pos, d_model]`` for a 1-D ``input_ids``."""
    n_layers = model.cfg.n_layers
    names = [f"blocks.{layer}.ln2.hook_normalized" for layer in range(n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(input_ids[None], names_filter=lambda n: n in names)
        return torch.stack([cache[names[layer]][0] * model.blocks[layer].ln2.w
                            for layer in range(n_layers)])


def _save_tensors_atomic(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StorageError(f"could not write {path.name}: {e}") from e


def save_bench_setup(folder: str | os.PathLike, n_tokens: int, n_ctx: int = 4096,
                     model_seed: int = MODEL_SEED, transcoder_seed: int = TRANSCODER_SEED,
                     prompt_seed: int = PROMPT_SEED) -> Path:
    """Write the benchmark's model, transcoders and prompt into ``folder`` (layout in the
    module docstring); each file is written atomically. Returns the folder."""
    if not 2 <= n_tokens <= n_ctx:
        raise ConfigError(f"n_tokens must be in [2, n_ctx={n_ctx}], got {n_tokens}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg_kwargs = bench_config_kwargs(n_ctx=n_ctx, seed=model_seed)
    model = model_from_config(cfg_kwargs)
    tcs = build_bench_transcoders(n_layers=cfg_kwargs["n_layers"],
                                  d_model=cfg_kwargs["d_model"], seed=transcoder_seed)
    ids = bench_prompt(n_tokens, seed=prompt_seed, vocab=cfg_kwargs["d_vocab"])
    _save_tensors_atomic(folder / MODEL_FILE, dict(model.named_parameters()))
    _save_tensors_atomic(folder / TRANSCODERS_FILE, {
        f"{t.layer}.{name}": getattr(t, name)
        for t in tcs for name in ("W_enc", "b_enc", "W_dec", "b_dec")})
    write_json_atomic(folder / SETUP_FILE, {
        "format": SETUP_FORMAT,
        "hooked_transformer_config": cfg_kwargs,
        "transcoders": {"n_layers": len(tcs), "d_sae": D_SAE, "b_enc": B_ENC,
                        "w_dec_std": W_DEC_STD, "seed": transcoder_seed,
                        "activation": "relu", "feature_input_hook": FEATURE_INPUT_HOOK,
                        "feature_output_hook": FEATURE_OUTPUT_HOOK,
                        "orientation": "W_enc, W_dec: [d_sae, d_model]"},
        "prompt": {"n_tokens": n_tokens, "bos_id": BOS_ID, "seed": prompt_seed,
                   "input_ids": ids.tolist()},
    })
    return folder


@dataclass
class BenchSetup:
    """A setup folder read back: the model, its transcoders and the prompt."""

    model: Any
    transcoders: list[BenchTranscoder]
    input_ids: torch.Tensor  # [n_tokens] long, BOS first
    meta: dict[str, Any]


def load_bench_setup(folder: str | os.PathLike,
                     device: str | torch.device = "cpu") -> BenchSetup:
    """Rebuild what :func:`save_bench_setup` wrote (the model with the saved weights)."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / SETUP_FILE).read_text())
        params = load_file(str(folder / MODEL_FILE))
        tc = load_file(str(folder / TRANSCODERS_FILE))
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{folder} is not a complete benchmark setup: {e}") from e
    if meta.get("format") != SETUP_FORMAT:
        raise ArtifactError(f"{folder / SETUP_FILE} has format {meta.get('format')!r}, "
                            f"expected {SETUP_FORMAT!r}")
    model = model_from_config(meta["hooked_transformer_config"], device=device)
    own = dict(model.named_parameters())
    if set(own) != set(params):
        raise ArtifactError(f"{folder / MODEL_FILE} does not match the config's parameters: "
                            f"missing {sorted(set(own) - set(params))[:5]}, "
                            f"unexpected {sorted(set(params) - set(own))[:5]}")
    with torch.no_grad():
        for name, p in own.items():
            p.copy_(params[name].to(p.device, p.dtype))
    tcs = [BenchTranscoder(layer=layer, **{n: tc[f"{layer}.{n}"].to(device)
                                           for n in ("W_enc", "b_enc", "W_dec", "b_dec")})
           for layer in range(meta["transcoders"]["n_layers"])]
    ids = torch.tensor(meta["prompt"]["input_ids"], dtype=torch.long, device=device)
    return BenchSetup(model=model, transcoders=tcs, input_ids=ids, meta=meta)
