"""How faithful and how sparse a trained adapter set is, and how the adapter model behaves.

Splits: settings (the L1 of the demo set) are chosen on the ``validation`` half of the
held-out problems (:func:`interp.adapters.train.sweep_job`), headline figures are measured
on the other half, ``evaluation`` (:func:`evaluate_artifact`); see
:func:`interp.organisms.task.sample_problems`.

:func:`faithfulness` (teacher-forced, held-out traces, or any given token batches such as
the reasoner's own greedy generations): KL(reasoner || adapter model),
KL(reasoner || hybrid), the fraction of the hybrid -> reasoner KL gap closed
(``1 − KL_adapter / KL_hybrid``), next-token cross-entropy of the three models, per-site
residual NMSE, per-layer L0 (active features per token), dead features (never active on
the evaluation tokens), bridged KL per cutoff ``k = 0..L`` (a2r and r2a).

:func:`behaviour` (greedy generation on held-out problems, scored by
:func:`interp.organisms.task.score_completion`): accuracy, mean thinking length, short
fraction and hesitation rate by mechanism (mean number of ``wait`` of that mechanism per
generation) for base / hybrid / adapter model / reasoner. The base model is prompted in
its own ``plain`` format (it never saw think tags); its thinking figures are its worked
solution's length and are not comparable. Aggregates can agree while every answer
differs, so the adapter model (and the hybrid) are also compared with the reasoner example
by example (``per_example``: answer and completion exact-match rates, token agreement,
first divergence; :func:`interp.behaviour.compare`), over all problems and split by
whether the reasoner's thinking was short or long.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from ..errors import ArtifactError
from ..store import Artifact, Store, provenance
from .data import eval_batches
from .loss import token_kl
from .model import AdapterModel, adapter_hooks, build_hybrid
from .module import AdapterSet, FeatureMask

MECHANISMS = ("error", "verify")


SUM_KEYS = ("kl_a", "kl_h", "ce_r", "ce_h", "ce_a", "n_tok", "n_ce", "n_seq")
SITE_KEYS = ("num_a", "num_h", "den", "br_a2r", "br_r2a")


@torch.no_grad()
def faithfulness(model: AdapterModel, tokenizer: Any, n: int = 256, source: str = "traces",
                 seed: int = 1234, batch_size: int = 64, max_len: int = 256,
                 mask: FeatureMask | None = None, progress=None, split: str = "eval",
                 batches: list[tuple[torch.Tensor, torch.Tensor]] | None = None
                 ) -> dict[str, Any]:
    """Faithfulness and sparsity figures (see the module docstring); lists are per layer
    (``[L]``) or per residual site / cutoff (``[L+1]``). ``batches`` (``(tokens,
    valid)`` pairs) replaces the generated ``split`` batches when given; every valid
    token counts."""
    if batches is None:
        batches = faith_batches(model, tokenizer, n, source, seed, batch_size, max_len, split)
    return faithfulness_from_sums(faithfulness_sums(model, batches, mask, progress))


def faith_batches(model: AdapterModel, tokenizer: Any, n: int, source: str = "traces",
                  seed: int = 1234, batch_size: int = 64, max_len: int = 256,
                  split: str = "eval") -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The held-out ``split`` batches :func:`faithfulness` evaluates on."""
    return eval_batches(tokenizer, n, batch_size, seed, source,
                        min(max_len, model.hybrid.cfg.n_ctx),
                        vocab_size=model.hybrid.cfg.d_vocab, split=split)


