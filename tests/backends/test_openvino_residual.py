"""OpenVINO's fused residual sums (#14): kept apart so the Q/DQ graph runs exactly, counted.

The CPU plugin fuses ``Conv -> Q/DQ -> Add(skip) -> Q`` into the integer convolution and skips
that convolution's requantization rounding; the backend gives each such convolution a second
consumer so the Add stays unfused, and reports how many fused sums remain in the executed graph.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
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
    """``model`` with every conv/linear on ONNX Runtime's int8 Q/DQ, ranges observed on digits.

    Weights stay in [-63, 63] (``reduce_range``), so no CPU saturates their integer sums and
    any difference between runtimes comes from the residual sums under test.
    """
    holder = Holder(model)
    layers = {n: 8 for n, m in holder.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    spec = QuantizationSpec("onnxruntime", layers, reduce_range=True)  # type: ignore[arg-type]
    quantize_submodules(holder, spec)
    holder.train()
    with torch.no_grad():
        for chunk in images.split(16):
            holder(chunk)
    return holder.eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return load_digits_tensors()[0][:64]


def exact_qdq(path, images: torch.Tensor) -> np.ndarray:
    """The Q/DQ graph's own values: ONNX Runtime with no fusion (each Q/DQ in float)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]


def plain_openvino(path, images: torch.Tensor) -> tuple[np.ndarray, int]:
    """OpenVINO on the file as read, without this backend's unfused sums."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape({model.inputs[0]: list(images.shape)})
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    fused = openvino_backend.unrounded_residual_sums(compiled.get_runtime_model())
    return compiled(images.numpy())[compiled.outputs[0]], fused


def test_residual_adds_run_unfused_and_match_the_qdq_graph(images, tmp_path) -> None:
    path = to_onnx(quantized(ResidualNet(), images), images[:1], tmp_path / "r.onnx")
    assert [n.op_type for n in onnx.load(str(path)).graph.node].count("Add") == 1
    assert len(openvino_backend.residual_sum_inputs(path)) == 1
    compiled = compile_model("openvino", path, tmp_path / "ov", threads=1)
    assert compiled.info["integer_ops"] == {"Convolution": 3, "FullyConnected": 1}
    assert compiled.info["unfused_residual_sums"] == 1
    assert compiled.info["unrounded_residual_sums"] == 0
    assert "accuracy_caveat" not in compiled.info
    reference = exact_qdq(path, images)
    exact_error = np.abs(compiled.run(images.numpy()) - reference).max()
    plain, fused = plain_openvino(path, images)
    assert fused == 1  # what the backend avoids: the plugin's own fusion, rounding dropped
    assert exact_error <= 1e-5 < np.abs(plain - reference).max()  # fp32 noise vs lost rounding


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
