"""Where a suite's runs train besides the local process pool: Ray tasks (``pip install 'dipnet[ray]'``).

``dipnet compare SUITE --executor ray`` hands every run to Ray as one task (``num_cpus`` =
``cpus_per_run``); the task trains on ``threads`` torch threads (``--threads``; default its CPUs)
and gives the Ray worker its threads back afterwards. Without an address, dipnet starts a
local Ray for the suite (no dashboard, its session folder in a temporary folder of its own) and
shuts it down and removes that folder when the suite ends or fails; with one (``--address
auto``, ``HOST:6379`` or ``ray://HOST:10001``), it checks the address, joins that cluster within
``connect_timeout`` seconds or stops with one line, refuses resource requests above the
cluster's total (Ray would wait for them forever), and leaves the cluster running. The run store
stays the record of what is done and only this (driver) process writes
it, as with the local pool: a run is claimed ``running`` when submitted and finished exactly
once from the task's reply. A task whose worker dies (killed, out of memory, node lost) is
started again by Ray up to ``max_retries`` times (the engine resumes it from its last
end-of-epoch checkpoint when the run directory is on a filesystem the nodes share); after that
it is recorded ``failed`` and the next ``--resume`` trains it again. A run that raises comes back
as data (``failed``), as in the pool. If the driver dies, the next ``--resume`` finds the runs it
claimed ``running`` with a dead owner and puts them back to ``pending``.

Ray's own scheduler, retries and cluster join are used as they are; what is written here is the
bookkeeping between Ray's futures and the run store. The environment Ray needs
(``RAY_AUTH_MODE=disabled`` unless set, its connection timeouts) is set only while dipnet's Ray
session lasts, and this process's environment is restored when it ends.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from ..engine import threads as threads_policy
from ..engine.distributed import scoped_environ
from ..errors import ConfigError
from ..schema import Validated, param
from .compare import TrainFn, execute_run, run_dir_for
from .instruments import MeasureFn
from .runspec import RunSpec
from .store import RunStore, owner_id

__all__ = ["RayExecutor"]

Emit = Callable[[str, RunSpec, Mapping[str, Any]], None]
Finish = Callable[[RunSpec, dict[str, Any]], None]
ADDRESS_FORMS = "auto, HOST:PORT (e.g. 10.0.0.5:6379) or ray://HOST:PORT"
_HOST_PORT = re.compile(r"^(?:\[(?P<ip6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)):(?P<port>\d{1,5})$")


def _ray_run(spec: dict[str, Any], run_dir: str, train_fn: TrainFn, measures: dict[str, MeasureFn],
             threads: int) -> dict[str, Any]:
    """The Ray task: one run in a Ray worker on ``threads`` torch threads (the worker's own after it)."""
    with threads_policy.using(threads, warn=False):
        return execute_run(spec, run_dir, train_fn, measures)


def _import_ray() -> Any:
    try:
        with scoped_environ({}, restore_all=True):  # importing Ray writes RAY_CLIENT_MODE=0 (its default)
            import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install 'dipnet[ray]'") from None
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``HOST:PORT`` or ``ray://HOST:PORT``; None if it is neither."""
    m = _HOST_PORT.match(address.removeprefix("ray://"))
    if m is None or not 0 < int(m["port"]) < 65536:
        return None
    return m["ip6"] or m["host"], int(m["port"])


@dataclass
class RayExecutor(Validated):
    """Train a suite's runs as Ray tasks (see the module docstring)."""

    address: str | None = param(None, doc=f"Ray cluster to join ({ADDRESS_FORMS}); none: start a local Ray "
                                "for the suite")
    cpus_per_run: float = param(1.0, gt=0, doc="CPUs Ray reserves for each run")
    gpus_per_run: float = param(0.0, ge=0, doc="GPUs Ray reserves for each run")
    max_retries: int = param(1, ge=0, doc="times Ray starts a run again when its worker dies")
    threads: int | None = param(None, ge=1, doc="torch threads of each run (none: its CPUs, at least 1)")
    connect_timeout: float = param(5.0, gt=0, le=600, doc="seconds to wait for the cluster at address")

    def _owner(self) -> str:
        return "ray"

    def _check(self) -> None:
        if self.address is None or self.address == "auto":
            return
        if not self.address.strip():
            raise ConfigError(f"the Ray address is empty: give one ({ADDRESS_FORMS}), or leave it out for a local Ray")
        if _host_port(self.address) is None:
            raise ConfigError(f"{self.address!r} is not a Ray address: use {ADDRESS_FORMS}")
        if self.address.startswith("ray://") and importlib.util.find_spec("grpc") is None:
            raise ConfigError(f"{self.address!r} is a Ray Client address, which needs pip install 'ray[client]'; "
                              "or give the cluster's HOST:6379")

    def run(self, store: RunStore, todo: list[RunSpec], runs_root: Path, train_fn: TrainFn,
            measures: Mapping[str, MeasureFn], emit: Emit, finish: Finish) -> None:
        """Train ``todo`` (runs the store holds as pending) and record each outcome once."""
        if not todo:
            return
        ray = _import_ray()
        threads = self.threads or max(1, int(self.cpus_per_run))
        with self._session(ray):
            task = ray.remote(_ray_run).options(num_cpus=self.cpus_per_run, num_gpus=self.gpus_per_run,
                                                max_retries=self.max_retries, retry_exceptions=False)
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

    @contextlib.contextmanager
    def _session(self, ray: Any) -> Iterator[None]:
        """Join the cluster at ``address``, or start a local Ray in a temporary folder; on exit shut
        down what this call joined or started, remove that folder and restore the environment. A
        Ray already initialized in this process is used as it is."""
        if ray.is_initialized():
            yield
            return
        auth = {} if "RAY_AUTH_MODE" in os.environ else {"RAY_AUTH_MODE": "disabled"}
        temp_dir = None
        with scoped_environ(auth, restore_all=True):  # also undoes what Ray writes to the environment
            try:
                if self.address:
                    self._join(ray)
                else:
                    cpus = os.cpu_count() or 1
                    self._fits(cpus, None, "this machine")
                    temp_dir = tempfile.mkdtemp(prefix="dipnet-ray-")
                    ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING, _temp_dir=temp_dir)
                resources = ray.cluster_resources()
                self._fits(resources.get("CPU", 0.0), resources.get("GPU", 0.0),
                           f"the Ray cluster at {self.address!r}" if self.address else "the local Ray")
                yield
            finally:
                if ray.is_initialized():
                    ray.shutdown()
                if temp_dir is not None:
                    shutil.rmtree(temp_dir, ignore_errors=True)

    def _fits(self, cpus: float, gpus: float | None, where: str) -> None:
        """Refuse a run that asks more CPUs (or GPUs) than ``where`` has: Ray would wait for them forever."""
        if self.cpus_per_run > cpus:
            raise ConfigError(f"--cpus-per-run {self.cpus_per_run:g} is more than the {cpus:g} CPUs of {where}: "
                              "Ray would wait for them forever")
        if gpus is not None and self.gpus_per_run > gpus:
            raise ConfigError(f"gpus_per_run {self.gpus_per_run:g} is more than the {gpus:g} GPUs of {where}: "
                              "Ray would wait for them forever")

    def _join(self, ray: Any) -> None:
        """``ray.init(address)`` once the address answers within ``connect_timeout`` seconds (Ray
        itself retries an unreachable one for minutes), with Ray's own waits bounded by it too."""
        address = self.address or ""
        if address == "auto":
            try:
                from ray._private.services import canonicalize_bootstrap_address

                address = canonicalize_bootstrap_address(address) or ""
            except (ConnectionError, ValueError) as exc:
                raise ConfigError(f"no Ray cluster found for --address auto ({exc}); start one with "
                                  "`ray start --head` or leave out --address for a local Ray") from None
        where = _host_port(address)
        if where is not None:
            try:
                socket.create_connection(where, timeout=self.connect_timeout).close()
            except OSError as exc:
                reason = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or str(exc))
                raise ConfigError(f"cannot reach the Ray cluster at {self.address!r} within {self.connect_timeout:g} s "
                                  f"({reason}); start one with `ray start --head` or leave out --address for a "
                                  "local Ray") from None
        wait = str(max(1, math.ceil(self.connect_timeout)))
        bounded = {"RAY_gcs_server_port_wait_time_s": wait, "RAY_py_gcs_connect_timeout_s": wait,
                   "RAY_gcs_rpc_server_connect_timeout_s": wait}
        try:
            with scoped_environ(bounded):
                ray.init(address=self.address, logging_level=logging.WARNING)
        except (ConnectionError, SystemExit, TimeoutError) as exc:
            raise ConfigError(f"cannot join the Ray cluster at {self.address!r} ({exc or type(exc).__name__}); start "
                              "one with `ray start --head` or leave out --address for a local Ray") from None
