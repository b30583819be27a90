"""One model path: resolve a spec, load it, wrap it for hooks.

A *spec* is any of

* ``organism:<variant>`` (or the bare variant name): a project-made checkpoint under
  ``cache/organisms/<variant>/`` (see :mod:`interp.organisms`);
* a name registered in ``cache/models.json`` (e.g. ``smollm2-135m-instruct`` after
  ``python -m interp models fetch-smollm2``);
* a local directory holding ``config.json`` + safetensors + tokenizer;
* a ``.gguf`` file (dequantised once into a normal checkpoint under ``cache/models/``);
* a hub name ``org/name`` (downloaded with ``huggingface_hub`` where there is network).

Every spec resolves to a local transformers checkpoint directory, loaded with
transformers and wrapped as a TransformerLens ``HookedTransformer`` with **unprocessed**
weights (no LayerNorm folding, no centring), so hook names are the same for every model
(``blocks.{l}.hook_resid_pre``, ``blocks.{l}.ln2.hook_normalized``,
``blocks.{l}.hook_mlp_out``, ``blocks.{l}.attn.hook_z``, ...) and weights can be
compared and edited in the model's own basis.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from . import store as _store
from .errors import ConfigError, ModelLoadError, ModelNotFoundError, PairMismatchError
from .store import write_json_atomic

log = logging.getLogger(__name__)

ORGANISM_VARIANTS = ("base", "reasoner", "sft", "grpo", "instruct")
DEFAULT_PAIR = ("organism:base", "organism:reasoner")


# --------------------------------------------------------------------------- device
DEVICE_CHOICES = "auto, cpu, cuda, cuda:N or mps"


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def pick_device(preference: str | torch.device | None = "auto") -> torch.device:
    """``auto`` picks cuda > mps > cpu; otherwise one of ``cpu``, ``cuda``, ``cuda:N``,
    ``mps``, which must be present (ConfigError for other names, ModelLoadError when
    the device is missing)."""
    if isinstance(preference, torch.device):
        preference = str(preference)
    pref = (preference or "auto").strip().lower() if isinstance(preference, str) else preference
    if pref in ("", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not isinstance(pref, str) or not re.fullmatch(r"cpu|mps|cuda(:\d+)?", pref):
        raise ConfigError(f"unknown device {preference!r}; use {DEVICE_CHOICES}")
    dev = torch.device(pref)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError("CUDA was requested but no CUDA device is available "
                                 "(use --device auto or cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelLoadError(f"{pref} was requested but this machine has "
                                 f"{torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not _mps_available():
        raise ModelLoadError("MPS (Apple GPU) was requested but is not available here "
                             "(use --device auto or cpu)")
    return dev


def pick_dtype(device: torch.device, preference: str | torch.dtype = "auto") -> torch.dtype:
    """``auto``: bf16 on CUDA, fp32 elsewhere; or ``float32`` / ``bfloat16`` / ``float16``."""
    if isinstance(preference, torch.dtype):
        return preference
    if preference in (None, "", "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        dt = getattr(torch, str(preference).removeprefix("torch."))
    except AttributeError:
        dt = None
    if not isinstance(dt, torch.dtype) or not dt.is_floating_point:
        raise ModelLoadError(f"unknown dtype {preference!r}; use auto, float32, bfloat16 or "
                             "float16")
    return dt


# --------------------------------------------------------------------------- registry
def cache_root() -> Path:
    """The artifact store root, read at call time so tests and the CLI can redirect it."""
    return _store.DEFAULT_ROOT


def organisms_dir() -> Path:
    return cache_root() / "organisms"


def registry_path() -> Path:
    return cache_root() / "models.json"


def read_registry() -> dict[str, dict[str, Any]]:
    p = registry_path()
    if not p.exists():
        return {}
    try:
        return json.loads(p.read_text())
    except ValueError:
        log.warning("ignoring unreadable model registry %s", p)
        return {}


def register_model(name: str, path: str | os.PathLike, **info: Any) -> None:
    """Register a local checkpoint under a short name (shown in the app's model list)."""
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
        raise ModelLoadError(f"invalid model name {name!r}: use letters, digits, . _ -")
    reg = read_registry()
    full = Path(path).resolve()
    try:  # inside the cache: store it relative, so the project folder can move
        stored = str(full.relative_to(cache_root().resolve()))
    except ValueError:
        stored = str(full)
    reg[name] = {"path": stored, **info}
    write_json_atomic(registry_path(), reg)


def available_models() -> list[str]:
    """Specs the app offers: built organisms first, then registered models."""
    out = [f"organism:{v}" for v in ORGANISM_VARIANTS
           if (organisms_dir() / v / "config.json").exists()]
    out += sorted(read_registry())
    return out


@dataclass(frozen=True)
class ResolvedSpec:
    spec: str
    source: str  # organism | registry | local | gguf | hub
    path: Path   # a local checkpoint directory (or the .gguf file for source=gguf)


def resolve(spec: str) -> ResolvedSpec:
    """Map a spec to a local checkpoint; raise ModelNotFoundError with the choices."""
    spec = (spec or "").strip()
    if not spec:
        raise ModelNotFoundError("no model given")
    name = spec.removeprefix("organism:")
    if spec.startswith("organism:") or name in ORGANISM_VARIANTS:
        d = organisms_dir() / name
        if name not in ORGANISM_VARIANTS:
            raise ModelNotFoundError(
                f"unknown organism {name!r}; the organisms are {', '.join(ORGANISM_VARIANTS)}")
        if not (d / "config.json").exists():
            raise ModelNotFoundError(
                f"organism {name!r} is not built; run `python -m interp organisms build`")
        return ResolvedSpec(f"organism:{name}", "organism", d)
    reg = read_registry()
    if spec in reg:
        p = Path(reg[spec]["path"])
        if not p.is_absolute():
            p = cache_root() / p
        if not p.exists():
            raise ModelNotFoundError(f"registered model {spec!r} points to a missing folder")
        return ResolvedSpec(spec, "registry", p)
    p = Path(spec).expanduser()
    if p.suffix.lower() == ".gguf":
        if not p.is_file():
            raise ModelNotFoundError(f"GGUF file not found: {spec}")
        return ResolvedSpec(spec, "gguf", p)
    if p.exists():
        if p.is_dir() and (p / "config.json").exists():
            return ResolvedSpec(spec, "local", p)
        if p.is_dir():
            raise ModelNotFoundError(f"{spec} is a folder without a config.json checkpoint")
        raise ModelNotFoundError(f"{spec} is neither a checkpoint folder nor a .gguf file")
    if re.fullmatch(r"[\w.\-]+/[\w.\-]+", spec) and not spec.startswith((".", "/")):
        return ResolvedSpec(spec, "hub", Path(spec))
    known = ", ".join(available_models()) or "none built yet"
    raise ModelNotFoundError(
        f"unknown model {spec!r}: not an organism, registered name, folder, .gguf file "
        f"or hub name (org/name). Available: {known}")


def spec_identity(spec: str) -> str:
    """One spelling per model, to compare the specs recorded in results with those of
    the pair in use: ``organism:NAME`` for an organism (also given as ``NAME``), the
    absolute path for an existing folder or file (also given relative to the project,
    as committed results record them), otherwise the stripped spec."""
    s = (spec or "").strip()
    name = s.removeprefix("organism:")
    if name in ORGANISM_VARIANTS and (s.startswith("organism:") or s == name):
        return f"organism:{name}"
    if not s or re.fullmatch(r"[\w.\-]+/[\w.\-]+", s) and not Path(s).exists():
        return s   # a hub name (or nothing)
    p = Path(s).expanduser()
    for cand in ((p,) if p.is_absolute() else (p, _store.PROJECT_ROOT / p)):
        if cand.exists():
            return str(cand.resolve())
    return s


def same_model(a: str, b: str) -> bool:
    """Whether two specs name the same model (:func:`spec_identity`)."""
    return spec_identity(a) == spec_identity(b)


def _download_hub(name: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(
            name, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
    except Exception as e:  # network, auth, missing repo: all mean "cannot get it"
        raise ModelNotFoundError(
            f"could not download {name!r} from the hub ({type(e).__name__}: {e}). "
            "Without network, use a local folder or a .gguf file.") from e


def convert_gguf(gguf: str | os.PathLike, out_dir: str | os.PathLike | None = None) -> Path:
    """Dequantise a GGUF file once into a normal safetensors checkpoint; return its folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    out = Path(out_dir) if out_dir else cache_root() / "models" / gguf.stem.lower()
    if (out / "config.json").exists():
        return out
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        hf = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except Exception as e:
        raise ModelLoadError(f"could not read GGUF file {gguf.name}: {e}") from e
    if getattr(hf.config, "quantization_config", None) is not None:
        del hf.config.quantization_config
    hf.hf_quantizer = None
    hf.config.architectures = [type(hf).__name__]
    import shutil

    from .store import storage_error, tmp_sibling

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(out)   # a killed conversion leaves a leftover `store clean` removes
    try:
        hf.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        shutil.rmtree(out, ignore_errors=True)
        os.rename(tmp, out)
    except OSError as e:
        raise storage_error(e, f"writing the converted checkpoint {out}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def local_checkpoint(spec: str) -> tuple[ResolvedSpec, Path]:
    """Resolve a spec and return the local checkpoint folder (downloading/converting)."""
    r = resolve(spec)
    if r.source == "hub":
        return r, _download_hub(r.spec)
    if r.source == "gguf":
        return r, convert_gguf(r.path)
    return r, r.path


# --------------------------------------------------------------------------- loading
GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def load_tokenizer(path: str | os.PathLike):
    """The checkpoint's tokenizer.

    A folder whose ``tokenizer_config.json`` names a generic class (a plain
    ``tokenizer.json``, as the organisms and other custom tokenizers save) is loaded as
    exactly that file: transformers would otherwise pick a tokenizer class from the
    model type (e.g. Qwen2's byte-level BPE), which silently drops words of a custom
    vocabulary such as ``<think>`` or ``wait``.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        cfg_file = Path(path) / "tokenizer_config.json"
        tcls = json.loads(cfg_file.read_text()).get("tokenizer_class") \
            if cfg_file.exists() else None
        if tcls in GENERIC_TOKENIZER_CLASSES and (Path(path) / "tokenizer.json").exists():
            tok = PreTrainedTokenizerFast.from_pretrained(str(path))
        else:
            tok = AutoTokenizer.from_pretrained(str(path))
    except Exception as e:
        raise ModelLoadError(f"could not load the tokenizer in {path}: {e}") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_hf(path: str | os.PathLike, dtype: torch.dtype = torch.float32,
            device: torch.device | str = "cpu"):
    """A transformers causal LM from a local checkpoint folder.

    Refuses (ModelLoadError) a checkpoint whose weight files lack tensors its config
    needs, or hold them in other shapes: transformers would fill those with random
    values and the model would run, silently wrong."""
    from transformers import AutoModelForCausalLM

    try:
        with _quiet_transformers():
            hf, info = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype,
                                                            output_loading_info=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"could not load the model in {path}: {first}") from e
    missing = sorted(info.get("missing_keys") or [])
    mismatched = [str(m[0] if isinstance(m, (tuple, list)) else m)
                  for m in (info.get("mismatched_keys") or [])]
    if missing or mismatched:
        what = (f"lack {len(missing)} weight tensor(s) its config needs (e.g. "
                f"{', '.join(missing[:3])})" if missing else
                f"hold {len(mismatched)} tensor(s) in other shapes than its config says "
                f"(e.g. {', '.join(mismatched[:3])})")
        raise ModelLoadError(
            f"the weight files in {path} {what}: the model would run with random weights "
            "there. The checkpoint is incomplete or its config.json belongs to another "
            "model.")
    return hf.to(device).eval()


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' load report (printed for missing or resized weights) off: the
    caller raises one clear error instead."""
    try:
        from transformers.utils import logging as tlog
    except ImportError:
        yield
        return
    prev = tlog.get_verbosity()
    tlog.set_verbosity_error()
    try:
        yield
    finally:
        tlog.set_verbosity(prev)


def hooked_from_hf(hf, tokenizer, path: str | os.PathLike,
                   device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                   n_ctx: int | None = None):
    """Wrap a transformers model as a HookedTransformer with unprocessed weights."""
    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import (
        get_pretrained_model_config,
        get_pretrained_state_dict,
    )

    from .architectures import MAPPED, check_wrappable, mapped_config

    arch = (getattr(hf.config, "architectures", None) or [type(hf).__name__])[0]
    check_wrappable(arch)
    with _quiet(), _neutral_path(path) as tl_path:
        try:
            if arch in MAPPED:   # families TransformerLens knows only by hub name
                cfg = mapped_config(tl_path, hf.config, device=str(device), dtype=dtype,
                                    n_ctx=n_ctx)
            else:
                cfg = get_pretrained_model_config(
                    tl_path, fold_ln=False, device=str(device), dtype=dtype, n_ctx=n_ctx)
            sd = get_pretrained_state_dict(tl_path, cfg, hf_model=hf, dtype=dtype)
            model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False,
                                      default_padding_side="left")
            model.load_and_process_state_dict(
                sd, fold_ln=False, center_writing_weights=False, center_unembed=False,
                fold_value_biases=False, refactor_factored_attn_matrices=False)
        except Exception as e:
            raise ModelLoadError(
                f"TransformerLens cannot wrap this model ({type(hf).__name__}): {e}") from e
        model.to(device)  # TransformerLens prints "Moving model to device" to stdout
    if tokenizer is not None:
        # TransformerLens re-loads the tokenizer from its name; transformers may then pick
        # a class that drops added words (the organisms' <think>): keep the one we loaded
        model.tokenizer = tokenizer
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# TransformerLens picks some architectures from substrings of the *name* it is given
# (a local folder path counts), skipping the folder's config.json: any path containing
# "llama" or "gemma" then fails (or gets a hard-coded config).
_TL_NAME_TRIGGERS = ("llama", "gemma", "wav2vec2", "santacoder")


@contextlib.contextmanager
def _neutral_path(path: str | os.PathLike):
    """Yield ``path`` (absolute) or, if TransformerLens would sniff its name, a symlink to
    it under a neutral temporary name."""
    import shutil
    import tempfile

    real = str(Path(path).resolve())
    if not any(t in real.lower() for t in _TL_NAME_TRIGGERS):
        yield real
        return
    tmp = tempfile.mkdtemp(prefix="interp-ckpt-")
    try:
        link = os.path.join(tmp, "checkpoint")
        os.symlink(real, link)
        if any(t in link.lower() for t in _TL_NAME_TRIGGERS):
            raise ModelLoadError(
                f"cannot wrap {path}: its path and the temp folder name contain one of "
                f"{_TL_NAME_TRIGGERS}, which TransformerLens mistakes for a model name")
        yield link
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _quiet():
    """Silence TransformerLens' prints and warnings during wrapping."""
    import warnings

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        prev = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)
        try:
            yield
        finally:
            logging.getLogger().setLevel(prev)


def files_hash(path: str | os.PathLike) -> str:
    """SHA-256 over the checkpoint's weight files (names + bytes), in sorted order."""
    h = hashlib.sha256()
    p = Path(path)
    files = sorted(p.glob("*.safetensors")) or sorted(p.glob("*.bin"))
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


_HASHES: dict[tuple[str, str], str] = {}


def _files_stamp(path: Path) -> str:
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    return ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)


def current_weight_hash(spec: str) -> str | None:
    """The weight hash (:func:`files_hash`) of the checkpoint ``spec`` resolves to now,
    or None when it is not on this machine (a hub name not downloaded, a GGUF file not
    converted yet, a missing folder). Cached by the weight files' names, sizes and
    modification times, so a large checkpoint is hashed once per change."""
    from .errors import InterpError

    try:
        r = resolve(spec)
    except InterpError:
        return None
    if r.source == "hub":
        return None
    path = r.path
    if r.source == "gguf":
        path = cache_root() / "models" / r.path.stem.lower()
        if not (path / "config.json").exists():
            return None
    try:
        stamp = _files_stamp(path)
    except OSError:
        return None
    if not stamp:
        return None
    key = (str(path.resolve()), stamp)
    if key not in _HASHES:
        _HASHES[key] = files_hash(path)
    return _HASHES[key]


def stale_models(models: Any) -> list[dict[str, Any]]:
    """The models of a provenance record (``{role: {"id", "weight_hash", ...}}``) whose
    weights are no longer those the result was computed on: ``[{"role", "id", "saved",
    "now"}]``, ``now`` None when the model is not on this machine any more. Entries
    without an id and a weight hash are not models and are skipped."""
    out = []
    for role, d in (models or {}).items():
        if not isinstance(d, dict) or not d.get("id") or not d.get("weight_hash"):
            continue
        now = current_weight_hash(str(d["id"]))
        if now != d["weight_hash"]:
            out.append({"role": role, "id": d["id"], "saved": d["weight_hash"], "now": now})
    return out


def describe_stale(stale: list[dict[str, Any]]) -> str:
    """One line for :func:`stale_models`' result ('' when nothing changed)."""
    parts = []
    for s in stale:
        if s["now"] is None:
            parts.append(f"{s['id']} ({s['role']}) is not on this machine")
        else:
            parts.append(f"{s['id']} ({s['role']}) has other weights now (saved "
                         f"{s['saved'][:10]}, now {s['now'][:10]})")
    return "; ".join(parts)


@dataclass
class LoadedModel:
    """A model ready for interpretability work.

    ``hooked`` is the HookedTransformer (unprocessed weights); ``hf`` the transformers
    model it was built from, kept only when ``keep_hf=True``.
    """

    spec: str
    source: str
    path: Path
    tokenizer: Any
    hooked: Any
    device: torch.device
    dtype: torch.dtype
    hf: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def weight_hash(self) -> str:
        return files_hash(self.path)

    @property
    def cfg(self):
        return self.hooked.cfg

    @property
    def n_layers(self) -> int:
        return self.hooked.cfg.n_layers

    def describe(self) -> dict[str, Any]:
        """Provenance record: id, source, weight hash, architecture, device, dtype."""
        c = self.hooked.cfg
        return {
            "id": self.spec, "source": self.source, "weight_hash": self.weight_hash,
            "architecture": c.original_architecture, "n_layers": c.n_layers,
            "d_model": c.d_model, "n_heads": c.n_heads, "d_mlp": c.d_mlp,
            "d_vocab": c.d_vocab, "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    def n_params(self) -> int:
        return sum(p.numel() for p in self.hooked.parameters())


def load_model(spec: str, device: str | torch.device = "auto",
               dtype: str | torch.dtype = "auto", keep_hf: bool = False,
               n_ctx: int | None = None) -> LoadedModel:
    """Resolve, load and wrap one model. Raises ModelNotFoundError / ModelLoadError."""
    r, path = local_checkpoint(spec)
    dev = pick_device(device) if not isinstance(device, torch.device) else device
    dt = pick_dtype(dev, dtype)
    tok = load_tokenizer(path)
    hf = load_hf(path, dtype=dt, device=dev)
    if n_ctx is None:
        n_ctx = min(int(getattr(hf.config, "max_position_embeddings", 2048) or 2048), 8192)
    hooked = hooked_from_hf(hf, tok, path, device=dev, dtype=dt, n_ctx=n_ctx)
    if not keep_hf:
        hf = None
    return LoadedModel(spec=r.spec, source=r.source, path=Path(path), tokenizer=tok,
                       hooked=hooked, device=dev, dtype=dt, hf=hf)


# --------------------------------------------------------------------------- pairs
def _config_summary(path: Path) -> dict[str, Any]:
    cfg = json.loads((path / "config.json").read_text())
    if "text_config" in cfg and isinstance(cfg["text_config"], dict):
        cfg = {**cfg, **cfg["text_config"]}
    keys = ("architectures", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "intermediate_size", "vocab_size", "hidden_act",
            "tie_word_embeddings", "head_dim")
    return {k: cfg.get(k) for k in keys}


def pair_differences(path_a: Path, path_b: Path, tok_a=None, tok_b=None) -> list[str]:
    """Everything that makes two checkpoints incomparable (empty list: comparable)."""
    diffs: list[str] = []
    ca, cb = _config_summary(path_a), _config_summary(path_b)
    for k in ca:
        if ca[k] != cb[k]:
            diffs.append(f"config {k}: {ca[k]!r} vs {cb[k]!r}")
    tok_a = tok_a or load_tokenizer(path_a)
    tok_b = tok_b or load_tokenizer(path_b)
    va, vb = tok_a.get_vocab(), tok_b.get_vocab()
    if va != vb:
        only_a = sorted(set(va) - set(vb))[:5]
        only_b = sorted(set(vb) - set(va))[:5]
        moved = sum(1 for t in set(va) & set(vb) if va[t] != vb[t])
        diffs.append(
            f"tokenizer vocabularies differ: {len(va)} vs {len(vb)} tokens; only in first: "
            f"{only_a}; only in second: {only_b}; {moved} shared tokens with other ids")
    for attr in ("bos_token", "eos_token"):
        if getattr(tok_a, attr, None) != getattr(tok_b, attr, None):
            diffs.append(f"tokenizer {attr}: {getattr(tok_a, attr, None)!r} vs "
                         f"{getattr(tok_b, attr, None)!r}")
    return diffs


def validate_pair(spec_a: str, spec_b: str) -> tuple[Path, Path]:
    """Resolve two specs and raise PairMismatchError listing what differs, if anything."""
    _, pa = local_checkpoint(spec_a)
    _, pb = local_checkpoint(spec_b)
    diffs = pair_differences(pa, pb)
    if diffs:
        raise PairMismatchError(f"{spec_a} and {spec_b} are not a comparable pair:", diffs)
    return pa, pb


@dataclass
class ModelPair:
    base: LoadedModel
    fine: LoadedModel

    def describe(self) -> dict[str, Any]:
        return {"base": self.base.describe(), "fine": self.fine.describe()}


def load_pair(base: str = DEFAULT_PAIR[0], fine: str = DEFAULT_PAIR[1],
              device: str | torch.device = "auto", dtype: str | torch.dtype = "auto",
              keep_hf: bool = False) -> ModelPair:
    """Load a base model and its fine-tune after checking that they are comparable."""
    validate_pair(base, fine)
    return ModelPair(load_model(base, device, dtype, keep_hf),
                     load_model(fine, device, dtype, keep_hf))
