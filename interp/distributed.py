"""Scale-out on torch.distributed: ranks, shards, rank-0 writing, parts merged in the store.

Launch any command with ``torchrun`` (it sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``); without it every helper here sees one process
(:data:`SINGLE`) and the code paths are the plain single-process ones.

* :func:`init` joins the torchrun process group (NCCL when the ranks use CUDA, else gloo)
  and pins each rank to GPU ``LOCAL_RANK``; :func:`current` / :func:`env_ranks` tell a
  rank who it is; :func:`all_reduce_sum`, :func:`all_reduce_grads`,
  :func:`broadcast_object` are the few collectives the training loop needs.
* :func:`shard_bounds` / :func:`shard`: rank ``r`` of ``world`` takes one contiguous,
  balanced block of the items (boundaries on multiples of ``align``, e.g. a generation
  batch size, so each rank runs exactly the batches a single process would run), so
  concatenating the ranks' results in rank order gives the single-process order.
* Rank-0 writing: only rank 0 writes artifacts, checkpoints and job progress
  (:attr:`Ranks.is_main`).
* Collections (:func:`collect`): each rank computes its shard and saves it as a *part*
  artifact (kind ``part``) the moment it is done; the rank whose part completes the set
  merges all parts, in rank order, into one artifact under the key a single-process run
  gives, then removes the parts. No barrier or process group is needed: the store is the
  channel (a part landing is an atomic folder rename; the merge runs under the store's
  lock, and a second merger finds the artifact already there). So ranks may also be
  independent launches (a scheduler's array job, ``--rank``/``--world`` by hand), and the
  app can follow the landing parts (:func:`parts_status`,
  ``python -m interp distributed parts``). Across nodes the store must be one shared
  folder (``INTERP_CACHE`` on NFS/Lustre), as it is for the app that reads it.
  Split this way: adapter evaluation, trace generation, feature collection and batch
  attribution (:data:`SPLIT_JOBS` lists the jobs the torchrun CLI splits); a command that
  prints a result calls :func:`merged` on every rank, which hands rank 0 the artifact.
* :func:`estimate_memory`: bytes per rank of adapter training for a model config, a
  number of ranks and a sharding mode (``python -m interp distributed estimate``).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Mapping, Sequence, TypeVar

import torch

from .errors import ConfigError
from .store import Artifact, Store, config_key, dir_lock

T = TypeVar("T")

BACKENDS = ("gloo", "nccl")
PART_KIND = "part"
# jobs whose work is split across the ranks of a torchrun launch (the others run in one
# process): adapter training (data-parallel / FSDP) and the collections merged in the store
SPLIT_JOBS = ("adapters.train", "traces.generate", "features.collect", "attribution.study")


@dataclass(frozen=True)
class Ranks:
    """Who this process is: ``rank`` of ``world`` (``local_rank`` on its node).
    ``backend`` is the process group's (None: no group; collectives are not available,
    store-based collections still are)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def grouped(self) -> bool:
        """A process group joins more than one rank (collectives work)."""
        return self.backend is not None and self.world > 1

    def describe(self) -> dict[str, Any]:
        return {"rank": self.rank, "world": self.world, "backend": self.backend}


SINGLE = Ranks()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer") from None


