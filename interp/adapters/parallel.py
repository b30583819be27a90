"""Adapter training on several ranks (torchrun): data-parallel, optionally sharded (FSDP).

What changes against one process (:func:`interp.adapters.train.train` calls these only
when there is more than one rank; one process runs the plain code):

* **Data.** Every rank draws the same global batch of ``batch_size`` sequences (a pure
  function of ``(seed, step)``) and keeps its contiguous share
  (:func:`interp.distributed.shard_bounds`), trimmed to its longest sequence; the step's
  bridged rows are drawn over the global batch and each rank keeps those it holds.
* **Loss and gradients.** The loss's denominators are summed over the ranks
  (:mod:`interp.adapters.loss`, ``reduce``), so each rank's loss is its share of the
  global-batch loss; gradients are *summed* over the ranks (an all-reduce of one flat
  buffer, or FSDP's averaging reduce-scatter of ``world ·`` the share), which gives the
  single-process gradient of the same global batch, and so the same clipping, AdamW
  step and loss curve, to float tolerance. Logged figures are the global batch's.
* **Sharding** (``shard="fsdp"``): ``torch.distributed.fsdp.fully_shard`` over the
  frozen hybrid and reasoner (embeddings, each block's attention and MLP, unembedding)
  and over each layer's adapter, whose parameters, gradients and AdamW moments then
  live 1/N on each rank; the base model is released once the hybrid is built (the
  hybrid holds its MLPs). The models are loaded on the CPU and each rank's shards moved
  to its GPU, so a pair larger than one GPU fits.
* **Checkpoints** stay in the single-process format (full adapters, AdamW state by
  parameter index, dead-feature counters) and are written by rank 0 only (FSDP gathers
  the shards first); ``latest.json`` also records the ranks, the sharding and the data
  cursor (global step and sequences consumed). Rank 0 reads a checkpoint on resume and
  broadcasts it, so a run resumes on any number of ranks (one included), on nodes that
  share no file system: the batches are a function of the global step, so the resumed
  run sees the same global batch sequence.
* **Writing.** Only rank 0 reports job progress, writes checkpoints and saves the
  artifact; the others run the same job function with a :class:`RankContext`.
"""

from __future__ import annotations

import dataclasses
import types
import warnings
from typing import Any

import torch

from .. import distributed as D
from ..errors import ConfigError
from .loss import reduce_parts
from .module import AdapterSet

SHARD_MODES = ("none", "fsdp")


class RankContext:
    """Stands in for :class:`interp.jobs.JobContext` on ranks other than 0: no folder,
    no progress records (rank 0's job records the run)."""

    def __init__(self, jid: str, kind: str):
        self.id, self.kind, self.dir, self.path = jid, kind, None, None

    def progress(self, step: int, total: int, message: str = "", **metrics: Any) -> None:
        return None

    def cancelled(self) -> bool:
        return False

    def check_cancel(self) -> None:
        return None


def _shadow(adapters: AdapterSet):
    """A plain, CPU copy of an adapter set's shape (for reading/writing checkpoints)."""
    return AdapterSet(adapters.n_layers, adapters.d_model, adapters.d_sae)


class _OptView:
    """What :func:`~interp.adapters.train.save_checkpoint` reads of an optimiser."""

    def __init__(self, state: dict[int, dict[str, torch.Tensor]]):
        self._state = state

    def state_dict(self) -> dict[str, Any]:
        return {"state": self._state, "param_groups": []}


