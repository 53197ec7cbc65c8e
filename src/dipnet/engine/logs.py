"""Run logs where users look: TensorBoard event files and an MLflow tracking store, written by two
callbacks of the one loop (:mod:`dipnet.engine.core`), for classification and fine-tuning alike.

What is logged, under the same names in both (:func:`scalars`):

- ``step_loss``: each optimizer step's loss at its global step (TensorBoard only);
- each period's row (``state.history``) at the global step that ends it: every numeric field
  by its name (``objective``, ``train_loss``, ``val_acc``, ``lr``, ``example_grads``,
  ``wall_s``, ``epoch``, ...), the method's step logs as ``logs/NAME`` and its numeric metrics
  as ``method/NAME`` (``method/sigma_mean``, ``method/sigma_relative_mean``);
- the final metrics as ``final/NAME`` at the last step.

MLflow also gets the config as parameters, the tags ``method``, ``task`` and ``dipnet.status``
(``run.json``'s status), and the run's end status (FINISHED, FAILED, KILLED). The store is a
local SQLite file (``sqlite:///<out>/mlflow.db``): no server and no network. MLflow's plain-folder
store (``./mlruns``) is refused by MLflow 3.13 and later unless ``MLFLOW_ALLOW_FILE_STORE`` is
set, so dipnet uses the store MLflow recommends; read it with
``mlflow ui --backend-store-uri sqlite:///<out>/mlflow.db``. MLflow is imported with its usage
telemetry off (``MLFLOW_DISABLE_TELEMETRY`` set for the import only).

A resumed run continues the same logs: TensorBoard hides the events a crashed attempt wrote
after the checkpoint (``purge_step``), MLflow continues the run of the same run directory. Only
the writing rank (rank 0) logs. Both close on an exception, so a failed run leaves readable logs.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..errors import ConfigError
from .core import Callback, Loop
from .rundir import TrainState

__all__ = ["MLFLOW_STORE", "MLflowLog", "TENSORBOARD_DIR", "TensorBoardLog", "run_logs", "scalars"]

TENSORBOARD_DIR = "tensorboard"  # <out>/tensorboard: the event files
MLFLOW_STORE = "mlflow.db"  # <out>/mlflow.db: the MLflow store
INSTALL = "pip install 'dipnet[logs]'"
MLFLOW_BATCH = 100  # MLflow's limit on the parameters of one log_batch call


def _require(what: str, *modules: str) -> None:
    """One line naming the install command when a package of the ``[logs]`` extra is missing."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"{what} needs {', '.join(missing)}: {INSTALL}")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def scalars(row: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a record row under their log names: each numeric field by its name (not
    ``step``, the x axis), the numeric entries of ``logs`` and ``method`` as ``logs/NAME`` and
    ``method/NAME``; ``prefix`` goes in front of every name."""
    out: dict[str, float] = {}
    for key, value in row.items():
        if key in ("logs", "method") and isinstance(value, dict):
            out.update({f"{prefix}{key}/{k}": float(v) for k, v in value.items() if _is_number(v)})
        elif key != "step" and _is_number(value):
            out[prefix + key] = float(value)
    return out


class TensorBoardLog(Callback):
    """TensorBoard event files in ``log_dir``: the loss of every ``step_every``-th step, each
    period's row and the final metrics (names: :func:`scalars`)."""

    def __init__(self, log_dir: str | Path, step_every: int = 1) -> None:
        _require("TensorBoard logging", "tensorboard")
        if step_every < 1:
            raise ConfigError(f"step_every must be an integer >= 1, not {step_every!r}")
        self.log_dir, self.step_every = Path(log_dir), step_every
        self.writer: Any = None

    def on_fit_start(self, loop: Loop, state: TrainState) -> None:
        if not loop.dist.is_writer:
            return
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: TensorBoard hides what an interrupted attempt wrote after the checkpoint
        self.writer = SummaryWriter(str(self.log_dir), purge_step=state.step + 1)

    def on_step_end(self, loop: Loop, state: TrainState, loss: float) -> None:
        if self.writer is not None and state.step % self.step_every == 0:
            self.writer.add_scalar("step_loss", loss, state.step)

    def on_period_end(self, loop: Loop, state: TrainState, row: dict[str, Any]) -> None:
        if self.writer is not None:
            for name, value in scalars(row).items():
                self.writer.add_scalar(name, value, row["step"])
            self.writer.flush()

    def on_fit_end(self, loop: Loop, state: TrainState, final: dict[str, Any]) -> None:
        if self.writer is not None:
            for name, value in scalars(final, "final/").items():
                self.writer.add_scalar(name, value, state.step)
        self.close()

    def on_exception(self, loop: Loop, state: TrainState, exc: BaseException) -> None:
        self.close()

    def close(self) -> None:
        """Flush and close the event file (again: a no-op)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            del os.environ[name]
        else:
            os.environ[name] = before


def _mlflow_client(tracking_uri: str) -> Any:
    """An ``MlflowClient`` of ``tracking_uri``; MLflow's first import without its telemetry, the
    store's creation without SQLAlchemy's deprecation warnings and MLflow's table-creation lines."""
    if "mlflow" not in sys.modules:
        with _env("MLFLOW_DISABLE_TELEMETRY", "true"):
            import mlflow  # noqa: F401
    from mlflow.tracking import MlflowClient

    quiet = logging.getLogger("mlflow.store.db.utils")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return MlflowClient(tracking_uri)
    finally:
        quiet.setLevel(level)


