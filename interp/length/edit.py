"""ThinkEdit weight edit: project the short-thinking direction out of chosen heads' W_O.

For each chosen head ``h`` of layer ``l`` with unit vector ``v`` (``[d_model]``)::

    W_O[l, h] <- W_O[l, h] - (W_O[l, h] v) v^T      # W_O[l, h]: [d_head, d_model]

so that ``W_O[l, h] v = 0``: the head can no longer write along ``v``. Everything else
is left bit-identical.

Layouts: TransformerLens ``blocks[l].attn.W_O`` is ``[n_heads, d_head, d_model]``;
the transformers ``self_attn.o_proj.weight`` is ``[d_model, n_heads * d_head]`` with
head ``h`` in columns ``h*d_head:(h+1)*d_head``, i.e. ``W_O[h] = W[:, slice].T``. The
export applies the same function to that transposed slice.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from ..errors import ConfigError, ModelLoadError

HeadList = Sequence[tuple[int, int]]


def project_rows(W: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``W - (W v) v^T`` computed in float32 and cast back (``W``: ``[d_head, d_model]``,
    ``v``: unit ``[d_model]``)."""
    Wf, vf = W.float().contiguous(), v.to(W.device).float()
    vf = vf / vf.norm().clamp_min(1e-12)
    return (Wf - torch.outer(Wf @ vf, vf)).to(W.dtype)


def head_write_norms(hooked, heads: HeadList, units: torch.Tensor) -> list[float]:
    """``||W_O[l, h] v_l||`` for each head (``units``: ``[n_layers, d_model]``)."""
    out = []
    for ly, h in heads:
        W = hooked.blocks[ly].attn.W_O[h].float()
        v = units[ly].to(W.device).float()
        out.append(float((W @ (v / v.norm())).norm()))
    return out


def apply_head_edit(hooked, heads: HeadList, units: torch.Tensor) -> list[dict[str, Any]]:
    """Edit ``hooked`` in place; returns ``[{"layer", "head", "norm_before", "norm_after"}]``."""
    heads = [(int(ly), int(h)) for ly, h in heads]
    before = head_write_norms(hooked, heads, units)
    with torch.no_grad():
        for ly, h in heads:
            W_O = hooked.blocks[ly].attn.W_O
            W_O[h] = project_rows(W_O[h], units[ly])
    after = head_write_norms(hooked, heads, units)
    return [{"layer": ly, "head": h, "norm_before": b, "norm_after": a}
            for (ly, h), b, a in zip(heads, before, after)]


@contextlib.contextmanager
def edited(model, heads: HeadList, units: torch.Tensor) -> Iterator[list[dict[str, Any]]]:
    """Run the body with the edit applied to ``model`` in place; the original ``W_O``
    tensors are restored bit-exactly on exit (exception or not). Not for a model shared
    by concurrent users: evaluate an exported copy there."""
    hooked = getattr(model, "hooked", model)
    layers = sorted({int(ly) for ly, _ in heads})
    saved = {ly: hooked.blocks[ly].attn.W_O.detach().clone() for ly in layers}
    try:
        yield apply_head_edit(hooked, heads, units)
    finally:
        with torch.no_grad():
            for ly, W in saved.items():
                hooked.blocks[ly].attn.W_O.copy_(W)


def _o_proj(hf, layer: int):
    for name in (f"model.layers.{layer}.self_attn.o_proj",
                 f"model.decoder.layers.{layer}.self_attn.o_proj"):
        with contextlib.suppress(AttributeError):
            return hf.get_submodule(name)
    raise ConfigError(
        f"{type(hf).__name__} has no layers.{layer}.self_attn.o_proj; the export supports "
        "Llama / Qwen2 / Mistral / Gemma-style attention output projections")


def edit_hf_model(hf, heads: HeadList, units: torch.Tensor, d_head: int) -> None:
    """Apply the same edit to a transformers model's ``o_proj`` weights, in place."""
    with torch.no_grad():
        for ly, h in heads:
            W = _o_proj(hf, int(ly)).weight                  # [d_model, n_heads * d_head]
            sl = slice(int(h) * d_head, (int(h) + 1) * d_head)
            W[:, sl] = project_rows(W[:, sl].T, units[int(ly)]).T


def export_edited_checkpoint(model, heads: HeadList, units: torch.Tensor,
                             out_dir: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write the edited model as a loadable HF checkpoint (weights in the source
    checkpoint's dtype, tokenizer copied, ``length_edit.json`` describing the edit)."""
    from ..models import load_hf

    out = Path(out_dir)
    try:
        hf = load_hf(model.path, dtype=torch.float32, device="cpu")
    except ModelLoadError:
        raise
    edit_hf_model(hf, heads, units.cpu(), model.hooked.cfg.d_head)
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out)
    model.tokenizer.save_pretrained(out)
    info = {"edit": "W_O[h] <- W_O[h] - (W_O[h] v) v^T", "heads": [list(map(int, x))
                                                                  for x in heads],
            "source": str(model.spec), **(meta or {})}
    (out / "length_edit.json").write_text(json.dumps(info, indent=1))
    return out


@torch.no_grad()
def max_logit_diff(model_a, model_b, tokens: torch.Tensor) -> float:
    """``max |logits_a - logits_b|`` on ``tokens`` (both models' own devices)."""
    a = getattr(model_a, "hooked", model_a)
    b = getattr(model_b, "hooked", model_b)
    la = a(tokens.to(next(a.parameters()).device)).float().cpu()
    lb = b(tokens.to(next(b.parameters()).device)).float().cpu()
    return float((la - lb).abs().max())
