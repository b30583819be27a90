"""Per-token comparison of a base model and its fine-tune on the same token sequence.

Conventions
-----------
* Both models are teacher-forced on one token sequence ``t_0 … t_{n−1}`` (a prompt, a
  prompt plus a generated continuation, or any text). Row ``j`` (``j = 1 … n−1``) of a
  :class:`TokenDiff` describes the *target* token ``t_j`` and the two next-token
  distributions that predicted it, computed at position ``j − 1``
  (``logits[:, j − 1]``); ``t_0`` (usually ``<bos>``) has no row.
* ``logprob_base[j] = log p_base(t_j | t_<j)``, likewise ``logprob_fine``; from
  ``log_softmax`` over the full vocabulary in float32 (float64 logits stay float64).
* ``kl_fine_base = KL(P_fine ‖ P_base) = Σ_v p_fine(v) (log p_fine(v) − log p_base(v))``
  and ``kl_base_fine = KL(P_base ‖ P_fine)``, both in nats, from the full softmaxes (no
  smoothing, no top-k truncation); identical logits give exactly 0.
* ``top_*``: the ``k`` tokens each model puts most probability on at that position
  (ids and log-probs, most probable first).
* Answer marks (:func:`organism_marks`): where the organisms' arithmetic fixes a token (an
  answer digit after ``A``, a re-stated answer digit after ``wait check``, a column
  result digit after ``x + y + c =``), ``expected`` is the token the task wants there;
  ``None`` where the task says nothing. Text in another format gets no marks.

Sequences are right-padded into batches with an explicit attention mask (a causal model's
logits at a real position do not depend on padding after it), ``batch_size`` at a time.
Bad input raises :class:`~interp.errors.PromptError` (empty, a single token, longer than
the context, ids outside the vocabulary) or :class:`~interp.errors.PairMismatchError`
(the two tokenizers or vocabularies differ).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import pandas as pd
import torch

from .errors import PairMismatchError, PromptError
from .generation import check_tokens, encode_prompts, generate
from .validate import number
from .vectors.lens import kl_div, log_probs

ProgressFn = Callable[..., None]
SOURCES = ("text", "fine", "base")  # teacher-force the text, or a model's continuation


@dataclass
class TokenDiff:
    """Per-token comparison of one sequence (see the module docstring).

    Tensors have one row per target token ``t_1 … t_{n−1}`` (``n − 1`` rows);
    ``top_*_ids`` / ``top_*_logprob`` are ``[n − 1, k]``. ``prompt_len``: how many leading
    tokens were the prompt (the rest was generated), ``n`` when not known.
    """

    tokens: list[int]
    prompt_len: int
    logprob_base: torch.Tensor
    logprob_fine: torch.Tensor
    kl_fine_base: torch.Tensor
    kl_base_fine: torch.Tensor
    top_base_ids: torch.Tensor
    top_base_logprob: torch.Tensor
    top_fine_ids: torch.Tensor
    top_fine_logprob: torch.Tensor
    expected: list[int | None] = field(default_factory=list)
    role: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens) - 1

    def frame(self, tokenizer=None) -> pd.DataFrame:
        """One row per target token. Columns: ``pos`` (index of the token in the
        sequence), ``token``, ``part`` (prompt / generated), ``logprob_base``,
        ``logprob_fine``, ``delta_logprob`` (fine − base), ``kl_fine_base``,
        ``kl_base_fine``, ``top_base``, ``top_fine`` (``tok (p)`` lists), ``role``,
        ``expected``, ``correct`` (the token is the expected one), ``base_top1_correct``,
        ``fine_top1_correct`` (each model's most probable token is the expected one);
        the last four are empty where the task fixes nothing."""
        dec = _decoder(tokenizer)
        rows = []
        for j in range(1, len(self.tokens)):
            i = j - 1
            exp = self.expected[i] if i < len(self.expected) else None
            rows.append({
                "pos": j, "token": dec(self.tokens[j]),
                "part": "prompt" if j < self.prompt_len else "generated",
                "logprob_base": float(self.logprob_base[i]),
                "logprob_fine": float(self.logprob_fine[i]),
                "delta_logprob": float(self.logprob_fine[i] - self.logprob_base[i]),
                "kl_fine_base": float(self.kl_fine_base[i]),
                "kl_base_fine": float(self.kl_base_fine[i]),
                "top_base": _top_text(dec, self.top_base_ids[i], self.top_base_logprob[i]),
                "top_fine": _top_text(dec, self.top_fine_ids[i], self.top_fine_logprob[i]),
                "role": self.role[i] if i < len(self.role) else "",
                "expected": None if exp is None else dec(exp),
                "correct": None if exp is None else self.tokens[j] == exp,
                "base_top1_correct": None if exp is None else int(self.top_base_ids[i, 0]) == exp,
                "fine_top1_correct": None if exp is None else int(self.top_fine_ids[i, 0]) == exp,
            })
        df = pd.DataFrame(rows, columns=FRAME_COLUMNS)
        for c in ("correct", "base_top1_correct", "fine_top1_correct"):
            df[c] = df[c].astype("boolean")
        return df

    def summary(self) -> dict[str, Any]:
        """Means over the target tokens (all, and the generated part alone), and the
        share of marked tokens that are right, per model's top-1."""
        gen = slice(max(0, self.prompt_len - 1), None)
        marked = [i for i, e in enumerate(self.expected) if e is not None]
        out: dict[str, Any] = {
            "n_tokens": len(self),
            "mean_kl_fine_base": float(self.kl_fine_base.mean()) if len(self) else 0.0,
            "mean_kl_base_fine": float(self.kl_base_fine.mean()) if len(self) else 0.0,
            "sum_logprob_base": float(self.logprob_base.sum()),
            "sum_logprob_fine": float(self.logprob_fine.sum()),
            "generated_sum_logprob_base": float(self.logprob_base[gen].sum()),
            "generated_sum_logprob_fine": float(self.logprob_fine[gen].sum()),
            "n_marked": len(marked),
        }
        if marked:
            out["marked_correct"] = sum(self.tokens[i + 1] == self.expected[i]
                                        for i in marked) / len(marked)
            for role in ("base", "fine"):
                ids = getattr(self, f"top_{role}_ids")
                out[f"{role}_top1_correct"] = sum(int(ids[i, 0]) == self.expected[i]
                                                  for i in marked) / len(marked)
        return out


FRAME_COLUMNS = ["pos", "token", "part", "logprob_base", "logprob_fine", "delta_logprob",
                 "kl_fine_base", "kl_base_fine", "top_base", "top_fine", "role", "expected",
                 "correct", "base_top1_correct", "fine_top1_correct"]


def _decoder(tokenizer) -> Callable[[int], str]:
    if tokenizer is None:
        return str
    return lambda i: tokenizer.convert_ids_to_tokens(int(i))


def _top_text(dec, ids: torch.Tensor, lps: torch.Tensor) -> str:
    return ", ".join(f"{dec(a)} ({float(b):.3g})" for a, b in zip(ids.tolist(),
                                                                    lps.exp().tolist()))


def _hooked(model):
    return getattr(model, "hooked", model)


def _tokenizer(model):
    return getattr(model, "tokenizer", None) or getattr(_hooked(model), "tokenizer", None)


def check_same_tokenizer(base, fine) -> None:
    """PairMismatchError when the two models do not read tokens the same way (another
    vocabulary size, or tokenizers mapping some token to another id)."""
    diffs = []
    va, vb = _hooked(base).cfg.d_vocab, _hooked(fine).cfg.d_vocab
    if va != vb:
        diffs.append(f"vocabulary sizes {va} vs {vb}")
    ta, tb = _tokenizer(base), _tokenizer(fine)
    if ta is not None and tb is not None:
        ga, gb = ta.get_vocab(), tb.get_vocab()
        if ga != gb:
            moved = sum(1 for t in set(ga) & set(gb) if ga[t] != gb[t])
            diffs.append(f"tokenizers differ: {len(ga)} vs {len(gb)} entries, "
                         f"{len(set(ga) ^ set(gb))} only in one, {moved} with other ids")
    if diffs:
        raise PairMismatchError("the two models cannot be compared token by token:", diffs)


@torch.no_grad()
def _batch_logits(model, batch: Sequence[Sequence[int]]) -> torch.Tensor:
    """Logits ``[b, max_len, vocab]`` of right-padded sequences (float32 or float64)."""
    h = _hooked(model)
    dev = next(h.parameters()).device
    n = max(len(s) for s in batch)
    toks = torch.zeros((len(batch), n), dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for i, s in enumerate(batch):
        toks[i, :len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, :len(s)] = 1
    out = h(toks.to(dev), attention_mask=mask.to(dev))
    return out if out.dtype == torch.float64 else out.float()


@torch.no_grad()
def token_diffs(base, fine, sequences: Sequence[str | Sequence[int]], k: int = 5,
                prompt_lens: Sequence[int] | None = None, batch_size: int = 8,
                marks: bool = True, progress: ProgressFn | None = None) -> list[TokenDiff]:
    """One :class:`TokenDiff` per sequence (token ids, or text encoded with the base
    model's tokenizer, special tokens added). ``k``: top tokens kept per model and
    position. ``prompt_lens[i]``: how many leading tokens of sequence ``i`` were the prompt.
    ``marks``: add :func:`organism_marks` (only text in the organisms' format gets any).
    ``progress(done, total)`` after each batch."""
    k = number(k, "k", lo=1, integer=True)
    batch_size = number(batch_size, "batch_size", lo=1, integer=True)
    check_same_tokenizer(base, fine)
    seqs = encode_prompts(base, sequences)
    for i, s in enumerate(seqs):
        if len(s) < 2:
            raise PromptError(f"sequence {i} has {len(s)} token(s): a comparison needs at "
                              "least two (a token and the one it predicts)")
    check_tokens(base, seqs, what="sequence")
    if prompt_lens is not None and len(prompt_lens) != len(seqs):
        raise PromptError(f"{len(prompt_lens)} prompt lengths for {len(seqs)} sequences")
    tok = _tokenizer(base)
    out: list[TokenDiff] = []
    vocab = int(_hooked(base).cfg.d_vocab)
    for start, stop in _batches([len(s) for s in seqs], batch_size, vocab):
        chunk = seqs[start:stop]
        lb, lf = _batch_logits(base, chunk), _batch_logits(fine, chunk)
        for r, s in enumerate(chunk):
            n = len(s)
            xb, xf = lb[r, :n - 1], lf[r, :n - 1]   # position j-1 predicts token j
            target = torch.tensor(s[1:], device=xb.device)[:, None]
            pb, pf = log_probs(xb), log_probs(xf)
            kk = min(k, pb.shape[-1])
            tb, tf = pb.topk(kk, dim=-1), pf.topk(kk, dim=-1)
            idx = start + r
            d = TokenDiff(
                tokens=list(s), prompt_len=int(prompt_lens[idx]) if prompt_lens else n,
                logprob_base=pb.gather(-1, target)[:, 0].cpu(),
                logprob_fine=pf.gather(-1, target)[:, 0].cpu(),
                kl_fine_base=kl_div(xf, xb).cpu(), kl_base_fine=kl_div(xb, xf).cpu(),
                top_base_ids=tb.indices.cpu(), top_base_logprob=tb.values.cpu(),
                top_fine_ids=tf.indices.cpu(), top_fine_logprob=tf.values.cpu())
            if marks and tok is not None:
                d.expected, d.role = organism_marks(tok.convert_ids_to_tokens(list(s)), tok)
            else:
                d.expected, d.role = [None] * (n - 1), [""] * (n - 1)
            out.append(d)
        if progress is not None:
            progress(stop, len(seqs))
    return out


MAX_LOGITS = 1 << 27  # logits of one batch, per model (512 MB in float32)


def _batches(lengths: Sequence[int], batch_size: int, vocab: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive batches of at most ``batch_size`` sequences whose
    padded logits ``[b, max_len, vocab]`` stay under :data:`MAX_LOGITS` (one sequence
    per batch at least)."""
    out, start = [], 0
    while start < len(lengths):
        stop, longest = start + 1, lengths[start]
        while stop < len(lengths) and stop - start < batch_size:
            longest2 = max(longest, lengths[stop])
            if (stop - start + 1) * longest2 * vocab > MAX_LOGITS:
                break
            stop, longest = stop + 1, longest2
        out.append((start, stop))
        start = stop
    return out


def token_diff(base, fine, sequence: str | Sequence[int], k: int = 5,
               prompt_len: int | None = None) -> TokenDiff:
    """:func:`token_diffs` of one sequence."""
    return token_diffs(base, fine, [sequence], k,
                       None if prompt_len is None else [prompt_len])[0]


def continuation(model, prompt: str | Sequence[int], max_new_tokens: int = 48,
                 temperature: float = 0.0, seed: int = 0) -> list[int]:
    """The prompt's token ids (text encoded with special tokens) plus ``model``'s
    continuation (greedy by default): a generated trace to compare the pair on."""
    ids = encode_prompts(model, [prompt])[0]
    g = generate(model, [ids], max_new_tokens=max_new_tokens, temperature=temperature,
                 seed=seed, batch_size=1)[0]
    return list(ids) + list(g.output_ids)


# ------------------------------------------------------------------ answer marks
def organism_marks(words: Sequence[str], tokenizer=None) -> tuple[list[int | None], list[str]]:
    """``(expected, role)`` per target token ``words[1:]`` of an organism-format sequence
    (``<bos> Q tag a3 a2 a1 a0 + b3 b2 b1 b0 = …``; see :mod:`interp.organisms.task`).

    Fixed by the task: the ``WIDTH + 1`` answer digits after ``A`` (role ``answer``) and
    after ``wait check`` (role ``check``): the true sum, zero-padded; and the two digits
    after each column step's ``x + y + c =`` (role ``column``) and after a ``wait`` that
    rewrites that result (role ``correction``): the column sum of the digits *as written*
    (``x + y + c``), so a slip written ``0 0`` before ``wait`` is wrong. Every other
    token: ``None`` / ``""``. Expected tokens are ids of ``tokenizer`` (the organisms'
    ids when None). A sequence whose question does not parse gets no marks at all."""
    from .organisms.task import ANSWER_WIDTH, TAGS, TOKEN_ID, WIDTH

    n = len(words)
    expected: list[int | None] = [None] * max(0, n - 1)
    role = [""] * max(0, n - 1)
    vocab = tokenizer.get_vocab() if tokenizer is not None else TOKEN_ID
    w = list(words)
    try:
        q = w.index("Q")
    except ValueError:
        return expected, role
    head = w[q + 1: q + 2 + 2 * WIDTH + 2]
    ok = (len(head) == 2 * WIDTH + 3 and head[0] in TAGS and head[WIDTH + 1] == "+"
          and head[-1] == "=" and all(x.isdigit() and len(x) == 1
                                      for x in head[1:WIDTH + 1] + head[WIDTH + 2:-1]))
    if not ok:
        return expected, role
    a = int("".join(head[1:WIDTH + 1]))
    b = int("".join(head[WIDTH + 2:-1]))
    answer = f"{a + b:0{ANSWER_WIDTH}d}"
    start = q + len(head) + 1

    def mark(pos: int, digit: str, what: str) -> None:
        if 1 <= pos < n and digit in vocab:
            expected[pos - 1], role[pos - 1] = int(vocab[digit]), what

    def digit(x: str) -> bool:
        return len(x) == 1 and x.isdigit()

    last_sum = None
    for i in range(start, n):
        if w[i] == "A":
            for d in range(ANSWER_WIDTH):
                mark(i + 1 + d, answer[d], "answer")
        elif w[i] == "check" and w[i - 1] == "wait":
            for d in range(ANSWER_WIDTH):
                mark(i + 1 + d, answer[d], "check")
        elif (w[i] == "=" and i >= 5 and w[i - 2] == w[i - 4] == "+"
              and all(digit(w[i - j]) for j in (1, 3, 5))):
            last_sum = f"{int(w[i - 5]) + int(w[i - 3]) + int(w[i - 1]):02d}"
            mark(i + 1, last_sum[0], "column")
            mark(i + 2, last_sum[1], "column")
        elif w[i] == "wait" and last_sum is not None and i + 1 < n and digit(w[i + 1]):
            mark(i + 1, last_sum[0], "correction")   # the column result written again
            mark(i + 2, last_sum[1], "correction")
    return expected, role
