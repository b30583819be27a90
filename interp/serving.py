"""Serving the app to many people at once: demo settings, work limits, shared models.

No streamlit here; the app (``pages/common.py``) wires these into the pages.

Demo settings
    :func:`settings` reads the ``[demo]`` table of a TOML file (``INTERP_CONFIG``, else
    ``interp.toml`` in the project root when it exists; ``deploy/demo.toml`` is the
    hosted demo's) and the ``INTERP_DEMO`` environment variable, which overrides the
    file's ``enabled`` (``1/true/yes`` or ``0/false/no``). Unknown keys and values out
    of range raise :class:`~interp.errors.ConfigError`.

Work limits (hosted demo)
    :class:`WorkLimiter` bounds the heavy computations (a generation, a lens trace) that
    run at once in the process; a request waits up to ``queue_seconds`` for a slot, then
    gets :class:`~interp.errors.BusyError`. :class:`TokenBucket` limits one session's
    heavy computations: ``session_burst`` at once, refilled at ``session_per_minute``.

Start-up
    A launcher (deploy/serve.py) imports the app's modules in a background thread while
    the server already answers (:func:`warm_up_in_background`); app.py calls
    :func:`wait_until_warm` before its own imports, so a first visitor's page load
    overlaps those imports and no two threads ever import the same module at once. This
    module imports nothing heavy at load time for that reason.

Shared models
    One loaded model serves every session of the process, and interventions act on the
    shared object: TransformerLens hooks are attached to its modules (and its
    ``hooks()`` context counts nesting levels on the model), and task vectors edit its
    weights in place. :func:`guard` makes every forward pass and every ``hooks()``
    context (``run_with_hooks``, ``run_with_cache`` and :func:`interp.generation.generate`
    use it) hold the model's re-entrant lock (:func:`model_lock`), so a session's hooks
    or edits are never seen by another session's forward pass. Code that changes the
    model across several calls (edit, run, restore) holds :func:`model_lock` around all
    of them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
import tomllib
import weakref
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import BusyError, ConfigError, DemoRestrictedError

TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class DemoSettings:
    """What a hosted demo allows (the ``[demo]`` table of the config file)."""

    enabled: bool = False
    max_prompt_chars: int = 600     # characters of a typed prompt or text
    max_new_tokens: int = 64        # tokens one generation may add
    max_control_prompts: int = 256  # paired prompts behind a control vector
    max_concurrent: int = 2         # heavy computations at once in the process
    queue_seconds: float = 30.0     # wait for a free slot, then "busy"
    session_burst: int = 20         # heavy computations a session may make in a row
    session_per_minute: float = 30.0  # then this many per minute
    max_grid_forwards: int = 2000   # forward passes one grid of values may ask for
    models: tuple[str, ...] = ()    # models loaded besides the organisms (registered
    #                                 names or folders in the image; never typed by visitors)

    def __post_init__(self) -> None:
        if not (isinstance(self.models, (list, tuple))
                and all(isinstance(m, str) and m.strip() for m in self.models)):
            raise ConfigError(f"demo setting models must be a list of model specs, not "
                              f"{self.models!r}")
        object.__setattr__(self, "models", tuple(m.strip() for m in self.models))
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name not in ("enabled", "models") and not (isinstance(v, (int, float))
                                            and not isinstance(v, bool) and v > 0):
                raise ConfigError(f"demo setting {f.name} must be a positive number, "
                                  f"not {v!r}")

    def describe(self) -> str:
        return (f"prompts up to {self.max_prompt_chars} characters, up to "
                f"{self.max_new_tokens} new tokens per generation")


def config_path() -> Path | None:
    """The TOML config in use: ``INTERP_CONFIG``, else ``interp.toml`` in the project."""
    from .store import PROJECT_ROOT

    env = os.environ.get("INTERP_CONFIG", "").strip()
    if env:
        p = Path(env).expanduser()
        return p if p.is_absolute() else PROJECT_ROOT / p
    p = PROJECT_ROOT / "interp.toml"
    return p if p.exists() else None


def settings() -> DemoSettings:
    """The demo settings now (cheap: the file is re-read only when it changes)."""
    path = config_path()
    stamp = None
    if path is not None:
        try:
            st = path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except OSError:
            raise ConfigError(f"config file {path} (INTERP_CONFIG) does not exist") from None
    return _settings(str(path) if path else None, stamp, os.environ.get("INTERP_DEMO"))


@functools.lru_cache(maxsize=8)
def _settings(path: str | None, stamp: Any, env_demo: str | None) -> DemoSettings:
    table: dict[str, Any] = {}
    if path is not None:
        try:
            doc = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"cannot read config file {path}: {e}") from e
        table = doc.get("demo", {})
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [demo] must be a table")
        known = {f.name for f in fields(DemoSettings)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown [demo] keys {unknown}; known: {sorted(known)}")
    s = DemoSettings(**table)
    if env_demo is not None:
        v = env_demo.strip().lower()
        if v not in TRUE + FALSE:
            raise ConfigError(f"INTERP_DEMO must be 1 or 0, not {env_demo!r}")
        s = replace(s, enabled=v in TRUE)
    return s


def demo_models(demo: DemoSettings | None = None) -> list[str]:
    """The specs the hosted demo loads: the organisms, then the config's ``models``."""
    from .models import ORGANISM_VARIANTS

    demo = demo or settings()
    return [f"organism:{v}" for v in ORGANISM_VARIANTS] + list(demo.models)


