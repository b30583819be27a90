"""Trace sets: a model's reasoning traces over a task's prompts, stored as an artifact.

A trace set (artifact kind ``traces``) is ``traces.jsonl``, one record per prompt::

    {"id", "split", "prompt", "prompt_ids", "output_ids", "text", "finished",
     "opened", "closed", "think_start", "think_end", "think_tokens", "hesitations",
     "reference", "answer", "correct"}

``prompt_ids`` are the prompt as the model read it (chat template applied, thinking
switch on); ``output_ids`` the continuation (ending with the stop token when
``finished``); ``think_start`` / ``think_end`` index ``output_ids`` (the thinking is
``output_ids[think_start:think_end]``, see :func:`interp.length.data.think_span`);
``hesitations`` counts the hesitation tokens inside it (every BPE spelling of the
hesitation word, :func:`~.markers.hesitation_ids`); ``reference`` is the task's answer,
``answer`` / ``correct`` the task's scorer on ``text`` (None without a reference).

The config records the model (id and weight hash), the task (:meth:`Task.describe`), the
split and count, the sampling settings and the markers; meta holds a summary and, when no
generation closed a think block, the message that says so (:func:`~.markers.marker_report`).

Two ways in:

* :func:`generate_traces` / job ``traces.generate`` (``python -m interp traces
  generate``): batched generation with a KV cache, chunk by chunk; each finished chunk is
  written to the job's folder, so an interrupted job resumes at the first missing chunk;
* :func:`import_traces` (``python -m interp traces import FILE --model SPEC``): a JSONL
  task file whose records carry a ``trace`` field (what the model wrote after the
  prompt), tokenised with the model's tokenizer and chat template.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import ArtifactNotFoundError, ConfigError
from .base import Task, TaskItem
from .markers import ThinkMarkers, count_hesitations, hesitation_id_set, marker_report

KIND = "traces"
FILE = "traces.jsonl"
Progress = Callable[..., None]

DEFAULTS: dict[str, Any] = {
    "model": None, "task": None, "n": 256, "split": "all", "max_new_tokens": 512,
    "temperature": 0.6, "top_p": 0.95, "seed": 0, "batch_size": 16, "chunk": 64,
    "chat": "auto", "markers": None, "device": "auto", "dtype": "auto", "store_root": None,
}


# --------------------------------------------------------------------------- records
def make_record(item: TaskItem, prompt_ids: Sequence[int], output_ids: Sequence[int],
                finished: bool, task: Task, markers: ThinkMarkers, tokenizer,
                hes_ids: set[int], text: str | None = None) -> dict[str, Any]:
    """One trace record (see the module docstring)."""
    from ..length.data import think_span

    out = [int(t) for t in output_ids]
    body = out[:-1] if finished and out else out
    if text is None:
        text = tokenizer.decode(body, skip_special_tokens=False)
    sp = think_span(out, markers, tokenizer)
    sc = task.score(item, text, markers)
    return {"id": item.id, "split": item.split, "prompt": item.prompt,
            "prompt_ids": [int(t) for t in prompt_ids], "output_ids": out, "text": text,
            "finished": bool(finished), "opened": sp.opened, "closed": sp.closed,
            "think_start": sp.start, "think_end": sp.end, "think_tokens": sp.n_think_tokens,
            "hesitations": count_hesitations(out, hes_ids, sp.start, sp.end),
            "reference": item.answer, "answer": sc.get("answer"),
            "correct": sc.get("correct")}


def summarize(records: Sequence[dict[str, Any]], markers: ThinkMarkers) -> dict[str, Any]:
    """Counts, thinking length, hesitations, accuracy and the marker check."""
    import numpy as np

    n = len(records)
    rep = marker_report(records, markers)
    lens = [r["think_tokens"] for r in records if r["closed"]]
    scored = [r["correct"] for r in records if r.get("correct") is not None]
    out = {"n": n, "closed": rep["closed"], "opened": rep["opened"],
           "finished": sum(1 for r in records if r["finished"]),
           "mean_think_tokens_closed": float(np.mean(lens)) if lens else None,
           "median_think_tokens_closed": float(np.median(lens)) if lens else None,
           "mean_output_tokens": float(np.mean([len(r["output_ids"]) for r in records]))
           if n else None,
           "hesitations_per_trace": float(np.mean([r["hesitations"] for r in records]))
           if n else None,
           "n_scored": len(scored),
           "accuracy": float(np.mean(scored)) if scored else None,
           "splits": {s: sum(1 for r in records if r.get("split") == s)
                      for s in ("train", "eval")}}
    if rep["message"]:
        out["marker_warning"] = rep["message"]
    return out


# --------------------------------------------------------------------------- artifact
@dataclass
class TraceSet:
    """A loaded trace set."""

    key: str
    config: dict[str, Any]
    meta: dict[str, Any]
    records: list[dict[str, Any]]
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def markers(self) -> ThinkMarkers:
        return ThinkMarkers.from_dict(self.config.get("markers"))

    @property
    def model(self) -> str | None:
        return self.config.get("model")

    def split(self, name: str = "all") -> list[dict[str, Any]]:
        """Records of one split (``train``, ``eval`` or ``all``)."""
        if name == "all":
            return list(self.records)
        return [r for r in self.records if r.get("split") == name]

    def sequences(self, split: str = "all") -> list[list[int]]:
        """Prompt + output token ids of each record (the training sequences)."""
        return [r["prompt_ids"] + r["output_ids"] for r in self.split(split)]


def _store(store_root: str | None = None):
    from ..store import Store

    return Store(store_root) if store_root else Store()


def save_traceset(store, config: dict[str, Any], records: Sequence[dict[str, Any]],
                  provenance: dict[str, Any], meta: dict[str, Any] | None = None):
    """Write the trace set (``traces.jsonl`` + summary) atomically; returns the artifact."""
    part = traceset_part(config, records, meta)
    return store.save(KIND, config, provenance=provenance, meta=part.meta, files=part.files)


def traceset_part(config: dict[str, Any], records: Sequence[dict[str, Any]],
                  meta: dict[str, Any] | None = None):
    """What a trace set artifact holds (meta with the summary, ``traces.jsonl``)."""
    from ..distributed import Part

    if not records:
        raise ConfigError("a trace set needs at least one trace")
    markers = ThinkMarkers.from_dict(config.get("markers"))
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return Part(meta={"summary": summarize(records, markers), **(meta or {})},
                files={FILE: body})


def load_traceset(key: str | None = None, store=None) -> TraceSet:
    """A trace set by key (a unique prefix is enough; None: the newest)."""
    store = store or _store()
    arts = store.list(KIND)
    if key:
        hits = [a for a in arts if a.key == key] or [a for a in arts if a.key.startswith(key)]
        if len(hits) > 1:
            raise ConfigError(f"trace set key {key!r} is ambiguous: "
                              f"{', '.join(a.key for a in hits[:5])}")
    else:
        hits = arts[:1]
    if not hits:
        known = ", ".join(a.key for a in arts[:5]) or "none yet"
        raise ArtifactNotFoundError(
            f"no trace set {key or ''} in {store.root} (saved: {known}); make one with "
            "`python -m interp traces generate` or `traces import`")
    art = hits[0]
    try:
        lines = art.file(FILE).read_text().splitlines()
        recs = [json.loads(ln) for ln in lines if ln.strip()]
    except (OSError, ValueError) as e:
        from ..errors import ArtifactCorruptError

        raise ArtifactCorruptError(f"trace set {art.key}: {FILE} cannot be read ({e})") \
            from None
    return TraceSet(art.key, dict(art.config), dict(art.meta), recs, dict(art.provenance))


# --------------------------------------------------------------------------- generation
def stop_token_ids(model) -> list[int]:
    """The checkpoint's end-of-turn ids: ``generation_config.json``'s ``eos_token_id``
    (a chat model often lists several) plus the tokenizer's EOS."""
    ids: set[int] = set()
    p = Path(getattr(model, "path", "") or "") / "generation_config.json"
    if p.exists():
        try:
            e = json.loads(p.read_text()).get("eos_token_id")
            ids.update(int(x) for x in (e if isinstance(e, list) else [e]) if x is not None)
        except (OSError, ValueError, TypeError):
            pass
    tok = model.tokenizer
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    return sorted(ids)


