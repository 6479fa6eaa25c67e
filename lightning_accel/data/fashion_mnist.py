"""Fashion-MNIST (Xiao et al., 2017) from local IDX files: 70,000 28x28 images, 10 classes."""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_accel.data.idx import read_idx
from lightning_accel.data.sampling import EpochShuffleSampler
from lightning_accel.export.manifest import ImagePreprocessing
from lightning_accel.utilities.validation import check_int

DATA_DIR_ENV = "LIGHTNING_ACCEL_FASHION_MNIST"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = (
    "On Debian/Ubuntu install it with `sudo apt-get install dataset-fashion-mnist`; elsewhere "
    "put the four IDX files (train-images-idx3-ubyte.gz, ...) in a folder and pass "
    f"data_dir=... or set {DATA_DIR_ENV}."
)
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MEAN, STD = 0.2860, 0.3530  # over the 60,000 training images
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def find_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding the IDX files: the argument, then the env variable, then Debian's."""
    candidates = [Path(data_dir)] if data_dir else []
    if not data_dir and os.environ.get(DATA_DIR_ENV):
        candidates.append(Path(os.environ[DATA_DIR_ENV]))
    if not candidates:
        candidates.append(DEBIAN_DIR)
    for folder in candidates:
        if all(_find(folder, name) for pair in _FILES.values() for name in pair):
            return folder
    raise FileNotFoundError(f"Fashion-MNIST not found in {candidates[0]}. {INSTALL_HINT}")


def load_split(
    split: str, data_dir: str | os.PathLike | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized images ``[N, 1, 28, 28]`` (float32) and labels ``[N]`` (int64) of one split."""
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    folder = find_data_dir(data_dir)
    images_file, labels_file = (_find(folder, name) for name in _FILES[split])
    assert images_file is not None and labels_file is not None  # find_data_dir checked both
    images = torch.from_numpy(read_idx(images_file).copy()).float().div_(255.0)
    labels = torch.from_numpy(read_idx(labels_file).astype("int64"))
    images = images.sub_(MEAN).div_(STD).unsqueeze(1)
    return images, labels


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


class FashionMNISTDataModule(pl.LightningDataModule):
    """Fashion-MNIST read from local IDX files; nothing is downloaded.

    Validation is a held-out part of the training set; test is the official 10,000 images.

    Args:
        data_dir: Folder with the IDX files; defaults to ``$LIGHTNING_ACCEL_FASHION_MNIST``, then
            ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``).
        batch_size: Batch size of every loader.
        val_size: Training images held out for validation.
        train_size: Use only this many training images (a fixed random subset); ``None``: all.
        test_size: Use only this many test images (a fixed random subset); ``None``: all.
        num_workers: DataLoader workers.
        seed: Seed of the split and subsets.

    Raises:
        ValueError: If an argument has the wrong type or is out of range (the message names it).
        FileNotFoundError: At ``setup`` if the files are missing, naming the install command.
    """

    num_classes = 10
    in_channels = 1
    image_size = 28
    # What serving applies to an uploaded image (export/manifest.py): 8-bit pixels / 255, then
    # the training set's mean and std, exactly as load_split does.
    preprocessing = ImagePreprocessing(image_size=(28, 28), channels=1, mean=(MEAN,), std=(STD,))
    class_names = CLASSES

    def __init__(
        self,
        data_dir: str | os.PathLike | None = None,
        batch_size: int = 128,
        val_size: int = 5000,
        train_size: int | None = None,
        test_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
            raise ValueError(
                f"data_dir must be a folder path (str or pathlib.Path) or None; got "
                f"{data_dir!r}. Example: FashionMNISTDataModule(data_dir='data/fashion-mnist')"
            )
        example = "FashionMNISTDataModule({}={})"
        check_int(batch_size, "batch_size", example.format("batch_size", 128))
        check_int(val_size, "val_size", example.format("val_size", 5000), minimum=0)
        for name, size in (("train_size", train_size), ("test_size", test_size)):
            check_int(size, name, example.format(name, 10000), optional=True)
        check_int(num_workers, "num_workers", example.format("num_workers", 2), minimum=0)
        check_int(seed, "seed", example.format("seed", 0), minimum=0)
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.val_size = val_size
        self.train_size = train_size
        self.test_size = test_size
        self.num_workers = num_workers
        self.seed = seed
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None
        self.test_set: TensorDataset | None = None

    def prepare_data(self) -> None:
        find_data_dir(self.data_dir)

    def setup(self, stage: str | None = None) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        if self.train_set is None:
            images, labels = load_split("train", self.data_dir)
            order = torch.randperm(len(labels), generator=generator)
            val_idx, train_idx = order[: self.val_size], order[self.val_size :]
            if self.train_size is not None:
                train_idx = train_idx[: self.train_size]
            self.train_set = TensorDataset(images[train_idx], labels[train_idx])
            self.val_set = TensorDataset(images[val_idx], labels[val_idx])
        if self.test_set is None:
            images, labels = load_split("test", self.data_dir)
            if self.test_size is not None:
                idx = torch.randperm(len(labels), generator=generator)[: self.test_size]
                images, labels = images[idx], labels[idx]
            self.test_set = TensorDataset(images, labels)

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup() first"
        return DataLoader(
            self.train_set,
            self.batch_size,
            sampler=EpochShuffleSampler(len(self.train_set), self.seed),
            drop_last=True,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "call setup() first"
        return DataLoader(self.val_set, 512, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        assert self.test_set is not None, "call setup() first"
        return DataLoader(self.test_set, 512, num_workers=self.num_workers)
