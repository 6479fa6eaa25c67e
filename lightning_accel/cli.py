"""The ``lightning-accel`` command line."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence


def _fit_parser(sub: argparse._SubParsersAction) -> None:
    from lightning_accel.fit_job import PruningJobConfig

    defaults = PruningJobConfig()
    p = sub.add_parser(
        "fit",
        help="train a dense baseline and a pruned model on Fashion-MNIST, export both, compare",
        description=(
            "Train ResNet-18 on Fashion-MNIST, prune it during fine-tuning with GradualPruning, "
            "export both to ONNX and print accuracy, size, MACs and ONNX Runtime latency."
        ),
    )
    p.add_argument("--model", default=defaults.model, help="zoo model (default: %(default)s)")
    p.add_argument("--mode", default=defaults.mode, choices=["structured", "unstructured", "2:4"])
    p.add_argument("--target-sparsity", type=float, default=defaults.target_sparsity)
    p.add_argument("--dense-epochs", type=int, default=defaults.dense_epochs)
    p.add_argument("--prune-epochs", type=int, default=defaults.prune_epochs)
    p.add_argument(
        "--train-size",
        type=int,
        default=defaults.train_size,
        help="training images used (default: %(default)s; 0 = all 55,000)",
    )
    p.add_argument("--data", dest="data_dir", default=None, help="folder with the IDX files")
    p.add_argument("--output-dir", default=defaults.output_dir)
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime / torch threads")
    p.add_argument("--quick", action="store_true", help="a one-minute version on small subsets")
    p.add_argument(
        "--recipe",
        default=None,
        help="run a recipe file (see `lightning-accel recipes`) instead of the main job",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key, e.g. callbacks.pruning.target_sparsity=0.7",
    )
    p.add_argument(
        "--logger",
        choices=["wandb", "csv", "none"],
        default="csv",
        help="with --recipe: where metrics go (wandb logs offline without credentials)",
    )


def _recipes_parser(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("recipes", help="list the bundled recipes with one-line descriptions")


def _run_fit(args: argparse.Namespace) -> int:
    if args.recipe:
        return _run_recipe(args)
    from lightning_accel.fit_job import PruningJobConfig, print_report, run_pruning_job

    settings = dict(
        model=args.model,
        mode=args.mode,
        target_sparsity=args.target_sparsity,
        data_dir=args.data_dir,
        output_dir=args.output_dir,
        threads=args.threads,
    )
    if args.quick:
        cfg = PruningJobConfig.quick(**settings)
    else:
        cfg = PruningJobConfig(
            **settings,
            dense_epochs=args.dense_epochs,
            prune_epochs=args.prune_epochs,
            train_size=args.train_size or None,
        )
    started = time.perf_counter()
    rows = run_pruning_job(cfg)
    print()
    print_report(rows)
    print(
        f"\nfinished in {time.perf_counter() - started:.0f} s; "
        f"summary: {cfg.output_dir}/summary.json"
    )
    return 0


def _run_recipe(args: argparse.Namespace) -> int:
    from lightning_accel.recipe_run import run_recipe, summary_table

    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    summary = run_recipe(
        args.recipe, overrides, quick=args.quick, logger=args.logger, output_dir=args.output_dir
    )
    print()
    print(summary_table(summary))
    return 0


def _list_recipes() -> int:
    from lightning_accel.recipe import bundled_recipes, description_of

    for path in bundled_recipes():
        print(f"{path.stem:20s} {description_of(path.read_text())}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lightning-accel``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="lightning-accel", description="Training-time model acceleration for Lightning."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _fit_parser(sub)
    _recipes_parser(sub)
    args = parser.parse_args(argv)
    try:
        if args.command == "recipes":
            return _list_recipes()
        return _run_fit(args)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        print(f"lightning-accel: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
