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
from urllib.parse import urlsplit

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

EPOCH_METRICS = ("val/*", "train/*", "test/*", "compress/*", "latency/*", "model/*")


def has_wandb_credentials() -> bool:
    """Whether W&B can sync, found the way W&B itself looks.

    ``WANDB_API_KEY`` (or ``WANDB_IDENTITY_TOKEN_FILE``), else a netrc entry (``NETRC`` or
    ``~/.netrc``) for the server W&B would talk to: its ``base_url`` setting, which honours
    ``WANDB_BASE_URL`` and ``wandb login --host``, so a self-hosted server counts.
    """
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = wandb_base_url()
    try:
        from wandb.sdk.lib.wbauth import read_netrc_auth
    except ImportError:  # an older wandb: the stdlib reads the same file
        try:
            return netrc.netrc().authenticators(urlsplit(host).hostname or "") is not None
        except (OSError, netrc.NetrcParseError):
            return False
    try:
        return read_netrc_auth(host=host) is not None
    except Exception:  # W&B's AuthenticationError: an entry that is not an API key
        return False


def wandb_base_url() -> str:
    """The W&B server URL W&B's settings resolve to (``WANDB_BASE_URL``, settings file)."""
    try:
        import wandb

        # As wandb's setup loads them (settings file, then environment), without creating its
        # process-wide singleton: that would freeze settings before the logger's own init.
        settings = wandb.Settings()
        settings.update_from_system_settings()
        settings.update_from_env_vars(dict(os.environ))
        return str(settings.base_url)
    except Exception:  # no wandb, or settings it refuses: the variable, else W&B's cloud
        return os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")


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
        if kwargs.get("log_model"):  # Lightning refuses log_model offline
            kwargs.pop("log_model")
            rank_zero_warn(
                "W&B offline: log_model is off (Lightning uploads checkpoints only online); the "
                "checkpoints stay on disk, and ExportOnFitEnd's ONNX artifact is still logged "
                "and synced by `wandb sync`."
            )
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(project=project, save_dir=str(save_dir), offline=offline, **kwargs)


def onnx_artifact_name(run_id: str) -> str:
    """The exported model's artifact: ``onnx-<run id>`` (Lightning's checkpoints: ``model-``)."""
    return f"onnx-{run_id}"


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
        files: Files to add to the ``onnx-<run id>`` artifact (type ``model``), e.g. the ONNX
            file; named apart from Lightning's ``model-<run id>`` checkpoint artifact.
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
    artifact = wandb.Artifact(name=onnx_artifact_name(run.id), type="model", metadata=summary)
    for path in files:
        artifact.add_file(str(path))
    run.log_artifact(artifact)