def task_markers(task: Task, tokenizer, overrides: dict[str, Any] | None = None
                 ) -> ThinkMarkers:
    m = task.markers(tokenizer).to_dict()
    m.update(overrides or {})
    return ThinkMarkers.from_dict(m)


def generate_traces(model, task: Task, *, n: int | None = 256, split: str = "all",
                    max_new_tokens: int = 512, temperature: float = 0.6, top_p: float = 0.95,
                    seed: int = 0, batch_size: int = 16, chunk: int = 64,
                    markers: ThinkMarkers | None = None, work: Path | None = None,
                    progress: Progress | None = None, lo: int = 0, hi: int | None = None
                    ) -> list[dict[str, Any]]:
    """Records of ``model``'s generations over ``task``'s prompts (module docstring).

    Prompts run in chunks of ``chunk`` (each a batched generation of ``batch_size`` rows
    with a KV cache, seeded by the chunk's first prompt); with ``work`` each finished
    chunk is saved there and reused on the next call. ``lo``/``hi``: only the prompts
    ``lo..hi-1`` (one rank's share; ``lo`` a multiple of ``chunk``, so the chunks and
    their seeds are those of the whole run). ``progress(done, total)`` after every
    batch, counted within ``lo..hi``."""
    from ..generation import generate
    from ..store import write_json_atomic

    tok = model.tokenizer
    markers = markers or task_markers(task, tok)
    items = task.items(n, split, seed)
    ids = task.encode_all(items, tok)
    hes = hesitation_id_set(tok, task.hesitation_words)
    stops = stop_token_ids(model)
    records: list[dict[str, Any]] = []
    hi = len(items) if hi is None else min(hi, len(items))
    if lo % chunk or lo < 0:
        raise ConfigError(f"a share of the prompts starts at a multiple of chunk={chunk}, "
                          f"not at {lo}")
    total = max(0, hi - lo)
    for start in range(lo, hi, chunk):
        part = work / f"chunk-{start:07d}.json" if work is not None else None
        if part is not None and part.exists():
            try:
                records += json.loads(part.read_text())
                if progress:
                    progress(len(records), total)
                continue
            except ValueError:
                pass   # a damaged chunk is generated again
        sl = slice(start, min(start + chunk, hi))

        def prog(done, _tot, _s=start - lo):
            if progress:
                progress(_s + done, total)

        gens = generate(model, ids[sl], max_new_tokens=max_new_tokens,
                        temperature=temperature, top_p=top_p, seed=seed + start,
                        batch_size=batch_size, stop_token_ids=stops, progress=prog)
        recs = [make_record(it, g.prompt_ids, g.output_ids, g.finished, task, markers, tok,
                            hes, g.text) for it, g in zip(items[sl], gens)]
        if part is not None:
            write_json_atomic(part, recs)
        records += recs
    return records


