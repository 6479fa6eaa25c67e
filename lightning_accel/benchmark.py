"""Latency measured in ONNX Runtime: warm-up, fixed threads, median of many runs."""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Latency:
    """Latency of one model at one batch size.

    Attributes:
        median_ms: Median wall time of one run, in milliseconds.
        p90_ms: 90th percentile, in milliseconds.
        batch_size: Inputs per run.
        threads: ONNX Runtime intra-op threads.
        runs: Timed runs after warm-up.
    """

    median_ms: float
    p90_ms: float
    batch_size: int
    threads: int
    runs: int

    @property
    def throughput(self) -> float:
        """Inputs per second at the median latency."""
        return self.batch_size / (self.median_ms / 1000.0)

    def as_dict(self) -> dict:
        return {**asdict(self), "throughput": self.throughput}


def default_threads() -> int:
    """All cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def ort_session(
    onnx_path: str | os.PathLike,
    threads: int | None = None,
    optimized_path: str | os.PathLike | None = None,
) -> Any:
    """A CPU ONNX Runtime session with full graph optimization and a fixed thread count.

    Args:
        onnx_path: The model.
        threads: Intra-op threads; defaults to all available cores.
        optimized_path: If given, ONNX Runtime writes its optimized graph there.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def latency(
    onnx_path: str | os.PathLike,
    batch_size: int = 1,
    threads: int | None = None,
    warmup: int = 10,
    runs: int = 50,
    min_seconds: float = 0.0,
) -> Latency:
    """Median latency of an ONNX model in ONNX Runtime on the CPU.

    Args:
        onnx_path: The model file; its first input's non-batch dimensions must be static.
        batch_size: Inputs per run (the batch dimension must be dynamic or equal to this).
        threads: Intra-op threads; defaults to all available cores.
        warmup: Untimed runs first.
        runs: Timed runs (at least).
        min_seconds: Keep timing until this much time has passed.

    Raises:
        FileNotFoundError: If ``onnx_path`` does not exist.
        ValueError: If ``batch_size``, ``warmup`` or ``runs`` is out of range.
    """
    if not Path(onnx_path).is_file():
        raise FileNotFoundError(f"No ONNX model at {onnx_path}. Export one with to_onnx() first.")
    if batch_size < 1 or runs < 1 or warmup < 0:
        raise ValueError(
            f"batch_size and runs must be >= 1 and warmup >= 0; got batch_size={batch_size}, "
            f"runs={runs}, warmup={warmup}"
        )
    session = ort_session(onnx_path, threads)
    feed = {session.get_inputs()[0].name: _random_input(session, batch_size)}
    for _ in range(warmup):
        session.run(None, feed)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < runs or time.perf_counter() - started < min_seconds:
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t0) * 1000.0)
    times.sort()
    return Latency(
        median_ms=statistics.median(times),
        p90_ms=times[min(len(times) - 1, int(0.9 * len(times)))],
        batch_size=batch_size,
        threads=session.get_session_options().intra_op_num_threads,
        runs=len(times),
    )


def _random_input(session: Any, batch_size: int) -> np.ndarray:
    meta = session.get_inputs()[0]
    dims = [d for d in meta.shape[1:] if isinstance(d, int)]
    if len(dims) != len(meta.shape) - 1:
        raise ValueError(
            f"Input {meta.name!r} has dynamic non-batch dimensions {meta.shape}; export with a "
            "fixed image size."
        )
    rng = np.random.default_rng(0)
    return rng.standard_normal((batch_size, *dims), dtype=np.float32)
