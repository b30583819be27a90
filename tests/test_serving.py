"""Serving: demo settings, work limits, and models shared safely between threads."""

from __future__ import annotations

import copy
import re
import threading
import time
from pathlib import Path

import pytest
import torch

from interp import serving
from interp.errors import BusyError, ConfigError, DemoRestrictedError
from interp.generation import generate
from interp.models import load_model
from interp.steering import add_vector, n_active_hooks, steered
from interp.store import PROJECT_ROOT

from ._tiny import save_tiny_qwen

PROMPT = "<bos> 4 5 6 7 8 + 9 9 ="
HOOK = "blocks.0.hook_resid_post"


def same_logits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float reordering: the same forward pass run in another thread may
    split its sums differently (torch's thread count is set per thread, and other tests
    change it). A leaked steering hook changes logits by orders of magnitude more."""
    return torch.allclose(a, b, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ settings
def test_settings_from_file_and_env(tmp_path, monkeypatch):
    cfg = tmp_path / "interp.toml"
    cfg.write_text("[demo]\nenabled = true\nmax_new_tokens = 16\nqueue_seconds = 2.5\n")
    monkeypatch.setenv("INTERP_CONFIG", str(cfg))
    monkeypatch.delenv("INTERP_DEMO", raising=False)
    s = serving.settings()
    assert s.enabled and s.max_new_tokens == 16 and s.queue_seconds == 2.5
    assert s.max_prompt_chars == serving.DemoSettings().max_prompt_chars  # default kept
    monkeypatch.setenv("INTERP_DEMO", "0")  # the environment overrides the file
    assert not serving.settings().enabled
    monkeypatch.setenv("INTERP_DEMO", "yes")
    cfg.write_text("[demo]\nenabled = false\n")  # a changed file is read again
    s = serving.settings()
    assert s.enabled and s.max_new_tokens == serving.DemoSettings().max_new_tokens


@pytest.mark.parametrize("text, match", [
    ("[demo]\nmax_new_token = 4\n", "unknown"),
    ("[demo]\nmax_new_tokens = 0\n", "positive"),
    ("[demo]\nmax_new_tokens = 'many'\n", "positive"),
    ("[demo\n", "cannot read"),
])
def test_bad_settings_raise(tmp_path, monkeypatch, text, match):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    monkeypatch.setenv("INTERP_CONFIG", str(cfg))
    with pytest.raises(ConfigError, match=match):
        serving.settings()


def test_bad_env_and_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv("INTERP_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="does not exist"):
        serving.settings()
    monkeypatch.delenv("INTERP_CONFIG")
    monkeypatch.setenv("INTERP_DEMO", "maybe")
    with pytest.raises(ConfigError, match="INTERP_DEMO"):
        serving.settings()


def test_committed_demo_config_is_valid(monkeypatch):
    monkeypatch.setenv("INTERP_CONFIG", "deploy/demo.toml")
    monkeypatch.delenv("INTERP_DEMO", raising=False)
    assert serving.settings().enabled


def test_demo_loads_only_organisms():
    demo = serving.DemoSettings(enabled=True)
    for ok in ("organism:base", "organism:reasoner", "grpo", " organism:instruct "):
        serving.check_model_allowed(ok, demo)
    for bad in ("Qwen/Qwen2.5-0.5B", "/etc", "./cache/organisms/base", "organism:../base",
                "model.gguf", "organism:", ""):
        with pytest.raises(DemoRestrictedError, match="only the model organisms"):
            serving.check_model_allowed(bad, demo)
    serving.check_model_allowed("Qwen/Qwen2.5-0.5B", serving.DemoSettings(enabled=False))


def test_no_remote_code_anywhere():
    """No code path of the project asks transformers to run a checkpoint's own code."""
    hits = [f"{p.relative_to(PROJECT_ROOT)}:{i}"
            for folder in ("interp", "pages") for p in (PROJECT_ROOT / folder).rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1)
            if re.search(r"trust_remote_code\s*=\s*(True|1)", line)]
    assert hits == []


# ------------------------------------------------------------------ work limits
def test_token_bucket_refills_at_its_rate():
    now = [0.0]
    b = serving.TokenBucket(burst=2, per_minute=30, clock=lambda: now[0])  # one per 2 s
    b.take()
    b.take()
    with pytest.raises(BusyError, match=r"try again in 2 s"):
        b.take()
    now[0] = 1.0
    with pytest.raises(BusyError, match=r"try again in 1 s"):
        b.take()
    now[0] = 2.0
    b.take()
    now[0] = 100.0  # refills up to the burst, not beyond
    b.take()
    b.take()
    with pytest.raises(BusyError):
        b.take()


def test_work_limiter_bounds_concurrency_and_times_out():
    lim = serving.WorkLimiter(slots=2, wait_s=5.0)
    inside, release = threading.Barrier(3), threading.Event()
    errors = []

    def hold():
        try:
            with lim.slot():
                inside.wait(timeout=5)
                release.wait(timeout=5)
        except Exception as e:  # noqa: BLE001 - collected, asserted below
            errors.append(e)

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for t in threads:
        t.start()
    inside.wait(timeout=5)  # both hold a slot now
    assert lim.active == 2
    lim.wait_s = 0.05
    with pytest.raises(BusyError, match="busy"):
        with lim.slot("the generation"):
            pass
    release.set()
    for t in threads:
        t.join()
    assert errors == [] and lim.active == 0 and lim.peak == 2
    with lim.slot():  # free again
        assert lim.active == 1


