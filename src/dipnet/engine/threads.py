"""The one threads policy: how many torch threads each process of a run gets, and the one place
that sets them.

A run is a tree of processes: one, a suite's N workers, N DDP ranks. Whoever starts the tree (the
``dipnet`` command, :func:`~dipnet.engine.train`, ``run_suite``, the DDP launcher) decides once,
with :func:`plan`, from the threads asked for, the number of processes and the idle physical
cores: each process gets the threads asked for, else its share of the idle cores (at least 1).
It warns, once, when the tree asks for more threads than the idle physical cores (one thread per
process, up to the physical cores, never counts as too many: no thread setting could do with
less). The processes it starts take that decision as it is (:data:`ENV` in a child's environment,
or the enclosing :func:`using` in this process) and do not warn again.

A library call (:func:`using`) sets torch's threads for its duration and restores them after; only
a process that dipnet owns (a worker, a rank, the command line) keeps them (:func:`apply`).
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import sys
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from ..errors import ConfigError
from ..schema import Limits, check

__all__ = ["ENV", "FACTOR", "Plan", "apply", "busy_cores", "check_processes", "check_threads", "logical_cores",
           "physical_cores", "plan", "resolve", "restoring", "using"]

ENV = "DIPNET_THREADS"  # in a child's environment: the threads its launching dipnet process decided
FACTOR = 4  # the most threads per process (and processes with --oversubscribe) per logical core
_decided: contextvars.ContextVar[int | None] = contextvars.ContextVar("dipnet_threads", default=None)


def logical_cores() -> int:
    """Logical CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def physical_cores() -> int:
    """Physical cores this process may use (hyperthread siblings counted once)."""
    usable = logical_cores()
    try:
        pairs = set()
        core = phys = None
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "physical id":
                    phys = value.strip()
                elif key == "core id":
                    core = value.strip()
                elif not line.strip() and core is not None:
                    pairs.add((phys, core))
                    core = phys = None
        if core is not None:
            pairs.add((phys, core))
        return max(1, min(usable, len(pairs) or usable))
    except OSError:
        return max(1, usable)


def busy_cores() -> int:
    """Cores other work keeps busy: the larger of the 1-minute load average and the processes
    runnable right now (/proc/loadavg, this one not counted), since the average lags behind a
    job that has just started."""
    busy = 0
    try:
        with open("/proc/loadavg", encoding="ascii") as fh:
            fields = fh.read().split()
        busy = max(round(float(fields[0])), int(fields[3].split("/")[0]) - 1)
    except (OSError, ValueError, IndexError):
        if hasattr(os, "getloadavg"):
            busy = round(os.getloadavg()[0])
    return max(0, busy)


def check_threads(value: Any, where: str = "--threads") -> int | None:
    """``value`` as a thread count (None passes): an integer from 1 to ``FACTOR`` x the logical cores."""
    n = check(value, int | None, where, Limits(ge=1))
    bound = FACTOR * logical_cores()
    if n is not None and n > bound:
        raise ConfigError(f"{where} {n} is more than this machine can use: at most {bound} ({FACTOR} x its "
                          f"{logical_cores()} logical cores)")
    return n


def check_processes(value: Any, where: str = "--nproc", oversubscribe: bool = False) -> int:
    """``value`` as a number of local processes: at most the logical cores, or ``FACTOR`` x them
    with ``oversubscribe``."""
    n = check(value, int, where, Limits(ge=1))
    cores = logical_cores()
    if n > cores and not oversubscribe:
        raise ConfigError(f"{where} {n} is more processes than this machine's {cores} logical cores: use at most "
                          f"{cores}, or pass --oversubscribe to run up to {FACTOR * cores}")
    if n > FACTOR * cores:
        raise ConfigError(f"{where} {n} is more than {FACTOR} x this machine's {cores} logical cores ({FACTOR * cores}), "
                          "even with --oversubscribe")
    return n


