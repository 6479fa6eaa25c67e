"""Export a model and its uncompressed baseline, compile both per backend, verify, time, compare.

The final export hook (:class:`~lightning_accel.callbacks.ExportOnFitEnd`) and the
``lightning-accel export`` command share this pipeline, so their summaries agree.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from lightning_accel.backends import compile_model
from lightning_accel.backends.onnxruntime import operator_counts
from lightning_accel.export import to_onnx
from lightning_accel.model_stats import model_stats
from lightning_accel.verify import compare_outputs

ExportPrecision = Literal["auto", "fp32", "fp16", "int8"]
PRECISIONS = ("auto", "fp32", "fp16", "int8")


def _silent(message: str) -> None:
    del message


@dataclass(frozen=True)
class ComparisonSettings:
    """How the model and its baseline are compiled, verified and timed.

    Attributes:
        backends: Runtimes to compile for, e.g. ``("onnxruntime",)``.
        batch_sizes: Batch sizes to time.
        verify: Compare the runtime's outputs with PyTorch's.
        benchmark: Time the model and the baseline.
        precision: Verification tolerance; ``"auto"``: int8 for Q/DQ graphs, fp16 for TensorRT
            float graphs, else fp32.
        threads: ONNX Runtime threads; default: all cores.
        latency_runs: Timed runs per latency figure.
    """

    backends: tuple[str, ...] = ("onnxruntime",)
    batch_sizes: tuple[int, ...] = (1, 64)
    verify: bool = True
    benchmark: bool = True
    precision: ExportPrecision = "auto"
    threads: int | None = None
    latency_runs: int = 50

    def verification_precision(self, backend: str, quantized: bool) -> str:
        if self.precision != "auto":
            return self.precision
        if quantized:
            return "int8"
        return "fp16" if backend == "tensorrt" else "fp32"


@dataclass
class Comparison:
    """The outcome of :func:`export_and_compare`.

    Attributes:
        summary: JSON-ready results per backend and batch size.
        errors: Backends that could not run, one line each (e.g. TensorRT without a GPU).
        mismatches: Verifications that failed, one line each.
        onnx_path: The exported model.
    """

    summary: dict[str, Any]
    errors: list[str]
    mismatches: list[str]
    onnx_path: Path


def export_and_compare(
    model: nn.Module,
    baseline: nn.Module | None,
    batches: Sequence[Tensor],
    dirpath: Path,
    settings: ComparisonSettings,
    progress: Callable[[str], None] = _silent,
) -> Comparison:
    """Export a model and its baseline to ONNX, then compile, verify and time both per backend.

    A backend that cannot run (e.g. TensorRT without a GPU) is reported in the summary under
    ``"error"`` and in :attr:`Comparison.errors`; the other backends still report.

    Args:
        model: The final model, on the CPU, in eval mode.
        baseline: The uncompressed model to compare against, or ``None``.
        batches: Inputs for verification; the first row of the first batch is the export example.
        dirpath: Folder for ONNX files and compiled artifacts.
        settings: Backends, batch sizes, tolerance and timing.
        progress: Called with a short line before each long step.
    """
    example = batches[0][:1]
    timings: dict[str, float] = {}
    started = time.perf_counter()
    progress("exporting the model to ONNX")
    model_onnx = to_onnx(model, example, dirpath / "model.onnx")
    baseline_onnx = None
    if baseline is not None:
        progress("exporting the baseline to ONNX")
        baseline_onnx = to_onnx(baseline, example, dirpath / "baseline.onnx")
    timings["export_s"] = time.perf_counter() - started
    with torch.no_grad():
        reference = np.concatenate([model(x).numpy() for x in batches])
    quantized = operator_counts(model_onnx).get("QuantizeLinear", 0) > 0

    summary: dict[str, Any] = {
        "model": {**model_stats(model, example).as_dict(), "onnx_bytes": model_onnx.stat().st_size},
        "backends": {},
        "timings": timings,
        "notes": runtime_notes(model),
    }
    if baseline is not None and baseline_onnx is not None:
        summary["baseline"] = {
            **model_stats(baseline, example).as_dict(),
            "onnx_bytes": baseline_onnx.stat().st_size,
        }
    outcome = Comparison(summary, errors=[], mismatches=[], onnx_path=model_onnx)
    for backend in settings.backends:
        try:
            entry, mismatch = _run_backend(
                backend,
                model_onnx,
                baseline_onnx,
                list(batches),
                reference,
                quantized,
                timings,
                dirpath,
                settings,
                progress,
            )
        except RuntimeError as err:  # e.g. TensorRT missing: the other backends still report
            entry, mismatch = {"error": str(err)}, None
            outcome.errors.append(str(err))
        summary["backends"][backend] = entry
        if mismatch:
            outcome.mismatches.append(mismatch)
    return outcome


def _run_backend(
    backend: str,
    model_onnx: Path,
    baseline_onnx: Path | None,
    batches: list[Tensor],
    reference: np.ndarray,
    quantized: bool,
    timings: dict[str, float],
    dirpath: Path,
    settings: ComparisonSettings,
    progress: Callable[[str], None],
) -> tuple[dict[str, Any], str | None]:
    progress(f"compiling for {backend}")
    compiled = compile_model(backend, model_onnx, dirpath / backend, threads=settings.threads)
    entry: dict[str, Any] = {
        "info": compiled.info,
        "artifacts": {k: str(v) for k, v in compiled.artifacts.items()},
    }
    problem = None
    if settings.verify:
        progress(f"verifying {backend} against PyTorch on {len(batches)} batches")
        started = time.perf_counter()
        output = np.concatenate([compiled.run(x.numpy()) for x in batches])
        result = compare_outputs(
            reference, output, settings.verification_precision(backend, quantized)
        )
        timings[f"verify_{backend}_s"] = time.perf_counter() - started
        entry["verification"] = result.as_dict()
        if not result.passed:
            problem = f"{backend} verification {result.describe()}"
    if settings.benchmark and baseline_onnx is not None:
        started = time.perf_counter()
        baseline = compile_model(
            backend, baseline_onnx, dirpath / backend / "baseline", threads=settings.threads
        )
        entry["latency"] = {}
        for batch_size in settings.batch_sizes:
            progress(f"timing {backend} at batch {batch_size}")
            model_ms = compiled.latency(batch_size, settings.latency_runs).median_ms
            base_ms = baseline.latency(batch_size, settings.latency_runs).median_ms
            entry["latency"][str(batch_size)] = {
                "model_ms": model_ms,
                "baseline_ms": base_ms,
                "speedup": base_ms / model_ms,
                "throughput": batch_size / (model_ms / 1000.0),
            }
        timings[f"benchmark_{backend}_s"] = time.perf_counter() - started
    return entry, problem


def runtime_notes(model: nn.Module) -> list[str]:
    """What the runtimes cannot do with this model's compression, stated plainly."""
    from lightning_accel.binarization import BINARY_LAYERS
    from lightning_accel.quantization import quantized_layers

    notes = []
    if any(isinstance(m, BINARY_LAYERS) for m in model.modules()):
        notes.append(
            "Binarized layers: neither ONNX Runtime nor TensorRT has 1-bit kernels. The export "
            "runs them as int8 (QLinearConv in ONNX Runtime); the size gain comes from "
            "lightning_accel.binarization.save_packed (1 bit per weight)."
        )
    low_bits = [
        name
        for name, layer in quantized_layers(model).items()
        if getattr(layer.weight_quantizer, "bits", 8) < 8
    ]
    if low_bits:
        notes.append(
            f"{len(low_bits)} layers were trained with weights below 8 bits: the runtimes run "
            "them on int8 kernels (the values are exact), with no extra speed or size gain."
        )
    return notes


