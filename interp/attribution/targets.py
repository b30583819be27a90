"""Attribution targets: what a graph explains.

* :class:`LogitTarget`: a token's logit at a position, de-meaned over the vocabulary
  (``logit_v - mean_u logit_u``: softmax does not see the mean, so neither do edges);
* :class:`LogitSetTarget`: the *sum* of the de-meaned logits of a set of tokens (a
  hesitation word's every BPE spelling, :func:`interp.tasks.hesitation_ids`):
  ``sum_{v in S} (logit_v - mean_u logit_u)``. The sum, not the maximum: it is linear in
  the residual stream, so edges stay exact (a maximum would switch between tokens as
  sources change); a set of one token is :class:`LogitTarget`;
* :class:`LogitDiffTarget`: ``logit_a - logit_b`` (``b`` None: the most likely token
  other than ``a`` at that position);
* :class:`DirectionTarget`: the projection of the residual stream on any vector at a
  layer site (``resid_pre``, ``resid_mid`` or ``resid_post``) and position, e.g. a
  thinking-length direction.

Positions count from 0 (the BOS token); negative positions count from the end. A
target at position ``p`` explains the prediction made *at* ``p`` (of token ``p + 1``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError, TokenNotInVocabError

SITES = ("resid_pre", "resid_mid", "resid_post")


@dataclass(frozen=True)
class LogitTarget:
    token: int
    pos: int = -1
    label: str = ""


@dataclass(frozen=True)
class LogitSetTarget:
    """The sum of the de-meaned logits of ``tokens`` (module docstring)."""

    tokens: tuple[int, ...]
    pos: int = -1
    label: str = ""

    def __post_init__(self):
        toks = tuple(int(t) for t in self.tokens)
        if not toks:
            raise ConfigError("a token-set target needs at least one token")
        if len(set(toks)) != len(toks):
            raise ConfigError("a token-set target lists a token twice")
        object.__setattr__(self, "tokens", toks)


@dataclass(frozen=True)
class LogitDiffTarget:
    token: int
    other: int | None = None
    pos: int = -1
    label: str = ""


@dataclass(frozen=True, eq=False)
class DirectionTarget:
    vector: torch.Tensor
    layer: int
    site: str = "resid_post"
    pos: int = -1
    label: str = "direction"

    def __post_init__(self):
        if self.site not in SITES:
            raise ConfigError(f"direction site must be one of {SITES}, not {self.site!r}")
        if self.vector.dim() != 1:
            raise ConfigError("a direction target is one vector [d_model]")
        if not torch.isfinite(self.vector).all():
            raise ConfigError("the direction contains NaN or infinite values")


Target = LogitTarget | LogitSetTarget | LogitDiffTarget | DirectionTarget


def token_set_target(ids, pos: int = -1, label: str = "") -> LogitTarget | LogitSetTarget:
    """A target for a set of token ids: :class:`LogitTarget` for one id (so a one-token
    hesitation word keeps the plain logit target), else :class:`LogitSetTarget`."""
    toks = sorted({int(i) for i in ids})
    if not toks:
        raise ConfigError("the hesitation token set is empty")
    if len(toks) == 1:
        return LogitTarget(toks[0], pos, label)
    return LogitSetTarget(tuple(toks), pos, label)


def token_id(tokenizer: Any, token: str | int) -> int:
    """One vocabulary id for ``token`` (an id, or a string that is exactly one token).

    Raises :class:`TokenNotInVocabError` when the string is not in the vocabulary or
    splits into several tokens (the message says into which).
    """
    vocab = tokenizer.get_vocab()
    if isinstance(token, int) or (isinstance(token, str) and token.strip().isdigit()
                                  and token not in vocab):
        i = int(token)
        if not 0 <= i < len(tokenizer):
            raise TokenNotInVocabError(
                f"token id {i} is outside the vocabulary (0..{len(tokenizer) - 1})")
        return i
    if not token:
        raise TokenNotInVocabError("no target token given")
    if token in vocab:
        return int(vocab[token])
    ids = tokenizer.encode(token, add_special_tokens=False)
    unk = getattr(tokenizer, "unk_token_id", None)
    if len(ids) == 1 and ids[0] != unk:
        return int(ids[0])
    if not ids or (unk is not None and unk in ids):
        raise TokenNotInVocabError(f"{token!r} is not in the model's vocabulary")
    pieces = [tokenizer.decode([i]) for i in ids]
    raise TokenNotInVocabError(
        f"{token!r} is {len(ids)} tokens for this model ({pieces}); a target must be one "
        "token: pick one of them")


def describe(t: Target, tokenizer: Any = None) -> dict[str, Any]:
    """A JSON-able record of a target (for provenance and the graph file)."""
    def name(i):
        if i is None:
            return None
        return tokenizer.decode([i]) if tokenizer is not None else str(i)
    if isinstance(t, LogitTarget):
        return {"kind": "logit", "token": t.token, "token_str": name(t.token), "pos": t.pos,
                "label": t.label}
    if isinstance(t, LogitSetTarget):
        strs = [name(i) for i in t.tokens]
        return {"kind": "logit_set", "token": t.tokens[0], "tokens": list(t.tokens),
                "token_strs": strs, "token_str": "|".join(strs), "pos": t.pos,
                "label": t.label, "reduce": "sum"}
    if isinstance(t, LogitDiffTarget):
        return {"kind": "logit_diff", "token": t.token, "token_str": name(t.token),
                "other": t.other, "other_str": name(t.other), "pos": t.pos, "label": t.label}
    return {"kind": "direction", "layer": t.layer, "site": t.site, "pos": t.pos,
            "label": t.label, "norm": float(t.vector.norm())}
