"""Experiment tracking: Weights & Biases, offline without credentials (DESIGN.md, contract 7)."""

from lightning_accel.tracking.wandb_logging import (
    EPOCH_METRICS,
    define_epoch_axis,
    has_wandb_credentials,
    log_epoch_table,
    log_export_to_wandb,
    wandb_logger,
    wandb_run,
)

__all__ = [
    "EPOCH_METRICS",
    "define_epoch_axis",
    "has_wandb_credentials",
    "log_epoch_table",
    "log_export_to_wandb",
    "wandb_logger",
    "wandb_run",
]
