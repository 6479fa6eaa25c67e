"""``LatencyMonitor``: export the model as it is now and measure it, every N epochs."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lightning_accel.backends import check_backends, compile_model
from lightning_accel.backends.tensorrt import tensorrt_problem
from lightning_accel.callbacks._surgery_support import example_input
from lightning_accel.export import to_onnx
from lightning_accel.model_stats import model_stats
from lightning_accel.tracking import define_epoch_axis, log_epoch_table, wandb_run


class LatencyMonitor(Callback):
    """Log the latency of the model *as it is at that epoch*, with its compression applied.

    At validation end every ``every_n_epochs`` epochs (rank zero), the model is exported to a
    temporary ONNX file and timed; logged against ``epoch``: ``latency/<backend>/b<N>_ms``,
    ``model/params``, ``model/nonzero_params``, ``model/macs``, ``model/onnx_bytes`` and its own
    cost, ``latency/monitor_s``. With a ``WandbLogger`` it also logs a per-epoch table and an
    accuracy-vs-latency chart at the end of fit.

    Args:
        backend: ``"onnxruntime"`` or ``"tensorrt"``.
        every_n_epochs: Measure every this many epochs.
        batch_sizes: Batch sizes to time.
        threads: ONNX Runtime threads; default: all cores.
        runs: Timed runs per figure (median logged).
    """

    def __init__(
        self,
        backend: str = "onnxruntime",
        every_n_epochs: int = 1,
        batch_sizes: Sequence[int] = (1,),
        threads: int | None = None,
        runs: int = 20,
    ) -> None:
        (self.backend,) = check_backends((backend,), "backend")
        if every_n_epochs < 1 or runs < 1:
            raise ValueError(
                "every_n_epochs and runs must be >= 1; "
                f"got every_n_epochs={every_n_epochs}, runs={runs}"
            )
        if not batch_sizes or any(not isinstance(b, int) or b < 1 for b in batch_sizes):
            raise ValueError(f"batch_sizes must be positive integers; got {tuple(batch_sizes)}")
        self.every_n_epochs = every_n_epochs
        self.batch_sizes = tuple(batch_sizes)
        self.threads = threads
        self.runs = runs
        self.history: list[dict[str, Any]] = []

    def logged_metrics(self) -> tuple[str, ...]:
        """The metric names this callback logs at each monitored epoch."""
        latency = tuple(f"latency/{self.backend}/b{b}_ms" for b in self.batch_sizes)
        model = ("model/onnx_bytes", "model/params", "model/nonzero_params", "model/macs")
        return (*latency, *model, "latency/monitor_s")

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.backend == "tensorrt" and tensorrt_problem():
            raise RuntimeError(
                f"LatencyMonitor(backend='tensorrt') cannot run here: {tensorrt_problem()}. "
                "Use backend='onnxruntime'."
            )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        run = wandb_run(trainer)
        if run is not None:
            define_epoch_axis(run)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if (
            trainer.sanity_checking
            or not trainer.is_global_zero
            or (epoch + 1) % self.every_n_epochs
        ):
            return
        metrics = self.measure(trainer, pl_module)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        row = {"epoch": epoch, **metrics}
        if "val/acc" in trainer.callback_metrics:
            row["val/acc"] = float(trainer.callback_metrics["val/acc"])
        # Measured from the model itself, so it needs nothing from the compression callbacks.
        first_params = self.history[0]["model/params"] if self.history else metrics["model/params"]
        row["model/sparsity"] = 1.0 - metrics["model/nonzero_params"] / first_params
        self.history.append(row)

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Export the current model and measure it; returns the metrics (with ``epoch``)."""
        started = time.perf_counter()
        example = example_input(trainer, pl_module).cpu()
        metrics: dict[str, float] = {}
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = to_onnx(pl_module, example, Path(tmp) / "model.onnx")
            compiled = compile_model(self.backend, onnx_path, Path(tmp), threads=self.threads)
            for batch_size in self.batch_sizes:
                ms = compiled.latency(batch_size, self.runs).median_ms
                metrics[f"latency/{self.backend}/b{batch_size}_ms"] = ms
            metrics["model/onnx_bytes"] = float(onnx_path.stat().st_size)
        stats = model_stats(pl_module, example)
        metrics["model/params"] = float(stats.params)
        metrics["model/nonzero_params"] = float(stats.nonzero_params)
        metrics["model/macs"] = float(stats.macs)
        metrics["latency/monitor_s"] = time.perf_counter() - started
        metrics["epoch"] = float(trainer.current_epoch)
        return metrics

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        run = wandb_run(trainer)
        if run is not None and self.history:
            log_epoch_table(run, self.history, f"latency/{self.backend}/b{self.batch_sizes[0]}_ms")

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
