"""What a run will cost before it starts: forward passes, generations and tokens,
counted from the same batching rules the code runs, and a time from a per-call and
per-token cost measured once on the machine (:func:`calibrate`).

Counting rules (each the loop of the function named):

* a teacher-forced sweep (:func:`interp.vectors.sweep.alpha_sweep`): per chunk of
  ``batch_size`` rows one forward of the original model and one per α;
* a batched generation (:func:`interp.generation.generate`): per chunk one forward of
  the prompts and one per further new token, ``max_new_tokens`` in all, fewer when every
  row of the chunk stops early (so generation counts are upper bounds);
* a Reasoning vectors experiment (:func:`vectors_experiment_cost`): the control vector's
  activation reads, the forward sweep, the accuracy sweep and the lensed trace, as
  :func:`interp.vectors.demo.run_experiment` runs them on the organisms.

``Cost.seconds(cal)`` = forwards × per-call cost + token positions × per-token cost. The
demo's limit (:func:`check_demo`) is on forward passes, the quantity that holds a shared
model's lock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from .errors import CostLimitError


@dataclass
class Cost:
    """Forward passes (``forwards``), the token positions they process (``tokens``) and
    the generations among them (``generations`` of at most ``new_tokens`` each)."""

    forwards: int = 0
    tokens: int = 0
    generations: int = 0
    new_tokens: int = 0
    gen_forwards: int = 0     # the forwards of the generations (upper bound)
    parts: dict[str, int] = field(default_factory=dict)  # forwards per part

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.forwards + other.forwards, self.tokens + other.tokens,
                    self.generations + other.generations,
                    max(self.new_tokens, other.new_tokens),
                    self.gen_forwards + other.gen_forwards, {**self.parts, **other.parts})

    def named(self, part: str) -> Cost:
        return Cost(self.forwards, self.tokens, self.generations, self.new_tokens,
                    self.gen_forwards, {part: self.forwards})

    def seconds(self, cal: Calibration) -> float:
        return self.forwards * cal.per_call + self.tokens * cal.per_token

    def describe(self, cal: Calibration | None = None) -> str:
        """``≈ 1,800 generations × 64 tokens + 36 forward passes, ≈ 40 s on cpu``."""
        bits = []
        if self.generations:
            bits.append(f"{self.generations:,} generations × {self.new_tokens} tokens")
        if self.forwards - self.gen_forwards or not bits:
            bits.append(f"{self.forwards - self.gen_forwards:,} forward passes")
        text = "≈ " + " + ".join(bits)
        if self.gen_forwards:
            text += f" (≤ {self.forwards:,} forward passes in all)"
        if cal is not None:
            text += f", ≈ {_duration(self.seconds(cal))} on {cal.device}"
        return text


def _duration(s: float) -> str:
    if s < 1:
        return "< 1 s"
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _chunks(n: int, batch_size: int) -> list[range]:
    return [range(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]


def forward_sweep_cost(seq_lens: Sequence[int], n_alphas: int, batch_size: int = 64) -> Cost:
    """A teacher-forced α sweep over sequences of these lengths (one forward of the
    original model and one per α for every chunk; rows padded to the chunk's longest)."""
    c = Cost()
    for ch in _chunks(len(seq_lens), batch_size):
        width = max(seq_lens[i] for i in ch)
        c.forwards += 1 + n_alphas
        c.tokens += (1 + n_alphas) * len(ch) * width
    return c


def generation_cost(prompt_lens: Sequence[int], max_new_tokens: int, batch_size: int = 64,
                    runs: int = 1) -> Cost:
    """``runs`` batched generations of these prompts (an upper bound: a chunk whose rows
    all stop early makes fewer forwards)."""
    c = Cost()
    for ch in _chunks(len(prompt_lens), batch_size):
        width = max(prompt_lens[i] for i in ch)
        c.forwards += runs * max_new_tokens
        c.tokens += runs * len(ch) * (width + max_new_tokens - 1)
    c.generations = runs * len(prompt_lens)
    c.new_tokens = max_new_tokens
    c.gen_forwards = c.forwards
    return c


def vectors_experiment_cost(spec: dict[str, Any],
                            parts: Sequence[str] = ("stats", "sweep", "accuracy", "trace")
                            ) -> Cost | None:
    """The cost of :func:`interp.vectors.demo.run_experiment` for an organism spec (None
    for another model's task, whose prompt lengths are only known once read)."""
    from .organisms import task as T
    from .vectors.demo import check_spec
    from .vectors.own import is_task_spec
    from .vectors.sweep import organism_batch

    s = check_spec({k: v for k, v in spec.items() if k not in ("parts", "device", "weights")})
    if is_task_spec(s):
        return None
    total = Cost()
    if s["kind"] == "control":
        probs = T.sample_problems(s["n_control"], seed=s["seed"], split="train")
        reads = 2 if s["vector_kind"] != "R" else 1
        lens = [len(T.encode(T.prompt_text(p, s["positive_fmt"]))) for p in probs]
        c = Cost(forwards=reads * len(_chunks(len(probs), 64)),
                 tokens=reads * len(probs) * max(lens, default=0))
        total = total + c.named("control vector")
    if "sweep" in parts:
        probs = T.sample_problems(s["n_sweep"], seed=s["seed"], split="eval")
        batch = organism_batch(probs, s["fmt"])
        total = total + forward_sweep_cost([len(q) for q in batch.seqs], len(s["alphas"]),
                                           64).named("forward sweep")
    if "accuracy" in parts:
        probs = T.sample_problems(s["n_accuracy"], seed=s["seed"] + 1, split="eval")
        lens = [len(T.encode(T.prompt_text(p, s["fmt"]))) for p in probs]
        g = generation_cost(lens, s["max_new_tokens"], 128, runs=len(s["accuracy_alphas"]))
        g.parts["accuracy sweep"] = g.forwards
        total = total + g
    if "trace" in parts:
        p = T.sample_problems(1, seed=s["seed"] + 2, split="eval")[0]
        n = len(organism_batch([p], s["fmt"]).seqs[0])
        plen = len(T.encode(T.prompt_text(p, s["fmt"])))
        mx = s["max_new_tokens"]
        # trace lens and layer-by-token KL: 2 + 2 forwards; each model's own generation
        # (batch 1) and the lens of it (2 forwards each)
        lens_ = Cost(forwards=4 + 4, tokens=4 * n + 4 * (plen + mx))
        g = generation_cost([plen], mx, 1, runs=2)
        c = lens_ + g
        c.parts["trace"] = c.forwards
        total = total + c
    return total


def length_sweep_cost(n_prompts: int, alphas: Sequence[float], max_new_tokens: int,
                      batch_size: int = 512, prompt_len: int = 16) -> Cost:
    """A Reasoning length α sweep (:func:`interp.length.steer.alpha_sweep`, batched): every
    prompt under every α as one generation of ``n_prompts × len(alphas)`` rows. The
    forward count is exact (up to early stops); prompt lengths are not known before the
    prompts are read, so ``prompt_len`` tokens are assumed for the token count."""
    return generation_cost([prompt_len] * (int(n_prompts) * len(alphas)), max_new_tokens,
                           batch_size)


def length_grid_cost(n_sweep: int, alphas: Sequence[float], n_eval: int,
                     seal_alphas: Sequence[float], max_new_tokens: int,
                     prompt_len: int = 16, batch_size: int = 512) -> Cost:
    """The generations the two α grids of a Reasoning length run add: the all-layer α
    sweep (:func:`length_sweep_cost`) and the SEAL dose-response (every evaluation
    prompt under every SEAL α, one batched generation)."""
    sweep = length_sweep_cost(n_sweep, alphas, max_new_tokens, batch_size, prompt_len)
    sweep.parts["α sweep"] = sweep.forwards
    seal = length_sweep_cost(n_eval, seal_alphas, max_new_tokens, batch_size, prompt_len)
    seal.parts["SEAL sweep"] = seal.forwards
    return sweep + seal


# ------------------------------------------------------------------ calibration
@dataclass(frozen=True)
class Calibration:
    """Seconds per forward call and per token position on ``device``, measured."""

    per_call: float
    per_token: float
    device: str


def calibrate(model, batch: int = 8, seq: int = 32, repeats: int = 3) -> Calibration:
    """Time a forward of 1 × 4 tokens and of ``batch`` × ``seq`` tokens (best of
    ``repeats`` each) and solve ``t = per_call + tokens × per_token`` from the two."""
    import torch

    h = getattr(model, "hooked", model)
    dev = next(h.parameters()).device
    vocab = int(h.cfg.d_vocab)
    small = torch.randint(0, vocab, (1, 4), device=dev)
    big = torch.randint(0, vocab, (batch, seq), device=dev)

    def best(t: torch.Tensor) -> float:
        times = []
        with torch.no_grad():
            for _ in range(repeats):
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                t0 = time.perf_counter()
                h(t)
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                times.append(time.perf_counter() - t0)
        return min(times)

    best(small)   # warm-up
    t1, t2 = best(small), best(big)
    per_token = max(0.0, (t2 - t1) / (batch * seq - 4))
    per_call = max(0.0, t1 - 4 * per_token)
    return Calibration(per_call, per_token, dev.type)


def check_demo(cost: Cost | None, demo=None) -> None:
    """Raise :class:`CostLimitError` when the hosted demo is on and ``cost`` needs more
    forward passes than ``max_grid_forwards`` allows."""
    from .serving import settings

    demo = demo or settings()
    if demo.enabled and cost is not None and cost.forwards > demo.max_grid_forwards:
        raise CostLimitError(
            f"this grid needs about {cost.forwards:,} forward passes; the hosted demo runs "
            f"at most {demo.max_grid_forwards:,} at a time. Use fewer values or "
            "run it locally.")
