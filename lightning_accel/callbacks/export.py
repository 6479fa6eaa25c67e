"""``ExportOnFitEnd``: the final export hook. Export, compile, verify, benchmark, summarize."""

from __future__ import annotations

import os
import tempfile
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from lightning_accel.backends import (
    BACKENDS,
    DEFAULT_BACKEND,
    BackendName,
    check_backends,
    get_backend,
)
from lightning_accel.callbacks.base import (
    AccelCallback,
    check_batch_sizes,
    check_bool,
    check_int,
)
from lightning_accel.export.compare import (
    PRECISIONS,
    SEVERAL_INPUT_BACKENDS,
    ComparisonSettings,
    ExportPrecision,
    check_runtime_dtypes,
    export_and_compare,
    format_summary,
    one_output,
)
from lightning_accel.export.folder import (
    STAGED_CHECKPOINT,
    ExportFolder,
    publish_checkpoint,
    remove_stale,
)
from lightning_accel.export.inputs import (
    ModelInput,
    as_tuple,
    call_model,
    first_rows,
    map_inputs,
    model_input,
    random_input,
    value_range,
)
from lightning_accel.tracking.history import merge_epoch_rows, scalar_metrics, write_epoch_csv
from lightning_accel.tracking.plots import plot_accuracy_vs_latency, plot_epochs, plots_available
from lightning_accel.tracking.run_config import log_callback_settings
from lightning_accel.tracking.wandb_logging import log_export_to_wandb
from lightning_accel.utilities.copying import detached_copy
from lightning_accel.utilities.modules import eval_mode

__all__ = ["ExportOnFitEnd", "format_summary"]


