"""A trace set as feature-collection sequences: ``(ids, regions, labels, id)``.

The layout is the feature explorer's corpus item (``interp.features.corpus.CorpusItem``):

* ``ids``: ``prompt_ids + output_ids`` of one trace, as the model read and wrote them;
* ``regions``: ``uint8 [len(ids)]``, an index into :data:`REGIONS` (``prompt``,
  ``think_start``, ``thinking``, ``think_end``, ``answer``), read from the record's own
  span (``think_start`` / ``think_end``), not searched for again: a prompt that already
  opened the block (``starts_open``) has no ``think_start`` tokens, the open marker the
  model wrote (when it wrote one) is ``think_start``, the close marker ``think_end``,
  everything after it ``answer``; a trace that never closes is ``thinking`` to its end,
  one that never opens is ``answer`` after the prompt;
* ``labels``: ``{"hesitation": int8 [len(ids)]}``: 1 at positions whose *next* token is a
  hesitation token (every BPE spelling, :func:`~.markers.hesitation_ids`), 0 at the other
  thinking positions, -1 outside the thinking; plus ``"seq:correct"`` (the trace's
  correctness on its prompt positions, -1 elsewhere) when the task scored it;
* ``id``: the record's id.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from .traces import TraceSet

REGIONS = ("prompt", "think_start", "thinking", "think_end", "answer")
CODE = {name: i for i, name in enumerate(REGIONS)}


def _marker_len(tokenizer, text: str | None, ids: list[int], at: int) -> int:
    """How many tokens of ``ids`` starting at ``at`` spell the marker ``text`` (0 if they
    do not)."""
    if not text or tokenizer is None:
        return 0
    for variant in (text, " " + text):
        m = list(tokenizer(variant, add_special_tokens=False)["input_ids"])
        if m and ids[at: at + len(m)] == m:
            return len(m)
    return 0


def record_regions(rec: dict[str, Any], tokenizer=None, markers=None) -> np.ndarray:
    """Region codes of ``prompt_ids + output_ids`` (module docstring). ``tokenizer`` and
    ``markers`` mark the open / close marker tokens themselves; without them the marker
    tokens count as ``thinking`` / ``answer``."""
    p, out = len(rec["prompt_ids"]), rec["output_ids"]
    n = p + len(out)
    reg = np.full(n, CODE["prompt"], dtype=np.uint8)
    if not rec.get("opened"):
        reg[p:] = CODE["answer"]
        return reg
    s, e = p + int(rec["think_start"]), p + int(rec["think_end"])
    reg[p:s] = CODE["think_start"]     # the open marker the model wrote (if any)
    reg[s:e] = CODE["thinking"]
    if rec.get("closed"):
        k = _marker_len(tokenizer, getattr(markers, "think_close", None), out,
                        int(rec["think_end"])) or (1 if tokenizer is None else 0)
        reg[e:e + k] = CODE["think_end"]
        reg[e + k:] = CODE["answer"]
    return reg


def hesitation_labels(rec: dict[str, Any], hes_ids: set[int]) -> np.ndarray:
    """1 where the next token is a hesitation token, 0 at other thinking positions (the
    last prompt token included: it predicts the first thinking token), -1 elsewhere."""
    ids = rec["prompt_ids"] + rec["output_ids"]
    p = len(rec["prompt_ids"])
    lab = np.full(len(ids), -1, dtype=np.int8)
    if not rec.get("opened"):
        return lab
    s, e = p + int(rec["think_start"]), p + int(rec["think_end"])
    for pos in range(max(s - 1, 0), min(e, len(ids) - 1)):
        lab[pos] = 1 if int(ids[pos + 1]) in hes_ids else 0
    return lab


def traceset_sequences(ts: TraceSet, tokenizer=None, split: str = "all",
                       max_len: int | None = None, hesitation_words=None
                       ) -> Iterator[tuple[list[int], np.ndarray, dict[str, np.ndarray], str]]:
    """``(ids, regions, labels, id)`` for every trace of ``split`` (module docstring);
    sequences are cut to ``max_len`` tokens. ``tokenizer`` (the trace set's model's)
    gives the marker and hesitation tokens; without it labels are left out."""
    from .markers import hesitation_id_set

    markers = ts.markers
    words = hesitation_words or (markers.hesitation,)
    hes = hesitation_id_set(tokenizer, words) if tokenizer is not None else None
    for rec in ts.split(split):
        ids = rec["prompt_ids"] + rec["output_ids"]
        reg = record_regions(rec, tokenizer, markers)
        labels: dict[str, np.ndarray] = {}
        if hes is not None:
            labels["hesitation"] = hesitation_labels(rec, hes)
        if rec.get("correct") is not None:
            c = np.full(len(ids), -1, dtype=np.int8)
            c[: len(rec["prompt_ids"])] = int(bool(rec["correct"]))
            labels["seq:correct"] = c
        if max_len is not None:
            ids, reg = ids[:max_len], reg[:max_len]
            labels = {k: v[:max_len] for k, v in labels.items()}
        yield ids, reg, labels, str(rec["id"])
