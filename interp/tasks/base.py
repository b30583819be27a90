"""The task interface every pipeline reads its prompts, answers and markers from.

A :class:`Task` gives

* ``items(n, split, seed)``: :class:`TaskItem` s (an id, the prompt as the user wrote it,
  an optional reference ``answer``, an optional reference ``trace``);
* ``encode(item, tokenizer)``: the prompt's token ids as the model reads them (the chat
  template with the thinking switch on, when the tokenizer has one; the organisms' own
  format for the organisms);
* ``score(item, completion)``: ``{"correct": bool | None, "answer": str | None}``
  (``correct`` None when the item has no reference answer);
* ``markers(tokenizer)``: the thinking markers (:class:`~.markers.ThinkMarkers`) and
  ``hesitation_words``;
* ``describe()``: what identifies the task in an artifact's config (name, file hash).

Splits: ``"train"`` and ``"eval"`` are disjoint (a file's records carry an optional
``split`` field; otherwise a hash of the record's id puts a quarter of them in
``eval``), ``"all"`` is every item.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..errors import ConfigError, PromptError
from .markers import DEFAULT_HESITATIONS, ThinkMarkers, detect_markers, render_chat

SPLITS = ("train", "eval", "all")
EVAL_SHARE = 0.25


@dataclass
class TaskItem:
    """One prompt of a task."""

    id: str
    prompt: str
    answer: str | None = None
    trace: str | None = None
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def hash_split(item_id: str) -> str:
    """``eval`` for about :data:`EVAL_SHARE` of ids (a salted hash), else ``train``."""
    h = int.from_bytes(hashlib.blake2b(f"split:{item_id}".encode(), digest_size=2).digest(),
                       "big")
    return "eval" if h < EVAL_SHARE * 65536 else "train"


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    return split


class Task:
    """Base class (see the module docstring). Subclasses set ``name``, ``kind`` and
    implement :meth:`items`; file-like tasks hold their items in ``_items``."""

    name: str = "task"
    kind: str = "task"
    organism_only: bool = False      # needs the organisms' tokenizer and formats
    hesitation_words: tuple[str, ...] = DEFAULT_HESITATIONS
    marker_overrides: dict[str, Any] | None = None
    chat: str = "auto"               # auto | on | off: render prompts with the chat template

    def items(self, n: int | None = None, split: str = "all", seed: int = 0
              ) -> list[TaskItem]:
        raise NotImplementedError

    # -- prompts -----------------------------------------------------------------
    def use_chat(self, tokenizer) -> bool:
        if self.chat == "off":
            return False
        has = bool(getattr(tokenizer, "chat_template", None))
        if self.chat == "on" and not has:
            raise ConfigError("chat=on but the model's tokenizer has no chat template")
        return has

    def prompt_text(self, item: TaskItem, tokenizer) -> str:
        """The text the model continues (chat template applied when used)."""
        if self.use_chat(tokenizer):
            return render_chat(tokenizer, item.prompt, thinking=True)
        return item.prompt

    def encode(self, item: TaskItem, tokenizer) -> list[int]:
        """Prompt token ids: a rendered chat template is tokenised without adding
        special tokens (it holds them), a plain prompt with them."""
        chat = self.use_chat(tokenizer)
        text = self.prompt_text(item, tokenizer)
        ids = list(tokenizer(text, add_special_tokens=not chat)["input_ids"])
        if not ids:
            raise PromptError(f"prompt {item.id!r} has no tokens")
        return ids

    def encode_all(self, items: Sequence[TaskItem], tokenizer) -> list[list[int]]:
        return [self.encode(it, tokenizer) for it in items]

    # -- markers -----------------------------------------------------------------
    def markers(self, tokenizer) -> ThinkMarkers:
        """The model's markers (:func:`detect_markers`) with this task's overrides."""
        det = detect_markers(tokenizer, self.hesitation_words[0])
        m = det.markers.to_dict()
        m.update(self.marker_overrides or {})
        return ThinkMarkers.from_dict(m)

    # -- answers -----------------------------------------------------------------
    @property
    def has_answers(self) -> bool:
        return any(it.answer is not None for it in self.items(None, "all"))

    def score(self, item: TaskItem, completion: str, markers: ThinkMarkers | None = None
              ) -> dict[str, Any]:
        pred = extract_answer(completion, markers)
        if item.answer is None:
            return {"correct": None, "answer": pred}
        return {"correct": answers_match(pred, item.answer), "answer": pred}

    def scorer(self, items: Sequence[TaskItem], markers: ThinkMarkers | None = None):
        """``scorer(row, text)`` over ``items`` (the length pipeline's signature)."""
        def fn(row: int, text: str) -> dict[str, Any]:
            return self.score(items[row % len(items)], text, markers)
        return fn

    def describe(self) -> dict[str, Any]:
        return {"task": self.name, "kind": self.kind}


# --------------------------------------------------------------------------- answers
def boxed_contents(text: str) -> list[str]:
    r"""The contents of every ``\boxed{...}`` (and ``\fbox{...}``) in ``text``, braces
    balanced, in order."""
    out = []
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append(text[m.end(): i - 1].strip())
    return out


def answer_part(completion: str, markers: ThinkMarkers | None = None) -> str:
    """The text after the think block's close marker (all of it when there is none)."""
    close = markers.think_close if markers is not None else "</think>"
    if close and close in completion:
        return completion.split(close)[-1]
    return completion


_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_answer(completion: str, markers: ThinkMarkers | None = None) -> str | None:
    r"""The model's final answer: the last ``\boxed{}`` after the thinking, else the last
    number there, else its last non-empty line (None when there is no text)."""
    part = answer_part(completion, markers)
    for s in ("<eos>", "<|im_end|>", "<|endoftext|>", "<｜end▁of▁sentence｜>"):
        part = part.replace(s, " ")
    boxed = boxed_contents(part)
    if boxed:
        return boxed[-1]
    nums = _NUM.findall(part)
    if nums:
        return nums[-1].replace(",", "")
    lines = [ln.strip() for ln in part.splitlines() if ln.strip()]
    return lines[-1] if lines else None


def _norm(s: str) -> str:
    s = s.strip().rstrip(".").strip().strip("$").strip().rstrip(".").strip()
    return re.sub(r"\s+", " ", s).lower()


def answers_match(pred: str | None, ref: str) -> bool:
    """Exact match after normalising case, whitespace, ``$`` and a final period; numbers
    compare by value (``0.50`` = ``.5``, ``1,000`` = ``1000``)."""
    if pred is None:
        return False
    a, b = _norm(pred), _norm(str(ref))
    if a == b:
        return True
    try:
        return abs(float(a.replace(",", "")) - float(b.replace(",", ""))) <= 1e-9 * max(
            1.0, abs(float(b.replace(",", ""))))
    except ValueError:
        return False
