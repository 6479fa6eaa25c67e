"""Export a model and its uncompressed baseline, compile both per backend, verify, time, compare.

The final export hook (:class:`~lightning_accel.callbacks.ExportOnFitEnd`) and the
``lightning-accel export`` command share this pipeline, so their summaries agree.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from lightning_accel.backends import DEFAULT_BACKEND, get_backend
from lightning_accel.backends.onnxruntime import operator_counts
from lightning_accel.backends.timing import compare_latency
from lightning_accel.export.inputs import (
    ModelInput,
    as_tuple,
    call_model,
    first_rows,
    graph_input_names,
    repeat_rows,
    runtime_feed,
    value_range,
)
from lightning_accel.export.onnx import to_onnx
from lightning_accel.export.verify import Verification, compare_outputs
from lightning_accel.quantization.prepare import qdq_target
from lightning_accel.utilities.model_stats import model_stats

ExportPrecision = Literal["auto", "fp32", "fp16", "int8"]
PRECISIONS = ("auto", "fp32", "fp16", "int8")
# Backends whose compiled models take several graph inputs (a dict by input name) (#12).
SEVERAL_INPUT_BACKENDS = ("onnxruntime", "openvino")


# Float dtypes a backend has no kernels for: ONNX's Conv and Gemm take no bfloat16, and
# ONNX Runtime's CPU provider and TensorRT have no float64 convolutions (OpenVINO runs them).
_UNRUNNABLE_FLOATS = {
    "onnxruntime": (torch.float64, torch.bfloat16),
    "openvino": (torch.bfloat16,),
    "tensorrt": (torch.float64, torch.bfloat16),
}


def check_runtime_dtypes(
    model: nn.Module,
    inputs: ModelInput,
    backends: Sequence[str],
    owner: str,
    openvino: str = "backends=('openvino',)",
) -> None:
    """Refuse, before training, a model whose float dtype a backend cannot run.

    Args:
        model: The model to be exported (its floating-point parameters and buffers).
        inputs: One input batch (its floating-point tensors).
        backends: The backends it will run on.
        owner: Who asks, for the message (e.g. ``"ExportOnFitEnd"``).
        openvino: The argument that picks OpenVINO (which runs float64), for the message.

    Raises:
        ValueError: Naming the first tensor of such a dtype, the backends and the fix.
    """
    named = [*model.named_parameters(), *model.named_buffers()]
    tensors = [(f"parameter {n!r}", t) for n, t in named]
    tensors += [(f"input {i}", t) for i, t in enumerate(as_tuple(inputs))]
    for where, tensor in tensors:
        if not tensor.is_floating_point():
            continue
        refusing = [b for b in backends if tensor.dtype in _UNRUNNABLE_FLOATS.get(b, ())]
        if refusing:
            dtype = str(tensor.dtype).removeprefix("torch.")
            raise ValueError(
                f"{owner}: {where} is {dtype}, and {', '.join(refusing)} cannot run {dtype} "
                "convolutions and matrix products, so the exported model would fail there. "
                "Train in float32: call .float() on the model and feed "
                "float32 batches (for bfloat16 speed, keep float32 weights with "
                "Trainer(precision='bf16-mixed'))"
                + (f", or use {openvino}" if dtype == "float64" else "")
                + "."
            )


def no_progress(message: str) -> None:
    """A ``progress`` callback that reports nothing."""
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

    backends: tuple[str, ...] = (DEFAULT_BACKEND,)
    batch_sizes: tuple[int, ...] = (1, 64)
    verify: bool = True
    benchmark: bool = True
    precision: ExportPrecision = "auto"
    threads: int | None = None
    latency_runs: int = 50

    def verification_precision(self, backend: str, quantized: bool) -> str:
        """The tolerance to verify ``backend`` at: the setting, or the backend's own choice."""
        if self.precision != "auto":
            return self.precision
        return get_backend(backend).verification_precision(quantized)


@dataclass
class Comparison:
    """The outcome of :func:`export_and_compare`.

    Attributes:
        summary: JSON-ready results per backend and batch size (no NaN or infinity).
        errors: Backends that could not run, one line each (e.g. TensorRT without a GPU).
        mismatches: Verifications that failed, one line each.
        onnx_path: The exported model.
        files: Everything the comparison wrote under its folder (ONNX files with their external
            data, backend folders), whether or not each exists.
    """

    summary: dict[str, Any]
    errors: list[str]
    mismatches: list[str]
    onnx_path: Path
    files: list[Path]


