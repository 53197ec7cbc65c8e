"""Shared timing helper of the benchmarks: interleaved repetitions, medians (robust to a shared machine)."""
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