def env_ranks() -> Ranks:
    """Ranks from the launcher's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``),
    without joining a process group; :data:`SINGLE` when not launched."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} does not fit WORLD_SIZE={world}")
    backend = None
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        backend = str(torch.distributed.get_backend())
    return Ranks(rank, world, _env_int("LOCAL_RANK", rank), backend)


def launched() -> bool:
    """Whether this process is one of several ranks started by torchrun (or alike)."""
    return _env_int("WORLD_SIZE", 1) > 1


def default_backend(device: str | torch.device = "auto") -> str:
    """NCCL when the ranks compute on CUDA, gloo otherwise (CPU, or a CPU-only torch)."""
    from .models import pick_device

    dev = pick_device(device) if not isinstance(device, torch.device) else device
    return "nccl" if dev.type == "cuda" else "gloo"


def init(device: str | torch.device = "auto", backend: str | None = None,
         timeout_s: float = 1800.0) -> Ranks:
    """Join the torchrun process group (idempotent) and return this process's ranks.

    Not launched (``WORLD_SIZE`` unset or 1): :data:`SINGLE`, nothing is initialised.
    ``backend`` defaults to :func:`default_backend`; on CUDA each rank is pinned to
    ``cuda:LOCAL_RANK`` first."""
    if not launched():
        return SINGLE
    if not torch.distributed.is_available():
        raise ConfigError("this torch build has no torch.distributed; run one process")
    if torch.distributed.is_initialized():
        return env_ranks()
    backend = backend or default_backend(device)
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    env = env_ranks()
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ConfigError("backend nccl needs CUDA; use gloo on CPU")
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ConfigError(f"{name} is not set: start the ranks with torchrun")
    torch.distributed.init_process_group(backend, timeout=_dt.timedelta(seconds=timeout_s))
    return env_ranks()


def current() -> Ranks:
    """This process's ranks (the process group's when one is initialised)."""
    return env_ranks() if launched() else SINGLE


def rank() -> int:
    return current().rank


def world_size() -> int:
    return current().world


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes artifacts and progress."""
    return current().is_main


def barrier() -> None:
    """A barrier across the process group (nothing without one)."""
    if current().grouped:
        torch.distributed.barrier()


def shutdown() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# ------------------------------------------------------------------ collectives
def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """A new tensor: ``t`` summed over the ranks (a copy of ``t`` without a group)."""
    out = t.detach().clone()
    if current().grouped:
        torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.SUM)
    return out


def all_reduce_grads(params: Sequence[torch.Tensor]) -> None:
    """Sum the parameters' gradients over the ranks, in place (one flat buffer)."""
    if not current().grouped:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
    i = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[i:i + n].view_as(g))
        i += n


def broadcast_object(obj: T, src: int = 0) -> T:
    """``obj`` of rank ``src`` on every rank (small Python objects; pickled in memory)."""
    if not current().grouped:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


