"""Shuffling that depends only on (seed, epoch), so a resumed run sees the same batches."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochShuffleSampler(Sampler[int]):
    """A random permutation per epoch, seeded by ``seed + epoch``.

    Lightning calls :meth:`set_epoch` before each epoch, so a run resumed from a checkpoint
    draws the same batches as the uninterrupted run; a generator shared across epochs would
    restart its sequence on resume.
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch``."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size
