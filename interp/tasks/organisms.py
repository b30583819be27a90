"""The organisms' arithmetic as a task: today's prompts, answers, scorer and markers.

Prompts are the ``think`` format (:func:`interp.organisms.task.prompt_text`, ending with
``<think>``), encoded with the organisms' word-level tokenizer (``<bos>`` added); the
reference trace is :func:`~interp.organisms.task.make_trace`'s; scoring is
:func:`~interp.organisms.task.score_completion`. Splits are the organisms' own (a hash of
the operand pair), so train and eval problems never overlap. Only the organism models
read this format: :func:`check_pair` refuses it for other models.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError
from .base import Task, TaskItem, check_split
from .markers import ThinkMarkers


class OrganismTask(Task):
    name = "organisms"
    kind = "organisms"
    organism_only = True

    def __init__(self, fmt: str = "think"):
        from ..organisms.task import FORMATS

        if fmt not in FORMATS:
            raise ConfigError(f"unknown organism format {fmt!r}; choose from {FORMATS}")
        self.fmt = fmt

    def problems(self, n: int, split: str = "eval", seed: int = 0) -> list[Any]:
        from ..organisms.task import sample_problems

        split = check_split(split)
        if split == "all":
            split = "eval"
        return sample_problems(int(n or 256), seed=seed, split=split)

    def items(self, n: int | None = None, split: str = "eval", seed: int = 0
              ) -> list[TaskItem]:
        import numpy as np

        from ..organisms.task import make_trace, prompt_text

        out = []
        rng = np.random.default_rng([seed, 3])
        for p in self.problems(n or 256, split, seed):
            trace, _ = make_trace(p, rng)
            out.append(TaskItem(p.id, prompt_text(p, self.fmt), str(p.answer),
                                trace, split, {"problem": p}))
        return out

    @property
    def has_answers(self) -> bool:
        return True

    def encode(self, item: TaskItem, tokenizer) -> list[int]:
        from ..organisms.task import encode

        return encode(item.prompt)

    def prompt_text(self, item: TaskItem, tokenizer) -> str:
        return item.prompt

    def markers(self, tokenizer=None) -> ThinkMarkers:
        return ThinkMarkers.organism()

    def score(self, item: TaskItem, completion: str, markers: ThinkMarkers | None = None
              ) -> dict[str, Any]:
        from ..organisms.task import score_completion

        s = score_completion(item.meta["problem"], completion, self.fmt)
        return {**s, "answer": None if s["answer"] is None else str(s["answer"])}

    def describe(self) -> dict[str, Any]:
        return {"task": "organisms", "kind": "organisms", "fmt": self.fmt}


def is_organism_spec(spec: str) -> bool:
    return str(spec).strip().startswith("organism:") or str(spec).strip() in (
        "base", "reasoner", "sft", "grpo", "instruct")


def speaks_organism(spec: str) -> bool:
    """Whether a model reads the organisms' format: an ``organism:`` spec, or a checkpoint
    here whose tokenizer maps every organism word to the organisms' id (a copy, an
    edited export or a rebuild of an organism). A hub name or a missing path does not."""
    if is_organism_spec(spec):
        return True
    from ..errors import InterpError
    from ..models import resolve

    try:
        r = resolve(str(spec))
    except InterpError:
        return False
    if r.source not in ("local", "registry"):
        return False
    stamp = tuple((f.name, f.stat().st_mtime_ns) for f in sorted(Path(r.path).glob(
        "tokenizer*.json")))
    return _organism_vocab(str(r.path), stamp)


@lru_cache(maxsize=64)
def _organism_vocab(path: str, stamp: tuple) -> bool:
    """Whether the tokenizer in ``path`` holds the organisms' words at their ids (cached
    per folder and tokenizer files' modification times)."""
    from ..errors import InterpError
    from ..models import load_tokenizer
    from ..organisms.task import TOKEN_ID

    try:
        vocab = load_tokenizer(path).get_vocab()
    except InterpError:
        return False
    return all(vocab.get(w) == i for w, i in TOKEN_ID.items())


def check_pair(task: Task, specs: Sequence[str]) -> None:
    """ConfigError when an organism-only task is asked of a model that does not read the
    organisms' format (:func:`speaks_organism`)."""
    if not task.organism_only:
        return
    others = [s for s in specs if s and not speaks_organism(s)]
    if others:
        raise ConfigError(
            f"the organisms task only runs on the organism models, not on "
            f"{', '.join(others)}: give your own prompts (--task FILE.jsonl, --task "
            "math:FILE.jsonl) or a trace set (--traces KEY)")
