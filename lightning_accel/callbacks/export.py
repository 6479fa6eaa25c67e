"""``ExportOnFitEnd``: the final export hook. Export, compile, verify, benchmark, summarize."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from lightning_accel.backends import check_backends, compile_model
from lightning_accel.backends.onnxruntime import operator_counts
from lightning_accel.backends.tensorrt import tensorrt_problem
from lightning_accel.export import to_onnx
from lightning_accel.model_stats import model_stats
from lightning_accel.tracking import log_export_to_wandb
from lightning_accel.utilities.copying import detached_copy
from lightning_accel.utilities.files import atomic_write
from lightning_accel.verify import compare_outputs

ExportPrecision = Literal["auto", "fp32", "fp16", "int8"]
_PRECISIONS = ("auto", "fp32", "fp16", "int8")


class ExportOnFitEnd(Callback):
    """At the end of ``fit``, export the trained model and prove what it buys on each runtime.

    On rank zero: save ``last.ckpt``; export the final model and the uncompressed baseline
    (captured when fit starts) to ONNX; compile both for each backend; verify the runtime's
    outputs against PyTorch on real validation batches; time both at each batch size; write
    ``summary.json`` and log a table. A failure at any step leaves ``last.ckpt`` and says so.

    Args:
        dirpath: Folder for the checkpoint, ONNX files, engines and ``summary.json``.
        backends: ``"onnxruntime"`` and/or ``"tensorrt"``.
        input_shape: Shape of one input batch for export; default: a validation batch.
        batch_sizes: Batch sizes to time.
        verify: Compare runtime outputs with PyTorch on validation batches.
        benchmark: Time the model and the baseline.
        precision: Verification tolerance; ``"auto"`` picks int8 for Q/DQ graphs, fp16 for
            TensorRT float graphs, else fp32.
        verify_batches: Validation batches used for verification.
        on_verification_failure: ``"error"`` (default) raises; ``"warn"`` only warns.
        threads: ONNX Runtime threads; default: all cores.
        latency_runs: Timed runs per latency figure.

    Example:
        >>> export = ExportOnFitEnd("export", backends=("onnxruntime",))
        >>> trainer = L.Trainer(callbacks=[GradualPruning(0.5), export])  # doctest: +SKIP
    """

    def __init__(
        self,
        dirpath: str | os.PathLike = "export",
        backends: Sequence[str] = ("onnxruntime",),
        input_shape: Sequence[int] | None = None,
        batch_sizes: Sequence[int] = (1, 64),
        verify: bool = True,
        benchmark: bool = True,
        precision: ExportPrecision = "auto",
        verify_batches: int = 4,
        on_verification_failure: Literal["error", "warn"] = "error",
        threads: int | None = None,
        latency_runs: int = 50,
    ) -> None:
        self.backends = check_backends(
            tuple(backends) if not isinstance(backends, str) else (backends,)
        )
        if not batch_sizes or any(not isinstance(b, int) or b < 1 for b in batch_sizes):
            raise ValueError(f"batch_sizes must be positive integers; got {tuple(batch_sizes)}")
        if precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {_PRECISIONS}; got {precision!r}")
        if on_verification_failure not in ("error", "warn"):
            raise ValueError(
                "on_verification_failure must be 'error' or 'warn'; "
                f"got {on_verification_failure!r}"
            )
        if input_shape is not None and (len(input_shape) < 2 or any(d < 1 for d in input_shape)):
            raise ValueError(
                f"input_shape must be a batch shape like (1, 1, 28, 28); got {tuple(input_shape)}"
            )
        if verify_batches < 1 or latency_runs < 1:
            raise ValueError("verify_batches and latency_runs must be >= 1")
        self.dirpath = Path(dirpath)
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.batch_sizes = tuple(batch_sizes)
        self.verify = verify
        self.benchmark = benchmark
        self.precision = precision
        self.verify_batches = verify_batches
        self.on_verification_failure = on_verification_failure
        self.threads = threads
        self.latency_runs = latency_runs
        self.summary: dict[str, Any] = {}
        self._baseline: nn.Module | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        _check_writable(self.dirpath)
        if self.input_shape is not None:
            _check_accepts(pl_module, self.input_shape)
        if "tensorrt" in self.backends and tensorrt_problem():
            rank_zero_warn(
                f"ExportOnFitEnd: TensorRT cannot run here ({tensorrt_problem()}); training goes "
                "on, the ONNX file and checkpoint will be written, then the TensorRT step fails."
            )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and self.benchmark:
            self._baseline = detached_copy(pl_module).cpu().eval()

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        checkpoint = self.dirpath / "last.ckpt"
        trainer.save_checkpoint(checkpoint)  # collective under DDP: every rank calls it
        if not trainer.is_global_zero:
            return
        try:
            failures = self._export(trainer, pl_module)
        except Exception as err:
            raise RuntimeError(
                f"ExportOnFitEnd failed: {err}\nThe trained model is safe in {checkpoint}; "
                "reload it with YourModule.load_from_checkpoint(...) and export again once fixed."
            ) from err
        if failures:
            raise RuntimeError(
                "ExportOnFitEnd: " + " | ".join(failures) + f"\nThe trained model is safe in "
                f"{checkpoint} and the ONNX file in {self.dirpath / 'model.onnx'}."
            )

    # ------------------------------------------------------------------------------------
    def _export(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[str]:
        final = detached_copy(pl_module).cpu().eval()
        batches = self._validation_inputs(trainer, pl_module)
        example = batches[0][:1]
        timings: dict[str, float] = {}
        started = time.perf_counter()
        model_onnx = to_onnx(final, example, self.dirpath / "model.onnx")
        baseline_onnx = None
        if self._baseline is not None:
            baseline_onnx = to_onnx(self._baseline, example, self.dirpath / "baseline.onnx")
        timings["export_s"] = time.perf_counter() - started
        with torch.no_grad():
            reference = np.concatenate([final(x).numpy() for x in batches])
        quantized = operator_counts(model_onnx).get("QuantizeLinear", 0) > 0

        self.summary = {
            "accuracy": _metric(trainer, "val/acc"),
            "model": {
                **model_stats(final, example).as_dict(),
                "onnx_bytes": model_onnx.stat().st_size,
            },
            "backends": {},
            "timings": timings,
        }
        if self._baseline is not None and baseline_onnx is not None:
            self.summary["baseline"] = {
                **model_stats(self._baseline, example).as_dict(),
                "onnx_bytes": baseline_onnx.stat().st_size,
            }
        failures = []
        for backend in self.backends:
            try:
                entry, problem = self._run_backend(
                    backend, model_onnx, baseline_onnx, batches, reference, quantized, timings
                )
            except RuntimeError as err:  # e.g. TensorRT missing: the other backends still report
                entry, problem = {"error": str(err)}, str(err)
            self.summary["backends"][backend] = entry
            if problem:
                failures.append(problem)
        atomic_write(self.dirpath / "summary.json", json.dumps(self.summary, indent=2, default=str))
        rank_zero_info(format_summary(self.summary))
        log_export_to_wandb(trainer, self.summary, [model_onnx, self.dirpath / "summary.json"])
        return failures

    def _run_backend(
        self,
        backend: str,
        model_onnx: Path,
        baseline_onnx: Path | None,
        batches: list[Tensor],
        reference: np.ndarray,
        quantized: bool,
        timings: dict[str, float],
    ) -> tuple[dict[str, Any], str | None]:
        compiled = compile_model(backend, model_onnx, self.dirpath / backend, threads=self.threads)
        entry: dict[str, Any] = {
            "info": compiled.info,
            "artifacts": {k: str(v) for k, v in compiled.artifacts.items()},
        }
        problem = None
        if self.verify:
            started = time.perf_counter()
            output = np.concatenate([compiled.run(x.numpy()) for x in batches])
            precision = self._verification_precision(backend, quantized)
            result = compare_outputs(reference, output, precision)
            timings[f"verify_{backend}_s"] = time.perf_counter() - started
            entry["verification"] = result.as_dict()
            if not result.passed:
                message = f"{backend} verification {result.describe()}"
                if self.on_verification_failure == "error":
                    problem = message
                else:
                    rank_zero_warn(message)
        if self.benchmark and baseline_onnx is not None:
            started = time.perf_counter()
            baseline = compile_model(
                backend, baseline_onnx, self.dirpath / backend / "baseline", threads=self.threads
            )
            entry["latency"] = {}
            for batch_size in self.batch_sizes:
                model_ms = compiled.latency(batch_size, self.latency_runs).median_ms
                base_ms = baseline.latency(batch_size, self.latency_runs).median_ms
                entry["latency"][str(batch_size)] = {
                    "model_ms": model_ms,
                    "baseline_ms": base_ms,
                    "speedup": base_ms / model_ms,
                    "throughput": batch_size / (model_ms / 1000.0),
                }
            timings[f"benchmark_{backend}_s"] = time.perf_counter() - started
        return entry, problem

    def _verification_precision(self, backend: str, quantized: bool) -> str:
        if self.precision != "auto":
            return self.precision
        if quantized:
            return "int8"
        return "fp16" if backend == "tensorrt" else "fp32"

    def _validation_inputs(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> list[Tensor]:
        """Real validation batches, or zeros of ``input_shape`` when there is no validation data."""
        loaders = trainer.val_dataloaders
        if isinstance(loaders, (list, tuple)):
            loaders = loaders[0] if loaders else None
        batches: list[Tensor] = []
        if loaders is not None and not self.input_shape:
            for batch in loaders:
                inputs = batch[0] if isinstance(batch, (list, tuple)) else batch
                batches.append(inputs.detach().cpu().float())
                if len(batches) >= self.verify_batches:
                    break
        if not batches:
            if self.input_shape is None and pl_module.example_input_array is None:
                raise ValueError(
                    "No validation data and no input_shape: pass ExportOnFitEnd(input_shape=...) "
                    "or give the Trainer validation data."
                )
            shape = self.input_shape or tuple(pl_module.example_input_array.shape)  # type: ignore[union-attr]
            batches = [torch.randn(shape, generator=torch.Generator().manual_seed(0))]
        return batches


def _metric(trainer: pl.Trainer, name: str) -> float | None:
    value = trainer.callback_metrics.get(name)
    return float(value) if value is not None else None


def _check_writable(dirpath: Path) -> None:
    try:
        dirpath.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=dirpath, prefix=".write-probe-"):
            pass
    except OSError as err:
        raise ValueError(
            f"ExportOnFitEnd(dirpath={str(dirpath)!r}) is not a writable folder ({err.strerror}). "
            "Pass a folder you can write to, e.g. dirpath='export'."
        ) from err


def _check_accepts(pl_module: pl.LightningModule, input_shape: tuple[int, ...]) -> None:
    was_training = pl_module.training
    pl_module.eval()
    try:
        with torch.no_grad():
            pl_module(torch.zeros(input_shape, device=pl_module.device))
    except Exception as err:
        raise ValueError(
            f"ExportOnFitEnd(input_shape={input_shape}): the model rejects this input ({err}). "
            "Pass the shape of one input batch, e.g. (1, 1, 28, 28)."
        ) from err
    finally:
        pl_module.train(was_training)


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
    return "\n".join(lines)