def traces_config(model, task: Task, markers: ThinkMarkers, **settings: Any) -> dict[str, Any]:
    return {"model": model.spec, "weight_hash": model.weight_hash, "task": task.describe(),
            "markers": markers.to_dict(), **settings}


def check_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The ``traces.generate`` job spec with defaults, every value checked."""
    from ..validate import number

    unknown = sorted(set(spec) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown trace option(s) {unknown}; known: "
                          f"{', '.join(sorted(DEFAULTS))}")
    s = {**DEFAULTS, **spec}
    if not s["model"]:
        raise ConfigError("no model given (--model SPEC)")
    if not s["task"]:
        raise ConfigError("no task given (--task ...)")
    for k in ("n", "max_new_tokens", "batch_size", "chunk"):
        s[k] = number(s[k], k, lo=1, integer=True)
    s["seed"] = number(s["seed"], "seed", lo=0, integer=True)
    s["temperature"] = number(s["temperature"], "temperature", lo=0)
    s["top_p"] = number(s["top_p"], "top_p", lo=0, hi=1, lo_open=True)
    if s["split"] not in ("train", "eval", "all"):
        raise ConfigError(f"split must be train, eval or all, not {s['split']!r}")
    if s["chat"] not in ("auto", "on", "off"):
        raise ConfigError(f"chat must be auto, on or off, not {s['chat']!r}")
    if s["markers"] is not None and not isinstance(s["markers"], dict):
        raise ConfigError("markers must be an object of ThinkMarkers fields")
    if s["markers"]:
        bad = sorted(set(s["markers"]) - set(ThinkMarkers.__dataclass_fields__))
        if bad:
            raise ConfigError(f"unknown marker field(s) {bad}; known: "
                              f"{', '.join(ThinkMarkers.__dataclass_fields__)}")
    return s


def validate_spec(spec: dict[str, Any]) -> None:
    """The job spec, the task file and the model/task fit, before a worker starts."""
    from . import check_pair, get_task

    s = check_spec(spec)
    check_pair(get_task(s["task"], chat=s["chat"], markers=s["markers"]), [s["model"]])


def run_generation(spec: dict[str, Any], work: Path | None = None,
                   progress: Progress | None = None, model=None, ranks=None
                   ) -> dict[str, Any] | None:
    """Load the model, generate (resumable in ``work``), save; returns the summary.

    Under torchrun (``ranks``, default this process's) each rank generates its block of
    whole chunks (the chunks and seeds of one process) and lands it in the store as a
    part; the rank that completes the set saves the merged trace set, the artifact one
    process saves (:func:`interp.distributed.collect`). Rank 0 returns the summary, the
    other ranks None."""
    from .. import distributed as D
    from ..models import load_model
    from ..store import provenance
    from . import check_pair, get_task

    s = check_spec(spec)
    ranks = ranks or D.current()
    task = get_task(s["task"], chat=s["chat"], markers=s["markers"])
    check_pair(task, [s["model"]])
    model = model or load_model(s["model"], device=s["device"], dtype=s["dtype"])
    markers = task_markers(task, model.tokenizer, s["markers"])
    settings = {k: s[k] for k in ("n", "split", "max_new_tokens", "temperature", "top_p",
                                  "seed")}
    cfg = traces_config(model, task, markers, source="generated", **settings)
    n_items = len(task.items(s["n"], s["split"], s["seed"]))

    def work_fn(bounds: D.Bounds) -> D.Part:
        (lo, hi), = bounds
        t0 = time.time()
        recs = generate_traces(
            model, task, n=s["n"], split=s["split"], max_new_tokens=s["max_new_tokens"],
            temperature=s["temperature"], top_p=s["top_p"], seed=s["seed"],
            batch_size=s["batch_size"], chunk=s["chunk"], markers=markers, work=work,
            progress=progress, lo=lo, hi=hi)
        return D.Part(meta={"records": recs, "seconds": round(time.time() - t0, 2)})

    def merge(parts: list[D.Part]) -> D.Part:
        recs = [r for p in parts for r in p.meta["records"]]
        return traceset_part(cfg, recs, {"seconds": max(p.meta["seconds"] for p in parts)})

    store = _store(s["store_root"])
    art = D.collect(KIND, cfg, n_items, work_fn, merge, store=store, ranks=ranks,
                    align=s["chunk"], provenance=provenance(
                        models={"model": model.describe()}, seed=s["seed"],
                        device=str(model.device), batch_size=s["batch_size"]))
    art = D.merged(store, KIND, cfg, art, ranks)
    return None if art is None else {"key": art.key, **art.meta["summary"]}


def generate_job(spec: dict[str, Any], ctx) -> dict[str, Any] | None:
    """Job ``traces.generate``: spec = :data:`DEFAULTS` keys (``model`` and ``task``
    required). Finished chunks live in the job folder, so a rerun resumes (ranks other
    than 0 of a torchrun launch have no job folder: their landed part is what resumes)."""
    return run_generation(spec, Path(ctx.dir) if ctx.dir else None,
                          lambda d, t: ctx.progress(d, t, message="generating"))


# --------------------------------------------------------------------------- import
def imported_records(items, task, tok, mk, hes: set[int]) -> list[dict[str, Any]]:
    """Trace records of task items that carry a ``trace`` text (as ``traces import``
    makes them): the trace tokenised after the prompt, an open marker the chat template
    already wrote dropped from its start."""
    recs = []
    for it in items:
        trace = str(it.trace)
        if mk.starts_open and mk.think_open and trace.lstrip().startswith(mk.think_open):
            trace = trace.lstrip()[len(mk.think_open):]
        out = list(tok(trace, add_special_tokens=False)["input_ids"])
        recs.append(make_record(it, task.encode(it, tok), out, False, task, mk, tok, hes,
                                trace))
    return recs


def import_traces(path: str | Path, model_spec: str, *, chat: str = "auto",
                  markers: dict[str, Any] | None = None, store=None) -> dict[str, Any]:
    """A trace set from a JSONL file whose records have ``prompt`` and ``trace`` (and
    optional ``answer``, ``id``, ``split``), tokenised with ``model_spec``'s tokenizer and
    chat template (the weights are not loaded). A trace that repeats the open marker the
    chat template already wrote loses that copy. Records without a trace are skipped."""
    from ..models import current_weight_hash, load_tokenizer, local_checkpoint
    from ..store import provenance
    from . import check_pair
    from .files import FileTask

    task = FileTask(path, chat=chat, markers=markers)
    check_pair(task, [model_spec])
    r, ckpt = local_checkpoint(model_spec)
    tok = load_tokenizer(ckpt)
    mk = task_markers(task, tok, markers)
    hes = hesitation_id_set(tok, task.hesitation_words)
    items = [it for it in task.items(None, "all") if it.trace]
    if not items:
        raise ConfigError(f"{Path(path).name} has no record with a 'trace' field: nothing "
                          "to import (use `traces generate` to make traces)")
    recs = imported_records(items, task, tok, mk, hes)
    cfg = {"model": r.spec, "weight_hash": current_weight_hash(r.spec),
           "task": task.describe(), "markers": mk.to_dict(), "source": "imported",
           "n": len(recs), "skipped_without_trace": len(task.items(None, "all")) - len(recs)}
    art = save_traceset(store or _store(), cfg, recs,
                        provenance(models={"model": {"id": r.spec,
                                                     "weight_hash": cfg["weight_hash"]}}))
    return {"key": art.key, **art.meta["summary"]}
