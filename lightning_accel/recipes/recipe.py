"""Recipes: one YAML file per architecture, in the format of Lightning's own ``LightningCLI``.

A recipe names the LightningModule, the data and the Trainer with its callbacks as
``class_path`` / ``init_args``, so ``LightningCLI`` reads it with ``--config`` unchanged, and
:class:`Recipe` reads it too: it checks that every ``class_path`` names a class of the kind its
place takes (never calling anything else a file names), validates every key and value against
the constructors' signatures and type hints before anything is built, and applies dotted
overrides.

Example:
    >>> overrides = ["callbacks.pruning.target_sparsity=0.7"]
    >>> recipe = Recipe.from_yaml("recipes/resnet18.yaml", overrides)  # doctest: +SKIP
    >>> callbacks = recipe.callbacks()  # doctest: +SKIP
    >>> trainer = L.Trainer(**recipe.trainer_kwargs(), callbacks=callbacks)  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from copy import deepcopy as _deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import lightning.pytorch as pl
import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger

from lightning_accel.recipes.files import (  # noqa: F401 - their old home
    RECIPES_DIR,
    bundled_recipes,
    description_of,
)
from lightning_accel.recipes.typecheck import (
    import_class,
    read_yaml,
    signature_hints,
    type_problem,
    yaml_problem,
)

# Short names for dotted overrides: callbacks.<name>.<argument>=value
CALLBACK_NAMES = {
    "lightning_accel.GradualPruning": "pruning",
    "lightning_accel.LatencyBudgetPruning": "latency_budget",
    "lightning_accel.LatencyMonitor": "latency",
    "lightning_accel.ExportOnFitEnd": "export",
    "lightning_accel.QuantizationAware": "quantization",
    "lightning_accel.Binarize": "binarization",
    "lightning_accel.Distillation": "distillation",
}
_TOP_LEVEL = ("seed_everything", "model", "data", "trainer")


class _Slot(NamedTuple):
    """What a ``class_path`` in one place of a recipe may name."""

    base: type
    base_name: str
    example: str


# Every class_path is checked against its slot before anything it names is used.
_SLOTS = {
    "model": _Slot(
        pl.LightningModule,
        "lightning.pytorch.LightningModule",
        "lightning_accel.ClassificationModule",
    ),
    "data": _Slot(
        pl.LightningDataModule,
        "lightning.pytorch.LightningDataModule",
        "lightning_accel.FashionMNISTDataModule",
    ),
    "callbacks": _Slot(
        Callback, "lightning.pytorch.callbacks.Callback", "lightning_accel.GradualPruning"
    ),
    "logger": _Slot(
        Logger, "lightning.pytorch.loggers.Logger", "lightning.pytorch.loggers.CSVLogger"
    ),
}


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the file, the key and the fix."""


