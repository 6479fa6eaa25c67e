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


# ---------------------------------------------------------------- candidate against baseline
# A ratio whose per-round spread (IQR / median) exceeds this is flagged as not to be trusted.
RATIO_SPREAD_LIMIT = 0.10
# A side whose p90 exceeds its median by more than this factor is flagged too.
TAIL_LIMIT = 1.5


@dataclass(frozen=True)
class LatencyComparison:
    """A candidate and a baseline timed in alternating rounds, and the speedup with its spread.

    Attributes:
        model: The candidate's latency over all its timed runs.
        baseline: The baseline's latency over all its timed runs.
        speedup: Median over rounds of ``baseline median / candidate median`` in that round.
        speedup_p25: 25th percentile of the per-round ratios.
        speedup_p75: 75th percentile of the per-round ratios.
        rounds: Rounds timed; each times both sides, in alternating order.
        warning: Why the figure cannot be trusted (see :func:`spread_warning`), or ``None``.
    """

    model: Latency
    baseline: Latency
    speedup: float
    speedup_p25: float
    speedup_p75: float
    rounds: int
    warning: str | None

    @property
    def trusted(self) -> bool:
        """Whether the spread stayed within the limits of :func:`spread_warning`."""
        return self.warning is None

    def as_row(self) -> dict[str, object]:
        """The figures as one JSON-ready row (times in ms), as the summaries store them."""
        return {
            "model_ms": self.model.median_ms,
            "model_p90_ms": self.model.p90_ms,
            "model_iqr_ms": self.model.iqr_ms,
            "baseline_ms": self.baseline.median_ms,
            "baseline_p90_ms": self.baseline.p90_ms,
            "baseline_iqr_ms": self.baseline.iqr_ms,
            "speedup": self.speedup,
            "speedup_p25": self.speedup_p25,
            "speedup_p75": self.speedup_p75,
            "rounds": self.rounds,
            "runs": self.model.runs,
            "throughput": self.model.throughput,
            "trusted": self.trusted,
            "warning": self.warning,
        }


def spread_warning(
    model: Latency, baseline: Latency, ratio_p25: float, ratio: float, ratio_p75: float
) -> str | None:
    """Why a speedup cannot be trusted, or ``None``.

    The rule (in the spirit of trtexec's "unstable" coefficient-of-variance warning and
    benchmark_app's spread report): the per-round ratios' interquartile range exceeds
    :data:`RATIO_SPREAD_LIMIT` (10%) of their median, or either side's p90 exceeds
    :data:`TAIL_LIMIT` (1.5) times its median. Either means the machine's load changed while
    timing: rerun on an idle machine, with ``threads`` fixed, or with more runs.

    Args:
        model: The candidate's latency.
        baseline: The baseline's latency.
        ratio_p25: 25th percentile of the per-round speedups.
        ratio: Their median (the reported speedup).
        ratio_p75: Their 75th percentile.

    Returns:
        One line saying what is too wide and what to do, or ``None`` when the figure holds.
    """
    problems = []
    if ratio > 0 and (ratio_p75 - ratio_p25) / ratio > RATIO_SPREAD_LIMIT:
        problems.append(
            f"the speedup varied {ratio_p25:.2f}x-{ratio_p75:.2f}x between rounds "
            f"(IQR over {RATIO_SPREAD_LIMIT:.0%} of {ratio:.2f}x)"
        )
    for side, figures in (("model", model), ("baseline", baseline)):
        if figures.p90_ms > TAIL_LIMIT * figures.median_ms:
            problems.append(
                f"the {side}'s p90 {figures.p90_ms:.3f} ms is over {TAIL_LIMIT}x its median "
                f"{figures.median_ms:.3f} ms"
            )
    if not problems:
        return None
    return (
        "timing is unstable, do not trust this speedup: "
        + "; ".join(problems)
        + " (a busy machine; rerun when idle, with --threads fixed or more --runs)"
    )


