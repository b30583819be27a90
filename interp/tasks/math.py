r"""Math problems with ``\boxed{}`` answers, scored by math-verify.

Sources: a JSONL file (``math:FILE.jsonl``; records with ``problem`` or ``prompt``, and
``answer``, or a ``solution`` whose last ``\boxed{}`` is the answer: the MATH / MATH-500
layout), or the built-in ``math:arith`` set (integer arithmetic in words, from one-step
sums to four-step expressions, generated from a seed: short and long problems for the
length direction without any file). Each prompt gets DeepSeek-R1's instruction "Please
reason step by step, and put your final answer within \boxed{}.".

Scoring parses the reference and the text after the think block with math-verify
(Hugging Face's answer checker: LaTeX and plain expressions, equivalent forms such as
``\frac{1}{2}`` = ``0.5``, boxed answers first) and compares them symbolically. It is
imported when a math task is made; without it the task says how to install it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .base import Task, TaskItem, answer_part, boxed_contents, check_split, hash_split
from .files import FileTask
from .markers import ThinkMarkers

INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
MATH_VERIFY_PIN = "math-verify==0.9.0"


def math_verify():
    """The math_verify module, or ConfigError saying how to install it."""
    try:
        import math_verify as mv
    except ImportError:
        raise ConfigError(
            f"the math task scores answers with math-verify, which is not installed: "
            f"pip install {MATH_VERIFY_PIN}") from None
    return mv


def verify_answer(pred_text: str, gold: str) -> tuple[bool, str | None]:
    """``(correct, extracted answer)``: math-verify's parse of ``pred_text`` against the
    reference ``gold`` (wrapped in ``$…$`` when it is bare LaTeX)."""
    mv = math_verify()
    # math-verify times parsing with signal.alarm, which only the main thread may use
    main = threading.current_thread() is threading.main_thread()
    kw_p = {} if main else {"parsing_timeout": None}
    kw_v = {} if main else {"timeout_seconds": None}
    g = gold.strip()
    gold_p = mv.parse(g if "$" in g or "\\boxed" in g else f"${g}$", **kw_p) or \
        mv.parse(g, **kw_p)
    pred_p = mv.parse(pred_text, **kw_p)
    shown = str(pred_p[-1]) if pred_p else None
    if not gold_p or not pred_p:
        return False, shown
    return bool(mv.verify(gold_p, pred_p, **kw_v)), shown


def arith_problems(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` integer problems, a quarter each with 1, 2, 3 and 4 operations (operands
    2..99; ``-`` and ``*`` among ``+``): ``{"id", "problem", "answer", "steps"}``."""
    rng = np.random.default_rng([seed, 29])
    out = []
    for i in range(n):
        steps = 1 + i % 4
        nums = [int(x) for x in rng.integers(2, 100, steps + 1)]
        ops = [str(rng.choice(["+", "-", "*"])) for _ in range(steps)]
        expr = str(nums[0])
        for op, x in zip(ops, nums[1:]):
            expr = f"({expr} {op} {x})" if op == "*" and steps > 1 else f"{expr} {op} {x}"
        val = eval(expr, {"__builtins__": {}})   # digits and + - * ( ) only
        words = expr.replace("*", "×")
        out.append({"id": f"arith-{seed}-{i}", "problem": f"Compute {words}.",
                    "answer": str(val), "steps": steps})
    return out


class MathTask(Task):
    kind = "math"
    hesitation_words = ("wait",)

    def __init__(self, source: str = "arith", n: int = 400, seed: int = 0,
                 chat: str = "auto", markers: dict[str, Any] | None = None):
        math_verify()
        self.source, self.chat = source, chat
        self.marker_overrides = dict(markers or {})
        if source == "arith":
            recs = arith_problems(n, seed)
            self.sha256 = None
            self.name = f"math:arith(n={n},seed={seed})"
            self.n, self.seed = n, seed
        else:
            ft = FileTask(source)
            recs, self.sha256 = ft.records, ft.sha256
            self.name = f"math:{ft.path}"
        self._items = []
        for r in recs:
            ans = r.get("answer")
            if ans is None and isinstance(r.get("solution"), str):
                box = boxed_contents(r["solution"])
                ans = box[-1] if box else None
            if ans is None:
                raise ConfigError(f"math problem {r['id']!r} has no answer (give 'answer', "
                                  "or a 'solution' with a \\boxed{} answer)")
            prompt = str(r.get("problem") or r["prompt"]).strip()
            self._items.append(TaskItem(r["id"], f"{prompt}\n{INSTRUCTION}", str(ans),
                                        r.get("trace"), r.get("split") or hash_split(r["id"]),
                                        {"steps": r.get("steps")} if "steps" in r else {}))

    def items(self, n: int | None = None, split: str = "all", seed: int = 0
              ) -> list[TaskItem]:
        split = check_split(split)
        got = [it for it in self._items if split == "all" or it.split == split]
        if not got:
            raise ConfigError(f"the math task {self.name} has no problems in the {split!r} "
                              "split")
        return got[:n] if n else got

    @property
    def has_answers(self) -> bool:
        return True

    def score(self, item: TaskItem, completion: str, markers: ThinkMarkers | None = None
              ) -> dict[str, Any]:
        ok, shown = verify_answer(answer_part(completion, markers), item.answer or "")
        return {"correct": ok, "answer": shown}

    def describe(self) -> dict[str, Any]:
        d = {"task": self.name, "kind": self.kind, "chat": self.chat,
             "markers": self.marker_overrides or None, "instruction": INSTRUCTION}
        if self.source == "arith":
            d.update(source="arith", n=self.n, seed=self.seed)
        else:
            d.update(source=str(Path(self.source)), sha256=self.sha256)
        return d
