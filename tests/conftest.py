"""Shared fixtures: tiny models and the bundled digits, so every test runs in seconds."""

from __future__ import annotations

import warnings

import lightning.pytorch as pl
import pytest
import torch

from lightning_accel import ClassificationModule, DigitsDataModule

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")


@pytest.fixture(autouse=True)
def _seed_and_threads() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)


@pytest.fixture
def digits() -> DigitsDataModule:
    data = DigitsDataModule(batch_size=64)
    data.setup()
    return data


def small_module(**kwargs: object) -> ClassificationModule:
    """The small CNN sized for 8x8 digits."""
    return ClassificationModule("small_cnn", input_size=8, lr=0.05, **kwargs)  # type: ignore[arg-type]


def quiet_trainer(tmp_path: object = None, **kwargs: object) -> pl.Trainer:
    """A CPU Trainer without progress bars; no logger/checkpoints unless asked for."""
    settings: dict = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    settings.update(kwargs)
    return pl.Trainer(**settings)
