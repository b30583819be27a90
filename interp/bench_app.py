"""``python -m interp bench app-latency``: how fast the app starts and answers.

* ``cold_start_seconds``: from launching ``streamlit run app.py`` (headless, a free
  127.0.0.1 port) until the Models page has rendered in headless Chromium (Playwright;
  the weight-difference chart visible and no skeleton / running indicator left).
  This includes the Python imports, loading the pair and the first render.
  ``server_ready_seconds`` is the part until the server answers its health check.
* ``max_cached_interaction_seconds``: with the models already cached
  (``st.cache_resource``), the slowest of a few repeated interactions in the same
  browser page (clicking the other weight-difference measure), each timed until the
  rerun has rendered. No streamlit import happens in this process.

The pair is the default organism pair when it is built; otherwise a tiny random
Qwen2 pair made in a temporary folder (``"pair": "tiny-random"`` in the output), with
``INTERP_CACHE`` pointed at a temporary folder so the real cache is untouched.
:func:`make_tiny_pair` is also what the app tests use.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

from .store import PROJECT_ROOT

TINY_WORDS = (["<unk>", "<pad>", "<bos>", "<eos>", "<user>", "<assistant>", "<think>",
               "</think>", "wait", "answer", "+", "-", "=", "the", "sum", "is", "what",
               "hello", "world", "check", "carry"]
              + [str(i) for i in range(10)])
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}")


def make_tiny_tokenizer(chat_template: bool = True):
    """A word-level PreTrainedTokenizerFast over :data:`TINY_WORDS` (whitespace split)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(TINY_WORDS)}
    tk = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>",
                                  bos_token="<bos>", eos_token="<eos>")
    if chat_template:
        tok.chat_template = TINY_CHAT_TEMPLATE
    return tok


def make_tiny_checkpoint(path: str | os.PathLike, seed: int = 0, *, hidden_size: int = 32,
                         num_layers: int = 2, arch: str = "qwen2",
                         base: str | os.PathLike | None = None,
                         noise: float = 0.0) -> Path:
    """Save a random tiny Qwen2 (or Llama) checkpoint + tokenizer into ``path``.

    With ``base`` given, start from that checkpoint's weights and add Gaussian noise
    of scale ``noise`` times each tensor's std (a stand-in fine-tune).
    """
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    torch.manual_seed(seed)
    tok = make_tiny_tokenizer()
    common = dict(vocab_size=len(TINY_WORDS), hidden_size=hidden_size,
                  intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  bos_token_id=2, eos_token_id=3, pad_token_id=1, tie_word_embeddings=True)
    cfg = Qwen2Config(**common) if arch == "qwen2" else LlamaConfig(**common)
    if base is not None:
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * noise * (p.std() if p.numel() > 1 else 1.0))
    else:
        model = AutoModelForCausalLM.from_config(cfg)
        with torch.no_grad():  # no all-zero or all-one tensors: every tensor has a norm
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.add_(0.1 * torch.randn_like(p))
                elif name.endswith("bias"):
                    p.normal_(0.0, 0.02)
    path = Path(path)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_tiny_pair(root: str | os.PathLike, seed: int = 0) -> tuple[Path, Path]:
    """A comparable tiny pair under ``root``: ``base`` and ``fine`` (= base + noise)."""
    root = Path(root)
    base = make_tiny_checkpoint(root / "base", seed=seed)
    fine = make_tiny_checkpoint(root / "fine", seed=seed + 1, base=base, noise=0.05)
    return base, fine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(port: int, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``streamlit run app.py`` headless on 127.0.0.1:port (stop it with :func:`stop_app`)."""
    cmd = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
           "--server.port", str(port), "--server.address", "127.0.0.1",
           "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    log = tempfile.TemporaryFile()  # not a pipe: a full pipe would block the server
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env={**os.environ, **(env or {})},
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def app_log(proc: subprocess.Popen, tail: int = 4000) -> str:
    """The last ``tail`` characters the server printed."""
    log = getattr(proc, "log", None)
    if log is None:
        return ""
    log.seek(0)
    return log.read().decode(errors="replace")[-tail:]


def stop_app(proc: subprocess.Popen) -> None:
    """Stop the server started by :func:`start_app` (SIGTERM, then SIGKILL)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    log = getattr(proc, "log", None)
    if log is not None:
        log.close()


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-dev-shm-usage"]


def wait_rendered(page, selector: str, timeout_s: float = 120.0) -> None:
    """Wait until ``selector`` is visible and no skeleton / running indicator is left."""
    page.wait_for_selector(selector, timeout=timeout_s * 1000, state="visible")
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stSkeleton\"]') && "
        "!document.querySelector('[data-testid=\"stStatusWidget\"]')",
        timeout=timeout_s * 1000)


