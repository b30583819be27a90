"""Model organisms: a tiny base / reasoning model family with planted mechanisms.

The task, its markers, generator and scoring live in :mod:`interp.organisms.task`;
training in :mod:`interp.organisms.train`; the behaviour report in
:mod:`interp.organisms.evaluate`. Build with ``python -m interp organisms build``; load a
variant with ``interp.models.load_model("organism:reasoner")``.
"""

from .task import (
    ANSWER_WIDTH,
    FORMATS,
    MARKERS,
    TOKEN_ID,
    VOCAB,
    WIDTH,
    Column,
    Problem,
    build_tokenizer,
    chat_text,
    direct_text,
    encode,
    is_eval_problem,
    make_trace,
    prompt_text,
    sample_problems,
    score_completion,
    teacher_forced_wait_probs,
)

__all__ = [
    "ANSWER_WIDTH", "FORMATS", "MARKERS", "TOKEN_ID", "VOCAB", "WIDTH", "Column", "Problem",
    "build_tokenizer", "chat_text", "direct_text", "encode", "is_eval_problem", "make_trace",
    "prompt_text", "sample_problems", "score_completion", "teacher_forced_wait_probs",
]
