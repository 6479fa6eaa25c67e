"""Recipes: YAML files per architecture, validated against the constructors' signatures.

``Recipe`` and ``RecipeError`` import Lightning, so they load on first use; finding and
listing recipe files (:mod:`lightning_accel.recipes.files`) does not.
"""

from __future__ import annotations

import importlib
from typing import Any

from lightning_accel.recipes.files import RECIPES_DIR, bundled_recipes

__all__ = ["RECIPES_DIR", "Recipe", "RecipeError", "bundled_recipes"]


def __getattr__(name: str) -> Any:
    if name in ("Recipe", "RecipeError"):
        return getattr(importlib.import_module("lightning_accel.recipes.recipe"), name)
    raise AttributeError(f"module 'lightning_accel.recipes' has no attribute {name!r}")
