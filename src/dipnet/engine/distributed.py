"""Data-parallel training with torch.distributed: the process group, the global-batch sampler,
per-rank seeding, metric reductions and a local launcher.

A run started by ``torchrun`` (or ``dipnet train --nproc N``, which starts torchrun) finds
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` in its environment; :func:`setup` then joins the
process group (gloo on a CPU, NCCL on CUDA, one GPU per local rank) and the
:class:`~dipnet.engine.loop.Trainer` trains a :class:`torch.nn.parallel.DistributedDataParallel`
copy of its model. Nothing here replaces torch's machinery; it is the glue a training loop
needs around it (what torch leaves to the loop):

- **Sampler.** Every rank computes the same epoch permutation; each global batch of
  ``batch_size`` examples is cut into ``world_size`` contiguous parts, one per rank
  (:meth:`Distributed.shard`). The global batch size, the number of steps and the learning-rate
  schedule are those of a single-process run. DDP averages the ranks' gradients with equal
  weights, so a rank whose part is not ``batch_size / world_size`` long weights its loss by
  ``world_size * part / batch`` (``StepContext.loss_scale``): the average is then the gradient of
  the global batch's mean loss, exactly as in one process.
- **Noise.** Training noise (DIPNet's table offsets, RWP's weight noise, input noise,
  augmentations) comes from torch's global generator. Every rank seeds it with the same seed
  to build identical initial weights; a shared generator would then give every rank the same
  noise, so before each step a rank reseeds it from ``(seed, rank, step)`` (:func:`rank_seed`):
  independent across ranks, reproducible by the seed, and independent of the checkpoint's saved
  generator state, so a resumed run draws what an uninterrupted one draws.
- **Metrics.** The step loss is reduced to the global batch's mean every step (the divergence
  watch then decides the same on every rank); the component logs and the example-gradient
  count are summed over ranks at the end of an epoch; evaluation is split over the ranks and
  its sums reduced.
- **Files.** Rank 0 alone writes the run directory (atomically, as in one process); every rank
  reads the checkpoint on resume. A checkpoint records the world size that wrote it.

With one process (no launcher) every method here is the identity, and a run is bit-identical
to one before this module existed.
"""
from __future__ import annotations

import contextlib
import datetime
import gc
import os
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError
from . import threads as threads_policy

__all__ = ["Distributed", "LOOPBACK_ENV", "launch", "rank_seed", "scoped_environ", "setup", "spawn", "torchrun_args"]