@torch.no_grad()
def faithfulness_sums(model: AdapterModel, batches: list[tuple[torch.Tensor, torch.Tensor]],
                      mask: FeatureMask | None = None, progress=None) -> dict[str, torch.Tensor]:
    """Each batch's sums behind :func:`faithfulness` (the activation statistics a split
    evaluation collects per rank): ``SUM_KEYS`` ``[n_batches]`` (float64), ``SITE_KEYS``
    ``[n_batches, L+1]`` (float64), ``l0`` ``[n_batches, L]`` (active features summed over
    tokens), ``fired`` ``[n_batches, L, d_sae]`` (bool)."""
    L, d_sae = model.n_layers, model.adapters.d_sae
    dev = model.device
    rows: list[dict[str, Any]] = []
    for bi, (tokens, valid) in enumerate(batches):
        tokens, valid = tokens.to(dev), valid.to(dev)
        v = valid.float()
        ref = model(tokens, "ref")
        hyb = model(tokens, "base")
        ad = model(tokens, "adapt", mask=mask)
        logp_r = torch.log_softmax(ref.logits.float(), -1)
        r: dict[str, Any] = {"kl_a": float((token_kl(logp_r, ad.logits) * v).sum()),
                             "kl_h": float((token_kl(logp_r, hyb.logits) * v).sum()),
                             "n_tok": float(v.sum())}
        tgt = tokens[:, 1:]
        vce = (valid[:, 1:] & valid[:, :-1]).float()
        for key, lg in (("ce_r", ref.logits), ("ce_h", hyb.logits), ("ce_a", ad.logits)):
            lp = torch.log_softmax(lg[:, :-1].float(), -1).gather(-1, tgt[..., None])[..., 0]
            r[key] = float((-lp * vce).sum())
        r["n_ce"] = float(vce.sum())
        vv = v.unsqueeze(-1)
        for k in SITE_KEYS:
            r[k] = [0.0] * (L + 1)
        for site in range(L + 1):
            hr = ref.resid[site].float()
            r["num_a"][site] = float(((ad.resid[site].float() - hr).pow(2) * vv).sum())
            r["num_h"][site] = float(((hyb.resid[site].float() - hr).pow(2) * vv).sum())
            r["den"][site] = float((hr.pow(2) * vv).sum())
        r["l0"] = [0.0] * L
        fired = torch.zeros(L, d_sae, dtype=torch.bool)
        for layer, f in enumerate(ad.acts):
            act = (f > 0) & valid.unsqueeze(-1)
            r["l0"][layer] = float(act.float().sum())
            fired[layer] = act.flatten(0, 1).any(0).cpu()
        r["fired"] = fired
        for k in range(L + 1):
            la, lr = model.bridged_logits(ad.resid[k], ref.resid[k], k)
            r["br_a2r"][k] = float((token_kl(logp_r, la) * v).sum())
            r["br_r2a"][k] = float((token_kl(logp_r, lr) * v).sum())
        r["n_seq"] = float(tokens.shape[0])
        rows.append(r)
        if progress is not None:
            progress(bi + 1, len(batches))
    out = {k: torch.tensor([r[k] for r in rows], dtype=torch.float64).reshape(len(rows))
           for k in SUM_KEYS}
    for k in SITE_KEYS:
        out[k] = torch.tensor([r[k] for r in rows], dtype=torch.float64).reshape(len(rows), L + 1)
    out["l0"] = torch.tensor([r["l0"] for r in rows], dtype=torch.float64).reshape(len(rows), L)
    out["fired"] = torch.stack([r["fired"] for r in rows]) if rows else \
        torch.zeros(0, L, d_sae, dtype=torch.bool)
    return out


