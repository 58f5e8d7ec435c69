"""Timing helpers the benchmark scripts share: medians after a warm-up, runs interleaved."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Return the median wall time of ``fn`` over ``repeats`` calls, after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(fns: Sequence[Callable[[], object]], repeats: int) -> list[list[float]]:
    """Time ``fns`` in turn, ``repeats`` rounds after one warm-up each; return their times."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return times


def paired(a: Callable[[], object], b: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Time ``a`` and ``b`` alternately, so drift on a shared machine hits both alike."""
    ta, tb = interleaved((a, b), repeats)
    return statistics.median(ta), statistics.median(tb)
