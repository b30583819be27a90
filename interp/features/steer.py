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
    out = clamp_generations(source, prompt, layer, feature, [clamp], max_new_tokens,
                            hesitation)
    return {"original": out["original"], "ablated": out["ablated"],
            "clamped": out[clamp_name(clamp)]}


def clamp_name(value: float) -> str:
    return f"clamped {float(value):g}"


def clamp_generations(source: FeatureSource, prompt: str, layer: int, feature: int,
                      clamps: Sequence[float], max_new_tokens: int = 48,
                      hesitation: Sequence[str] = ("wait",)) -> dict[str, dict[str, Any]]:
    """As :func:`compare_generations` for a grid of clamp values: ``original``,
    ``ablated`` and ``clamped {value}`` for each value (one greedy generation each)."""
    from ..validate import finite_values

    clamps = finite_values(list(clamps), "clamp value")
    tok = source.tokenizer
    n_ctx = getattr(getattr(source.model, "cfg", None), "n_ctx", None)
    ids = encode_user_prompt(tok, prompt, max_new_tokens=max_new_tokens, n_ctx=n_ctx)
    hes = {i[0] for i in hesitation_ids(tok, hesitation) if len(i) == 1}
    out = {}
    runs = [("original", {}), ("ablated", {layer: {feature: 0.0}})] + [
        (clamp_name(c), {layer: {feature: float(c)}}) for c in clamps]
    for name, edits in runs:
        gen = generate(source.model, [ids], max_new_tokens=max_new_tokens,
                       fwd_hooks=source.edit_hooks(edits))[0]
        out[name] = {"text": gen.text, "n_tokens": len(gen.output_ids),
                     "hesitations": sum(1 for t in gen.output_ids if t in hes)}
    return out


def clamp_cost(prompt: str, clamps: Sequence[float], max_new_tokens: int = 48,
               tokenizer: Any = None):
    """The :class:`~interp.cost.Cost` of :func:`clamp_generations`: 2 + one greedy
    generation per clamp value, batch 1 (the forward count is exact up to early stops;
    without the tokenizer the prompt's tokens are counted as its words + 8)."""
    from ..cost import generation_cost

    n = (len(encode_user_prompt(tokenizer, prompt, max_new_tokens=max_new_tokens))
         if tokenizer is not None else len(prompt.split()) + 8)
    return generation_cost([n], max_new_tokens, 1, runs=2 + len(clamps))
