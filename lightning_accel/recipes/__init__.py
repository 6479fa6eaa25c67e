"""Recipes: YAML files per architecture, validated against the constructors' signatures."""

from lightning_accel.recipes.recipe import RECIPES_DIR, Recipe, RecipeError, bundled_recipes

__all__ = ["RECIPES_DIR", "Recipe", "RecipeError", "bundled_recipes"]
