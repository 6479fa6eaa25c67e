"""Every callback's settings as flat hyperparameters, for W&B's config and Lightning's hparams.

W&B charts and sweep comparisons read a run's config; Lightning's loggers write
``hparams.yaml``. Both get the same dotted keys a recipe override uses
(``callbacks.pruning.target_sparsity``), so runs from recipes, sweeps and Python compare alike.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

_MISSING = object()


def callback_settings(callbacks: Iterable[Any]) -> dict[str, Any]:
    """Each callback's constructor arguments as read back from it, under dotted keys.

    An argument is read from the attribute of the same name, or from the callback's
    ``settings`` object (``ExportOnFitEnd`` keeps its timing options there); arguments it
    keeps under no such name are left out rather than guessed.

    Args:
        callbacks: Callback instances, e.g. ``trainer.callbacks``.

    Returns:
        ``{"callbacks.<name>.<argument>": value}``; ``<name>`` is the recipe's short name
        (``pruning``, ``quantization``, ``export``, ...) or the lower-cased class name.

    Example:
        >>> callback_settings([GradualPruning(0.5)])["callbacks.pruning.target_sparsity"]
        0.5
    """
    from lightning_accel.recipes.recipe import CALLBACK_NAMES

    flat: dict[str, Any] = {}
    for callback in callbacks:
        cls = type(callback)
        if not cls.__module__.startswith("lightning_accel."):
            continue  # Lightning's own callbacks carry no compression settings
        name = CALLBACK_NAMES.get(f"lightning_accel.{cls.__name__}", cls.__name__.lower())
        settings = getattr(callback, "settings", None)
        for argument in list(inspect.signature(cls.__init__).parameters)[1:]:
            value = getattr(callback, argument, _MISSING)
            if value is _MISSING and settings is not None:
                value = getattr(settings, argument, _MISSING)
            if value is not _MISSING and not callable(value):
                flat[f"callbacks.{name}.{argument}"] = plain(value)
    return flat


def plain(value: Any) -> Any:
    """A value as YAML/JSON keep it: tuples as lists, paths as strings, objects by repr."""
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (Path, os.PathLike)):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def log_callback_settings(trainer: pl.Trainer) -> dict[str, Any]:
    """Record every lightning_accel callback's settings with each of the Trainer's loggers.

    W&B puts them in the run's config; CSV and TensorBoard loggers in ``hparams.yaml``.
    Logging twice (two callbacks each calling this) writes the same keys again.

    Returns:
        The settings logged.
    """
    settings = callback_settings(trainer.callbacks)  # type: ignore[attr-defined]
    if settings and trainer.is_global_zero:
        for logger in trainer.loggers:
            logger.log_hyperparams(settings)
    return settings
