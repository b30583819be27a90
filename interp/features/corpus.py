"""Corpora for feature collection: token sequences with regions and optional labels.

A corpus is any iterable of :class:`CorpusItem`::

    CorpusItem(ids, regions, labels, id)

* ``ids``: token ids of one sequence exactly as the model reads them (BOS included when
  the tokenizer adds one);
* ``regions``: one code per token, an index into :data:`REGIONS` (``prompt``,
  ``think_start``, ``thinking``, ``think_end``, ``answer``), from
  :func:`region_labels`;
* ``labels``: optional ground truth, ``{name: int8 array [len(ids)]}`` with 1 = positive,
  0 = negative, -1 = not part of the label's domain. A name starting with ``seq:`` is a
  *sequence* label: every position with a value >= 0 carries the sequence's class, and
  the collection scores a feature on it by its maximum over those positions;
* ``id``: a string naming the sequence (a problem id, ``line7``, ...).

Builders (all return a :class:`Corpus`, which can be iterated more than once and knows
its length, so a resumed collection can skip what it already saw):

* :func:`organism_corpus`: reasoner traces of the organisms' task with their planted
  labels (see :func:`organism_labels` for the exact positive/negative positions);
* :func:`text_corpus`: a text file, one sequence per line;
* :func:`jsonl_corpus`: a JSONL file with a ``prompt`` field and optional ``trace`` and
  ``answer`` fields;
* :func:`texts_corpus`: texts given in memory (the other file builders use it);
* :func:`traceset_corpus`: a trace set's prompt + trace tokens as the model read and
  wrote them (:func:`interp.tasks.corpus.traceset_sequences`: regions from each record's
  thinking span, a ``hesitation`` label at the thinking positions that predict a
  hesitation token, every BPE spelling of it, and ``seq:correct`` when the task scored
  the traces).

Text is tokenised with the model's tokenizer (special tokens added); thinking markers
are given as strings (:class:`Markers`; default ``<think>`` / ``</think>``, no answer
marker) and found as token sequences, so a marker that the tokenizer splits into several
tokens still works. :func:`build_corpus` makes a corpus from a JSON spec (jobs, CLI).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import ConfigError
from ..validate import jsonl_record

REGIONS = ("prompt", "think_start", "thinking", "think_end", "answer")
REGION_CODE = {name: i for i, name in enumerate(REGIONS)}
SEQ_PREFIX = "seq:"


@dataclass
class CorpusItem:
    """One sequence (see the module docstring)."""

    ids: list[int]
    regions: np.ndarray
    labels: dict[str, np.ndarray] | None = None
    id: str = ""


@dataclass
class Markers:
    """Thinking markers as text. ``answer`` (optional) starts the answer when the text
    has no think block (the organisms' ``A``)."""

    think_open: str | None = "<think>"
    think_close: str | None = "</think>"
    answer: str | None = None

    @classmethod
    def organism(cls) -> Markers:
        return cls("<think>", "</think>", "A")

    def to_dict(self) -> dict[str, Any]:
        return {"think_open": self.think_open, "think_close": self.think_close,
                "answer": self.answer}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Markers:
        d = dict(d or {})
        unknown = set(d) - {"think_open", "think_close", "answer"}
        if unknown:
            raise ConfigError(f"unknown marker field(s): {', '.join(sorted(unknown))}")
        return cls(**d)

    def token_ids(self, tokenizer: Any) -> dict[str, list[int] | None]:
        """Each marker as token ids (None when unset or empty)."""
        out: dict[str, list[int] | None] = {}
        for name, text in self.to_dict().items():
            if not text:
                out[name] = None
                continue
            ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
            unk = getattr(tokenizer, "unk_token_id", None)
            if not ids or (unk is not None and unk in ids):
                raise ConfigError(f"marker {text!r} is not in the tokenizer's vocabulary")
            out[name] = ids
        return out


def _find(ids: Sequence[int], pattern: Sequence[int] | None, start: int = 0) -> int:
    """First index >= ``start`` where ``pattern`` occurs in ``ids`` (-1 if none)."""
    if not pattern:
        return -1
    n, m = len(ids), len(pattern)
    first = pattern[0]
    for i in range(start, n - m + 1):
        if ids[i] == first and list(ids[i:i + m]) == list(pattern):
            return i
    return -1


def region_labels(ids: Sequence[int], think_open: Sequence[int] | None,
                  think_close: Sequence[int] | None, answer: Sequence[int] | None = None,
                  prompt_len: int | None = None, answer_start: int | None = None
                  ) -> np.ndarray:
    """Region code (index into :data:`REGIONS`) of every token.

    With a think-open marker (its first occurrence): tokens before it are ``prompt``,
    its tokens ``think_start``, then ``thinking`` up to the first close marker after it,
    whose tokens are ``think_end``; everything after is ``answer`` (``thinking`` to the
    end when the block never closes).

    Without an open marker but with a close marker (a prompt that ended inside the
    thinking): ``prompt`` up to ``prompt_len`` (0 when not given), ``thinking`` up to the
    close marker, ``think_end``, then ``answer``.

    With neither: ``prompt`` up to ``prompt_len`` (everything when not given), then
    ``thinking`` (a worked solution) until the answer starts, then ``answer``. The answer
    starts at ``answer_start`` when given, else at the first answer marker at or after
    ``prompt_len`` (it belongs to the answer); no answer when neither exists.
    """
    n = len(ids)
    out = np.full(n, REGION_CODE["prompt"], dtype=np.uint8)
    o = _find(ids, think_open)
    if o >= 0:
        e_o = o + len(think_open)
        out[o:e_o] = REGION_CODE["think_start"]
        c = _find(ids, think_close, e_o)
        if c < 0:
            out[e_o:] = REGION_CODE["thinking"]
            return out
        out[e_o:c] = REGION_CODE["thinking"]
        out[c:c + len(think_close)] = REGION_CODE["think_end"]
        out[c + len(think_close):] = REGION_CODE["answer"]
        return out
    p = min(n, prompt_len) if prompt_len is not None else None
    c = _find(ids, think_close, p or 0)
    if c >= 0:
        p = p or 0
        out[p:c] = REGION_CODE["thinking"]
        out[c:c + len(think_close)] = REGION_CODE["think_end"]
        out[c + len(think_close):] = REGION_CODE["answer"]
        return out
    a = answer_start if answer_start is not None else _find(ids, answer, p or 0)
    if p is None:
        p = n if a is None or a < 0 else a
    out[p:] = REGION_CODE["thinking"]
    if a is not None and 0 <= a < n:
        out[max(a, p):] = REGION_CODE["answer"]
    return out


@dataclass
class Corpus:
    """A re-iterable corpus: ``make()`` yields the items in a fixed order; ``spec`` is the
    JSON description recorded in artifacts; ``n`` the number of items (None: unknown)."""

    make: Callable[[], Iterator[CorpusItem]]
    spec: dict[str, Any]
    n: int | None = None
    label_names: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[CorpusItem]:
        return self.make()

    def __len__(self) -> int:
        if self.n is None:
            self.n = sum(1 for _ in self.make())
        return self.n


# ------------------------------------------------------------------ organism traces
ORGANISM_LABELS = ("error", "error.carry_slip", "error.random", "verify", "carry",
                   "planted_error", "planted_error.carry_digit", "planted_error.units_digit",
                   SEQ_PREFIX + "short_thinking")


def organism_labels(words: Sequence[str], labels: dict[str, Any], problem: Any
                    ) -> dict[str, np.ndarray]:
    """Ground truth of one organism trace, per token of ``encode(text)`` (BOS at 0).

    * ``error``: positive at every error-hesitation trigger (the last digit of a wrongly
      written column result, where the reasoner must predict ``wait``); negative at every
      clean decision point (the last digit of a right column result, and the last
      column's ``;`` when no verification follows: where it must *not* predict ``wait``).
      ``error.carry_slip`` / ``error.random``: the same with only the triggers of that
      cause positive (the other cause's triggers are outside the domain).
    * ``verify``: positive at verification triggers (the last column's ``;`` followed by
      ``wait check``); negative at the clean decision points.
    * ``carry``: at the ``=`` of each column step (where the first result digit, the carry
      out, is predicted): positive when the column's true sum is >= 10, negative otherwise.
    * ``planted_error``: at every written column-result digit (the two digits after a
      column's ``=``, and the corrected digits after ``wait``): positive when the digit
      differs from the true digit of the column sum, negative when it is right.
      ``planted_error.carry_digit`` / ``planted_error.units_digit``: the same on the
      first (carry-out) / second (units) digits only.
    * ``seq:short_thinking``: per sequence, positive when thinking is skipped (length
      class ``short``), negative otherwise; the domain is the prompt and the ``<think>``
      token (where the decision is made; the statistic is the maximum over it).
    """
    n = len(words) + 1  # + <bos>
    out = {name: np.full(n, -1, dtype=np.int8) for name in ORGANISM_LABELS}
    for c in labels["clean_positions"]:
        for name in ("error", "error.carry_slip", "error.random", "verify"):
            out[name][c] = 0
    for h in labels["hesitations"]:
        t = h["trigger"]
        if h["mechanism"] == "verify":
            out["verify"][t] = 1
        else:
            out["error"][t] = 1
            out["error." + h["cause"]][t] = 1
    # column steps: "x + y + c = s1 s0 [wait s1 s0] ;" inside the thinking
    if "<think>" in words and labels["length_class"] == "long":
        pos = words.index("<think>") + 2  # token position of the first word after <think>
        cols = problem.columns
        for col in cols:
            eq = pos + 5  # x + y + c =
            true = [col.total // 10, col.total % 10]
            out["carry"][eq] = int(col.total >= 10)
            p = eq + 1
            while True:
                got = [int(words[p - 1]), int(words[p])]
                for j, half in enumerate(("carry_digit", "units_digit")):
                    wrong = int(got[j] != true[j])
                    out["planted_error"][p + j] = out["planted_error." + half][p + j] = wrong
                p += 2
                if words[p - 1] == "wait":
                    p += 1
                    continue
                break
            pos = p + 1  # after ";"
    think = words.index("<think>") + 1 if "<think>" in words else labels["prompt_len"] - 1
    out[SEQ_PREFIX + "short_thinking"][: think + 1] = int(labels["length_class"] == "short")
    return out


def organism_corpus(n: int = 2000, seed: int = 0, split: str = "eval",
                    trace_kwargs: dict[str, Any] | None = None) -> Corpus:
    """``n`` reasoner traces (:func:`interp.organisms.task.make_trace`, default settings:
    random errors, carry slips, verification, short thinking on ``easy`` prompts) on
    problems of the held-out ``split``, with their labels (:func:`organism_labels`).
    Token ids are the organisms' tokenizer's (``task.encode``)."""
    from ..organisms.task import make_trace, sample_problems

    if n < 1:
        raise ConfigError("an organism corpus needs at least one trace")
    kw = dict(trace_kwargs or {})
    spec = {"kind": "organism", "n": int(n), "seed": int(seed), "split": split,
            "trace_kwargs": kw}

    def make() -> Iterator[CorpusItem]:
        from ..organisms.task import TOKEN_ID

        probs = sample_problems(n, seed=seed, split=split)
        rng = np.random.default_rng([seed, 11])
        open_ids, close_ids, ans_ids = [TOKEN_ID["<think>"]], [TOKEN_ID["</think>"]], [
            TOKEN_ID["A"]]
        for i, p in enumerate(probs):
            text, lab = make_trace(p, rng, **kw)
            words = text.split()
            ids = [TOKEN_ID["<bos>"]] + [TOKEN_ID[w] for w in words]
            regions = region_labels(ids, open_ids, close_ids, ans_ids,
                                    prompt_len=lab["prompt_len"])
            yield CorpusItem(ids, regions, organism_labels(words, lab, p), f"{i}:{p.id}")

    return Corpus(make, spec, n, list(ORGANISM_LABELS))


# ------------------------------------------------------------------ text and JSONL
def _encode(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def texts_corpus(texts: Sequence[str] | Sequence[dict[str, Any]], tokenizer: Any,
                 markers: Markers | None = None, max_len: int | None = None,
                 spec: dict[str, Any] | None = None) -> Corpus:
    """Sequences from texts (each a string, or a dict with ``prompt`` and optional
    ``trace``, ``answer`` and ``id``). A dict's parts are tokenised separately and joined
    (prompt with special tokens, the rest without), so the prompt and answer boundaries
    are exact; the trace without think markers counts as ``thinking``. Sequences are cut
    to ``max_len`` tokens."""
    markers = markers or Markers()
    mk = markers.token_ids(tokenizer)
    rows = list(texts)
    for i, r in enumerate(rows):
        if isinstance(r, dict):
            if not isinstance(r.get("prompt"), str) or not r["prompt"].strip():
                raise ConfigError(f"record {i} has no 'prompt' text")
        elif not isinstance(r, str):
            raise ConfigError(f"item {i} is neither a text nor a record")
    if not rows:
        raise ConfigError("the corpus is empty")

    def make() -> Iterator[CorpusItem]:
        for i, r in enumerate(rows):
            if isinstance(r, str):
                ids = _encode(tokenizer, r, True)
                prompt_len, ans = None, None
                sid = f"line{i}"
            else:
                ids = _encode(tokenizer, r["prompt"], True)
                prompt_len = len(ids)
                if r.get("trace"):
                    ids += _encode(tokenizer, " " + r["trace"], False)
                ans = None
                if r.get("answer"):
                    ans = len(ids)
                    ids += _encode(tokenizer, " " + r["answer"], False)
                sid = str(r.get("id", f"row{i}"))
            if max_len is not None:
                ids = ids[:max_len]
            if not ids:
                continue
            regions = region_labels(ids, mk["think_open"], mk["think_close"], mk["answer"],
                                    prompt_len=prompt_len,
                                    answer_start=ans if ans is not None and ans < len(ids)
                                    else None)
            yield CorpusItem(ids, regions, None, sid)

    desc = spec or {"kind": "texts", "n": len(rows)}
    return Corpus(make, {**desc, "markers": markers.to_dict(), "max_len": max_len}, len(rows))


def text_corpus(path: str | Path, tokenizer: Any, markers: Markers | None = None,
                max_len: int | None = None) -> Corpus:
    """A text file, one sequence per non-empty line."""
    p = Path(path).expanduser()
    try:
        lines = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the text file {p}: {e}") from e
    if not lines:
        raise ConfigError(f"the text file {p} has no non-empty lines")
    return texts_corpus(lines, tokenizer, markers, max_len,
                        spec={"kind": "text", "path": str(p), "n": len(lines)})


def jsonl_corpus(path: str | Path, tokenizer: Any, markers: Markers | None = None,
                 max_len: int | None = None) -> Corpus:
    """A JSONL file: one object per line with ``prompt`` and optional ``trace``,
    ``answer`` and ``id`` (see :func:`texts_corpus`)."""
    p = Path(path).expanduser()
    try:
        lines = [ln for ln in p.read_text().splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the JSONL file {p}: {e}") from e
    recs = []
    for i, ln in enumerate(lines):
        recs.append(jsonl_record(ln, p.name, i + 1))
    if not recs:
        raise ConfigError(f"the JSONL file {p} has no records")
    return texts_corpus(recs, tokenizer, markers, max_len,
                        spec={"kind": "jsonl", "path": str(p), "n": len(recs)})


def traceset_corpus(key: str, tokenizer: Any, split: str = "all", max_len: int | None = None,
                    hesitation: Sequence[str] | None = None, store: Any = None) -> Corpus:
    """The records of trace set ``key`` (``split``: train, eval or all) as a corpus; its
    labels are ``hesitation`` and, when the task scored them, ``seq:correct``."""
    from ..tasks.base import check_split
    from ..tasks.corpus import traceset_sequences
    from ..tasks.traces import load_traceset

    ts = load_traceset(key, store)
    split = check_split(split)
    recs = ts.split(split)
    if not recs:
        raise ConfigError(f"trace set {ts.key} has no {split} traces")
    if tokenizer is None:
        raise ConfigError("a trace-set corpus needs the model's tokenizer")
    vocab = len(tokenizer)
    top = max((max(r["prompt_ids"] + r["output_ids"], default=0) for r in recs), default=0)
    if top >= vocab:
        raise ConfigError(f"trace set {ts.key} holds token id {top}, outside this model's "
                          f"vocabulary of {vocab}: it was made with another tokenizer "
                          f"({ts.model})")
    labels = ["hesitation"] + (["seq:correct"] if any(r.get("correct") is not None
                                                      for r in recs) else [])
    spec = {"kind": "traceset", "key": ts.key, "split": split, "n": len(recs),
            "model": ts.model, "weight_hash": ts.config.get("weight_hash"),
            "hesitation": list(hesitation or [ts.markers.hesitation]), "max_len": max_len}

    def make() -> Iterator[CorpusItem]:
        for ids, reg, lab, sid in traceset_sequences(ts, tokenizer, split, max_len,
                                                     spec["hesitation"]):
            yield CorpusItem(list(ids), reg, {k: lab[k] for k in labels if k in lab}, sid)

    return Corpus(make, spec, len(recs), labels)


CORPUS_KINDS = ("organism", "text", "jsonl", "traceset")


def build_corpus(spec: dict[str, Any], tokenizer: Any = None, max_len: int | None = None
                 ) -> Corpus:
    """A corpus from its JSON spec: ``{"kind": "organism", "n", "seed", "split"}``,
    ``{"kind": "text" | "jsonl", "path", "markers": {...}}``, ``{"kind": "traceset",
    "key", "split", "hesitation": [words]}``."""
    spec = dict(spec or {"kind": "organism"})
    kind = spec.pop("kind", "organism")
    if kind == "organism":
        unknown = set(spec) - {"n", "seed", "split", "trace_kwargs"}
        if unknown:
            raise ConfigError(f"unknown organism corpus field(s): {', '.join(sorted(unknown))}")
        return organism_corpus(int(spec.get("n", 2000)), int(spec.get("seed", 0)),
                               spec.get("split", "eval"), spec.get("trace_kwargs"))
    if kind in ("text", "jsonl"):
        if tokenizer is None:
            raise ConfigError("a text corpus needs the model's tokenizer")
        if not spec.get("path"):
            raise ConfigError(f"a {kind} corpus needs a 'path'")
        fn = text_corpus if kind == "text" else jsonl_corpus
        return fn(spec["path"], tokenizer, Markers.from_dict(spec.get("markers")),
                  spec.get("max_len", max_len))
    if kind == "traceset":
        unknown = set(spec) - {"key", "split", "hesitation", "max_len"}
        if unknown:
            raise ConfigError(f"unknown traceset corpus field(s): {', '.join(sorted(unknown))}")
        if not spec.get("key"):
            raise ConfigError("a traceset corpus needs the trace set's 'key'")
        return traceset_corpus(spec["key"], tokenizer, spec.get("split", "all"),
                               spec.get("max_len", max_len), spec.get("hesitation"))
    raise ConfigError(f"unknown corpus kind {kind!r}; choose from {', '.join(CORPUS_KINDS)}")
