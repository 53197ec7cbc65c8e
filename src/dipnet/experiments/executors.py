"""Where a suite's runs train besides the local process pool: Ray tasks (``pip install 'dipnet[ray]'``).

``dipnet compare SUITE --executor ray`` hands every run to Ray as one task (``num_cpus`` =
``cpus_per_run``, which is also the run's torch threads). Without an address, dipnet starts a
local Ray for the suite (no dashboard) and shuts it down when the suite ends or fails; with one
(``--address auto``, ``HOST:6379`` or ``ray://HOST:10001``), it joins that cluster and leaves it
running. The run store stays the record of what is done and only this (driver) process writes
it, as with the local pool: a run is claimed ``running`` when submitted and finished exactly
once from the task's reply. A task whose worker dies (killed, out of memory, node lost) is
started again by Ray up to ``max_retries`` times (the engine resumes it from its last
end-of-epoch checkpoint when the run directory is on a filesystem the nodes share); after that
it is recorded ``failed`` and the next ``--resume`` trains it again. A run that raises comes back
as data (``failed``), as in the pool. If the driver dies, the next ``--resume`` finds the runs it
claimed ``running`` with a dead owner and puts them back to ``pending``.

Ray's own scheduler, retries and cluster join are used as they are; what is written here is the
bookkeeping between Ray's futures and the run store.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import ConfigError
from ..schema import Validated, param
from .compare import TrainFn, execute_run, run_dir_for
from .instruments import MeasureFn
from .runspec import RunSpec
from .store import RunStore, owner_id

__all__ = ["RayExecutor"]

Emit = Callable[[str, RunSpec, Mapping[str, Any]], None]
Finish = Callable[[RunSpec, dict[str, Any]], None]


def _ray_run(spec: dict[str, Any], run_dir: str, train_fn: TrainFn, measures: dict[str, MeasureFn],
             threads: int) -> dict[str, Any]:
    """The Ray task: one run in a Ray worker, its torch threads fixed to its CPUs."""
    import torch

    torch.set_num_threads(threads)
    return execute_run(spec, run_dir, train_fn, measures)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install 'dipnet[ray]'") from None
    return ray


@dataclass
class RayExecutor(Validated):
    """Train a suite's runs as Ray tasks (see the module docstring)."""

    address: str | None = param(None, doc="Ray cluster to join (auto, HOST:6379, ray://HOST:10001); "
                                "none: start a local Ray for the suite")
    cpus_per_run: float = param(1.0, gt=0, doc="CPUs Ray reserves for each run (its torch threads too)")
    gpus_per_run: float = param(0.0, ge=0, doc="GPUs Ray reserves for each run")
    max_retries: int = param(1, ge=0, doc="times Ray starts a run again when its worker dies")

    def _owner(self) -> str:
        return "ray"

    def run(self, store: RunStore, todo: list[RunSpec], runs_root: Path, train_fn: TrainFn,
            measures: Mapping[str, MeasureFn], emit: Emit, finish: Finish) -> None:
        """Train ``todo`` (runs the store holds as pending) and record each outcome once."""
        if not todo:
            return
        ray = _import_ray()
        started = self._connect(ray)
        task = ray.remote(_ray_run).options(num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run,
                                            max_retries=self.max_retries, retry_exceptions=False)
        threads = max(1, int(self.cpus_per_run))
        pending: dict[Any, RunSpec] = {}
        try:
            for spec in todo:
                if not store.claim(spec.key, owner_id()):
                    continue
                emit("start", spec, {})
                ref = task.remote(spec.to_dict(), str(run_dir_for(runs_root.resolve(), spec)), train_fn,
                                  dict(measures), threads)
                pending[ref] = spec
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    spec = pending.pop(ref)
                    try:
                        reply = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        reply = {"ok": False, "error": f"the Ray worker of this run died {self.max_retries + 1} "
                                 f"time(s) ({type(exc).__name__}); --resume trains it again"}
                    finish(spec, reply)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            store.reset([s.key for s in pending.values()], ("running",))
            raise
        finally:
            if started:
                ray.shutdown()

    def _connect(self, ray: Any) -> bool:
        """Join the cluster at ``address``, or start a local Ray; True if this call started one
        (and must shut it down). A Ray already initialized in this process is used as it is."""
        if ray.is_initialized():
            return False
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING}
        try:
            if self.address:
                ray.init(address=self.address, **kwargs)
            else:
                ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, **kwargs)
        except ConnectionError as exc:
            raise ConfigError(f"cannot join the Ray cluster at {self.address!r} ({exc}); start one with "
                              "`ray start --head` or leave out --address for a local Ray") from None
        return True
