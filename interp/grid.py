"""Typed grids of values: the α values of a sweep, the layers or positions to look at,
how many heads to edit, written as a person types them.

``parse_grid("-2,-1,0,1,2", "α")`` and ``parse_grid("-2:2:1", "α")`` both give
``[-2.0, -1.0, 0.0, 1.0, 2.0]``. Items are separated by commas, semicolons or spaces;
an item ``start:stop:step`` is an inclusive range (``start:stop`` steps by 1); the
typographic minus ``−`` reads as ``-``. Values keep the order typed, repeats are dropped.
Every problem raises :class:`~interp.errors.GridError` with one line naming the input,
the item at fault and what is allowed, e.g. ``α: 'x' is not a number (item 2 of
"0, x")``.

:func:`format_grid` writes a grid back in the short form a link keeps.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

from .errors import GridError

MAX_VALUES = 256      # a grid longer than this is almost surely a typo (a step too small)
_SEP = re.compile(r"[,;\s]+")


def _number(text: str, name: str, item: str, where: str, integer: bool) -> float:
    try:
        x = float(text)
    except ValueError:
        raise GridError(f"{name}: {text!r} is not a number ({where})") from None
    if not math.isfinite(x):
        raise GridError(f"{name}: {text!r} is not a finite number ({where})")
    if integer and x != int(x):
        raise GridError(f"{name}: {text!r} is not a whole number ({where})")
    return x


def parse_grid(text: str | Sequence[float], name: str, *, integer: bool = False,
               lo: float | None = None, hi: float | None = None,
               max_values: int = MAX_VALUES, min_values: int = 1) -> list:
    """The values of ``text`` (see the module doc) as floats, or ints with ``integer``;
    each within ``[lo, hi]`` (None: open), at least ``min_values`` and at most
    ``max_values`` of them. A list of numbers is checked the same way."""
    if not isinstance(text, str):
        text = ",".join(str(v) for v in text)
    shown = text if len(text) <= 40 else text[:37] + "..."
    text = re.sub(r"\s*:\s*", ":", text.replace("−", "-").strip())
    items = [t for t in _SEP.split(text) if t]
    out: list[float] = []
    for k, item in enumerate(items, 1):
        where = f"item {k} of {shown!r}"
        parts = item.split(":")
        if len(parts) == 1:
            vals = [_number(parts[0], name, item, where, integer)]
        elif len(parts) in (2, 3):
            if any(not p for p in parts):
                raise GridError(f"{name}: {item!r} is not a range start:stop:step ({where})")
            a, b = (_number(p, name, item, where, integer) for p in parts[:2])
            step = _number(parts[2], name, item, where, integer) if len(parts) == 3 else 1.0
            if step == 0:
                raise GridError(f"{name}: the step of {item!r} is 0 ({where})")
            if (b - a) * step < 0:
                raise GridError(f"{name}: {item!r} never reaches {parts[1]} with step "
                                f"{parts[2] if len(parts) == 3 else 1} ({where}); use a "
                                f"{'negative' if step > 0 else 'positive'} step")
            n = int(math.floor((b - a) / step + 1e-9)) + 1
            if n > max_values:
                raise GridError(f"{name}: {item!r} has {n} values, more than {max_values} "
                                f"({where})")
            # round away float noise (0.1 * 3 = 0.30000000000000004)
            vals = [round(a + i * step, 10) for i in range(n)]
        else:
            raise GridError(f"{name}: {item!r} is not a number or a range "
                            f"start:stop:step ({where})")
        out.extend(vals)
        if len(out) > max_values:
            raise GridError(f"{name}: more than {max_values} values in {shown!r}")
    seen: set[float] = set()
    uniq = [x for x in out if not (x in seen or seen.add(x))]
    if len(uniq) < min_values:
        raise GridError(f"{name}: give at least {min_values} value"
                        f"{'s' if min_values > 1 else ''} (got {len(uniq)} from {shown!r})")
    for x in uniq:
        if lo is not None and x < lo or hi is not None and x > hi:
            rng = (f"between {lo:g} and {hi:g}" if lo is not None and hi is not None
                   else f">= {lo:g}" if lo is not None else f"<= {hi:g}")
            raise GridError(f"{name}: {x:g} is out of range; values must be {rng}")
    return [int(x) for x in uniq] if integer else [float(x) for x in uniq]


def format_grid(values: Sequence[float]) -> str:
    """``[-1.0, 0.0, 0.5]`` -> ``"-1,0,0.5"`` (what a link keeps; parses back the same)."""
    return ",".join(str(int(v)) if float(v) == int(v) and abs(v) < 1e15 else repr(float(v))
                    for v in values)