def export_and_compare(
    model: nn.Module,
    baseline: nn.Module | None,
    batches: Sequence[ModelInput],
    dirpath: Path,
    settings: ComparisonSettings,
    progress: Callable[[str], None] = no_progress,
) -> Comparison:
    """Export a model and its baseline to ONNX, then compile, verify and time both per backend.

    A backend that cannot run (e.g. TensorRT without a GPU) is reported in the summary under
    ``"error"`` and in :attr:`Comparison.errors`; the other backends still report.

    Args:
        model: The final model, on the CPU, in eval mode.
        baseline: The uncompressed model to compare against, or ``None``.
        batches: Inputs for verification, each one tensor or a tuple of tensors (several
            positional inputs, each of its own dtype, fed by graph input name); the first row
            of the first batch is the export example.
        dirpath: Folder for ONNX files and compiled artifacts.
        settings: Backends, batch sizes, tolerance and timing.
        progress: Called with a short line before each long step.
    """
    example = first_rows(batches[0], 1)
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
        reference = np.concatenate([one_output(model, call_model(model, x)) for x in batches])
    quantized = operator_counts(model_onnx).get("QuantizeLinear", 0) > 0
    target = qdq_target(model)

    summary: dict[str, Any] = {
        "model": {**model_stats(model, example).as_dict(), "onnx_bytes": model_onnx.stat().st_size},
        "backends": {},
        "timings": timings,
        "notes": runtime_notes(model) + _qdq_notes(target, settings.backends),
    }
    if baseline is not None and baseline_onnx is not None:
        summary["baseline"] = {
            **model_stats(baseline, example).as_dict(),
            "onnx_bytes": baseline_onnx.stat().st_size,
        }
    onnx_files = [model_onnx] if baseline_onnx is None else [model_onnx, baseline_onnx]
    files = [p.with_name(p.name + suffix) for p in onnx_files for suffix in ("", ".data")]
    files += [dirpath / backend for backend in settings.backends]
    outcome = Comparison(summary, errors=[], mismatches=[], onnx_path=model_onnx, files=files)
    for backend in settings.backends:
        try:
            entry, mismatch = _run_backend(
                backend,
                model_onnx,
                baseline_onnx,
                list(batches),
                reference,
                quantized,
                target,
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
    add_reference_speedups(summary["backends"])
    if quantized:
        summary["notes"] += integer_coverage_notes(summary["backends"])
    outcome.summary = json_ready(summary)
    return outcome


def one_output(model: nn.Module, output: Any) -> np.ndarray:
    """The model's output as an array: export verifies and times models with one output tensor.

    Raises:
        ValueError: If ``output`` is not one tensor (a tuple, list or dict of them), naming the
            structure and the fix.
    """
    if isinstance(output, torch.Tensor):
        return output.detach().cpu().numpy()
    raise ValueError(
        f"ExportOnFitEnd exports, verifies and times models whose forward returns one tensor; "
        f"{type(model).__name__}.forward returns {_structure(output)}. Return one tensor from "
        "forward (e.g. the logits; compute the other outputs in training_step), or export a "
        "wrapper module that returns the output to deploy."
    )


def _structure(output: Any) -> str:
    """E.g. ``a tuple of 2 (tensor (1, 10), tensor (1, 32))`` or ``a dict {'logits': ...}``."""
    if isinstance(output, torch.Tensor):
        return f"tensor {tuple(output.shape)}"
    if isinstance(output, dict):
        items = ", ".join(f"{key!r}: {_structure(value)}" for key, value in output.items())
        return f"a dict {{{items}}}"
    if isinstance(output, (list, tuple)):
        items = ", ".join(_structure(value) for value in output)
        return f"a {type(output).__name__} of {len(output)} ({items})"
    return type(output).__name__


def json_ready(value: Any) -> Any:
    """``value`` with NaN and infinities as ``None`` and numpy scalars as Python numbers.

    ``summary.json`` must stay valid JSON (``json.dumps(..., allow_nan=False)``): a non-finite
    figure (a diverged model's accuracy, a speedup over a zero time) becomes ``null``.
    """
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _run_backend(
    backend: str,
    model_onnx: Path,
    baseline_onnx: Path | None,
    batches: list[ModelInput],
    reference: np.ndarray,
    quantized: bool,
    target: str | None,
    timings: dict[str, float],
    dirpath: Path,
    settings: ComparisonSettings,
    progress: Callable[[str], None],
) -> tuple[dict[str, Any], str | None]:
    progress(f"compiling for {backend}")
    runtime = get_backend(backend)
    if target is not None and target not in runtime.runs_qdq_of:
        raise RuntimeError(
            f"{runtime.title} cannot run this model's Q/DQ graph: it was quantized for "
            f"{target!r} (QuantizationAware(backend={target!r})). Train with "
            f"QuantizationAware(backend={backend!r}) to deploy on {runtime.title}."
        )
    names = graph_input_names(model_onnx)
    if len(names) > 1 and backend not in SEVERAL_INPUT_BACKENDS:
        raise RuntimeError(
            f"{runtime.title} runs graphs with one input here; this model has {len(names)} "
            f"({', '.join(names)}). Export it to backends=('onnxruntime',) or ('openvino',)."
        )
    compiled = runtime.compile(model_onnx, dirpath / backend, threads=settings.threads)
    compiled.input_bounds = value_range(batches)  # token ids: time within the range seen
    entry: dict[str, Any] = {
        "info": compiled.info,
        "artifacts": {k: str(v) for k, v in compiled.artifacts.items()},
    }
    problem = None
    if settings.verify:
        progress(f"verifying {backend} against PyTorch on {len(batches)} batches")
        started = time.perf_counter()
        # One array, or a dict by input name (ONNX Runtime and OpenVINO take both).
        run: Callable[[Any], np.ndarray] = compiled.run
        output = np.concatenate([run(runtime_feed(x, names)) for x in batches])
        precision = settings.verification_precision(backend, quantized)
        result = compare_outputs(reference, output, precision, runtime.tolerance(precision))
        timings[f"verify_{backend}_s"] = time.perf_counter() - started
        entry["verification"] = result.as_dict()
        if not result.passed:
            problem = failure_line(backend, result, compiled.info)
    if settings.benchmark and baseline_onnx is not None:
        started = time.perf_counter()
        baseline = runtime.compile(
            baseline_onnx, dirpath / backend / "baseline", threads=settings.threads
        )
        baseline.input_bounds = compiled.input_bounds
        # Another CPU runtime is also timed against ONNX Runtime's fp32 baseline, in alternating
        # rounds like everything else, so "vs ORT fp32" carries its own spread.
        reference_baseline = None
        if (
            backend != REFERENCE_BACKEND
            and REFERENCE_BACKEND in settings.backends
            and runtime.device == get_backend(REFERENCE_BACKEND).device
        ):
            # ONNX Runtime's threads stop spinning when a run returns: left spinning, they
            # slow the other runtime's runs that follow in this process (#14).
            reference_baseline = get_backend(REFERENCE_BACKEND).compile(
                baseline_onnx,
                dirpath / backend / "reference",
                threads=settings.threads,
                stop_spinning_after_run=True,
            )
            reference_baseline.input_bounds = compiled.input_bounds
        entry["latency"] = {}
        for batch_size in settings.batch_sizes:
            progress(f"timing {backend} at batch {batch_size}")
            # Real rows, repeated to the batch size, each input with its own dtype; the model
            # and the baseline alternate rounds (#18).
            inputs = repeat_rows(runtime_feed(batches[0], names), batch_size)
            row = compare_latency(
                compiled, baseline, inputs, batch_size, settings.latency_runs
            ).as_row()
            if reference_baseline is not None:
                model_vs = compare_latency(
                    compiled, reference_baseline, inputs, batch_size, settings.latency_runs
                )
                baseline_vs = compare_latency(
                    baseline, reference_baseline, inputs, batch_size, settings.latency_runs
                )
                row.update(
                    vs_onnxruntime_fp32=model_vs.speedup,
                    vs_onnxruntime_fp32_p25=model_vs.speedup_p25,
                    vs_onnxruntime_fp32_p75=model_vs.speedup_p75,
                    baseline_vs_onnxruntime_fp32=baseline_vs.speedup,
                )
            entry["latency"][str(batch_size)] = row
        timings[f"benchmark_{backend}_s"] = time.perf_counter() - started
    return entry, problem


def failure_line(backend: str, result: Verification, info: dict[str, Any]) -> str:
    """A failed verification in one line, with the runtime's known cause when it names one.

    Args:
        backend: The runtime's name.
        result: The failed comparison.
        info: The compiled model's ``info``; its ``accuracy_caveat`` (OpenVINO's unrounded
            residual sums, #14) is appended when present, unless the outputs were not finite
            (a cause of its own, already said).
    """
    line = f"{backend} verification {result.describe()}"
    caveat = info.get("accuracy_caveat")
    return f"{line}. Possible cause: {caveat}" if caveat and result.problem is None else line


def _qdq_notes(target: str | None, backends: Sequence[str]) -> list[str]:
    """A note per backend that runs Q/DQ trained in another flavour than its own.

    Backends that want the same flavour (ONNX Runtime and OpenVINO) get no note.
    """
    if target is None:
        return []
    return [
        f"Quantized for {target!r} but run on {name!r}: {get_backend(name).title} executes "
        "this Q/DQ flavour, not the one it runs fastest (see its integer-op counts); "
        f"QuantizationAware(backend={name!r}) trains that one."
        for name in backends
        if get_backend(name).qdq != get_backend(target).qdq
        and target in get_backend(name).runs_qdq_of
    ]


REFERENCE_BACKEND = "onnxruntime"
# Operators of ONNX Runtime's optimized graph that carry multiply-accumulates in float.
# ConvTranspose included: ONNX Runtime's CPU kernels have no integer transposed conv, so it
# runs its Q/DQ ConvTranspose as DQ -> float ConvTranspose -> Q (measured, onnxruntime 1.32).
_ORT_FLOAT_COMPUTE = (
    "Conv",
    "FusedConv",
    "Gemm",
    "FusedGemm",
    "MatMul",
    "FusedMatMul",
    "ConvTranspose",
)


def add_reference_speedups(backends: dict[str, Any]) -> None:
    """Add each runtime's speedup over ONNX Runtime's fp32 baseline to its latency rows.

    ``vs_onnxruntime_fp32`` (ONNX Runtime's baseline time / this model's) shows compression
    and runtime together; ``baseline_vs_onnxruntime_fp32`` the runtime alone (same fp32 file).
    ONNX Runtime's own rows take their alternating-round speedup; another CPU runtime was
    already timed against ONNX Runtime's baseline in alternating rounds (its rows carry the
    figure and its quartiles); a runtime on another device (TensorRT) cannot alternate with a
    CPU session, so it gets the ratio of the two medians. Nothing is added without an ONNX
    Runtime baseline at that batch size.
    """
    reference = backends.get(REFERENCE_BACKEND, {}).get("latency", {})
    for name, entry in backends.items():
        for batch, row in entry.get("latency", {}).items():
            base = reference.get(batch, {}).get("baseline_ms")
            if base is None or "vs_onnxruntime_fp32" in row:
                continue
            if name == REFERENCE_BACKEND:
                row["vs_onnxruntime_fp32"] = row["speedup"]
                row["baseline_vs_onnxruntime_fp32"] = 1.0
            else:
                row["vs_onnxruntime_fp32"] = base / row["model_ms"]
                row["baseline_vs_onnxruntime_fp32"] = base / row["baseline_ms"]


def integer_ops(info: dict[str, Any]) -> tuple[int, int] | None:
    """Executed convolutions/matmuls on integer kernels and in all, from a backend's info.

    OpenVINO reports them from its runtime graph (``integer_ops``/``float_ops``); ONNX
    Runtime from its optimized graph (``integer_kernels`` vs float Conv/Gemm/MatMul left).
    ``None`` where a backend reports neither (TensorRT).
    """
    if "integer_ops" in info:
        integer = sum(info["integer_ops"].values())
        return integer, integer + sum(info.get("float_ops", {}).values())
    if "integer_kernels" in info:
        integer = sum(n for op, n in info["integer_kernels"].items() if op != "QLinearAdd")
        operators = info.get("operators", {})
        # BatchNorms ONNX Runtime rewrites as depthwise 1x1 Convs are not convs of the model.
        floating = sum(operators.get(op, 0) for op in _ORT_FLOAT_COMPUTE)
        return integer, integer + floating - info.get("batch_norms_as_float_conv", 0)
    return None


def integer_coverage_notes(backends: dict[str, Any]) -> list[str]:
    """A note per runtime that runs some convolutions/matmuls of a Q/DQ model in float."""
    notes = []
    for name, entry in backends.items():
        counts = integer_ops(entry.get("info", {}))
        if counts is not None and counts[0] < counts[1]:
            notes.append(
                f"{get_backend(name).title} runs {counts[1] - counts[0]} of {counts[1]} "
                "convolutions/matmuls of this quantized model in float, not on integer kernels "
                "(they lack Q/DQ on an input or weight, or the runtime cannot fuse them): the "
                "int8 speedup applies to the rest only."
            )
    return notes


def runtime_notes(model: nn.Module) -> list[str]:
    """What the runtimes cannot do with this model's compression, stated plainly."""
    from lightning_accel.binarization import BINARY_LAYERS
    from lightning_accel.quantization import quantized_layers
    from lightning_accel.quantization.layers import QUANT_TRANSPOSED

    notes = []
    if any(isinstance(m, BINARY_LAYERS) for m in model.modules()):
        notes.append(
            "Binarized layers: neither ONNX Runtime, OpenVINO nor TensorRT has 1-bit kernels. "
            "The export runs them as int8 (QLinearConv in ONNX Runtime, u8/i8 convolutions in "
            "OpenVINO); the size gain comes from "
            "lightning_accel.binarization.save_packed (1 bit per weight)."
        )
    low_bits = [
        name
        for name, layer in quantized_layers(model).items()
        if getattr(layer.weight_quantizer, "bits", 8) < 8
    ]
    transposed = [n for n, m in quantized_layers(model).items() if isinstance(m, QUANT_TRANSPOSED)]
    if transposed:
        notes.append(
            f"{len(transposed)} transposed convs (e.g. {transposed[0]}) trained on the int8 grid: "
            "ONNX Runtime's CPU kernels have no integer ConvTranspose and run them in float "
            "between their Q/DQ (same values, no int8 speedup); OpenVINO runs them as integer "
            "Deconvolution where its CPU plugin supports it (see its int8-ops count)."
        )
    if low_bits:
        notes.append(
            f"{len(low_bits)} layers were trained with weights below 8 bits: the runtimes run "
            "them on int8 kernels (the values are exact), with no extra speed or size gain."
        )
    return notes


def format_summary(summary: dict[str, Any]) -> str:
    """The export summary as a Markdown table: one row per backend and batch size."""
    model, base = summary["model"], summary.get("baseline")
    accuracy = summary.get("accuracy")
    size = (
        f"params: {model['params']:,}; MACs: {model['macs']:,}; "
        f"ONNX: {model['onnx_bytes'] / 1e6:.2f} MB"
    )
    if base:
        size = (
            f"params: {model['params']:,} (baseline {base['params']:,}); "
            f"MACs: {model['macs']:,} (baseline {base['macs']:,}); "
            f"ONNX: {model['onnx_bytes'] / 1e6:.2f} MB (baseline {base['onnx_bytes'] / 1e6:.2f} MB)"
        )
    else:
        size += " (baseline not measured)"
    lines = [
        f"accuracy: {accuracy:.4f}" if accuracy is not None else "accuracy: n/a",
        size,
        "| backend | batch | model ms | baseline ms | speedup | vs ORT fp32 | int8 ops "
        "| verification |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for backend, entry in summary["backends"].items():
        if "error" in entry:
            lines.append(f"| {backend} | - | - | - | - | - | - | error: {entry['error'][:80]} |")
            continue
        check = entry.get("verification", {})
        verdict = "passed" if check.get("passed") else ("FAILED" if check else "skipped")
        counts = integer_ops(entry.get("info", {}))
        ops = "n/a" if counts is None else f"{counts[0]}/{counts[1]}"
        if counts is not None and counts[0] == 0 and check.get("precision") == "fp32":
            ops = "- (float)"  # a float model: no Q/DQ, so nothing to run on integer kernels
        for batch, row in entry.get("latency", {"-": None}).items():
            if row is None:
                lines.append(f"| {backend} | - | - | - | - | - | {ops} | {verdict} |")
            else:
                lines.append(
                    f"| {backend} | {batch} | {_figure(row['model_ms'])} | "
                    f"{_figure(row['baseline_ms'])} | {_figure(row['speedup'], 'x')} | "
                    f"{_figure(row.get('vs_onnxruntime_fp32'), 'x')} | {ops} | {verdict} |"
                )
    lines.append(
        "speedup: against the same runtime's fp32 baseline; vs ORT fp32: against ONNX "
        "Runtime's fp32 baseline; int8 ops: convolutions/matmuls on integer kernels / all"
    )
    lines += [f"note: {note}" for note in summary.get("notes", [])]
    return "\n".join(lines)


def _figure(value: float | None, unit: str = "") -> str:
    """A table cell: two decimals, or ``n/a`` for a figure that could not be measured."""
    return "n/a" if value is None else f"{value:.2f}{unit}"
