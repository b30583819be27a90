"""``python -m interp tasks|traces ...``: look at a task, make and inspect trace sets.

    python -m interp tasks show TASK [--model SPEC] [--n 3]
    python -m interp traces generate --model SPEC --task TASK [--n N] [--split S]
                                     [--max-new-tokens N] [--temperature T] [--top-p P]
                                     [--seed S] [--batch-size B] [--chunk C] [--chat auto]
                                     [--markers JSON] [--device D] [--dtype D] [--background]
    python -m interp traces import FILE.jsonl --model SPEC [--chat auto] [--markers JSON]
    python -m interp traces list
    python -m interp traces show [KEY] [--n 2]

``tasks show`` prints the task's first prompts and, with a model, the markers and
hesitation tokens read from it and the first prompt as the model will read it.
``traces generate`` runs the ``traces.generate`` job (resumable; a progress bar on
stderr). Each command prints one JSON object on the last stdout line; a trace set whose
generations hold no think-close marker is saved, and the message saying so goes to stderr.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _markers_arg(text: str | None) -> dict[str, Any] | None:
    from ..validate import parse_json_object

    return parse_json_object(text, "--markers") if text else None


def _cmd_show(args) -> int:
    from . import get_task
    from .markers import detect_markers, hesitation_ids

    task = get_task(args.task, chat=args.chat, markers=_markers_arg(args.markers))
    items = task.items(args.n, "all")
    out: dict[str, Any] = {"task": task.describe(), "has_answers": task.has_answers,
                           "items": [{"id": it.id, "prompt": it.prompt, "answer": it.answer,
                                      "split": it.split} for it in items]}
    if args.model:
        from ..models import load_tokenizer, local_checkpoint
        from . import check_pair

        check_pair(task, [args.model])
        tok = load_tokenizer(local_checkpoint(args.model)[1])
        det = detect_markers(tok)
        ids = hesitation_ids(tok, task.hesitation_words)
        out["detected"] = det.to_dict()
        out["markers"] = task.markers(tok).to_dict()
        out["hesitation_ids"] = {w: {"ids": v, "tokens": tok.convert_ids_to_tokens(v)}
                                 for w, v in ids.items()}
        out["first_prompt_as_read"] = task.prompt_text(items[0], tok)
        for note in det.notes:
            _say(note)
    print(json.dumps(out, default=str))
    return 0


def _cmd_generate(args) -> int:
    from ..adapters.cli import _run_job

    spec = {"model": args.model, "task": args.task, "n": args.n, "split": args.split,
            "max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
            "top_p": args.top_p, "seed": args.seed, "batch_size": args.batch_size,
            "chunk": args.chunk, "chat": args.chat, "markers": _markers_arg(args.markers),
            "device": args.device, "dtype": args.dtype}
    if args.store:
        spec["store_root"] = args.store
    rc = _run_job("traces.generate", spec, args.background, after=_warn)
    return rc


def _warn(result: dict[str, Any] | None) -> None:
    if result and result.get("marker_warning"):
        _say("warning: " + result["marker_warning"])


def _cmd_import(args) -> int:
    from ..store import Store
    from .traces import import_traces

    res = import_traces(args.file, args.model, chat=args.chat,
                        markers=_markers_arg(args.markers),
                        store=Store(args.store) if args.store else None)
    _warn(res)
    print(json.dumps(res, default=str))
    return 0


def _cmd_list(args) -> int:
    from ..store import Store
    from .traces import KIND

    store = Store(args.store) if args.store else Store()
    rows = []
    for a in store.list(KIND):
        s = a.meta.get("summary", {})
        rows.append({"key": a.key, "model": a.config.get("model"),
                     "task": (a.config.get("task") or {}).get("task"),
                     "source": a.config.get("source"), "n": s.get("n"),
                     "closed": s.get("closed"), "accuracy": s.get("accuracy")})
        _say(f"{a.key}  {rows[-1]['model']}  {rows[-1]['task']}  n={s.get('n')} "
             f"closed={s.get('closed')} accuracy={s.get('accuracy')}")
    print(json.dumps({"traces": rows}, default=str))
    return 0


def _cmd_show_traces(args) -> int:
    from ..store import Store
    from .traces import load_traceset

    ts = load_traceset(args.key, Store(args.store) if args.store else None)
    for r in ts.records[: args.n]:
        _say(f"--- {r['id']} ({r['split']}) think_tokens={r['think_tokens']} "
             f"closed={r['closed']} correct={r['correct']}\n{r['text']}")
    print(json.dumps({"key": ts.key, "config": ts.config, "summary": ts.meta.get("summary")},
                     default=str))
    return 0


def add_commands(sub) -> None:
    from . import TASK_HELP

    p = sub.add_parser("tasks", help="tasks: prompts, answers, markers")
    ts = p.add_subparsers(dest="tasks_command", required=True)
    s = ts.add_parser("show", help="a task's prompts (and a model's markers)")
    s.add_argument("task", help=TASK_HELP)
    s.add_argument("--model", help="read markers and hesitation tokens from this model")
    s.add_argument("--n", type=int, default=3)
    s.add_argument("--chat", default="auto", choices=["auto", "on", "off"])
    s.add_argument("--markers", help="JSON object overriding the markers")
    s.set_defaults(func=_cmd_show)

    p = sub.add_parser("traces", help="trace sets: generate, import, list, show")
    tr = p.add_subparsers(dest="traces_command", required=True)
    g = tr.add_parser("generate", help="a model's traces over a task (job; resumable)")
    g.add_argument("--model", required=True, help="model spec (e.g. the reasoner)")
    g.add_argument("--task", required=True, help=TASK_HELP)
    g.add_argument("--n", type=int, default=256, help="prompts (at most)")
    g.add_argument("--split", default="all", choices=["train", "eval", "all"])
    g.add_argument("--max-new-tokens", type=int, default=512)
    g.add_argument("--temperature", type=float, default=0.6)
    g.add_argument("--top-p", type=float, default=0.95)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--chunk", type=int, default=64, help="prompts per saved chunk")
    g.add_argument("--chat", default="auto", choices=["auto", "on", "off"])
    g.add_argument("--markers", help="JSON object overriding the markers")
    g.add_argument("--device", default="auto")
    g.add_argument("--dtype", default="auto")
    g.add_argument("--store", help="artifact store root")
    g.add_argument("--background", action="store_true", help="submit to a worker")
    g.set_defaults(func=_cmd_generate)
    i = tr.add_parser("import", help="a trace set from a JSONL file with 'trace' fields")
    i.add_argument("file")
    i.add_argument("--model", required=True, help="whose tokenizer and chat template")
    i.add_argument("--chat", default="auto", choices=["auto", "on", "off"])
    i.add_argument("--markers", help="JSON object overriding the markers")
    i.add_argument("--store", help="artifact store root")
    i.set_defaults(func=_cmd_import)
    ls = tr.add_parser("list", help="saved trace sets")
    ls.add_argument("--store", help="artifact store root")
    ls.set_defaults(func=_cmd_list)
    sh = tr.add_parser("show", help="a trace set's config, summary and first traces")
    sh.add_argument("key", nargs="?", help="key or unique prefix (default: newest)")
    sh.add_argument("--n", type=int, default=2)
    sh.add_argument("--store", help="artifact store root")
    sh.set_defaults(func=_cmd_show_traces)