# Keeps a single-machine group on the loopback interface (no traffic leaves the machine).
LOOPBACK_ENV = {"MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}
_MASK = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def rank_seed(seed: int, rank: int, step: int) -> int:
    """The generator seed of ``rank`` at ``step``: SplitMix64 (Steele et al. 2014) chained over
    the three numbers, so nearby triples give unrelated seeds (a 63-bit value for ``manual_seed``)."""
    h = 0
    for v in (seed, rank, step):
        h = _splitmix64(h ^ (int(v) & _MASK))
    return h >> 1


@dataclass
class Distributed:
    """Where this process stands in a data-parallel run (rank 0 of 1 without a launcher)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owned: bool = False  # this object initialized the process group (and destroys it on close)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_writer(self) -> bool:
        """Rank 0 writes the run directory, prints and shows progress."""
        return self.rank == 0

    def place(self, device: torch.device) -> torch.device:
        """One GPU per local rank: ``cuda`` (or any ``cuda:N``) becomes ``cuda:LOCAL_RANK``."""
        if not self.enabled or device.type != "cuda":
            return device
        if self.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"local rank {self.local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                              "start at most one process per GPU")
        torch.cuda.set_device(self.local_rank)
        return torch.device("cuda", self.local_rank)

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The module to train: DDP around ``model`` (whose parameters rank 0 broadcasts), or ``model``."""
        if not self.enabled:
            return model
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def shard(self, idx: torch.Tensor) -> tuple[torch.Tensor, float]:
        """This rank's contiguous part of the global batch ``idx`` and the weight of its loss
        (``world_size * part / batch``; 1 when the batch divides evenly). A rank left without an
        example (a last batch shorter than the world) runs one example at weight 0, so that its
        backward still meets the others' gradient reduction."""
        if not self.enabled:
            return idx, 1.0
        part = torch.tensor_split(idx, self.world_size)[self.rank]
        if part.numel() == 0:
            return idx[:1], 0.0
        return part, self.world_size * part.numel() / idx.numel()

    def seed_step(self, seed: int, step: int) -> None:
        """Seed torch's generators (CPU and CUDA) for this rank's ``step`` (no-op in one process)."""
        if self.enabled:
            torch.manual_seed(rank_seed(seed, self.rank, step))

    def sum(self, values: Sequence[float]) -> list[float]:
        """Element-wise sums over ranks (float64, so that counts stay exact)."""
        if not self.enabled:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return t.tolist()

    def batch_mean(self, value: float, n: int) -> float:
        """The global batch's mean loss from each rank's mean ``value`` over its ``n`` examples: the
        same number on every rank, so that decisions taken on it (divergence) agree."""
        if not self.enabled:
            return value
        total, count = self.sum([value * n, n])
        return total / count if count else value

    def reduce_epoch(self, logs: dict[str, float], example_grads_delta: int) -> tuple[dict[str, float], int]:
        """The epoch's component logs (mean over ranks; every rank logs the same keys) and the
        example-gradients spent by all ranks."""
        if not self.enabled:
            return logs, example_grads_delta
        keys = sorted(logs)
        out = self.sum([example_grads_delta, *(logs[k] for k in keys)])
        return {k: v / self.world_size for k, v in zip(keys, out[1:])}, int(round(out[0]))

    def evaluate(self, fn: Callable[..., dict[str, float]], model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 batch_size: int) -> dict[str, float]:
        """``fn(model, x, y, batch_size)`` (means) on this rank's part of ``(x, y)``, averaged over
        all ranks with each part's size as its weight: the single-process figures."""
        if not self.enabled:
            return fn(model, x, y, batch_size)
        parts = torch.tensor_split(torch.arange(x.shape[0], device=x.device), self.world_size)
        mine = parts[self.rank]
        n = mine.numel()
        local = fn(model, x[mine], y[mine], batch_size)
        keys = sorted(local)
        sums = self.sum([n, *(local[k] * n for k in keys)])
        total = max(sums[0], 1.0)
        return {k: v / total for k, v in zip(keys, sums[1:])}

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self, model: nn.Module) -> nn.Module:
        """Leave the process group if :func:`setup` joined it, and return ``model`` without its
        DDP wrapper then. The wrapper holds the group: one freed after the group, at interpreter
        exit, aborts the process ("terminate called without an active exception", measured in
        about 1 exit of 15), so it is dropped and collected first."""
        if not (self.owned and dist.is_initialized()):
            return model
        inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        del model
        gc.collect()
        dist.destroy_process_group()
        self.owned = False
        return inner

    def _comm_device(self) -> torch.device:
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer (set by torchrun)") from None


def setup(device: torch.device) -> Distributed:
    """Join the process group a launcher (torchrun) describes in the environment: gloo on a
    CPU, NCCL on CUDA. One process (no ``WORLD_SIZE``, or 1) joins nothing. A group the caller
    already initialized is used as it is."""
    if dist.is_available() and dist.is_initialized():
        return Distributed(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", dist.get_rank()))
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return Distributed()
    if not dist.is_available():
        raise ConfigError("this torch build has no torch.distributed; train in one process")
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and not dist.is_nccl_available():
        raise ConfigError("CUDA training on several processes needs NCCL, which this torch build lacks")
    loopback = backend == "gloo" and os.environ.get("MASTER_ADDR") in ("127.0.0.1", "localhost")
    with scoped_environ({"GLOO_SOCKET_IFNAME": "lo"} if loopback and "GLOO_SOCKET_IFNAME" not in os.environ else {}):
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=datetime.timedelta(minutes=10))
    return Distributed(rank, world, local, owned=True)


def torchrun_args(nproc: int, args: Sequence[str], module: str = "dipnet") -> list[str]:
    """torchrun's arguments for ``torchrun --standalone --nproc-per-node N -m MODULE ARGS``."""
    return ["--standalone", "--nproc-per-node", str(nproc), "-m", module, *args]


