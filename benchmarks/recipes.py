"""Recipe benchmark: one row per recipe on Fashion-MNIST, measured in one run.

Columns: dense accuracy, final accuracy, ONNX Runtime latency of both and the speedup.

The dense row runs the same recipe with the compression callbacks removed (same data, epochs and
optimizer); the final row is the recipe as written. Latency: ExportOnFitEnd's numbers for the
final model against the model captured at fit start, measured in the same process.

    .venv/bin/python benchmarks/recipes.py                         # every recipe (over an hour)
    .venv/bin/python benchmarks/recipes.py resnet18 --quick       # smoke run
    .venv/bin/python benchmarks/recipes.py --set data.train_size=6000   # smaller data, all recipes
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lightning.pytorch as pl

from lightning_accel.callbacks import ExportOnFitEnd
from lightning_accel.recipes.recipe import Recipe, bundled_recipes
from lightning_accel.recipes.run import quick_overrides


def fit_and_test(recipe: Recipe, keep_compression: bool) -> tuple[float, dict]:
    """Fit the recipe (optionally without its compression callbacks) and test it."""
    seed = recipe.config.get("seed_everything")
    if seed is not None:
        pl.seed_everything(seed, workers=True)
    # The dense run keeps only the export hook, so both rows are measured the same way.
    callbacks = [c for c in recipe.callbacks() if keep_compression or isinstance(c, ExportOnFitEnd)]
    kwargs = {**recipe.trainer_kwargs(), "enable_progress_bar": False, "logger": False}
    trainer = pl.Trainer(**kwargs, callbacks=callbacks)
    model, data = recipe.build_model(), recipe.datamodule()
    trainer.fit(model, datamodule=data)
    accuracy = 100 * trainer.test(model, datamodule=data, verbose=False)[0]["test/acc"]
    export = next((c for c in callbacks if isinstance(c, ExportOnFitEnd)), None)
    return accuracy, export.summary if export else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="recipe names (default: all)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output-dir", default="runs/bench_recipes")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override applied to every recipe, e.g. data.train_size=6000",
    )  # fmt: skip
    args = parser.parse_args()
    out = Path(args.output_dir)
    paths = [p for p in bundled_recipes() if not args.names or p.stem in args.names]
    rows = []
    for path in paths:
        started = time.perf_counter()
        base = Recipe.from_yaml(path)
        overrides = [f"callbacks.export.dirpath={out / path.stem / 'export'}"]
        overrides += quick_overrides(base, out / path.stem) if args.quick else []
        overrides += args.overrides
        dense_acc, _ = fit_and_test(Recipe.from_yaml(path, overrides), keep_compression=False)
        final_acc, summary = fit_and_test(Recipe.from_yaml(path, overrides), keep_compression=True)
        latency = summary["backends"]["onnxruntime"]["latency"]
        batch = "64" if "64" in latency else "1"
        row = latency[batch]
        rows.append(
            (
                path.stem,
                dense_acc,
                final_acc,
                batch,
                row["baseline_ms"],
                row["model_ms"],
                row["speedup"],
            )
        )
        print(
            f"{path.stem}: dense {dense_acc:.2f}%, final {final_acc:.2f}%, {row['speedup']:.2f}x "
            f"({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    print("\n| recipe | dense top-1 % | final top-1 % | batch | dense ms | final ms | speedup |")
    print("|---|---|---|---|---|---|---|")
    for name, dense, final, batch, dense_ms, final_ms, speedup in rows:
        print(
            f"| {name} | {dense:.2f} | {final:.2f} | {batch} | {dense_ms:.2f} | {final_ms:.2f} | "
            f"{speedup:.2f}x |"
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipes.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
