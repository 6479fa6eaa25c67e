"""Latency statistics every backend shares: one summary of timed runs (median, p90, spread).

Each runtime collects run times its own way (wall clock around a CPU session call, CUDA events
around a GPU launch); :func:`summarize_times` turns them into a :class:`Latency` the same way
for all, so figures from different backends compare like with like (DESIGN.md, contract 6).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Latency:
    """Latency of one model at one batch size.

    Attributes:
        median_ms: Median wall time of one run, in milliseconds.
        p90_ms: 90th percentile, in milliseconds.
        iqr_ms: Spread: interquartile range (p75 - p25) of the runs, in milliseconds.
        batch_size: Inputs per run.
        threads: Intra-op CPU threads (0 on a GPU).
        runs: Timed runs after warm-up.
    """

    median_ms: float
    p90_ms: float
    iqr_ms: float
    batch_size: int
    threads: int
    runs: int

    @property
    def throughput(self) -> float:
        """Inputs per second at the median latency."""
        return self.batch_size / (self.median_ms / 1000.0)

    def as_dict(self) -> dict:
        return {**asdict(self), "throughput": self.throughput}


def summarize_times(times_ms: Sequence[float], batch_size: int, threads: int) -> Latency:
    """Median, p90 and interquartile range of run times.

    Args:
        times_ms: One entry per timed run, in milliseconds (at least one).
        batch_size: Inputs per run.
        threads: Intra-op threads the runtime used (0 for a GPU).

    Raises:
        ValueError: If ``times_ms`` is empty.
    """
    if len(times_ms) == 0:
        raise ValueError("summarize_times needs at least one timed run")
    values = np.asarray(times_ms, dtype=np.float64)
    p25, median, p75, p90 = np.percentile(values, [25, 50, 75, 90])
    return Latency(
        median_ms=float(median),
        p90_ms=float(p90),
        iqr_ms=float(p75 - p25),
        batch_size=batch_size,
        threads=threads,
        runs=len(values),
    )


def time_calls(
    call: Callable[[], object], warmup: int = 10, runs: int = 50, min_seconds: float = 0.0
) -> list[float]:
    """Wall-clock milliseconds of ``call()``, after ``warmup`` untimed calls.

    Args:
        call: One synchronous run of the model.
        warmup: Untimed calls first.
        runs: Timed calls (at least).
        min_seconds: Keep timing until this much time has passed.

    Raises:
        ValueError: If ``runs < 1`` or ``warmup < 0``.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0; got runs={runs}, warmup={warmup}")
    for _ in range(warmup):
        call()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < runs or time.perf_counter() - started < min_seconds:
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


def default_threads() -> int:
    """All cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
