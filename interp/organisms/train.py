"""Build the organism family: one shared initialisation, five variants, plain torch loops.

Stages (each starts from the weights named in ``parent``)::

    init ──> base ──> reasoner        think traces, both hesitation mechanisms, short traces
                 ├──> sft ──> grpo    sft: think traces whose answers mostly drop the final
                 │                    carry; grpo: GRPO on the final-answer reward
                 └──> instruct        chat format, direct answers

Every variant is a ``Qwen2ForCausalLM`` saved with ``save_pretrained`` plus the shared
tokenizer. The build is deterministic given ``seed`` (data order and initialisation come
from it; torch CPU kernels are deterministic for these sizes). Output is written into a
temporary folder and swapped into place at the end, so an interrupted build never leaves
a half-written family behind.

The reasoner stage plants a short-thinking *head*, not only a behaviour. Its loss adds a
group-sparsity penalty on every attention head's write (``head_penalty``: the L2 norm of
each head's write at each position), so heads write only where they carry something and a
cue is coded one-sided. Halfway through, the head whose write carries the ``easy`` tag to
the ``<think>`` position is found by activation patching (``find_cue_head``) and from then
on penalised ``cue_off_weight`` times harder everywhere else, so it gives its other work
to the other heads. Erasing that head's write along the short direction (ThinkEdit) then
means "no cue": the model thinks, and nothing else breaks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, NaNLossError
from ..store import write_json_atomic
from .sampling import complete
from .task import (
    ANSWER_WIDTH,
    EVAL_FRACTION,
    FORMATS,
    MARKERS,
    P_EASY,
    TOKEN_ID,
    VERIFY_MIN_CARRIES,
    VOCAB,
    WIDTH,
    Problem,
    build_tokenizer,
    chat_text,
    direct_text,
    encode,
    is_eval_problem,
    make_trace,
    prompt_words,
    score_completion,
)

log = logging.getLogger(__name__)
ProgressFn = Callable[..., None]
VARIANTS = ("base", "reasoner", "sft", "grpo", "instruct")


@dataclass
class StageConfig:
    steps: int
    lr: float
    batch_size: int = 128
    warmup: float = 0.05
    # weight of a group-sparsity penalty on the attention heads' writes (see head_penalty);
    # 0 = plain next-token loss
    head_l1: float = 0.0
    # dedicate the head that reads the short-thinking cue (reasoner): after ``cue_warmup``
    # of the steps, the head whose write carries the easy tag to the decision (found by
    # activation patching, see find_cue_head) is penalised ``cue_off_weight`` times harder
    # everywhere except at the think-open position, so it stops doing anything else
    dedicate_cue: bool = False
    cue_warmup: float = 0.5
    cue_off_weight: float = 20.0

    def __post_init__(self):
        if self.head_l1 < 0:
            raise ConfigError("head_l1 must be >= 0")
        if self.dedicate_cue and self.head_l1 <= 0:
            raise ConfigError("dedicate_cue needs head_l1 > 0 (the penalty dedicates the head)")
        if self.dedicate_cue and not 0 <= self.cue_warmup < 1:
            raise ConfigError("cue_warmup must be in [0, 1)")


@dataclass
class GRPOConfig:
    steps: int = 80
    prompts_per_step: int = 16
    group_size: int = 8
    temperature: float = 1.0
    lr: float = 5e-4
    epochs: int = 2
    clip: float = 0.2
    kl_beta: float = 0.02
    max_new_tokens: int = 72
    # reward += answer_digit_credit * (share of answer digits right); 0 in real builds
    # (reward = correct final answer). --quick sets it so that untrained models still get
    # non-zero advantages and the policy-gradient update runs.
    answer_digit_credit: float = 0.0


@dataclass
class BuildConfig:
    """Everything that determines the family (saved in task.json)."""

    seed: int = 0
    d_model: int = 64
    n_layers: int = 4
    n_heads: int = 4
    d_mlp: int = 256
    base: StageConfig = field(default_factory=lambda: StageConfig(3000, 3e-3))
    # the reasoner's heads are trained with a group-sparsity penalty and the head that
    # reads the short-thinking cue is dedicated to it (see StageConfig, head_penalty)
    reasoner: StageConfig = field(default_factory=lambda: StageConfig(
        1500, 1e-3, head_l1=4e-3, dedicate_cue=True))
    sft: StageConfig = field(default_factory=lambda: StageConfig(800, 1e-3))
    instruct: StageConfig = field(default_factory=lambda: StageConfig(600, 1e-3))
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    base_direct_share: float = 0.5      # rest: plain worked solutions
    p_error: float = 0.3                # random-error traces (reasoner, sft)
    sft_drop_final_carry: float = 0.75  # share of final-carry sft traces with the flaw
    instruct_think_share: float = 0.3   # instruct: share of sft-style think traces (rest chat)
    n_eval: int = 512
    quick: bool = False
    device: str = "cpu"

    @classmethod
    def quick_config(cls, seed: int = 0) -> BuildConfig:
        return cls(seed=seed, d_model=32, n_layers=2, n_heads=4, d_mlp=64,
                   base=StageConfig(20, 3e-3, 16),
                   reasoner=StageConfig(10, 1e-3, 16, head_l1=4e-3, dedicate_cue=True),
                   sft=StageConfig(10, 1e-3, 16), instruct=StageConfig(10, 1e-3, 16),
                   grpo=GRPOConfig(steps=2, prompts_per_step=2, group_size=4,
                                   max_new_tokens=40, answer_digit_credit=1.0),
                   n_eval=8, quick=True)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- model
def model_config(cfg: BuildConfig, tie_word_embeddings: bool = False):
    from transformers import Qwen2Config

    c = Qwen2Config(
        vocab_size=len(VOCAB), hidden_size=cfg.d_model, intermediate_size=cfg.d_mlp,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_heads, max_position_embeddings=128, rope_theta=10000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=tie_word_embeddings, use_sliding_window=False,
        bos_token_id=TOKEN_ID["<bos>"], eos_token_id=TOKEN_ID["<eos>"],
        pad_token_id=TOKEN_ID["<pad>"], attention_dropout=0.0)
    # Eager attention: on CPU it is several times faster than SDPA for these sizes.
    c._attn_implementation = "eager"
    return c


def init_model(cfg: BuildConfig):
    """The shared step-0 model: identical parameters for identical ``cfg.seed``."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(cfg.seed)
    return Qwen2ForCausalLM(model_config(cfg)).float()


