"""A run directory: what makes a run resumable and its results readable, and nothing else.

Layout::

    run.json                  status, config, run info, history, final metrics (JSON)
    checkpoint.safetensors    latest end-of-epoch state (weights + optimizer + RNG), for resuming
    model.safetensors         final weights (plain safetensors)
    tensorboard/, mlflow.db   run logs, with ``log_to`` (:mod:`dipnet.engine.logs`)
    .dipnet.lock              held (flock) by the process writing the run, removed when it ends

:class:`RunDirectory` owns these files: it takes the lock (a second writer is refused; the lock is
opened with ``O_NOFOLLOW``, so a link there is refused, never written through), refuses a folder
that holds something other than a dipnet run, resumes from the checkpoint (refusing one written
for another config or other data, and a finished run whose final weights fail their checksum),
writes the record after every change of status and the checkpoint after every epoch, each
atomically (a temporary file renamed over the old one) and checksummed. ``overwrite`` deletes only the
files dipnet writes, never the folder's other contents. With no directory every write is skipped;
so is every write of a data-parallel rank other than 0 (``writer=False``), which only reads.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol

import torch
from torch import nn

from ..data import Dataset
from ..errors import ConfigError, DataError, DivergenceError
from .checkpoint import (atomic_write_json, load_checkpoint, load_weights, rng_state, save_checkpoint, save_weights,
                         set_rng_state)
from .config import RunConfig
from .files import check_output, json_format, open_no_follow, refuse_link

RUN_FORMAT = "dipnet-run-1"
LOCK = ".dipnet.lock"
# Every file dipnet writes into a run directory (training, fine-tuning, `dipnet measure`, `dipnet robust`).
OWN_FILES = ("run.json", "checkpoint.safetensors", "model.safetensors", "adapter_config.json", "adapter_model.safetensors",
             "dipnet_sigmas.safetensors", "measures.json", "robust.json", "landscape.png", "robust_eps.png",
             "robust_severity.png", "mlflow.db", LOCK)
OWN_FOLDERS = ("tensorboard",)  # folders dipnet fills: ``overwrite`` deletes them whole


class Stateful(Protocol):
    """What a checkpoint holds: a module, or a view of part of one (fine-tuning's trainable state)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor], /) -> object: ...


def dataset_fingerprint(dataset: Dataset) -> str:
    """SHA-256 (16 hex digits) of the dataset's tensors and name: a resume on other data is refused."""
    h = hashlib.sha256(dataset.info.name.encode())
    for t in (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test):
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def is_run_record(path: Path) -> bool:
    """Whether ``path`` is a run record dipnet wrote (a JSON object with its status and config)."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and isinstance(record.get("config"), dict) and "status" in record \
        and record.get("format", RUN_FORMAT) == RUN_FORMAT


def read_record(run_dir: str | Path) -> dict[str, Any]:
    """The record (``run.json``) of a run directory; a missing or undecodable one is a DataError."""
    path = Path(run_dir) / "run.json"
    if not path.exists():
        raise DataError(f"{run_dir} is not a dipnet run directory (no run.json); train one with `dipnet train --out DIR`")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is damaged: not valid JSON ({exc})") from None


def check_training_record(record: dict[str, Any], run_dir: str | Path) -> None:
    """A fine-tuning run (its config names a task) cannot be loaded as a training run: say which it is."""
    config = record.get("config") if isinstance(record, dict) else None
    if isinstance(config, dict) and "task" in config:
        raise ConfigError(f"{run_dir} is a fine-tuning run (task {config['task']}, model {config.get('model')}): "
                          "eval, measure and robust read training runs; `dipnet finetune` with the same options and "
                          f"--out {run_dir} re-evaluates it")


def in_run_directory(path: str | Path) -> bool:
    """Whether ``path`` is one of dipnet's own files in a dipnet run directory."""
    path = Path(path)
    return path.name in OWN_FILES and is_run_record(path.parent / "run.json")


def _plot_names(value: Any) -> set[str]:
    """The file names of every ``.png`` path a JSON result names."""
    if isinstance(value, dict):
        return set().union(*map(_plot_names, value.values()))
    if isinstance(value, list):
        return set().union(*map(_plot_names, value))
    return {Path(value).name} if isinstance(value, str) and value.endswith(".png") else set()


def check_result_files(path: str | Path, fmt: str, plots: Iterable[str] = ()) -> None:
    """Refuse to write the JSON result ``path`` (format ``fmt``) and the plots ``plots`` beside it
    through a link or over a file dipnet did not write. A file is dipnet's when it is one of its own
    in a run directory, or (the JSON) carries ``fmt``, or (a plot) is named by that JSON."""
    path = Path(path)
    ours = not path.is_symlink() and json_format(path) == fmt
    check_output(path, ours or in_run_directory(path))
    named = _plot_names(json.loads(path.read_text(encoding="utf-8"))) if ours else set()
    for name in plots:
        check_output(path.parent / name, name in named or in_run_directory(path.parent / name))


@dataclass
class TrainState:
    """Where a run stands: the next epoch, the global step, the epoch records, counters, and the
    divergence watch (the starting loss and how many steps in a row stayed far above it)."""

    epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    example_grads: int = 0
    wall_s: float = 0.0
    loss_start: float | None = None
    steps_above: int = 0


class RunDirectory:
    """The files of one run (or none, when ``path`` is None)."""

    def __init__(self, path: str | Path | None, cfg: RunConfig) -> None:
        self.path = Path(path) if path else None
        self.cfg = cfg
        self.header: dict[str, Any] = {}
        self.fingerprint: str | None = None
        self.writer = True  # distributed: ranks other than 0 read the checkpoint, never write (nor lock)
        self.world_size = 1  # distributed: processes training the run; a resume must match it

    @property
    def checkpoint_path(self) -> Path | None:
        return self.path / "checkpoint.safetensors" if self.path else None

    def last_checkpoint(self) -> str | None:
        ck = self.checkpoint_path
        return str(ck) if ck is not None and ck.exists() else None

    def check_target(self, overwrite: bool = False) -> None:
        """Refuse a path that is a file, or a non-empty folder without a dipnet run record of its own."""
        path = self.path
        if path is None or not path.exists():
            return
        if not path.is_dir():
            raise ConfigError(f"--out {path} is a file, not a directory; choose another --out")
        for name in OWN_FILES:
            refuse_link(path / name, "delete the link or choose another --out")
        record = path / "run.json"
        if record.exists() and not is_run_record(record):
            try:
                json.loads(record.read_text(encoding="utf-8"))
            except ValueError as exc:
                raise DataError(f"{record} is damaged (not valid JSON: {exc}); dipnet cannot tell whose run it is: "
                                "restore it or choose another --out") from None
            raise ConfigError(f"{path} holds a run.json that dipnet did not write; choose another --out")
        if not record.exists() and any(p.name != LOCK for p in path.iterdir()):
            what = "delete" if overwrite else "use"
            raise ConfigError(f"{path} exists and is not a dipnet run directory (no run.json): dipnet will not "
                              f"{what} it; choose another --out")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the run's lock (released when the process ends, however it ends; the file is
        removed when the run ends)."""
        if self.path is None or not self.writer:
            yield
            return
        self.path.mkdir(parents=True, exist_ok=True)
        lock = self.path / LOCK
        fd = self._lock(lock)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"process {os.getpid()}".encode(), 0)
            yield
        finally:
            with contextlib.suppress(OSError):
                if os.path.samestat(os.fstat(fd), os.lstat(lock)):
                    lock.unlink()
            os.close(fd)

    def _lock(self, lock: Path) -> int:
        """A descriptor of ``lock`` (never a link's target) holding its flock. A holder that ends
        removes the file: a lock taken on a file removed meanwhile is retried on the new one."""
        while True:
            fd = open_no_follow(lock, "delete the link or choose another --out")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise ConfigError(f"{self.path} is being written by {holder}; wait for it or choose another --out") from None
            try:
                if os.path.samestat(os.fstat(fd), os.lstat(lock)):
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)

    def clear(self) -> list[str]:
        """Delete the files dipnet writes (``overwrite``), keeping anything else; returns what was deleted."""
        gone: list[str] = []
        if self.path is None:
            return gone
        for name in OWN_FILES:
            p = self.path / name
            if name != LOCK and p.is_file():
                p.unlink()
                gone.append(name)
        for name in OWN_FOLDERS:
            if (self.path / name).is_dir():
                shutil.rmtree(self.path / name)
                gone.append(name)
        return gone

    def resume(self, model: Stateful, optimizer: torch.optim.Optimizer) -> TrainState | None:
        """Load the checkpoint into ``model`` and ``optimizer`` and restore the generators;
        None if there is none. A checkpoint of another config or other data is an error, and so
        are final weights that fail their checksum (a rerun would report the run done over them)."""
        self.check_final()
        ck = self.last_checkpoint()
        if ck is None:
            return None
        model_state, state = load_checkpoint(Path(ck))
        saved, now = state["config"], self.cfg.identity()
        if saved != now:
            diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
            raise ConfigError(
                f"{self.path} holds a run with a different config (differs in: {', '.join(diff)}); "
                "choose another --out directory or delete that one"
            )
        saved_world = state.get("world_size", 1)  # distributed
        if saved_world != self.world_size:
            raise ConfigError(f"{self.path} holds a run trained on {saved_world} process(es); resume it with "
                              f"--nproc {saved_world} (this is {self.world_size}), or choose another --out")
        if state.get("data") not in (None, self.fingerprint):
            raise ConfigError(f"{self.path} holds a run trained on other data (fingerprint {state['data']}, "
                              f"now {self.fingerprint}); choose another --out directory or delete that one")
        try:
            model.load_state_dict(model_state)
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise DataError(f"checkpoint {ck} does not fit this model: {str(exc).splitlines()[0]}; delete it "
                            "to start over") from None
        set_rng_state(state["rng"])
        return TrainState(state["epoch"], state["step"], state["history"], state["example_grads"], state["wall_s"],
                          state.get("loss_start"), state.get("steps_above", 0))

    def done_final(self) -> dict[str, Any] | None:
        """The final metrics of a finished run recorded here, else None."""
        if self.path is None or not is_run_record(self.path / "run.json"):
            return None
        record = read_record(self.path)
        return record.get("final") if record.get("status") == "done" else None

    def check_final(self) -> None:
        """Verify the checksum of the final weights (model or adapters) the directory holds."""
        if self.path is None:
            return
        for name in OWN_FILES:
            p = self.path / name
            if name.endswith(".safetensors") and p != self.checkpoint_path and p.is_file():
                load_weights(p, "dipnet will not report the run done over it: rerun with --overwrite to train "
                                "the run again")

    def record(self, status: str, state: TrainState, final: dict[str, Any] | None = None,
               error: str | None = None) -> None:
        """Write ``run.json``: ``header`` (method, dataset, run info), the history, the outcome."""
        if self.path is None or not self.writer:
            return
        atomic_write_json(self.path / "run.json", {
            "format": RUN_FORMAT, "status": status, "config": self.cfg.to_dict(), **self.header,
            "data_fingerprint": self.fingerprint, "history": state.history, "final": final, "error": error,
        })

    @contextlib.contextmanager
    def recording(self, state: TrainState) -> Iterator[None]:
        """Training inside: an exception is recorded (``failed``, or ``interrupted`` for Ctrl-C)
        and re-raised; a divergence (a non-finite or exploding loss) is re-raised naming the last good checkpoint."""
        try:
            yield
        except DivergenceError as exc:
            exc = exc.with_checkpoint(self.last_checkpoint())
            self.record("failed", state, error=str(exc))
            raise exc from None
        except BaseException as exc:
            self.record("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed", state,
                        error=f"{type(exc).__name__}: {exc}")
            raise

    def checkpoint(self, model: Stateful, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
        """The end-of-epoch state: everything a resume needs (weights, optimizer, generators)."""
        path = self.checkpoint_path
        if path is None or not self.writer:
            return
        save_checkpoint(path, model.state_dict(), {
            **({"world_size": self.world_size} if self.world_size != 1 else {}),
            "config": self.cfg.identity(), "data": self.fingerprint, "epoch": state.epoch, "step": state.step,
            "history": state.history, "example_grads": state.example_grads, "wall_s": state.wall_s,
            "loss_start": state.loss_start, "steps_above": state.steps_above,
            "optimizer": optimizer.state_dict(), "rng": rng_state(),
        })

    def save_final(self, model: nn.Module, method_name: str) -> None:
        if self.path is not None and self.writer:
            save_weights(self.path / "model.safetensors", model.state_dict(),
                         {"format": "dipnet-weights-1", "method": method_name})