def _params(cfg: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A config as MLflow parameters: tables flattened (``method_params.sam.rho``), lists as ``a,b``."""
    out: dict[str, str] = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out.update(_params(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return out


class MLflowLog(Callback):
    """An MLflow run in the SQLite store ``store`` (a file; created if missing), in experiment
    ``experiment``: the config as parameters, each period's row and the final metrics at their
    global steps (names: :func:`scalars`), the tags ``method``, ``task``, ``dipnet.status`` and
    ``dipnet.run_dir``, and the end status. A resumed run continues the MLflow run of its run directory."""

    def __init__(self, store: str | Path, experiment: str = "dipnet", run_name: str | None = None) -> None:
        _require("MLflow logging", "mlflow", "sqlalchemy", "alembic")
        self.store, self.experiment, self.run_name = Path(store), experiment, run_name
        self.client: Any = None
        self.run_id: str | None = None

    @property
    def tracking_uri(self) -> str:
        """The store's URI, for ``MlflowClient(tracking_uri)`` or ``mlflow ui --backend-store-uri``."""
        return "sqlite:///" + self.store.resolve().as_posix()

    def on_fit_start(self, loop: Loop, state: TrainState) -> None:
        if not loop.dist.is_writer:
            return
        self.store.parent.mkdir(parents=True, exist_ok=True)
        client = self.client = _mlflow_client(self.tracking_uri)
        found = client.get_experiment_by_name(self.experiment)
        experiment_id = found.experiment_id if found is not None else client.create_experiment(
            self.experiment, artifact_location=(self.store.parent / "mlartifacts").resolve().as_uri())
        run_dir = str(loop.run.path.resolve()) if loop.run.path is not None else None
        run = self._previous(experiment_id, run_dir) if state.step > 0 and run_dir else None
        tags = {"method": loop.method.name, "task": loop.task.name, "dipnet.status": "running"}
        if run_dir:
            tags["dipnet.run_dir"] = run_dir
        if run is None:
            name = self.run_name or (loop.run.path.name if loop.run.path is not None
                                     else f"{loop.method.name} {loop.task.name}")
            run = client.create_run(experiment_id, run_name=name, tags=tags)
        else:
            client.update_run(run.info.run_id, status="RUNNING")
        self.run_id = run.info.run_id
        from mlflow.entities import Param, RunTag

        logged = run.data.params  # parameters are immutable: a resume adds only new ones
        params = [Param(k, v) for k, v in _params(loop.run.cfg.to_dict()).items() if k not in logged]
        client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        for i in range(0, len(params), MLFLOW_BATCH):
            client.log_batch(self.run_id, params=params[i:i + MLFLOW_BATCH])

    def _previous(self, experiment_id: str, run_dir: str) -> Any:
        """The newest MLflow run of ``run_dir`` (the run being resumed), or None."""
        runs = self.client.search_runs([experiment_id], order_by=["attributes.start_time DESC"])
        return next((r for r in runs if r.data.tags.get("dipnet.run_dir") == run_dir), None)

    def _log(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def on_period_end(self, loop: Loop, state: TrainState, row: dict[str, Any]) -> None:
        if self.run_id is not None:
            self._log(scalars(row), row["step"])

    def on_fit_end(self, loop: Loop, state: TrainState, final: dict[str, Any]) -> None:
        if self.run_id is not None:
            self._log(scalars(final, "final/"), state.step)
            self._end("stopped" if loop.control.should_stop else "done", "FINISHED")

    def on_exception(self, loop: Loop, state: TrainState, exc: BaseException) -> None:
        if self.run_id is not None:
            interrupted = isinstance(exc, KeyboardInterrupt)
            self._end("interrupted" if interrupted else "failed", "KILLED" if interrupted else "FAILED")

    def _end(self, status: str, mlflow_status: str) -> None:
        run_id, self.run_id = self.run_id, None
        self.client.set_tag(run_id, "dipnet.status", status)
        self.client.set_terminated(run_id, mlflow_status)


def run_logs(log_to: Sequence[str], out: str | Path | None) -> list[Callback]:
    """The log callbacks ``log_to`` names (``tensorboard``, ``mlflow``), writing under the run
    directory ``out`` (``<out>/tensorboard``, ``<out>/mlflow.db``)."""
    if not log_to:
        return []
    if out is None:
        raise ConfigError(f"log_to {','.join(log_to)} writes under the run directory: set out (--out DIR)")
    made = {"tensorboard": lambda: TensorBoardLog(Path(out) / TENSORBOARD_DIR),
            "mlflow": lambda: MLflowLog(Path(out) / MLFLOW_STORE)}
    return [made[kind]() for kind in dict.fromkeys(log_to)]
