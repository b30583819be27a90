"""Adapter training: all layers jointly, as a resumable, cancellable background job.

Job kinds (:mod:`interp.jobs`): ``adapters.train`` -> :func:`train_job` (spec = a
:class:`TrainConfig` as a dict) and ``adapters.sweep`` -> :func:`sweep_job` (spec = a
TrainConfig plus ``l1_values``). Headless: ``python -m interp adapters train --set k=v``.

Optimisation (METHODS.md §1): AdamW (weight decay 0), cosine schedule with linear
warm-up (5%), gradient clipping at 1.0, bf16 autocast on CUDA (fp32 elsewhere).

Scaling for small models (the source trains 7B with 8,192 features per layer, lr 8e-4,
l1 1e-3, one 10k-token sequence per step, 1 epoch of ~50k traces): defaults here are
``d_sae = 4 · d_model`` (7B: ~2.3 · d_model), batches of 16 organism traces (~800
tokens), 1,000 steps instead of an epoch (the organism generator is unlimited), lr 2e-3
(a 50x shorter run) and l1 3e-2: the L1 term multiplies activations in residual units,
which depend on the model, so l1 was chosen by sweep on the organism pair to land at
L0 <= 10 per layer (:func:`sweep_job`); the λ's, warm-up share and clipping keep the
source's values. The manifest records this (``meta.scaling``).

Checkpoints (``<work>/ckpt-<step>.safetensors`` + ``.json``, pointer ``latest.json``
replaced atomically; older ones deleted) hold the adapters, the AdamW state and the
dead-feature counters. Randomness is counter-based (batch and cutoff are functions of
``(seed, step)``), and the learning rate a function of the step, so a run resumed from a
checkpoint follows the same loss curve as an uninterrupted one. A NaN/inf loss stops the
run with :class:`NaNLossError` before the optimiser step; the last checkpoint stays. A loss
that grows :data:`DIVERGENCE_FACTOR` times above the run's first loss stops it with
:class:`DivergedError` (the run is not saved as a result), and the adapter weights must be
finite before any checkpoint or artifact is written. Re-running a finished config does not
train or save again: the artifact already saved is the result.

Under ``torchrun`` the same job trains data-parallel across the ranks (``shard="fsdp"``
also shards the frozen pair and the adapters); rank 0 alone writes progress, checkpoints
and the artifact, and a checkpoint resumes on any number of ranks
(:mod:`interp.adapters.parallel`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from ..errors import ConfigError, DivergedError, NaNLossError, TrainingError
from ..store import storage_error, tmp_sibling, write_json_atomic
from ..validate import dataclass_from_dict, finite_tensors
from .data import BatchSource, _seed
from .loss import LossWeights, adapter_loss
from .model import AdapterModel, build_hybrid
from .module import AdapterSet


@dataclass
class TrainConfig:
    """Everything a training run depends on (the job spec and the manifest config)."""

    base: str = "organism:base"
    reasoner: str = "organism:reasoner"
    d_sae: int = 0                  # 0: 4 * d_model
    steps: int = 1000
    batch_size: int = 16
    max_len: int = 256
    lr: float = 2e-3
    warmup_frac: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    lambda_adapt: float = 1.0
    l1: float = 3e-2
    lambda_nmse: float = 1.0
    lambda_bridge: float = 2.0
    bridge_fraction: float = 0.25   # share of each batch's sequences in the bridged term
    data: str = "traces"            # traces (organisms) | traceset:KEY | random
    seed: int = 0
    ckpt_every: int = 100
    dead_steps: int = 200           # a feature silent this many steps counts as dead
    device: str = "auto"
    autocast: bool = True           # bf16 autocast on CUDA
    threads: int = 0                # torch CPU threads (0: leave as is)
    store_root: str | None = None   # artifact store root (None: the default cache)
    save: bool = True               # save the adapters artifact at the end
    nan_at_step: int | None = None  # testing aid: make the loss NaN at this step
    shard: str = "none"             # none | fsdp (under torchrun: shard pair and adapters)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """A config from a dict (job spec, ``--set``, ``--config``): unknown options and
        values of the wrong type are ConfigErrors naming them."""
        cfg = dataclass_from_dict(cls, d, "training option")
        cfg.validate()
        return cfg

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{f.name} must be a finite number, got {v}")
        checks = [
            (self.steps >= 1, "steps must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.max_len >= 2, "max_len must be >= 2 (next-token targets need two tokens)"),
            (self.lr > 0, "lr must be > 0"),
            (0 <= self.warmup_frac < 1, "warmup_frac must be in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.l1 >= 0, "l1 must be >= 0"),
            (self.lambda_adapt >= 0 and self.lambda_nmse >= 0 and self.lambda_bridge >= 0,
             "lambda_adapt, lambda_nmse and lambda_bridge must be >= 0"),
            (self.lambda_adapt + self.lambda_nmse + self.lambda_bridge > 0,
             "at least one of lambda_adapt, lambda_nmse, lambda_bridge must be > 0"),
            (0 < self.bridge_fraction <= 1, "bridge_fraction must be in (0, 1]"),
            (self.ckpt_every >= 1, "ckpt_every must be >= 1"),
            (self.d_sae >= 0, "d_sae must be >= 0"),
            (self.grad_clip > 0, "grad_clip must be > 0"),
            (self.dead_steps >= 1, "dead_steps must be >= 1"),
            (self.threads >= 0, "threads must be >= 0"),
            (self.seed >= 0, "seed must be >= 0"),
            (self.shard in ("none", "fsdp"), "shard must be 'none' or 'fsdp'"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        from .data import check_source  # the data source: organisms, a trace set, random

        check_source(self.data, (self.base, self.reasoner))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> dict[str, Any]:
        """The fields that define the result (not where/how it runs)."""
        d = self.to_dict()
        for k in ("device", "threads", "store_root", "save", "ckpt_every", "nan_at_step",
                  "shard"):
            d.pop(k)
        return d

    def weights(self) -> LossWeights:
        return LossWeights(self.lambda_adapt, self.l1, self.lambda_nmse, self.lambda_bridge)


def validate_spec(spec: dict[str, Any]) -> None:
    """The ``adapters.train`` job spec (a TrainConfig as a dict)."""
    TrainConfig.from_dict(spec)


def validate_sweep_spec(spec: dict[str, Any]) -> None:
    """The ``adapters.sweep`` job spec: a TrainConfig plus ``l1_values``, ``n_eval`` and
    ``save_runs``."""
    from ..validate import finite_values, number

    spec = dict(spec)
    l1s = finite_values(spec.pop("l1_values", [1.0]), "l1_values")
    if not l1s or min(l1s) < 0:
        raise ConfigError("l1_values must be a non-empty list of numbers >= 0")
    number(spec.pop("n_eval", 1), "n_eval", lo=1, integer=True)
    if not isinstance(spec.pop("save_runs", True), bool):
        raise ConfigError("save_runs must be true or false")
    TrainConfig.from_dict(spec)


# a run whose loss climbs this many times above its first loss (floored at
# DIVERGENCE_FLOOR) has diverged: it stops instead of being saved as a result
DIVERGENCE_FACTOR = 100.0
DIVERGENCE_FLOOR = 0.1


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up over ``warmup_frac`` of the steps, then cosine decay to 0."""
    warm = max(1, int(round(cfg.warmup_frac * cfg.steps)))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def draw_bridge(cfg: TrainConfig, step: int, n_layers: int, batch: int
                ) -> tuple[int, torch.Tensor]:
    """The step's cutoff ``k`` (uniform in 0..L) and bridged rows (counter-based)."""
    g = torch.Generator().manual_seed(_seed(cfg.seed, step, 3))
    k = int(torch.randint(0, n_layers + 1, (1,), generator=g))
    n = max(1, int(round(cfg.bridge_fraction * batch)))
    rows = torch.randperm(batch, generator=g)[:n].sort().values
    return k, rows


