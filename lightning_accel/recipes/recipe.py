"""Recipes: one YAML file per architecture, in the format of Lightning's own ``LightningCLI``.

A recipe names the LightningModule, the data and the Trainer with its callbacks as
``class_path`` / ``init_args``, so ``LightningCLI`` reads it with ``--config`` unchanged, and
:class:`Recipe` reads it too: it validates every key and value against the constructors'
signatures and type hints before anything is built, and applies dotted overrides.

Example:
    >>> overrides = ["callbacks.pruning.target_sparsity=0.7"]
    >>> recipe = Recipe.from_yaml("recipes/resnet18.yaml", overrides)  # doctest: +SKIP
    >>> callbacks = recipe.callbacks()  # doctest: +SKIP
    >>> trainer = L.Trainer(**recipe.trainer_kwargs(), callbacks=callbacks)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml
from lightning.pytorch.callbacks import Callback

from lightning_accel.recipes.typecheck import signature_hints, type_problem

# Short names for dotted overrides: callbacks.<name>.<argument>=value
CALLBACK_NAMES = {
    "lightning_accel.GradualPruning": "pruning",
    "lightning_accel.LatencyMonitor": "latency",
    "lightning_accel.ExportOnFitEnd": "export",
    "lightning_accel.QuantizationAware": "quantization",
    "lightning_accel.Binarize": "binarization",
}
_TOP_LEVEL = ("seed_everything", "model", "data", "trainer")


def _recipes_dir() -> Path:
    """The checkout's ``recipes/``, else the copy a wheel installs under ``<prefix>/share``."""
    checkout = Path(__file__).resolve().parents[2] / "recipes"
    installed = Path(sys.prefix) / "share" / "lightning-accel" / "recipes"
    return checkout if checkout.is_dir() or not installed.is_dir() else installed


