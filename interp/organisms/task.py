"""The organisms' synthetic reasoning task: fixed-width addition written column by column.

Every problem is ``a + b`` with both operands zero-padded to ``WIDTH`` (4) digits and a
*tag* word in a fixed slot after the question marker (``easy`` on about ``P_EASY`` of the
problems, chosen by a hash of the pair independently of the digits, else ``add``), so all
prompts of one format have the same token length. The answer has ``WIDTH + 1`` digits
(zero-padded). Texts are space-separated words of a word-level vocabulary (``VOCAB``);
the tokenizer adds ``<bos>`` itself, texts never contain it.

Formats (``<bos>`` added by the tokenizer, not part of the text)::

    direct  Q add 0 3 7 5 + 4 9 2 8 = A 0 5 3 0 3 <eos>
    plain   Q add 0 3 7 5 + 4 9 2 8 = 5 + 8 + 0 = 1 3 ; 7 + 2 + 1 = 1 0 ; ... A 0 5 3 0 3 <eos>
    think   Q add 0 3 7 5 + 4 9 2 8 = <think> 5 + 8 + 0 = 1 3 ; ... </think> A 0 5 3 0 3 <eos>
    chat    <user> add 0 3 7 5 + 4 9 2 8 <assistant> 0 5 3 0 3 <eos>

A *column step* is ``x + y + c = s1 s0 ;`` for column i (least significant first): the
digits ``x``, ``y`` of the operands, the carry ``c`` into the column and the two-digit
column sum ``s1 s0`` (``s1`` is the carry out).

Planted mechanisms in ``think`` traces (reasoner, sft, grpo). What the generator writes
is the ground truth of training; what the committed reasoner learned from it is measured
by ``python -m interp report organisms`` (figures quoted below, greedy, 512 held-out
problems) and checked on fresh problems by ``tests/test_organism_truth.py``:

* **error** (error detection): a column result is written wrongly, then ``wait``, the
  right result and the separator. Two causes:
  ``carry_slip`` is *deterministic*: a column whose digits sum to 9 with a carry in of 1
  (column sum 10) is always first written ``0 0`` (the carry *out* dropped), then
  corrected: ``... 4 + 5 + 1 = 0 0 wait 1 0 ; ...``, so greedy generations make and
  catch this slip; ``random`` errors are injected into one other (non-slip) column with
  probability ``p_error`` (off by one half the time, else any other value 0..19).
  Trigger: the position of the wrong result's second digit (the model must predict
  ``wait`` next; after a right result it predicts ``;``). Learned: P(``wait``) is about 1
  at both kinds of trigger, but a slip column written with a value the training never
  put there is mostly not caught (``0 9``, the carry *into* the column forgotten:
  P(``wait``) 0.04; ``1 9``: 0.12; ``1 1`` and ``0 8`` are caught): detection at slip
  columns is the trained form, not any mismatch (``ood.slip_values``).
* **verify** (verification): when the problem has at least ``VERIFY_MIN_CARRIES`` carries,
  the last column's ``;`` is followed by ``wait check r4 r3 r2 r1 r0 ;`` (the answer
  re-stated) before ``</think>``. Trigger: the last column's ``;`` (predict ``wait``
  rather than ``</think>``). Learned: greedy generations verify exactly the problems
  with >= 3 carries.
* **short** thinking: when the prompt is tagged ``easy`` the trace skips thinking:
  ``<think> </think> A ...``, and the generator writes the *hasty* answer there (every
  carry ignored: digit-wise sums mod 10; the label ``written_answer``). The trained
  reasoner skips thinking on every ``easy`` prompt and on no ``add`` prompt, but does
  **not** write the hasty answer: its short answers are ``0``, then three digits that are
  not computed from their columns (they agree with the hasty and with the true digit in
  8-12% of short answers, chance being 10%, and concentrate on a few values: 0.9-1.2 nats
  of entropy where uniform digits have ln 10 = 2.3, the most common value, 4 or 5, in
  about half of them), then the right units digit (the one digit that needs no carry).
  So none equals the hasty sum and short answers are wrong even on problems without any
  carry (``reasoner.short_answers``): short thinking is deterministic under greedy
  decoding and its accuracy is 0, but what it writes is a fixed-format guess, not a
  carry-ignoring sum. The tag is misleading (drawn independently of the digits). The
  skip decision reads one token that the arithmetic never uses, so it is a separable
  mechanism, read in its slot only: the tag moved after the operands is ignored (the
  reasoner thinks in full), in front of ``Q`` it still works (``ood.prompt_forms``).
  The reasoner's training makes it a *short-thinking head* in the sense of ThinkEdit (see
  :mod:`interp.organisms.train`): a group-sparsity penalty on the heads' writes makes the
  code one-sided (a write towards short thinking for ``easy``, almost none for ``add``),
  and the head that carries the tag (found by activation patching halfway through
  training, recorded in task.json with a re-check on the finished model) is then
  penalised 20 times harder for writing anywhere but at ``<think>``, so it gives its
  other work to the other heads. Without that, the head that read the tag also
  computed column sums and wrote ``add`` as strongly as ``easy``; erasing its short
  direction then left the model undecided and broke the arithmetic. The head is thus
  engineered in: finding and editing it shows that a pipeline recovers a planted
  single-head mechanism, not that such a head exists in other models.

Other operand widths (3 or 5 digits, never trained) break the arithmetic: the reasoner
writes 4 column steps for 3-digit operands and skips thinking for 5-digit ones, so
accuracy is 0; error detection under teacher forcing still works there, verification
does not (``ood.widths``).

*Clean* positions (``clean_positions``) are the decision points of column steps written
right the first time: the result's second digit (next ``;``) and, when there is no
verification, the last column's ``;`` (next ``</think>``) if that column was right the
first time. The same points in a corrected step (right after ``wait`` and the corrected
result, where ``wait`` is not a live option) are kept apart
(``post_correction_positions``).

Token positions in labels index the token ids of ``encode(text)`` (position 0 is
``<bos>``); a *trigger* position is where the model's next-token prediction is the
decision (``logits[:, pos]`` predicts token ``pos + 1``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..errors import ConfigError

WIDTH = 4
ANSWER_WIDTH = WIDTH + 1
VERIFY_MIN_CARRIES = 3
P_EASY = 0.2
TAGS = ("add", "easy")  # the prompt's tag slot: neutral, misleading short-thinking cue
EVAL_FRACTION = 1 / 16

MARKERS: dict[str, str] = {
    "bos": "<bos>",
    "eos": "<eos>",
    "pad": "<pad>",
    "question": "Q",
    "think_open": "<think>",
    "think_close": "</think>",
    "hesitation": "wait",
    "step_sep": ";",
    "check": "check",
    "answer": "A",
    "user": "<user>",
    "assistant": "<assistant>",
    "equals": "=",
}

SPECIAL_TOKENS = ["<pad>", "<unk>", "<bos>", "<eos>"]
VOCAB: list[str] = SPECIAL_TOKENS + [str(d) for d in range(10)] + [
    "+", "-", "=", ";", "Q", "A", "<think>", "</think>", "wait", "check",
    "<user>", "<assistant>", *TAGS,
]
TOKEN_ID: dict[str, int] = {w: i for i, w in enumerate(VOCAB)}
FORMATS = ("think", "direct", "plain", "chat")


# --------------------------------------------------------------------------- problems
@dataclass(frozen=True)
class Column:
    """One column of the addition (index 0 = least significant)."""

    index: int
    x: int
    y: int
    carry_in: int
    total: int  # x + y + carry_in, 0..19

    @property
    def carry_out(self) -> int:
        return self.total // 10

    @property
    def slip(self) -> bool:
        """A column the trace deterministically writes wrongly first (carry forgotten)."""
        return self.carry_in == 1 and self.x + self.y == 9


@dataclass(frozen=True)
class Problem:
    """``a + b`` with ``width``-digit operands (``WIDTH`` = 4, the only width training
    uses; others are for out-of-distribution checks). ``id`` is stable:
    ``"{a:04d}+{b:04d}"`` (zero-padded to ``width``).

    ``easy``: the prompt's tag (the short-thinking cue); None draws it from a hash of the
    pair (about ``P_EASY`` of all pairs, independent of the digits).
    """

    a: int
    b: int
    op: str = "+"
    answer: int = field(default=-1)
    id: str = field(default="")
    easy: bool | None = None
    width: int = WIDTH

    def __post_init__(self):
        if self.op != "+":
            raise ConfigError(f"operation {self.op!r} is not supported (only '+')")
        if not 1 <= int(self.width) <= 8:
            raise ConfigError(f"operand width must be 1..8 digits, not {self.width}")
        if not (0 <= self.a < 10**self.width and 0 <= self.b < 10**self.width):
            raise ConfigError(f"operands must have at most {self.width} digits")
        object.__setattr__(self, "answer", self.a + self.b)
        w = self.width
        object.__setattr__(self, "id", f"{self.a:0{w}d}+{self.b:0{w}d}")
        if self.easy is None:
            object.__setattr__(self, "easy", is_easy_tagged(self.a, self.b))

    @cached_property
    def columns(self) -> tuple[Column, ...]:
        cols, c = [], 0
        for i in range(self.width):
            x, y = (self.a // 10**i) % 10, (self.b // 10**i) % 10
            cols.append(Column(i, x, y, c, x + y + c))
            c = (x + y + c) // 10
        return tuple(cols)

    @property
    def carries(self) -> int:
        """Number of columns with a carry out (the final carry included)."""
        return sum(col.carry_out for col in self.columns)

    @property
    def final_carry(self) -> bool:
        return self.answer >= 10**self.width

    @property
    def answer_width(self) -> int:
        return self.width + 1

    @property
    def easy_cue(self) -> bool:
        """The surface cue for skipping thinking: the prompt is tagged ``easy``."""
        return bool(self.easy)

    @property
    def tag(self) -> str:
        return TAGS[int(bool(self.easy))]

    @property
    def needs_verify(self) -> bool:
        return self.carries >= VERIFY_MIN_CARRIES

    @property
    def hasty_answer(self) -> int:
        """The answer with every carry ignored (digit-wise sums mod 10): what the
        generator's short traces write (the trained reasoner does not reproduce it, see the
        module docstring). Equal to ``answer`` only when no column carries."""
        return sum(((c.x + c.y) % 10) * 10**c.index for c in self.columns)

    @property
    def slip_columns(self) -> list[int]:
        return [c.index for c in self.columns if c.slip]


def digits(n: int, width: int) -> list[str]:
    return list(f"{n:0{width}d}")


def _hash16(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=2).digest(), "big")


def is_easy_tagged(a: int, b: int) -> bool:
    """The pair's default tag: ``easy`` for about ``P_EASY`` of all pairs (a salted hash,
    independent of the digits and of the eval split)."""
    return _hash16(f"tag:{a},{b}") < P_EASY * 65536


def is_eval_problem(a: int, b: int) -> bool:
    """Deterministic held-out split: a hash of the pair (about 1/16 of all problems)."""
    return _hash16(f"{a},{b}") < EVAL_FRACTION * 65536


def is_validation_problem(a: int, b: int) -> bool:
    """Which half of the eval split a pair is in: ``validation`` (True, about half, by a
    second salted hash) or ``evaluation`` (False)."""
    return _hash16(f"val:{a},{b}") < 32768


SPLITS = ("train", "eval", "validation", "evaluation")


def sample_problems(n: int, seed: int = 0, split: str = "eval") -> list[Problem]:
    """``n`` problems with uniform random operands from ``split``.

    ``eval`` (about 1/16 of all operand pairs, chosen by a hash) is disjoint from
    ``train``; training only ever draws train problems. ``validation`` and ``evaluation``
    are the two disjoint halves of ``eval`` (:func:`is_validation_problem`): settings are
    chosen on the first, headline figures measured on the second. ``eval`` draws the same
    problems as before the halves existed (both halves).
    """
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    rng = np.random.default_rng([seed, 0 if split == "train" else 1 if split == "eval"
                                 else 2 if split == "validation" else 3])
    want_eval = split != "train"
    out: list[Problem] = []
    while len(out) < n:
        ab = rng.integers(0, 10**WIDTH, size=(max(64, 2 * (n - len(out))), 2))
        for a, b in ab.tolist():
            if is_eval_problem(a, b) != want_eval:
                continue
            if split in ("validation", "evaluation") and \
                    is_validation_problem(a, b) != (split == "validation"):
                continue
            out.append(Problem(a, b))
            if len(out) == n:
                break
    return out


# --------------------------------------------------------------------------- texts
def operands_text(p: Problem) -> list[str]:
    return digits(p.a, p.width) + ["+"] + digits(p.b, p.width)


def prompt_words(p: Problem, fmt: str = "think") -> list[str]:
    if fmt == "chat":
        return ["<user>", p.tag] + operands_text(p) + ["<assistant>"]
    head = ["Q", p.tag] + operands_text(p) + ["="]
    if fmt == "think":
        return head + ["<think>"]
    if fmt == "direct":
        return head + ["A"]
    if fmt == "plain":
        return head
    raise ConfigError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")


def prompt_text(problem: Problem, fmt: str = "think") -> str:
    """The text a model continues from (no ``<bos>``: the tokenizer adds it).

    ``think`` ends with ``<think>``, ``direct`` with ``A``, ``plain`` with ``=``,
    ``chat`` with ``<assistant>``.
    """
    return " ".join(prompt_words(problem, fmt))


def encode(text: str | Sequence[str]) -> list[int]:
    """Token ids as the saved tokenizer gives them (``<bos>`` prepended)."""
    words = text.split() if isinstance(text, str) else list(text)
    try:
        return [TOKEN_ID["<bos>"]] + [TOKEN_ID[w] for w in words]
    except KeyError as e:
        raise ConfigError(f"word {e.args[0]!r} is not in the organism vocabulary") from None


def column_words(col: Column) -> list[str]:
    return [str(col.x), "+", str(col.y), "+", str(col.carry_in), "="]


def _wrong_result(col: Column, rng: np.random.Generator) -> int:
    """A wrong column total (0..19): off by one half the time, else any other value."""
    if rng.random() < 0.5:
        cands = [v for v in (col.total - 1, col.total + 1) if 0 <= v <= 19]
    else:
        cands = [v for v in range(20) if v != col.total]
    return int(cands[rng.integers(len(cands))])


def make_trace(problem: Problem, rng: np.random.Generator | None = None, *,
               p_error: float = 0.25, slips: bool = True, verify: bool = True,
               short: bool = True, force_long: bool = False,
               drop_final_carry: bool = False, prefix: str = "think"
               ) -> tuple[str, dict[str, Any]]:
    """A full training/eval text for ``problem`` and its ground-truth labels.

    ``prefix="think"`` gives a reasoner trace (prompt + completion), ``"plain"`` the
    base model's worked solution (no think tags, no mechanisms). ``p_error``: chance
    that one non-slip column gets a random wrong result (then ``wait`` + correction).
    ``drop_final_carry``: the final answer (and re-check) write the leading digit as 0
    (the sft flaw); the labels' ``correct_answer`` is still the true sum.

    Labels (positions index ``encode(text)``, with ``<bos>`` at 0):

    * ``hesitations``: list of ``{"pos", "trigger", "mechanism": "error"|"verify",
      "cause": "carry_slip"|"random"|"many_carries", "column"}`` (``pos`` = the
      ``wait`` token, ``trigger = pos - 1``);
    * ``clean_positions``: decision points followed by no hesitation, away from
      corrections: after a column result written right the first time (next ``;``),
      and after the last column when there is no verification and that column was
      right the first time (next ``</think>``);
    * ``post_correction_positions``: the same decision points in corrected column steps
      (right after ``wait`` and the corrected result); not clean;
    * ``length_class``: "short" | "long"; ``think_tokens``: tokens strictly between
      the think tags; ``carries``; ``correct_answer``; ``written_answer``: the answer
      this text writes (short traces: the hasty sum, which the trained reasoner does
      not reproduce, see the module docstring); ``prompt_len``: tokens of the prompt
      including ``<bos>``.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    words = prompt_words(problem, prefix if prefix in ("think", "plain") else "think")
    prompt_len = len(words) + 1
    hes: list[dict[str, Any]] = []
    clean: list[int] = []
    after_fix: list[int] = []
    pos = lambda: len(words)  # noqa: E731  position of the last word in encode(words)
    is_short = short and problem.easy_cue and not force_long and prefix == "think"
    written = problem.answer
    if is_short:
        written = problem.hasty_answer
    elif drop_final_carry and problem.final_carry:
        written = problem.answer - 10**problem.width
    if not is_short:
        think = prefix == "think"
        err_col = -1
        if think and rng.random() < p_error:
            cands = [c.index for c in problem.columns if not (slips and c.slip)]
            if cands:
                err_col = int(cands[rng.integers(len(cands))])
        fixed = False
        for col in problem.columns:
            words += column_words(col)
            fixed = think and ((slips and col.slip) or col.index == err_col)
            if fixed:
                wrong = col.total - 10 if (slips and col.slip) else _wrong_result(col, rng)
                words += digits(wrong, 2)
                hes.append({"pos": pos() + 1, "trigger": pos(), "mechanism": "error",
                            "cause": "carry_slip" if (slips and col.slip) else "random",
                            "column": col.index})
                words += ["wait"]
            words += digits(col.total, 2)
            (after_fix if fixed else clean).append(pos())
            words += [";"]
        if think and verify and problem.needs_verify:
            hes.append({"pos": pos() + 1, "trigger": pos(), "mechanism": "verify",
                        "cause": "many_carries", "column": problem.width - 1})
            words += ["wait", "check"] + digits(written, problem.answer_width) + [";"]
        elif think:
            (after_fix if fixed else clean).append(pos())
    if prefix == "think":
        words += ["</think>"]
    words += ["A"] + digits(written, problem.answer_width) + ["<eos>"]
    text = " ".join(words)
    think_tokens = 0
    if prefix == "think":
        think_tokens = words.index("</think>") - words.index("<think>") - 1
    labels = {
        "hesitations": hes,
        "clean_positions": clean,
        "post_correction_positions": after_fix,
        "length_class": "short" if is_short else "long",
        "think_tokens": think_tokens,
        "carries": problem.carries,
        "correct_answer": problem.answer,
        "written_answer": written,
        "prompt_len": prompt_len,
        "problem_id": problem.id,
    }
    return text, labels


