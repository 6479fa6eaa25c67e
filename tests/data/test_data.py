import gzip

import numpy as np
import pytest
import torch

from lightning_accel.data import DigitsDataModule, FashionMNISTDataModule
from lightning_accel.data.fashion_mnist import DATA_DIR_ENV, find_data_dir
from lightning_accel.data.idx import read_idx


def _write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_has_70000_real_images() -> None:
    data = FashionMNISTDataModule(val_size=5000)
    data.setup()
    assert len(data.train_set) + len(data.val_set) == 60_000
    assert len(data.test_set) == 10_000
    x, y = next(iter(data.train_dataloader()))
    assert x.shape == (128, 1, 28, 28) and x.dtype == torch.float32
    assert set(data.test_set.tensors[1].unique().tolist()) == set(range(10))
    assert abs(float(data.test_set.tensors[0].mean())) < 0.1  # normalized


def test_data_dir_and_environment_variable_point_elsewhere(tmp_path, monkeypatch) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 30), ("t10k", 10)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))
    data = FashionMNISTDataModule(data_dir=tmp_path, val_size=10)
    data.setup()
    assert len(data.train_set) == 20 and len(data.test_set) == 10
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert find_data_dir() == tmp_path


@pytest.mark.bad_input("file system")
def test_missing_data_names_the_install_command(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        FashionMNISTDataModule(data_dir=tmp_path / "nowhere").prepare_data()


@pytest.mark.bad_input("file system")
def test_truncated_idx_file_is_refused(tmp_path) -> None:
    path = tmp_path / "x-idx3-ubyte.gz"
    _write_idx(path, np.zeros((4, 28, 28)))
    data = gzip.decompress(path.read_bytes())[:-10]
    path.write_bytes(gzip.compress(data))
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_idx(path)


def test_digits_split_is_real_and_deterministic() -> None:
    a, b = DigitsDataModule(seed=1), DigitsDataModule(seed=1)
    a.setup(), b.setup()
    assert len(a.train_set) + len(a.val_set) == 1797
    assert a.train_set.tensors[0].shape[1:] == (1, 8, 8)
    assert torch.equal(a.val_set.tensors[1], b.val_set.tensors[1])


@pytest.mark.parametrize("kwargs", [dict(batch_size=0), dict(train_size=0)])
@pytest.mark.bad_input("constructor")
def test_invalid_fashion_mnist_settings(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        FashionMNISTDataModule(**kwargs)


def test_shuffling_depends_only_on_seed_and_epoch() -> None:
    from lightning_accel.data.sampling import EpochShuffleSampler

    first, resumed = EpochShuffleSampler(100, seed=3), EpochShuffleSampler(100, seed=3)
    first.set_epoch(0)
    epoch_0 = list(first)
    first.set_epoch(2)
    resumed.set_epoch(2)  # a run resumed at epoch 2 draws what the uninterrupted run draws
    assert list(first) == list(resumed)
    assert sorted(epoch_0) == list(range(100)) and list(first) != epoch_0
