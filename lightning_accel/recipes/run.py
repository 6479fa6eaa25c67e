"""Running a recipe: the Trainer, a logger, a quick mode for smoke runs, and the final table."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.utilities import rank_zero_warn

from lightning_accel.callbacks.export import ExportOnFitEnd
from lightning_accel.callbacks.latency import LatencyMonitor
from lightning_accel.export.compare import format_summary
from lightning_accel.recipes.recipe import Recipe, RecipeError, _short_name
from lightning_accel.sweeps.objective import trial_result
from lightning_accel.utilities.files import atomic_write

LoggerName = Literal["wandb", "csv", "none"]


# Schedule arguments in epochs that --quick scales with the epochs; step counts are dropped.
EPOCH_ARGUMENTS = ("start_epoch", "end_epoch", "freeze_observers_epoch", "freeze_bn_epoch")
STEP_ARGUMENTS = ("update_every_n_steps",)
QUICK_SPEEDUP = 1.2  # --quick caps a latency-budget recipe's target_speedup at this


def quick_overrides(recipe: Recipe, output_dir: Path | None = None) -> list[str]:
    """Overrides that shrink a recipe to a smoke run of a minute or less.

    Training runs 2 epochs (3 when the recipe quantizes or binarizes) of 4 batches, and every
    callback schedule in epochs is scaled with the epochs: an epoch ``e`` of a ``max_epochs=E``
    recipe becomes ``round(e * quick / E)``, kept below the last epoch, with a start still
    before its end (a freeze epoch that lands on its start is dropped). ``every_n_epochs`` is
    scaled the same way (at least 1). A latency budget is profiled with one probe width and
    3 timing rounds, and a ``target_speedup`` above ``QUICK_SPEEDUP`` is lowered to it (fewer
    measured stages, each an export). Pass the recipe with the user's overrides applied: the
    schedules scaled are the ones the run would use.

    Args:
        recipe: The recipe, overrides included.
        output_dir: Unused; kept for callers of the earlier signature.

    Returns:
        ``key=value`` overrides to apply after the user's.
    """
    del output_dir
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
    recipe_epochs = recipe.config.get("trainer", {}).get("max_epochs")
    full = recipe_epochs if isinstance(recipe_epochs, int) and recipe_epochs > 0 else epochs
    names = [_short_name(entry) for entry in recipe.config.get("trainer", {}).get("callbacks", [])]
    scaled = {
        name: scaled_schedule(recipe.callback_config(name) or {}, full, epochs) for name in names
    }
    _keep_phases_apart(recipe, scaled, epochs)
    for name, changed in scaled.items():
        for key, value in changed.items():
            overrides.append(f"callbacks.{name}.{key}={'null' if value is None else value}")
    if recipe.callback_config("latency") is not None:
        overrides.append("callbacks.latency.runs=3")
    budget = recipe.callback_config("latency_budget")
    if budget is not None:  # fewer probes and rounds
        overrides += [
            "callbacks.latency_budget.widths_per_group=1",
            "callbacks.latency_budget.timing_rounds=3",
            "callbacks.latency_budget.max_corrections=1",
        ]
        if float(budget.get("target_speedup") or 0.0) > QUICK_SPEEDUP:
            # a mild budget: one measured stage and the last cut, each an exact export,
            # instead of the three or four stages a large one takes (about 5 s each)
            overrides.append(f"callbacks.latency_budget.target_speedup={QUICK_SPEEDUP}")
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


def _keep_phases_apart(recipe: Recipe, scaled: dict[str, dict[str, Any]], epochs: int) -> None:
    """Quantization or binarization that started after pruning ended still does, once scaled."""
    pruning = recipe.callback_config("pruning") or {}
    prune = scaled.get("pruning", {})
    for name in ("quantization", "binarization"):
        args = recipe.callback_config(name)
        end = pruning.get("end_epoch")
        if args is None or not isinstance(end, int) or args.get("start_epoch", 0) <= end:
            continue
        later = scaled[name]
        prune_end = prune.get("end_epoch", end)
        start = min(max(later.get("start_epoch", 0), prune_end + 1), epochs - 1)
        later["start_epoch"] = start
        prune["end_epoch"] = min(prune_end, start - 1)
        prune["start_epoch"] = min(
            prune.get("start_epoch", pruning.get("start_epoch", 0)), max(prune["end_epoch"] - 1, 0)
        )
        for key in ("freeze_observers_epoch", "freeze_bn_epoch"):
            if later.get(key) is not None and later[key] <= start:
                later[key] = None
    if prune:
        scaled["pruning"] = prune


def scaled_schedule(args: dict[str, Any], epochs: int, quick: int) -> dict[str, int | None]:
    """A callback's schedule arguments scaled from ``epochs`` to ``quick`` epochs.

    Args:
        args: The callback's ``init_args``.
        epochs: The run's ``max_epochs``.
        quick: The shortened run's ``max_epochs``.

    Returns:
        The arguments to change, e.g. ``{"start_epoch": 0, "end_epoch": 1}`` for a pruning
        schedule 1..4 of 6 epochs shortened to 2; step counts become ``None``.

    Example:
        >>> scaled_schedule({"start_epoch": 1, "end_epoch": 4}, 6, 2)
        {'start_epoch': 0, 'end_epoch': 1}
    """
    changed: dict[str, int | None] = {}
    for key in EPOCH_ARGUMENTS:
        value = args.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            changed[key] = min(round(value * quick / epochs), quick - 1)
    start, end = changed.get("start_epoch", args.get("start_epoch", 0)), changed.get("end_epoch")
    if isinstance(start, int) and end is not None and end <= start:
        changed["start_epoch"] = start = max(end - 1, 0)
        changed["end_epoch"] = end = start + 1
    for key in ("freeze_observers_epoch", "freeze_bn_epoch"):
        if changed.get(key) is not None and isinstance(start, int) and changed[key] <= start:  # type: ignore[operator]
            changed[key] = None
    every = args.get("every_n_epochs")
    if isinstance(every, int) and not isinstance(every, bool):
        changed["every_n_epochs"] = max(1, min(round(every * quick / epochs), quick))
    for key in STEP_ARGUMENTS:
        if args.get(key) is not None:
            changed[key] = None
    return changed


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

        # A local sweep names each trial after its values (WANDB_NAME) and groups them.
        return wandb_logger(save_dir=output_dir, name=os.environ.get("WANDB_NAME") or name)
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
    threaded = [
        f"callbacks.{name}.threads={threads}"
        for name in ("latency", "export")
        if threads is not None and recipe.callback_config(name) is not None
    ]
    applied = placed + threaded + list(overrides or [])
    if quick:  # scaled from the schedules the user's overrides set, so applied after them
        applied += quick_overrides(Recipe.from_yaml(path, applied))
    recipe = Recipe.from_yaml(path, applied)
    save_resolved_recipe(recipe, out / "config.yaml", applied)
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
    hyperparameters = recipe_hyperparameters(recipe, applied, quick)
    for each in trainer.loggers:
        each.log_hyperparams(hyperparameters)
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


def save_resolved_recipe(recipe: Recipe, path: Path, overrides: list[str]) -> Path:
    """Write the recipe as this run uses it (overrides applied), as LightningCLI's ``config.yaml``.

    ``lightning-accel fit --recipe <path>`` reruns it exactly, and LightningCLI reads it with
    ``--config``. The header names the source recipe and the overrides applied.

    Args:
        recipe: The recipe, overrides applied.
        path: The file to write (its folder is created).
        overrides: The overrides that were applied, in order.

    Returns:
        ``path``.
    """
    header = f"# Resolved from {recipe.path}" + (
        f" with overrides: {' '.join(overrides)}\n" if overrides else "\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, header + yaml.safe_dump(recipe.config, sort_keys=False))
    return path


def recipe_hyperparameters(recipe: Recipe, overrides: list[str], quick: bool) -> dict[str, Any]:
    """Every setting of a recipe run as flat, dotted keys: what loggers record as hyperparameters.

    Keys are the override keys (``callbacks.pruning.target_sparsity``, ``model.lr``,
    ``data.train_size``, ``trainer.max_epochs``), so a local sweep's trials and W&B agent
    trials name their swept values alike; plus ``recipe.name``, ``recipe.path``,
    ``recipe.overrides`` and ``recipe.quick``.

    Args:
        recipe: The recipe, overrides applied.
        overrides: The overrides applied, in order.
        quick: Whether the run is a ``--quick`` smoke run.

    Returns:
        A flat mapping of dotted keys to plain values.
    """
    config = recipe.config
    flat: dict[str, Any] = {
        "recipe.name": recipe.path.stem,
        "recipe.path": str(recipe.path),
        "recipe.overrides": list(overrides),
        "recipe.quick": quick,
        "seed_everything": config.get("seed_everything"),
    }
    for section in ("model", "data"):
        entry = config.get(section) or {}
        flat[f"{section}.class_path"] = entry.get("class_path")
        flat.update({f"{section}.{k}": v for k, v in (entry.get("init_args") or {}).items()})
    trainer = config.get("trainer") or {}
    flat.update({f"trainer.{k}": v for k, v in trainer.items() if k not in ("callbacks", "logger")})
    for entry in trainer.get("callbacks") or []:
        name = _short_name(entry)
        flat[f"callbacks.{name}.class_path"] = entry.get("class_path")
        flat.update({f"callbacks.{name}.{k}": v for k, v in (entry.get("init_args") or {}).items()})
    return flat


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