# ------------------------------------------------------------------ shards
def shard_bounds(n: int, rank: int, world: int, align: int = 1) -> tuple[int, int]:
    """``(lo, hi)``: rank ``rank``'s contiguous block of ``n`` items.

    The ``ceil(n / align)`` blocks of ``align`` items are dealt out as evenly as possible
    (earlier ranks take one more when they do not divide), so every boundary except
    ``n`` is a multiple of ``align``; consecutive ranks' blocks tile ``0..n``. A rank may
    get an empty block when there are fewer blocks than ranks."""
    if n < 0 or world < 1 or not 0 <= rank < world or align < 1:
        raise ConfigError(f"bad shard request: n={n}, rank={rank}, world={world}, "
                          f"align={align}")
    blocks = -(-n // align)
    q, r = divmod(blocks, world)
    lo_b = rank * q + min(rank, r)
    hi_b = lo_b + q + (1 if rank < r else 0)
    return min(lo_b * align, n), min(hi_b * align, n)


def shard(items: Sequence[T], rank: int, world: int, align: int = 1) -> list[T]:
    """Rank ``rank``'s contiguous share of ``items`` (see :func:`shard_bounds`)."""
    lo, hi = shard_bounds(len(items), rank, world, align)
    return list(items[lo:hi])


# ------------------------------------------------------------------ parts in the store
Bounds = tuple[tuple[int, int], ...]


@dataclass
class Part:
    """One rank's result of a collection: tensors and JSON ``meta`` for its ``bounds``
    (one ``(lo, hi)`` item range per axis of the collection). ``files`` (name ->
    text or bytes) are written into the merged artifact only (a part's own data goes in
    its tensors and meta)."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    bounds: Bounds = ()
    files: dict[str, str | bytes] = field(default_factory=dict)

    @property
    def lo(self) -> int:
        return self.bounds[0][0]

    @property
    def hi(self) -> int:
        return self.bounds[0][1]


def part_key(final_key: str, index: int, n_parts: int) -> str:
    return f"{final_key}.part{index:04d}of{n_parts:04d}"


def final_key(kind: str, config: Mapping[str, Any]) -> str:
    """The key the merged artifact gets: the single-process key of ``(kind, config)``."""
    from .store import canonical_json

    return config_key(kind, json.loads(canonical_json(dict(config))))


def save_part(store: Store, kind: str, config: Mapping[str, Any], index: int, n_parts: int,
              part: Part) -> Artifact:
    """Land part ``index`` of ``n_parts`` of the ``kind`` artifact for ``config`` (an
    artifact of kind ``part``; its config names the target and the items it covers)."""
    from .store import provenance

    key = final_key(kind, config)
    conf = {"of_kind": kind, "of_key": key, "index": index, "parts": n_parts,
            "bounds": [list(b) for b in part.bounds]}
    return store.save(PART_KIND, conf, part.tensors or None, key=part_key(key, index, n_parts),
                      provenance=provenance(**current().describe()), meta=part.meta)


def load_part(store: Store, kind: str, config: Mapping[str, Any], index: int, n_parts: int
              ) -> Part | None:
    """A landed part, or None."""
    key = part_key(final_key(kind, config), index, n_parts)
    if not store.exists(PART_KIND, key):
        return None
    art = store.load(PART_KIND, key)
    return Part(dict(art.tensors), dict(art.meta),
                tuple((int(lo), int(hi)) for lo, hi in art.config["bounds"]))


def parts_status(store: Store, kind: str, key: str) -> dict[str, Any]:
    """How far a split collection into artifact ``kind``/``key`` is: ``{"kind", "key",
    "merged", "parts", "landed": [indices], "bounds": [per landed part]}`` (``parts``:
    how many there will be; None when none has landed). Once merged the parts are gone
    and ``merged`` is true."""
    landed: list[int] = []
    bounds: list[Any] = []
    n_parts = None
    d = store.kind_dir(PART_KIND)
    if d.is_dir():
        for p in sorted(d.iterdir()):
            if not p.name.startswith(key + ".part") or not store.exists(PART_KIND, p.name):
                continue
            cfg = store.load(PART_KIND, p.name).config
            if cfg.get("of_kind") != kind:
                continue
            n_parts = int(cfg["parts"])
            landed.append(int(cfg["index"]))
            bounds.append(cfg["bounds"])
    return {"kind": kind, "key": key, "merged": store.exists(kind, key), "parts": n_parts,
            "landed": landed, "bounds": bounds}


def merge_parts(store: Store, kind: str, config: Mapping[str, Any], n_parts: int,
                merge: Callable[[list[Part]], Part], provenance: Mapping[str, Any] | None = None
                ) -> Artifact | None:
    """When all ``n_parts`` parts have landed: merge them (in part order) into the
    ``kind`` artifact for ``config`` (replacing an older one), remove the parts and return
    the artifact; None while a part is missing. Runs under the part kind's lock, so of
    concurrent callers that both saw the last part land exactly one merges."""
    key = final_key(kind, config)
    with _merge_lock(store):
        parts = [load_part(store, kind, config, i, n_parts) for i in range(n_parts)]
        if any(p is None for p in parts):
            return None
        out = merge(parts)  # type: ignore[arg-type]
        art = _save(store, kind, config, out, provenance)
        for i in range(n_parts):
            store.delete(PART_KIND, part_key(key, i, n_parts))
    return art


def _merge_lock(store: Store) -> ContextManager[None]:
    """An exclusive lock on the store's part folder for merging (its own lock file: the
    store's writes and deletes hold the folder's ``.lock`` themselves)."""
    return dir_lock(store.kind_dir(PART_KIND), ".merge.lock")


def collect(kind: str, config: Mapping[str, Any], sizes: int | Sequence[int],
            work: Callable[[Bounds], Part], merge: Callable[[list[Part]], Part], *,
            store: Store, ranks: Ranks | None = None, align: int | Sequence[int] = 1,
            provenance: Mapping[str, Any] | None = None) -> Artifact | None:
    """Compute a ``kind`` artifact over items split across the ranks.

    ``sizes``: the number of items (or one number per axis, e.g. evaluation batches and
    generation prompts); ``align`` likewise. ``work(bounds)`` computes the items
    ``lo..hi-1`` of each axis (``bounds = ((lo, hi), ...)``) into a :class:`Part`;
    ``merge(parts)`` combines parts given in rank (= item) order into the artifact's
    :class:`Part` (tensors + meta). One process: ``merge([work(everything)])`` is saved
    directly. Several ranks: each computes its block of every axis
    (:func:`shard_bounds`), lands it as a part (a part already landed for the same items
    is reused, so a rerun after a crash computes only what is missing), and the rank
    that completes the set merges. Returns the artifact on the merging rank (or the only
    process), None on the others (:func:`parts_status` and the store tell when it is
    there). The artifact's key is the single-process key of ``(kind, config)``."""
    ranks = ranks or current()
    sizes_t = (sizes,) if isinstance(sizes, int) else tuple(sizes)
    aligns = (align,) * len(sizes_t) if isinstance(align, int) else tuple(align)
    if len(aligns) != len(sizes_t):
        raise ConfigError("collect: one align per axis of sizes")
    bounds = tuple(shard_bounds(n, ranks.rank, ranks.world, a) for n, a in zip(sizes_t, aligns))
    if ranks.world == 1:
        return _save(store, kind, config, merge([_work(work, bounds)]), provenance)
    have = load_part(store, kind, config, ranks.rank, ranks.world)
    if have is None or have.bounds != bounds:
        save_part(store, kind, config, ranks.rank, ranks.world, _work(work, bounds))
    return merge_parts(store, kind, config, ranks.world, merge, provenance)


