"""Running a recipe: the Trainer, a logger, a quick mode for smoke runs, and the final table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.utilities import rank_zero_warn

from lightning_accel.callbacks.export import ExportOnFitEnd
from lightning_accel.callbacks.latency import LatencyMonitor
from lightning_accel.export.compare import format_summary
from lightning_accel.recipes.recipe import Recipe, RecipeError
from lightning_accel.sweeps.objective import trial_result
from lightning_accel.utilities.files import atomic_write

LoggerName = Literal["wandb", "csv", "none"]


def quick_overrides(recipe: Recipe, output_dir: Path) -> list[str]:
    """Overrides that shrink a recipe to a smoke run of a minute or less."""
    # Pruning ends at epoch 1; quantization or binarization, when the recipe has it, takes a
    # third epoch.
    quantized = recipe.callback_config("quantization") is not None
    binarized = recipe.callback_config("binarization") is not None
    epochs = 3 if quantized or binarized else 2
    overrides = [
        f"trainer.max_epochs={epochs}",
        "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=2",
        "trainer.enable_checkpointing=false",
    ]
    if "cosine_epochs" in recipe.config["model"].get("init_args", {}):
        overrides.append(f"model.cosine_epochs={epochs}")
    if recipe.callback_config("pruning") is not None:
        overrides += [
            "callbacks.pruning.start_epoch=0",
            "callbacks.pruning.end_epoch=1",
            "callbacks.pruning.update_every_n_steps=null",
        ]
    if quantized:
        overrides += [
            "callbacks.quantization.start_epoch=2",
            "callbacks.quantization.freeze_observers_epoch=null",
            "callbacks.quantization.freeze_bn_epoch=null",
        ]
    if binarized:
        overrides += [
            "callbacks.binarization.start_epoch=2",
            "callbacks.binarization.end_epoch=null",
        ]
    if recipe.callback_config("latency") is not None:
        overrides.append("callbacks.latency.runs=3")
    if recipe.callback_config("export") is not None:
        overrides += [
            "callbacks.export.latency_runs=5",
            "callbacks.export.batch_sizes=[1]",
            "callbacks.export.verify_batches=1",
        ]
        if quantized or binarized:
            # A model trained for a dozen batches has near-tied logits, and int8 rounding flips
            # a few of them: a smoke run reports the verification instead of failing on it.
            overrides.append("callbacks.export.on_verification_failure=warn")
    return overrides


def make_logger(kind: LoggerName, output_dir: Path, name: str) -> Logger | bool:
    """A W&B (offline without credentials), CSV or no logger.

    Args:
        kind: ``"wandb"``, ``"csv"`` or ``"none"`` (any other value also gives no logger).
        output_dir: Folder the logger writes under (W&B files or ``<name>/version_<n>``).
        name: Run name (the W&B run name, or the CSV logger's subfolder).

    Returns:
        A ``WandbLogger`` or ``CSVLogger``, or ``False`` (the Trainer's "no logger").
    """
    if kind == "wandb":
        from lightning_accel.tracking.wandb_logging import wandb_logger

        return wandb_logger(save_dir=output_dir, name=name)
    if kind == "csv":
        return CSVLogger(output_dir, name=name)
    return False


def run_recipe(
    path: str | Path,
    overrides: list[str] | None = None,
    quick: bool = False,
    logger: LoggerName = "csv",
    output_dir: str | Path = "runs",
    progress: bool = True,
    latency_budget_ms: float | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Fit a recipe and return its export summary (empty if it has no ExportOnFitEnd).

    Everything the run writes goes under ``output_dir/<recipe name>``; the export folder is
    ``export`` there unless an override moves it. When the recipe exports, the trial's
    ``sweep/*`` metrics (accuracy, batch-1 latency, objective under ``latency_budget_ms``) are
    logged and written to ``trial.json``.

    Args:
        path: The recipe YAML file; its stem names the run and its output folder.
        overrides: ``"key=value"`` recipe overrides, e.g. ``"trainer.max_epochs=3"``.
        quick: Shrink the run to a smoke test (few epochs and batches, short timings).
        logger: ``"wandb"``, ``"csv"`` or ``"none"`` (see :func:`make_logger`).
        output_dir: Root folder; the run writes under ``output_dir/<recipe stem>``.
        progress: Show the Trainer's progress bar.
        latency_budget_ms: Batch-1 latency budget of ``sweep/objective``, in milliseconds;
            ``None``: no budget (the objective is the accuracy).
        threads: Torch threads for training, and the ``threads`` of the recipe's
            ``LatencyMonitor`` and ``ExportOnFitEnd`` (ONNX Runtime); ``None``: as configured.

    Returns:
        The export summary of the recipe's ``ExportOnFitEnd``, or ``{}`` if it has none.

    Loggers the recipe names under ``trainer.logger`` (class_path entries) log next to the
    one ``logger`` picks.

    Raises:
        RecipeError: If the recipe or an override is invalid; nothing has run then.
        ValueError: If the export has a batch-1 latency but no validation accuracy (after fit).
    """
    out = Path(output_dir) / Path(path).stem
    recipe = Recipe.from_yaml(path, overrides or [])
    placed = (
        [f"callbacks.export.dirpath={out / 'export'}"] if recipe.callback_config("export") else []
    )
    own = (recipe.callback_config("export") or {}).get("dirpath")
    overridden = any(o.startswith("callbacks.export.dirpath=") for o in overrides or [])
    if own is not None and Path(own) != out / "export" and not overridden:
        rank_zero_warn(
            f"{path}: ExportOnFitEnd writes to {out / 'export'} (under --output-dir), not to the "
            f"recipe's dirpath {own}; pass --set callbacks.export.dirpath={own} to keep it."
        )
    extra = quick_overrides(recipe, out) if quick else []
    threaded = [
        f"callbacks.{name}.threads={threads}"
        for name in ("latency", "export")
        if threads is not None and recipe.callback_config(name) is not None
    ]
    recipe = Recipe.from_yaml(path, placed + extra + threaded + list(overrides or []))
    trainer_kwargs = recipe.trainer_kwargs()
    named = trainer_kwargs.pop("logger", None)
    if named is True:
        raise RecipeError(
            f"{path}: trainer.logger true (Lightning's default logger) is chosen here with "
            "--logger / logger=; remove it, or name a Logger class_path"
        )
    loggers = list(named or []) + [make_logger(logger, out, Path(path).stem)]
    seed = recipe.config.get("seed_everything")
    if seed is True:  # as in LightningCLI: a random seed, logged by Lightning
        pl.seed_everything(workers=True)
    elif seed is not None and seed is not False:
        pl.seed_everything(seed, workers=True)
    if threads is not None:
        torch.set_num_threads(threads)
    callbacks = recipe.callbacks()
    trainer = pl.Trainer(
        **{"default_root_dir": str(out), "enable_progress_bar": progress, **trainer_kwargs},
        callbacks=callbacks,
        logger=[each for each in loggers if isinstance(each, Logger)] or False,
    )
    trainer.fit(recipe.build_model(), datamodule=recipe.datamodule())
    export = next((c for c in callbacks if isinstance(c, ExportOnFitEnd)), None)
    summary = export.summary if export is not None else {}
    backend = export.settings.backends[0] if export is not None else None
    if backend and summary.get("backends", {}).get(backend, {}).get("latency", {}).get("1"):
        result = trial_result(summary, latency_budget_ms, backend)
        for each in trainer.loggers:
            each.log_metrics(result, step=trainer.global_step)
        final = {**last_logged_values(trainer, callbacks), **result}
        atomic_write(out / "trial.json", json.dumps({**final, "overrides": overrides or []}))
    return summary


def last_logged_values(trainer: pl.Trainer, callbacks: list[Callback]) -> dict[str, float]:
    """The last value of every scalar metric the run logged (module, callbacks, latency)."""
    values = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    for callback in callbacks:
        if isinstance(callback, LatencyMonitor) and callback.history:
            values.update(
                {k: float(v) for k, v in callback.history[-1].items() if isinstance(v, float)}
            )
    return values


def summary_table(summary: dict[str, Any]) -> str:
    """The export summary as printed by the command line."""
    return format_summary(summary) if summary else "(this recipe exports nothing)"
