"""Weights & Biases: offline by default without credentials, one ``epoch`` axis, tables, artifacts.

Nothing here imports ``wandb`` unless a ``WandbLogger`` is in use, so every callback works the
same with CSVLogger, TensorBoardLogger or no logger.
"""

from __future__ import annotations

import netrc
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info

EPOCH_METRICS = ("val/*", "train/*", "test/*", "compress/*", "latency/*", "model/*")


def has_wandb_credentials() -> bool:
    """Whether W&B can sync: an API key in the environment or in ``~/.netrc``."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_logger(
    project: str = "lightning-accel", save_dir: str | os.PathLike = "runs", **kwargs: Any
) -> pl.loggers.WandbLogger:
    """A ``WandbLogger`` that syncs with credentials and logs offline without them.

    Example:
        >>> trainer = L.Trainer(logger=wandb_logger("my-project"))  # doctest: +SKIP
    """
    from lightning.pytorch.loggers import WandbLogger

    offline = kwargs.pop("offline", None)
    if offline is None:
        offline = os.environ.get("WANDB_MODE") == "offline" or not has_wandb_credentials()
    if offline:
        rank_zero_info(
            f"W&B: no credentials found, logging offline under {save_dir}/wandb. Sync later with "
            f"`wandb sync {save_dir}/wandb/offline-run-*` after `wandb login`."
        )
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(project=project, save_dir=str(save_dir), offline=offline, **kwargs)


def wandb_run(trainer: pl.Trainer) -> Any | None:
    """The W&B run of the Trainer's ``WandbLogger``, if it has one (rank zero only)."""
    if not trainer.is_global_zero:
        return None
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            return logger.experiment
    return None


def define_epoch_axis(run: Any) -> None:
    """Chart accuracy, compression, latency and size against ``epoch``."""
    run.define_metric("epoch")
    for pattern in EPOCH_METRICS:
        run.define_metric(pattern, step_metric="epoch")


def log_epoch_table(run: Any, rows: Sequence[dict[str, Any]], latency_key: str) -> None:
    """Log the per-epoch table and an accuracy-vs-latency chart (one point per epoch).

    Args:
        run: The W&B run, e.g. from :func:`wandb_run`.
        rows: One dict per epoch, metric name to value; the chart reads ``val/acc``.
        latency_key: Row key of the chart's x-axis, e.g. ``"latency/onnxruntime/b1_ms"``.
    """
    import wandb

    names = sorted({key for row in rows for key in row}, key=lambda k: (k != "epoch", k))
    columns: list[str | int] = list(names)
    table = wandb.Table(columns=columns, data=[[row.get(c) for c in names] for row in rows])
    chart = wandb.plot.scatter(
        table, x=latency_key, y="val/acc", title="accuracy vs latency, one point per epoch"
    )
    run.log({"compress/epoch_table": table, "compress/accuracy_vs_latency": chart})


def log_export_to_wandb(
    trainer: pl.Trainer, summary: dict[str, Any], files: Sequence[Path]
) -> None:
    """Put the final speedups in the run summary and the exported files in a model artifact.

    Does nothing without a ``WandbLogger`` or off rank zero.

    Args:
        trainer: The Trainer whose ``WandbLogger`` run receives the results.
        summary: ``ExportOnFitEnd``'s summary; per backend, ``"latency"`` rows by batch size
            (``"speedup"``, ``"model_ms"``) and ``"verification"`` are read.
        files: Files to add to the ``model-<run id>`` artifact, e.g. the ONNX file.
    """
    run = wandb_run(trainer)
    if run is None:
        return
    import wandb

    for backend, entry in summary["backends"].items():
        for batch, row in entry.get("latency", {}).items():
            run.summary[f"speedup/{backend}/b{batch}"] = row["speedup"]
            run.summary[f"latency/{backend}/b{batch}_ms"] = row["model_ms"]
        if "verification" in entry:
            run.summary[f"verification/{backend}/passed"] = entry["verification"]["passed"]
    artifact = wandb.Artifact(name=f"model-{run.id}", type="model", metadata=summary)
    for path in files:
        artifact.add_file(str(path))
    run.log_artifact(artifact)
