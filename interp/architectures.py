"""Which architectures can be wrapped for hooks, and their TransformerLens configs.

TransformerLens 3.9 reads most architectures from a checkpoint's own ``config.json``
(Llama, Mistral, Mixtral, Qwen, Qwen2, Qwen3, Phi, Phi-3, GPT-2, GPT-Neo(X), GPT-J, OPT,
Bloom, OLMo 3, OLMoE, GPT-OSS, Apertus). A few families it knows **only by hub name**:
their configs are hard-coded per official checkpoint (``google/gemma-2-2b`` ...), so a
local folder, a converted GGUF file or a fine-tune under another name fails with
"... is not currently supported" although the family is supported. For the Gemma
families (Gemma, Gemma 2, Gemma 3 text models) this module builds the same config from
the checkpoint's ``config.json`` (:func:`gemma_config_dict`), field for field what the
hard-coded entries hold, with the sizes, sliding window, attention-layer pattern, RoPE
bases, soft caps and query scale read from the file; the weights are then converted by
TransformerLens' own Gemma converter.

Families that cannot be wrapped from a local folder are named in :data:`UNSUPPORTED`
with the reason (:func:`check_wrappable` raises ModelLoadError with it).
"""

from __future__ import annotations

import math
from typing import Any

from .errors import ModelLoadError

# read by TransformerLens from config.json (its generic branches)
FROM_CONFIG = (
    "LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM", "QWenLMHeadModel",
    "Qwen2ForCausalLM", "Qwen3ForCausalLM", "PhiForCausalLM", "Phi3ForCausalLM",
    "GPT2LMHeadModel", "GPTNeoForCausalLM", "GPTNeoXForCausalLM", "GPTJForCausalLM",
    "OPTForCausalLM", "BloomForCausalLM", "Olmo3ForCausalLM", "OlmoeForCausalLM",
    "GptOssForCausalLM", "ApertusForCausalLM",
)
# hub-name-only in TransformerLens; mapped here from config.json
MAPPED = ("GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM")
UNSUPPORTED: dict[str, str] = {
    "Gemma3ForConditionalGeneration": (
        "multimodal Gemma 3 (4B and larger) is wrapped by TransformerLens only by hub name; "
        "from a local folder use a text-only Gemma 3 checkpoint (Gemma3ForCausalLM)"),
    "OlmoForCausalLM": "OLMo 1 is wrapped by TransformerLens only by its hub name",
    "Olmo2ForCausalLM": "OLMo 2 is wrapped by TransformerLens only by its hub name",
}


def wrappable_families() -> list[str]:
    """Every architecture that loads from a local folder or GGUF file."""
    return sorted(FROM_CONFIG + MAPPED)


def check_wrappable(architecture: str | None) -> None:
    """ModelLoadError naming the reason when ``architecture`` cannot be wrapped."""
    if architecture in FROM_CONFIG or architecture in MAPPED:
        return
    why = UNSUPPORTED.get(architecture or "")
    if why is None:
        why = (f"TransformerLens 3.9 has no converter for {architecture or 'this model'}; "
               f"supported: {', '.join(wrappable_families())}")
    raise ModelLoadError(f"cannot wrap {architecture} for hooks: {why}")


def _get(cfg: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        v = getattr(cfg, n, None)
        if v is not None:
            return v
    return default


def _rope(cfg: Any, layer_type: str | None = None) -> dict[str, Any]:
    """The RoPE parameters of one attention type (transformers 5 nests them per layer
    type for Gemma 3; older configs hold ``rope_theta`` / ``rope_scaling`` flat)."""
    rp = getattr(cfg, "rope_parameters", None) or {}
    if layer_type is not None and isinstance(rp.get(layer_type), dict):
        return dict(rp[layer_type])
    if "rope_theta" in rp or "rope_type" in rp:
        return dict(rp)
    out = {"rope_theta": getattr(cfg, "rope_theta", 10000.0)}
    if layer_type == "sliding_attention" and getattr(cfg, "rope_local_base_freq", None):
        out["rope_theta"] = cfg.rope_local_base_freq
    sc = getattr(cfg, "rope_scaling", None)
    if isinstance(sc, dict) and layer_type != "sliding_attention":
        out.update(sc)
    return out


def _attn_types(cfg: Any) -> list[str]:
    types = getattr(cfg, "layer_types", None)
    n = cfg.num_hidden_layers
    if not types:  # older Gemma 2 configs: even layers slide
        types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n)]
    return ["local" if t == "sliding_attention" else "global" for t in types]


