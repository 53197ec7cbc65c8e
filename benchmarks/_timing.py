"""Shared timing helpers of the benchmarks: interleaved repetitions, medians (robust to a shared
machine), and the saved-activation count that stands in for peak memory."""
from __future__ import annotations

import statistics
import time
from typing import Callable


def interleaved(fns: dict[str, Callable[[], object]], reps: int, inner: int = 1, warmup: int = 0) -> dict[str, float]:
    """Median seconds per call of each function, the functions timed in turn ``reps`` times
    (``inner`` calls per timing), so that load on the machine hits all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t = time.perf_counter()
            for _ in range(inner):
                fn()
            times[k].append((time.perf_counter() - t) / inner)
    return {k: statistics.median(v) for k, v in times.items()}


def paired(fns: dict[str, Callable[[], object]], baseline: str, reps: int, inner: int = 1, warmup: int = 0,
           clock: Callable[[], float] = time.perf_counter) -> tuple[dict[str, float], dict[str, float]]:
    """(median seconds per call, median ratio to ``baseline``): each round times the baseline right
    before each other function, so a ratio compares neighbouring timings and the slow drifts of a
    shared machine's speed cancel (the ratio of two overall medians keeps them)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()

    def timed(fn: Callable[[], object]) -> float:
        t = clock()
        for _ in range(inner):
            fn()
        return (clock() - t) / inner

    times: dict[str, list[float]] = {k: [] for k in fns}
    ratios: dict[str, list[float]] = {k: [] for k in fns if k != baseline}
    for _ in range(reps):
        for k, fn in fns.items():
            if k == baseline:
                continue
            b = timed(fns[baseline])
            v = timed(fn)
            times[baseline].append(b)
            times[k].append(v)
            ratios[k].append(v / b)
    medians = {k: statistics.median(v) for k, v in times.items()}
    return medians, {baseline: 1.0, **{k: statistics.median(v) for k, v in ratios.items()}}


def saved_mb(fn: Callable[[], object], model: object = None) -> float:
    """MiB that autograd keeps for backward during ``fn`` (the CPU allocator's peak is not visible
    to tracemalloc: torch allocates outside Python), counted by a saved-tensor hook: each distinct
    tensor memory once (a ReLU's output that the next layer keeps too counts once), the
    parameters of ``model`` excluded. dipnet's own saved-tensor hooks pass what they keep on to
    this one, so a recipe that rebuilds a tensor counts only what it holds."""
    import torch

    params = {p.data_ptr() for p in model.parameters()} if model is not None else set()
    seen: set[tuple[int, int]] = set()

    def pack(t: "torch.Tensor") -> "torch.Tensor":
        if t.data_ptr() not in params:
            seen.add((t.data_ptr(), t.numel() * t.element_size()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(n for _, n in seen) / 2**20