@dataclass
class Recipe:
    """A validated recipe.

    Attributes:
        path: The YAML file.
        description: Its first comment line.
        config: The parsed, validated, overridden configuration.
    """

    path: Path
    description: str
    config: dict[str, Any] = field(repr=False)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
        """Read, override and validate a recipe.

        Nothing a ``class_path`` names is called before it is checked to be a class of the
        kind its place takes (see :meth:`validate`).

        Args:
            path: The YAML file.
            overrides: ``"key=value"`` strings with dotted keys, e.g.
                ``"callbacks.pruning.target_sparsity=0.7"``, ``"model.lr=0.1"``,
                ``"data.train_size=2000"``, ``"trainer.max_epochs=3"``, ``"seed_everything=1"``.

        Raises:
            RecipeError: Naming the file, the key, the bad value and what is allowed.
        """
        path = Path(path)
        if not path.is_file():
            raise RecipeError(
                f"Recipe {path} does not exist. "
                "List the bundled ones with `lightning-accel recipes`."
            )
        text, config = read_yaml(path, RecipeError)
        if not isinstance(config, dict):
            raise RecipeError(f"{path} must hold a YAML mapping with keys {list(_TOP_LEVEL)}")
        recipe = cls(path, description_of(text), config)
        recipe._check_shape()
        for override in overrides:
            recipe._override(override)
        recipe.validate()
        return recipe

    # ----------------------------------------------------------------------------- building
    def build_model(self) -> pl.LightningModule:
        """The LightningModule the recipe names."""
        return self._instantiate(self.config["model"], "model", "model", _SLOTS["model"])

    def datamodule(self) -> pl.LightningDataModule:
        """The LightningDataModule the recipe names."""
        return self._instantiate(self.config["data"], "data", "data", _SLOTS["data"])

    def callbacks(self) -> list[Callback]:
        """Fresh callback instances, in the recipe's order."""
        entries = self.config.get("trainer", {}).get("callbacks", [])
        return [
            self._instantiate(
                e, f"trainer.callbacks[{i}]", f"callbacks.{_short_name(e)}", _SLOTS["callbacks"]
            )
            for i, e in enumerate(entries)
        ]

    def trainer_kwargs(self) -> dict[str, Any]:
        """Trainer arguments other than the callbacks; a ``logger`` named by class_path is built."""
        trainer = self.config.get("trainer", {})
        kwargs = {k: v for k, v in trainer.items() if k != "callbacks"}
        if isinstance(trainer.get("logger"), (dict, list)):
            kwargs["logger"] = [
                self._instantiate(entry, key, key, _SLOTS["logger"])
                for entry, key in self._logger_entries()
            ]
        return kwargs

    def callback_config(self, name: str) -> dict[str, Any] | None:
        """The ``init_args`` of a callback by short name, e.g. ``"pruning"``."""
        for entry in self.config.get("trainer", {}).get("callbacks", []):
            if _short_name(entry) == name:
                return _init_args(entry)
        return None

    # ----------------------------------------------------------------------------- validation
    def validate(self) -> None:
        """Check every section against the classes it names, then build the callbacks.

        Every ``class_path`` is resolved and checked to be a subclass of what its place takes
        (``model``: LightningModule; ``data``: LightningDataModule; ``trainer.callbacks``:
        Callback; ``trainer.logger``: Logger) before any argument is checked and before
        anything is built; then the callbacks are built, so their own range checks run.

        Raises:
            RecipeError: On the first problem found.
        """
        self._check_shape()
        targets = {
            section: self._resolve(self.config[section]["class_path"], section, _SLOTS[section])
            for section in ("model", "data")
        }
        trainer = self.config.get("trainer", {})
        callbacks = trainer.get("callbacks", [])
        callback_targets = [
            self._resolve(entry["class_path"], f"trainer.callbacks[{i}]", _SLOTS["callbacks"])
            for i, entry in enumerate(callbacks)
        ]
        logger_targets = [
            (self._resolve(entry["class_path"], key, _SLOTS["logger"]), entry, key)
            for entry, key in self._logger_entries()
        ]
        # Only classes of the right kind get this far: now their signatures can be read.
        for section, target in targets.items():
            self._check_args(target, _init_args(self.config[section], copy=True), section)
        self._check_args(
            pl.Trainer,
            {k: v for k, v in trainer.items() if k not in ("callbacks", "logger")},
            "trainer",
        )
        for target, entry in zip(callback_targets, callbacks, strict=True):
            where = f"callbacks.{_short_name(entry)}"
            self._check_args(target, _init_args(entry, copy=True), where)
        for target, entry, key in logger_targets:
            self._check_args(target, _init_args(entry, copy=True), key)
        self.callbacks()  # the constructors' own checks (ranges, combinations)

    def _check_shape(self) -> None:
        """Sections, entries and their ``init_args`` have the right YAML shape."""
        unknown = set(self.config) - set(_TOP_LEVEL)
        if unknown:
            raise self._error(
                sorted(unknown)[0], "is not a recipe section", f"use {list(_TOP_LEVEL)}"
            )
        seed = self.config.get("seed_everything")
        if seed is not None and not isinstance(seed, int):
            raise self._error(
                "seed_everything",
                f"must be an integer; got {_show(seed)}",
                "e.g. seed_everything: 0; true picks a random seed, null none",
            )
        for section in ("model", "data"):
            if section not in self.config:
                raise self._error(section, "is missing", "name a class_path and its init_args")
            self._check_entry_shape(self.config[section], section)
        trainer = self.config.get("trainer", {})
        if not isinstance(trainer, dict):
            raise self._error(
                "trainer", f"must be a mapping of Trainer arguments; got {_show(trainer)}"
            )
        callbacks = trainer.get("callbacks", [])
        if not isinstance(callbacks, list):
            raise self._error(
                "trainer.callbacks",
                f"must be a list of class_path / init_args entries; got {_show(callbacks)}",
            )
        for i, entry in enumerate(callbacks):
            self._check_entry_shape(entry, f"trainer.callbacks[{i}]")
        logger = trainer.get("logger")
        if not (logger is None or isinstance(logger, (bool, dict, list))):
            raise self._error(
                "trainer.logger",
                f"must be true, false, null or class_path / init_args entries; got {_show(logger)}",
            )
        for entry, key in self._logger_entries():
            self._check_entry_shape(entry, key)

    def _check_entry_shape(self, entry: Any, key: str) -> None:
        example = "e.g. {class_path: lightning_accel.GradualPruning, init_args: {...}}"
        if not isinstance(entry, dict) or "class_path" not in entry:
            raise self._error(
                key, f"must be a mapping with class_path and init_args; got {_show(entry)}", example
            )
        extra = set(entry) - {"class_path", "init_args"}
        if extra:
            raise self._error(
                f"{key}.{sorted(extra)[0]}", "is not allowed here", "use class_path and init_args"
            )
        args = entry.get("init_args")
        if args is not None and not isinstance(args, dict):
            raise self._error(
                f"{key}.init_args",
                f"must be a mapping of argument: value; got {_show(args)}",
                "e.g. init_args: {lr: 0.1}",
            )

    def _logger_entries(self) -> list[tuple[Any, str]]:
        logger = self.config.get("trainer", {}).get("logger")
        if isinstance(logger, dict):
            return [(logger, "trainer.logger")]
        if isinstance(logger, list):
            return [(entry, f"trainer.logger[{i}]") for i, entry in enumerate(logger)]
        return []

    def _check_args(self, target: type, args: dict[str, Any], where: str) -> None:
        hints = signature_hints(target)
        for key, value in args.items():
            if key not in hints:
                allowed = ", ".join(sorted(hints))
                raise self._error(
                    f"{where}.{key}",
                    f"is not an argument of {target.__name__}",
                    f"allowed: {allowed}",
                )
            problem = type_problem(value, hints[key][0])
            if problem:
                raise self._error(f"{where}.{key}", f"{problem}; got {value!r}")
        for key, (_, default) in hints.items():
            if default is inspect.Parameter.empty and key not in args:
                raise self._error(
                    f"{where}.{key}",
                    f"is missing: {target.__name__} requires it",
                    "add it under init_args",
                )

    def _resolve(self, class_path: Any, key: str, slot: _Slot) -> type:
        """The class at ``key``.class_path, refused unless it is a subclass of the slot's base."""
        try:
            return import_class(class_path, slot.base, slot.base_name)
        except ModuleNotFoundError as err:
            raise self._error(
                f"{key}.class_path",
                f"{class_path!r} cannot be imported ({err})",
                "install its package, e.g. pip install 'lightning-accel[zoo]'",
            ) from err
        except ValueError as err:
            raise self._error(
                f"{key}.class_path",
                str(err),
                f"allowed: a {slot.base.__name__} subclass such as {slot.example}",
            ) from err

    def _instantiate(self, entry: dict[str, Any], key: str, where: str, slot: _Slot) -> Any:
        target = self._resolve(entry["class_path"], key, slot)
        try:
            return target(**_init_args(entry, copy=True))
        except (ValueError, TypeError, ModuleNotFoundError) as err:
            raise RecipeError(f"{self.path}: {where}: {err}") from err

    def _override(self, override: str) -> None:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise RecipeError(
                f"{self.path}: override {override!r} must look like key=value, "
                "e.g. trainer.max_epochs=3"
            )
        try:
            value = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError as err:
            raise self._error(
                key,
                f"has a value that is not YAML: {raw!r} ({yaml_problem(err)})",
                "close brackets and quotes, e.g. trainer.max_epochs=3 or "
                "'callbacks.export.batch_sizes=[1, 64]'",
            ) from err
        section, _, rest = key.partition(".")
        if key == "seed_everything":
            self.config["seed_everything"] = value
        elif not rest:
            raise self._error(
                key, "cannot be overridden as a whole", "override one argument, e.g. model.lr=0.1"
            )
        elif section in ("model", "data"):
            _init_args(self.config[section])[rest] = value
        elif section == "trainer":
            self.config.setdefault("trainer", {})[rest] = value
        elif section == "callbacks":
            name, _, argument = rest.partition(".")
            args = self.callback_config(name)
            if args is None or not argument:
                names = [
                    _short_name(e) for e in self.config.get("trainer", {}).get("callbacks", [])
                ]
                raise self._error(
                    key, "names no callback argument of this recipe", f"callbacks here: {names}"
                )
            args[argument] = value
        else:
            raise self._error(
                key,
                "is not a recipe key",
                "start with model., data., trainer., callbacks. or use seed_everything=",
            )

    def _error(self, key: str, problem: str, fix: str = "") -> RecipeError:
        return RecipeError(f"{self.path}: {key} {problem}" + (f" ({fix})" if fix else ""))


def _init_args(entry: dict[str, Any], copy: bool = False) -> dict[str, Any]:
    """An entry's ``init_args`` (created if null); ``copy``: a deep copy, the entry untouched."""
    if copy:
        return _deepcopy(entry.get("init_args") or {})
    if entry.get("init_args") is None:
        entry["init_args"] = {}
    return entry["init_args"]


def _show(value: Any) -> str:
    """A short repr of a bad value for a message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _short_name(entry: Any) -> str:
    class_path = entry.get("class_path", "?") if isinstance(entry, dict) else "?"
    return CALLBACK_NAMES.get(class_path, str(class_path).rpartition(".")[2].lower())
