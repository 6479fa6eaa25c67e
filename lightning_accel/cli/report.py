"""What the main job and the benchmarks report per model: accuracy, size, cost, latency."""

from __future__ import annotations

import gzip
import json
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_accel.backends.onnxruntime import latency
from lightning_accel.export.onnx import to_onnx
from lightning_accel.utilities.files import atomic_write
from lightning_accel.utilities.model_stats import model_stats

REFERENCE_RUNTIME = "onnxruntime"  # every runtime is also timed against this one's fp32 baseline


@dataclass
class RuntimeFigures:
    """One model on one CPU runtime: verification, integer kernels, latency against two baselines.

    Attributes:
        runtime: Registry name, e.g. ``"openvino"``.
        latency_ms: Median latency by batch size, in milliseconds.
        speedup: Against the same runtime's fp32 baseline (the table's first row), by batch
            size: the median of per-round ratios from alternating rounds (1.0 for the baseline).
        speedup_iqr: Those ratios' 25th and 75th percentiles.
        vs_onnxruntime_fp32: Against ONNX Runtime's fp32 baseline, timed in alternating rounds
            the same way: compression and runtime together (for the baseline row on another
            runtime: the runtime alone, the same fp32 file).
        vs_onnxruntime_fp32_iqr: Those ratios' 25th and 75th percentiles.
        integer_ops: Convolutions/matmuls executed on integer kernels and in all (ONNX
            Runtime's optimized graph; OpenVINO's executed graph), ``None`` if not reported.
        verification: :meth:`~lightning_accel.export.verify.Verification.as_dict` of the
            comparison with PyTorch on real images, ``None`` if not verified.
        error: Why the runtime could not compile or run this file (the file is kept).
    """

    runtime: str
    latency_ms: dict[int, float] = field(default_factory=dict)
    speedup: dict[int, float] = field(default_factory=dict)
    speedup_iqr: dict[int, tuple[float, float]] = field(default_factory=dict)
    vs_onnxruntime_fp32: dict[int, float] = field(default_factory=dict)
    vs_onnxruntime_fp32_iqr: dict[int, tuple[float, float]] = field(default_factory=dict)
    integer_ops: tuple[int, int] | None = None
    verification: dict[str, Any] | None = None
    error: str | None = None


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
        runtimes: Per runtime (``"onnxruntime"``, ``"openvino"``): verification, integer
            kernels and latency against both baselines; empty when only ``latency_ms`` was
            measured. ``latency_ms``/``speedup`` above stay ONNX Runtime's.
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
    runtimes: dict[str, RuntimeFigures] = field(default_factory=dict)