def _save(store: Store, kind: str, config: Mapping[str, Any], out: Part,
          provenance: Mapping[str, Any] | None) -> Artifact:
    return store.save(kind, config, out.tensors or None, provenance=provenance, meta=out.meta,
                      files=out.files or None)


def merged(store: Store, kind: str, config: Mapping[str, Any], art: Artifact | None,
           ranks: Ranks | None = None) -> Artifact | None:
    """After :func:`collect` on every rank of a process group: the merged artifact on
    rank 0 (loaded from the store when another rank merged it), None on the others.
    Every rank must call it (a barrier waits for the merge). Without a process group
    (one process, or ranks launched by hand) ``art`` as it is."""
    ranks = ranks or current()
    if not ranks.grouped:
        return art
    barrier()
    if not ranks.is_main:
        return None
    return art if art is not None else store.load(kind, final_key(kind, config))


def _work(work: Callable[[Bounds], Part], bounds: Bounds) -> Part:
    part = work(bounds)
    part.bounds = bounds
    return part


def concat_parts(parts: Sequence[Part]) -> Part:
    """The plain merge: tensors concatenated along dim 0 and ``meta["records"]`` lists
    joined, in part order (other meta keys from the first part)."""
    if not parts:
        return Part()
    names = list(parts[0].tensors)
    tensors = {n: torch.cat([p.tensors[n] for p in parts], dim=0) for n in names}
    meta = dict(parts[0].meta)
    if any("records" in p.meta for p in parts):
        meta["records"] = [r for p in parts for r in p.meta.get("records", [])]
    return Part(tensors, meta, tuple((parts[0].bounds[i][0], parts[-1].bounds[i][1])
                                     for i in range(len(parts[0].bounds))))


# ------------------------------------------------------------------ memory
BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}

# a few well-known reasoning pairs' shared architecture (from their config.json files)
PRESETS: dict[str, dict[str, Any]] = {
    "qwen2.5-1.5b": dict(hidden_size=1536, num_hidden_layers=28, intermediate_size=8960,
                         num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                         tie_word_embeddings=True),
    "qwen2.5-7b": dict(hidden_size=3584, num_hidden_layers=28, intermediate_size=18944,
                       num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                       tie_word_embeddings=False),
    "qwen2.5-14b": dict(hidden_size=5120, num_hidden_layers=48, intermediate_size=13824,
                        num_attention_heads=40, num_key_value_heads=8, vocab_size=152064,
                        tie_word_embeddings=False),
    "qwen2.5-32b": dict(hidden_size=5120, num_hidden_layers=64, intermediate_size=27648,
                        num_attention_heads=40, num_key_value_heads=8, vocab_size=152064,
                        tie_word_embeddings=False),
}


