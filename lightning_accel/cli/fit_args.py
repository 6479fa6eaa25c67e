"""The options of ``lightning-accel fit`` and the main job's settings, without heavy imports.

``lightning-accel --help`` builds its parser from here, so nothing here imports torch or
Lightning; :mod:`lightning_accel.cli.fit_job` runs the job.
"""

from __future__ import annotations

import argparse
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# GradualPruning's modes (lightning_accel.callbacks.pruning.PruningMode; a test keeps them equal)
PRUNING_MODES = ("structured", "unstructured", "2:4")
# The CPU runtimes the main job times (registry names); ONNX Runtime is the reference.
JOB_RUNTIMES = ("onnxruntime", "openvino")


@dataclass
class PruningJobConfig:
    """Settings of ``lightning-accel fit``; defaults finish in under 15 minutes on 2 CPU cores.

    Attributes:
        model: Zoo name of the architecture.
        mode: Pruning mode of :class:`GradualPruning`.
        target_sparsity: Target of :class:`GradualPruning`.
        dense_epochs: Epochs to train the dense baseline.
        prune_epochs: Epochs of pruning and fine-tuning that follow, starting from the baseline.
        qat_epochs: Epochs of quantization-aware training (``QuantizationAware``, int8) of the
            pruned model that follow, giving a third row; 0: none. Structured mode only
            (unstructured and 2:4 zeros would grow back without the pruning masks).
        backends: CPU runtimes to export to, verify and time, besides ONNX Runtime (always
            measured: the reference). ``None``: ONNX Runtime and OpenVINO when ``openvino`` is
            installed, else ONNX Runtime alone.
        train_size: Training images used (a fixed subset of the 55,000); ``None``: all.
        test_size: Test images used for accuracy; ``None``: all 10,000.
        val_size: Training images held out for per-epoch validation.
        batch_size: Training batch size.
        lr: Peak learning rate of the dense run; fine-tuning uses a fifth of it.
        data_dir: Folder with the Fashion-MNIST IDX files (default: Debian's).
        output_dir: Where checkpoints, ONNX files and ``summary.json`` go.
        threads: ONNX Runtime threads for latency; ``None``: all cores.
        latency_runs: Timed runs per latency figure (median reported).
        seed: Global seed.
    """

    model: str = "resnet18"
    mode: str = "structured"
    target_sparsity: float = 0.5
    dense_epochs: int = 3
    prune_epochs: int = 4
    qat_epochs: int = 1
    backends: tuple[str, ...] | None = None
    train_size: int | None = 12_000
    test_size: int | None = None
    val_size: int = 5000
    batch_size: int = 128
    lr: float = 0.05
    data_dir: str | None = None
    output_dir: str = "runs/fit"
    threads: int | None = None
    latency_runs: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        """Refuse every bad setting before anything is built or trained."""
        from lightning_accel.models.zoo import MODELS

        modes = list(PRUNING_MODES)
        sparsity = self.target_sparsity
        _require("model", self.model in MODELS, f"one of {sorted(MODELS)}", self.model)
        _require("mode", self.mode in modes, f"one of {modes}", self.mode)
        _require(
            "target_sparsity", _is_number(sparsity) and 0 <= sparsity < 1, "in [0, 1)", sparsity
        )
        _require("lr", _is_number(self.lr) and self.lr > 0, "> 0", self.lr)
        at_least = {
            "dense_epochs": (1, ""), "prune_epochs": (2, " (pruning, then fine-tuning)"),
            "qat_epochs": (0, " (0: no int8 row)"), "val_size": (0, ""), "batch_size": (1, ""),
            "latency_runs": (1, ""),
        }  # fmt: skip
        for name, (low, why) in at_least.items():
            value = getattr(self, name)
            _require(name, _is_int(value) and value >= low, f"an integer >= {low}{why}", value)
        for name, none in (("train_size", "all (--train-size 0)"), ("test_size", "all"),
                           ("threads", "all cores")):  # fmt: skip
            value = getattr(self, name)
            ok = value is None or (_is_int(value) and value >= 1)
            _require(name, ok, f"an integer >= 1, or None for {none}", value)
        if self.backends is not None:
            self.backends = _check_job_backends(self.backends)

    def runtimes(self) -> tuple[tuple[str, ...], str | None]:
        """The runtimes to measure, ONNX Runtime first, and a one-line note on what was left out.

        Returns:
            ``(runtimes, note)``: with ``backends=None``, ONNX Runtime and OpenVINO when
            ``openvino`` is installed; otherwise ONNX Runtime alone and a note naming the extra.
        """
        from lightning_accel.backends import get_backend

        if self.backends is not None:
            return ("onnxruntime", *(b for b in self.backends if b != "onnxruntime")), None
        problem = get_backend("openvino").problem()
        if problem is None:
            return JOB_RUNTIMES, None
        return ("onnxruntime",), f"OpenVINO not measured: {problem}; ONNX Runtime only."

    def quantizes(self) -> bool:
        """Whether the job adds the pruned + int8 QAT row (``qat_epochs`` > 0, structured)."""
        return self.qat_epochs > 0 and self.mode == "structured"

    @classmethod
    def quick(cls, **overrides: Any) -> PruningJobConfig:
        """A one-minute version: small subsets, one dense epoch, two pruning epochs."""
        settings: dict[str, Any] = dict(
            dense_epochs=1,
            prune_epochs=2,
            train_size=2048,
            test_size=1000,
            latency_runs=20,
            val_size=1000,
        )
        return cls(**{**settings, **overrides})


