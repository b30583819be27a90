"""Logit-diff amplification: sample from the fine-tune with its difference to the base
turned up, to surface behaviours the fine-tune made rare.

At every step both models read the same tokens (each with its own KV cache, through
:func:`interp.generation.generate`'s ``partner``), and the next token is drawn from

    logits_amp = logits_fine + α · (logits_fine − logits_base)

with the usual temperature and top-p. ``α = 0`` is plain sampling from the fine-tune
(token for token the same samples as ``generate(fine, …)`` with the same seed); ``α > 0``
exaggerates what fine-tuning changed; ``α = −1`` samples from the base.

Every α runs the same ``n_samples`` copies of the prompt with the same seed, so the
samples of different α share their random numbers (a change between two α comes from α,
not from another draw). The behaviour counted per sample is the number of hesitation
tokens (:func:`interp.tasks.markers.hesitation_id_set`, ``wait`` in any spelling, or
``words``) among the new tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import pandas as pd
import torch

from .errors import ConfigError
from .generation import encode_prompts, generate
from .tasks.markers import DEFAULT_HESITATIONS, hesitation_id_set
from .tokendiff import check_same_tokenizer
from .validate import finite, finite_values, number

ProgressFn = Callable[..., None]


def amplified_logits(logits_fine: torch.Tensor, logits_base: torch.Tensor,
                     alpha: float) -> torch.Tensor:
    """``logits_fine + α (logits_fine − logits_base)`` (any shape, same for both)."""
    return logits_fine + alpha * (logits_fine - logits_base)


@dataclass
class AmplifyResult:
    """Samples per α. ``samples``: one row per (α, prompt, sample): ``alpha``,
    ``prompt`` (index), ``sample``, ``text``, ``new_tokens``, ``hesitations``,
    ``finished``; ``summary``: one row per α: ``alpha``, ``mean_hesitations``,
    ``sem_hesitations`` (standard error of the mean), ``share_with_hesitation``,
    ``mean_new_tokens``, ``n``. ``prompt``: the (first) prompt's text."""

    prompt: str
    alphas: list[float]
    samples: pd.DataFrame
    summary: pd.DataFrame
    settings: dict[str, Any] = field(default_factory=dict)


def amplify(base, fine, prompt: str | Sequence[int], alphas: Sequence[float] = (0.0, 1.0),
            n_samples: int = 8, max_new_tokens: int = 64, temperature: float = 1.0,
            top_p: float = 1.0, seed: int = 0, words: Sequence[str] = DEFAULT_HESITATIONS,
            batch_size: int = 64, progress: ProgressFn | None = None) -> AmplifyResult:
    """Sample ``n_samples`` continuations of ``prompt`` at each α (see the module
    docstring). Raises PromptError for an unusable prompt, PairMismatchError when the
    models' tokenizers differ, ConfigError for impossible settings (α must be finite;
    temperature 0 is greedy, so every sample of one α is the same)."""
    return amplify_many(base, fine, [prompt], alphas, n_samples, max_new_tokens,
                        temperature, top_p, seed, words, batch_size, progress)


def amplify_many(base, fine, prompts: Sequence[str | Sequence[int]],
                 alphas: Sequence[float] = (0.0, 1.0), n_samples: int = 8,
                 max_new_tokens: int = 64, temperature: float = 1.0, top_p: float = 1.0,
                 seed: int = 0, words: Sequence[str] = DEFAULT_HESITATIONS,
                 batch_size: int = 64, progress: ProgressFn | None = None) -> AmplifyResult:
    """:func:`amplify` of several prompts, ``n_samples`` each, in one batch per α (the
    rows of ``samples`` carry a ``prompt`` index; ``sample`` counts within the prompt)."""
    alphas = finite_values(list(alphas), "α")
    if not alphas:
        raise ConfigError("no α values given")
    n_samples = number(n_samples, "samples", lo=1, integer=True)
    temperature = number(temperature, "temperature", lo=0)
    check_same_tokenizer(base, fine)
    all_ids = encode_prompts(fine, list(prompts))
    batch = [ids for ids in all_ids for _ in range(n_samples)]
    total = len(alphas) * len(batch)
    tok = getattr(fine, "tokenizer", None)
    hes = hesitation_id_set(tok, words) if tok is not None else set()
    rows = []
    for ai, alpha in enumerate(alphas):
        a = finite(alpha, "α")

        def combine(f: torch.Tensor, b: torch.Tensor, a: float = a) -> torch.Tensor:
            return amplified_logits(f, b, a)

        def step(done: int, _total: int, ai: int = ai, a: float = a) -> None:
            if progress is not None:
                progress(ai * len(batch) + done, total, alpha=a)

        gens = generate(fine, batch, max_new_tokens=max_new_tokens,
                        temperature=temperature, top_p=top_p, seed=seed,
                        batch_size=batch_size, partner=base, combine=combine, progress=step)
        for g in gens:
            rows.append({"alpha": a, "prompt": g.row // n_samples,
                         "sample": g.row % n_samples, "text": g.text,
                         "new_tokens": len(g.output_ids),
                         "hesitations": sum(1 for t in g.output_ids if int(t) in hes),
                         "finished": g.finished})
    samples = pd.DataFrame(rows, columns=["alpha", "prompt", "sample", "text", "new_tokens",
                                          "hesitations", "finished"])
    first = prompts[0]
    text = first if isinstance(first, str) else (tok.decode(all_ids[0]) if tok
                                                 else str(all_ids[0]))
    return AmplifyResult(prompt=text, alphas=alphas, samples=samples,
                         summary=summarise(samples),
                         settings={"n_samples": n_samples, "max_new_tokens": max_new_tokens,
                                   "temperature": temperature, "top_p": top_p, "seed": seed,
                                   "hesitation_words": list(words)})


def summarise(samples: pd.DataFrame) -> pd.DataFrame:
    """Per α: mean hesitations per sample with its standard error, share of samples
    with at least one, mean new tokens, number of samples."""
    out = []
    for alpha, g in samples.groupby("alpha", sort=False):
        h = g["hesitations"].astype(float)
        n = len(g)
        out.append({"alpha": float(alpha), "mean_hesitations": float(h.mean()),
                    "sem_hesitations": float(h.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0,
                    "share_with_hesitation": float((h > 0).mean()),
                    "mean_new_tokens": float(g["new_tokens"].mean()), "n": n})
    return pd.DataFrame(out, columns=["alpha", "mean_hesitations", "sem_hesitations",
                                      "share_with_hesitation", "mean_new_tokens", "n"])
