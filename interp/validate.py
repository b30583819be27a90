"""Input validation shared by every boundary: the CLI, the app's URL parameters and the
Python API entry points.

Each helper either returns the value in its checked type or raises a typed
:class:`~interp.errors.InterpError` whose message is one line naming the input, what was
wrong with it and what is allowed, e.g. ``α must be a finite number, got nan``. The CLI
prints that line as ``error: ...``; pages show it with ``st.error`` / ``st.warning``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any, Iterable, Mapping, Sequence

from .errors import ConfigError, NonFiniteError


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def finite(value: Any, name: str) -> float:
    """``value`` as a finite float (ints and numeric strings accepted; bools are not)."""
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a number, got {_show(value)}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {_show(value)}") from None
    if not math.isfinite(x):
        raise ConfigError(f"{name} must be a finite number, got {_show(value)}")
    return x


def finite_values(values: Any, name: str) -> list[float]:
    """Every entry of a sequence (or a tensor / array) as finite floats."""
    if hasattr(values, "tolist"):
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        values = [values]
    flat: list[Any] = []
    for v in values:
        flat.extend(v if isinstance(v, (list, tuple)) else [v])
    return [finite(v, f"{name}[{i}]" if len(flat) > 1 else name) for i, v in enumerate(flat)]


def number(value: Any, name: str, *, lo: float | None = None, hi: float | None = None,
           integer: bool = False, lo_open: bool = False) -> Any:
    """A finite number (an ``int`` when ``integer``) within ``[lo, hi]`` (``(lo, hi]``
    with ``lo_open``); ``None`` bounds are open ends."""
    if integer:
        if isinstance(value, bool):
            raise ConfigError(f"{name} must be an integer, got {_show(value)}")
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise ConfigError(f"{name} must be an integer, got {_show(value)}") from None
        x = finite(value, name)
        if x != int(x):
            raise ConfigError(f"{name} must be an integer, got {_show(value)}")
        x = int(x)
    else:
        x = finite(value, name)
    if lo is not None and (x <= lo if lo_open else x < lo):
        raise ConfigError(f"{name} must be {'>' if lo_open else '>='} {lo:g}, got {_show(value)}")
    if hi is not None and x > hi:
        raise ConfigError(f"{name} must be <= {hi:g}, got {_show(value)}")
    return x


def one_of(value: Any, name: str, options: Iterable[Any]) -> Any:
    opts = list(options)
    if value not in opts:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, opts))}; "
                          f"got {_show(value)}")
    return value


def parse_json(text: str, what: str) -> Any:
    """JSON text given on a command line or in a file; ConfigError with the position."""
    try:
        return json.loads(text)
    except ValueError as e:
        raise ConfigError(f"{what} is not valid JSON ({e}): {_show(text)}") from None


def parse_json_object(text: str, what: str) -> dict[str, Any]:
    obj = parse_json(text, what)
    if not isinstance(obj, dict):
        raise ConfigError(f"{what} must be a JSON object {{...}}, got {_show(obj)}")
    return obj


def jsonl_record(line: str, file_name: str, line_no: int) -> dict[str, Any]:
    """One line of a JSONL file as a JSON object (ConfigError naming the file and line
    otherwise)."""
    try:
        r = json.loads(line)
    except ValueError as e:
        raise ConfigError(f"{file_name} line {line_no} is not JSON: {e}") from e
    if not isinstance(r, dict):
        raise ConfigError(f"{file_name} line {line_no} is not a JSON object")
    return r


def parse_sets(pairs: Sequence[str] | None) -> dict[str, Any]:
    """``["k=v", ...]`` from ``--set`` -> dict; values parsed as JSON when they are JSON
    (numbers, lists, true/false/null), else kept as strings (the config's types decide
    later whether a string is acceptable)."""
    out: dict[str, Any] = {}
    for item in pairs or []:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise ConfigError(f"--set expects key=value, got {_show(item)}")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except ValueError:
            out[k.strip()] = v
    return out


def _kind(tp: Any) -> tuple[set[type], bool]:
    """(basic types allowed, None allowed) of a field annotation."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        kinds: set[type] = set()
        optional = False
        for a in typing.get_args(tp):
            if a is type(None):
                optional = True
            else:
                kinds |= _kind(a)[0]
        return kinds, optional
    if tp in (int, float, bool, str):
        return {tp}, False
    return {object}, False