def _check_job_backends(backends: Any) -> tuple[str, ...]:
    """``backends`` as a tuple of the CPU runtimes the job can time, each installed.

    Raises:
        ValueError: Naming an unknown or duplicated runtime, or the extra to install.
    """
    names = (backends,) if isinstance(backends, str) else tuple(backends)
    for name in names:
        _require("backends", name in JOB_RUNTIMES, f"among {list(JOB_RUNTIMES)}", name)
    _require("backends", len(set(names)) == len(names), "without repeats", list(names))
    from lightning_accel.backends import get_backend

    for name in names:
        problem = get_backend(name).problem()
        if problem:
            raise ValueError(
                f"--backend {name}: {problem}. Install it, or leave out --backend {name}."
            )
    return names


def _require(name: str, ok: bool, allowed: str, value: Any) -> None:
    """Raise unless ``ok``, naming the setting, the command-line flag if it has one, the value."""
    if ok:
        return
    default = {"threads": 2, "test_size": 1000, "backends": "openvino"}.get(
        name, getattr(PruningJobConfig, name)
    )
    flag = {"backends": "backend"}.get(name, name.replace("_", "-"))
    on_command_line = f"--{flag}" in MAIN_JOB_FLAGS or name == "threads"
    example = f"--{flag} {default}" if on_command_line else f"PruningJobConfig({name}={default!r})"
    raise ValueError(f"{name} must be {allowed}; got {value!r}. Example: {example}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ------------------------------------------------------------------- `lightning-accel fit`
# The main job's flags: their PruningJobConfig field, and what to set instead with --recipe.
MAIN_JOB_FLAGS = {
    "--model": ("model", "another recipe (`lightning-accel recipes`) or --set model.model=NAME"),
    "--mode": ("mode", "--set callbacks.pruning.mode=MODE"),
    "--target-sparsity": ("target_sparsity", "--set callbacks.pruning.target_sparsity=VALUE"),
    "--dense-epochs": ("dense_epochs", "--set callbacks.pruning.start_epoch=N"),
    "--prune-epochs": ("prune_epochs", "--set trainer.max_epochs=N callbacks.pruning.end_epoch=M"),
    "--qat-epochs": (
        "qat_epochs",
        "a recipe with QuantizationAware (resnet18_qat) and --set "
        "callbacks.quantization.start_epoch=N",
    ),
    "--backend": ("backends", "--set 'callbacks.export.backends=[onnxruntime,openvino]'"),
    "--train-size": ("train_size", "--set data.train_size=N"),
}


def add_fit_arguments(p: argparse.ArgumentParser) -> None:
    """Add the options of ``lightning-accel fit`` (the main job's and a recipe run's) to ``p``."""
    job = PruningJobConfig  # class defaults: no instance, which would import the zoo
    # Main-job flags default to None so that the ones given can be told apart: they apply on
    # top of --quick, and are refused with --recipe.
    p.add_argument("--model", help=f"zoo model (default: {job.model})")
    p.add_argument("--mode", choices=list(PRUNING_MODES), help=f"default: {job.mode}")
    p.add_argument("--target-sparsity", type=float, help=f"default: {job.target_sparsity}")
    p.add_argument("--dense-epochs", type=int, help=f"default: {job.dense_epochs}")
    p.add_argument("--prune-epochs", type=int, help=f"default: {job.prune_epochs} (>= 2)")
    p.add_argument(
        "--qat-epochs",
        type=int,
        help=f"int8 QAT epochs of the pruned model, a third row (default: {job.qat_epochs}; "
        "0: none; structured mode only)",
    )
    p.add_argument(
        "--backend",
        dest="backends",
        action="append",
        choices=list(JOB_RUNTIMES),
        help="CPU runtime to time besides ONNX Runtime, the reference; repeatable "
        "(default: OpenVINO too when installed)",
    )
    p.add_argument(
        "--train-size",
        type=int,
        help=f"training images used (default: {job.train_size}; 0 = all 55,000)",
    )
    p.add_argument("--data", dest="data_dir", default=None, help="folder with the IDX files")
    p.add_argument("--output-dir", default=job.output_dir, help="default: %(default)s")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime / torch threads")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a one-minute version on small subsets (main-job flags given still apply)",
    )
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
        "positional_overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="with --recipe: more overrides, as W&B's ${args_no_hyphens} passes them",
    )
    p.add_argument(
        "--target-speedup",
        type=float,
        default=None,
        help="with a latency-budget recipe (e.g. resnet18_latency): "
        "callbacks.latency_budget.target_speedup",
    )
    p.add_argument(
        "--target-latency-ms",
        type=float,
        default=None,
        help="with a latency-budget recipe: callbacks.latency_budget.target_latency_ms",
    )
    p.add_argument(
        "--latency-budget-ms",
        type=float,
        default=None,
        help="with --recipe: batch-1 latency budget of the logged sweep/objective",
    )
    p.add_argument(
        "--logger",
        choices=["wandb", "csv", "none"],
        default=None,
        help="with --recipe: where metrics go (default: csv; wandb logs offline without "
        "credentials)",
    )


