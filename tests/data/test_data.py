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


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(batch_size=0), r"batch_size must be an integer >= 1; got 0\. Example: "),
        (dict(batch_size="128"), r"batch_size must be an integer >= 1; got '128'"),
        (dict(batch_size=True), r"batch_size must be an integer >= 1; got True"),
        (dict(train_size=0), r"train_size must be an integer >= 1 or None; got 0"),
        (dict(train_size=True), r"train_size must be an integer >= 1 or None; got True"),
        (dict(train_size=1.5), r"train_size must be an integer >= 1 or None; got 1.5"),
        (dict(test_size="all"), r"test_size must be an integer >= 1 or None; got 'all'"),
        (dict(val_size=-1), r"val_size must be an integer >= 0; got -1"),
        (dict(val_size=0.1), r"val_size must be an integer >= 0; got 0.1"),
        (dict(num_workers=-1), r"num_workers must be an integer >= 0; got -1"),
        (dict(num_workers=None), r"num_workers must be an integer >= 0; got None"),
        (dict(seed="x"), r"seed must be an integer >= 0; got 'x'"),
        (dict(seed=1.0), r"seed must be an integer >= 0; got 1.0"),
        (
            dict(data_dir=3),
            r"data_dir must be a folder path \(str or pathlib.Path\) or None; got 3",
        ),
    ],
)
@pytest.mark.bad_input("constructor")
def test_invalid_fashion_mnist_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FashionMNISTDataModule(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(batch_size="64"), r"batch_size must be an integer >= 1; got '64'\. Example: "),
        (dict(batch_size=True), r"batch_size must be an integer >= 1; got True"),
        (dict(batch_size=2.5), r"batch_size must be an integer >= 1; got 2.5"),
        (dict(batch_size=0), r"batch_size must be an integer >= 1; got 0"),
        (dict(val_fraction=0), r"val_fraction must be a number in \(0, 1\); got 0\."),
        (dict(val_fraction=1.0), r"val_fraction must be a number in \(0, 1\); got 1.0"),
        (dict(val_fraction="0.2"), r"val_fraction must be a number in \(0, 1\); got '0.2'"),
        (dict(val_fraction=float("nan")), r"val_fraction must be a number in \(0, 1\); got nan"),
        (dict(seed="x"), r"seed must be an integer >= 0; got 'x'"),
        (dict(seed=-1), r"seed must be an integer >= 0; got -1"),
        (dict(seed=None), r"seed must be an integer >= 0; got None"),
    ],
)
@pytest.mark.bad_input("constructor")
def test_invalid_digits_settings(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DigitsDataModule(**kwargs)


def test_valid_settings_are_kept(tmp_path) -> None:
    digits = DigitsDataModule(batch_size=1, val_fraction=0.5, seed=0)
    assert (digits.batch_size, digits.val_fraction, digits.seed) == (1, 0.5, 0)
    fashion = FashionMNISTDataModule(tmp_path, val_size=0, train_size=None, test_size=1, seed=7)
    assert (fashion.data_dir, fashion.val_size, fashion.test_size) == (tmp_path, 0, 1)


def test_shuffling_depends_only_on_seed_and_epoch() -> None:
    from lightning_accel.data.sampling import EpochShuffleSampler

    first, resumed = EpochShuffleSampler(100, seed=3), EpochShuffleSampler(100, seed=3)
    first.set_epoch(0)
    epoch_0 = list(first)
    first.set_epoch(2)
    resumed.set_epoch(2)  # a run resumed at epoch 2 draws what the uninterrupted run draws
    assert list(first) == list(resumed)
    assert sorted(epoch_0) == list(range(100)) and list(first) != epoch_0
