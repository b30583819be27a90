"""Tasks: where every pipeline gets its prompts, reference answers, answer scorer,
thinking markers and hesitation tokens; and trace sets, the stored generations of a
model over a task's prompts.

A task spec (CLI ``--task``, job specs, the app) is one of

* ``organisms``: the organisms' arithmetic (:mod:`.organisms`; organism models only);
* ``FILE.jsonl`` / ``FILE.txt`` or ``file:FILE``: a user's file (:mod:`.files`);
* ``math:FILE.jsonl`` or ``math:arith``: math problems scored by math-verify
  (:mod:`.math`).

:func:`get_task` parses a spec; :mod:`.markers` reads markers and hesitation tokens from a
model; :mod:`.traces` generates, imports and loads trace sets; :mod:`.corpus` turns a trace
set into feature-collection sequences.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .base import SPLITS, Task, TaskItem, answers_match, extract_answer
from .markers import (
    MarkerDetection,
    ThinkMarkers,
    detect_markers,
    hesitation_id_set,
    hesitation_ids,
    marker_report,
    require_markers,
)
from .organisms import OrganismTask, check_pair, is_organism_spec, speaks_organism

TASK_HELP = ("organisms | FILE.jsonl | FILE.txt | file:FILE | math:FILE.jsonl | "
             "math:arith")


def get_task(spec: str | Task | None, *, chat: str = "auto",
             markers: dict[str, Any] | None = None) -> Task:
    """A task from its spec (see the module docstring); ``chat`` (auto | on | off) and
    ``markers`` (ThinkMarkers fields) apply to file and math tasks."""
    if isinstance(spec, Task):
        return spec
    s = (spec or "").strip()
    if not s:
        raise ConfigError(f"no task given; use one of: {TASK_HELP}")
    if s in ("organisms", "organism"):
        return OrganismTask()
    if s.startswith("math:"):
        from .math import MathTask

        src = s[len("math:"):]
        if src.startswith("arith"):
            n, seed = 400, 0
            for part in src[len("arith"):].strip("()").split(","):
                if "=" in part:
                    k, v = part.split("=", 1)
                    if k.strip() not in ("n", "seed"):
                        raise ConfigError(f"math:arith takes n= and seed=, not {k!r}")
                    try:
                        n, seed = (int(v), seed) if k.strip() == "n" else (n, int(v))
                    except ValueError:
                        raise ConfigError(f"math:arith {k.strip()} must be an integer") \
                            from None
            return MathTask("arith", n=n, seed=seed, chat=chat, markers=markers)
        return MathTask(src, chat=chat, markers=markers)
    from .files import FileTask

    path = s[len("file:"):] if s.startswith("file:") else s
    from pathlib import Path

    if not Path(path).expanduser().is_file():
        raise ConfigError(f"unknown task {spec!r}: not a file; use one of: {TASK_HELP}")
    return FileTask(path, chat=chat, markers=markers)


__all__ = [
    "SPLITS", "TASK_HELP", "MarkerDetection", "OrganismTask", "Task", "TaskItem",
    "ThinkMarkers", "answers_match", "check_pair", "detect_markers", "extract_answer",
    "get_task", "hesitation_id_set", "hesitation_ids", "is_organism_spec", "marker_report",
    "require_markers", "speaks_organism",
]
