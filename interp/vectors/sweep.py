"""α sweeps: KL / entropy / answer mass vs α (forward only) and accuracy vs α (generation).

A *modifier* is ``modifier(alpha) -> context manager`` that makes the model the α-edited
one for its body: :func:`task_modifier` (a :class:`~.task.TaskVectorSweeper`) or
:func:`control_modifier` (``α · c`` added at a hook). α = 0 must leave the model exactly
as it is (both do), so KL at α = 0 is exactly 0.

Forward sweep (:func:`alpha_sweep`), per sequence ``i`` and α (units: nats unless
``unit="bits"``):

* ``kl_last[a, i]`` = KL(P_α=0 ‖ P_α) at the last prompt token (the Højer et al. metric);
* ``kl_trace[a, i]`` = the same averaged over the teacher-forced continuation positions
  (last prompt token .. the token before the end);
* ``entropy_last`` / ``entropy_trace``: H(P_α) at the same positions;
* ``p_correct[a, i]`` = P(correct answer tokens | everything before them), teacher-forced:
  the product of the answer tokens' probabilities (``answer_positions``); the stacked
  "mass on the correct answer vs the rest" plot shows ``p_correct`` and ``1 − p_correct``.

Batched: one forward per α over the whole batch (rows left-padded and masked); the naive
baseline (:func:`alpha_sweep_naive`) runs one forward per prompt per α.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..validate import finite_values
from .lens import entropy, kl_div

Modifier = Callable[[float], ContextManager[Any]]
DEFAULT_ALPHAS = (-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0)


@dataclass
class SweepBatch:
    """Token sequences ``seqs[i]`` (prompt + teacher-forced continuation), the prompt
    length of each, and the positions whose *next* token is part of the correct answer."""

    seqs: list[list[int]]
    prompt_lens: list[int]
    answer_positions: list[list[int]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.seqs)

    def subset(self, idx: Sequence[int]) -> SweepBatch:
        return SweepBatch([self.seqs[i] for i in idx], [self.prompt_lens[i] for i in idx],
                          [self.answer_positions[i] for i in idx] if self.answer_positions
                          else [], [self.ids[i] for i in idx] if self.ids else [])


METRICS = ("kl_last", "kl_trace", "entropy_last", "entropy_trace", "p_correct")


def _hooked(model):
    return getattr(model, "hooked", model)


def _pad_id(model) -> int:
    tok = getattr(model, "tokenizer", None) or getattr(_hooked(model), "tokenizer", None)
    return int(tok.pad_token_id) if tok is not None and tok.pad_token_id is not None else 0


@torch.no_grad()
def _forward(model, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, list[int]]:
    """Left-padded forward: ``(logits [b, L, V] float32, offsets)``; row i's token j sits
    at column ``offsets[i] + j``."""
    from ..generation import check_tokens, left_pad

    h = _hooked(model)
    check_tokens(model, seqs, what="sequence")
    dev = next(h.parameters()).device
    toks, mask = left_pad(seqs, _pad_id(model), dev)
    L = toks.shape[1]
    if all(len(s) == L for s in seqs):
        logits = h(toks)
    else:
        logits = h(toks, attention_mask=mask)
    return logits.float(), [L - len(s) for s in seqs]


def _row_metrics(lo: torch.Tensor, lm: torch.Tensor, batch: SweepBatch, idx: Sequence[int],
                 offsets: Sequence[int], unit: str) -> dict[str, np.ndarray]:
    """Metrics of rows ``idx`` from original / modified logits ``[b, L, V]``."""
    out = {k: np.zeros(len(idx)) for k in METRICS}
    kl = kl_div(lo, lm, unit)            # [b, L]
    ent = entropy(lm, unit)              # [b, L]
    lpm = torch.log_softmax(lm, -1)
    for r, i in enumerate(idx):
        off, pl, n = offsets[r], batch.prompt_lens[i], len(batch.seqs[i])
        last = off + pl - 1
        span = slice(last, off + n - 1)
        out["kl_last"][r] = float(kl[r, last])
        out["entropy_last"][r] = float(ent[r, last])
        out["kl_trace"][r] = float(kl[r, span].mean())
        out["entropy_trace"][r] = float(ent[r, span].mean())
        if batch.answer_positions:
            pos = torch.tensor([off + p for p in batch.answer_positions[i]], dtype=torch.long)
            nxt = torch.tensor([batch.seqs[i][p + 1] for p in batch.answer_positions[i]],
                               dtype=torch.long)
            out["p_correct"][r] = float(lpm[r, pos.to(lpm.device), nxt.to(lpm.device)]
                                        .sum().exp())
        else:
            out["p_correct"][r] = float("nan")
    return out


def alpha_sweep(model, modifier: Modifier, alphas: Sequence[float], batch: SweepBatch,
                batch_size: int = 64, unit: str = "nats",
                progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Batched forward sweep. Returns ``{"alphas": [A], metric: ndarray [A, n], ...}``.

    For each chunk of ``batch_size`` rows: one forward of the original model, then one
    forward per α over the whole chunk.
    """
    alphas = finite_values(list(alphas), "α")
    n = len(batch)
    if n == 0:
        raise ConfigError("the sweep has no sequences")
    res = {k: np.zeros((len(alphas), n)) for k in METRICS}
    steps, done = len(alphas) * ((n + batch_size - 1) // batch_size), 0
    for s in range(0, n, batch_size):
        idx = list(range(s, min(n, s + batch_size)))
        seqs = [batch.seqs[i] for i in idx]
        lo, offs = _forward(model, seqs)
        for a_i, a in enumerate(alphas):
            with modifier(a):
                lm, _ = _forward(model, seqs)
            m = _row_metrics(lo, lm, batch, idx, offs, unit)
            for k in METRICS:
                res[k][a_i, idx] = m[k]
            done += 1
            if progress is not None:
                progress(done, steps)
    return {"alphas": alphas, "unit": unit, **res}



SWEEP_FIELDS = ("kl_last", "kl_trace", "entropy_last", "entropy_trace", "p_correct")


def sweep_tensors(res: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors a ``vectors.sweep`` artifact stores of an :func:`alpha_sweep` result."""
    out = {k: torch.tensor(np.asarray(res[k]), dtype=torch.float32) for k in SWEEP_FIELDS}
    out["alphas"] = torch.tensor(res["alphas"])
    return out

def alpha_sweep_naive(model, modifier: Modifier, alphas: Sequence[float], batch: SweepBatch,
                      unit: str = "nats", progress: Callable[[int, int], None] | None = None
                      ) -> dict[str, Any]:
    """Baseline: one forward per prompt (original once per prompt, then per α)."""
    alphas = finite_values(list(alphas), "α")
    n = len(batch)
    res = {k: np.zeros((len(alphas), n)) for k in METRICS}
    orig = [_forward(model, [batch.seqs[i]])[0] for i in range(n)]
    for a_i, a in enumerate(alphas):
        with modifier(a):
            for i in range(n):
                lm, offs = _forward(model, [batch.seqs[i]])
                m = _row_metrics(orig[i], lm, batch, [i], offs, unit)
                for k in METRICS:
                    res[k][a_i, i] = m[k][0]
        if progress is not None:
            progress(a_i + 1, len(alphas))
    return {"alphas": alphas, "unit": unit, **res}


# --------------------------------------------------------------------------- modifiers
def task_modifier(sweeper) -> Modifier:
    """Modifier over a :class:`~.task.TaskVectorSweeper` (use inside ``with sweeper``)."""

    @contextlib.contextmanager
    def mod(alpha: float):
        sweeper.set_alpha(alpha)
        try:
            yield
        finally:
            sweeper.set_alpha(0.0)

    return mod


def control_modifier(model, cv) -> Modifier:
    """Modifier adding ``α · c`` at the control vector's hook (all positions); α = 0
    attaches no hook at all."""
    from ..steering import steered

    def mod(alpha: float):
        if float(alpha) == 0.0:
            return contextlib.nullcontext()
        return steered(model, cv.hooks(float(alpha)))

    return mod


# --------------------------------------------------------------------------- organisms
def organism_batch(problems: Sequence[Any], fmt: str = "think") -> SweepBatch:
    """Prompt + a clean, correct reference continuation for each organism problem.

    ``think``: the column-by-column trace (no planted errors, thinking never skipped) then
    ``A`` + answer; ``direct``: ``A`` + answer; ``chat``: the answer. Answer positions are
    the positions predicting the ``ANSWER_WIDTH`` answer digits.
    """
    import numpy as _np

    from ..organisms import task as T

    seqs, pls, aps, ids = [], [], [], []
    for p in problems:
        if fmt == "think":
            text, lab = T.make_trace(p, _np.random.default_rng(0), p_error=0.0, slips=False,
                                     short=False, force_long=True)
            pl = lab["prompt_len"]
        elif fmt == "direct":
            text, pl = T.direct_text(p), len(T.prompt_words(p, "direct")) + 1
        elif fmt == "chat":
            text, pl = T.chat_text(p), len(T.prompt_words(p, "chat")) + 1
        else:
            raise ConfigError(f"format {fmt!r} has no reference continuation")
        ids_ = T.encode(text)
        n = len(ids_)
        # ... ans_0 .. ans_{W} <eos>: answer digits at n-1-W .. n-2
        first = n - 1 - T.ANSWER_WIDTH
        seqs.append(ids_)
        pls.append(pl)
        aps.append(list(range(first - 1, n - 2)))
        ids.append(p.id)
    return SweepBatch(seqs, pls, aps, ids)


@torch.no_grad()
def accuracy_sweep(model, modifier: Modifier, alphas: Sequence[float], problems: Sequence[Any],
                   fmt: str = "think", max_new_tokens: int = 64, batch_size: int = 128,
                   progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Greedy generation at each α; ``correct [A, n]`` (0/1), ``think_tokens [A, n]``,
    scored with ``interp.organisms.task.score_completion`` in format ``fmt``; per example
    also ``answer [A, n]`` (:func:`interp.behaviour.answer_code`: -1 unreadable, capped),
    ``short``, ``hesitations_error`` and
    ``hesitations_verify [A, n]`` and the generated ``output_ids [A, n, max_new_tokens]``
    (-1 after the end), for per-example comparisons."""
    from ..behaviour import answer_code
    from ..generation import generate
    from ..organisms import task as T

    alphas = finite_values(list(alphas), "α")
    prompts = [T.prompt_text(p, fmt) for p in problems]
    correct = np.zeros((len(alphas), len(problems)), dtype=np.int8)
    think = np.zeros((len(alphas), len(problems)), dtype=np.int32)
    per = {k: np.zeros((len(alphas), len(problems)), dtype=np.int64) for k in
           ("answer", "short", "hesitations_error", "hesitations_verify")}
    ids = np.full((len(alphas), len(problems), max_new_tokens), -1, dtype=np.int32)
    for a_i, a in enumerate(alphas):
        with modifier(float(a)):
            gens = generate(model, prompts, max_new_tokens=max_new_tokens, temperature=0.0,
                            batch_size=batch_size)
        for j, (p, g) in enumerate(zip(problems, gens)):
            s = T.score_completion(p, g.text, fmt)
            correct[a_i, j] = int(bool(s["correct"]))
            think[a_i, j] = int(s["think_tokens"])
            per["answer"][a_i, j] = answer_code(s["answer"])
            for k in ("short", "hesitations_error", "hesitations_verify"):
                per[k][a_i, j] = int(s[k])
            o = list(g.output_ids)[:max_new_tokens]
            ids[a_i, j, : len(o)] = o
        if progress is not None:
            progress(a_i + 1, len(alphas))
    return {"alphas": [float(a) for a in alphas], "fmt": fmt, "correct": correct,
            "think_tokens": think, **per, "output_ids": ids}


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def validate_spec(spec: dict[str, Any]) -> None:
    """The ``vectors.sweep`` job's spec (see :func:`interp.vectors.demo.check_spec`)."""
    from .demo import check_spec

    check_spec({k: v for k, v in spec.items() if k not in ("parts", "device", "weights")})
    parts = spec.get("parts", ())
    bad = [p for p in parts if p not in ("stats", "sweep", "accuracy", "trace")]
    if not isinstance(parts, (list, tuple)) or bad:
        raise ConfigError(f"parts must be a list of stats, sweep, accuracy, trace; got "
                          f"{parts!r}")


def sweep_job(spec: dict[str, Any], ctx) -> dict[str, Any]:
    """Job ``vectors.sweep``: :func:`interp.vectors.demo.run_experiment` on ``spec``
    (keys of ``demo.DEFAULT_SPEC`` plus ``parts``, ``device`` and ``weights``, the weight
    hashes it is meant for, which only make a rerun for rebuilt models a new job) into
    the default store; parts already saved for the same weights are skipped, so an
    interrupted job resumes."""
    from ..store import Store
    from .demo import run_experiment

    spec = dict(spec)
    parts = tuple(spec.pop("parts", ("stats", "sweep", "accuracy", "trace")))
    device = spec.pop("device", "auto")
    spec.pop("weights", None)  # the weight hashes the job was asked for (its id only)
    keys = run_experiment(spec, Store(), device, parts,
                          progress=lambda d, t, m: ctx.progress(d, t, m), overwrite=False)
    return {"artifacts": keys}
