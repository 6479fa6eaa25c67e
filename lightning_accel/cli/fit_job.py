"""The main job: train a dense baseline, prune it during fine-tuning, export and compare."""

from __future__ import annotations

import argparse
import typing
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger

from lightning_accel.callbacks.pruning import GradualPruning, PruningMode
from lightning_accel.cli.report import ModelReport, format_table, measure_model, write_summary
from lightning_accel.data import FashionMNISTDataModule
from lightning_accel.models.module import ClassificationModule


@dataclass
class PruningJobConfig:
    """Settings of ``lightning-accel fit``; defaults finish in under 15 minutes on 2 CPU cores.

    Attributes:
        model: Zoo name of the architecture.
        mode: Pruning mode of :class:`GradualPruning`.
        target_sparsity: Target of :class:`GradualPruning`.
        dense_epochs: Epochs to train the dense baseline.
        prune_epochs: Epochs of pruning and fine-tuning that follow, starting from the baseline.
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

        modes = list(typing.get_args(PruningMode))
        sparsity = self.target_sparsity
        _require("model", self.model in MODELS, f"one of {sorted(MODELS)}", self.model)
        _require("mode", self.mode in modes, f"one of {modes}", self.mode)
        _require(
            "target_sparsity", _is_number(sparsity) and 0 <= sparsity < 1, "in [0, 1)", sparsity
        )
        _require("lr", _is_number(self.lr) and self.lr > 0, "> 0", self.lr)
        at_least = {
            "dense_epochs": (1, ""), "prune_epochs": (2, " (pruning, then fine-tuning)"),
            "val_size": (0, ""), "batch_size": (1, ""), "latency_runs": (1, ""),
        }  # fmt: skip
        for name, (low, why) in at_least.items():
            value = getattr(self, name)
            _require(name, _is_int(value) and value >= low, f"an integer >= {low}{why}", value)
        for name, none in (("train_size", "all (--train-size 0)"), ("test_size", "all"),
                           ("threads", "all cores")):  # fmt: skip
            value = getattr(self, name)
            ok = value is None or (_is_int(value) and value >= 1)
            _require(name, ok, f"an integer >= 1, or None for {none}", value)

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


def _require(name: str, ok: bool, allowed: str, value: Any) -> None:
    """Raise unless ``ok``, naming the setting, the command-line flag if it has one, the value."""
    if ok:
        return
    default = {"threads": 2, "test_size": 1000}.get(name, getattr(PruningJobConfig, name))
    flag = name.replace("_", "-")
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
    "--train-size": ("train_size", "--set data.train_size=N"),
}


def add_fit_arguments(p: argparse.ArgumentParser) -> None:
    """Add the options of ``lightning-accel fit`` (the main job's and a recipe run's) to ``p``."""
    job = PruningJobConfig()
    # Main-job flags default to None so that the ones given can be told apart: they apply on
    # top of --quick, and are refused with --recipe.
    p.add_argument("--model", help=f"zoo model (default: {job.model})")
    p.add_argument(
        "--mode", choices=list(typing.get_args(PruningMode)), help=f"default: {job.mode}"
    )
    p.add_argument("--target-sparsity", type=float, help=f"default: {job.target_sparsity}")
    p.add_argument("--dense-epochs", type=int, help=f"default: {job.dense_epochs}")
    p.add_argument("--prune-epochs", type=int, help=f"default: {job.prune_epochs} (>= 2)")
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


def check_recipe_fit_options(tokens: Sequence[str]) -> None:
    """Refuse ``fit`` options that a run with ``--recipe`` would not apply (sweep commands).

    Args:
        tokens: The words after ``fit``, including ``--recipe FILE``.

    Raises:
        ValueError: Naming the option and what to use instead.
    """
    parser = _RaisingParser(prog="lightning-accel fit", add_help=False)
    add_fit_arguments(parser)
    args = parser.parse_args(list(tokens))
    refuse_main_job_flags(args)
    check_threads(args)


def given_main_job_flags(args: argparse.Namespace) -> dict[str, tuple[str, str]]:
    """The main-job flags given on the command line: ``{flag: (field, recipe fix)}``."""
    return {
        flag: (name, fix)
        for flag, (name, fix) in MAIN_JOB_FLAGS.items()
        if getattr(args, name) is not None
    }


def refuse_main_job_flags(args: argparse.Namespace) -> None:
    """Refuse the main-job flags given with ``--recipe``, naming the recipe key to set instead.

    Raises:
        ValueError: Naming the first such flag, its value and the ``--set`` to use.
    """
    given = given_main_job_flags(args)
    if given:
        flag, (name, fix) = next(iter(given.items()))
        raise ValueError(
            f"{flag} {getattr(args, name)} applies to the main job and is not used with "
            f"--recipe; set the recipe's key instead: {fix}"
        )


def check_threads(args: argparse.Namespace) -> None:
    """Refuse ``--threads`` below 1.

    Raises:
        ValueError: Naming the value and an example.
    """
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1; got {args.threads}. Example: --threads 2")


def make_trainer(
    epochs: int,
    callbacks: list[Callback],
    output_dir: Path,
    name: str,
    progress: bool = True,
    accelerator: str = "cpu",
) -> pl.Trainer:
    """A one-device Trainer that logs to CSV and keeps the last checkpoint.

    On the CPU every run is deterministic; on a GPU some kernels (e.g. adaptive average
    pooling's backward pass) have no deterministic version, so Lightning only warns.

    Args:
        epochs: Maximum training epochs.
        callbacks: Callbacks to attach, e.g. ``[GradualPruning(...)]``.
        output_dir: Root folder; logs and checkpoints go under ``output_dir/name``.
        name: Run name: the CSV logger's name and the run's subfolder.
        progress: Show the progress bar.
        accelerator: Lightning accelerator, e.g. ``"cpu"``, ``"gpu"`` or ``"auto"``.
    """
    return pl.Trainer(
        max_epochs=epochs,
        accelerator=accelerator,
        devices=1,
        callbacks=callbacks,
        logger=CSVLogger(output_dir, name=name),
        enable_checkpointing=True,
        default_root_dir=output_dir / name,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True if accelerator == "cpu" else "warn",
    )


def fine_tune_copy(dense: ClassificationModule, epochs: int, lr: float) -> ClassificationModule:
    """A fresh module with the dense weights and a fine-tuning learning rate.

    Args:
        dense: The trained module; its hyperparameters and weights are copied, not changed.
        epochs: Length of the new cosine learning-rate schedule, in epochs.
        lr: Peak learning rate of the fine-tuning.
    """
    hp = dict(dense.hparams)
    hp.update(lr=lr, cosine_epochs=epochs)
    module = ClassificationModule(**hp)
    module.load_state_dict(dense.state_dict())
    return module


def test_accuracy(
    trainer: pl.Trainer, module: ClassificationModule, data: pl.LightningDataModule
) -> float:
    """Top-1 accuracy on the test split, in percent.

    Args:
        trainer: The Trainer that runs the test loop.
        module: The module to test; it must log ``test/acc``.
        data: The data module providing the test split.

    Returns:
        The accuracy in [0, 100].
    """
    results = trainer.test(module, datamodule=data, verbose=False)
    return 100.0 * float(results[0]["test/acc"])


def pruning_callback(cfg: PruningJobConfig) -> GradualPruning:
    """The job's pruning schedule: cubic, reaching the target two epochs before the end."""
    return GradualPruning(
        cfg.target_sparsity,
        mode=cfg.mode,  # type: ignore[arg-type]
        schedule="cubic",
        start_epoch=0,
        end_epoch=max(cfg.prune_epochs - 2, 1),
        update_every_n_steps=None,
    )


def run_pruning_job(cfg: PruningJobConfig, progress: bool = True) -> list[ModelReport]:
    """Train, prune, export and measure; prints and returns the table rows."""
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    pruning = pruning_callback(cfg)  # refuse bad settings before any training
    pl.seed_everything(cfg.seed, workers=True)
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    out = Path(cfg.output_dir)
    data = FashionMNISTDataModule(
        cfg.data_dir,
        batch_size=cfg.batch_size,
        val_size=cfg.val_size,
        train_size=cfg.train_size,
        test_size=cfg.test_size,
    )
    data.prepare_data()
    dense = ClassificationModule(cfg.model, lr=cfg.lr, cosine_epochs=cfg.dense_epochs)
    trainer = make_trainer(cfg.dense_epochs, [], out, "dense", progress)
    trainer.fit(dense, datamodule=data)
    dense_acc = test_accuracy(trainer, dense, data)

    pruned = fine_tune_copy(dense, cfg.prune_epochs, cfg.lr / 5)
    trainer = make_trainer(cfg.prune_epochs, [pruning], out, "pruned", progress)
    trainer.fit(pruned, datamodule=data)
    pruned_acc = test_accuracy(trainer, pruned, data)

    example = dense.example_input_array
    assert isinstance(example, torch.Tensor)
    rows = [
        measure_model(
            f"dense ({cfg.dense_epochs} ep)",
            dense.model,
            dense_acc,
            example,
            out / "dense.onnx",
            threads=cfg.threads,
            runs=cfg.latency_runs,
        ),
        measure_model(
            f"{cfg.mode} {cfg.target_sparsity:.0%} (+{cfg.prune_epochs} ep)",
            pruned.model,
            pruned_acc,
            example,
            out / "pruned.onnx",
            threads=cfg.threads,
            runs=cfg.latency_runs,
        ),
    ]
    write_summary(out / "summary.json", rows, {"config": asdict(cfg)})
    return rows


def print_report(rows: list[ModelReport]) -> None:
    """Print the table with the first row as the baseline."""
    print(format_table(rows, rows[0]))
