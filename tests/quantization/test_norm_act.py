"""QAT on BatchNorm subclasses: timm's ``BatchNormAct2d`` (RegNetX) and unknown subclasses.

torch.fx used to trace into a BatchNorm subclass defined outside ``torch.nn``, freezing its
train-mode branch (``training=True``) into the graph: the prepared model normalized with
batch statistics in eval too, and ONNX Runtime disagreed with it (timm ``regnetx_002``:
relative error 0.96, top-1 agreement 0.25 in ``benchmarks/architectures.py``).
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lightning_accel.backends.onnxruntime import compile_onnxruntime, u8s8_saturates
from lightning_accel.export.onnx import to_onnx
from lightning_accel.quantization import QuantizationSpec, quantize_submodules, quantized_layers
from tests.conftest import Holder

WEIGHTED = (nn.Conv2d, nn.Linear)


def quantized(model: nn.Module, shape: tuple[int, ...]) -> Holder:
    """``model`` with every conv/linear quantized, trained-mode batches moving its statistics."""
    holder = Holder(model)
    names = [n for n, m in holder.named_modules() if isinstance(m, WEIGHTED)]
    quantize_submodules(
        holder,
        QuantizationSpec("onnxruntime", dict.fromkeys(names, 8), reduce_range=u8s8_saturates()),
    )
    holder.train()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(4):  # running statistics now differ from any one eval batch's
            holder(2 * torch.randn(8, *shape, generator=generator) + 1)
    return holder.eval()


def assert_matches_onnxruntime(model: Holder, x: torch.Tensor, tmp_path: Path) -> dict:
    """Eval output independent of the batch, and ONNX Runtime agreeing with it."""
    with torch.no_grad():
        reference = model(x).numpy()
        alone = model(x[:2]).numpy()
    np.testing.assert_allclose(alone, reference[:2], rtol=0, atol=1e-5 * np.abs(reference).max())
    compiled = compile_onnxruntime(to_onnx(model, x, tmp_path / "m.onnx"), tmp_path, threads=1)
    got = compiled.run(x.numpy())
    assert float(np.abs(got - reference).max()) <= 0.02 * float(np.abs(reference).max())
    assert (got.argmax(1) == reference.argmax(1)).mean() >= 0.9
    return compiled.info


def test_timm_regnetx_norm_act_folds_and_matches_onnxruntime(tmp_path: Path) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = quantized(
        timm.create_model("regnetx_002", pretrained=False, num_classes=10), (3, 32, 32)
    )
    x = 2 * torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1)) + 1
    info = assert_matches_onnxruntime(model, x, tmp_path)
    convs = [m for m in quantized_layers(model).values() if isinstance(m, nn.Conv2d)]
    assert all(isinstance(layer.bn, nn.BatchNorm2d) for layer in convs)  # BatchNormAct2d folded
    assert "batch_norm" not in model.model.code  # no train-mode BatchNorm frozen in the graph
    assert info["integer_kernels"]["QLinearConv"] == len(convs)
    assert "BatchNormalization" not in info["operators"]
    # The act moved after the conv, so ONNX Runtime fuses the ReLU into the requantization.
    assert "Relu" not in info["operators"]


class ScaledBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm subclass QAT does not know: it must stay a module of its own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * super().forward(x)


def test_unknown_batchnorm_subclass_is_kept_and_runs_on_running_statistics(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        ScaledBatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=4),
        nn.BatchNorm2d(8),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 10),
    )
    model = quantized(net, (3, 8, 8))
    assert isinstance(model.model.get_submodule("1"), ScaledBatchNorm2d)  # not folded
    assert quantized_layers(model)["model.0"].bn is None
    assert isinstance(quantized_layers(model)["model.3"].bn, nn.BatchNorm2d)
    x = 2 * torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1)) + 1
    assert_matches_onnxruntime(model, x, tmp_path)
