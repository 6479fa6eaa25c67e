"""manifest.json: written beside the export by ExportOnFitEnd, read back by serving."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from lightning_accel import DigitsDataModule, FashionMNISTDataModule
from lightning_accel.data.fashion_mnist import CLASSES, MEAN, STD
from lightning_accel.export.manifest import (
    ImagePreprocessing,
    backend_status,
    describe_data,
    read_manifest,
)
from tests.serving.conftest import fit_digits_export


@pytest.fixture(scope="module")
def digits_export(tmp_path_factory: pytest.TempPathFactory):
    return fit_digits_export(tmp_path_factory.mktemp("manifest") / "export")


def test_export_on_fit_end_writes_the_manifest(digits_export) -> None:
    raw = json.loads((digits_export / "manifest.json").read_text())
    session = ort.InferenceSession(str(digits_export / "model.onnx"))
    (graph_input,) = session.get_inputs()
    assert raw["inputs"] == [
        {"name": graph_input.name, "shape": ["batch", 1, 8, 8], "dtype": "float32"}
    ]
    assert raw["outputs"][0]["shape"] == ["batch", 10]
    assert raw["data"] == "DigitsDataModule"
    assert raw["preprocessing"] == {
        "image_size": [8, 8],
        "channels": 1,
        "mean": [0.5],
        "std": [0.5],
        "pixel_max": 255.0,
    }
    assert raw["class_names"] == [str(d) for d in range(10)]
    status = raw["backends"]["onnxruntime"]
    assert status["verification"] == "passed"
    assert status["artifacts"]["onnx"] == "model.onnx"  # relative: the folder can move
    summary = json.loads((digits_export / "summary.json").read_text())
    assert raw["run"] == summary["run"]["id"]
    assert "manifest.json" in [f["path"] for f in summary["run"]["files"]]
    manifest = read_manifest(digits_export)
    assert manifest.model_path.is_file() and manifest.class_names == tuple(raw["class_names"])


def test_the_data_modules_declare_what_their_loaders_apply() -> None:
    digits = describe_data(DigitsDataModule)["preprocessing"]
    # load_digits_tensors: x / 8 - 1 on 0..16, i.e. (x / 16 - 0.5) / 0.5
    x = np.arange(17.0)
    np.testing.assert_allclose((x / 16 - digits["mean"][0]) / digits["std"][0], x / 8 - 1)
    fashion = describe_data(FashionMNISTDataModule(batch_size=8))
    assert fashion["preprocessing"]["mean"] == [MEAN] and fashion["preprocessing"]["std"] == [STD]
    assert fashion["class_names"] == list(CLASSES)
    assert describe_data(None) == {"data": None, "preprocessing": None, "class_names": None}


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"verification": {"passed": True}}, "passed"),
        ({"verification": {"passed": False, "problem": "top-1 0.5"}}, "failed"),
        ({"error": "TensorRT needs a GPU"}, "error"),
        ({"info": {}}, "not run"),
    ],
)
def test_backend_status_from_the_summary(tmp_path, entry, expected) -> None:
    assert backend_status(entry, tmp_path)["verification"] == expected


@pytest.mark.bad_input("constructor")
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channels": 2, "mean": (0.5, 0.5), "std": (1, 1)}, "channels must be 1 or 3"),
        ({"channels": 3, "mean": (0.5,), "std": (1,)}, "one value per channel"),
        ({"channels": 1, "mean": (0.5,), "std": (0,)}, "std values must be > 0"),
    ],
)
def test_image_preprocessing_refuses_inconsistent_fields(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        ImagePreprocessing(image_size=(8, 8), **kwargs)


@pytest.mark.bad_input("file system")
def test_a_malformed_manifest_is_named_with_the_re_export(tmp_path) -> None:
    (tmp_path / "manifest.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match=r"manifest.json is malformed .*lightning-accel export"):
        read_manifest(tmp_path)
