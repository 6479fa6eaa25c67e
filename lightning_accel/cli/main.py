"""The ``lightning-accel`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from lightning_accel.backends import DEFAULT_BACKEND, backend_names


def _fit_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fit",
        help="train a dense, a pruned and a pruned int8 model on Fashion-MNIST, export, compare",
        description=(
            "Train ResNet-18 on Fashion-MNIST, prune it during fine-tuning with GradualPruning, "
            "then train it for int8 with QuantizationAware; export each to ONNX, verify it "
            "against PyTorch and print accuracy, size, MACs and latency on ONNX Runtime and, "
            "when installed, OpenVINO (each against its own fp32 baseline and ONNX Runtime's). "
            "With --recipe: fit a recipe instead; its keys are set with --set KEY=VALUE. "
            "Exit code 2: bad input (nothing has run)."
        ),
    )
    from lightning_accel.cli.fit_args import add_fit_arguments

    add_fit_arguments(p)


def _recipes_parser(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("recipes", help="list the bundled recipes with one-line descriptions")


def _add_timing_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--batch-sizes", type=int, nargs="+", default=[1, 64], help="default: %(default)s"
    )
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: all)")
    p.add_argument("--runs", type=int, default=50, help="timed runs (default: %(default)s)")


def _export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint, compile, verify and time it against its uncompressed baseline",
        description=(
            "Rebuild a checkpoint (pruning replayed), export it to ONNX, compile it for each "
            "backend, verify it against PyTorch and time it next to the uncompressed "
            "architecture. Exit code 0: all passed; 1: a backend failed or verification "
            "disagreed (files are still written); 2: bad input."
        ),
    )
    p.add_argument("checkpoint", help="a .ckpt file written by Lightning")
    p.add_argument(
        "--backend",
        dest="backends",
        action="append",
        choices=backend_names(),
        help="repeat for several (default: onnxruntime)",
    )
    p.add_argument("--output-dir", default="export", help="default: %(default)s")
    p.add_argument(
        "--module",
        default="lightning_accel.ClassificationModule",
        help="the checkpoint's LightningModule class (default: %(default)s)",
    )
    p.add_argument("--data", dest="data_dir", default=None, help="Fashion-MNIST IDX folder")
    p.add_argument("--no-verify", action="store_true", help="skip the comparison with PyTorch")
    p.add_argument("--no-baseline", action="store_true", help="skip the baseline and timing")
    _add_timing_arguments(p)


def _bench_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="time an ONNX model (median of many runs), optionally against a baseline",
        description="Time an ONNX model on a backend after warm-up: median, p90, throughput.",
    )
    p.add_argument("onnx", help="the model file")
    p.add_argument("--baseline", default=None, help="another ONNX file timed the same way")
    p.add_argument("--backend", default=DEFAULT_BACKEND, choices=backend_names())
    _add_timing_arguments(p)


def _run_fit(args: argparse.Namespace) -> int:
    from lightning_accel.cli.fit_job import (
        PruningJobConfig,
        check_threads,
        given_main_job_flags,
        print_report,
        run_pruning_job,
    )

    check_threads(args)
    if args.recipe:
        return _run_recipe(args)
    given = [
        flag
        for flag, value in (
            ("KEY=VALUE overrides", args.positional_overrides),
            ("--set", args.overrides),
            ("--latency-budget-ms", args.latency_budget_ms),
            ("--target-speedup", args.target_speedup),
            ("--target-latency-ms", args.target_latency_ms),
            ("--logger", args.logger),
        )
        if value not in (None, [])
    ]
    if given:
        raise ValueError(
            f"{', '.join(given)}: only used with a recipe; add --recipe FILE (see "
            "`lightning-accel recipes`), or leave out for the main job."
        )
    settings = dict(data_dir=args.data_dir, output_dir=args.output_dir, threads=args.threads)
    for name, _ in given_main_job_flags(args).values():
        settings[name] = getattr(args, name)
    if settings.get("backends") is not None:
        settings["backends"] = tuple(settings["backends"])
    if settings.get("train_size") == 0:
        settings["train_size"] = None  # all 55,000 images
    # Flags given apply on top of the quick settings; the config refuses bad values.
    cfg = PruningJobConfig.quick(**settings) if args.quick else PruningJobConfig(**settings)
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
    from lightning_accel.cli.fit_args import main_job_flags_as_overrides

    recipe = _resolve_recipe(args.recipe)
    # Main-job flags become the recipe keys they stand for (or are refused); --set wins.
    overrides = main_job_flags_as_overrides(args)
    overrides += list(args.overrides) + list(args.positional_overrides)
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    if args.latency_budget_ms is not None and args.latency_budget_ms <= 0:
        raise ValueError(f"--latency-budget-ms must be > 0; got {args.latency_budget_ms}")
    from lightning_accel.recipes.run import run_recipe, summary_table

    summary = run_recipe(
        recipe,
        overrides,
        quick=args.quick,
        logger=args.logger or "csv",
        output_dir=args.output_dir,
        latency_budget_ms=args.latency_budget_ms,
        threads=args.threads,
    )
    if not summary:  # ExportOnFitEnd printed the table, then where its files are
        print(summary_table(summary))
    return 0


def _resolve_recipe(name: str) -> str:
    """A recipe file by path or bundled name; says where a bundled one lives.

    Raises:
        FileNotFoundError: Naming the bundled recipes.
    """
    from pathlib import Path

    from lightning_accel.recipes.files import bundled_recipes, find_recipe

    found = find_recipe(name)
    if found is None:
        names = ", ".join(p.stem for p in bundled_recipes())
        raise FileNotFoundError(
            f"Recipe {name} does not exist: give a recipe file or a bundled name ({names})."
        )
    if not Path(name).is_file():
        print(f"lightning-accel: recipe {name}: {found}", file=sys.stderr)
    return str(found)


def _sweep_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="run a W&B sweep over recipe keys (--local: without a W&B server)",
        description=(
            "Run a sweep file from recipes/sweeps/. With W&B credentials it creates the sweep "
            "and runs W&B's agent; with --local it runs the trials here (grid and random; "
            "bayes through W&B's sweeps engine), each an offline W&B run. Ends with the table "
            "of trials and the accuracy-vs-latency Pareto front. Exit code 0: at least one "
            "trial finished; 1: none did; 2: bad input."
        ),
    )
    p.add_argument("config", help="a sweep file, e.g. recipes/sweeps/resnet18_sparsity_grid.yaml")
    p.add_argument("--count", type=int, default=None, help="trials (default: the whole grid)")
    p.add_argument("--local", action="store_true", help="run here, without the W&B server")
    p.add_argument("--quick", action="store_true", help="each trial as a smoke run (fit --quick)")
    p.add_argument("--output-dir", default="runs/sweeps", help="default: %(default)s")
    p.add_argument("--project", default="lightning-accel", help="W&B project")
    p.add_argument("--seed", type=int, default=0, help="seed of random search")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a recipe override for every trial, e.g. trainer.max_epochs=3 (checked first)",
    )


def _run_sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lightning_accel.sweeps.config import SweepConfig
    from lightning_accel.sweeps.results import format_trials, log_sweep_to_wandb, mark_pareto_front
    from lightning_accel.sweeps.runner import fetch_agent_trials, run_local, run_with_agent

    sweep = SweepConfig.from_yaml(args.config, extra_overrides=args.overrides)
    out = Path(args.output_dir) / sweep.path.stem
    if args.local:
        trials = run_local(
            sweep, args.count, out, quick=args.quick, seed=args.seed, progress=_progress
        )
    else:
        sweep_id = run_with_agent(sweep, args.count, args.project)
        trials = fetch_agent_trials(sweep, sweep_id, args.project)
    front = mark_pareto_front(trials)
    print(format_trials(trials, sweep.metric))
    print(f"\nPareto front (accuracy vs batch-1 latency): trials {[t.number for t in front]}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps([t.as_dict() for t in trials], indent=2))
    chart = _pareto_chart(trials, out / "pareto.png")
    run_dir = log_sweep_to_wandb(trials, sweep.path.stem, out, args.project)
    print(f"trials: {out / 'sweep.json'}; {chart}; W&B summary run: {run_dir}")
    return 0 if front else 1


def _pareto_chart(trials: list, path: object) -> str:
    """Draw the sweep's Pareto chart (PNG) if matplotlib is installed; say what was done."""
    from pathlib import Path

    from lightning_accel.tracking.plots import plot_pareto, plots_available

    note = plots_available()
    return note if note is not None else f"chart: {plot_pareto(trials, Path(str(path)))}"


