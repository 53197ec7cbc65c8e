"""Errors that name the problem and the fix; the CLI prints them as one line."""
from __future__ import annotations


class DipnetError(ValueError):
    """A user-facing error: bad input, a missing file, an unknown name."""


class DataError(DipnetError):
    """A dataset file is missing, truncated or malformed."""


class ConfigError(DipnetError):
    """A wrong name, value or hyperparameter in a config, suite file or CLI call."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; carries the global step that made it."""

    def __init__(self, step: int, epoch: int, value: float, checkpoint: str | None = None) -> None:
        self.step, self.epoch, self.value, self.checkpoint = step, epoch, value, checkpoint
        kept = f"; the last good checkpoint is kept at {checkpoint}" if checkpoint else ""
        super().__init__(
            f"non-finite loss ({value}) at step {step} (epoch {epoch}): lower the learning rate, "
            f"enable gradient clipping (--grad-clip) or check the data{kept}"
        )


def unknown_name(kind: str, name: str, allowed: "list[str] | tuple[str, ...]") -> ConfigError:
    """The one-line error for a name that is not registered."""
    return ConfigError(f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(allowed))}")
