"""The main job: train a dense baseline, prune it, quantize it, export and compare on two runtimes.

Rows: the dense fp32 baseline; a copy pruned during fine-tuning (``GradualPruning``); that pruned
model after int8 quantization-aware training (``QuantizationAware``). Each is exported to ONNX,
verified against PyTorch on real test images and timed on ONNX Runtime and, when installed,
OpenVINO: against the same runtime's fp32 baseline and against ONNX Runtime's.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger

from lightning_accel.callbacks.pruning import GradualPruning
from lightning_accel.callbacks.quantization import QuantizationAware
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


def verification_images(data: pl.LightningDataModule, count: int = 256) -> torch.Tensor:
    """The first ``count`` test images (fewer if the test split is smaller), ``[N, 1, 28, 28]``."""
    data.setup("test")
    images: list[torch.Tensor] = []
    for x, _ in data.test_dataloader():
        images.append(x)
        if sum(len(i) for i in images) >= count:
            break
    return torch.cat(images)[:count]


def quantize_in_place(
    module: ClassificationModule,
    cfg: PruningJobConfig,
    data: pl.LightningDataModule,
    out: Path,
    progress: bool,
) -> pl.Trainer:
    """Quantization-aware training of ``module`` (already pruned) for ``cfg.qat_epochs``.

    ``QuantizationAware`` swaps conv/linear layers for int8 fake-quant in ONNX Runtime's Q/DQ
    flavour (the one OpenVINO also runs fastest, docs/backends.md) at the first epoch; the
    learning rate is a tenth of the dense run's, cosine-annealed over the QAT epochs.

    Args:
        module: The pruned model; quantized in place.
        cfg: The job's settings (``qat_epochs``, ``lr``, threads).
        data: The data module the dense and pruning phases used.
        out: The job's output folder (checkpoints go under it).
        progress: Show Lightning's progress bar.

    Returns:
        The Trainer that ran it (for the test loop).
    """
    module.hparams["lr"] = cfg.lr / 10
    module.hparams["cosine_epochs"] = cfg.qat_epochs
    qat = QuantizationAware("onnxruntime", start_epoch=0)
    trainer = make_trainer(cfg.qat_epochs, [qat], out, "pruned_qat", progress)
    trainer.fit(module, datamodule=data)
    return trainer


def run_pruning_job(cfg: PruningJobConfig, progress: bool = True) -> list[ModelReport]:
    """Train, prune, quantize, export and measure on each runtime; returns the table rows.

    Prints one line first when OpenVINO is left out (not installed).
    """
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    pruning = pruning_callback(cfg)  # refuse bad settings before any training
    runtimes, note = cfg.runtimes()
    if note:
        print(note)
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

    example = dense.example_input_array
    assert isinstance(example, torch.Tensor)
    images = verification_images(data)

    def measure(name: str, module: ClassificationModule, accuracy: float, file: str) -> ModelReport:
        return measure_model(
            name,
            module.model,
            accuracy,
            example,
            out / file,
            threads=cfg.threads,
            runs=cfg.latency_runs,
            runtimes=runtimes,
            verify_inputs=images,
        )

    rows = [measure(f"dense fp32 ({cfg.dense_epochs} ep)", dense, dense_acc, "dense.onnx")]
    pruned = fine_tune_copy(dense, cfg.prune_epochs, cfg.lr / 5)
    trainer = make_trainer(cfg.prune_epochs, [pruning], out, "pruned", progress)
    trainer.fit(pruned, datamodule=data)
    name = f"{cfg.mode} {cfg.target_sparsity:.0%}"
    pruned_acc = test_accuracy(trainer, pruned, data)
    rows.append(measure(f"{name} (+{cfg.prune_epochs} ep)", pruned, pruned_acc, "pruned.onnx"))
    if cfg.quantizes():  # the pruned file is written: QAT continues on the same model
        trainer = quantize_in_place(pruned, cfg, data, out, progress)
        qat_acc = test_accuracy(trainer, pruned, data)
        label = f"{name} + int8 QAT (+{cfg.qat_epochs} ep)"
        rows.append(measure(label, pruned, qat_acc, "pruned_int8.onnx"))
    time_against_baseline(
        rows, rows[0], threads=cfg.threads, runs=cfg.latency_runs, runtimes=runtimes
    )
    extra = {"config": asdict(cfg), "runtimes": list(runtimes), "notes": [note] if note else []}
    write_summary(out / "summary.json", rows, extra)
    return rows


def print_report(rows: list[ModelReport]) -> None:
    """Print the table with the first row as the baseline, one line per runtime measured."""
    runtimes = list(rows[0].runtimes) or None
    print(format_table(rows, rows[0], runtimes))