def _progress(message: str) -> None:
    print(f"[lightning-accel] {message} ...", file=sys.stderr, flush=True)


def _check_timing(args: argparse.Namespace) -> None:
    if any(b < 1 for b in args.batch_sizes) or args.runs < 1:
        raise ValueError(
            f"--batch-sizes and --runs must be >= 1; got {args.batch_sizes} and {args.runs}"
        )


def _run_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lightning_accel.export.checkpoint import export_checkpoint
    from lightning_accel.export.compare import ComparisonSettings, format_summary

    _check_timing(args)
    settings = ComparisonSettings(
        backends=tuple(args.backends or [DEFAULT_BACKEND]),
        batch_sizes=tuple(args.batch_sizes),
        verify=not args.no_verify,
        benchmark=not args.no_baseline,
        threads=args.threads,
        latency_runs=args.runs,
    )
    outcome = export_checkpoint(
        args.checkpoint,
        Path(args.output_dir),
        settings,
        module_class=args.module,
        data_dir=args.data_dir,
        progress=_progress,
    )
    print(format_summary(outcome.summary))
    print(f"\nsummary: {Path(args.output_dir) / 'summary.json'}")
    for backend, entry in outcome.summary.get("backends", {}).items():
        for batch, row in (entry.get("latency") or {}).items():
            if row and row.get("warning"):  # the spread says the speedup cannot be trusted
                print(
                    f"lightning-accel: {backend} batch {batch}: {row['warning']}", file=sys.stderr
                )
    for problem in outcome.errors + outcome.mismatches:
        print(f"lightning-accel: {problem}", file=sys.stderr)
    return 1 if outcome.errors or outcome.mismatches else 0


