"""Ablate or clamp one feature during generation and compare the texts side by side."""

from __future__ import annotations

from typing import Any, Sequence

from ..generation import encode_user_prompt, generate
from .collect import hesitation_ids
from .source import FeatureSource


def compare_generations(source: FeatureSource, prompt: str, layer: int, feature: int,
                        clamp: float, max_new_tokens: int = 48,
                        hesitation: Sequence[str] = ("wait",)) -> dict[str, dict[str, Any]]:
    """Greedy continuations of ``prompt`` by the source's model three ways: unedited
    (``original``; for adapters the adapter model), with the feature set to 0 at every
    position (``ablated``) and set to ``clamp`` at every position (``clamped``). Each:
    ``text``, ``n_tokens`` and the number of hesitation words generated."""
    tok = source.tokenizer
    n_ctx = getattr(getattr(source.model, "cfg", None), "n_ctx", None)
    ids = encode_user_prompt(tok, prompt, max_new_tokens=max_new_tokens, n_ctx=n_ctx)
    hes = {i[0] for i in hesitation_ids(tok, hesitation) if len(i) == 1}
    out = {}
    for name, edits in (("original", {}), ("ablated", {layer: {feature: 0.0}}),
                        ("clamped", {layer: {feature: float(clamp)}})):
        gen = generate(source.model, [ids], max_new_tokens=max_new_tokens,
                       fwd_hooks=source.edit_hooks(edits))[0]
        out[name] = {"text": gen.text, "n_tokens": len(gen.output_ids),
                     "hesitations": sum(1 for t in gen.output_ids if t in hes)}
    return out
