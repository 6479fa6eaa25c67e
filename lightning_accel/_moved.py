"""Old import paths (before the package was split into subpackages) keep working.

``import lightning_accel.benchmark`` and the like resolve to the module's new home with a
``DeprecationWarning`` naming it; a module that was split (``comparison``) answers for the
names of all its parts. Nothing here is imported until an old path is used.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from collections.abc import Sequence
from typing import Any

# old module -> the new module(s) holding its names (first one is named in the warning)
MOVED: dict[str, tuple[str, ...]] = {
    "lightning_accel.benchmark": (
        "lightning_accel.backends.timing",
        "lightning_accel.backends.onnxruntime",
    ),
    "lightning_accel.checkpoint_export": ("lightning_accel.export.checkpoint",),
    "lightning_accel.comparison": (
        "lightning_accel.export.compare",
        "lightning_accel.export.bench",
    ),
    "lightning_accel.fit_job": ("lightning_accel.cli.fit_job",),
    "lightning_accel.layers": ("lightning_accel.utilities.layer_selection",),
    "lightning_accel.model_stats": ("lightning_accel.utilities.model_stats",),
    "lightning_accel.module": ("lightning_accel.models.module",),
    "lightning_accel.recipe": ("lightning_accel.recipes.recipe",),
    "lightning_accel.recipe_run": ("lightning_accel.recipes.run",),
    "lightning_accel.report": ("lightning_accel.cli.report",),
    "lightning_accel.schedules": ("lightning_accel.pruning.schedules",),
    "lightning_accel.sparsity": ("lightning_accel.pruning.masks",),
    "lightning_accel.structured": ("lightning_accel.pruning.channels",),
    "lightning_accel.surgery": ("lightning_accel.checkpointing.structural_log",),
    "lightning_accel.typecheck": ("lightning_accel.recipes.typecheck",),
    "lightning_accel.verify": ("lightning_accel.export.verify",),
    "lightning_accel.zoo": ("lightning_accel.models.zoo",),
    "lightning_accel.callbacks._surgery_support": ("lightning_accel.callbacks.base",),
}


class _MovedModule(types.ModuleType):
    """Stands in for an old module: attribute lookups go to the new module(s)."""

    def __init__(self, name: str, targets: Sequence[str]) -> None:
        super().__init__(name, f"Moved to {', '.join(targets)}.")
        self._targets = tuple(targets)

    def __getattr__(self, attribute: str) -> Any:
        if attribute == "__all__":  # what ``from old import *`` takes: all the parts' names
            names = _star_names(self._targets)
            self.__dict__["__all__"] = names
            return names
        for target in self._targets:
            module = importlib.import_module(target)
            if hasattr(module, attribute):
                return getattr(module, attribute)
        raise AttributeError(
            f"{self.__name__} moved to {' and '.join(self._targets)}, which define no "
            f"{attribute!r}. Import from the new module(s)."
        )

    def __dir__(self) -> list[str]:
        names: set[str] = set()
        for target in self._targets:
            names.update(dir(importlib.import_module(target)))
        return sorted(names)


def _star_names(targets: Sequence[str]) -> list[str]:
    """The names ``from target import *`` gives, for all ``targets`` in order, each once."""
    names: dict[str, None] = {}
    for target in targets:
        module = importlib.import_module(target)
        public = getattr(module, "__all__", None)
        if public is None:  # Python's rule for a module without __all__
            public = [name for name in vars(module) if not name.startswith("_")]
        names.update(dict.fromkeys(public))
    return list(names)


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        targets = MOVED[spec.name]
        warnings.warn(
            f"{spec.name} moved to {' and '.join(targets)}; import it from there "
            "(the old path will be removed).",
            DeprecationWarning,
            stacklevel=3,
        )
        return _MovedModule(spec.name, targets)

    def exec_module(self, module: types.ModuleType) -> None:
        pass


def install() -> None:
    """Let old import paths resolve (idempotent)."""
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