def gemma_config_dict(hf_config: Any, architecture: str) -> dict[str, Any]:
    """TransformerLens ``cfg_dict`` of a Gemma / Gemma 2 / Gemma 3 text checkpoint.

    Mirrors TransformerLens' hard-coded ``google/gemma-*`` entries: RMS norms with the
    ``1 + w`` gain (added by the weight converter), gated MLP, rotary over the whole head;
    Gemma 2 and 3 add post-attention and post-MLP norms, local (sliding-window) layers
    by ``layer_types`` and ``attn_scale = sqrt(query_pre_attn_scalar)``; Gemma 2 soft-caps
    attention scores and logits; Gemma 3 normalises queries and keys and uses its own
    RoPE base on local layers (linear RoPE scaling on global layers when set)."""
    c = hf_config
    d_head = _get(c, "head_dim", default=c.hidden_size // c.num_attention_heads)
    d: dict[str, Any] = {
        "d_model": c.hidden_size, "d_head": d_head, "n_heads": c.num_attention_heads,
        "d_mlp": c.intermediate_size, "n_layers": c.num_hidden_layers,
        "n_ctx": min(int(_get(c, "max_position_embeddings", default=8192)), 8192),
        "eps": c.rms_norm_eps, "d_vocab": c.vocab_size,
        "act_fn": _get(c, "hidden_activation", "hidden_act", default="gelu_pytorch_tanh"),
        "initializer_range": _get(c, "initializer_range", default=0.02),
        "normalization_type": "RMS", "positional_embedding_type": "rotary",
        "rotary_dim": d_head, "rotary_base": float(_rope(c, "full_attention")["rope_theta"]),
        "use_attn_scale": True,
        "n_key_value_heads": _get(c, "num_key_value_heads", default=c.num_attention_heads),
        "gated_mlp": True, "final_rms": True,
        "original_architecture": architecture,
    }
    if architecture in ("Gemma2ForCausalLM", "Gemma3ForCausalLM"):
        types = _attn_types(c)
        d.update({"use_normalization_before_and_after": True,
                  "attn_scale": math.sqrt(float(_get(c, "query_pre_attn_scalar",
                                                     default=d_head)))})
        if "local" in types:
            d.update({"use_local_attn": True, "window_size": int(c.sliding_window),
                      "attn_types": types})
        for key, tl in (("attn_logit_softcapping", "attn_scores_soft_cap"),
                        ("final_logit_softcapping", "output_logits_soft_cap")):
            if getattr(c, key, None):
                d[tl] = float(getattr(c, key))
    if architecture == "Gemma3ForCausalLM":
        d["use_qk_norm"] = True
        d["rotary_base_local"] = float(_rope(c, "sliding_attention")["rope_theta"])
        glob = _rope(c, "full_attention")
        if glob.get("rope_type") == "linear" and glob.get("factor"):
            d["rotary_scaling_factor"] = float(glob["factor"])
        elif glob.get("rope_type") not in (None, "default", "linear"):
            raise ModelLoadError(f"Gemma 3 RoPE type {glob.get('rope_type')!r} is not "
                                 "supported by the hook wrapper (default or linear only)")
    return d


def mapped_config(path: str, hf_config: Any, *, device: str, dtype: Any,
                  n_ctx: int | None) -> Any:
    """A ``HookedTransformerConfig`` for a :data:`MAPPED` checkpoint, finished as
    TransformerLens finishes its own (no LayerNorm folding, weights loaded later)."""
    from transformer_lens import HookedTransformerConfig

    arch = (getattr(hf_config, "architectures", None) or [None])[0]
    d = gemma_config_dict(hf_config, arch)
    d.update({"model_name": str(path).rstrip("/").split("/")[-1], "init_weights": False,
              "device": device, "n_devices": 1, "dtype": dtype, "from_checkpoint": False,
              "default_prepend_bos": True, "tokenizer_name": str(path),
              "tokenizer_prepends_bos": True})
    if n_ctx is not None:
        d["n_ctx"] = int(n_ctx)
    return HookedTransformerConfig.from_dict(d)
