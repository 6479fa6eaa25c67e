"""``LatencyMonitor``: export the model as it is now and measure it, every N epochs."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from lightning_accel.backends import DEFAULT_BACKEND, BackendName, get_backend
from lightning_accel.backends.timing import compare_latency
from lightning_accel.callbacks.base import (
    AccelCallback,
    check_batch_sizes,
    check_bool,
    check_int,
    example_input,
)
from lightning_accel.export.compare import SEVERAL_INPUT_BACKENDS, check_runtime_dtypes
from lightning_accel.export.inputs import (
    ModelInput,
    as_tuple,
    graph_input_names,
    map_inputs,
    repeat_rows,
    runtime_feed,
    value_range,
)
from lightning_accel.export.onnx import to_onnx
from lightning_accel.tracking.run_config import log_callback_settings
from lightning_accel.tracking.wandb_logging import define_epoch_axis, log_epoch_table, wandb_run
from lightning_accel.utilities.layer_selection import WEIGHTED_LAYERS
from lightning_accel.utilities.model_stats import model_stats


class LatencyMonitor(AccelCallback):
    """Log the latency of the model *as it is at that epoch*, with its compression applied.

    At validation end every ``every_n_epochs`` epochs (rank zero), the model is exported to a
    temporary ONNX file and timed; logged against ``epoch``: ``latency/<backend>/b<N>_ms``,
    ``model/params``, ``model/nonzero_params``, ``model/macs``, ``model/onnx_bytes`` and its own
    cost, ``latency/monitor_s``. With ``baseline=True`` (the default) the model as it was when
    this fit started is timed with it in alternating rounds
    (:func:`~lightning_accel.backends.timing.compare_latency`), and
    ``latency/<backend>/b<N>_speedup`` is logged too (the median of per-round ratios), with
    its spread ``..._speedup_p25`` and ``..._speedup_p75``: a shared machine's drift lands on
    both models; a ratio the timing cannot support is warned about
    (:func:`~lightning_accel.backends.timing.spread_warning`: quartiles over 10% of the median
    apart, or a p90 over 1.5x its median).
    Each row of :attr:`history` also holds ``model/sparsity``: the
    fraction of the conv/linear weights of the model at train start that are now zero or
    removed (measured on the model). With a ``WandbLogger`` it also logs a per-epoch table and an
    accuracy-vs-latency chart at the end of fit.

    The example input is ``example_input_array`` or the first training batch's input: one
    tensor, or a tuple of tensors (batches ``((image, token_ids), label)``) for a model with
    several positional inputs, each timed with its own dtype (integer ids within the range
    seen) on backends that take several graph inputs (ONNX Runtime, OpenVINO).

    Args:
        backend: A registered backend, e.g. ``"onnxruntime"`` or ``"tensorrt"``.
        every_n_epochs: Measure every this many epochs.
        batch_sizes: Batch sizes to time.
        threads: ONNX Runtime threads; default: all cores.
        runs: Timed runs per figure (median logged).
        baseline: Also time the model from the start of this fit, alternating with the current
            one, and log the speedup over it.

    Raises:
        ValueError: At construction, for an unknown backend or a count below 1.
        RuntimeError: In ``setup``, if the backend cannot run on this machine.
        ValueError: When training starts, if the input is neither a tensor nor a tuple of
            tensors, or several inputs meet a backend that takes one (TensorRT).
    """

    technique = "LatencyMonitor"

    def __init__(
        self,
        backend: BackendName = DEFAULT_BACKEND,
        every_n_epochs: int = 1,
        batch_sizes: Sequence[int] = (1,),
        threads: int | None = None,
        runs: int = 20,
        baseline: bool = True,
    ) -> None:
        super().__init__()
        self.backend = get_backend(backend, "LatencyMonitor(backend=...)").name
        example = "LatencyMonitor(every_n_epochs=1, runs=20, threads=2)"
        check_int(every_n_epochs, "every_n_epochs", example)
        check_int(runs, "runs", example)
        check_int(threads, "threads", example, optional=True)
        batch_sizes = check_batch_sizes(batch_sizes, "batch_sizes")
        self.every_n_epochs = every_n_epochs
        self.batch_sizes = tuple(batch_sizes)
        self.threads = threads
        self.runs = runs
        check_bool(baseline, "baseline")
        self.baseline = baseline
        self._baseline_dir: tempfile.TemporaryDirectory | None = None  # the fit-start ONNX
        self.history: list[dict[str, Any]] = []
        self._start_weights: int | None = None  # conv/linear weight entries at train start
        self._example: ModelInput | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(backend=self.backend, batch_sizes=self.batch_sizes)

    @override
    def metric_names(self) -> tuple[str, ...]:
        latency = tuple(f"latency/{self.backend}/b{b}_ms" for b in self.batch_sizes)
        if self.baseline:
            latency += tuple(
                f"latency/{self.backend}/b{b}_speedup{part}"
                for b in self.batch_sizes
                for part in ("", "_p25", "_p75")
            )
        model = ("model/onnx_bytes", "model/params", "model/nonzero_params", "model/macs")
        return (*latency, *model, "latency/monitor_s")

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        problem = get_backend(self.backend).problem()
        if problem:
            raise RuntimeError(
                f"LatencyMonitor(backend={self.backend!r}) cannot run here: {problem}. "
                f"Use backend={DEFAULT_BACKEND!r}."
            )
        max_epochs = trainer.max_epochs
        if stage == "fit" and max_epochs is not None and 0 <= max_epochs < self.every_n_epochs:
            raise ValueError(
                f"LatencyMonitor(every_n_epochs={self.every_n_epochs}) never measures: training "
                f"stops after max_epochs={max_epochs}. Set every_n_epochs <= {max_epochs}."
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        first = self.every_n_epochs - 1  # the first epoch measured, at its end
        what = f"every_n_epochs={self.every_n_epochs} (a first measurement)"
        self.check_reached_within_max_steps(trainer, what, first, completes=True)
        if self._start_weights is None:  # else restored from a checkpoint
            self._start_weights = _layer_weights(pl_module)[0]
        # Found once: example_input reads a training batch, too costly for every epoch.
        self._example = self._find_example(trainer, pl_module)
        if self.baseline and trainer.is_global_zero and self._baseline_dir is None:
            self._baseline_dir = tempfile.TemporaryDirectory(prefix="lightning-accel-latency-")
            to_onnx(pl_module, self._example, Path(self._baseline_dir.name) / "baseline.onnx")

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        if self._baseline_dir is not None:
            self._baseline_dir.cleanup()
            self._baseline_dir = None

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        log_callback_settings(trainer)  # every callback's settings in W&B config / hparams
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
        self.metrics.update({k: v for k, v in metrics.items() if k != "epoch"})
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        row = {"epoch": epoch, **metrics}
        if "val/acc" in trainer.callback_metrics:
            row["val/acc"] = float(trainer.callback_metrics["val/acc"])
        # Measured from the model itself: conv/linear weights zeroed or removed since train start.
        total, nonzero = _layer_weights(pl_module)
        row["model/sparsity"] = 1.0 - nonzero / (self._start_weights or total)
        self.history.append(row)

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Export the current model and measure it; returns the metrics (with ``epoch``)."""
        started = time.perf_counter()
        example = self._example
        if example is None:  # measured outside fit
            example = self._find_example(trainer, pl_module)
        metrics: dict[str, float] = {}
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = to_onnx(pl_module, example, Path(tmp) / "model.onnx")
            compiled = get_backend(self.backend).compile(onnx_path, Path(tmp), threads=self.threads)
            compiled.input_bounds = value_range([example])  # token ids: within the seen range
            feed = runtime_feed(example, graph_input_names(onnx_path))
            base = None
            if self._baseline_dir is not None:
                base_onnx = Path(self._baseline_dir.name) / "baseline.onnx"
                base = get_backend(self.backend).compile(
                    base_onnx, Path(tmp) / "baseline", threads=self.threads
                )
            for batch_size in self.batch_sizes:
                key = f"latency/{self.backend}/b{batch_size}"
                if base is None:
                    metrics[f"{key}_ms"] = compiled.latency(batch_size, self.runs).median_ms
                    continue
                inputs = repeat_rows(feed, batch_size)
                rounds = max(1, min(5, self.runs))
                result = compare_latency(compiled, base, inputs, batch_size, self.runs, rounds)
                metrics[f"{key}_ms"] = result.model.median_ms
                metrics[f"{key}_speedup"] = result.speedup
                metrics[f"{key}_speedup_p25"] = result.speedup_p25
                metrics[f"{key}_speedup_p75"] = result.speedup_p75
                if result.warning is not None:  # the rule every speedup this library reports keeps
                    rank_zero_warn(
                        f"LatencyMonitor, epoch {trainer.current_epoch}, batch {batch_size}: "
                        f"{result.warning}",
                        category=UserWarning,
                    )
            metrics["model/onnx_bytes"] = float(onnx_path.stat().st_size)
        stats = model_stats(pl_module, example)
        metrics["model/params"] = float(stats.params)
        metrics["model/nonzero_params"] = float(stats.nonzero_params)
        metrics["model/macs"] = float(stats.macs)
        metrics["latency/monitor_s"] = time.perf_counter() - started
        metrics["epoch"] = float(trainer.current_epoch)
        return metrics

    def _find_example(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> ModelInput:
        """One example input on the CPU: a tensor, or a tuple for several inputs.

        Raises:
            ValueError: If the backend takes one graph input and the model several.
        """
        example = map_inputs(example_input(trainer, pl_module, several=True), lambda t: t.cpu())
        check_runtime_dtypes(
            pl_module, example, [self.backend], "LatencyMonitor", "backend='openvino'"
        )
        count = len(as_tuple(example))
        if count > 1 and self.backend not in SEVERAL_INPUT_BACKENDS:
            raise ValueError(
                f"LatencyMonitor(backend={self.backend!r}) times graphs with one input here, "
                f"but the model takes {count} inputs. Use backend= one of "
                f"{SEVERAL_INPUT_BACKENDS}."
            )
        return example

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        run = wandb_run(trainer)
        if run is not None and self.history:
            log_epoch_table(run, self.history, f"latency/{self.backend}/b{self.batch_sizes[0]}_ms")

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "start_weights": self._start_weights}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self._start_weights = state_dict.get("start_weights")


def _layer_weights(model: Any) -> tuple[int, int]:
    """Entries and non-zero entries of the conv/linear weights (a shared tensor counts once)."""
    weights = {id(m.weight): m.weight for m in model.modules() if isinstance(m, WEIGHTED_LAYERS)}
    total = sum(w.numel() for w in weights.values())
    return total, sum(int((w != 0).sum()) for w in weights.values())
