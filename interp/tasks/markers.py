"""Thinking markers and hesitation tokens, read from a model's tokenizer and chat template.

* :class:`ThinkMarkers`: how a model writes its thinking (open / close marker, whether the
  prompt already opens the block, the step separator, the hesitation word).
* :func:`detect_markers`: the markers of a tokenizer. R1-style ``<think>`` … ``</think>``
  (and the other spellings in :data:`MARKER_PAIRS`) are found in the vocabulary or in the
  chat template's text; a chat template whose generation prompt ends with the open marker
  (DeepSeek-R1-Distill, QwQ) gives ``starts_open=True``; a template that reads
  ``enable_thinking`` (Qwen3) has a *thinking switch*, which :func:`chat_kwargs` turns on
  or off when prompts are rendered.
* :func:`hesitation_ids`: a hesitation word as the *set* of vocabulary entries that spell
  it, across BPE variants (``Wait``, `` wait``, ``ĠWait``, ``▁wait``, ``WAIT`` …), read
  from the whole vocabulary, never one entry.
* :func:`marker_report` / :func:`require_markers`: how many generations hold the markers,
  and a clear error when none do ("no `</think>` found in 40 of 40 generations; set the
  markers for this model").
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from ..errors import ConfigError

# (open, close) spellings of a think block, most common first
MARKER_PAIRS: tuple[tuple[str, str], ...] = (
    ("<think>", "</think>"),
    ("<thinking>", "</thinking>"),
    ("<|begin_of_thought|>", "<|end_of_thought|>"),
    ("◁think▷", "◁/think▷"),
)
DEFAULT_HESITATIONS = ("wait",)


@dataclass(frozen=True)
class ThinkMarkers:
    """How a model writes its thinking. ``starts_open``: the prompt already ends with the
    open marker (the organisms' ``think`` format, R1-distill chat templates); otherwise the
    model generates it. ``step_sep`` splits the thinking into steps (SEAL); ``hesitation``
    is the hesitation word (its token-id set comes from :func:`hesitation_ids`)."""

    think_open: str | None = "<think>"
    think_close: str = "</think>"
    starts_open: bool = True
    step_sep: str = ";"
    hesitation: str = "wait"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> ThinkMarkers:
        d = dict(d or {})
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    @classmethod
    def organism(cls) -> ThinkMarkers:
        from ..organisms.task import MARKERS

        return cls(MARKERS["think_open"], MARKERS["think_close"], True,
                   MARKERS["step_sep"], MARKERS["hesitation"])


@dataclass
class MarkerDetection:
    """What :func:`detect_markers` found: the markers, whether the vocabulary or template
    holds them (``found``), the thinking switch, and notes for a person."""

    markers: ThinkMarkers
    found: bool
    thinking_switch: bool = False
    has_chat_template: bool = False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"markers": self.markers.to_dict(), "found": self.found,
                "thinking_switch": self.thinking_switch,
                "has_chat_template": self.has_chat_template, "notes": list(self.notes)}


def _template(tokenizer) -> str:
    t = getattr(tokenizer, "chat_template", None)
    if isinstance(t, dict):   # named templates: the default one
        t = t.get("default") or next(iter(t.values()), None)
    return t or ""


def has_thinking_switch(tokenizer) -> bool:
    """Whether the chat template reads ``enable_thinking`` (Qwen3's switch)."""
    return "enable_thinking" in _template(tokenizer)


def chat_kwargs(tokenizer, thinking: bool | None = True) -> dict[str, Any]:
    """Extra ``apply_chat_template`` arguments: ``enable_thinking`` when the template
    has the switch and ``thinking`` is not None."""
    if thinking is not None and has_thinking_switch(tokenizer):
        return {"enable_thinking": bool(thinking)}
    return {}


def render_chat(tokenizer, content: str, thinking: bool | None = True) -> str:
    """One user turn through the chat template, with the generation prompt."""
    try:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True,
            tokenize=False, **chat_kwargs(tokenizer, thinking))
    except Exception as e:  # noqa: BLE001 - a template error is the model's, say which
        raise ConfigError(f"the model's chat template failed on a prompt: "
                          f"{type(e).__name__}: {e}") from e


def detect_markers(tokenizer, hesitation: str = "wait") -> MarkerDetection:
    """The thinking markers of a model, from its vocabulary and chat template.

    The first pair of :data:`MARKER_PAIRS` whose close marker is a vocabulary entry or
    appears in the template wins. ``starts_open`` is True when the rendered generation
    prompt (thinking switched on, if there is a switch) ends with the open marker. Text
    models split steps at blank lines (``"\\n\\n"``). When nothing is found the R1
    spelling is returned with ``found=False``; :func:`require_markers` then tells the
    user to set them."""
    vocab = tokenizer.get_vocab()
    tmpl = _template(tokenizer)
    notes: list[str] = []
    chosen, found = MARKER_PAIRS[0], False
    for o, c in MARKER_PAIRS:
        if c in vocab or c in tmpl:
            chosen, found = (o, c), True
            break
    starts_open = False
    switch = has_thinking_switch(tokenizer)
    if tmpl:
        try:
            text = render_chat(tokenizer, "1+1", thinking=True)
            starts_open = text.rstrip().endswith(chosen[0])
        except ConfigError as e:
            notes.append(str(e))
    if found:
        notes.append(f"thinking markers {chosen[0]} … {chosen[1]}"
                     + (" (the chat template opens the block in the prompt)" if starts_open
                        else ""))
    else:
        notes.append(f"no thinking markers in the vocabulary or chat template; assuming "
                     f"{chosen[0]} … {chosen[1]}")
    if switch:
        notes.append("the chat template has a thinking switch (enable_thinking); prompts "
                     "are rendered with thinking on")
    return MarkerDetection(ThinkMarkers(chosen[0], chosen[1], starts_open, "\n\n", hesitation),
                           found, switch, bool(tmpl), notes)


# --------------------------------------------------------------------------- hesitations
_STRIP = re.compile(r"^[\s\W_]+|[\s\W_]+$", re.UNICODE)


def _token_text(tokenizer, tok: str) -> str:
    try:
        return tokenizer.convert_tokens_to_string([tok])
    except Exception:  # noqa: BLE001 - odd tokenizers: fall back to the raw entry
        return tok


def hesitation_ids(tokenizer, words: Sequence[str] = DEFAULT_HESITATIONS
                   ) -> dict[str, list[int]]:
    """``{word: sorted token ids}``: every vocabulary entry whose text, with surrounding
    whitespace and punctuation stripped, is the word in any letter case (``Wait``,
    `` wait``, ``Wait,`` as one entry, ``▁WAIT`` …). Words are matched whole: ``waiting``
    is not ``wait``. A word no entry spells alone gets the first token of each spelling
    the tokenizer splits (`` wait`` → its first piece), so it still has ids."""
    wanted = {w.strip().lower(): w for w in words if w and w.strip()}
    if not wanted:
        raise ConfigError("no hesitation words given")
    out: dict[str, set[int]] = {w: set() for w in wanted.values()}
    for tok, i in tokenizer.get_vocab().items():
        t = _STRIP.sub("", _token_text(tokenizer, tok)).lower()
        if t in wanted:
            out[wanted[t]].add(int(i))
    for w in wanted.values():
        if out[w]:
            continue
        for variant in (w, " " + w, w.capitalize(), " " + w.capitalize()):
            ids = tokenizer(variant, add_special_tokens=False)["input_ids"]
            if ids:
                out[w].add(int(ids[0]))
    return {w: sorted(v) for w, v in out.items()}


def hesitation_id_set(tokenizer, words: Sequence[str] = DEFAULT_HESITATIONS) -> set[int]:
    """The union of :func:`hesitation_ids` over ``words``."""
    return {i for ids in hesitation_ids(tokenizer, words).values() for i in ids}


def count_hesitations(output_ids: Sequence[int], ids: set[int], start: int = 0,
                      end: int | None = None) -> int:
    """How many tokens of ``output_ids[start:end]`` are hesitation tokens."""
    return sum(1 for t in list(output_ids)[start:end] if int(t) in ids)


# --------------------------------------------------------------------------- checks
def marker_report(records: Sequence[dict[str, Any]], markers: ThinkMarkers) -> dict[str, Any]:
    """How many generation records (with ``opened`` / ``closed`` flags) open and close a
    think block, and a message when none closes one (else None)."""
    n = len(records)
    closed = sum(1 for r in records if r.get("closed"))
    opened = sum(1 for r in records if r.get("opened"))
    msg = None
    if n and closed == 0:
        msg = (f"no `{markers.think_close}` found in {n} of {n} generations; set the "
               "markers for this model (e.g. --set markers='{\"think_open\": \"<think>\", "
               "\"think_close\": \"</think>\", \"starts_open\": false}') or give a task "
               "whose prompts make it think")
    return {"n": n, "opened": opened, "closed": closed, "message": msg}


def require_markers(records: Sequence[dict[str, Any]], markers: ThinkMarkers) -> None:
    """ConfigError with :func:`marker_report`'s message when no record closes a block."""
    msg = marker_report(records, markers)["message"]
    if msg:
        raise ConfigError(msg)