def compare_latency(
    model: object,
    baseline: object,
    inputs: object = None,
    batch_size: int = 1,
    runs: int = 50,
    rounds: int = 10,
    warmup: int = 5,
    threads: int = 0,
) -> LatencyComparison:
    """Time a candidate and a baseline in alternating rounds; the speedup with its spread.

    Timing one model after the other puts any drift of a shared machine (another job
    starting, clocks changing) on one side only. Here each round times both, in the order
    model-baseline, then baseline-model in the next round (ABBA), so drift lands on both;
    each round gives a ratio, and the speedup is the median ratio with its quartiles.

    Args:
        model: The candidate: an object with ``run(inputs)`` (a compiled model of any backend)
            or a callable taking no arguments.
        baseline: The baseline, the same way.
        inputs: One batch for ``run`` (e.g. a numpy array of shape ``(batch_size, ...)``);
            unused for callables.
        batch_size: Inputs per run (for throughput).
        runs: Timed runs per side in all (at least ``rounds``; split evenly over rounds).
        rounds: Rounds (at least 1; more rounds, a finer spread).
        warmup: Untimed runs per side first.
        threads: Intra-op threads the runtime uses, recorded (0 on a GPU).

    Returns:
        The :class:`LatencyComparison`; its ``warning`` says when the spread is too wide.

    Raises:
        ValueError: If ``runs``, ``rounds`` or ``warmup`` is out of range, or a model has
            neither ``run`` nor is callable.
    """
    if rounds < 1 or runs < 1 or warmup < 0:
        raise ValueError(
            f"runs and rounds must be >= 1 and warmup >= 0; got runs={runs}, rounds={rounds}, "
            f"warmup={warmup}"
        )
    rounds = min(rounds, runs)
    per_round = -(-runs // rounds)  # ceil: at least `runs` in all
    calls = (_as_call(model, inputs, "model"), _as_call(baseline, inputs, "baseline"))
    for call in calls:
        for _ in range(warmup):
            call()
    times: tuple[list[float], list[float]] = ([], [])
    ratios = []
    for number in range(rounds):
        order = (0, 1) if number % 2 == 0 else (1, 0)
        medians = [0.0, 0.0]
        for side in order:
            measured = time_calls(calls[side], warmup=0, runs=per_round)
            times[side].extend(measured)
            medians[side] = float(np.median(measured))
        ratios.append(medians[1] / medians[0] if medians[0] > 0 else float("inf"))
    model_latency = summarize_times(times[0], batch_size, threads)
    baseline_latency = summarize_times(times[1], batch_size, threads)
    p25, ratio, p75 = (float(v) for v in np.percentile(ratios, [25, 50, 75]))
    return LatencyComparison(
        model=model_latency,
        baseline=baseline_latency,
        speedup=ratio,
        speedup_p25=p25,
        speedup_p75=p75,
        rounds=rounds,
        warning=spread_warning(model_latency, baseline_latency, p25, ratio, p75),
    )


def _as_call(model: object, inputs: object, name: str) -> Callable[[], object]:
    run = getattr(model, "run", None)
    if callable(run):
        if inputs is None:
            raise ValueError(f"compare_latency: {name} has run(inputs); pass inputs=<one batch>")
        return lambda: run(inputs)
    if callable(model):
        return model
    raise ValueError(
        f"compare_latency: {name} must have run(inputs) or be callable; got {type(model).__name__}"
    )


def timing_batch(example: np.ndarray, batch_size: int) -> np.ndarray:
    """A batch of ``batch_size`` inputs made by repeating ``example``'s rows (dtype kept).

    Args:
        example: At least one input, batch first, e.g. a validation batch of shape (N, C, H, W).
        batch_size: Rows wanted.
    """
    return np.resize(example, (batch_size, *example.shape[1:])).astype(example.dtype, copy=False)
