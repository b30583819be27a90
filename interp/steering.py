"""Hook builders for interventions: add a vector, project a direction out, clamp.

Every builder returns ``(hook_name, fn)`` pairs usable three ways: in
:func:`interp.generation.generate` (``fwd_hooks=``), in :func:`steered` around any
forward pass, or in ``HookedTransformer.run_with_hooks``. :func:`steered` and
``generate`` always remove the hooks, also when an exception is raised.

Conventions: a vector is added to the activation at ``hook_name`` (``[batch, pos,
d_model]``), scaled by ``alpha``; ``alpha`` is a float or a per-row tensor ``[n_rows]``
(with ``state`` given, row ``i`` of a generation chunk uses ``alpha[state.rows[i]]``, so
an α sweep runs as one batch). ``where`` restricts the edit to positions: a callable
``where(state_or_None, act) -> bool [batch, pos]`` mask, see :func:`at_tokens`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from .errors import ConfigError, NonFiniteError
from .generation import GenState, Hook
from .validate import finite

Where = Callable[[GenState | None, torch.Tensor], torch.Tensor]


def check_alpha(alpha: float | torch.Tensor, name: str = "α") -> float | torch.Tensor:
    """A scale α as given (float or per-row tensor), refusing NaN and infinity."""
    if isinstance(alpha, torch.Tensor):
        if alpha.numel() and not bool(torch.isfinite(alpha).all()):
            raise ConfigError(f"{name} must be finite numbers, got {alpha.tolist()[:8]}")
        return alpha
    return finite(alpha, name)


def check_vector(vector: torch.Tensor, name: str = "steering vector") -> torch.Tensor:
    if not isinstance(vector, torch.Tensor):
        raise ConfigError(f"{name} must be a tensor, got {type(vector).__name__}")
    if not bool(torch.isfinite(vector).all()):
        raise NonFiniteError(f"{name} holds NaN or infinite values")
    return vector


def _row_alpha(alpha: float | torch.Tensor, state: GenState | None, act: torch.Tensor
               ) -> torch.Tensor | float:
    if not isinstance(alpha, torch.Tensor) or alpha.ndim == 0:
        return alpha
    a = alpha.to(act.device, act.dtype)
    if state is not None:
        a = a[state.rows.to(a.device)]
    if a.shape[0] != act.shape[0]:
        raise ValueError(f"per-row alpha has {a.shape[0]} rows, activation {act.shape[0]}")
    return a.view(-1, *([1] * (act.ndim - 1)))


def add_vector(hook_name: str, vector: torch.Tensor, alpha: float | torch.Tensor = 1.0,
               state: GenState | None = None, where: Where | None = None) -> Hook:
    """``act <- act + alpha * vector`` at ``hook_name`` (all positions unless ``where``).
    ConfigError / NonFiniteError for a NaN or infinite α or vector."""
    alpha = check_alpha(alpha)
    check_vector(vector)

    def fn(act: torch.Tensor, hook: Any = None) -> torch.Tensor:
        v = vector.to(act.device, act.dtype)
        delta = _row_alpha(alpha, state, act) * v
        if where is None:
            return act + delta
        m = where(state, act).to(act.device).unsqueeze(-1).to(act.dtype)
        return act + m * delta

    return hook_name, fn


def project_out(hook_name: str, direction: torch.Tensor, where: Where | None = None,
                state: GenState | None = None) -> Hook:
    """Remove the component along ``direction`` (unit-normalised here) at ``hook_name``."""
    check_vector(direction, "direction")
    if float(direction.norm()) == 0.0:
        raise ConfigError("cannot project out a zero direction")
    u = direction / direction.norm()

    def fn(act: torch.Tensor, hook: Any = None) -> torch.Tensor:
        uu = u.to(act.device, act.dtype)
        comp = (act * uu).sum(-1, keepdim=True) * uu
        if where is None:
            return act - comp
        m = where(state, act).to(act.device).unsqueeze(-1).to(act.dtype)
        return act - m * comp

    return hook_name, fn


def at_tokens(token_ids: Sequence[int], inside: Callable[[GenState], torch.Tensor] | None = None
              ) -> Where:
    """Positions whose *current input token* is one of ``token_ids`` (needs a GenState;
    in a plain forward pass without state, no position matches). ``inside(state)`` may
    further restrict rows (e.g. only rows whose think block is open)."""
    ids = torch.tensor(list(token_ids), dtype=torch.long)

    def where(state: GenState | None, act: torch.Tensor) -> torch.Tensor:
        if state is None or state.tokens is None:
            return torch.zeros(act.shape[:2], dtype=torch.bool, device=act.device)
        m = torch.isin(state.tokens, ids.to(state.tokens.device))
        if inside is not None:
            m = m & inside(state).to(m.device)[:, None]
        return m

    return where


def think_open(open_id: int | None, close_id: int, starts_open: bool = True
               ) -> Callable[[GenState], torch.Tensor]:
    """Rows whose think block is open in ``state.history`` (``[b]`` bool)."""

    def inside(state: GenState) -> torch.Tensor:
        h = state.history
        closed = (h == close_id).any(-1)
        opened = torch.ones_like(closed) if starts_open or open_id is None \
            else (h == open_id).any(-1)
        return opened & ~closed

    return inside


@contextlib.contextmanager
def steered(model: Any, hooks: Sequence[Hook] | Mapping[str, Callable]) -> Iterator[Any]:
    """Run the body with hooks attached to ``model`` (LoadedModel or HookedTransformer);
    they are removed on exit, exception or not."""
    hooked = getattr(model, "hooked", model)
    pairs = list(hooks.items()) if isinstance(hooks, Mapping) else list(hooks)
    with hooked.hooks(fwd_hooks=pairs):
        yield hooked


def n_active_hooks(model: Any) -> int:
    """How many forward hooks are attached anywhere in the model (0 after cleanup)."""
    hooked = getattr(model, "hooked", model)
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in hooked.modules())