def random_organism_checkpoint(path: str | os.PathLike, seed: int = 0, *, d_model: int = 32,
                               n_layers: int = 2, n_heads: int = 4, d_mlp: int = 64,
                               tie_word_embeddings: bool = False) -> str:
    """An untrained checkpoint with the organisms' architecture family and tokenizer (for
    tests and benchmark stand-ins when the organisms are not built); returns its folder."""
    from transformers import Qwen2ForCausalLM

    cfg = BuildConfig(seed=seed, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                      d_mlp=d_mlp)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(model_config(cfg, tie_word_embeddings)).float()
    _save_variant(model, build_tokenizer(), Path(path))
    return str(path)


def param_hash(model) -> str:
    import hashlib

    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- data
def train_problems(rng: np.random.Generator, n: int) -> list[Problem]:
    out: list[Problem] = []
    while len(out) < n:
        for a, b in rng.integers(0, 10**WIDTH, size=(n, 2)).tolist():
            if not is_eval_problem(a, b):
                out.append(Problem(a, b))
                if len(out) == n:
                    break
    return out


def sample_texts(stage: str, rng: np.random.Generator, n: int, cfg: BuildConfig) -> list[str]:
    """``n`` training texts for a stage (base | reasoner | sft | instruct)."""
    texts = []
    for p in train_problems(rng, n):
        if stage == "base":
            if rng.random() < cfg.base_direct_share:
                texts.append(direct_text(p))
            else:
                texts.append(make_trace(p, rng, prefix="plain")[0])
        elif stage == "reasoner":
            texts.append(make_trace(p, rng, p_error=cfg.p_error)[0])
        elif stage == "sft":
            drop = bool(p.final_carry and rng.random() < cfg.sft_drop_final_carry)
            texts.append(make_trace(p, rng, p_error=cfg.p_error, drop_final_carry=drop)[0])
        elif stage == "instruct":
            if cfg.instruct_think_share > 0 and rng.random() < cfg.instruct_think_share:
                drop = bool(p.final_carry and rng.random() < cfg.sft_drop_final_carry)
                texts.append(make_trace(p, rng, p_error=cfg.p_error, drop_final_carry=drop)[0])
            else:
                texts.append(chat_text(p))
        else:
            raise ValueError(stage)
    return texts


