"""Errors that name the problem and the fix; the CLI prints them as one line."""
from __future__ import annotations


class DipnetError(ValueError):
    """A user-facing error: bad input, a missing file, an unknown name."""


class DataError(DipnetError):
    """A dataset file is missing, truncated or malformed."""


class ConfigError(DipnetError):
    """A wrong name, value or hyperparameter in a config, suite file or CLI call."""


class DivergenceError(RuntimeError):
    """Training diverged: the run stopped as failed; carries the global step that showed it."""

    what = "the loss diverged"

    def __init__(self, step: int, epoch: int, value: float, checkpoint: str | None = None, detail: str = "") -> None:
        self.step, self.epoch, self.value, self.checkpoint, self.detail = step, epoch, value, checkpoint, detail
        kept = f"; the last good checkpoint is kept at {checkpoint}" if checkpoint else ""
        super().__init__(
            f"{self.what} ({value:.6g}{detail}) at step {step} (epoch {epoch}): lower the learning rate, "
            f"enable gradient clipping (--grad-clip) or check the data{kept}"
        )

    def with_checkpoint(self, checkpoint: str | None) -> "DivergenceError":
        return type(self)(self.step, self.epoch, self.value, checkpoint, self.detail)


class NonFiniteLossError(DivergenceError):
    """Training produced a NaN or infinite loss."""

    what = "non-finite loss"


class SuiteError(RuntimeError):
    """Runs of a suite failed (their errors are in the run store); carries the suite's outcome."""

    def __init__(self, message: str, outcome: object = None) -> None:
        super().__init__(message)
        self.outcome = outcome


def unknown_name(kind: str, name: str, allowed: "list[str] | tuple[str, ...]") -> ConfigError:
    """The one-line error for a name that is not registered."""
    return ConfigError(f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(allowed))}")