def format_summary(summary: dict[str, Any]) -> str:
    """The export summary as a Markdown table: one row per backend and batch size."""
    model, base = summary["model"], summary.get("baseline", {})
    accuracy = summary.get("accuracy")
    lines = [
        f"accuracy: {accuracy:.4f}" if accuracy is not None else "accuracy: n/a",
        f"params: {model['params']:,} (baseline {base.get('params', 0):,}); "
        f"MACs: {model['macs']:,} (baseline {base.get('macs', 0):,}); "
        f"ONNX: {model['onnx_bytes'] / 1e6:.2f} MB "
        f"(baseline {base.get('onnx_bytes', 0) / 1e6:.2f} MB)",
        "| backend | batch | model ms | baseline ms | speedup | verification |",
        "|---|---|---|---|---|---|",
    ]
    for backend, entry in summary["backends"].items():
        if "error" in entry:
            lines.append(f"| {backend} | - | - | - | - | error: {entry['error'][:80]} |")
            continue
        check = entry.get("verification", {})
        verdict = "passed" if check.get("passed") else ("FAILED" if check else "skipped")
        for batch, row in entry.get("latency", {"-": None}).items():
            if row is None:
                lines.append(f"| {backend} | - | - | - | - | {verdict} |")
            else:
                lines.append(
                    f"| {backend} | {batch} | {row['model_ms']:.2f} | {row['baseline_ms']:.2f} | "
                    f"{row['speedup']:.2f}x | {verdict} |"
                )
    lines += [f"note: {note}" for note in summary.get("notes", [])]
    return "\n".join(lines)