def demo_allows_model(spec: str, demo: DemoSettings | None = None) -> bool:
    """Only the committed model organisms (and the models the demo config lists) can be
    loaded in the hosted demo: never a hub name, folder or file a visitor types."""
    from .models import ORGANISM_VARIANTS

    s = (spec or "").strip()
    if s and demo is not None and s in demo.models:
        return True
    return s.removeprefix("organism:") in ORGANISM_VARIANTS and (
        s.startswith("organism:") or s in ORGANISM_VARIANTS)


def check_model_allowed(spec: str, demo: DemoSettings | None = None) -> None:
    """Raise :class:`DemoRestrictedError` for a spec the demo does not load."""
    demo = demo or settings()
    if demo.enabled and not demo_allows_model(spec, demo):
        raise DemoRestrictedError(refusal(spec, demo))


def refusal(spec: str, demo: DemoSettings | None = None) -> str:
    """The one line that refuses ``spec`` in the hosted demo."""
    demo = demo or settings()
    extra = f" and the models its config lists ({', '.join(demo.models)})" \
        if demo.models else ""
    return (f"the hosted demo loads only the model organisms{extra}, not {spec.strip()!r}: "
            f"{', '.join(demo_models(demo))}; other models (hub names, folders, .gguf "
            "files) load when you run the workbench yourself")


# ------------------------------------------------------------------ work limits
class WorkLimiter:
    """At most ``slots`` heavy computations at once; others wait up to ``wait_s``."""

    def __init__(self, slots: int, wait_s: float):
        self.slots, self.wait_s = int(slots), float(wait_s)
        self._sem = threading.BoundedSemaphore(self.slots)
        self._lock = threading.Lock()
        self.active = 0
        self.peak = 0

    @contextlib.contextmanager
    def slot(self, what: str = "this computation") -> Iterator[None]:
        if not self._sem.acquire(timeout=self.wait_s):
            raise BusyError(f"the server is busy with other visitors' computations; "
                            f"{what} could not start within {self.wait_s:g} s. "
                            "Try again in a moment.")
        with self._lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            yield
        finally:
            with self._lock:
                self.active -= 1
            self._sem.release()


class TokenBucket:
    """``burst`` tokens, refilled at ``per_minute``; :meth:`take` spends one or raises."""

    def __init__(self, burst: int, per_minute: float,
                 clock: Callable[[], float] = time.monotonic):
        self.burst, self.rate = float(burst), float(per_minute) / 60.0
        self.clock = clock
        self.tokens = float(burst)
        self.stamp = clock()
        self._lock = threading.Lock()

    def take(self) -> None:
        with self._lock:
            now = self.clock()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens < 1.0:
                wait = (1.0 - self.tokens) / self.rate
                raise BusyError(f"this session has used its share of the demo's computing "
                                f"for now; try again in {wait:.0f} s")
            self.tokens -= 1.0


_LIMITERS: dict[tuple[int, float], WorkLimiter] = {}
_LIMITERS_LOCK = threading.Lock()


def limiter(demo: DemoSettings | None = None) -> WorkLimiter:
    """The process-wide limiter for the current settings."""
    demo = demo or settings()
    key = (demo.max_concurrent, demo.queue_seconds)
    with _LIMITERS_LOCK:
        if key not in _LIMITERS:
            _LIMITERS[key] = WorkLimiter(*key)
        return _LIMITERS[key]


# ------------------------------------------------------------------ start-up
_WARM = threading.Event()
_WARM.set()  # nothing to wait for unless a launcher starts a warm-up
_WARM_ERROR: list[BaseException] = []


def warm_up_in_background(fn: Callable[[], Any]) -> threading.Thread:
    """Run ``fn`` in a daemon thread; :func:`wait_until_warm` blocks until it ends."""
    _WARM.clear()

    def run() -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - the app imports again and shows it
            _WARM_ERROR.append(e)
        finally:
            _WARM.set()

    t = threading.Thread(target=run, name="warm-imports", daemon=True)
    t.start()
    return t


def wait_until_warm(timeout_s: float = 600.0) -> bool:
    """Wait for a warm-up started by :func:`warm_up_in_background` (at once when none
    runs); False when it is still running after ``timeout_s``."""
    return _WARM.wait(timeout_s)


# ------------------------------------------------------------------ shared models
_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: Any) -> threading.RLock:
    """The re-entrant lock of a model (a LoadedModel or its HookedTransformer)."""
    h = getattr(model, "hooked", model)
    with _LOCKS_GUARD:
        if h not in _LOCKS:
            _LOCKS[h] = threading.RLock()
        return _LOCKS[h]


class _Guarded:
    """Mixin: forward passes and hook contexts hold the model's lock."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with model_lock(self):
            return super().forward(*args, **kwargs)

    @contextlib.contextmanager
    def hooks(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        with model_lock(self), super().hooks(*args, **kwargs) as m:
            yield m


@functools.cache
def _guarded_class(cls: type) -> type:
    return type(f"Guarded{cls.__name__}", (_Guarded, cls), {"__module__": __name__})


def guard(model: Any) -> Any:
    """Make a model safe to share between threads (see the module doc); returns it.

    The HookedTransformer's class is swapped for a subclass whose ``forward`` and
    ``hooks`` hold :func:`model_lock`; a copy (``copy.deepcopy``) stays guarded with
    its own lock. Idempotent.
    """
    h = getattr(model, "hooked", model)
    if not isinstance(h, _Guarded):
        h.__class__ = _guarded_class(type(h))
    return model


def is_guarded(model: Any) -> bool:
    return isinstance(getattr(model, "hooked", model), _Guarded)
