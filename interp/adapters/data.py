"""Training and evaluation batches for adapters.

Batches are a pure function of ``(seed, step)`` (counter-based randomness), so the data
position of a run is its step number: a resumed run sees exactly the batches an
uninterrupted run would have seen.

Sources:

* ``traces``: the organisms task: reasoning traces from the organisms' generator
  (:func:`interp.organisms.task.make_trace` on train-split problems for training, the
  held-out split for evaluation), tokenized with the reasoner's tokenizer; organism
  pairs only;
* ``traceset:KEY``: a stored trace set (:mod:`interp.tasks.traces`; a unique key prefix
  is enough): prompt + output token ids of its ``train`` traces for training, of its
  ``eval`` traces for evaluation (``validation`` / ``evaluation``: the even / odd ones),
  drawn without replacement in a seeded order per pass;
* ``random``: uniform random token sequences (tests and benchmarks on any pair).

Layout: ``tokens [b, pos]`` right-padded with the pad id, ``valid [b, pos]`` bool marking
real tokens (loss positions).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import ConfigError

SOURCES = ("traces", "random", "traceset:KEY")
TRACESET = "traceset:"


def check_source(source: str, models: tuple[str, ...] = ()) -> None:
    """ConfigError for an unknown source, or for the organisms' ``traces`` asked of a
    pair that is not the organisms (give a trace set of the pair instead)."""
    if source.startswith(TRACESET):
        if not source[len(TRACESET):].strip():
            raise ConfigError("data 'traceset:' needs a trace set key (python -m interp "
                              "traces list)")
        return
    if source not in ("traces", "random"):
        raise ConfigError(f"unknown data source {source!r}; choose from "
                          f"{', '.join(SOURCES)}")
    if source == "traces":
        from ..tasks import OrganismTask, check_pair

        try:
            check_pair(OrganismTask(), models)
        except ConfigError:
            raise ConfigError(
                f"data 'traces' is the organisms' trace generator, which only runs on the "
                f"organism pair, not on {', '.join(models)}: train on a trace set of your "
                "pair (--traces KEY, see `python -m interp traces generate|import`)") \
                from None


def traceset_records(key: str, split: str, tokenizer: Any, vocab_size: int
                     ) -> list[list[int]]:
    """Token sequences of a trace set's ``split`` (``train``, ``eval``, ``validation``,
    ``evaluation``, ``all``), checked against the model's vocabulary and tokenizer."""
    from ..tasks.traces import load_traceset

    ts = load_traceset(key)
    half = {"validation": 0, "evaluation": 1}.get(split)
    seqs = ts.sequences("eval" if half is not None else split)
    if half is not None:
        seqs = seqs[half::2]
    if not seqs:
        raise ConfigError(f"trace set {ts.key} has no {split!r} traces ({len(ts.records)} in "
                          "all): give the task file's records a 'split' field, or more "
                          "prompts")
    top = max(max(x) for x in seqs)
    if top >= vocab_size:
        raise ConfigError(f"trace set {ts.key} ({ts.model}) holds token id {top}, outside the "
                          f"model's vocabulary of {vocab_size}: it was made with another "
                          "tokenizer")
    if tokenizer is not None and _vocab_of(ts.model) not in (None, tokenizer.get_vocab()):
        raise ConfigError(f"trace set {ts.key} was tokenised for {ts.model}, whose "
                          "vocabulary differs from this pair's tokenizer")
    return seqs


def _vocab_of(spec: str | None) -> dict[str, int] | None:
    """The vocabulary of the model a trace set was made with (None when it is not on
    this machine: then only the id range is checked)."""
    from ..errors import InterpError
    from ..models import load_tokenizer, local_checkpoint, resolve

    try:
        if not spec or resolve(str(spec)).source == "hub":
            return None
        return load_tokenizer(local_checkpoint(str(spec))[1]).get_vocab()
    except InterpError:
        return None


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
        check_source(source)
        if batch_size < 1:
            raise ConfigError("batch_size must be at least 1")
        self.tok, self.batch_size, self.seed = tokenizer, batch_size, seed
        self.source, self.split, self.max_len = source, split, max_len
        self.vocab_size = vocab_size or len(tokenizer)
        self.trace_kwargs = dict(trace_kwargs or {})
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = int(pad) if pad is not None else 0
        self.seqs = traceset_records(source[len(TRACESET):], split, tokenizer,
                                     self.vocab_size) if source.startswith(TRACESET) else None

    def texts(self, step: int) -> list[tuple[str, dict[str, Any]]]:
        """The traces (text, labels) of batch ``step`` (``traces`` source only)."""
        from ..organisms.task import make_trace, sample_problems

        probs = sample_problems(self.batch_size, seed=_seed(self.seed, step, 0), split=self.split)
        rng = np.random.default_rng(_seed(self.seed, step, 1))
        return [make_trace(p, rng, **self.trace_kwargs) for p in probs]

    def traceset_batch(self, step: int) -> list[list[int]]:
        """Batch ``step`` of a trace set: training draws every trace once per pass in an
        order seeded by ``(seed, pass)``; evaluation takes the traces in order."""
        n, b = len(self.seqs), self.batch_size
        if self.split != "train":
            return [self.seqs[(step * b + i) % n] for i in range(b)]
        out = []
        for i in range(step * b, step * b + b):
            ep, j = divmod(i, n)
            order = np.random.default_rng(_seed(self.seed, ep, 5)).permutation(n)
            out.append(self.seqs[int(order[j])])
        return out

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.seqs is not None:
            return pad_batch(self.traceset_batch(step), self.pad_id, self.max_len)
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