def model_shape(config: Mapping[str, Any]) -> dict[str, int]:
    """Sizes of a Qwen2/Llama-style decoder from its HF ``config.json`` fields, and its
    parameter counts (``n_params``, ``n_mlp_params``, ``n_embed_params``): q/k/v with
    biases when ``attention_bias`` or Qwen2 (always), o without, gated MLP, RMSNorm."""
    try:
        d = int(config["hidden_size"])
        n_layers = int(config["num_hidden_layers"])
        d_mlp = int(config["intermediate_size"])
        n_heads = int(config["num_attention_heads"])
        n_kv = int(config.get("num_key_value_heads") or n_heads)
        vocab = int(config["vocab_size"])
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"the model config lacks a usable {e} (hidden_size, "
                          "num_hidden_layers, intermediate_size, num_attention_heads, "
                          "vocab_size)") from None
    d_head = int(config.get("head_dim") or d // n_heads)
    tied = bool(config.get("tie_word_embeddings", False))
    qkv_bias = bool(config.get("attention_bias", "qwen2" in str(config.get("model_type",
                                                                             "qwen2"))))
    attn = d * n_heads * d_head + 2 * d * n_kv * d_head + n_heads * d_head * d
    if qkv_bias:
        attn += n_heads * d_head + 2 * n_kv * d_head
    mlp = 3 * d * d_mlp
    per_layer = attn + mlp + 2 * d
    embed = vocab * d * (1 if tied else 2)
    return {"d_model": d, "n_layers": n_layers, "d_mlp": d_mlp, "n_heads": n_heads,
            "n_kv_heads": n_kv, "d_head": d_head, "d_vocab": vocab,
            "n_params": n_layers * per_layer + embed + d, "n_mlp_params": n_layers * mlp,
            "n_attn_params": n_layers * attn, "n_embed_params": embed,
            "largest_unit_params": max(vocab * d, attn, mlp)}


def estimate_memory(config: Mapping[str, Any], *, ranks: int = 1, shard: str = "none",
                    d_sae: int = 0, batch_size: int = 16, seq_len: int = 256,
                    weights_dtype: str = "float32", act_dtype: str = "float32",
                    bridge_fraction: float = 0.25) -> dict[str, Any]:
    """Bytes each rank holds while training adapters on a pair with this architecture.

    Terms (the training code's actual layout): frozen weights = the base model, the
    reasoner (reference MLPs) and the hybrid (a copy of the reasoner with base MLPs),
    ``3 · n_params`` at ``weights_dtype``; with ``shard="fsdp"`` the hybrid and the
    reasoner are sharded over the ranks and the base is released after the hybrid is
    built (``2 · n_params / ranks``), plus the largest unit gathered at a time. Adapters:
    ``n_layers · (2 · d_model · d_sae + d_sae + d_model)`` fp32 parameters, with their
    gradients and AdamW's two moments (16 bytes per parameter), divided by ``ranks``
    under FSDP. Activations, per rank's ``ceil(batch_size / ranks)`` sequences of
    ``seq_len`` tokens, kept for the backward pass of the adapter model: per layer and
    token the residuals and norms (``6 · d_model``), the MLP's hidden (``3 · d_mlp``),
    the feature activations (``2 · d_sae``), per layer and sequence the attention
    pattern (``2 · n_heads · seq_len²``), scaled by ``1 + 2 · bridge_fraction`` for the
    bridged rows; plus the logits and log-probs (``(4 + 4 · bridge_fraction) ·
    d_vocab`` per token, fp32). A planning figure (allocator slack, the CUDA context and
    framework buffers come on top); its weight and adapter terms are exact counts."""
    if shard not in ("none", "fsdp"):
        raise ConfigError("shard must be 'none' or 'fsdp'")
    if ranks < 1:
        raise ConfigError("ranks must be >= 1")
    for name, dt in (("weights_dtype", weights_dtype), ("act_dtype", act_dtype)):
        if dt not in BYTES:
            raise ConfigError(f"{name} must be one of {', '.join(sorted(BYTES))}")
    m = model_shape(config)
    d_sae = d_sae or 4 * m["d_model"]
    wb, ab = BYTES[weights_dtype], BYTES[act_dtype]
    P = m["n_params"]
    fsdp = shard == "fsdp"
    frozen = (2 * P * wb) / ranks + 2 * m["largest_unit_params"] * wb if fsdp else 3 * P * wb
    n_ad = m["n_layers"] * (2 * m["d_model"] * d_sae + d_sae + m["d_model"])
    adapters = 16 * n_ad / (ranks if fsdp else 1)
    local_b = math.ceil(batch_size / ranks)
    tokens = local_b * seq_len
    per_tok_layer = 6 * m["d_model"] + 3 * m["d_mlp"] + 2 * d_sae
    acts = (tokens * m["n_layers"] * per_tok_layer
            + local_b * m["n_layers"] * 2 * m["n_heads"] * seq_len ** 2) * ab
    acts *= 1 + 2 * bridge_fraction
    logits = tokens * m["d_vocab"] * 4 * (4 + 4 * bridge_fraction)
    total = frozen + adapters + acts + logits
    return {"ranks": ranks, "shard": shard, "d_sae": d_sae, "n_params": P,
            "n_adapter_params": n_ad, "sequences_per_rank": local_b,
            "frozen_bytes": int(frozen), "adapter_bytes": int(adapters),
            "activation_bytes": int(acts), "logit_bytes": int(logits),
            "total_bytes": int(total), "total_gib": total / 2 ** 30,
            "shape": m}


def _config_from(args) -> dict[str, Any]:
    if args.preset:
        if args.preset not in PRESETS:
            raise ConfigError(f"unknown preset {args.preset!r}; choose from "
                              f"{', '.join(PRESETS)}")
        return dict(PRESETS[args.preset])
    if args.config:
        try:
            cfg = json.loads(Path(args.config).read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read the model config {args.config}: {e}") from None
    else:
        from .models import local_checkpoint

        _, path = local_checkpoint(args.model or "organism:reasoner")
        cfg = json.loads((Path(path) / "config.json").read_text())
    if isinstance(cfg.get("text_config"), dict):
        cfg = {**cfg, **cfg["text_config"]}
    return cfg


# ------------------------------------------------------------------ CLI
def _cmd_estimate(args) -> int:
    from .cli import emit
    from .validate import number

    cfg = _config_from(args)
    out = estimate_memory(
        cfg, ranks=number(args.ranks, "--ranks", lo=1, integer=True), shard=args.shard,
        d_sae=number(args.d_sae, "--d-sae", lo=0, integer=True),
        batch_size=number(args.batch_size, "--batch-size", lo=1, integer=True),
        seq_len=number(args.seq_len, "--seq-len", lo=1, integer=True),
        weights_dtype=args.weights_dtype, act_dtype=args.act_dtype)
    gib = 2 ** 30
    print(f"per rank: {out['total_gib']:.1f} GiB = frozen weights "
          f"{out['frozen_bytes'] / gib:.1f} + adapters/optimiser "
          f"{out['adapter_bytes'] / gib:.1f} + activations {out['activation_bytes'] / gib:.1f}"
          f" + logits {out['logit_bytes'] / gib:.1f}", file=sys.stderr)
    emit(out, True)
    return 0


def _cmd_parts(args) -> int:
    from .cli import emit

    store = Store(args.store) if args.store else Store()
    emit(parts_status(store, args.kind, args.key), True)
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("distributed", help="multi-GPU / multi-node helpers (torchrun)")
    s = p.add_subparsers(dest="distributed_command", required=True)
    e = s.add_parser("estimate", help="memory per rank of adapter training")
    src = e.add_mutually_exclusive_group()
    src.add_argument("--model", help="model spec whose config.json to read "
                     "(default: organism:reasoner)")
    src.add_argument("--config", help="a config.json file")
    src.add_argument("--preset", help=", ".join(PRESETS))
    e.add_argument("--ranks", type=int, default=1)
    e.add_argument("--shard", choices=["none", "fsdp"], default="none")
    e.add_argument("--d-sae", type=int, default=0, help="features per layer (0: 4·d_model)")
    e.add_argument("--batch-size", type=int, default=16, help="global sequences per step")
    e.add_argument("--seq-len", type=int, default=256)
    e.add_argument("--weights-dtype", default="float32", choices=sorted(BYTES))
    e.add_argument("--act-dtype", default="float32", choices=sorted(BYTES))
    e.set_defaults(func=_cmd_estimate)
    pp = s.add_parser("parts", help="which parts of a split collection have landed")
    pp.add_argument("kind")
    pp.add_argument("key")
    pp.add_argument("--store", help="artifact store root")
    pp.set_defaults(func=_cmd_parts)
