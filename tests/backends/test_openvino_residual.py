"""OpenVINO's fused residual sums (#14): counted in the executed graph, named when verification fails.

The CPU plugin fuses ``Conv -> Q/DQ -> Add(skip) -> Q`` into the integer convolution and skips
that convolution's requantization rounding; the backend reports how many such convolutions run.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from lightning_accel.backends import compile_model
from lightning_accel.backends import openvino as openvino_backend
from lightning_accel.data.digits import load_digits_tensors
from lightning_accel.export.compare import failure_line
from lightning_accel.export.onnx import to_onnx
from lightning_accel.export.verify import compare_outputs
from lightning_accel.models.zoo import build
from lightning_accel.quantization import QuantizationSpec, quantize_submodules
from tests.conftest import Holder

pytestmark = pytest.mark.skipif(
    openvino_backend.openvino_problem() is not None,
    reason=f"OpenVINO cannot run here: {openvino_backend.openvino_problem()}",
)


class ResidualNet(nn.Module):
    """A stem and one residual block (3x3 conv-BN-ReLU, 1x1 conv-BN, added to its input)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.branch = nn.Sequential(
            nn.Conv2d(8, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 8, 1),
            nn.BatchNorm2d(8),
        )
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.branch(x)
        return self.head(x.mean((2, 3)))


def quantized(model: nn.Module, images: torch.Tensor) -> Holder:
    """``model`` with every conv/linear on ONNX Runtime's int8 Q/DQ, ranges observed on digits."""
    holder = Holder(model)
    layers = {n: 8 for n, m in holder.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    quantize_submodules(holder, QuantizationSpec("onnxruntime", layers))  # type: ignore[arg-type]
    holder.train()
    with torch.no_grad():
        for chunk in images.split(16):
            holder(chunk)
    return holder.eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return load_digits_tensors()[0][:64]


def test_a_fused_residual_add_is_counted_and_carries_the_caveat(images, tmp_path) -> None:
    path = to_onnx(quantized(ResidualNet(), images), images[:1], tmp_path / "r.onnx")
    assert [n.op_type for n in onnx.load(str(path)).graph.node].count("Add") == 1
    compiled = compile_model("openvino", path, tmp_path / "ov", threads=1)
    assert compiled.info["integer_ops"] == {"Convolution": 3, "FullyConnected": 1}
    assert compiled.info["unrounded_residual_sums"] == 1
    assert "fused 1 residual Add(s)" in compiled.info["accuracy_caveat"]


def test_a_network_without_residual_adds_has_none(images, tmp_path) -> None:
    path = to_onnx(quantized(build("small_cnn"), images), images[:1], tmp_path / "s.onnx")
    compiled = compile_model("openvino", path, tmp_path / "ov", threads=1)
    assert compiled.info["unrounded_residual_sums"] == 0
    assert "accuracy_caveat" not in compiled.info


def test_a_failed_verification_names_the_known_cause_only_when_there_is_one() -> None:
    reference = np.eye(10, dtype=np.float32)
    failed = compare_outputs(reference, np.roll(reference, 1, axis=1), "int8")
    assert not failed.passed
    plain = failure_line("openvino", failed, {"unrounded_residual_sums": 0})
    assert plain == f"openvino verification {failed.describe()}"
    caveat = openvino_backend.RESIDUAL_SUM_CAVEAT.format(count=10)
    named = failure_line("openvino", failed, {"accuracy_caveat": caveat})
    assert named == f"{plain}. Possible cause: {caveat}"
    broken = compare_outputs(reference, np.full_like(reference, np.nan), "int8")
    assert broken.problem is not None  # non-finite outputs: their own cause, no caveat
    assert failure_line("openvino", broken, {"accuracy_caveat": caveat}).endswith(broken.describe())
