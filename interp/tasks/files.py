"""A user's file as a task: JSONL records or plain text, one prompt per line.

JSONL: one object per line with ``prompt`` (required; ``problem`` or ``question`` are read
as the prompt too), and optional ``answer`` (the reference final answer), ``trace`` (a
reference reasoning trace: thinking and answer, as a model would write it after the
prompt), ``id`` and ``split`` (``train`` / ``eval``). Plain text: every non-empty line is
a prompt. The file's SHA-256 identifies the task in artifacts, so an edited file is a new
task. Answers are scored by :func:`~.base.extract_answer` + :func:`~.base.answers_match`
(``\\boxed{}`` first, then the last number, then the last line, after the think block).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..validate import jsonl_record
from .base import Task, TaskItem, check_split, hash_split

PROMPT_FIELDS = ("prompt", "problem", "question")


def read_records(path: str | Path) -> tuple[list[dict[str, Any]], str]:
    """Records of a JSONL or text file and the file's SHA-256 (ConfigError naming the
    line when a record is bad)."""
    p = Path(path).expanduser()
    try:
        data = p.read_bytes()
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the task file {p}: {e}") from e
    digest = hashlib.sha256(data).hexdigest()
    lines = [(i + 1, ln) for i, ln in enumerate(text.splitlines()) if ln.strip()]
    if not lines:
        raise ConfigError(f"the task file {p} has no prompts")
    jsonl = p.suffix.lower() in (".jsonl", ".json") or lines[0][1].lstrip().startswith("{")
    recs: list[dict[str, Any]] = []
    for no, ln in lines:
        if not jsonl:
            recs.append({"prompt": ln.strip(), "id": f"line{no}"})
            continue
        r = jsonl_record(ln, p.name, no)
        prompt = next((r[k] for k in PROMPT_FIELDS if isinstance(r.get(k), str)), None)
        if not prompt or not prompt.strip():
            raise ConfigError(f"{p.name} line {no} has no 'prompt' text")
        for k in ("answer", "trace"):
            if r.get(k) is not None and not isinstance(r[k], (str, int, float)):
                raise ConfigError(f"{p.name} line {no}: '{k}' must be a text or number")
        if r.get("split") not in (None, "train", "eval"):
            raise ConfigError(f"{p.name} line {no}: split must be 'train' or 'eval'")
        recs.append({**r, "prompt": prompt, "id": str(r.get("id", f"line{no}"))})
    ids = [r["id"] for r in recs]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ConfigError(f"{p.name}: id {dup!r} is used twice")
    return recs, digest


class FileTask(Task):
    """Prompts (and optional answers and traces) from a user's file."""

    kind = "file"

    def __init__(self, path: str | Path, chat: str = "auto",
                 markers: dict[str, Any] | None = None):
        self.path = Path(path).expanduser()
        self.records, self.sha256 = read_records(self.path)
        self.name = f"file:{self.path}"
        if chat not in ("auto", "on", "off"):
            raise ConfigError(f"chat must be auto, on or off, not {chat!r}")
        self.chat = chat
        self.marker_overrides = dict(markers or {})
        self._items = [self._item(r) for r in self.records]

    def _item(self, r: dict[str, Any]) -> TaskItem:
        ans = r.get("answer")
        return TaskItem(r["id"], r["prompt"], None if ans is None else str(ans),
                        r.get("trace"), r.get("split") or hash_split(r["id"]))

    def items(self, n: int | None = None, split: str = "all", seed: int = 0
              ) -> list[TaskItem]:
        split = check_split(split)
        got = [it for it in self._items if split == "all" or it.split == split]
        if not got:
            raise ConfigError(f"{self.path.name} has no prompts in the {split!r} split "
                              f"({len(self._items)} in all): give the records a 'split' "
                              "field or use split 'all'")
        return got[:n] if n else got

    def describe(self) -> dict[str, Any]:
        return {"task": self.name, "kind": self.kind, "sha256": self.sha256,
                "n": len(self._items), "chat": self.chat,
                "markers": self.marker_overrides or None}