def _run_bench(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from lightning_accel.export.bench import bench_onnx, format_bench

    _check_timing(args)
    with tempfile.TemporaryDirectory(prefix="lightning-accel-bench-") as tmp:
        rows = bench_onnx(
            Path(args.onnx),
            Path(args.baseline) if args.baseline else None,
            args.backend,
            Path(tmp),
            batch_sizes=args.batch_sizes,
            threads=args.threads,
            runs=args.runs,
            progress=_progress,
        )
    print(format_bench(rows, args.backend))
    return 0


def _list_recipes() -> int:
    from lightning_accel.recipes.files import bundled_recipes, description_of

    for path in bundled_recipes():
        print(f"{path.stem:20s} {description_of(path.read_text())}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lightning-accel``; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="lightning-accel", description="Training-time model acceleration for Lightning."
    )
    # Imported here, not at the top: `python -m lightning_accel.cli.serve` (the container's
    # entry) imports this package first, and runpy warns when it finds the module already there.
    from lightning_accel.cli import serve as serve_cli  # torch-free

    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    _fit_parser(sub)
    _recipes_parser(sub)
    _export_parser(sub)
    _bench_parser(sub)
    _sweep_parser(sub)
    serve_cli.add_parser(sub)
    args = parser.parse_args(argv)
    commands = {
        "fit": _run_fit,
        "recipes": lambda _: _list_recipes(),
        "export": _run_export,
        "bench": _run_bench,
        "sweep": _run_sweep,
        "serve": serve_cli.run,
    }
    try:
        return commands[args.command](args)
    except (ValueError, OSError, ModuleNotFoundError) as err:  # bad input: nothing has run
        _print_error(err)
        return 2
    except RuntimeError as err:  # a runtime failed (e.g. TensorRT without a GPU)
        _print_error(err)
        return 1


def _version() -> str:
    """The installed distribution's version, else the package's own."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lightning-accel")
    except PackageNotFoundError:
        from lightning_accel import __version__

        return __version__


def _print_error(err: BaseException) -> None:
    """One line on stderr, however many lines the message has."""
    print(f"lightning-accel: error: {' '.join(str(err).split())}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