class RankTraining:
    """The multi-rank pieces of one training run (see the module docstring)."""

    def __init__(self, ranks: D.Ranks, shard: str, model: Any, params: list[torch.Tensor]):
        if not ranks.grouped:
            raise ConfigError(f"{ranks.world} ranks but no process group: start the run "
                              "with torchrun")
        self.ranks, self.shard, self.model, self.params = ranks, shard, model, params
        self.names = [n for n, _ in model.adapters.named_parameters()]

    # -- data
    def local(self, tokens: torch.Tensor, valid: torch.Tensor, rows: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This rank's sequences of the global batch (trimmed to the longest) and its
        bridged rows, re-indexed."""
        lo, hi = D.shard_bounds(tokens.shape[0], self.ranks.rank, self.ranks.world)
        t, v = tokens[lo:hi], valid[lo:hi]
        cols = v.any(0).nonzero()
        width = max(2, int(cols.max()) + 1) if cols.numel() else t.shape[1]
        r = rows[(rows >= lo) & (rows < hi)] - lo
        return t[:, :width], v[:, :width], r

    # -- gradients and figures
    @staticmethod
    def reduce(t: torch.Tensor) -> torch.Tensor:
        return D.all_reduce_sum(t)

    def backward(self, loss: torch.Tensor) -> None:
        """Backward of this rank's share, then the gradients summed over the ranks. FSDP
        averages what it reduces (gloo has no pre-scaled sum), so its backward runs on
        ``world ·`` the share."""
        if self.shard == "none":
            loss.backward()
            D.all_reduce_grads(self.params)
        else:
            (loss * self.ranks.world).backward()

    def global_parts(self, parts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return reduce_parts(parts, self.reduce)

    # -- checkpoints
    def _fqn(self, i: int) -> str:
        return self.names[i]

    def load(self, work, opt: torch.optim.Optimizer, ident: dict[str, Any]
             ) -> tuple[int, torch.Tensor | None, float | None]:
        """Rank 0 reads the latest checkpoint (the single-process reader and its checks)
        and every rank receives it; ``(step, silent_steps, first_loss)``."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        from .train import checkpoint_info, load_checkpoint

        ad = self.model.adapters
        head: tuple[int, float | None] = (0, None)
        silent = None
        msd: dict[str, torch.Tensor] = {}
        osd: dict[str, Any] = {}
        if self.ranks.is_main and work is not None:
            shadow = _shadow(ad)
            sparams = list(shadow.parameters())
            sopt = torch.optim.AdamW(sparams, lr=opt.param_groups[0]["lr"],
                                     weight_decay=opt.param_groups[0]["weight_decay"])
            view = types.SimpleNamespace(adapters=shadow, device=torch.device("cpu"))
            start, silent = load_checkpoint(work, view, sopt, ident)
            if start:
                head = (start, (checkpoint_info(work) or {}).get("first_loss"))
                msd = {n: p.detach() for n, p in shadow.named_parameters()}
                group = {k: v for k, v in sopt.state_dict()["param_groups"][0].items()
                         if k != "params"}
                osd = {"state": {self._fqn(i): s for i, s in sopt.state_dict()["state"].items()},
                       "param_groups": [{**group, "params": list(self.names)}]}
        start, first_loss = D.broadcast_object(head)
        if not start:
            return 0, None, None
        opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        set_model_state_dict(ad, msd, options=opts)
        set_optimizer_state_dict(ad, opt, osd, options=opts)
        dev = self.model.device
        L, d_sae = ad.n_layers, ad.d_sae
        buf = silent.to(dev) if silent is not None else torch.zeros(L, d_sae, dtype=torch.long,
                                                                   device=dev)
        if self.ranks.grouped:
            torch.distributed.broadcast(buf, src=0)
        return start, buf, first_loss

    def full_state(self, opt: torch.optim.Optimizer
                   ) -> tuple[AdapterSet | None, dict[int, dict[str, torch.Tensor]] | None]:
        """The whole adapter set and AdamW state on rank 0 (None elsewhere); with FSDP
        every rank must call it (the shards are gathered)."""
        ad = self.model.adapters
        if self.shard == "none":
            if not self.ranks.is_main:
                return None, None
            return ad, opt.state_dict()["state"]
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        msd = get_model_state_dict(ad, options=opts)
        osd = get_optimizer_state_dict(ad, opt, options=opts)
        if not self.ranks.is_main:
            return None, None
        shadow = _shadow(ad)
        shadow.load_tensors({n.removeprefix("layers."): t for n, t in msd.items()})
        index = {n: i for i, n in enumerate(self.names)}
        state = {index[n]: dict(s) for n, s in osd["state"].items()}
        return shadow, state

    def save(self, work, step: int, opt: torch.optim.Optimizer, silent: torch.Tensor,
             history: list[dict[str, Any]], ident: dict[str, Any], first_loss: float | None,
             extra: dict[str, Any]) -> None:
        from .train import save_checkpoint

        adapters, state = self.full_state(opt)
        if not self.ranks.is_main or work is None:
            return
        view = types.SimpleNamespace(adapters=adapters)
        save_checkpoint(work, step, view, _OptView(state), silent, history, ident,
                        first_loss, extra=extra)


# ---------------------------------------------------------------------- FSDP
class _Unit(torch.nn.Module):
    """A plain container FSDP can shard when it cannot re-class the module itself
    (TransformerLens' attention derives from ``abc.ABC``, whose instance layout
    ``fully_shard``'s generated subclass does not match)."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner(*args, **kwargs)


def shard_model(model: Any, ranks: D.Ranks, device: torch.device) -> None:
    """``fully_shard`` the adapter model in place (see the module docstring): units are
    the modules the layer loop calls (embeddings, attention, MLPs, unembedding of the
    hybrid and the reasoner; each adapter with ``encode``/``decode``/``decoder_norms``
    as forward methods), the root holds the norms and anything left."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    if not ranks.grouped:
        raise ConfigError("shard=fsdp needs several ranks: start the run with torchrun")
    mesh = init_device_mesh(device.type, (ranks.world,))
    # the layer loop never edits a unit's output in place (the 2-rank loss curve and
    # gradients equal one process's; tests/test_distributed.py), so FSDP's warning about
    # view outputs does not apply
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view")

    def unit(m: Any) -> None:
        if m is not None and any(True for _ in m.parameters()):
            fully_shard(m, mesh=mesh)

    seen: set[int] = set()
    for tl in (model.hybrid, model.reference):
        if id(tl) in seen:
            continue
        seen.add(id(tl))
        for name in ("embed", "pos_embed", "unembed"):
            unit(getattr(tl, name, None))
        for blk in tl.blocks:
            blk.attn = _Unit(blk.attn)
            unit(blk.attn)
            unit(blk.mlp)
    for a in model.adapters.layers:
        fully_shard(a, mesh=mesh)
        for meth in ("encode", "decode", "decoder_norms"):
            register_fsdp_forward_method(a, meth)
    fully_shard(model, mesh=mesh)
    for meth in ("forward_bridged", "bridged_logits"):
        register_fsdp_forward_method(model, meth)


def release(m: Any) -> None:
    """Free a loaded model's weights (its config, tokenizer and hash stay readable)."""
    hooked = getattr(m, "hooked", None)
    if hooked is not None:
        torch.nn.Module.to(hooked, "meta")   # (TransformerLens' own .to prints)
    if getattr(m, "hf", None) is not None:
        m.hf = None


def prepare(cfg: Any, setup: Any, ranks: D.Ranks) -> Any:
    """The setup of a multi-rank run: checks, then (``shard="fsdp"``) the pair loaded on
    the CPU, the adapter model sharded in place, the base released and ``setup.device``
    this rank's device. ``setup`` None: loaded here."""
    from .train import setup_models

    if not ranks.grouped:
        raise ConfigError(f"{ranks.world} ranks but no process group: start the run with "
                          "torchrun (the CLI joins the group itself)")
    if cfg.batch_size < ranks.world:
        raise ConfigError(f"batch_size {cfg.batch_size} is smaller than the number of ranks "
                          f"{ranks.world}: every rank needs at least one sequence per step")
    if cfg.shard != "fsdp":
        return setup or setup_models(cfg)
    dev = torch.device("cuda", torch.cuda.current_device()) \
        if D.default_backend(cfg.device) == "nccl" else torch.device("cpu")
    setup = setup or setup_models(dataclasses.replace(cfg, device="cpu"))
    shard_model(setup.model, ranks, dev)
    if setup.base is not setup.reasoner:
        release(setup.base)
    setup.device = dev
    return setup


def gathered(setup: Any, ranks: D.Ranks) -> Any:
    """After training: on rank 0 a setup whose adapter set is whole and plain (FSDP's
    shards gathered; every rank must call this), None on the other ranks."""
    ad = setup.model.adapters
    if ad.layers[0].W_enc.__class__.__name__ == "DTensor":
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        msd = get_model_state_dict(ad, options=StateDictOptions(full_state_dict=True,
                                                                 cpu_offload=True))
        if not ranks.is_main:
            return None
        ad = _shadow(ad)
        ad.load_tensors({n.removeprefix("layers."): t for n, t in msd.items()})
    elif not ranks.is_main:
        return None
    return dataclasses.replace(setup, model=types.SimpleNamespace(adapters=ad))


# ---------------------------------------------------------------------- jobs
def run_job(kind: str, spec: dict[str, Any], on_progress: Any = None, root: Any = None,
            force: bool = False) -> Any:
    """Run a training job on every rank of a torchrun launch (each rank calls this).

    Rank 0 runs it through :mod:`interp.jobs` (``spec.json``, ``status.json``,
    ``progress.jsonl`` and the checkpoints in the job folder, the same job id as a
    single-process run of the spec, so the app's job view shows it like any other and a
    run resumes whatever the number of ranks); the other ranks run the same job function
    with a :class:`RankContext`. Rank 0 decides whether it runs (not when it is done or
    running elsewhere) and tells the others. Returns rank 0's
    :class:`~interp.jobs.JobStatus`; None on the other ranks."""
    import json

    from .. import jobs
    from ..errors import JobError
    from ..store import canonical_json

    ranks = D.init(spec.get("device", "auto") if isinstance(spec, dict) else "auto")
    jobs.validate_spec(kind, spec)
    spec = json.loads(canonical_json(spec))
    jid = jobs.job_id(kind, spec)
    decision = None
    if ranks.is_main:
        try:
            st = jobs.status(jid, root)
        except JobError:
            st = None
        decision = ("done" if st is not None and st.state == "done" and not force else
                    "busy" if jobs._run_lock_held(jobs.jobs_dir(root) / jid) else "run")
    decision = D.broadcast_object(decision)
    if decision == "busy":
        if ranks.is_main:
            raise JobError(f"job {jid} is already running elsewhere; follow it with "
                           f"`python -m interp jobs status {jid}`")
        return None
    if decision == "done":
        return jobs.status(jid, root) if ranks.is_main else None
    if ranks.is_main:
        return jobs.run_inline(kind, spec, root, on_progress, raise_on_error=False, force=True)
    jobs._resolve(kind)(spec, RankContext(jid, kind))
    return None