class ExportOnFitEnd(AccelCallback):
    """At the end of ``fit``, export the trained model and prove what it buys on each runtime.

    On rank zero: save ``last.ckpt``; export the final model and the uncompressed baseline
    (captured when fit starts) to ONNX; compile both for each backend; verify the runtime's
    outputs against PyTorch on real validation batches; time both at each batch size; write
    ``summary.json`` and log a table. A failure at any step leaves ``last.ckpt`` and says so.

    A run owns its folder while it runs (a lock file, ``.lightning_accel.lock``, taken in
    ``setup`` and released in ``teardown``): a second run into the same folder is refused. An
    earlier run's files found there are moved to ``earlier/<its run id>/`` at fit end, with
    a warning, before anything is written; ``summary.json`` names its run and lists its files.

    Args:
        dirpath: Folder for the checkpoint, ONNX files, engines and ``summary.json``.
        backends: Registered backends, e.g. ``"onnxruntime"`` and/or ``"tensorrt"``.
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
        input_key: For dict batches, the key holding the model's input (e.g. ``"image"``);
            tuple batches use their first element. An input that is itself a tuple of tensors
            (batches ``((image, token_ids), label)``) is several positional inputs: exported
            as one ONNX graph with an input per tensor (named after ``forward``'s parameters,
            each of its own dtype), verified and timed with them.

    Raises:
        ValueError: At construction, for any argument of the wrong type or out of range; in
            ``setup``, for a folder that cannot be written or that another run is exporting
            into, an ``input_shape`` the model rejects, or a ``QuantizationAware`` target whose
            Q/DQ graph an export backend cannot run; when training starts, for batches whose
            input is neither a tensor nor a tuple of tensors, or several inputs with
            ``input_shape`` (one shape) or a backend that takes one input (TensorRT).
        RuntimeError: At fit end, if ``last.ckpt`` cannot be written (saying where the model
            can still be recovered) or a later step fails (saying the checkpoint is safe).

    Example:
        >>> export = ExportOnFitEnd("export", backends=("onnxruntime",))
        >>> trainer = L.Trainer(callbacks=[GradualPruning(0.5), export])  # doctest: +SKIP
    """

    def __init__(
        self,
        dirpath: str | os.PathLike = "export",
        backends: Sequence[BackendName] = (DEFAULT_BACKEND,),
        input_shape: Sequence[int] | None = None,
        batch_sizes: Sequence[int] = (1, 64),
        verify: bool = True,
        benchmark: bool = True,
        precision: ExportPrecision = "auto",
        verify_batches: int = 4,
        on_verification_failure: Literal["error", "warn"] = "error",
        threads: int | None = None,
        latency_runs: int = 50,
        input_key: str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(dirpath, (str, os.PathLike)) or not str(dirpath):
            raise ValueError(
                f"dirpath must be a folder path (str or os.PathLike); got {dirpath!r}. "
                "Example: ExportOnFitEnd(dirpath='export')"
            )
        checked = check_backends(backends, "ExportOnFitEnd(backends=...)")
        batch_sizes = check_batch_sizes(batch_sizes, "batch_sizes")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}; got {precision!r}")
        if on_verification_failure not in ("error", "warn"):
            raise ValueError(
                "on_verification_failure must be 'error' or 'warn'; "
                f"got {on_verification_failure!r}"
            )
        if input_shape is not None and not _is_batch_shape(input_shape):
            raise ValueError(
                f"input_shape must be a batch shape like (1, 1, 28, 28); got {input_shape!r}"
            )
        example = "ExportOnFitEnd(verify_batches=4, latency_runs=50, threads=2)"
        check_int(verify_batches, "verify_batches", example)
        check_int(latency_runs, "latency_runs", example)
        check_int(threads, "threads", example, optional=True)
        check_bool(verify, "verify")
        check_bool(benchmark, "benchmark")
        if input_key is not None and not isinstance(input_key, str):
            raise ValueError(
                f"input_key must be a dict key (str) or None; got {input_key!r}. "
                "Example: ExportOnFitEnd(input_key='image')"
            )
        self.dirpath = Path(dirpath)
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.settings = ComparisonSettings(
            backends=checked,
            batch_sizes=tuple(batch_sizes),
            verify=verify,
            benchmark=benchmark,
            precision=precision,
            threads=threads,
            latency_runs=latency_runs,
        )
        self.verify_batches = verify_batches
        self.on_verification_failure = on_verification_failure
        self.input_key = input_key
        self.summary: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []  # per-epoch scalar metrics, for epochs.csv
        self._baseline: nn.Module | None = None
        self._input_bounds: tuple[int, int] | None = None
        self.folder = ExportFolder(
            self.dirpath, f"ExportOnFitEnd(dirpath={str(self.dirpath)!r})", tuple(BACKENDS)
        )

    technique = "ExportOnFitEnd"

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(dirpath=str(self.dirpath))

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        _check_writable(self.dirpath)
        if self.input_shape is not None:
            _check_accepts(pl_module, self.input_shape)
        for name in self.settings.backends:
            problem = get_backend(name).problem()
            if problem:
                rank_zero_warn(
                    f"ExportOnFitEnd: {get_backend(name).title} cannot run here ({problem}); "
                    "training goes on, the ONNX file and checkpoint will be written, then the "
                    f"{name} step fails."
                )
        self._check_quantization_targets(trainer)
        if trainer.is_global_zero:
            self.folder.take()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        self.folder.release()

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        super().on_exception(trainer, pl_module, exception)
        self.folder.release()  # Lightning skips teardown when fit raises

    def _check_quantization_targets(self, trainer: pl.Trainer) -> None:
        """Refuse export backends that cannot run the Q/DQ graph QAT trains; warn on a mismatch.

        Raises:
            ValueError: If a ``QuantizationAware`` target's Q/DQ graph cannot run on an export
                backend (e.g. ONNX Runtime's uint8 activations on TensorRT).
        """
        from lightning_accel.callbacks.quantization import QuantizationAware

        targets = {c.backend for c in trainer.callbacks if isinstance(c, QuantizationAware)}  # type: ignore[attr-defined]
        for target in sorted(targets):
            for name in self.settings.backends:
                runtime = get_backend(name)
                if target not in runtime.runs_qdq_of:
                    raise ValueError(
                        f"QuantizationAware(backend={target!r}) trains Q/DQ that {runtime.title} "
                        f"cannot run, but ExportOnFitEnd(backends=...) includes {name!r}. Train "
                        f"for it with QuantizationAware(backend={name!r}), or export to "
                        f"{target!r} only."
                    )
                if runtime.qdq != get_backend(target).qdq:  # same flavour: same integer kernels
                    rank_zero_warn(
                        f"ExportOnFitEnd: the model is quantized for {target!r} but also exported "
                        f"to {name!r}, which runs that Q/DQ flavour, not its own "
                        f"(slower than QuantizationAware(backend={name!r}) would be). "
                        "The summary records it under notes."
                    )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        log_callback_settings(trainer)  # every callback's settings in W&B config / hparams
        if trainer.is_global_zero and self.settings.benchmark:
            self._baseline = detached_copy(pl_module).cpu().eval()

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        checkpoint = self.dirpath / "last.ckpt"
        staged = self.dirpath / STAGED_CHECKPOINT
        problem = None
        if trainer.is_global_zero:
            problem, moved = self.folder.set_aside_earlier_run()
            if moved:
                rank_zero_warn(f"ExportOnFitEnd: {moved}")
            remove_stale(staged)
        # Written beside, checked, then renamed: never a half-written file named last.ckpt.
        # weights_only=False said: a full checkpoint (callback states too), without the
        # "`weights_only` was not set" line Lightning logs when it is left to default.
        trainer.save_checkpoint(staged, weights_only=False)  # collective under DDP: all ranks
        if not trainer.is_global_zero:
            return
        problem = problem or publish_checkpoint(staged, checkpoint)
        if problem is not None:
            kept = self.folder.keep_staged(staged)
            saved = _model_checkpoint_paths(trainer)
            raise RuntimeError(self.folder.unsaved_message(kept, problem, saved))
        try:
            failures = self._export(trainer, pl_module, checkpoint)
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

    def _export(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: Path
    ) -> list[str]:
        started = time.perf_counter()

        def progress(message: str) -> None:  # one line per stage, on the console (stderr)
            rank_zero_info(f"ExportOnFitEnd: {message} ({time.perf_counter() - started:.1f} s)")

        final = detached_copy(pl_module).cpu().eval()
        batches = self._validation_inputs(trainer, pl_module)
        outcome = export_and_compare(
            final, self._baseline, batches, self.dirpath, self.settings, progress
        )
        summary: dict[str, Any] = {"accuracy": _metric(trainer, "val/acc"), **outcome.summary}
        add_compressed_sizes(summary, outcome.onnx_path, self.dirpath / "baseline.onnx")
        progress("writing summary.json, the per-epoch CSV and charts")
        charts = self._write_history(trainer, summary)
        self.summary = self.folder.write_summary(
            summary,
            [checkpoint, *outcome.files, *charts],
            data=trainer.datamodule,  # type: ignore[attr-defined]  # for manifest.json
        )
        rank_zero_info(format_summary(self.summary) + _compressed_line(self.summary))
        for warning in _timing_warnings(self.summary):
            rank_zero_warn(f"ExportOnFitEnd: {warning}")
        artifacts = [outcome.onnx_path, self.dirpath / "summary.json"]
        log_export_to_wandb(trainer, self.summary, artifacts)
        written = ", ".join(str(p) for p in [self.dirpath / "summary.json", *charts])
        rank_zero_info(
            f"ExportOnFitEnd: done in {time.perf_counter() - started:.1f} s; model: "
            f"{outcome.onnx_path}; checkpoint: {checkpoint}; {written}"
        )
        if self.on_verification_failure == "warn":
            for mismatch in outcome.mismatches:
                rank_zero_warn(mismatch)
            return outcome.errors
        return outcome.errors + outcome.mismatches

    def _write_history(self, trainer: pl.Trainer, summary: dict[str, Any]) -> list[Path]:
        """Write ``epochs.csv`` and, with matplotlib, the PNG charts; return what was written."""
        from lightning_accel.callbacks.latency import LatencyMonitor

        monitors = [c for c in trainer.callbacks if isinstance(c, LatencyMonitor)]  # type: ignore[attr-defined]
        rows = merge_epoch_rows(self.history, *(m.history for m in monitors))
        if not rows:
            return []
        written = [write_epoch_csv(rows, self.dirpath / "epochs.csv")]
        note = plots_available()
        if note is not None:
            rank_zero_info(f"ExportOnFitEnd: {note} epochs.csv is written.")
            return written
        monitor = monitors[0] if monitors else None
        key = f"latency/{monitor.backend}/b{monitor.batch_sizes[0]}_ms" if monitor else None
        written.append(plot_epochs(rows, self.dirpath / "epochs.png", key))
        backend = self.settings.backends[0]
        row = summary["backends"].get(backend, {}).get("latency", {}).get("1")
        final = (row["model_ms"], summary["accuracy"]) if row and summary["accuracy"] else None
        baseline_ms = row["baseline_ms"] if row else None
        if key is None and final is None:  # nothing was timed (benchmark=False, no monitor)
            return written
        path = self.dirpath / "accuracy_vs_latency.png"
        written.append(plot_accuracy_vs_latency(rows, key, final, baseline_ms, path))
        return written

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Record the epoch's scalar metrics (validation has run) for ``epochs.csv``."""
        if trainer.is_global_zero and not trainer.sanity_checking:
            row = {"epoch": trainer.current_epoch, **scalar_metrics(trainer.callback_metrics)}
            self.history = [r for r in self.history if r["epoch"] != row["epoch"]] + [row]

    def _validation_inputs(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> list[ModelInput]:
        """Real validation batches (one tensor or a tuple each), else random inputs per dtype.

        Without validation data, random inputs of ``input_shape`` (or of each tensor of
        ``example_input_array``, which may be a tuple for several inputs) stand in.
        """
        loaders = trainer.val_dataloaders
        if isinstance(loaders, (list, tuple)):
            loaders = loaders[0] if loaders else None
        batches: list[ModelInput] = []
        if loaders is not None and not self.input_shape:
            for batch in loaders:
                found = model_input(batch, self.input_key)
                batches.append(map_inputs(found, lambda t: t.detach().cpu()))
                if len(batches) >= self.verify_batches:
                    break
        if not batches:
            example = pl_module.example_input_array
            several = isinstance(example, (list, tuple)) and all(
                isinstance(t, Tensor) for t in example
            )
            if self.input_shape is None and not (isinstance(example, Tensor) or several):
                raise ValueError(
                    "No validation data and no input_shape: pass ExportOnFitEnd(input_shape=...) "
                    "or give the Trainer validation data."
                )
            if self.input_shape is None and several:
                batches = [
                    tuple(
                        random_input(t.cpu(), tuple(t.shape), self._input_bounds)
                        for t in example  # type: ignore[union-attr]
                    )
                ]
            else:
                like = example.cpu() if isinstance(example, Tensor) else torch.zeros(1)
                shape = self.input_shape or tuple(like.shape)
                batches = [random_input(like, shape, self._input_bounds)]
        return batches

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check, before training, that the batches hold an input the export can feed."""
        loader = trainer.train_dataloader
        if loader is None:
            return
        sample = model_input(next(iter(loader)), self.input_key)
        check_runtime_dtypes(pl_module, sample, self.settings.backends, "ExportOnFitEnd")
        self._input_bounds = value_range([sample])
        count = len(as_tuple(sample))
        if count > 1:
            self._check_several_inputs(count)
        rows = map_inputs(first_rows(sample, 2), lambda t: t.to(pl_module.device))
        with eval_mode(pl_module), torch.no_grad():
            one_output(pl_module, call_model(pl_module, rows))  # refused now, not after fit

    def _check_several_inputs(self, count: int) -> None:
        """Refuse, before training, what cannot take a model with several inputs.

        Raises:
            ValueError: For ``input_shape`` (one shape) or a backend that takes one input.
        """
        if self.input_shape is not None:
            raise ValueError(
                f"ExportOnFitEnd(input_shape={self.input_shape}) gives one input, but the "
                f"batches feed the model {count} inputs: drop input_shape to export with the "
                "real validation batches (or set example_input_array to a tuple of tensors)."
            )
        unsupported = [b for b in self.settings.backends if b not in SEVERAL_INPUT_BACKENDS]
        if unsupported:
            raise ValueError(
                f"ExportOnFitEnd(backends={self.settings.backends}): {', '.join(unsupported)} "
                f"runs graphs with one input here, but the batches feed the model {count} "
                f"inputs. Use backends among {SEVERAL_INPUT_BACKENDS}."
            )


def add_compressed_sizes(summary: dict[str, Any], model: Path, baseline: Path) -> None:
    """Add ``onnx_compressed_bytes`` (zlib, level 6, with external data) to model and baseline.

    Unstructured sparsity and binarization keep the ONNX file's size but make it compress:
    this is the size they buy (DESIGN.md, contract 2).

    Args:
        summary: The export summary; its ``model`` and ``baseline`` sections are extended.
        model: The exported model's ONNX file.
        baseline: The baseline's ONNX file (skipped when missing).
    """
    for section, path in (("model", model), ("baseline", baseline)):
        if section in summary and path.is_file():
            summary[section]["onnx_compressed_bytes"] = compressed_size(path)


def compressed_size(path: Path) -> int:
    """Bytes of an ONNX file (and its ``.data`` external weights) after zlib level 6."""
    compressor = zlib.compressobj(6)
    total = 0
    for part in (path, path.with_name(path.name + ".data")):
        if part.is_file():
            with open(part, "rb") as f:
                while chunk := f.read(1 << 20):
                    total += len(compressor.compress(chunk))
    return total + len(compressor.flush())


def _compressed_line(summary: dict[str, Any]) -> str:
    model, base = summary.get("model", {}), summary.get("baseline") or {}
    size = model.get("onnx_compressed_bytes")
    if size is None:
        return ""
    line = f"\ncompressed ONNX (zlib): {size / 1e6:.2f} MB"
    if base.get("onnx_compressed_bytes"):
        ratio = base["onnx_compressed_bytes"] / size
        line += f" (baseline {base['onnx_compressed_bytes'] / 1e6:.2f} MB, {ratio:.2f}x smaller)"
    return line


def _timing_warnings(summary: dict[str, Any]) -> list[str]:
    return [
        f"{backend} batch {batch}: {row['warning']}"
        for backend, entry in summary.get("backends", {}).items()
        for batch, row in (entry.get("latency") or {}).items()
        if row and row.get("warning")
    ]


def _is_batch_shape(value: object) -> bool:
    return (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) >= 2
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in value)
    )


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
    try:
        with eval_mode(pl_module), torch.no_grad():
            pl_module(torch.zeros(input_shape, device=pl_module.device))
    except Exception as err:
        if isinstance(err, TypeError) and "required positional argument" in str(err):
            raise ValueError(
                f"ExportOnFitEnd(input_shape={input_shape}) gives one input, but the model takes "
                f"several ({err}): drop input_shape to export with the real validation batches "
                "(their first element a tuple of tensors), or set example_input_array to a "
                "tuple of tensors."
            ) from err
        raise ValueError(
            f"ExportOnFitEnd(input_shape={input_shape}): the model rejects this input ({err}). "
            "Pass the shape of one input batch, e.g. (1, 1, 28, 28)."
        ) from err


def _model_checkpoint_paths(trainer: pl.Trainer) -> list[str]:
    paths: list[str] = []
    for callback in trainer.checkpoint_callbacks:
        for attribute in ("last_model_path", "best_model_path"):
            paths.append(str(getattr(callback, attribute, "") or ""))
        paths += [str(p) for p in getattr(callback, "best_k_models", {})]
    return [p for p in dict.fromkeys(paths) if p and os.path.isfile(p)]
