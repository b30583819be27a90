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

from typing import Any

import torch

from ..errors import ArtifactError
from ..store import Artifact, Store, provenance
from .data import eval_batches
from .loss import token_kl
from .model import AdapterModel, adapter_hooks, build_hybrid
from .module import AdapterSet, FeatureMask

MECHANISMS = ("error", "verify")


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
    L, d_sae = model.n_layers, model.adapters.d_sae
    dev = model.device
    max_len = min(max_len, model.hybrid.cfg.n_ctx)
    if batches is None:
        batches = eval_batches(tokenizer, n, batch_size, seed, source, max_len,
                               vocab_size=model.hybrid.cfg.d_vocab, split=split)
    acc = {k: 0.0 for k in ("kl_a", "kl_h", "ce_r", "ce_h", "ce_a", "n_tok", "n_ce")}
    num_a = torch.zeros(L + 1)
    num_h = torch.zeros(L + 1)
    den = torch.zeros(L + 1)
    l0 = torch.zeros(L)
    fired = torch.zeros(L, d_sae, dtype=torch.bool)
    br_a2r = torch.zeros(L + 1)
    br_r2a = torch.zeros(L + 1)
    n_seq = 0
    for bi, (tokens, valid) in enumerate(batches):
        tokens, valid = tokens.to(dev), valid.to(dev)
        v = valid.float()
        ref = model(tokens, "ref")
        hyb = model(tokens, "base")
        ad = model(tokens, "adapt", mask=mask)
        logp_r = torch.log_softmax(ref.logits.float(), -1)
        acc["kl_a"] += float((token_kl(logp_r, ad.logits) * v).sum())
        acc["kl_h"] += float((token_kl(logp_r, hyb.logits) * v).sum())
        acc["n_tok"] += float(v.sum())
        tgt = tokens[:, 1:]
        vce = (valid[:, 1:] & valid[:, :-1]).float()
        for key, lg in (("ce_r", ref.logits), ("ce_h", hyb.logits), ("ce_a", ad.logits)):
            lp = torch.log_softmax(lg[:, :-1].float(), -1).gather(-1, tgt[..., None])[..., 0]
            acc[key] += float((-lp * vce).sum())
        acc["n_ce"] += float(vce.sum())
        vv = v.unsqueeze(-1)
        for s in range(L + 1):
            hr = ref.resid[s].float()
            num_a[s] += float(((ad.resid[s].float() - hr).pow(2) * vv).sum())
            num_h[s] += float(((hyb.resid[s].float() - hr).pow(2) * vv).sum())
            den[s] += float((hr.pow(2) * vv).sum())
        for layer, f in enumerate(ad.acts):
            act = (f > 0) & valid.unsqueeze(-1)
            l0[layer] += float(act.float().sum())
            fired[layer] |= act.flatten(0, 1).any(0).cpu()
        for k in range(L + 1):
            la, lr = model.bridged_logits(ad.resid[k], ref.resid[k], k)
            br_a2r[k] += float((token_kl(logp_r, la) * v).sum())
            br_r2a[k] += float((token_kl(logp_r, lr) * v).sum())
        n_seq += tokens.shape[0]
        if progress is not None:
            progress(bi + 1, len(batches))
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
        "bridged_a2r": (br_a2r / nt).tolist(), "bridged_r2a": (br_r2a / nt).tolist(),
        "n_tokens": int(acc["n_tok"]), "n_sequences": n_seq, "d_sae": d_sae,
    }


def _words(tok: Any, ids: list[int]) -> str:
    """Space-separated token strings: the organisms' tokenizer decodes words without
    spaces, while ``score_completion`` expects space-separated words."""
    return " ".join(tok.convert_ids_to_tokens(list(ids)))


def _scores(gens, problems, fmt: str, tok: Any) -> list[dict[str, Any]]:
    from ..organisms.task import score_completion

    return [score_completion(p, _words(tok, g.output_ids), fmt)
            for p, g in zip(problems, gens)]


def _score(scores: list[dict[str, Any]]) -> dict[str, Any]:
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


