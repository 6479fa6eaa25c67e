"""scikit-learn's bundled handwritten digits (1,797 8x8 images): real data for fast tests."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_accel.data.sampling import EpochShuffleSampler
from lightning_accel.export.manifest import ImagePreprocessing
from lightning_accel.utilities.imports import require
from lightning_accel.utilities.validation import check_int, check_number


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[1797, 1, 8, 8]`` scaled to [-1, 1] and labels ``[1797]``."""
    datasets = require("sklearn.datasets", "DigitsDataModule")
    bunch = datasets.load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).div_(8.0).sub_(1.0).unsqueeze(1)
    return images, torch.tensor(bunch.target, dtype=torch.int64)


class DigitsDataModule(pl.LightningDataModule):
    """The digits split into train / validation (the validation split doubles as test).

    Args:
        batch_size: Batch size of the training loader.
        val_fraction: Fraction held out for validation.
        seed: Seed of the split and of shuffling, an integer >= 0.

    Raises:
        ValueError: If an argument has the wrong type or is out of range (the message names it).
    """

    num_classes = 10
    in_channels = 1
    image_size = 8
    # load_digits_tensors maps the 0..16 intensities to x / 8 - 1 = (x / 16 - 0.5) / 0.5: an
    # 8-bit image (0..255, ink bright) gets the same with pixel / 255 (export/manifest.py).
    preprocessing = ImagePreprocessing(image_size=(8, 8), channels=1, mean=(0.5,), std=(0.5,))
    class_names = tuple(str(digit) for digit in range(10))

    def __init__(self, batch_size: int = 64, val_fraction: float = 0.2, seed: int = 0) -> None:
        super().__init__()
        check_int(batch_size, "batch_size", "DigitsDataModule(batch_size=64)")
        check_number(
            val_fraction,
            "val_fraction",
            "DigitsDataModule(val_fraction=0.2)",
            0,
            1,
            low_open=True,
            high_open=True,
        )
        check_int(seed, "seed", "DigitsDataModule(seed=0)", minimum=0)
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        images, labels = load_digits_tensors()
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.seed))
        n_val = int(round(self.val_fraction * len(labels)))
        self.val_set = TensorDataset(images[order[:n_val]], labels[order[:n_val]])
        self.train_set = TensorDataset(images[order[n_val:]], labels[order[n_val:]])

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup() first"
        sampler = EpochShuffleSampler(len(self.train_set), self.seed)
        return DataLoader(self.train_set, self.batch_size, sampler=sampler, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "call setup() first"
        return DataLoader(self.val_set, 256)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