class _RaisingParser(argparse.ArgumentParser):
    """A parser whose errors raise ``ValueError`` instead of exiting."""

    def error(self, message: str) -> typing.NoReturn:
        raise ValueError(message)


def check_recipe_fit_options(tokens: Sequence[str]) -> list[str]:
    """Check the ``fit`` options of a run with ``--recipe`` (sweep commands); its overrides.

    Args:
        tokens: The words after ``fit``, e.g. ``["--recipe", "small_cnn", "--set", "k=v"]``.

    Returns:
        The recipe overrides they amount to: main-job flags translated (see
        :func:`main_job_flags_as_overrides`), then ``--set`` and ``KEY=VALUE`` ones.

    Raises:
        ValueError: Naming an option that is unknown or that a recipe run cannot apply.
    """
    parser = _RaisingParser(prog="lightning-accel fit", add_help=False)
    add_fit_arguments(parser)
    args = parser.parse_args(list(tokens))
    check_threads(args)
    translated = main_job_flags_as_overrides(args)
    return translated + list(args.overrides) + list(args.positional_overrides)


def given_main_job_flags(args: argparse.Namespace) -> dict[str, tuple[str, str]]:
    """The main-job flags given on the command line: ``{flag: (field, recipe fix)}``."""
    return {
        flag: (name, fix)
        for flag, (name, fix) in MAIN_JOB_FLAGS.items()
        if getattr(args, name) is not None
    }


# Main-job flags a recipe run applies as this recipe override; the others are refused there.
RECIPE_KEYS = {
    "--model": "model.model",
    "--mode": "callbacks.pruning.mode",
    "--target-sparsity": "callbacks.pruning.target_sparsity",
    "--train-size": "data.train_size",
}

# Recipe-only flags of LatencyBudgetPruning (the recipe then checks it has the key).
LATENCY_BUDGET_KEYS = {
    "target_speedup": "callbacks.latency_budget.target_speedup",
    "target_latency_ms": "callbacks.latency_budget.target_latency_ms",
}


def main_job_flags_as_overrides(args: argparse.Namespace) -> list[str]:
    """The main-job flags given with ``--recipe``, as the recipe overrides that apply them.

    ``--target-sparsity 0.3`` becomes ``callbacks.pruning.target_sparsity=0.3`` (the recipe
    then checks it has that key); ``--train-size 0`` becomes ``data.train_size=null`` (all).

    Raises:
        ValueError: For a flag no recipe key stands for (``--dense-epochs``,
            ``--prune-epochs``, ``--qat-epochs``, ``--backend``), naming the keys to set
            instead.
    """
    overrides = [
        f"{key}={getattr(args, name)}"
        for name, key in LATENCY_BUDGET_KEYS.items()
        if getattr(args, name, None) is not None
    ]
    for flag, (name, fix) in given_main_job_flags(args).items():
        value = getattr(args, name)
        if flag not in RECIPE_KEYS:
            shown = " ".join(map(str, value)) if isinstance(value, list) else value
            raise ValueError(
                f"{flag} {shown} applies to the main job's phases and has no one recipe "
                f"key; with --recipe set the keys instead: {fix}"
            )
        shown = "null" if flag == "--train-size" and value == 0 else value
        overrides.append(f"{RECIPE_KEYS[flag]}={shown}")
    return overrides


def refuse_main_job_flags(args: argparse.Namespace) -> None:
    """Refuse the main-job flags that a run with ``--recipe`` cannot apply.

    Raises:
        ValueError: See :func:`main_job_flags_as_overrides`.
    """
    main_job_flags_as_overrides(args)


def check_threads(args: argparse.Namespace) -> None:
    """Refuse ``--threads`` below 1.

    Raises:
        ValueError: Naming the value and an example.
    """
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1; got {args.threads}. Example: --threads 2")