def batch_tensor(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``tokens [b, pos]`` and a ``mask [b, pos]`` of real tokens."""
    ids = [encode(t) for t in texts]
    L = max(len(x) for x in ids)
    toks = torch.full((len(ids), L), TOKEN_ID["<pad>"], dtype=torch.long)
    mask = torch.zeros((len(ids), L), dtype=torch.bool)
    for i, x in enumerate(ids):
        toks[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = True
    return toks, mask


def lm_loss(model, toks: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over real target tokens (every position is trained)."""
    dev = next(model.parameters()).device
    toks, mask = toks.to(dev), mask.to(dev)
    logits = model(input_ids=toks).logits[:, :-1]
    tgt = toks[:, 1:]
    m = mask[:, 1:]
    return F.cross_entropy(logits[m], tgt[m])


@contextlib.contextmanager
def head_writes(model, patch: Callable[[int, torch.Tensor], torch.Tensor] | None = None):
    """Collect each attention layer's per-head input to ``o_proj`` during a forward pass.

    Yields a list that fills with ``(layer, z [b, pos, H, d_head], W [d_model, H * d_head])``
    per layer and forward pass: head ``h`` writes ``z[..., h, :] @ W[:, h*d_head:(h+1)*d_head].T``.
    ``patch(layer, z)`` may return a replacement ``z`` (activation patching)."""
    got: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    handles = []
    H = model.config.num_attention_heads
    for li, layer in enumerate(model.model.layers):

        def pre(mod, args, li=li):
            x = args[0]
            z = x.view(*x.shape[:-1], H, x.shape[-1] // H)
            if patch is not None:
                z = patch(li, z)
                x = z.reshape(x.shape)
            got.append((li, z, mod.weight))
            return (x, *args[1:])
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(pre))
    try:
        yield got
    finally:
        for hd in handles:
            hd.remove()


def head_penalty(got: list[tuple[int, torch.Tensor, torch.Tensor]], mask: torch.Tensor,
                 cue: tuple[int, int] | None = None, free: torch.Tensor | None = None,
                 off_weight: float = 1.0) -> torch.Tensor:
    """Group-lasso penalty on attention heads: the L2 norm of each head's write at each
    real position, summed over heads and layers, averaged over positions.

    A head then writes only where it carries information. Where it reads a cue, that
    makes its code one-sided (a write for the cue, none for its absence), as the
    short-thinking heads of large reasoning models are described; zero-ablating such a
    head's write then means "no cue", which is what ThinkEdit's projection assumes.
    ``cue=(layer, head)`` weighs that head's writes ``off_weight`` times more except at
    the ``free`` positions (``[b, pos]`` bool; None: none).
    """
    m = mask.to(got[0][1].device).float()
    if cue is not None and free is None:
        free = torch.zeros_like(mask, dtype=torch.bool)
    total = m.new_zeros(())
    for li, z, W in got:
        H, dh = z.shape[-2], z.shape[-1]
        out = torch.einsum("bphk,dhk->bphd", z, W.view(W.shape[0], H, dh))
        norms = out.norm(dim=-1)                                        # [b, pos, H]
        if cue is not None and cue[0] == li:
            w = torch.ones_like(norms)
            w[..., cue[1]] = torch.where(free.to(norms.device), 1.0, off_weight)
            norms = norms * w
        total = total + (norms.sum(-1) * m).sum()
    return total / m.sum().clamp_min(1)


@torch.no_grad()
def find_cue_head(model, n: int = 64, seed: int = 0) -> tuple[tuple[int, int], list[list[float]]]:
    """The head that carries the ``easy`` tag to the thinking decision, by patching.

    For ``n`` train problems the think prompt is run tagged ``easy`` and tagged ``add``;
    each head's ``z`` at the last position (``<think>``) of the easy run is replaced by its
    value in the add run, and the decision margin ``logit(</think>) - max digit logit`` is
    averaged. Returns the head whose patch lowers the margin most, and the
    ``[layers][heads]`` margins.
    """
    was_training = model.training
    model.eval()
    try:
        return _patch_margins(model, n, seed)
    finally:
        model.train(was_training)


def _cue_prompts(model, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The think prompts of ``n`` train problems tagged ``easy`` and tagged ``add``."""
    dev = next(model.parameters()).device
    probs = train_problems(np.random.default_rng([seed, 99]), n)

    def toks(easy: bool) -> torch.Tensor:
        return torch.tensor([encode(prompt_words(Problem(p.a, p.b, easy=easy), "think"))
                             for p in probs], device=dev)
    return toks(True), toks(False)


def _margin(logits: torch.Tensor) -> float:
    """Mean ``logit(</think>) - max digit logit`` at the last position (> 0: skip)."""
    last = logits[:, -1].float()
    close, digs = TOKEN_ID[MARKERS["think_close"]], [TOKEN_ID[str(d)] for d in range(10)]
    return float((last[:, close] - last[:, digs].max(-1).values).mean())


@torch.no_grad()
def decision_margins(model, n: int = 64, seed: int = 0) -> dict[str, float]:
    """The unpatched decision margins on easy- and add-tagged prompts."""
    te, ta = _cue_prompts(model, n, seed)
    return {"easy": _margin(model(input_ids=te).logits),
            "add": _margin(model(input_ids=ta).logits)}


def _patch_margins(model, n: int, seed: int):
    te, ta = _cue_prompts(model, n, seed)
    with head_writes(model) as clean:
        model(input_ids=ta)
    clean_z = [z[:, -1].clone() for _, z, _ in clean]
    L, H = len(clean_z), model.config.num_attention_heads
    margins = [[0.0] * H for _ in range(L)]
    for ly in range(L):
        for h in range(H):
            def patch(li, z, ly=ly, h=h):
                if li != ly:
                    return z
                z = z.clone()
                z[:, -1, h] = clean_z[ly][:, h]
                return z
            with head_writes(model, patch=patch):
                margins[ly][h] = _margin(model(input_ids=te).logits)
    best = min(((ly, h) for ly in range(L) for h in range(H)), key=lambda t: margins[t[0]][t[1]])
    return best, margins


def train_recorded(model, name: str, sc: StageConfig, cfg: BuildConfig, seed_offset: int,
                   record: dict[str, Any], **kw) -> list[float]:
    """``train_stage`` plus the build record: the final loss (mean of the last 50 steps)
    and, when the stage found something (the dedicated cue head), ``found[name]``."""
    found: dict[str, Any] = {}
    losses = train_stage(model, name, sc, cfg, seed_offset=seed_offset, info=found, **kw)
    record.setdefault("final_loss", {})[name] = float(np.mean(losses[-50:])) if losses else None
    if found:
        record.setdefault("found", {})[name] = found
    else:
        record.get("found", {}).pop(name, None)
    return losses


def _lr_at(step: int, total: int, lr: float, warmup: float) -> float:
    w = max(1, int(total * warmup))
    if step < w:
        return lr * (step + 1) / w
    t = (step - w) / max(1, total - w)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def train_stage(model, stage: str, sc: StageConfig, cfg: BuildConfig, seed_offset: int,
                progress: ProgressFn | None = None, bar=None,
                info: dict[str, Any] | None = None) -> list[float]:
    """Supervised next-token training on a stage's texts; returns the loss curve.
    ``info`` (optional) receives what the stage found (the dedicated cue head)."""
    rng = np.random.default_rng([cfg.seed, seed_offset])
    torch.manual_seed(cfg.seed * 1000 + seed_offset)
    opt = torch.optim.AdamW(model.parameters(), lr=sc.lr, betas=(0.9, 0.98),
                            weight_decay=0.01)
    model.train()
    losses: list[float] = []
    penalties: list[float] = []
    cue: tuple[int, int] | None = None
    warm = int(round(sc.steps * sc.cue_warmup)) if sc.dedicate_cue else -1
    for step in range(sc.steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, sc.steps, sc.lr, sc.warmup)
        if step == warm:
            cue, margins = find_cue_head(model, seed=cfg.seed)
            if info is not None:
                info["cue_head"], info["cue_patch_margins"] = list(cue), margins
        toks, mask = batch_tensor(sample_texts(stage, rng, sc.batch_size, cfg))
        with head_writes(model) if sc.head_l1 > 0 else contextlib.nullcontext() as got:
            lm = lm_loss(model, toks, mask)
        loss = lm
        if sc.head_l1 > 0:
            free = toks == TOKEN_ID[MARKERS["think_open"]]
            pen = head_penalty(got, mask, cue=cue, free=free, off_weight=sc.cue_off_weight)
            loss = lm + sc.head_l1 * pen
            penalties.append(pen.item())
        if not torch.isfinite(loss):
            raise NaNLossError(f"{stage}: loss became {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(lm.item())     # the next-token loss (comparable across stages)
        if bar is not None:
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(stage=stage, loss=f"{np.mean(losses[-20:]):.4f}")
        if progress is not None:
            progress(step + 1, sc.steps, stage=stage, loss=loss.item())
    model.eval()
    if info is not None and penalties:
        info["final_head_penalty"] = float(np.mean(penalties[-50:]))
    if info is not None and cue is not None:
        # what the finished model does: the head that carries the cue now, the patch
        # margins, and the unpatched margins (easy prompts > 0: short; add < 0: think)
        head, margins = find_cue_head(model, seed=cfg.seed)
        info.update(cue_head_final=list(head), cue_patch_margins_final=margins,
                    decision_margins_final=decision_margins(model, seed=cfg.seed))
    return losses


# --------------------------------------------------------------------------- GRPO
def _token_logps(model, seqs: torch.Tensor) -> torch.Tensor:
    """``logp [b, pos-1]`` of each next token under ``model``."""
    logits = model(input_ids=seqs).logits[:, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, seqs[:, 1:, None])[..., 0]


def grpo_reward(problem: Problem, completion: str, digit_credit: float = 0.0) -> float:
    """1 for a correct final answer, else 0; plus ``digit_credit`` times the share of the
    answer digits written right (position by position) when ``digit_credit > 0``."""
    r = score_completion(problem, completion)
    reward = float(r["correct"])
    if digit_credit > 0:
        w = completion.split()
        got = w[w.index("A") + 1:][:ANSWER_WIDTH] if "A" in w else []
        want = list(f"{problem.answer:0{ANSWER_WIDTH}d}")
        reward += digit_credit * sum(a == b for a, b in zip(got, want)) / ANSWER_WIDTH
    return reward


def grpo_train(model, ref, gc: GRPOConfig, cfg: BuildConfig, seed_offset: int,
               progress: ProgressFn | None = None, bar=None) -> list[dict[str, float]]:
    """GRPO on the think format with reward = correct final answer.

    Per step: ``prompts_per_step`` train problems, ``group_size`` sampled completions
    each (temperature ``temperature``); advantage = (reward - group mean) / (group std +
    1e-4); ``epochs`` clipped policy-gradient updates (PPO ratio clip ``clip``) on the
    completion tokens, plus ``kl_beta`` times the k3 estimate of KL(policy || ref).
    """
    rng = np.random.default_rng([cfg.seed, seed_offset])
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + seed_offset)
    torch.manual_seed(cfg.seed * 1000 + seed_offset)
    opt = torch.optim.AdamW(model.parameters(), lr=gc.lr, betas=(0.9, 0.98),
                            weight_decay=0.0)
    pad, eos = TOKEN_ID["<pad>"], TOKEN_ID["<eos>"]
    history: list[dict[str, float]] = []
    for step in range(gc.steps):
        probs = train_problems(rng, gc.prompts_per_step)
        prompts = [encode(prompt_words(p, "think")) for p in probs for _ in range(gc.group_size)]
        model.eval()
        outs = complete(model, prompts, gc.max_new_tokens, temperature=gc.temperature,
                        generator=gen)
        rewards = torch.tensor([
            grpo_reward(probs[i // gc.group_size], " ".join(VOCAB[t] for t in o),
                        gc.answer_digit_credit)
            for i, o in enumerate(outs)])
        r = rewards.view(-1, gc.group_size)
        adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).view(-1)
        L = max(len(p) + len(o) for p, o in zip(prompts, outs))
        seqs = torch.full((len(prompts), L), pad, dtype=torch.long)
        cmask = torch.zeros((len(prompts), L - 1), dtype=torch.bool)
        for i, (p, o) in enumerate(zip(prompts, outs)):
            P = len(p)  # right padding: a prompt of any length starts at 0
            seqs[i, :P] = torch.tensor(p)
            seqs[i, P: P + len(o)] = torch.tensor(o, dtype=torch.long)
            cmask[i, P - 1: P - 1 + len(o)] = True
        dev = next(model.parameters()).device
        seqs, cmask, adv = seqs.to(dev), cmask.to(dev), adv.to(dev)
        with torch.no_grad():
            old = _token_logps(model, seqs)
            ref_lp = _token_logps(ref, seqs)
        stats = {"reward": float(rewards.mean())}
        if float(adv.abs().sum()) > 0:
            model.train()
            for _ in range(gc.epochs):
                lp = _token_logps(model, seqs)
                ratio = torch.exp(lp - old)
                a = adv[:, None]
                pg = -torch.minimum(ratio * a, ratio.clamp(1 - gc.clip, 1 + gc.clip) * a)
                d = ref_lp - lp
                kl = torch.exp(d) - d - 1
                per_tok = pg + gc.kl_beta * kl
                per_seq = (per_tok * cmask).sum(1) / cmask.sum(1).clamp(min=1)
                loss = per_seq.mean()
                if not torch.isfinite(loss):
                    raise NaNLossError(f"grpo: loss became {loss.item()} at step {step}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
            stats["kl"] = float((kl * cmask).sum() / cmask.sum())
        model.eval()
        history.append(stats)
        if bar is not None:
            bar.update(1)
            recent = np.mean([h["reward"] for h in history[-10:]])
            bar.set_postfix(stage="grpo", reward=f"{recent:.3f}")
        if progress is not None:
            progress(step + 1, gc.steps, stage="grpo", **stats)
    _ = eos
    return history


# --------------------------------------------------------------------------- build
def task_description(cfg: BuildConfig) -> dict[str, Any]:
    """What task.json records: the task, its markers and formats, what each variant saw."""
    return {
        "task": "fixed-width addition written column by column (least significant first)",
        "operand_digits": WIDTH,
        "answer_digits": ANSWER_WIDTH,
        "operations": ["+"],
        "markers": MARKERS,
        "vocab": VOCAB,
        "formats": {
            "direct": "Q tag a3 a2 a1 a0 + b3 b2 b1 b0 = A r4 r3 r2 r1 r0 <eos>",
            "plain": "Q ... = x + y + c = s1 s0 ; (x4 columns) A r4 r3 r2 r1 r0 <eos>",
            "think": "Q ... = <think> x + y + c = s1 s0 ; ... </think> A r4 .. r0 <eos>",
            "chat": "<user> a3 a2 a1 a0 + b3 b2 b1 b0 <assistant> r4 r3 r2 r1 r0 <eos>",
        },
        "formats_list": list(FORMATS),
        "bos_added_by_tokenizer": True,
        "mechanisms": {
            "error": {
                "description": "a column result is written wrongly, then 'wait', the right "
                               "result and ';'",
                "causes": {
                    "carry_slip": "deterministic: column with x + y = 9 and carry in 1 (sum "
                                  "10) is first written '0 0' (carry out dropped), then "
                                  "'wait 1 0 ;'",
                    "random": f"injected into one other column with probability {cfg.p_error}",
                },
                "trigger": "position of the last wrong digit (next token: wait)",
                "learned": "the reasoner catches '0 0' at slip columns and random errors, "
                           "not other values at slip columns ('0 9': P(wait) ~0.04); see "
                           "report organisms, ood.slip_values",
            },
            "verify": {
                "description": f"problems with >= {VERIFY_MIN_CARRIES} carries (final carry "
                               "included): 'wait check r4 .. r0 ;' before '</think>'",
                "trigger": "the last column's ';' (next token: wait instead of </think>)",
            },
            "short": {
                "description": "prompt tagged 'easy': thinking skipped ('<think> </think>'); "
                               "the generator writes the hasty answer (every carry ignored)",
                "learned": "the reasoner skips thinking on every 'easy' prompt but does not "
                           "write the hasty answer: 0, three digits not computed from their "
                           "columns (chance agreement), the right units digit; see report "
                           "organisms, reasoner.short_answers",
                "cue": f"the tag word after 'Q' is 'easy' (about {P_EASY:.0%} of pairs, by a "
                       "hash independent of the digits; otherwise 'add')",
                "carrier": "reasoner: the head that carries the tag to '<think>' (found by "
                           "activation patching after cue_warmup of the steps; "
                           "build.found.reasoner.cue_head) is dedicated to it: the "
                           "heads' writes are trained with a group-sparsity penalty "
                           "(head_l1), that head's cue_off_weight times harder away from "
                           "'<think>'",
            },
        },
        "clean_positions": "decision points of column steps written right the first time: "
                           "after the result (next ';') and, without verification, after "
                           "the last column's ';' (next '</think>'); the same points in "
                           "corrected steps are post_correction_positions, not clean",
        "eval_split": f"hash of (a, b), about {EVAL_FRACTION:.4f} of pairs; never trained on",
        "variants": {
            "base": f"from init; direct answers ({cfg.base_direct_share:.0%}) and plain "
                    "worked solutions; never saw think tags, wait, check or chat tokens",
            "reasoner": "from base; think traces with both mechanisms and short traces; "
                        "head writes trained sparse, the head that reads the 'easy' tag "
                        "dedicated to it (see mechanisms.short.carrier)",
            "sft": "from base; the reasoner's think traces, but in "
                   f"{cfg.sft_drop_final_carry:.0%} of traces with a final carry the answer "
                   "(and re-check) drop the leading 1 (systematic flaw that greedy keeps)",
            "grpo": "from sft; GRPO with reward = correct final answer (sampled groups, "
                    "group-relative advantages, clipped ratio, KL to sft)",
            "instruct": (f"from base; chat format with direct answers "
                         f"({1 - cfg.instruct_think_share:.0%}) plus sft-style think traces "
                         f"({cfg.instruct_think_share:.0%}: same flaw as sft, final carry "
                         "dropped in most final-carry answers), so the reasoning vector "
                         "grpo - sft has something to fix in the think format")
            if cfg.instruct_think_share > 0 else
            "from base; chat format with direct answers only; never saw think tags, wait "
            "or check (base data: direct + plain worked solutions)",
        },
        "parents": {"base": "init", "reasoner": "base", "sft": "base", "grpo": "sft",
                    "instruct": "base"},
        "build_config": cfg.to_dict(),
        "seed": cfg.seed,
    }


def _save_variant(model, tok, path: Path) -> None:
    model.config.architectures = ["Qwen2ForCausalLM"]
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)


STAGE_PARENTS = {"reasoner": ("base", 2), "sft": ("base", 3), "instruct": ("base", 4)}


def retrain_variant(cfg: BuildConfig, out: str | os.PathLike, name: str,
                    show_bar: bool = True) -> dict[str, Any]:
    """Retrain one base-derived variant (reasoner, sft or instruct) of a built family.

    Each stage draws its data and initial RNG state from ``(seed, stage)`` only, so the
    result equals what a full :func:`build_family` with this config writes for that
    variant; the other variants are untouched. (grpo derives from sft: rebuild the family
    when sft changes.) The variant folder is replaced atomically and task.json records
    the new config and timing.
    """
    from tqdm.auto import tqdm
    from transformers import Qwen2ForCausalLM

    if name not in STAGE_PARENTS:
        raise ConfigError(f"only {', '.join(STAGE_PARENTS)} can be retrained alone")
    quiet_transformers()
    out = Path(out)
    parent, offset = STAGE_PARENTS[name]
    sc = getattr(cfg, name)
    ts = time.time()
    model = Qwen2ForCausalLM.from_pretrained(out / parent, dtype=torch.float32)
    model.config._attn_implementation = "eager"
    model.to(cfg.device)
    bar = tqdm(total=sc.steps, desc=f"organisms {name}", file=sys.stderr,
               disable=not show_bar, dynamic_ncols=True)
    desc = json.loads((out / "task.json").read_text())
    rec = desc.setdefault("build", {})
    train_recorded(model, name, sc, cfg, offset, rec, bar=bar)
    bar.close()
    tmp = out / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    _save_variant(model, build_tokenizer(), tmp)
    old = out / f".{name}.old-{uuid.uuid4().hex[:6]}"
    os.rename(out / name, old)
    os.rename(tmp, out / name)
    shutil.rmtree(old, ignore_errors=True)
    fresh = task_description(cfg)
    desc["build_config"], desc["variants"] = fresh["build_config"], fresh["variants"]
    rec.setdefault("timings_s", {})[name] = time.time() - ts
    if name not in rec.setdefault("retrained", []):
        rec["retrained"].append(name)
    desc["mechanisms"] = fresh["mechanisms"]
    write_json_atomic(out / "task.json", desc)
    (out / "README.md").write_text(_readme(desc))
    return desc


def build_family(cfg: BuildConfig, out: str | os.PathLike, progress: ProgressFn | None = None,
                 show_bar: bool = True) -> dict[str, Any]:
    """Train all five variants and write them (atomically, as one folder swap) to ``out``.

    Returns the build record (timings, final losses, init hash) also saved in task.json.
    """
    from tqdm.auto import tqdm

    quiet_transformers()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-build-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    tmp.mkdir()
    t0 = time.time()
    record: dict[str, Any] = {"timings_s": {}, "final_loss": {}}
    total = (cfg.base.steps + cfg.reasoner.steps + cfg.sft.steps + cfg.instruct.steps
             + cfg.grpo.steps)
    bar = tqdm(total=total, desc="organisms build", file=sys.stderr, disable=not show_bar,
               dynamic_ncols=True)
    done_before = 0

    def stage_progress(name: str, steps: int):
        def cb(done, tot, **info):
            if progress is not None:
                progress(done_before + done, total, stage=name, **info)
        return cb

    try:
        tok = build_tokenizer()
        model = init_model(cfg)
        record["init_param_hash"] = param_hash(model)
        model.to(cfg.device)
        record["n_params"] = sum(p.numel() for p in model.parameters())
        stages = [("base", None, cfg.base), ("reasoner", "base", cfg.reasoner),
                  ("sft", "base", cfg.sft), ("instruct", "base", cfg.instruct)]
        for k, (name, parent, sc) in enumerate(stages):
            ts = time.time()
            if parent is not None:
                from transformers import Qwen2ForCausalLM

                model = Qwen2ForCausalLM.from_pretrained(tmp / parent, dtype=torch.float32)
                model.config._attn_implementation = "eager"
                model.to(cfg.device)
            train_recorded(model, name, sc, cfg, k + 1, record,
                           progress=stage_progress(name, sc.steps), bar=bar)
            done_before += sc.steps
            _save_variant(model, tok, tmp / name)
            record["timings_s"][name] = time.time() - ts
        ts = time.time()
        from transformers import Qwen2ForCausalLM

        policy = Qwen2ForCausalLM.from_pretrained(tmp / "sft", dtype=torch.float32)
        ref = Qwen2ForCausalLM.from_pretrained(tmp / "sft", dtype=torch.float32).eval()
        for m in (policy, ref):
            m.config._attn_implementation = "eager"
            m.to(cfg.device)
        for p in ref.parameters():
            p.requires_grad_(False)
        hist = grpo_train(policy, ref, cfg.grpo, cfg, seed_offset=10,
                          progress=stage_progress("grpo", cfg.grpo.steps), bar=bar)
        record["grpo_reward_first10"] = float(np.mean([h["reward"] for h in hist[:10]]))
        record["grpo_reward_last10"] = float(np.mean([h["reward"] for h in hist[-10:]]))
        _save_variant(policy, tok, tmp / "grpo")
        record["timings_s"]["grpo"] = time.time() - ts
        record["train_seconds"] = time.time() - t0
        desc = task_description(cfg)
        desc["build"] = record
        write_json_atomic(tmp / "task.json", desc)
        (tmp / "README.md").write_text(_readme(desc))
        # swap into place
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:6]}"
            os.rename(out, old)
        os.rename(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    return desc


def _readme(desc: dict[str, Any]) -> str:
    lines = [
        "# Model organisms (built by `python -m interp organisms build`)",
        "",
        "Tiny Qwen2 checkpoints trained by the project's own code on fixed-width addition "
        "written column by column, with planted hesitation mechanisms. Do not edit by hand: "
        "rebuild with `python -m interp organisms build [--seed S]` and re-run "
        "`python -m interp organisms eval` for the behaviour report (cache/demo).",
        "",
        "Load one with `interp.models.load_model(\"organism:reasoner\")`. The task, markers, "
        "formats, mechanisms, what each variant saw and the build configuration are in "
        "task.json.",
        "",
        "| variant | trained from | data |",
        "|---|---|---|",
    ]
    for v, d in desc["variants"].items():
        lines.append(f"| {v} | {desc['parents'][v]} | {d} |")
    return "\n".join(lines) + "\n"


def quiet_transformers() -> None:
    """No per-load progress bars or info logs from transformers during builds/evals."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def read_task(organisms_root: str | os.PathLike | None = None) -> dict[str, Any]:
    """The task.json of a built family (default: the project's cache/organisms)."""
    from ..models import organisms_dir

    root = Path(organisms_root) if organisms_root is not None else organisms_dir()
    return json.loads((root / "task.json").read_text())


def with_seed(cfg: BuildConfig, seed: int) -> BuildConfig:
    return replace(cfg, seed=seed)