@contextlib.contextmanager
def scoped_environ(updates: Mapping[str, str], *, restore_all: bool = False) -> Iterator[None]:
    """``os.environ`` with ``updates`` for the duration of the block (for the processes started
    from this one's environment meanwhile), then as it was: the keys of ``updates``, or with
    ``restore_all`` every key (what the block itself wrote too)."""
    before = dict(os.environ)
    os.environ.update(updates)
    try:
        yield
    finally:
        for key in (set(os.environ) | set(before)) if restore_all else set(updates):
            if key not in before:
                os.environ.pop(key, None)
            elif os.environ.get(key) != before[key]:
                os.environ[key] = before[key]


@contextlib.contextmanager
def _kept_signal_handlers() -> Iterator[None]:
    """Give back the handlers of the signals torchrun's agent takes over (and keeps) for its processes."""
    names = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")
    saved = {sig: signal.getsignal(sig) for sig in (getattr(signal, n) for n in names if hasattr(signal, n))}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            if handler is not None:
                with contextlib.suppress(ValueError):  # not the main thread: nothing was changed
                    signal.signal(sig, handler)


def launch(nproc: int, args: Sequence[str], module: str = "dipnet", threads: int | None = None) -> int:
    """Run ``python -m MODULE ARGS`` on ``nproc`` local processes exactly as
    ``torchrun --standalone --nproc-per-node N -m MODULE ARGS`` does (torch's elastic agent,
    rendezvous on localhost, gloo kept on the loopback interface), and return the exit status:
    0, the processes' common exit status if they agree (2 for a user error), else 1. The
    agent's own report of a failure is left out: the processes print their errors themselves.

    Each process gets ``threads`` torch threads (default: its share of the idle physical cores),
    decided here once by the threads policy (:mod:`dipnet.engine.threads`, which warns here if
    they oversubscribe the cores) and handed to the processes in their environment. This
    process's environment and signal handlers are left as they were, and the agent's log folder
    is removed at the end."""
    import logging

    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    per_rank = str(threads_policy.resolve(threads, nproc))
    env = {**{k: v for k, v in LOOPBACK_ENV.items() if k not in os.environ},
           "OMP_NUM_THREADS": per_rank, threads_policy.ENV: per_rank}
    agent_log = logging.getLogger("torch.distributed.elastic")
    level = agent_log.level
    agent_log.setLevel(logging.CRITICAL)
    log_dir = tempfile.mkdtemp(prefix="dipnet-torchelastic-")
    try:
        with scoped_environ(env, restore_all=True), _kept_signal_handlers():  # the agent starts the processes
            torchrun.run(torchrun.parse_args(["--log-dir", log_dir, *torchrun_args(nproc, args, module)]))
    except ChildFailedError as exc:
        codes = {f.exitcode for f in exc.failures.values()}
        return codes.pop() if len(codes) == 1 and 0 < next(iter(codes)) < 128 else 1
    except SignalException:  # Ctrl-C: the agent has stopped the processes
        raise KeyboardInterrupt from None
    finally:
        agent_log.setLevel(level)
        shutil.rmtree(log_dir, ignore_errors=True)
    return 0


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawned(local_rank: int, fn: Callable[..., Any], world: int, env: dict[str, str], args: tuple) -> None:
    os.environ.update(env)  # this new process's own environment, as torchrun would give it
    os.environ.update({"RANK": str(local_rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(world),
                       "LOCAL_WORLD_SIZE": str(world)})
    threads_policy.apply(warn=False)
    fn(*args)


def spawn(fn: Callable[..., Any], nproc: int, *args: Any, timeout: float | None = None) -> None:
    """Run ``fn(*args)`` in ``nproc`` new local processes that find the torchrun environment
    (``RANK``, ``WORLD_SIZE``, loopback address, a free port), as ``torchrun --standalone``
    would start them; for tests, benchmarks and notebooks. ``fn`` must be importable (spawn).
    Raises if any process fails; every process has ended when this returns or raises."""
    import torch.multiprocessing as mp

    env = {**LOOPBACK_ENV, "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1", threads_policy.ENV: "1"}
    ctx = mp.start_processes(_spawned, args=(fn, nproc, env, args), nprocs=nproc, join=False, start_method="spawn")
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while not ctx.join(timeout=1.0):
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{nproc} spawned processes still running after {timeout:.0f} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
            p.join()