def check_onnx_file(path: Path) -> None:
    """Fail early, and clearly, on a missing file or one that is not an ONNX model.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If it does not parse as an ONNX model.
    """
    import onnx

    if not path.is_file():
        raise FileNotFoundError(
            f"No ONNX model at {path}. Export one first (lightning-accel export)."
        )
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:
        raise ValueError(f"{path} is not an ONNX model ({type(err).__name__}).") from err
    if not model.graph.node:
        raise ValueError(f"{path} is not an ONNX model: its graph has no nodes.")


def bench_onnx(
    onnx_path: Path,
    baseline_path: Path | None,
    backend: str,
    dirpath: Path,
    batch_sizes: Sequence[int] = (1, 64),
    threads: int | None = None,
    runs: int = 50,
    progress: Callable[[str], None] = _silent,
) -> list[dict[str, Any]]:
    """Time an ONNX model (and a baseline, in the same process) on one backend.

    Returns one row per batch size: ``batch``, ``model_ms``, ``p90_ms``, ``throughput`` and, with
    a baseline, ``baseline_ms`` and ``speedup``.
    """
    for path in (onnx_path, baseline_path):
        if path is not None:
            check_onnx_file(path)
    progress(f"compiling {onnx_path.name} for {backend}")
    model = compile_model(backend, onnx_path, dirpath / "model", threads=threads)
    baseline = None
    if baseline_path is not None:
        progress(f"compiling {baseline_path.name} for {backend}")
        baseline = compile_model(backend, baseline_path, dirpath / "baseline", threads=threads)
    rows = []
    for batch_size in batch_sizes:
        progress(f"timing batch {batch_size}")
        measured = model.latency(batch_size, runs)
        row: dict[str, Any] = {
            "batch": batch_size,
            "model_ms": measured.median_ms,
            "p90_ms": measured.p90_ms,
            "throughput": measured.throughput,
        }
        if baseline is not None:
            row["baseline_ms"] = baseline.latency(batch_size, runs).median_ms
            row["speedup"] = row["baseline_ms"] / row["model_ms"]
        rows.append(row)
    return rows


def format_bench(rows: list[dict[str, Any]], backend: str) -> str:
    """``bench_onnx`` rows as a Markdown table."""
    with_baseline = bool(rows) and "speedup" in rows[0]
    header = "| backend | batch | median ms | p90 ms | inputs/s |"
    rule = "|---|---|---|---|---|"
    if with_baseline:
        header += " baseline ms | speedup |"
        rule += "---|---|"
    lines = [header, rule]
    for row in rows:
        line = (
            f"| {backend} | {row['batch']} | {row['model_ms']:.3f} | {row['p90_ms']:.3f} | "
            f"{row['throughput']:,.0f} |"
        )
        if with_baseline:
            line += f" {row['baseline_ms']:.3f} | {row['speedup']:.2f}x |"
        lines.append(line)
    return "\n".join(lines)