def models_url(port: int, base: str, fine: str) -> str:
    q = urllib.parse.urlencode({"base": base, "fine": fine, "device": "cpu"})
    return f"http://127.0.0.1:{port}/models?{q}"


def _pair(tmp: Path) -> tuple[str, str, str, dict[str, str]]:
    from .models import DEFAULT_PAIR, available_models

    if all(s in available_models() for s in DEFAULT_PAIR):
        return DEFAULT_PAIR[0], DEFAULT_PAIR[1], "organisms", {}
    base, fine = make_tiny_pair(tmp / "pair")
    return str(base), str(fine), "tiny-random", {"INTERP_CACHE": str(tmp / "cache")}


def wait_healthy(port: int, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    """Poll Streamlit's health endpoint until the server answers."""
    import urllib.request

    deadline = time.perf_counter() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health",
                                        timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {proc.returncode}: "
                               f"{app_log(proc, 2000)}")
        if time.perf_counter() > deadline:
            raise TimeoutError(f"streamlit did not answer within {timeout_s:.0f} s")
        time.sleep(0.1)


def measure_browser(base: str, fine: str, env: dict[str, str], repeats: int = 3,
                    chromium: str = "/usr/bin/chromium") -> tuple[float, float, list[float]]:
    """Launch the server, open the Models page in headless Chromium and time:
    (seconds until the server answers, seconds until the Models page has rendered,
    both from launch; then the seconds of each cached interaction: switching the
    weight-difference measure, until the page has finished rerunning)."""
    from playwright.sync_api import sync_playwright

    port = free_port()
    t0 = time.perf_counter()
    proc = start_app(port, env)
    try:
        wait_healthy(port, proc)
        ready = time.perf_counter() - t0
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(models_url(port, base, fine), timeout=60_000)
                wait_rendered(page, "[data-testid='stPlotlyChart']")
                cold = time.perf_counter() - t0
                times = []
                radio = page.locator("[data-testid='stMain'] [data-testid='stRadio']").first
                options = radio.locator("label")
                for i in range(repeats * 2):
                    t = time.perf_counter()
                    options.nth((i + 1) % 2).click()
                    page.wait_for_timeout(50)  # let the rerun start
                    wait_rendered(page, "[data-testid='stPlotlyChart']")
                    times.append(time.perf_counter() - t)
                return ready, cold, times
            finally:
                browser.close()
    finally:
        stop_app(proc)


def bench_app_latency(args: Any) -> dict[str, Any]:
    """Cold start of the real server + slowest cached interaction (see module doc)."""
    quick = bool(getattr(args, "quick", False))
    with tempfile.TemporaryDirectory(prefix="interp-bench-app-") as tmp:
        base, fine, kind, env = _pair(Path(tmp))
        print(f"pair: {kind}; starting the app…", file=sys.stderr)
        ready, cold, times = measure_browser(base, fine, env, repeats=2 if quick else 3)
        print(f"cold start {cold:.2f} s; interactions {times}", file=sys.stderr)
    return {"cold_start_seconds": cold, "server_ready_seconds": ready,
            "max_cached_interaction_seconds": max(times),
            "cached_interaction_seconds": times, "pair": kind,
            "baseline": "cold start includes imports and loading the pair; interactions "
                        "are browser clicks on the Models page's measure radio with the "
                        "pair cached, timed until the rerun has rendered"}


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(bench_app_latency(None)))