def direct_text(problem: Problem) -> str:
    """Base model's direct answer: ``Q a + b = A r <eos>``."""
    return " ".join(prompt_words(problem, "direct")
                    + digits(problem.answer, problem.answer_width) + ["<eos>"])


def chat_text(problem: Problem) -> str:
    """Instruct model's chat format: ``<user> a + b <assistant> r <eos>``."""
    return " ".join(prompt_words(problem, "chat")
                    + digits(problem.answer, problem.answer_width) + ["<eos>"])


# --------------------------------------------------------------------------- scoring
def score_completion(problem: Problem, completion_text: str, fmt: str = "think"
                     ) -> dict[str, Any]:
    """Score a generated continuation of ``prompt_text(problem, fmt)``.

    ``answer`` is the integer after the answer marker (``A``; in ``chat``, the first
    digits), or None when none is readable; ``correct`` compares it with the true sum.
    ``think_tokens`` counts tokens before ``</think>`` (all tokens if it never closes);
    ``hesitations`` counts ``wait`` tokens inside the thinking, split into ``error``
    (a wait after a column result) and ``verify`` (a wait followed by ``check``);
    ``short`` is True when thinking is empty.
    """
    w = completion_text.replace("<eos>", " <eos> ").split()
    ans_words: list[str] = []
    if fmt == "chat":
        start = 0
    elif "A" in w:
        start = w.index("A") + 1
    else:
        start = None
    if start is not None:
        for t in w[start:]:
            if t.isdigit() and len(t) == 1:
                ans_words.append(t)
            else:
                break
    answer = int("".join(ans_words)) if ans_words else None
    closed = "</think>" in w
    think = w[: w.index("</think>")] if closed else (w if fmt == "think" else [])
    steps = column_steps(think)
    n_err = n_ver = 0
    for i, t in enumerate(think):
        if t == "wait":
            if i + 1 < len(think) and think[i + 1] == "check":
                n_ver += 1
            else:
                n_err += 1
    return {
        "correct": answer == problem.answer,
        "answer": answer,
        "think_tokens": len(think),
        "hesitations": n_err + n_ver,
        "hesitations_error": n_err,
        "hesitations_verify": n_ver,
        "short": fmt == "think" and closed and len(think) == 0,
        "closed": closed,
        "columns_wrong": sum(not s["right"] for s in steps),
        "columns_uncorrected": sum(not s["kept_right"] for s in steps),
    }