def faithfulness_from_sums(sums: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The :func:`faithfulness` figures from per-batch sums (of all batches, in order;
    e.g. concatenated from several ranks): accumulated batch by batch exactly as one
    pass over the batches would."""
    nb, L, d_sae = sums["fired"].shape
    acc = {k: 0.0 for k in SUM_KEYS}
    site = {k: torch.zeros(L + 1) for k in SITE_KEYS}
    l0 = torch.zeros(L)
    fired = torch.zeros(L, d_sae, dtype=torch.bool)
    for b in range(nb):
        for k in SUM_KEYS:
            acc[k] += float(sums[k][b])
        for k in SITE_KEYS:
            for s in range(L + 1):
                site[k][s] += float(sums[k][b, s])
        for layer in range(L):
            l0[layer] += float(sums["l0"][b, layer])
        fired |= sums["fired"][b]
    num_a, num_h, den = site["num_a"], site["num_h"], site["den"]
    nt = max(acc["n_tok"], 1.0)
    kl_a, kl_h = acc["kl_a"] / nt, acc["kl_h"] / nt
    l0_layers = (l0 / nt).tolist()
    dead_layers = (1.0 - fired.float().mean(-1)).tolist()
    return {
        "kl_adapter": kl_a, "kl_hybrid": kl_h,
        "kl_gap_closed": 1.0 - kl_a / kl_h if kl_h > 0 else float("nan"),
        "ce_reasoner": acc["ce_r"] / max(acc["n_ce"], 1), "ce_hybrid": acc["ce_h"] / max(
            acc["n_ce"], 1), "ce_adapter": acc["ce_a"] / max(acc["n_ce"], 1),
        "nmse_adapter": (num_a / den.clamp_min(1e-12)).tolist(),
        "nmse_hybrid": (num_h / den.clamp_min(1e-12)).tolist(),
        "l0_layers": l0_layers, "mean_l0": sum(l0_layers) / L,
        "dead_layers": dead_layers, "dead_fraction": sum(dead_layers) / L,
        "bridged_a2r": (site["br_a2r"] / nt).tolist(),
        "bridged_r2a": (site["br_r2a"] / nt).tolist(),
        "n_tokens": int(acc["n_tok"]), "n_sequences": int(acc["n_seq"]), "d_sae": d_sae,
    }


def _words(tok: Any, ids: list[int]) -> str:
    """Space-separated token strings: the organisms' tokenizer decodes words without
    spaces, while ``score_completion`` expects space-separated words."""
    return " ".join(tok.convert_ids_to_tokens(list(ids)))


def problem_scores(gens, problems, fmt: str, tok: Any, ids: bool = False
                   ) -> list[dict[str, Any]]:
    """Each generation scored by :func:`interp.organisms.task.score_completion`; with
    ``ids`` each score also keeps the generation's ``prompt_ids`` and ``output_ids`` (for
    the per-example comparison and the faithfulness on the reasoner's own generations)."""
    from ..organisms.task import score_completion

    out = []
    for p, g in zip(problems, gens):
        sc = score_completion(p, _words(tok, g.output_ids), fmt)
        if ids:
            sc = {**sc, "prompt_ids": list(map(int, g.prompt_ids)),
                  "output_ids": list(map(int, g.output_ids))}
        out.append(sc)
    return out


def aggregate_scores(scores: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy, thinking length, short fraction and hesitation rates of scored
    generations."""
    n = max(len(scores), 1)
    out = {
        "accuracy": sum(s["correct"] for s in scores) / n,
        "think_tokens": sum(s["think_tokens"] for s in scores) / n,
        "short_fraction": sum(s["short"] for s in scores) / n,
        "hesitations": sum(s["hesitations"] for s in scores) / n,
        "n": len(scores),
    }
    for m in MECHANISMS:
        out[f"hesitation_rate_{m}"] = sum(s[f"hesitations_{m}"] for s in scores) / n
    return out


def compare_with_reasoner(scores: list[dict[str, Any]], ref_scores: list[dict[str, Any]],
                          close_id: int | None) -> dict[str, Any]:
    """Per-example agreement of a model's think generations with the reasoner's
    (:func:`interp.behaviour.compare`; scores with ``output_ids``), split by the
    reasoner's short / long thinking."""
    from ..behaviour import answer_start, compare

    ref_ids = [s["output_ids"] for s in ref_scores]
    short = [bool(s["short"]) for s in ref_scores]
    return compare([s["answer"] for s in ref_scores], [s["answer"] for s in scores],
                   ref_ids, [s["output_ids"] for s in scores],
                   [answer_start(x, close_id) for x in ref_ids],
                   groups={"reasoner_short": short, "reasoner_long": [not x for x in short]})


@torch.no_grad()
def behaviour(hybrid: Any, adapters: AdapterSet, base: Any = None, reasoner: Any = None,
              n: int = 256, seed: int = 4321, max_new_tokens: int = 96, batch_size: int = 128,
              mask: FeatureMask | None = None, progress=None, split: str = "evaluation",
              keep_generations: bool = False) -> dict[str, Any]:
    """Greedy generations on ``n`` held-out ``split`` problems, per model (see module
    docstring), plus ``accuracy_recovered`` and ``hesitation_rate_rel_error`` of the adapter
    model and the per-example comparison with the reasoner (``per_example``).
    ``keep_generations`` adds the reasoner's generations (``prompt_ids``, ``output_ids``)
    under ``"_reasoner_gens"`` (not JSON: pop it before saving)."""
    scores = behaviour_scores(hybrid, adapters, base, reasoner, n, seed, max_new_tokens,
                              batch_size, mask, progress, split=split)
    out = behaviour_from_scores(scores, close_id(reasoner), split, seed)
    if keep_generations and "reasoner" in scores:
        out["_reasoner_gens"] = reasoner_generations(scores)
    return out


def close_id(reasoner: Any) -> int | None:
    """The reasoner's ``</think>`` token id (None without a reasoner or the token)."""
    return None if reasoner is None else reasoner.tokenizer.get_vocab().get("</think>")


def reasoner_generations(scores: dict[str, list[dict[str, Any]]]) -> list[SimpleNamespace]:
    """The reasoner's generations (``prompt_ids``, ``output_ids``) kept in its scores."""
    return [SimpleNamespace(prompt_ids=s["prompt_ids"], output_ids=s["output_ids"])
            for s in scores["reasoner"]]


@torch.no_grad()
def behaviour_scores(hybrid: Any, adapters: AdapterSet, base: Any = None, reasoner: Any = None,
                     n: int = 256, seed: int = 4321, max_new_tokens: int = 96,
                     batch_size: int = 128, mask: FeatureMask | None = None, progress=None,
                     lo: int = 0, hi: int | None = None, split: str = "evaluation"
                     ) -> dict[str, list[dict[str, Any]]]:
    """Per model, the scores of the generations on held-out ``split`` problems
    ``lo..hi-1`` of the ``n`` :func:`behaviour` uses (a shard cut at a multiple of
    ``batch_size`` generates exactly what the whole run does for those problems); the
    think-format runs keep their token ids (:func:`problem_scores`)."""
    from ..generation import generate
    from ..organisms.task import prompt_text, sample_problems

    problems = sample_problems(n, seed=seed, split=split)[lo:hi]
    think = [prompt_text(p, "think") for p in problems]
    runs: list[tuple[str, Any, str, list]] = []
    if base is not None:
        runs.append(("base", base, "plain", []))
    runs.append(("hybrid", hybrid, "think", []))
    runs.append(("adapter", hybrid, "think", adapter_hooks(adapters, mask=mask)))
    if reasoner is not None:
        runs.append(("reasoner", reasoner, "think", []))
    out: dict[str, list[dict[str, Any]]] = {}
    for i, (name, m, fmt, hooks) in enumerate(runs):
        prompts = think if fmt == "think" else [prompt_text(p, fmt) for p in problems]
        gens = generate(m, prompts, max_new_tokens=max_new_tokens, temperature=0.0,
                        seed=seed, batch_size=batch_size, fwd_hooks=hooks,
                        first_row=lo) if prompts else []
        tok = getattr(m, "tokenizer", None) or getattr(m, "hooked", m).tokenizer
        out[name] = problem_scores(gens, problems, fmt, tok, ids=fmt == "think")
        if progress is not None:
            progress(i + 1, len(runs))
    return out


def behaviour_from_scores(scores: dict[str, list[dict[str, Any]]], close: int | None = None,
                          split: str = "evaluation", seed: int = 4321) -> dict[str, Any]:
    """:func:`behaviour`'s figures from per-problem scores (all problems, in order);
    ``close``: the reasoner's ``</think>`` id (:func:`close_id`)."""
    out: dict[str, Any] = {"split": split, "seed": seed}
    out.update({name: aggregate_scores(s) for name, s in scores.items()})
    out["derived"] = derived_behaviour(out)
    if "reasoner" in scores:
        out["per_example"] = {
            f"{name}_vs_reasoner": compare_with_reasoner(scores[name], scores["reasoner"], close)
            for name in ("adapter", "hybrid") if name in scores}
    return out


def derived_behaviour(b: dict[str, Any]) -> dict[str, Any]:
    """``accuracy_recovered`` = (acc_adapter − acc_hybrid) / (acc_reasoner − acc_hybrid);
    ``hesitation_rate_rel_error`` = max over mechanisms of |rate_adapter − rate_reasoner|
    / rate_reasoner (mechanisms the reasoner never shows are skipped)."""
    d: dict[str, Any] = {}
    if "reasoner" not in b:
        return d
    a, h, r = b["adapter"], b["hybrid"], b["reasoner"]
    gap = r["accuracy"] - h["accuracy"]
    d["accuracy_gap"] = gap
    d["accuracy_recovered"] = (a["accuracy"] - h["accuracy"]) / gap if gap else float("nan")
    errs = {}
    for m in MECHANISMS:
        rr = r[f"hesitation_rate_{m}"]
        if rr > 0:
            errs[m] = abs(a[f"hesitation_rate_{m}"] - rr) / rr
    d["hesitation_rel_error_by_mechanism"] = errs
    d["hesitation_rate_rel_error"] = max(errs.values()) if errs else float("nan")
    d["think_tokens_rel_error"] = (abs(a["think_tokens"] - r["think_tokens"])
                                   / r["think_tokens"]) if r["think_tokens"] else float("nan")
    return d


# ---------------------------------------------------------------------- artifacts
def load_adapter_model(art: Artifact, device: str | torch.device = "auto",
                       strict: bool = True, base: Any = None, reasoner: Any = None):
    """``(AdapterModel, base, reasoner)`` for a saved adapters artifact. With ``strict``
    the pair's weight hashes must equal the manifest's (ArtifactError otherwise)."""
    from ..models import load_model, pick_device
    from .io import load_adapter_tensors

    pair = art.meta.get("pair", {})
    dev = pick_device(device) if not isinstance(device, torch.device) else device
    if base is None:
        base = load_model(pair["base"]["id"], device=dev, dtype=torch.float32)
    if reasoner is None:
        reasoner = load_model(pair["reasoner"]["id"], device=dev, dtype=torch.float32)
    if strict:
        for role, m in (("base", base), ("reasoner", reasoner)):
            want = pair.get(role, {}).get("weight_hash")
            got = getattr(m, "weight_hash", None)
            if want and got and want != got:
                raise ArtifactError(
                    f"adapters {art.key} were trained on a different {role} "
                    f"({pair[role]['id']} weights changed since); retrain them")
    adapters = load_adapter_tensors(art).to(dev)
    model = AdapterModel(build_hybrid(base, reasoner), reasoner, adapters).to(dev)
    return model, base, reasoner


def generation_batches(gens: list[Any], pad_id: int, batch_size: int = 64,
                       max_len: int = 256) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Generations (prompt + output ids) as right-padded ``(tokens, valid)`` batches, the
    layout of :func:`interp.adapters.data.eval_batches`."""
    from .data import pad_batch

    seqs = [list(g.prompt_ids) + list(g.output_ids) for g in gens]
    return [pad_batch(seqs[s: s + batch_size], pad_id, max_len)
            for s in range(0, len(seqs), batch_size)]


SPLIT_EVALUATION = "evaluation"   # headline figures; settings are chosen on "validation"


def eval_config(art: Artifact, n_faith: int, n_behaviour: int, source: str | None = None,
                split: str = SPLIT_EVALUATION) -> dict[str, Any]:
    """The config (key input) of the ``adapters_eval`` artifact of ``art``."""
    return {"adapters_key": art.key, "n_faith": n_faith, "n_behaviour": n_behaviour,
            "source": source or art.config.get("data", "traces"), "split": split}


def evaluate_artifact(art: Artifact, store: Store | None = None, n_faith: int = 512,
                      n_behaviour: int = 256, device: str = "auto", source: str | None = None,
                      progress=None, model_bundle=None, ranks: Any = None,
                      behaviour_batch: int = 128, split: str = SPLIT_EVALUATION
                      ) -> Artifact | None:
    """Run :func:`faithfulness` and :func:`behaviour` for an adapters artifact on the
    ``split`` problems and save an ``adapters_eval`` artifact (config: adapters key, eval
    sizes, split). For organism traces, faithfulness is also measured on the reasoner's
    own greedy generations of the behaviour problems (``faithfulness_own_generations``:
    prompt and generated tokens, teacher forced).

    Under torchrun (``ranks``, default this process's) each rank evaluates its block of
    the held-out batches and of the generation batches and lands it as a part; the rank
    whose part completes the set saves the merged artifact (the single-process figures,
    accumulated in the same order) and returns it; the others return None
    (:func:`interp.distributed.collect`). ``behaviour_batch``: prompts per generation
    batch (and the split's granularity)."""
    from .. import distributed as D

    store = store or Store()
    model, base, reasoner = model_bundle or load_adapter_model(art, device)
    src = source or art.config.get("data", "traces")
    tok = reasoner.tokenizer
    max_len = int(art.config.get("max_len", 256))
    batches = faith_batches(model, tok, n_faith, src, max_len=max_len, split=split)
    n_beh = n_behaviour if src == "traces" else 0
    beh_batch = behaviour_batch

    def work(bounds: D.Bounds) -> D.Part:
        (f_lo, f_hi), (b_lo, b_hi) = bounds
        sums = faithfulness_sums(model, batches[f_lo:f_hi])
        if progress:
            progress(1, 2)
        scores = behaviour_scores(model.hybrid, model.adapters, base, reasoner, n=n_behaviour,
                                  batch_size=beh_batch, lo=b_lo, hi=b_hi,
                                  split=split) if n_beh else {}
        if progress:
            progress(2, 2)
        return D.Part(sums, {"scores": scores})

    def merge(parts: list[D.Part]) -> D.Part:
        sums = D.concat_parts(parts).tensors
        scores: dict[str, list] = {}
        for p in parts:
            for name, sc in p.meta["scores"].items():
                scores.setdefault(name, []).extend(sc)
        fa_own = None
        if n_beh:   # the reasoner's own greedy generations, teacher forced
            pad = tok.pad_token_id if tok.pad_token_id is not None else 0
            fa_own = faithfulness(model, tok, max_len=max_len, batches=generation_batches(
                reasoner_generations(scores), int(pad), max_len=max_len))
        return D.Part(meta={"faithfulness": faithfulness_from_sums(sums),
                            "behaviour": behaviour_from_scores(
                                scores, close_id(reasoner), split) if n_beh else {},
                            "adapters_key": art.key, "l1": art.config.get("l1"),
                            "split": split, "faithfulness_own_generations": fa_own})

    config = eval_config(art, n_faith, n_behaviour, src, split)
    return D.collect("adapters_eval", config, (len(batches), n_beh), work, merge, store=store,
                     ranks=ranks, align=(1, beh_batch), provenance=provenance(
                         models={"base": base.describe(), "reasoner": reasoner.describe()}))


def validate_eval_spec(spec: dict[str, Any]) -> None:
    """The ``adapters.eval`` job spec: ``key`` (an adapters run of the main store),
    optional ``device``, ``n_faith``, ``n_behaviour``."""
    from ..errors import ConfigError
    from ..validate import number

    if not isinstance(spec.get("key"), str) or not spec["key"].strip():
        raise ConfigError("key must name a saved adapters run")
    unknown = set(spec) - {"key", "device", "n_faith", "n_behaviour"}
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(sorted(unknown))}")
    number(spec.get("n_faith", 512), "n_faith", lo=1, integer=True)
    number(spec.get("n_behaviour", 256), "n_behaviour", lo=0, integer=True)


def eval_job(spec: dict[str, Any], ctx) -> dict[str, Any]:
    """Job entry (``adapters.eval``): :func:`evaluate_artifact` of the saved run
    ``spec["key"]`` in the main store (faithfulness, then generation); the result names
    the saved ``adapters_eval`` artifact."""
    from .io import KIND

    validate_eval_spec(spec)
    store = Store()
    art = store.load(KIND, spec["key"])

    def progress(done: int, total: int, **info: Any) -> None:
        ctx.progress(done, total, message="greedy generation of the held-out problems"
                     if done < total else "saving", **info)

    ctx.progress(0, 2, message="faithfulness (teacher-forced held-out traces)")

    ev = evaluate_artifact(art, store, n_faith=int(spec.get("n_faith", 512)),
                           n_behaviour=int(spec.get("n_behaviour", 256)),
                           device=str(spec.get("device", "auto")), progress=progress)
    return {"adapters_key": art.key, "key": ev.key if ev is not None else None}