@dataclass(frozen=True)
class Plan:
    """The decision for a tree of ``processes`` processes on ``cores`` physical cores, ``busy`` of
    them with other work: ``threads`` torch threads in each process."""

    threads: int
    processes: int
    cores: int
    busy: int

    @property
    def idle(self) -> int:
        return max(0, self.cores - self.busy)

    @property
    def oversubscribed(self) -> bool:
        """More threads than idle physical cores, beyond one thread per process on distinct cores."""
        return self.threads * self.processes > max(self.idle, min(self.processes, self.cores))

    def warning(self) -> str:
        per = f"{self.processes} processes x {self.threads} threads" if self.processes > 1 else f"{self.threads} threads"
        fix = (f"try --threads {max(1, self.idle // self.processes)}" if self.threads > 1
               else f"use at most {self.cores} processes")
        return (f"dipnet: warning: {per} on {self.idle} idle physical core(s) of {self.cores} ({self.busy} busy with "
                f"other work); each step will wait for the others: {fix}")


def plan(requested: int | None, processes: int = 1, *, cores: int | None = None, busy: int | None = None) -> Plan:
    """Threads per process for ``processes`` processes: ``requested``, else the idle physical cores
    divided among the processes (at least 1). ``cores`` and ``busy`` default to this machine's."""
    cores = physical_cores() if cores is None else cores
    busy = busy_cores() if busy is None else busy
    threads = requested if requested is not None else max(1, (cores - busy) // max(1, processes))
    return Plan(threads, processes, cores, busy)


def _inherited() -> int | None:
    """The threads decided for this process by an enclosing :func:`using`/:func:`apply` or, in a child,
    by the dipnet process that started it (:data:`ENV`)."""
    if _decided.get() is not None:
        return _decided.get()
    raw = os.environ.get(ENV, "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else None


def resolve(requested: Any = None, processes: int | None = None, *, warn: bool = True, where: str = "--threads") -> int:
    """The torch threads for this process: ``requested`` (checked), else what was decided for it
    (:func:`_inherited`), else :func:`plan`'s share for ``processes`` processes (default: torchrun's
    ``LOCAL_WORLD_SIZE``, else 1). Prints the oversubscription warning when this call decides for
    the tree (nothing was decided before it; under torchrun, local rank 0 alone) and ``warn``."""
    requested = check_threads(requested, where)
    inherited = _inherited()
    if inherited is not None:
        return requested if requested is not None else inherited
    if processes is None:
        local = os.environ.get("LOCAL_WORLD_SIZE", "")
        processes = int(local) if local.isdigit() else 1
    decision = plan(requested, max(1, processes))
    if warn and decision.oversubscribed and os.environ.get("LOCAL_RANK", "0") in ("", "0"):
        print(decision.warning(), file=sys.stderr, flush=True)
    return decision.threads


def _set(threads: int) -> None:
    torch.set_num_threads(threads)  # the one place dipnet sets torch's threads


def apply(requested: Any = None, processes: int | None = None, *, warn: bool = True, where: str = "--threads") -> int:
    """:func:`resolve` and keep the threads for this process (one dipnet owns: a worker, a rank)."""
    threads = resolve(requested, processes, warn=warn, where=where)
    _decided.set(threads)
    _set(threads)
    return threads


@contextlib.contextmanager
def restoring() -> Iterator[None]:
    """Restore torch's threads and the decision in force on exit (a command's :func:`apply`)."""
    before, token = torch.get_num_threads(), _decided.set(_decided.get())
    try:
        yield
    finally:
        _decided.reset(token)
        _set(before)


@contextlib.contextmanager
def using(requested: Any = None, processes: int | None = None, *, warn: bool = True,
          where: str = "--threads") -> Iterator[int]:
    """:func:`apply` for the duration of the block (a library call): torch's threads and the
    decision are restored on exit. Yields the threads."""
    with restoring():
        yield apply(requested, processes, warn=warn, where=where)