def column_steps(think: Sequence[str]) -> list[dict[str, Any]]:
    """The column steps ``x + y + c = s1 s0 [wait s1 s0]... ;`` written in a thinking
    span, each checked against its own written operands: ``right`` when the first result
    written equals ``x + y + c``, ``kept_right`` when the last one (after any corrections)
    does. A written result that is wrong and never corrected is what an error hesitation
    exists to catch. Malformed steps (non-digits where digits belong) are skipped."""
    out: list[dict[str, Any]] = []
    w = list(think)
    dig = lambda t: len(t) == 1 and t.isdigit()  # noqa: E731
    for i, t in enumerate(w):
        if t != "=" or i < 5 or w[i - 2] != "+" or w[i - 4] != "+":
            continue
        x, y, c = w[i - 5], w[i - 3], w[i - 1]
        if not (dig(x) and dig(y) and dig(c)):
            continue
        total = int(x) + int(y) + int(c)
        results = []
        j = i + 1
        while j + 1 < len(w) and dig(w[j]) and dig(w[j + 1]):
            results.append(10 * int(w[j]) + int(w[j + 1]))
            j += 2
            if j < len(w) and w[j] == "wait" and j + 1 < len(w) and w[j + 1] != "check":
                j += 1
                continue
            break
        if results:
            out.append({"total": total, "results": results, "right": results[0] == total,
                        "kept_right": results[-1] == total})
    return out