# ------------------------------------------------------------------ shared models
@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    d = save_tiny_qwen(tmp_path_factory.mktemp("serving") / "m", seed=3)
    lm = serving.guard(load_model(str(d), device="cpu"))
    toks = lm.tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    return lm, toks


def _slow_vector_hook(vector, delay=0.002):
    """A steering hook that also sleeps, so another thread's forward pass would run
    while it is attached if nothing kept them apart."""
    name, fn = add_vector(HOOK, vector, 4.0)

    def slow(act, hook=None):
        time.sleep(delay)
        return fn(act, hook)

    return name, slow


def test_guard_is_idempotent_and_keeps_results(shared):
    lm, toks = shared
    assert serving.is_guarded(lm)
    cls = type(lm.hooked)
    serving.guard(lm)
    assert type(lm.hooked) is cls
    plain = load_model(str(lm.path), device="cpu")
    assert not serving.is_guarded(plain)
    assert torch.equal(lm.hooked(toks), plain.hooked(toks))


def test_steered_generation_leaves_the_shared_model_clean(shared):
    lm, toks = shared
    with torch.no_grad():
        ref = lm.hooked(toks)
    v = torch.randn(lm.cfg.d_model)
    plain = generate(lm, [PROMPT], max_new_tokens=6, stop_at_eos=False)[0]
    steer = generate(lm, [PROMPT], max_new_tokens=6, stop_at_eos=False,
                     fwd_hooks=[add_vector(HOOK, v, 8.0)])[0]
    assert steer.output_ids != plain.output_ids  # the hook acted
    assert n_active_hooks(lm) == 0
    with torch.no_grad():
        assert torch.equal(lm.hooked(toks), ref)
    with pytest.raises(RuntimeError, match="boom"):
        with steered(lm, [add_vector(HOOK, v, 8.0)]):
            raise RuntimeError("boom")
    assert n_active_hooks(lm) == 0 and lm.hooked.context_level == 0
    with torch.no_grad():
        assert torch.equal(lm.hooked(toks), ref)


def test_concurrent_steered_and_plain_sessions_do_not_mix(shared):
    """Two sessions on one shared model: one generates with a steering hook, the other
    runs plain forward passes and plain generations at the same time. Each must get
    exactly what it gets alone."""
    lm, toks = shared
    v = torch.randn(lm.cfg.d_model)
    with torch.no_grad():
        ref_logits = lm.hooked(toks)
    ref_plain = generate(lm, [PROMPT], max_new_tokens=5, stop_at_eos=False)[0].output_ids
    ref_steer = generate(lm, [PROMPT], max_new_tokens=5, stop_at_eos=False,
                         fwd_hooks=[add_vector(HOOK, v, 4.0)])[0].output_ids
    assert ref_plain != ref_steer
    bad: list[str] = []
    stop = threading.Event()

    def steering_session():
        for _ in range(4):
            out = generate(lm, [PROMPT], max_new_tokens=5, stop_at_eos=False,
                           fwd_hooks=[_slow_vector_hook(v)])[0].output_ids
            if out != ref_steer:
                bad.append("steered generation changed")
        stop.set()

    def plain_session():
        n = 0
        while not stop.is_set() or n < 3:
            with torch.no_grad():
                got = lm.hooked(toks)
                if not same_logits(got, ref_logits):
                    bad.append("plain forward saw another session's hook: max |Δlogit| "
                               f"{float((got - ref_logits).abs().max()):.3g}")
            if generate(lm, [PROMPT], max_new_tokens=5,
                        stop_at_eos=False)[0].output_ids != ref_plain:
                bad.append("plain generation saw another session's hook")
            n += 1

    threads = [threading.Thread(target=steering_session), threading.Thread(target=plain_session)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert bad == []
    assert n_active_hooks(lm) == 0 and lm.hooked.context_level == 0


def test_in_place_edit_under_the_lock_is_not_seen(shared):
    """An edit-run-restore under model_lock (as the task-vector lenses do) is invisible
    to a forward pass another thread starts meanwhile."""
    lm, toks = shared
    with torch.no_grad():
        ref = lm.hooked(toks)
    w = lm.hooked.W_U
    started, seen = threading.Event(), []

    def other():
        started.wait(timeout=5)
        with torch.no_grad():
            seen.append(lm.hooked(toks))

    t = threading.Thread(target=other)
    t.start()
    with serving.model_lock(lm), torch.no_grad():
        saved = w.clone()
        w.add_(1.0)
        started.set()
        time.sleep(0.2)  # the other thread is blocked in forward meanwhile
        assert not same_logits(lm.hooked(toks), ref)  # re-entrant for this thread
        w.copy_(saved)
    t.join(timeout=30)
    assert same_logits(seen[0], ref)


def test_a_copy_of_a_guarded_model_is_its_own(shared):
    lm, toks = shared
    twin = copy.deepcopy(lm.hooked)
    assert serving.is_guarded(twin)
    assert serving.model_lock(twin) is not serving.model_lock(lm)
    with torch.no_grad():
        twin.W_U.mul_(-1.0)
        assert torch.equal(twin(toks), -lm.hooked(toks))


def test_docker_and_scripts_never_enable_remote_code():
    for p in [PROJECT_ROOT / "Dockerfile",
              *sorted(f for f in (PROJECT_ROOT / "deploy").glob("*") if f.is_file())]:
        assert "trust_remote_code" not in Path(p).read_text().lower(), p
