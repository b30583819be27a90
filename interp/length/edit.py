"""Weight edits that stop chosen heads from moving the residual stream along the
short-thinking direction.

``"project"`` (ThinkEdit). For each chosen head ``h`` of layer ``l`` with unit vector ``v``
(``[d_model]``)::

    W_O[l, h] <- W_O[l, h] - (W_O[l, h] v) v^T      # W_O[l, h]: [d_head, d_model]

so that ``W_O[l, h] v = 0``: the head can no longer write along ``v`` (its write along
``v`` is *zero-ablated*). Everything else is left bit-identical.

``"recentre"`` (mean-ablation of the same write). Zero is the right counterfactual when a
head writes towards short thinking on some inputs and nothing on the others; when it
writes ``+c`` on short inputs and ``-c`` on long ones (a two-sided code, e.g. a head
that reads a tag word whose two values both matter) zero is the undecided midpoint. The
recentred edit instead fixes the head's write along ``v`` to its mean over the *long*
examples ``m``. With ``e = W_O[h] v / ||W_O[h] v||`` (the one value coordinate that
feeds ``v``; the head's write along ``v`` is ``(z . e) ||W_O[h] v||`` for its mixed value
vector ``z``)::

    W_V[l, h] <- W_V[l, h] - (W_V[l, h] e) e^T      # W_V[l, h]: [d_model, d_head]
    b_V[l, h] <- b_V[l, h] + (m - b_V[l, h] . e) e

Attention weights sum to one, so afterwards ``z . e = m`` at every position and the write
along ``v`` is the constant ``m ||W_O[h] v||`` whatever the input; ``W_O`` is untouched.
It needs one value head per query head (no grouped-query attention).

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

from ..errors import ConfigError

HeadList = Sequence[tuple[int, int]]
EDIT_MODES = ("project", "recentre")


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


def value_coordinate(W_O_h: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``(e, ||W_O[h] v||)``: the unit value coordinate of a head that feeds ``v``
    (``W_O_h``: ``[d_head, d_model]``)."""
    w = W_O_h.float() @ (v.to(W_O_h.device).float() / v.norm().clamp_min(1e-12))
    g = float(w.norm())
    return w / max(g, 1e-12), g


def check_mode(hooked, mode: str) -> None:
    if mode not in EDIT_MODES:
        raise ConfigError(f"unknown edit mode {mode!r}; choose from {', '.join(EDIT_MODES)}")
    kv = getattr(hooked.cfg, "n_key_value_heads", None)
    if mode == "recentre" and kv not in (None, hooked.cfg.n_heads):
        raise ConfigError("the recentred edit needs one value head per query head; this "
                          f"model shares {kv} value heads among {hooked.cfg.n_heads} query "
                          "heads (use the 'project' edit)")


def long_value_means(model, examples, heads: HeadList, units: torch.Tensor,
                     batch_size: int = 64) -> list[float]:
    """For each head, the mean of ``z_h . e_h`` (see the module docstring) over the
    positions-rule positions of each example, then over ``examples`` (the long ones).

    ``z_h . e_h = (z_h W_O[h]) . v / ||W_O[h] v||``: the head score of
    :func:`interp.length.heads.head_short_scores` on these examples, divided by the
    head's gain along ``v``."""
    from .heads import head_short_scores

    hooked = getattr(model, "hooked", model)
    units = units / units.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    scores = head_short_scores(model, examples, units, batch_size=batch_size)
    return [float(scores[int(ly), int(h)])
            / max(value_coordinate(hooked.blocks[int(ly)].attn.W_O[int(h)], units[int(ly)])[1],
                  1e-12)
            for ly, h in heads]


def apply_head_edit(hooked, heads: HeadList, units: torch.Tensor, mode: str = "project",
                    means: Sequence[float] | None = None) -> list[dict[str, Any]]:
    """Edit ``hooked`` in place; returns ``[{"layer", "head", "norm_before", "norm_after"}]``
    (``project``: ``||W_O[h] v||``; ``recentre``: ``||W_V[h] e||``, plus ``"write"``, the
    constant write along ``v`` afterwards)."""
    check_mode(hooked, mode)
    heads = [(int(ly), int(h)) for ly, h in heads]
    if mode == "project":
        before = head_write_norms(hooked, heads, units)
        with torch.no_grad():
            for ly, h in heads:
                W_O = hooked.blocks[ly].attn.W_O
                W_O[h] = project_rows(W_O[h], units[ly])
        after = head_write_norms(hooked, heads, units)
        return [{"layer": ly, "head": h, "norm_before": b, "norm_after": a}
                for (ly, h), b, a in zip(heads, before, after)]
    if means is None or len(means) != len(heads):
        raise ConfigError("the recentred edit needs one long-class mean per head")
    out = []
    with torch.no_grad():
        for (ly, h), m in zip(heads, means):
            attn = hooked.blocks[ly].attn
            e, g = value_coordinate(attn.W_O[h], units[ly])
            # grouped-query attention keeps the value weights per key/value head
            W_V, b_V = (attn._W_V, attn._b_V) if hasattr(attn, "_W_V") else (attn.W_V, attn.b_V)
            e = e.to(W_V.device)
            before = float((W_V[h].float() @ e).norm())
            W_V[h] = (W_V[h].float() - torch.outer(W_V[h].float() @ e, e)).to(W_V.dtype)
            bf = b_V[h].float()
            b_V[h] = (bf + (float(m) - float(bf @ e)) * e).to(b_V.dtype)
            out.append({"layer": ly, "head": h, "norm_before": before,
                        "norm_after": float((W_V[h].float() @ e).norm()),
                        "mean": float(m), "write": float(m) * g})
    return out