def measure_model(
    name: str,
    model: nn.Module,
    accuracy: float,
    example_input: Tensor,
    onnx_path: Path,
    batch_sizes: tuple[int, ...] = (1, 64),
    threads: int | None = None,
    runs: int = 50,
    runtimes: Sequence[str] = (),
    verify_inputs: Tensor | None = None,
) -> ModelReport:
    """Export ``model`` to ONNX and measure its size and ONNX Runtime latency.

    With ``runtimes``, the file is also compiled for each of them: the integer kernels it runs
    are counted and, with ``verify_inputs``, its outputs are compared with PyTorch's (int8
    tolerance for a Q/DQ graph, else fp32). A runtime that cannot compile or run the file gets
    an ``error`` in :attr:`ModelReport.runtimes`; the file is kept.

    Args:
        name: Row label, e.g. ``"dense"`` or ``"structured 50%"``.
        model: The model to export and measure.
        accuracy: Its top-1 test accuracy, in percent (copied into the row).
        example_input: One input batch, e.g. ``[1, 1, 28, 28]``, for export and MAC counting.
        onnx_path: Where the ONNX file is written (overwritten if present).
        batch_sizes: Batch sizes to time, each at least 1.
        threads: ONNX Runtime intra-op threads; ``None``: all cores.
        runs: Timed runs per batch size, at least 1 (timing also lasts at least one second).
        runtimes: Registered CPU runtimes to compile, count and verify on, e.g.
            ``("onnxruntime", "openvino")``.
        verify_inputs: Real inputs, e.g. ``[256, 1, 28, 28]`` test images, to verify on.

    Returns:
        The row, with the median latency in milliseconds per batch size.

    Raises:
        ValueError: If a batch size or ``runs`` is below 1.
    """
    stats = model_stats(model, example_input)
    to_onnx(model, example_input, onnx_path)
    data = onnx_path.read_bytes()
    row = ModelReport(
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
    for runtime in runtimes:
        row.runtimes[runtime] = check_on_runtime(runtime, model, onnx_path, verify_inputs, threads)
    return row


def check_on_runtime(
    runtime: str,
    model: nn.Module,
    onnx_path: Path,
    verify_inputs: Tensor | None,
    threads: int | None = None,
) -> RuntimeFigures:
    """Compile ``onnx_path`` for ``runtime``, count its integer kernels, verify it on real inputs.

    Args:
        runtime: A registered CPU runtime, e.g. ``"openvino"``.
        model: The PyTorch model the file was exported from (run in eval mode for reference).
        onnx_path: The exported file.
        verify_inputs: Real inputs, e.g. ``[256, 1, 28, 28]``; ``None``: no verification.
        threads: Runtime intra-op threads; ``None``: all cores.

    Returns:
        The figures so far (no latency); ``error`` set if the runtime could not compile or run
        the file.
    """
    from lightning_accel.backends import get_backend
    from lightning_accel.backends.onnxruntime import operator_counts
    from lightning_accel.export.compare import integer_ops
    from lightning_accel.export.verify import compare_outputs

    backend = get_backend(runtime)
    figures = RuntimeFigures(runtime)
    try:
        with tempfile.TemporaryDirectory(prefix="lightning-accel-check-") as tmp:
            compiled = backend.compile(onnx_path, Path(tmp), threads=threads)
            figures.integer_ops = integer_ops(dict(compiled.info))
            if verify_inputs is not None:
                quantized = operator_counts(onnx_path).get("QuantizeLinear", 0) > 0
                precision = backend.verification_precision(quantized)
                model.eval()
                with torch.no_grad():
                    reference = model(verify_inputs).numpy()
                output = compiled.run(verify_inputs.numpy())
                check = compare_outputs(reference, output, precision, backend.tolerance(precision))
                figures.verification = check.as_dict()
    except RuntimeError as err:  # e.g. a graph the runtime cannot read: reported, file kept
        figures.error = str(err)
    return figures


def time_against_baseline(
    rows: list[ModelReport],
    baseline: ModelReport,
    threads: int | None = None,
    runs: int = 50,
    runtimes: Sequence[str] = (REFERENCE_RUNTIME,),
) -> None:
    """Time each row against the baseline in alternating rounds; fill its speedup and spread.

    Each row's ONNX file and the baseline's are run in ONNX Runtime, round by round in
    alternating order (:func:`~lightning_accel.backends.timing.compare_latency`), so a busy
    machine's drift lands on both; ``latency_ms`` becomes the median of those runs. Every other
    runtime in ``runtimes`` times each row twice the same way: against its own compile of the
    baseline (the compression's speedup on that runtime) and against ONNX Runtime's baseline
    (compression and runtime together; for the baseline row, the runtime alone), with ONNX
    Runtime's threads stopping their spin when a run returns (``stop_spinning_after_run``),
    since threads left spinning by one runtime slow the other in the same process. Those
    figures go to :attr:`ModelReport.runtimes`.

    Args:
        rows: Rows from :func:`measure_model` (their ``onnx_path`` set); changed in place.
        baseline: The row they are compared with (its own speedup is 1).
        threads: Runtime intra-op threads; ``None``: all cores.
        runs: Timed runs per side and batch size.
        runtimes: CPU runtimes to time on; ONNX Runtime, the reference, is always timed.
    """
    from lightning_accel.backends import get_backend
    from lightning_accel.backends.timing import compare_latency, default_threads
    from lightning_accel.export.bench import random_onnx_input

    n_threads = threads or default_threads()
    order = [REFERENCE_RUNTIME] + [r for r in runtimes if r != REFERENCE_RUNTIME]
    with tempfile.TemporaryDirectory(prefix="lightning-accel-report-") as tmp:
        reference = get_backend(REFERENCE_RUNTIME).compile(
            Path(baseline.onnx_path), Path(tmp) / "baseline", threads=threads
        )
        # Timed beside another runtime, ONNX Runtime's threads must stop spinning when a run
        # returns: left spinning, they keep the cores busy and slow the other runtime's runs.
        quiet_reference = get_backend(REFERENCE_RUNTIME).compile(
            Path(baseline.onnx_path),
            Path(tmp) / "quiet",
            threads=threads,
            stop_spinning_after_run=True,
        )
        for runtime in order:
            backend = get_backend(runtime)
            figures_of = {
                id(row): row.runtimes.setdefault(runtime, RuntimeFigures(runtime)) for row in rows
            }
            base = reference
            if runtime != REFERENCE_RUNTIME:
                try:
                    base = backend.compile(
                        Path(baseline.onnx_path), Path(tmp) / runtime / "baseline", threads=threads
                    )
                except RuntimeError as err:  # the other runtimes still report
                    for row in rows:
                        figures_of[id(row)].error = figures_of[id(row)].error or str(err)
                    continue
            for number, row in enumerate(rows):
                figures = figures_of[id(row)]
                if figures.error:
                    continue
                try:
                    model = base
                    if row is not baseline:
                        model = backend.compile(
                            Path(row.onnx_path), Path(tmp) / runtime / str(number), threads=threads
                        )
                except RuntimeError as err:
                    figures.error = str(err)
                    continue
                for b in sorted(row.latency_ms):
                    inputs = random_onnx_input(Path(row.onnx_path), b)
                    if row is baseline:
                        figures.speedup[b] = 1.0
                        figures.latency_ms[b] = row.latency_ms[b]
                    else:
                        own = compare_latency(model, base, inputs, b, runs, threads=n_threads)
                        figures.latency_ms[b] = own.model.median_ms
                        figures.speedup[b] = own.speedup
                        figures.speedup_iqr[b] = (own.speedup_p25, own.speedup_p75)
                        if own.warning:
                            row.timing_warnings.append(f"{row.name} {runtime} @b{b}: {own.warning}")
                    if runtime == REFERENCE_RUNTIME:
                        figures.vs_onnxruntime_fp32[b] = figures.speedup[b]
                        if b in figures.speedup_iqr:
                            figures.vs_onnxruntime_fp32_iqr[b] = figures.speedup_iqr[b]
                        continue
                    cross = compare_latency(
                        model, quiet_reference, inputs, b, runs, threads=n_threads
                    )
                    figures.vs_onnxruntime_fp32[b] = cross.speedup
                    figures.vs_onnxruntime_fp32_iqr[b] = (cross.speedup_p25, cross.speedup_p75)
                    if row is baseline:
                        figures.latency_ms[b] = cross.model.median_ms
                if runtime == REFERENCE_RUNTIME:  # the row's own fields stay ONNX Runtime's
                    row.latency_ms = dict(figures.latency_ms)
                    row.speedup = dict(figures.speedup)
                    row.speedup_iqr = dict(figures.speedup_iqr)


def format_table(
    rows: list[ModelReport], baseline: ModelReport, runtimes: Sequence[str] | None = None
) -> str:
    """A Markdown table; speedups and size ratios are against ``baseline`` from the same run.

    Args:
        rows: The rows, timed (:func:`time_against_baseline`).
        baseline: The row speedups are against.
        runtimes: ``None``: one line per model with ONNX Runtime's figures. Runtime names:
            one line per model and runtime (:func:`format_runtime_table`).
    """
    if runtimes is not None:
        return format_runtime_table(rows, baseline, runtimes)
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


def _ratio(value: float | None, iqr: tuple[float, float] | None = None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}x" if iqr is None else f"{value:.2f}x ({iqr[0]:.2f}-{iqr[1]:.2f})"


def _verdict(figures: RuntimeFigures) -> str:
    check = figures.verification
    if check is None:
        return "-"
    if check["passed"]:
        return "pass"
    agreement = check.get("top1_agreement")
    return "FAIL" if agreement is None else f"FAIL ({agreement:.1%} top-1)"


def _int8_cell(figures: RuntimeFigures) -> str:
    if figures.integer_ops is None:
        return "n/a"
    integer, total = figures.integer_ops
    if integer == 0 and (figures.verification or {}).get("precision") == "fp32":
        return "- (float)"
    return f"{integer}/{total}"


def format_runtime_table(
    rows: list[ModelReport], baseline: ModelReport, runtimes: Sequence[str]
) -> str:
    """One line per model and runtime: each against its own fp32 baseline and ONNX Runtime's.

    "vs own fp32" is the compression's speedup on that runtime (the baseline row on the same
    runtime); "vs ORT fp32" is against ONNX Runtime's fp32 baseline: compression and runtime
    together, and on the baseline row the runtime alone (the same fp32 file). Both are medians
    of per-round ratios from alternating rounds, with their interquartile range.

    Args:
        rows: Rows timed by :func:`time_against_baseline` with these ``runtimes``.
        baseline: The fp32 row the speedups are against.
        runtimes: Runtime names in display order, e.g. ``("onnxruntime", "openvino")``.
    """
    from lightning_accel.backends import get_backend

    batch_sizes = sorted(baseline.latency_ms)
    header = ["model", "top-1 %", "params", "MACs", "ONNX MB", "runtime", "int8 ops", "verified"]
    for b in batch_sizes:
        header += [f"ms @b{b}", f"vs own fp32 @b{b}", f"vs ORT fp32 @b{b}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    errors = []
    for row in rows:
        stats = [
            f"{row.accuracy:.2f}",
            f"{row.params / 1e6:.2f}M",
            f"{row.macs / 1e6:.1f}M",
            f"{row.onnx_bytes / 1e6:.1f}",
        ]
        for number, runtime in enumerate(runtimes):
            figures = row.runtimes.get(runtime, RuntimeFigures(runtime))
            cells = [row.name, *(stats if number == 0 else [""] * len(stats))]
            cells += [get_backend(runtime).title, _int8_cell(figures), _verdict(figures)]
            if figures.error:
                errors.append(f"{row.name} on {runtime}: {figures.error.splitlines()[0][:200]}")
            for b in batch_sizes:
                ms = figures.latency_ms.get(b)
                cells += [
                    "n/a" if ms is None else f"{ms:.2f}",
                    _ratio(figures.speedup.get(b), figures.speedup_iqr.get(b)),
                    _ratio(
                        figures.vs_onnxruntime_fp32.get(b), figures.vs_onnxruntime_fp32_iqr.get(b)
                    ),
                ]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append(
        "vs own fp32: against the same runtime's fp32 baseline (the compression's effect); "
        "vs ORT fp32: against ONNX Runtime's fp32 baseline (compression and runtime together; "
        "on the baseline row, the runtime alone). Medians of per-round ratios (interquartile "
        "range), each pair timed in alternating rounds. int8 ops: convolutions/matmuls on "
        "integer kernels / all; verified: against PyTorch on real test images"
    )
    lines += [f"error: {e}" for e in errors]
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