# ---------------------------------------------------------------------- setup
@dataclass
class Setup:
    model: AdapterModel
    base: Any
    reasoner: Any
    device: torch.device
    tokenizer: Any


def setup_models(cfg: TrainConfig, base: Any = None, reasoner: Any = None) -> Setup:
    """Load the pair (fp32), build the hybrid and a fresh adapter set."""
    from ..models import load_model, pick_device, validate_pair

    dev = pick_device(cfg.device)
    if base is None or reasoner is None:
        validate_pair(cfg.base, cfg.reasoner)
        base = load_model(cfg.base, device=dev, dtype=torch.float32)
        reasoner = load_model(cfg.reasoner, device=dev, dtype=torch.float32)
    hybrid = build_hybrid(base, reasoner)
    c = hybrid.cfg
    d_sae = cfg.d_sae or 4 * c.d_model
    adapters = AdapterSet(c.n_layers, c.d_model, d_sae, seed=cfg.seed).to(dev)
    model = AdapterModel(hybrid, getattr(reasoner, "hooked", reasoner), adapters).to(dev)
    tok = getattr(reasoner, "tokenizer", None) or hybrid.tokenizer
    return Setup(model, base, reasoner, dev, tok)


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    import contextlib

    return contextlib.nullcontext()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
    elif device.type == "mps":
        torch.mps.synchronize()