@contextlib.contextmanager
def edited(model, heads: HeadList, units: torch.Tensor, mode: str = "project",
           means: Sequence[float] | None = None) -> Iterator[list[dict[str, Any]]]:
    """Run the body with the edit applied to ``model`` in place; the original ``W_O``,
    ``W_V`` and ``b_V`` tensors are restored bit-exactly on exit (exception or not). Not
    for a model shared by concurrent users: evaluate an exported copy there."""
    hooked = getattr(model, "hooked", model)
    layers = sorted({int(ly) for ly, _ in heads})
    saved = [(p, p.detach().clone()) for ly in layers
             for p in hooked.blocks[ly].attn.parameters()]
    try:
        yield apply_head_edit(hooked, heads, units, mode, means)
    finally:
        with torch.no_grad():
            for p, W in saved:
                p.copy_(W)


def _attn_proj(hf, layer: int, name: str):
    for path in (f"model.layers.{layer}.self_attn.{name}",
                 f"model.decoder.layers.{layer}.self_attn.{name}"):
        with contextlib.suppress(AttributeError):
            return hf.get_submodule(path)
    raise ConfigError(
        f"{type(hf).__name__} has no layers.{layer}.self_attn.{name}; the export supports "
        "Llama / Qwen2 / Mistral / Gemma-style attention projections")


def edit_hf_model(hf, heads: HeadList, units: torch.Tensor, d_head: int,
                  mode: str = "project", means: Sequence[float] | None = None) -> None:
    """Apply the same edit to a transformers model in place (``o_proj`` columns of the
    head for ``project``; its ``v_proj`` rows and bias for ``recentre``)."""
    with torch.no_grad():
        for k, (ly, h) in enumerate(heads):
            W = _attn_proj(hf, int(ly), "o_proj").weight     # [d_model, n_heads * d_head]
            sl = slice(int(h) * d_head, (int(h) + 1) * d_head)
            if mode == "project":
                W[:, sl] = project_rows(W[:, sl].T, units[int(ly)]).T
                continue
            e, _ = value_coordinate(W[:, sl].T, units[int(ly)])
            vp = _attn_proj(hf, int(ly), "v_proj")             # weight [n_kv * d_head, d]
            if vp.bias is None:
                raise ConfigError("the recentred edit needs a value bias (v_proj.bias)")
            Wv = vp.weight[sl].float()                         # = W_V[h]^T
            vp.weight[sl] = (Wv - torch.outer(e, e @ Wv)).to(vp.weight.dtype)
            bv = vp.bias[sl].float()
            vp.bias[sl] = (bv + (float(means[k]) - float(bv @ e)) * e).to(vp.bias.dtype)


def export_edited_checkpoint(model, heads: HeadList, units: torch.Tensor,
                             out_dir: str | Path, meta: dict[str, Any] | None = None,
                             mode: str = "project", means: Sequence[float] | None = None
                             ) -> Path:
    """Write the edited model as a loadable HF checkpoint (weights in the source
    checkpoint's dtype, tokenizer copied, ``length_edit.json`` describing the edit).

    Written into a temporary folder beside ``out_dir`` and put in place in one step (an
    earlier export there is replaced as a whole); the edited weights must be finite
    (NonFiniteError, nothing written)."""
    import shutil

    from safetensors import SafetensorError

    from ..models import load_hf
    from ..store import exchange, storage_error, tmp_sibling
    from ..validate import finite_tensors

    check_mode(model.hooked, mode)
    out = Path(out_dir)
    hf = load_hf(model.path, dtype=torch.float32, device="cpu")
    edit_hf_model(hf, heads, units.cpu(), model.hooked.cfg.d_head, mode, means)
    finite_tensors(dict(hf.named_parameters()), "the edited checkpoint")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(out)
    try:
        _write_checkpoint(tmp, hf, model, heads, mode, meta, means)
        if out.exists():
            if not exchange(tmp, out):
                shutil.rmtree(out)
                tmp.rename(out)
        else:
            tmp.rename(out)
    except (OSError, SafetensorError) as e:
        raise storage_error(e, f"writing the edited checkpoint {out}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write_checkpoint(out: Path, hf, model, heads: HeadList, mode: str,
                      meta: dict[str, Any] | None, means: Sequence[float] | None) -> None:
    hf.save_pretrained(out)
    model.tokenizer.save_pretrained(out)
    rule = ("W_O[h] <- W_O[h] - (W_O[h] v) v^T" if mode == "project" else
            "e = W_O[h] v / |W_O[h] v|; W_V[h] <- W_V[h] - (W_V[h] e) e^T; "
            "b_V[h] <- b_V[h] + (m - b_V[h].e) e")
    info = {"edit": rule, "mode": mode, "heads": [list(map(int, x)) for x in heads],
            "source": str(model.spec), **(meta or {})}
    if means is not None:
        info["long_means"] = [float(x) for x in means]
    (out / "length_edit.json").write_text(json.dumps(info, indent=1))


@torch.no_grad()
def max_logit_diff(model_a, model_b, tokens: torch.Tensor) -> float:
    """``max |logits_a - logits_b|`` on ``tokens`` (both models' own devices)."""
    a = getattr(model_a, "hooked", model_a)
    b = getattr(model_b, "hooked", model_b)
    la = a(tokens.to(next(a.parameters()).device)).float().cpu()
    lb = b(tokens.to(next(b.parameters()).device)).float().cpu()
    return float((la - lb).abs().max())
