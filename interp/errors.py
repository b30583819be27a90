"""Typed exceptions of the backend.

Every error a user can cause (bad model name, mismatched pair, bad prompt, ...) is an
``InterpError`` subclass with a message written for a person; the UI shows
``str(err)`` and never a traceback.
"""

from __future__ import annotations


class InterpError(Exception):
    """Base class of every error the backend raises on purpose."""


class ModelNotFoundError(InterpError):
    """A model name, directory or GGUF file could not be resolved or loaded."""


class ModelLoadError(InterpError):
    """A model was found but its files are broken or unsupported."""


class PairMismatchError(InterpError):
    """Two models cannot be compared; ``differences`` lists what differs."""

    def __init__(self, message: str, differences: list[str]):
        super().__init__(message + "\n" + "\n".join(f"  - {d}" for d in differences))
        self.differences = differences


class PromptError(InterpError):
    """A prompt is empty, too long, or otherwise unusable."""


class TokenNotInVocabError(InterpError):
    """A requested target token does not exist in the tokenizer's vocabulary."""


class ArtifactError(InterpError):
    """An artifact is missing, incomplete or does not match what was asked."""


class ArtifactNotFoundError(ArtifactError):
    """No complete artifact exists under the requested key."""


class ArtifactCorruptError(ArtifactError):
    """An artifact folder exists but cannot be read as saved (unreadable metadata, a
    truncated or missing file): not the same as missing; rebuilding would replace it."""


class StorageError(InterpError):
    """Writing to the artifact store failed (for example, the disk is full)."""


class TrainingError(InterpError):
    """A training run stopped (for example, on a NaN loss)."""


class NaNLossError(TrainingError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class DivergedError(TrainingError):
    """The loss grew far above its starting value; the run is not saved as a result."""


class NonFiniteError(InterpError):
    """Values that must be finite (weights, a scale α) hold NaN or infinity; nothing
    was saved or applied."""


class JobError(InterpError):
    """A background job failed, was cancelled, or cannot be found."""


class ExportError(InterpError):
    """A figure or table could not be exported."""


class ChromiumMissingError(ExportError):
    """Static image export needs a Chromium binary that is not installed."""


class ConfigError(InterpError):
    """A configuration value is out of range or inconsistent."""


class DemoRestrictedError(InterpError):
    """The hosted demo does not allow this (another model, training, a file write)."""


class BusyError(InterpError):
    """The server has no free slot for this computation now; try again shortly."""


class BaselineError(InterpError):
    """An external baseline (e.g. circuit-tracer in its own virtual environment) failed."""


class GridError(ConfigError):
    """A typed grid of values (α values, layers, positions, top-k) does not parse or
    holds a value out of range."""


class CostLimitError(DemoRestrictedError):
    """A run's estimated cost exceeds what the hosted demo allows."""