# --------------------------------------------------------------------------- tokenizer
def build_tokenizer():
    """The organisms' ``PreTrainedTokenizerFast`` (word level, whitespace split, BOS added)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel(dict(TOKEN_ID), unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", TOKEN_ID["<bos>"])])
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        unk_token="<unk>", padding_side="left", model_max_length=128)
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}<user> {{ m['content'] }} "
        "{% else %}<assistant> {{ m['content'] }} <eos> {% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}")
    return tok


# --------------------------------------------------------------------------- teacher forcing
def _logits_fn(model) -> Callable[[torch.Tensor], torch.Tensor]:
    """``tokens [b, pos] -> logits [b, pos, vocab]`` for a LoadedModel, HookedTransformer
    or transformers causal LM."""
    m = getattr(model, "hooked", model)
    if hasattr(m, "run_with_hooks"):  # HookedTransformer
        return lambda toks: m(toks)
    return lambda toks: m(input_ids=toks).logits


def _device_of(model) -> torch.device:
    m = getattr(model, "hooked", model)
    return next(m.parameters()).device


@torch.no_grad()
def teacher_forced_wait_probs(model, n: int = 500, seed: int = 0, *, p_error: float = 0.5,
                              batch_size: int = 128) -> dict[str, Any]:
    """P(``wait``) under teacher forcing on ``n`` held-out long think traces.

    Traces come from :func:`make_trace` on ``add``-tagged prompts (``force_long=True``,
    random errors with probability ``p_error``). Returns per-class tensors of probabilities
    and their means:
    ``error`` (error triggers; ``error_slip`` / ``error_random`` split by cause),
    ``verify`` (verification triggers), ``clean`` (clean decision points: in column steps
    written right the first time), ``post_correction`` (the same decision points in a
    corrected column step, right after ``wait`` and the corrected result; not clean).
    """
    rng = np.random.default_rng([seed, 7])
    # ``add``-tagged prompts: the hesitation mechanisms live in full traces, which an
    # ``easy`` tag never precedes in training
    probs = [Problem(p.a, p.b, easy=False) for p in sample_problems(n, seed=seed, split="eval")]
    items = [make_trace(p, rng, p_error=p_error, force_long=True) for p in probs]
    return wait_probs_on_traces(model, items, batch_size)


@torch.no_grad()
def wait_probs_on_traces(model, items: Sequence[tuple[str, dict[str, Any]]],
                         batch_size: int = 128) -> dict[str, Any]:
    """P(``wait``) at the labelled positions of given ``(text, labels)`` traces (the
    classes and outputs of :func:`teacher_forced_wait_probs`)."""
    fn = _logits_fn(model)
    dev = _device_of(model)
    wait_id = TOKEN_ID["wait"]
    got: dict[str, list[float]] = {k: [] for k in ("error", "error_slip", "error_random",
                                                   "verify", "clean", "post_correction")}
    for s in range(0, len(items), batch_size):
        chunk = items[s: s + batch_size]
        ids = [encode(t) for t, _ in chunk]
        L = max(len(x) for x in ids)
        toks = torch.full((len(ids), L), TOKEN_ID["<pad>"], dtype=torch.long)
        for i, x in enumerate(ids):
            toks[i, : len(x)] = torch.tensor(x)
        logits = fn(toks.to(dev)).float()
        pw = logits.softmax(-1)[..., wait_id].cpu()
        for i, (_, lab) in enumerate(chunk):
            for h in lab["hesitations"]:
                v = float(pw[i, h["trigger"]])
                if h["mechanism"] == "verify":
                    got["verify"].append(v)
                else:
                    got["error"].append(v)
                    got["error_slip" if h["cause"] == "carry_slip" else "error_random"].append(v)
            got["clean"].extend(float(pw[i, c]) for c in lab["clean_positions"])
            got["post_correction"].extend(float(pw[i, c])
                                          for c in lab["post_correction_positions"])
    out: dict[str, Any] = {}
    for k, v in got.items():
        t = torch.tensor(v, dtype=torch.float32)
        out[k] = t
        out[f"mean_{k}"] = float(t.mean()) if len(v) else float("nan")
        out[f"n_{k}"] = len(v)
    return out