def compare_with_reasoner(scores: list[dict[str, Any]], gens: list[Any],
                          ref_scores: list[dict[str, Any]], ref_gens: list[Any],
                          close_id: int | None) -> dict[str, Any]:
    """Per-example agreement of a model's think generations with the reasoner's
    (:func:`interp.behaviour.compare`), split by the reasoner's short / long thinking."""
    from ..behaviour import answer_start, compare

    ref_ids = [list(g.output_ids) for g in ref_gens]
    short = [bool(s["short"]) for s in ref_scores]
    return compare([s["answer"] for s in ref_scores], [s["answer"] for s in scores],
                   ref_ids, [list(g.output_ids) for g in gens],
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
    ``keep_generations`` adds the reasoner's generations under ``"_reasoner_gens"``
    (not JSON: pop it before saving)."""
    from ..generation import generate
    from ..organisms.task import prompt_text, sample_problems

    problems = sample_problems(n, seed=seed, split=split)
    think = [prompt_text(p, "think") for p in problems]
    runs: list[tuple[str, Any, str, list]] = []
    if base is not None:
        runs.append(("base", base, "plain", []))
    runs.append(("hybrid", hybrid, "think", []))
    runs.append(("adapter", hybrid, "think", adapter_hooks(adapters, mask=mask)))
    if reasoner is not None:
        runs.append(("reasoner", reasoner, "think", []))
    out: dict[str, Any] = {"split": split, "seed": seed}
    kept: dict[str, tuple[list[dict[str, Any]], list[Any]]] = {}
    for i, (name, m, fmt, hooks) in enumerate(runs):
        prompts = think if fmt == "think" else [prompt_text(p, fmt) for p in problems]
        gens = generate(m, prompts, max_new_tokens=max_new_tokens, temperature=0.0,
                        seed=seed, batch_size=batch_size, fwd_hooks=hooks)
        tok = getattr(m, "tokenizer", None) or getattr(m, "hooked", m).tokenizer
        scores = _scores(gens, problems, fmt, tok)
        out[name] = _score(scores)
        if fmt == "think":
            kept[name] = (scores, gens)
        if progress is not None:
            progress(i + 1, len(runs))
    out["derived"] = derived_behaviour(out)
    if "reasoner" in kept:
        rs, rg = kept["reasoner"]
        vocab = reasoner.tokenizer.get_vocab()
        close_id = vocab.get("</think>")
        out["per_example"] = {
            f"{name}_vs_reasoner": compare_with_reasoner(*kept[name], rs, rg, close_id)
            for name in ("adapter", "hybrid") if name in kept}
        if keep_generations:
            out["_reasoner_gens"] = rg
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


def evaluate_artifact(art: Artifact, store: Store | None = None, n_faith: int = 512,
                      n_behaviour: int = 256, device: str = "auto", source: str | None = None,
                      progress=None, model_bundle=None,
                      split: str = SPLIT_EVALUATION) -> Artifact:
    """Run :func:`faithfulness` and :func:`behaviour` for an adapters artifact on the
    ``split`` problems and save an ``adapters_eval`` artifact (config: adapters key, eval
    sizes, split). For organism traces, faithfulness is also measured on the reasoner's
    own greedy generations of the behaviour problems (``faithfulness_own_generations``:
    prompt and generated tokens, teacher forced)."""
    store = store or Store()
    model, base, reasoner = model_bundle or load_adapter_model(art, device)
    src = source or art.config.get("data", "traces")
    tok = reasoner.tokenizer
    max_len = int(art.config.get("max_len", 256))
    fa = faithfulness(model, tok, n=n_faith, source=src, max_len=max_len, split=split)
    if progress:
        progress(1, 3)
    be: dict[str, Any] = {}
    fa_own = None
    if src == "traces":
        be = behaviour(model.hybrid, model.adapters, base, reasoner, n=n_behaviour,
                       split=split, keep_generations=True)
        if progress:
            progress(2, 3)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        fa_own = faithfulness(model, tok, max_len=max_len, batches=generation_batches(
            be.pop("_reasoner_gens"), int(pad), max_len=max_len))
    if progress:
        progress(3, 3)
    config = {"adapters_key": art.key, "n_faith": n_faith, "n_behaviour": n_behaviour,
              "source": src, "split": split}
    return store.save("adapters_eval", config, provenance=provenance(
        models={"base": base.describe(), "reasoner": reasoner.describe()}),
        meta={"faithfulness": fa, "behaviour": be, "adapters_key": art.key,
              "l1": art.config.get("l1"), "split": split,
              "faithfulness_own_generations": fa_own})
