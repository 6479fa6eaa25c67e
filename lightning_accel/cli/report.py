"""What the main job and the benchmarks report per model: accuracy, size, cost, latency."""

from __future__ import annotations

import gzip
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from lightning_accel.backends.onnxruntime import latency
from lightning_accel.export.onnx import to_onnx
from lightning_accel.utilities.files import atomic_write
from lightning_accel.utilities.model_stats import model_stats


@dataclass
class ModelReport:
    """One row of a results table.

    Attributes:
        name: Row label, e.g. ``"dense"`` or ``"structured 50%"``.
        accuracy: Top-1 accuracy on the test set, in percent.
        params: Parameters (dense count).
        nonzero_params: Parameters that are not zero.
        macs: Multiply-accumulates per input.
        onnx_bytes: Size of the ONNX file.
        gzip_bytes: Size of the gzip-compressed ONNX file (what zeroed weights buy).
        latency_ms: Median ONNX Runtime latency by batch size.
        onnx_path: The exported file.
        speedup: Against the table's baseline, by batch size: the median of per-round ratios
            from alternating rounds (see :func:`time_against_baseline`); empty until timed so.
        speedup_iqr: The per-round ratios' 25th and 75th percentiles, by batch size.
        timing_warnings: Why a speedup cannot be trusted (the spread rule of
            :func:`lightning_accel.backends.timing.spread_warning`), one line each.
    """

    name: str
    accuracy: float
    params: int
    nonzero_params: int
    macs: int
    onnx_bytes: int
    gzip_bytes: int
    latency_ms: dict[int, float] = field(default_factory=dict)
    onnx_path: str = ""
    speedup: dict[int, float] = field(default_factory=dict)
    speedup_iqr: dict[int, tuple[float, float]] = field(default_factory=dict)
    timing_warnings: list[str] = field(default_factory=list)


def measure_model(
    name: str,
    model: nn.Module,
    accuracy: float,
    example_input: Tensor,
    onnx_path: Path,
    batch_sizes: tuple[int, ...] = (1, 64),
    threads: int | None = None,
    runs: int = 50,
) -> ModelReport:
    """Export ``model`` to ONNX and measure its size and ONNX Runtime latency.

    Args:
        name: Row label, e.g. ``"dense"`` or ``"structured 50%"``.
        model: The model to export and measure.
        accuracy: Its top-1 test accuracy, in percent (copied into the row).
        example_input: One input batch, e.g. ``[1, 1, 28, 28]``, for export and MAC counting.
        onnx_path: Where the ONNX file is written (overwritten if present).
        batch_sizes: Batch sizes to time, each at least 1.
        threads: ONNX Runtime intra-op threads; ``None``: all cores.
        runs: Timed runs per batch size, at least 1 (timing also lasts at least one second).

    Returns:
        The row, with the median latency in milliseconds per batch size.

    Raises:
        ValueError: If a batch size or ``runs`` is below 1.
    """
    stats = model_stats(model, example_input)
    to_onnx(model, example_input, onnx_path)
    data = onnx_path.read_bytes()
    return ModelReport(
        name=name,
        accuracy=accuracy,
        params=stats.params,
        nonzero_params=stats.nonzero_params,
        macs=stats.macs,
        onnx_bytes=len(data),
        gzip_bytes=len(gzip.compress(data, compresslevel=6)),
        latency_ms={
            b: latency(onnx_path, b, threads=threads, runs=runs, min_seconds=1.0).median_ms
            for b in batch_sizes
        },
        onnx_path=str(onnx_path),
    )


def time_against_baseline(
    rows: list[ModelReport], baseline: ModelReport, threads: int | None = None, runs: int = 50
) -> None:
    """Time each row against the baseline in alternating rounds; fill its speedup and spread.

    Each row's ONNX file and the baseline's are run in ONNX Runtime, round by round in
    alternating order (:func:`~lightning_accel.backends.timing.compare_latency`), so a busy
    machine's drift lands on both; ``latency_ms`` becomes the median of those runs.

    Args:
        rows: Rows from :func:`measure_model` (their ``onnx_path`` set); changed in place.
        baseline: The row they are compared with (its own speedup is 1).
        threads: ONNX Runtime intra-op threads; ``None``: all cores.
        runs: Timed runs per side and batch size.
    """
    import tempfile

    from lightning_accel.backends import get_backend
    from lightning_accel.backends.timing import compare_latency, default_threads
    from lightning_accel.export.bench import random_onnx_input

    runtime = get_backend("onnxruntime")
    with tempfile.TemporaryDirectory(prefix="lightning-accel-report-") as tmp:
        base = runtime.compile(Path(baseline.onnx_path), Path(tmp) / "baseline", threads=threads)
        for number, row in enumerate(rows):
            if row is baseline:
                row.speedup = {b: 1.0 for b in row.latency_ms}
                continue
            model = runtime.compile(Path(row.onnx_path), Path(tmp) / str(number), threads=threads)
            for b in sorted(row.latency_ms):
                inputs = random_onnx_input(Path(row.onnx_path), b)
                result = compare_latency(
                    model, base, inputs, b, runs, threads=threads or default_threads()
                )
                row.latency_ms[b] = result.model.median_ms
                row.speedup[b] = result.speedup
                row.speedup_iqr[b] = (result.speedup_p25, result.speedup_p75)
                if result.warning:
                    row.timing_warnings.append(f"{row.name} @b{b}: {result.warning}")


def format_table(rows: list[ModelReport], baseline: ModelReport) -> str:
    """A Markdown table; speedups and size ratios are against ``baseline`` from the same run."""
    batch_sizes = sorted(baseline.latency_ms)
    header = ["model", "top-1 %", "params", "non-zero", "MACs", "ONNX MB", "gzip MB"]
    for b in batch_sizes:
        header += [f"ms @b{b}", f"speedup @b{b}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [
            row.name,
            f"{row.accuracy:.2f}",
            f"{row.params / 1e6:.2f}M",
            f"{row.nonzero_params / 1e6:.2f}M",
            f"{row.macs / 1e6:.1f}M",
            f"{row.onnx_bytes / 1e6:.1f}",
            f"{row.gzip_bytes / 1e6:.1f}",
        ]
        for b in batch_sizes:
            ms = row.latency_ms[b]
            if b in row.speedup and b in row.speedup_iqr:
                low, high = row.speedup_iqr[b]
                cells += [f"{ms:.2f}", f"{row.speedup[b]:.2f}x ({low:.2f}-{high:.2f})"]
            else:
                cells += [f"{ms:.2f}", f"{row.speedup.get(b, baseline.latency_ms[b] / ms):.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    if any(row.speedup_iqr for row in rows):
        lines.append(
            "speedup: median of per-round ratios (interquartile range), each model and the "
            "baseline timed in alternating rounds"
        )
    lines += [f"warning: {w}" for row in rows for w in row.timing_warnings]
    return "\n".join(lines)


def write_summary(path: Path, rows: list[ModelReport], extra: dict[str, Any]) -> None:
    """Write the rows and run settings as JSON.

    Args:
        path: The JSON file, written atomically (replaced if present).
        rows: The table rows, stored under ``"models"``.
        extra: Further top-level keys, e.g. ``{"config": ...}`` (a ``"models"`` key is replaced).
    """
    atomic_write(path, json.dumps({**extra, "models": [asdict(r) for r in rows]}, indent=2))
