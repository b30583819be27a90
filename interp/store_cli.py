"""``python -m interp store ...``: find damaged artifacts, clean leftovers, delete one.

* ``store check``: every artifact under the store (nested ``cache/demo`` included) whose
  metadata, files, sizes or tensors file do not read back as saved; exit 1 if any.
* ``store clean``: remove the hidden ``.tmp-*`` leftovers of killed writers (those of
  running writers are kept; an artifact a kill left without its folder is put back
  first); ``--dry-run`` only lists them.
* ``store delete KIND KEY``: remove one artifact (complete or damaged).

Each prints one JSON object on the last stdout line.
"""

from __future__ import annotations

import json
import sys

from .store import Store
from .validate import number


def _store(args) -> Store:
    return Store(args.store) if args.store else Store()


def _cmd_check(args) -> int:
    bad = _store(args).check()
    for b in bad:
        print(f"damaged: {b['kind']}/{b['key']}: {b['problem']}", file=sys.stderr)
    print(json.dumps({"damaged": bad}))
    return 1 if bad else 0


def _cmd_clean(args) -> int:
    min_age = number(args.min_age, "--min-age", lo=0)
    out = _store(args).clean(min_age=min_age, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(out['removed'])} leftover(s), put back {len(out['recovered'])} "
          f"artifact(s), kept {len(out['kept'])} of running writers", file=sys.stderr)
    print(json.dumps(out))
    return 0


def _cmd_delete(args) -> int:
    _store(args).delete(args.kind, args.key)
    print(json.dumps({"deleted": f"{args.kind}/{args.key}"}))
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("store", help="artifact store: check, clean leftovers, delete")
    ss = p.add_subparsers(dest="store_command", required=True)
    c = ss.add_parser("check", help="list damaged artifacts (exit 1 if any)")
    c.set_defaults(func=_cmd_check)
    k = ss.add_parser("clean", help="remove leftovers of killed writers (safe while "
                                    "other commands run)")
    k.add_argument("--dry-run", action="store_true", help="only list what would go")
    k.add_argument("--min-age", type=float, default=3600.0,
                   help="seconds; temporaries that name no writer process are removed only "
                        "when older (default 3600)")
    k.set_defaults(func=_cmd_clean)
    d = ss.add_parser("delete", help="remove one artifact")
    d.add_argument("kind")
    d.add_argument("key")
    d.set_defaults(func=_cmd_delete)
    for q in (c, k, d):
        q.add_argument("--store", help="store root (default: the project's cache/)")
