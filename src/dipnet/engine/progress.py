"""Progress display: a rich bar on a terminal, one plain line per epoch otherwise (CI, pipes)."""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from rich.progress import Progress as RichProgress, TaskID


def format_epoch(row: dict[str, Any], epochs: int) -> str:
    """One line for a period's row: its loss and whichever accuracies and losses the task reports
    (classification: train/val/test accuracy; fine-tuning: the validation answer loss)."""
    parts = [f"epoch {row['epoch'] + 1:>3}/{epochs}", f"step {row['step']}", f"loss {row['objective']:.4f}"]
    for key, label in (("train_acc", "train"), ("val_acc", "val"), ("test_acc", "test")):
        if row.get(key) is not None:
            parts.append(f"{label} {100 * row[key]:.2f}%")
    if row.get("val_acc") is None and row.get("val_loss") is not None:
        parts.append(f"val loss {row['val_loss']:.4f}")
    parts.append(f"lr {row['lr']:.2e}")
    parts.append(f"{row['epoch_s']:.1f}s")
    return "  ".join(parts)


class Progress:
    """``mode``: ``auto`` (rich when the stream is a terminal), ``rich``, ``plain`` or ``none``."""

    def __init__(self, mode: str = "auto", stream: TextIO | None = None, label: str = "train") -> None:
        self.stream = stream or sys.stdout
        if mode == "auto":
            mode = "rich" if getattr(self.stream, "isatty", lambda: False)() else "plain"
        self.mode, self.label = mode, label
        self._bar: RichProgress | None = None
        self._task: TaskID | None = None

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        if self.mode != "rich":
            return
        if self._bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeRemainingColumn

            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[loss]}"), TimeRemainingColumn(),
                console=Console(file=self.stream), transient=True,
            )
            self._bar.start()
        if self._task is not None:
            self._bar.remove_task(self._task)
        self._task = self._bar.add_task(f"{self.label} epoch {epoch + 1}/{epochs}", total=steps, loss="")

    def advance(self, loss: float) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, advance=1, loss=f"loss {loss:.4f}")

    def end_epoch(self, row: dict[str, Any], epochs: int) -> None:
        if self.mode == "none":
            return
        line = format_epoch(row, epochs)
        if self._bar is not None:
            self._bar.console.print(line)
        else:
            print(line, file=self.stream, flush=True)

    def message(self, text: str) -> None:
        if self.mode == "none":
            return
        if self._bar is not None:
            self._bar.console.print(text)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = self._task = None