def coerce_value(value: Any, tp: Any, name: str) -> Any:
    """``value`` checked (and, for numbers, converted) against a simple annotation:
    ``int``, ``float``, ``bool``, ``str`` or an optional / union of them."""
    kinds, optional = _kind(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name} must not be null")
    if object in kinds:
        return value
    if bool in kinds and isinstance(value, bool):
        return value
    if int in kinds and not isinstance(value, bool):
        try:
            return number(value, name, integer=True)
        except ConfigError:
            if float not in kinds and str not in kinds:
                raise
    if float in kinds and not isinstance(value, (bool, str)):
        return finite(value, name)
    if float in kinds and isinstance(value, str) and str not in kinds:
        return finite(value, name)
    if str in kinds and isinstance(value, str):
        return value
    names = " or ".join(sorted(("an integer" if k is int else "a number" if k is float
                                else "true/false" if k is bool else "text")
                               for k in kinds))
    raise ConfigError(f"{name} must be {names}, got {_show(value)}")


def dataclass_from_dict(cls: type, d: Mapping[str, Any], what: str = "option") -> Any:
    """``cls(**d)`` after checking that every key is a field and every value has the
    field's type (numbers converted, NaN and infinity refused)."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"the {what}s must be a JSON object, got {_show(d)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise ConfigError(f"unknown {what}(s): {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(names))}")
    return cls(**{k: coerce_value(v, hints[k], k) for k, v in d.items()})


def typed_like(value: Any, default: Any, name: str) -> Any:
    """``value`` checked against the type of a default (a settings table without
    annotations): numbers stay numbers, text stays text, lists stay lists."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        return coerce_value(value, bool, name)
    if isinstance(default, int):
        return coerce_value(value, int, name)
    if isinstance(default, float):
        return coerce_value(value, float, name)
    if isinstance(default, str):
        return coerce_value(value, str, name)
    if isinstance(default, (list, tuple)) and not isinstance(value, (list, tuple)):
        raise ConfigError(f"{name} must be a list, got {_show(value)}")
    if isinstance(default, dict) and not isinstance(value, dict):
        raise ConfigError(f"{name} must be a JSON object, got {_show(value)}")
    return value


def finite_tensors(tensors: Mapping[str, Any], what: str) -> None:
    """Raise :class:`NonFiniteError` naming the first tensor holding NaN or infinity."""
    import torch

    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() \
                and not bool(torch.isfinite(t).all()):
            n_bad = int((~torch.isfinite(t)).sum())
            raise NonFiniteError(f"{what}: tensor {name!r} holds {n_bad} NaN/infinite "
                                 f"value(s) of {t.numel()}; nothing was saved")


def positive_int(value: Any, name: str) -> int:
    return number(value, name, lo=1, integer=True)


def url_value(raw: str, default: Any, cast: Any = str, *, options: Sequence[Any] | None = None,
              min_value: float | None = None, max_value: float | None = None,
              max_chars: int | None = None) -> tuple[Any, str | None]:
    """A value typed into a link (``?key=raw``), checked before any widget is built:
    ``(value, problem)``; ``problem`` is None when ``raw`` is usable as is, else one line
    saying why another value is used: a value that does not parse, is NaN / infinite or
    is not one of ``options`` falls back to ``default``; a number outside
    ``[min_value, max_value]`` is clamped to the nearest end; text longer than
    ``max_chars`` is cut."""
    kind = {int: "an integer", float: "a number"}.get(cast, "a valid value")
    try:
        v = cast(raw)
    except (TypeError, ValueError, OverflowError):
        return default, f"is not {kind}"
    if isinstance(v, float) and not math.isfinite(v):
        return default, "is not a finite number"
    if options is not None:
        opts = list(options)
        if v not in opts:
            shown = ", ".join(map(str, opts[:8])) + (", ..." if len(opts) > 8 else "")
            return default, f"is not one of {shown}"
        return v, None
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        num = type(default) if isinstance(default, (int, float)) and \
            not isinstance(default, bool) else type(v)
        if min_value is not None and v < min_value:
            return num(min_value), f"is below the minimum {min_value:g}"
        if max_value is not None and v > max_value:
            return num(max_value), f"is above the maximum {max_value:g}"
    if max_chars is not None and isinstance(v, str) and len(v) > max_chars:
        return v[:max_chars], f"is longer than {max_chars} characters"
    return v, None
