"""QAT on networks whose forward reads ``self.training`` (torchvision's ``StochasticDepth``).

torch.fx used to freeze ``training=True`` into ``stochastic_depth(...)`` when QAT traced the
model in ``on_train_start``: the prepared EfficientNet dropped residual branches at random in
eval and in the exported ONNX file (``RandomUniformLike``), so ONNX Runtime disagreed with
PyTorch (efficientnet_b1: relative error 1.39 in ``benchmarks/architectures.py``). And the
add after it read a quantizer of its own, right after the conv's: two Q/DQ pairs at two scales,
which ONNX Runtime merges into one at a third (relative error 0.32 with random draws gone).
"""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn
from torchvision.ops import StochasticDepth

from lightning_accel.backends.onnxruntime import compile_onnxruntime, u8s8_saturates
from lightning_accel.export.onnx import to_onnx
from lightning_accel.quantization import QuantizationSpec, quantize_submodules
from lightning_accel.quantization.prepare import prepare_qat
from tests.conftest import Holder


class Block(nn.Module):
    """A residual conv whose branch is dropped per sample in training (p = 0.5)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.drop = StochasticDepth(0.5, "row")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop(self.conv(x))


class BranchOnMode(nn.Module):
    """A forward that takes a branch only in training, outside any submodule."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y * 2 if self.training else y


def network() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), Block(8), nn.Flatten(), nn.Linear(8 * 6 * 6, 5)
    )


def test_stochastic_depth_follows_the_mode_in_eval_and_export(tmp_path: Path) -> None:
    torch.manual_seed(0)
    holder = Holder(network()).train()  # prepared while training, as in on_train_start
    names = ["model.0", "model.1.conv", "model.3"]
    quantize_submodules(
        holder,
        QuantizationSpec("onnxruntime", dict.fromkeys(names, 8), reduce_range=u8s8_saturates()),
    )
    x = torch.randn(16, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        trained = [holder(x) for _ in range(2)]  # observes ranges; drops branches at random
        assert not torch.equal(*trained)  # still stochastic in training
        holder.eval()
        first, second = holder(x), holder(x)
    assert torch.equal(first, second)  # eval used to drop branches too
    path = to_onnx(holder, x, tmp_path / "m.onnx")
    nodes = onnx.load(str(path)).graph.node
    assert "RandomUniformLike" not in {n.op_type for n in nodes}
    # No second Q/DQ after the stochastic depth (gone in eval): ONNX Runtime would merge the
    # two pairs into one quantization at another scale (DoubleQDQPairsRemover).
    dequantized = {n.output[0] for n in nodes if n.op_type == "DequantizeLinear"}
    assert not [n for n in nodes if n.op_type == "QuantizeLinear" and n.input[0] in dequantized]
    got = compile_onnxruntime(path, tmp_path, threads=1).run(x.numpy())
    reference = first.numpy()
    assert float(np.abs(got - reference).max()) <= 0.02 * float(np.abs(reference).max())


def test_branch_on_mode_at_the_top_is_refused_with_the_fix() -> None:
    model = BranchOnMode().train()
    spec = QuantizationSpec("onnxruntime", {"model.conv": 8})
    with pytest.raises(ValueError, match="branches on self.training outside any submodule"):
        prepare_qat(model, {"conv": 8}, spec)
    assert model.training  # its mode restored
