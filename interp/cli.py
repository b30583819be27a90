"""``python -m interp``: reports, benchmarks and headless jobs.

``report NAME --json`` and ``bench NAME --json`` print one JSON object on the last
line of stdout; progress and logs go to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import sys
import traceback
from typing import Any, Callable

from .errors import InterpError
from .registry import BENCHES, COMMAND_MODULES, REPORTS


def _resolve(target: str) -> Callable[..., Any]:
    mod, fn = target.split(":")
    return getattr(importlib.import_module(mod), fn)


def _jsonable(obj: Any) -> Any:
    """Plain floats/ints/bools/lists/dicts; NaN/inf become null (valid JSON)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def emit(result: dict[str, Any], as_json: bool) -> None:
    """Print a result: one JSON line (``--json``) or an indented listing."""
    clean = _jsonable(result)
    if as_json:
        print(json.dumps(clean, sort_keys=True))
    else:
        print(json.dumps(clean, indent=2, sort_keys=True))


def _run_named(table: dict[str, str], what: str, args: argparse.Namespace) -> int:
    if args.name not in table:
        print(f"unknown {what} {args.name!r}; choose from: {', '.join(sorted(table))}",
              file=sys.stderr)
        return 2
    try:
        fn = _resolve(table[args.name])
    except (ImportError, AttributeError) as e:
        print(f"{what} {args.name!r} is not available in this version ({e})", file=sys.stderr)
        return 2
    result = fn(args)
    emit(result, args.json)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m interp",
        description="Interpretability and model diffing of reasoning language models.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging to stderr")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("report", help="print figures read from saved artifacts")
    r.add_argument("name", help=", ".join(sorted(REPORTS)))
    r.add_argument("--json", action="store_true", help="one JSON object on the last line")
    r.add_argument("--recompute", action="store_true",
                   help="rebuild the artifacts the report reads (may take a while)")
    r.add_argument("--device", default="auto")
    r.set_defaults(func=lambda a: _run_named(REPORTS, "report", a))

    b = sub.add_parser("bench", help="run a benchmark now and print its figures")
    b.add_argument("name", help=", ".join(sorted(BENCHES)))
    b.add_argument("--json", action="store_true", help="one JSON object on the last line")
    b.add_argument("--device", default="auto")
    b.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    b.set_defaults(func=lambda a: _run_named(BENCHES, "bench", a))

    for mod in COMMAND_MODULES:
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name and mod.startswith(e.name):
                continue  # capability not present in this version
            raise
        m.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command. Every failure ends as one ``error: ...`` line on stderr and a
    non-zero exit: a typed error's own message, a file-system error (full disk,
    read-only cache) as a StorageError, anything unexpected with its type (``-v`` adds
    the traceback)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        _check_common_options(args)
        return int(args.func(args) or 0)
    except InterpError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        from .store import storage_error

        if args.verbose:
            traceback.print_exc()
        print(f"error: {storage_error(e, 'running the command')}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - never a traceback for a user
        if args.verbose:
            traceback.print_exc()
        print(f"error: unexpected {type(e).__name__}: {_one_line(e)} (rerun with -v for the "
              "traceback)", file=sys.stderr)
        return 1


def _check_common_options(args: argparse.Namespace) -> None:
    """Options many commands share, checked before any work starts: ``--device`` (a known
    name, present on this machine) and ``--dtype``."""
    from .models import pick_device, pick_dtype

    device = getattr(args, "device", None)
    if isinstance(device, str) and device:
        dev = pick_device(device)
        dtype = getattr(args, "dtype", None)
        if isinstance(dtype, str) and dtype:
            pick_dtype(dev, dtype)


def _one_line(e: BaseException) -> str:
    """The message of ``e``; a multi-line message (e.g. a PairMismatchError listing
    differences) keeps its lines, anything else is cut to its first line."""
    text = str(e).strip()
    if "\n  - " in text:
        return text
    return text.splitlines()[0] if text else type(e).__name__