# ---------------------------------------------------------------------- checkpoints
def save_checkpoint(work: Path, step: int, model: AdapterModel, opt: torch.optim.Optimizer,
                    silent: torch.Tensor, history: list[dict[str, Any]],
                    models: dict[str, Any] | None = None,
                    first_loss: float | None = None,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write ``ckpt-<step>`` (safetensors + JSON), point ``latest.json`` at it, drop older.
    ``models`` (role -> weight hash) records which pair the checkpoint was trained on;
    ``first_loss`` the run's first loss (the divergence reference, kept across resumes);
    ``extra`` more ``latest.json`` fields (a multi-rank run's ranks and data cursor).
    Refuses (NonFiniteError) adapter weights holding NaN or infinity."""
    from safetensors import SafetensorError

    adapters = {f"adapter.{k}": v.contiguous().cpu() for k, v in model.adapters.tensors().items()}
    finite_tensors(adapters, f"adapter checkpoint at step {step}")
    tensors = dict(adapters)
    for i, st in opt.state_dict()["state"].items():
        for name, t in st.items():
            tensors[f"opt.{i}.{name}"] = torch.as_tensor(t).detach().contiguous().cpu()
    tensors["silent_steps"] = silent.contiguous().cpu()
    name = f"ckpt-{step:07d}"
    tmp = tmp_sibling(work / f"{name}.safetensors")
    try:
        work.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(tmp))
        tmp.replace(work / f"{name}.safetensors")
    except (OSError, SafetensorError) as e:
        tmp.unlink(missing_ok=True)
        raise storage_error(e, f"writing the training checkpoint at step {step}") from e
    write_json_atomic(work / f"{name}.json", {"step": step, "history_tail": history[-5:]})
    write_json_atomic(work / "latest.json", {"name": name, "step": step,
                                            "models": models or {},
                                            "first_loss": first_loss, **(extra or {})})
    for old in work.glob("ckpt-*"):
        if not old.name.startswith(name):
            old.unlink(missing_ok=True)
    return work / f"{name}.safetensors"


def checkpoint_info(work: Path) -> dict[str, Any] | None:
    """``latest.json`` of a work folder (step, models, first_loss), or None."""
    ptr = work / "latest.json"
    if not ptr.exists():
        return None
    try:
        return json.loads(ptr.read_text())
    except ValueError as e:
        raise TrainingError(f"the training checkpoint pointer {ptr} is damaged ({e}); "
                            "delete the job folder to start over") from None


def load_checkpoint(work: Path, model: AdapterModel, opt: torch.optim.Optimizer,
                    models: dict[str, Any] | None = None) -> tuple[int, torch.Tensor | None]:
    """Restore the latest checkpoint in ``work``; returns ``(step, silent_steps)`` or
    ``(0, None)`` when there is none, or when it was trained on other model weights than
    ``models`` (a spec such as ``organism:reasoner`` can be rebuilt with new weights: such
    a checkpoint is not resumed)."""
    from safetensors import SafetensorError

    info = checkpoint_info(work)
    if info is None:
        return 0, None
    saved = info.get("models") or {}
    if models and any(saved.get(k) != v for k, v in models.items() if v is not None):
        return 0, None
    try:
        tensors = load_file(str(work / f"{info['name']}.safetensors"))
    except (OSError, SafetensorError) as e:
        raise TrainingError(f"the training checkpoint {info['name']} in {work} cannot be "
                            f"read ({str(e).splitlines()[0]}); delete the job folder to start "
                            "over") from None
    dev = model.device
    model.adapters.load_tensors({k.removeprefix("adapter."): v.to(dev)
                                 for k, v in tensors.items() if k.startswith("adapter.")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v if name == "step" else v.to(dev)
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})
    return int(info["step"]), tensors["silent_steps"].to(dev)


# ---------------------------------------------------------------------- training
ProgressFn = Callable[..., None]


def train_step(model: AdapterModel, opt: torch.optim.Optimizer, params: list[torch.Tensor],
               tokens: torch.Tensor, valid: torch.Tensor, w: LossWeights, k: int,
               rows: torch.Tensor, cfg: TrainConfig, poison: bool = False, par: Any = None
               ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor], torch.Tensor | None]:
    """One optimisation step: loss (bf16 autocast on CUDA), backward, clip, AdamW.

    Returns ``(loss, parts, grad_norm)``; when the loss is not finite nothing is updated
    and ``(None, parts, None)`` is returned (``parts["loss"]`` holds the bad value).
    ``par`` (a :class:`~interp.adapters.parallel.RankTraining`): this rank's share of a
    multi-rank step; the parts returned are then the global batch's.
    """
    with _autocast(model.device, cfg.autocast):
        loss, parts = adapter_loss(model, tokens, valid, w, k, rows,
                                   reduce=par.reduce if par is not None else None)
    if poison:
        loss = loss * float("nan")
        parts["loss"] = loss.detach()
    if par is not None:
        parts = par.global_parts(parts)
    if not torch.isfinite(parts["loss"] if par is not None else loss):
        return None, parts, None
    opt.zero_grad(set_to_none=True)
    if par is not None:
        par.backward(loss)
    else:
        loss.backward()
    gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    if hasattr(gnorm, "full_tensor"):   # FSDP: a replicated DTensor
        gnorm = gnorm.full_tensor()
    opt.step()
    return loss, parts, gnorm


@dataclass
class TrainResult:
    steps: int
    resumed_from: int
    seconds: float
    tokens_per_s: float
    final: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


def _float_parts(parts: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v) for k, v in parts.items() if v.ndim == 0}


def train(cfg: TrainConfig, setup: Setup, work: Path | None, progress: ProgressFn | None = None,
          ranks: Any = None) -> TrainResult:
    """Train ``setup.model.adapters`` in place, checkpointing into ``work``.

    ``progress(step, total, **metrics)`` is called after every step (the job's
    ``ctx.progress``; it may raise to cancel). Metrics: loss, kl, l1, nmse, bridge, l0,
    dead (fraction silent for ``dead_steps``), lr, k, tokens_per_s (and ranks, on
    several). ``ranks`` (:class:`interp.distributed.Ranks`, default: this process's):
    on several ranks each trains on its share of every global batch; ``work`` is then
    only rank 0's (None elsewhere).
    """
    from .. import distributed as D

    ranks = ranks or D.current()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model, dev = setup.model, setup.device
    params = list(model.adapters.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ident = {"base": getattr(setup.base, "weight_hash", None),
             "reasoner": getattr(setup.reasoner, "weight_hash", None)}
    par = None
    if ranks.world > 1:
        from .parallel import RankTraining

        par = RankTraining(ranks, cfg.shard, model, params)
        start, silent, first_loss = par.load(work, opt, ident)
    else:
        start, silent = load_checkpoint(work, model, opt, ident)
        first_loss = (checkpoint_info(work) or {}).get("first_loss") if start else None
    L, d_sae = model.n_layers, model.adapters.d_sae
    if silent is None:
        silent = torch.zeros(L, d_sae, dtype=torch.long, device=dev)
    src = BatchSource(setup.tokenizer, cfg.batch_size, cfg.seed, cfg.data, "train",
                      min(cfg.max_len, model.hybrid.cfg.n_ctx),
                      vocab_size=model.hybrid.cfg.d_vocab)
    w = cfg.weights()
    history: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    n_tok = 0
    parts_f: dict[str, float] = {}
    for step in range(start, cfg.steps):
        lr = lr_at(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        tokens, valid = src.batch(step)
        if tokens.shape[1] < 2 or int(valid[:, 1:].sum()) == 0:
            raise TrainingError(f"batch {step} has no next-token targets (max_len "
                                f"{cfg.max_len}, {tokens.shape[1]} positions): nothing to train on")
        k, rows = draw_bridge(cfg, step, L, tokens.shape[0])
        n_batch = int(valid.sum())
        if par is not None:
            tokens, valid, rows = par.local(tokens, valid, rows)
        tokens, valid = tokens.to(dev), valid.to(dev)
        poison = cfg.nan_at_step is not None and step == cfg.nan_at_step
        loss, parts, gnorm = train_step(model, opt, params, tokens, valid, w, k, rows.to(dev),
                                        cfg, poison=poison, par=par)
        if loss is None:
            last = json.loads((work / "latest.json").read_text())["step"] \
                if work is not None and (work / "latest.json").exists() else None
            kept = (f"the last good checkpoint (step {last}) is kept" if last is not None
                    else "no checkpoint had been written yet")
            raise NaNLossError(
                f"adapter training stopped: the loss became {float(parts['loss'])} at step {step} "
                f"(kl={float(parts['kl']):.4g}, l1={float(parts['l1']):.4g}, "
                f"nmse={float(parts['nmse']):.4g}, bridge={float(parts['bridge']):.4g}); "
                f"{kept}. Lower lr or l1, or resume from the checkpoint.")
        loss_f = float(parts["loss"] if par is not None else loss.detach())
        if first_loss is None:
            first_loss = loss_f
        if loss_f > DIVERGENCE_FACTOR * max(first_loss, DIVERGENCE_FLOOR):
            last = (checkpoint_info(work) or {}).get("step") if work is not None else None
            raise DivergedError(
                f"adapter training diverged: the loss reached {loss_f:.4g} at step {step}, "
                f"more than {DIVERGENCE_FACTOR:g}x its first value {first_loss:.4g} "
                f"(lr {cfg.lr:g}, l1 {cfg.l1:g}); nothing was saved as a result"
                + (f" (the checkpoint of step {last} is kept)" if last else "")
                + ". Lower lr.")
        silent = torch.where(parts["fired"], torch.zeros_like(silent), silent + 1)
        n_tok += n_batch
        if dev.type != "cpu":
            _sync(dev)
        el = time.perf_counter() - t0
        parts_f = _float_parts(parts)
        rec = {**parts_f, "lr": lr, "k": k, "grad_norm": float(gnorm),
               "dead": float((silent >= cfg.dead_steps).float().mean()),
               "tokens_per_s": n_tok / max(el, 1e-9)}
        if par is not None:
            rec["ranks"] = ranks.world
        history.append({"step": step + 1, **rec})
        if (step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.steps:
            if par is None:
                save_checkpoint(work, step + 1, model, opt, silent, history, ident, first_loss)
            else:
                par.save(work, step + 1, opt, silent, history, ident, first_loss, extra={
                    "ranks": ranks.world, "shard": cfg.shard, "data_cursor": {
                        "step": step + 1, "sequences": (step + 1) * cfg.batch_size,
                        "global_batch": cfg.batch_size}})
        if progress is not None:
            progress(step + 1, cfg.steps, **rec)
    el = time.perf_counter() - t0
    return TrainResult(steps=cfg.steps, resumed_from=start, seconds=el,
                       tokens_per_s=n_tok / max(el, 1e-9),
                       final=history[-1] if history else {}, history=history)


# ---------------------------------------------------------------------- jobs
def run_training(cfg: TrainConfig, work: Path | None, progress: ProgressFn | None = None,
                 setup: Setup | None = None) -> dict[str, Any]:
    """Load, train, save the artifact (when ``cfg.save``); returns the job result.

    A run that finds its work folder already at the last step trains nothing: the
    artifact saved for this config and pair is the result (never overwritten with an
    empty summary); if it is missing it is saved from the checkpoint and the job's
    recorded curve. On several ranks only rank 0 saves (the others return a summary)."""
    from .. import distributed as D
    from ..store import Store
    from .io import KIND, adapters_config, save_adapters

    ranks = D.current()
    if ranks.world > 1:
        from . import parallel

        setup = parallel.prepare(cfg, setup, ranks)
    setup = setup or setup_models(cfg)
    res = train(cfg, setup, work, progress, ranks)
    if ranks.world > 1:
        setup = parallel.gathered(setup, ranks)
        if setup is None:
            return {"steps": res.steps, "resumed_from": res.resumed_from, "rank": ranks.rank}
    history = _full_history(work, res.history)
    final = res.final or (history[-1] if history else {})
    out: dict[str, Any] = {"steps": res.steps, "resumed_from": res.resumed_from,
                           "seconds": res.seconds, "tokens_per_s": res.tokens_per_s,
                           "final": final}
    if cfg.save:
        store = Store(cfg.store_root)
        art = store.find(KIND, adapters_config(setup, cfg)) \
            if res.resumed_from >= cfg.steps else None
        if art is None:
            art = save_adapters(setup, cfg, training={
                "final": final, "seconds": res.seconds, "tokens_per_s": res.tokens_per_s,
                "resumed_from": res.resumed_from}, history=history, store=store)
        else:
            out["final"] = art.meta.get("training", {}).get("final", final)
            out["already_saved"] = True
        out["key"] = art.key
        out["path_name"] = art.path.name
    return out


def _full_history(work: Path, tail: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The run's whole curve: the job's progress records (all attempts, last record per
    step) when ``work`` is a job folder, else this process's records."""
    f = Path(work).parent / "progress.jsonl"
    recs: dict[int, dict[str, Any]] = {}
    if f.exists():
        for line in f.read_text().splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if "step" in r and "loss" in r:
                recs[int(r["step"])] = r
    for r in tail:
        recs[int(r["step"])] = r
    return [recs[s] for s in sorted(recs)]


def train_job(spec: dict[str, Any], ctx) -> dict[str, Any]:
    """Job entry (``adapters.train``): spec = TrainConfig fields."""
    cfg = TrainConfig.from_dict(spec)
    return run_training(cfg, Path(ctx.dir) if ctx.dir is not None else None, ctx.progress)


def sweep_job(spec: dict[str, Any], ctx) -> dict[str, Any]:
    """Job entry (``adapters.sweep``): train one run per ``l1_values`` entry (each resumable
    in its own sub-folder), evaluate faithfulness, save an ``adapters_sweep`` artifact
    with the L0-vs-gap-closed frontier. Extra spec keys: ``l1_values``, ``n_eval``
    (held-out sequences per evaluation), ``save_runs`` (also save each run's adapters)."""
    validate_sweep_spec(spec)
    spec = dict(spec)
    l1s = [float(v) for v in spec.pop("l1_values", [3e-4, 1e-3, 3e-3, 1e-2])]
    n_eval = int(spec.pop("n_eval", 256))
    save_runs = bool(spec.pop("save_runs", True))
    if not l1s:
        raise ConfigError("l1_values is empty")
    base_cfg = TrainConfig.from_dict(spec)
    total = base_cfg.steps * len(l1s)
    setup0 = setup_models(base_cfg)
    rows = []
    from .evaluate import faithfulness

    for i, l1 in enumerate(l1s):
        cfg = dataclasses.replace(base_cfg, l1=l1, save=base_cfg.save and save_runs)
        fresh = setup_models(cfg, setup0.base, setup0.reasoner)

        def prog(step, tot, _i=i, _l1=l1, **m):
            ctx.progress(_i * base_cfg.steps + step, total, message=f"l1={_l1:g}", **m)

        out = run_training(cfg, Path(ctx.dir) / f"l1-{l1:g}", prog, fresh)
        # settings are chosen on the validation half of the held-out problems
        fa = faithfulness(fresh.model, fresh.tokenizer, n=n_eval, source=cfg.data,
                          split="validation")
        rows.append({"l1": l1, "key": out.get("key"), "kl_gap_closed": fa["kl_gap_closed"],
                     "mean_l0": fa["mean_l0"], "dead_fraction": fa["dead_fraction"],
                     "kl_adapter": fa["kl_adapter"], "kl_hybrid": fa["kl_hybrid"]})
    result = {"runs": rows}
    if base_cfg.save:
        from ..store import Store, provenance

        store = Store(base_cfg.store_root)
        models = {"base": setup0.base.describe(), "reasoner": setup0.reasoner.describe()}
        # the weights' hashes key the artifact, as for a trained set: a retrained model
        # gives a new sweep instead of overwriting the old model's
        conf = {**base_cfg.identity(), "l1_values": l1s, "n_eval": n_eval,
                "eval_split": "validation",
                "pair_hashes": {k: v.get("weight_hash") for k, v in models.items()}}
        conf.pop("l1")
        art = store.save("adapters_sweep", conf, provenance=provenance(
            models=models, seed=base_cfg.seed), meta={"runs": rows})
        result["key"] = art.key
    return result
