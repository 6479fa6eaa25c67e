"""The main job: train a dense baseline, prune it during fine-tuning, export and compare."""

from __future__ import annotations

import warnings
from dataclasses import asdict
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger

from lightning_accel.callbacks.pruning import GradualPruning
from lightning_accel.cli.fit_args import (  # noqa: F401 - re-exported
    MAIN_JOB_FLAGS,
    PruningJobConfig,
    add_fit_arguments,
    check_recipe_fit_options,
    check_threads,
    given_main_job_flags,
    refuse_main_job_flags,
)
from lightning_accel.cli.report import (
    ModelReport,
    format_table,
    measure_model,
    time_against_baseline,
    write_summary,
)
from lightning_accel.data import FashionMNISTDataModule
from lightning_accel.models.module import ClassificationModule


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
    time_against_baseline(rows, rows[0], threads=cfg.threads, runs=cfg.latency_runs)
    write_summary(out / "summary.json", rows, {"config": asdict(cfg)})
    return rows


def print_report(rows: list[ModelReport]) -> None:
    """Print the table with the first row as the baseline."""
    print(format_table(rows, rows[0]))
