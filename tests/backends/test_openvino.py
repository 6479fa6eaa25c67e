"""OpenVINO as a backend: fp32, QAT int8 and binarized graphs against PyTorch, with the
runtime precision of the executed convolutions as evidence of integer execution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lightning_accel.backends import BACKENDS, backend_names, compile_model, get_backend
from lightning_accel.backends import openvino as openvino_backend
from lightning_accel.binarization.layers import binarize_submodules, set_progress
from lightning_accel.data.digits import load_digits_tensors
from lightning_accel.export.compare import (
    ComparisonSettings,
    export_and_compare,
    format_summary,
)
from lightning_accel.export.onnx import to_onnx
from lightning_accel.export.verify import compare_outputs
from lightning_accel.models.zoo import build
from lightning_accel.quantization import QuantizationSpec, quantize_submodules
from tests.conftest import Holder

pytestmark = pytest.mark.skipif(
    openvino_backend.openvino_problem() is not None,
    reason=f"OpenVINO cannot run here: {openvino_backend.openvino_problem()}",
)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Real inputs: 64 scikit-learn digits (8x8, scaled to [-1, 1])."""
    return load_digits_tensors()[0][:64]


def quantized(backend: str, images: torch.Tensor) -> Holder:
    """The small CNN with every conv/linear quantized for ``backend``, ranges observed on digits."""
    torch.manual_seed(0)
    holder = Holder(build("small_cnn"))
    layers = {n: 8 for n, m in holder.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    quantize_submodules(holder, QuantizationSpec(backend, layers))  # type: ignore[arg-type]
    holder.train()
    with torch.no_grad():
        for chunk in images.split(16):
            holder(chunk)
    return holder.eval()


def test_registry_lists_openvino_with_onnxruntimes_flavour() -> None:
    assert "openvino" in backend_names()
    openvino = get_backend("openvino")
    assert openvino.device == "cpu" and openvino.float_precision == "fp32"
    # Measured (docs/backends.md): uint8 asymmetric activations run fastest on OpenVINO too.
    assert openvino.qdq == BACKENDS["onnxruntime"].qdq
    assert {"onnxruntime", "openvino", "tensorrt"} <= set(openvino.runs_qdq_of)


def test_fp32_matches_pytorch_and_runs_in_f32(images, tmp_path) -> None:
    torch.manual_seed(0)
    model = build("small_cnn").eval()
    path = to_onnx(model, images[:1], tmp_path / "m.onnx")
    compiled = compile_model("openvino", path, tmp_path / "ov", threads=1)
    assert compiled.info["integer_ops"] == {} and compiled.info["integer_share"] == 0.0
    assert compiled.info["float_ops"] == {"Convolution": 4, "FullyConnected": 1}
    assert compiled.info["inference_precision"] == "f32"  # not the CPU plugin's bf16 default
    assert compiled.artifacts["runtime_graph"].is_file()
    with torch.no_grad():
        reference = model(images).numpy()
    for batch in (images, images[:7]):  # one static-shape compilation per batch size
        expected = reference[: len(batch)]
        assert compare_outputs(expected, compiled.run(batch.numpy()), "fp32").passed
    latency = compiled.latency(4, runs=3)
    assert latency.median_ms > 0 and latency.batch_size == 4 and latency.threads == 1


@pytest.mark.parametrize("flavour", ["onnxruntime", "tensorrt"])
def test_qat_int8_runs_every_conv_and_linear_on_integer_kernels(flavour, images, tmp_path) -> None:
    model = quantized(flavour, images)
    path = to_onnx(model, images[:1], tmp_path / "q.onnx")
    compiled = compile_model("openvino", path, tmp_path / "ov", threads=1)
    assert compiled.info["integer_ops"] == {"Convolution": 4, "FullyConnected": 1}
    assert compiled.info["float_ops"] == {} and compiled.info["integer_share"] == 1.0
    precisions = compiled.info["runtime_precisions"]["Convolution"]
    assert set(precisions) <= {"u8", "i8"}
    with torch.no_grad():
        reference = model(images).numpy()
    check = compare_outputs(reference, compiled.run(images.numpy()), "int8")
    assert check.passed, check.describe()


def test_binarized_int8_export_runs_on_integer_convolutions_and_equals_pytorch(
    images, tmp_path
) -> None:
    torch.manual_seed(0)
    model = build("small_cnn")
    binarize_submodules(
        model,
        ["4", "8", "11"],
        {"weights": True, "activations": True, "scaling": "channel", "estimator": "clipped"},
    )
    set_progress(model, 1.0)
    model.train()
    with torch.no_grad():
        model(images)  # BatchNorm statistics from real inputs
    model.eval()
    with torch.no_grad():
        reference = model(images).numpy()
    int8 = compile_model(
        "openvino", to_onnx(model, images[:1], tmp_path / "b.onnx"), tmp_path / "ov", threads=1
    )
    assert int8.info["integer_ops"] == {"Convolution": 3}  # the three binarized convs
    # ±1 products summed exactly in integers: PyTorch's outputs up to float rounding
    np.testing.assert_allclose(int8.run(images.numpy()), reference, atol=1e-3, rtol=1e-3)
    exact = compile_model(
        "openvino",
        to_onnx(model, images[:1], tmp_path / "f.onnx", binary_as_int8=False),
        tmp_path / "ov_float",
        threads=1,
    )
    assert exact.info["integer_ops"] == {}
    np.testing.assert_allclose(exact.run(images.numpy()), reference, atol=1e-4, rtol=1e-4)
    assert int8.latency(8, runs=3).median_ms > 0


def test_summary_shows_both_runtimes_against_onnxruntimes_fp32_baseline(images, tmp_path) -> None:
    model = quantized("onnxruntime", images)
    torch.manual_seed(0)
    baseline = build("small_cnn").eval()
    settings = ComparisonSettings(
        backends=("onnxruntime", "openvino"), batch_sizes=(1,), threads=1, latency_runs=3
    )
    outcome = export_and_compare(model, baseline, [images], tmp_path, settings)
    assert not outcome.errors and not outcome.mismatches
    backends = outcome.summary["backends"]
    ort, ov = backends["onnxruntime"]["latency"]["1"], backends["openvino"]["latency"]["1"]
    # ONNX Runtime: its own alternating-round speedup; OpenVINO: timed against ONNX Runtime's
    # fp32 baseline in alternating rounds too, so the figure carries its quartiles (#18)
    assert ort["vs_onnxruntime_fp32"] == ort["speedup"] and ort["baseline_vs_onnxruntime_fp32"] == 1
    assert (
        ov["vs_onnxruntime_fp32_p25"] <= ov["vs_onnxruntime_fp32"] <= ov["vs_onnxruntime_fp32_p75"]
    )
    assert ov["vs_onnxruntime_fp32"] > 0 and ov["baseline_vs_onnxruntime_fp32"] > 0
    assert (tmp_path / "openvino" / "reference").is_dir()  # ONNX Runtime's baseline, compiled
    table = format_summary(outcome.summary)
    assert "| vs ORT fp32 | int8 ops |" in table
    assert "| openvino | 1 |" in table and "| 5/5 | passed |" in table
    # same Q/DQ flavour: no "quantized for another runtime" note, no float-conv note
    assert not any("Quantized for" in n or "in float" in n for n in outcome.summary["notes"])


@pytest.mark.bad_input("constructor")
def test_openvino_missing_names_the_extra(monkeypatch, tmp_path) -> None:
    # The one place absence is simulated: the package is installed on this machine.
    monkeypatch.setattr(openvino_backend, "_OPENVINO_AVAILABLE", False)
    path = tmp_path / "m.onnx"
    path.write_bytes(b"not read")
    with pytest.raises(
        RuntimeError,
        match=r"OpenVINO backend unavailable: .*pip install \"lightning-accel\[openvino\]\"",
    ):
        compile_model("openvino", path, tmp_path / "ov")
    assert get_backend("openvino").problem() is not None
    assert not (tmp_path / "ov").exists()


class Determinant(nn.Module):
    """A model ONNX Runtime runs and OpenVINO cannot read (no conversion rule for ``Det``)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x.flatten(1)).reshape(-1, 4, 4)
        return torch.cat([torch.linalg.det(y).unsqueeze(1), y.flatten(1)], dim=1)


@pytest.mark.bad_input("data")
def test_a_model_openvino_cannot_read_keeps_the_file_and_the_other_backend(
    images, tmp_path
) -> None:
    model = Determinant().eval()
    settings = ComparisonSettings(
        backends=("onnxruntime", "openvino"), batch_sizes=(1,), threads=1, latency_runs=3
    )
    outcome = export_and_compare(model, None, [images], tmp_path, settings)
    assert len(outcome.errors) == 1
    assert "OpenVINO could not read" in outcome.errors[0] and "Det" in outcome.errors[0]
    assert outcome.summary["backends"]["onnxruntime"]["verification"]["passed"]
    assert outcome.onnx_path.is_file()
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage")
    with pytest.raises(RuntimeError, match="OpenVINO could not read .*The ONNX file is kept"):
        compile_model("openvino", corrupt, tmp_path / "ov2")
    assert corrupt.read_bytes() == b"\x08\x07garbage"