RECIPES_DIR = _recipes_dir()


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

        Args:
            path: The YAML file.
            overrides: ``"key=value"`` strings with dotted keys, e.g.
                ``"callbacks.pruning.target_sparsity=0.7"``, ``"model.lr=0.1"``,
                ``"data.train_size=2000"``, ``"trainer.max_epochs=3"``.

        Raises:
            RecipeError: Naming the file, the key, the bad value and what is allowed.
        """
        path = Path(path)
        if not path.is_file():
            raise RecipeError(
                f"Recipe {path} does not exist. "
                "List the bundled ones with `lightning-accel recipes`."
            )
        text = path.read_text()
        try:
            config = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise RecipeError(f"{path} is not valid YAML: {err}") from err
        if not isinstance(config, dict):
            raise RecipeError(f"{path} must hold a YAML mapping with keys {list(_TOP_LEVEL)}")
        recipe = cls(path, description_of(text), config)
        for override in overrides:
            recipe._override(override)
        recipe.validate()
        return recipe

    # ----------------------------------------------------------------------------- building
    def build_model(self) -> pl.LightningModule:
        """The LightningModule the recipe names."""
        return self._instantiate(self.config["model"], "model")

    def datamodule(self) -> pl.LightningDataModule:
        """The LightningDataModule the recipe names."""
        return self._instantiate(self.config["data"], "data")

    def callbacks(self) -> list[Callback]:
        """Fresh callback instances, in the recipe's order."""
        entries = self.config.get("trainer", {}).get("callbacks", [])
        return [self._instantiate(e, f"callbacks.{_short_name(e)}") for e in entries]

    def trainer_kwargs(self) -> dict[str, Any]:
        """Trainer arguments other than the callbacks."""
        return {k: v for k, v in self.config.get("trainer", {}).items() if k != "callbacks"}

    def callback_config(self, name: str) -> dict[str, Any] | None:
        """The ``init_args`` of a callback by short name, e.g. ``"pruning"``."""
        for entry in self.config.get("trainer", {}).get("callbacks", []):
            if _short_name(entry) == name:
                return entry.setdefault("init_args", {})
        return None

    # ----------------------------------------------------------------------------- validation
    def validate(self) -> None:
        """Check every section against the constructors it names.

        Raises:
            RecipeError: On the first problem found.
        """
        unknown = set(self.config) - set(_TOP_LEVEL)
        if unknown:
            raise self._error(
                sorted(unknown)[0], "is not a recipe section", f"use {list(_TOP_LEVEL)}"
            )
        for section in ("model", "data"):
            if section not in self.config:
                raise self._error(section, "is missing", "name a class_path and its init_args")
            self._check_entry(self.config[section], section)
        trainer = self.config.get("trainer", {})
        if not isinstance(trainer, dict):
            raise self._error("trainer", "must be a mapping of Trainer arguments")
        self._check_args(
            pl.Trainer, {k: v for k, v in trainer.items() if k != "callbacks"}, "trainer"
        )
        callbacks = trainer.get("callbacks", [])
        if not isinstance(callbacks, list):
            raise self._error(
                "trainer.callbacks", "must be a list of class_path / init_args entries"
            )
        for entry in callbacks:
            self._check_entry(entry, f"callbacks.{_short_name(entry)}")
        self.callbacks()  # the constructors' own checks (ranges, combinations)

    def _check_entry(self, entry: Any, where: str) -> None:
        if not isinstance(entry, dict) or "class_path" not in entry:
            raise self._error(where, "must be a mapping with class_path and init_args")
        extra = set(entry) - {"class_path", "init_args"}
        if extra:
            raise self._error(
                f"{where}.{sorted(extra)[0]}", "is not allowed here", "use class_path and init_args"
            )
        target = self._resolve(entry["class_path"], where)
        self._check_args(target, entry.get("init_args") or {}, where)

    def _check_args(self, target: Any, args: dict[str, Any], where: str) -> None:
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

    def _resolve(self, class_path: Any, where: str) -> Any:
        module_name, _, name = str(class_path).rpartition(".")
        try:
            return getattr(importlib.import_module(module_name), name)
        except ModuleNotFoundError as err:
            raise self._error(
                f"{where}.class_path",
                f"{class_path!r} cannot be imported ({err})",
                "install its package, e.g. pip install 'lightning-accel[zoo]'",
            ) from err
        except (AttributeError, ValueError) as err:
            raise self._error(f"{where}.class_path", f"{class_path!r} does not exist") from err

    def _instantiate(self, entry: dict[str, Any], where: str) -> Any:
        target = self._resolve(entry["class_path"], where)
        try:
            return target(**copy.deepcopy(entry.get("init_args") or {}))
        except (ValueError, ModuleNotFoundError) as err:
            raise RecipeError(f"{self.path}: {where}: {err}") from err

    def _override(self, override: str) -> None:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise RecipeError(
                f"Override {override!r} must look like key=value, e.g. trainer.max_epochs=3"
            )
        value = yaml.safe_load(raw) if raw else None
        section, _, rest = key.partition(".")
        if not rest:
            raise self._error(
                key, "cannot be overridden as a whole", "override one argument, e.g. model.lr=0.1"
            )
        if section in ("model", "data"):
            self.config.setdefault(section, {}).setdefault("init_args", {})[rest] = value
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
                key, "is not a recipe key", "start with model., data., trainer. or callbacks."
            )

    def _error(self, key: str, problem: str, fix: str = "") -> RecipeError:
        return RecipeError(f"{self.path}: {key} {problem}" + (f" ({fix})" if fix else ""))


def _short_name(entry: Any) -> str:
    class_path = entry.get("class_path", "?") if isinstance(entry, dict) else "?"
    return CALLBACK_NAMES.get(class_path, str(class_path).rpartition(".")[2].lower())


def description_of(text: str) -> str:
    """A recipe's first comment line, its one-line description."""
    for line in text.splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def bundled_recipes() -> list[Path]:
    """The recipe files shipped in ``recipes/``."""
    return sorted(RECIPES_DIR.glob("*.yaml"))
