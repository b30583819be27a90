"""``python -m interp bench app-latency``: how fast the app starts and answers, alone
and under many simultaneous sessions. The app is served as deployed (``deploy/start.sh``
with the hosted demo's settings, ``INTERP_CONFIG=deploy/demo.toml``) on 127.0.0.1.

* ``cold_start_seconds``: from launching the server until the Models page has rendered
  in headless Chromium (Playwright; the weight-difference chart visible, the script
  finished, no skeleton left). This includes the imports (done before the server
  answers, ``server_ready_seconds``), loading the pair and the first render.
* ``max_cached_interaction_seconds``: in one browser page, with the models cached
  (``st.cache_resource``), the slowest of several interactions that need no new model
  computation: switching the Models page's weight-difference measure, the Reasoning
  length view and the Adapters loss term; each timed from the click until the URL holds
  the new state and the rerun has finished.
* ``concurrent_sessions``, ``concurrent_errors``, ``p95_interaction_seconds``: the load
  test of :mod:`interp.app_load` (8, then 32 browser sessions at once, each the key
  interaction of a page: a generation, an α step of the vectors trace, a view or term
  switch), its errors (exception boxes, error messages, timeouts) and cross-talk
  (results that differ from the same computation done apart from the app), and the
  95th percentile of its interaction latencies, at the largest session count.

The pair is the default organism pair when it is built; otherwise (cold start and
cached interactions only) a tiny random Qwen2 pair made in a temporary folder
(``"pair": "tiny-random"``), with ``INTERP_CACHE`` pointed at a temporary folder.
:func:`make_tiny_pair` is also what the app tests use. ``--quick`` runs 4 and 8
sessions.
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
    """Serve the app as deployed: ``deploy/start.sh`` (the Docker image's command) with
    this interpreter, on 127.0.0.1:port. Stop it with :func:`stop_app`."""
    cmd = ["bash", str(PROJECT_ROOT / "deploy" / "start.sh")]
    env = {**os.environ, "PYTHON": sys.executable, "PORT": str(port), "ADDRESS": "127.0.0.1",
           **(env or {})}
    log = tempfile.TemporaryFile()  # not a pipe: a full pipe would block the server
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
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
    """Stop the server started by :func:`start_app` and anything it started (its own
    process group): SIGTERM, then SIGKILL after 10 s."""
    import signal

    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)  # start_new_session: the group id is the pid
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    log = getattr(proc, "log", None)
    if log is not None:
        log.close()


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-dev-shm-usage"]


def wait_rendered(page, selector: str, timeout_s: float = 120.0) -> None:
    """Wait until ``selector`` is visible and the page has settled: the script finished
    (``data-test-script-state`` notRunning), connected, no skeleton or running
    indicator left."""
    from .app_load import SETTLED_JS

    page.wait_for_selector(selector, timeout=timeout_s * 1000, state="visible")
    page.wait_for_function(SETTLED_JS, timeout=timeout_s * 1000)


def wait_query(page, key: str, value: str | None, timeout_s: float = 120.0) -> None:
    """Wait until the page's URL has ``key=value`` (``None``: no ``key``), then until the
    page has settled. Widgets write their state to the URL during the rerun they cause,
    so this waits for that rerun and not for an earlier, finished one."""
    from .app_load import SETTLED_JS

    deadline = time.perf_counter() + timeout_s
    while urllib.parse.parse_qs(urllib.parse.urlparse(page.url).query).get(key) != (
            None if value is None else [value]):
        if time.perf_counter() > deadline:
            raise TimeoutError(f"the URL never had {key}={value}: {page.url}")
        page.wait_for_timeout(20)
    page.wait_for_function(SETTLED_JS, timeout=timeout_s * 1000)


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


DEMO_ENV = {"INTERP_CONFIG": "deploy/demo.toml"}
CACHED_STEPS = (  # (page path, URL key, [(option label, URL value or None)])
    ("models", "metric", [("absolute change ‖Δθ‖", "delta_norm"),
                          ("relative change ‖Δθ‖ / ‖θ_base‖", None)]),
    ("length", "ltab", [("Heads", "Heads"), ("Lengths", None)]),
    ("adapters", "term", [("l0", "l0"), ("kl", None)]),
)


def measure_browser(base: str, fine: str, env: dict[str, str], repeats: int = 3,
                    chromium: str = "/usr/bin/chromium", port: int | None = None,
                    keep: bool = False) -> dict[str, Any]:
    """Launch the server, open the Models page in headless Chromium and time: the
    server's readiness and the first render (both from launch), then the cached
    interactions of :data:`CACHED_STEPS` (``repeats`` rounds; pages that show nothing
    without the organisms are skipped for a tiny pair). With ``keep`` the server is
    left running and returned as ``"proc"`` (stop it with :func:`stop_app`)."""
    from playwright.sync_api import sync_playwright

    from . import app_load

    port = port or free_port()
    t0 = time.perf_counter()
    proc = start_app(port, env)
    try:
        wait_healthy(port, proc, timeout_s=180)
        ready = time.perf_counter() - t0
        times: dict[str, list[float]] = {}
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(models_url(port, base, fine), timeout=180_000)
                wait_rendered(page, "[data-testid='stPlotlyChart']", 180)
                cold = time.perf_counter() - t0
                for path, key, steps in CACHED_STEPS:
                    if path != "models":
                        if not base.startswith("organism:"):
                            continue
                        page.goto(f"http://127.0.0.1:{port}/{path}", timeout=180_000)
                        wait_rendered(page, "[data-testid='stPlotlyChart']", 180)
                    for _ in range(repeats):
                        for label, value in steps:
                            t = time.perf_counter()
                            app_load.option(page, label).click()
                            wait_query(page, key, value)
                            times.setdefault(path, []).append(time.perf_counter() - t)
            finally:
                browser.close()
        out = {"server_ready_seconds": ready, "cold_start_seconds": cold,
               "cached_interaction_seconds": times, "port": port}
    except BaseException:
        stop_app(proc)
        raise
    if keep:
        out["proc"] = proc
    else:
        stop_app(proc)
    return out


def bench_app_latency(args: Any) -> dict[str, Any]:
    """Cold start, cached interactions and the load test (see the module doc)."""
    from . import app_load

    quick = bool(getattr(args, "quick", False))
    counts = (4, 8) if quick else (8, 32)
    with tempfile.TemporaryDirectory(prefix="interp-bench-app-") as tmp:
        base, fine, kind, env = _pair(Path(tmp))
        print(f"pair: {kind}; starting the app…", file=sys.stderr)
        m = measure_browser(base, fine, {**DEMO_ENV, **env}, repeats=2 if quick else 3,
                            keep=kind == "organisms")
        cached = [t for ts in m["cached_interaction_seconds"].values() for t in ts]
        print(f"cold start {m['cold_start_seconds']:.2f} s; cached interactions up to "
              f"{max(cached):.2f} s", file=sys.stderr)
        out: dict[str, Any] = {
            "cold_start_seconds": m["cold_start_seconds"],
            "server_ready_seconds": m["server_ready_seconds"],
            "max_cached_interaction_seconds": max(cached),
            "cached_interaction_seconds": m["cached_interaction_seconds"], "pair": kind,
            "baseline": "targets: cold start <= 10 s, cached interactions <= 1 s, 32 "
                        "concurrent sessions with 0 errors and 0 cross-talk"}
        if kind != "organisms":
            out.update(concurrent_sessions=0, concurrent_errors=None,
                       p95_interaction_seconds=None,
                       load_test="skipped: the scenarios need the organisms")
            return out
        proc = m["proc"]
        try:
            url = f"http://127.0.0.1:{m['port']}"
            runs = {}
            offset = 0
            for n in counts:
                print(f"load test: {n} sessions…", file=sys.stderr)
                r = app_load.load_test(url, n, "/usr/bin/chromium", CHROMIUM_ARGS,
                                       offset=offset)
                offset += n  # new states: nothing the earlier run cached
                print(f"  {n} sessions: errors {r['errors']}, cross-talk "
                      f"{r['cross_talk']}, p95 {r['p95_interaction_seconds']:.2f} s",
                      file=sys.stderr)
                runs[str(n)] = r
        finally:
            stop_app(proc)
    last = runs[str(counts[-1])]
    out.update(concurrent_sessions=counts[-1],
               concurrent_errors=sum(r["errors"] for r in runs.values()),
               concurrent_cross_talk=sum(r["cross_talk"] for r in runs.values()),
               p95_interaction_seconds=last["p95_interaction_seconds"], load_tests=runs)
    return out


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(bench_app_latency(None)))
