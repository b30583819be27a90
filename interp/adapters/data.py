"""Training and evaluation batches for adapters.

Batches are a pure function of ``(seed, step)`` (counter-based randomness), so the data
position of a run is its step number: a resumed run sees exactly the batches an
uninterrupted run would have seen.

Sources:

* ``traces``: reasoning traces from the organisms' generator
  (:func:`interp.organisms.task.make_trace` on train-split problems for training, the
  held-out split for evaluation), tokenized with the reasoner's tokenizer;
* ``random``: uniform random token sequences (tests and benchmarks on any pair).

Layout: ``tokens [b, pos]`` right-padded with the pad id, ``valid [b, pos]`` bool marking
real tokens (loss positions).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import ConfigError

SOURCES = ("traces", "random")


def _seed(*xs: int) -> int:
    return int(np.random.SeedSequence([int(x) for x in xs]).generate_state(1)[0])


def pad_batch(ids: list[list[int]], pad_id: int, max_len: int | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists: ``(tokens [b, T], valid [b, T])``."""
    if max_len is not None:
        ids = [x[:max_len] for x in ids]
    T = max(len(x) for x in ids)
    toks = torch.full((len(ids), T), pad_id, dtype=torch.long)
    valid = torch.zeros((len(ids), T), dtype=torch.bool)
    for i, x in enumerate(ids):
        toks[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        valid[i, : len(x)] = True
    return toks, valid


class BatchSource:
    """``batch(step) -> (tokens, valid)`` on CPU, deterministic in ``(seed, step)``."""

    def __init__(self, tokenizer: Any, batch_size: int, seed: int = 0, source: str = "traces",
                 split: str = "train", max_len: int = 256, vocab_size: int | None = None,
                 trace_kwargs: dict[str, Any] | None = None):
        if source not in SOURCES:
            raise ConfigError(f"unknown data source {source!r}; choose from {SOURCES}")
        if batch_size < 1:
            raise ConfigError("batch_size must be at least 1")
        self.tok, self.batch_size, self.seed = tokenizer, batch_size, seed
        self.source, self.split, self.max_len = source, split, max_len
        self.vocab_size = vocab_size or len(tokenizer)
        self.trace_kwargs = dict(trace_kwargs or {})
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = int(pad) if pad is not None else 0

    def texts(self, step: int) -> list[tuple[str, dict[str, Any]]]:
        """The traces (text, labels) of batch ``step`` (``traces`` source only)."""
        from ..organisms.task import make_trace, sample_problems

        probs = sample_problems(self.batch_size, seed=_seed(self.seed, step, 0), split=self.split)
        rng = np.random.default_rng(_seed(self.seed, step, 1))
        return [make_trace(p, rng, **self.trace_kwargs) for p in probs]

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.source == "random":
            g = torch.Generator().manual_seed(_seed(self.seed, step, 2))
            lo = min(4, self.vocab_size - 1)
            toks = torch.randint(lo, self.vocab_size, (self.batch_size, self.max_len), generator=g)
            return toks, torch.ones_like(toks, dtype=torch.bool)
        ids = [self.tok(t, add_special_tokens=True)["input_ids"] for t, _ in self.texts(step)]
        return pad_batch(ids, self.pad_id, self.max_len)


def eval_batches(tokenizer: Any, n: int, batch_size: int = 64, seed: int = 1234,
                 source: str = "traces", max_len: int = 256, vocab_size: int | None = None,
                 split: str = "eval") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``ceil(n / batch_size)`` held-out batches: traces of ``split`` problems (``eval``,
    or one of its halves ``validation`` / ``evaluation``, see
    :func:`interp.organisms.task.sample_problems`)."""
    src = BatchSource(tokenizer, batch_size, seed, source, split, max_len, vocab_size)
    out = []
    for i in range((n + batch_size - 1) // batch_size):
        out.append(src.batch(i))
    return out
