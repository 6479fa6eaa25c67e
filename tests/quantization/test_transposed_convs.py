"""Transposed convs (issue #12): QAT puts them on int8 Q/DQ, Binarize binarizes them.

ONNX Runtime's CPU kernels have no integer ``ConvTranspose`` (measured, onnxruntime 1.32: the
optimized graph keeps ``DequantizeLinear -> ConvTranspose -> QuantizeLinear``), so the int8-ops
evidence counts it as float; OpenVINO runs it as an integer ``Deconvolution``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from lightning_accel.backends.onnxruntime import compile_onnxruntime, u8s8_saturates
from lightning_accel.binarization import load_packed, save_packed
from lightning_accel.binarization.layers import BINARY_TRANSPOSED, binarize_submodules, set_progress
from lightning_accel.export.compare import integer_ops, runtime_notes
from lightning_accel.export.onnx import to_onnx
from lightning_accel.quantization import QuantizationSpec, quantize_submodules, quantized_layers
from lightning_accel.quantization.layers import QUANT_TRANSPOSED

CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
TRANSPOSED = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


class _Decoder(nn.Module):
    """conv -> ReLU -> transposed conv (stride 2, grouped or not) -> ReLU -> pool -> linear."""

    def __init__(self, dims: int, groups: int = 1) -> None:
        super().__init__()
        self.conv = CONV[dims](2, 8, 3, padding=1)
        self.up = TRANSPOSED[dims](8, 6, 3, stride=2, padding=1, output_padding=1, groups=groups)
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.up(torch.relu(self.conv(x))))
        return self.head(y.flatten(2).mean(2))


class _Holder(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _batch(dims: int, rows: int = 8) -> torch.Tensor:
    return torch.randn(rows, 2, *([6] * dims), generator=torch.Generator().manual_seed(dims))


@pytest.mark.parametrize(("dims", "groups"), [(1, 1), (2, 1), (2, 2), (3, 1)])
def test_qat_puts_transposed_convs_on_int8_qdq_per_output_channel(
    dims: int, groups: int, tmp_path: Path
) -> None:
    holder = _Holder(_Decoder(dims, groups))
    names = ["model.conv", "model.up", "model.head"]
    quantize_submodules(
        holder,
        QuantizationSpec("onnxruntime", dict.fromkeys(names, 8), reduce_range=u8s8_saturates()),
    )
    assert isinstance(holder.get_submodule("model.up"), QUANT_TRANSPOSED)
    holder.train()
    with torch.no_grad():
        for _ in range(3):
            holder(_batch(dims))
    holder.eval()
    x = _batch(dims, 4)
    with torch.no_grad():
        want = holder(x).numpy()

    path = to_onnx(holder, x, tmp_path / "up.onnx")
    graph = onnx.load(str(path)).graph
    producers = {out: node for node in graph.node for out in node.output}
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    (up,) = [n for n in graph.node if n.op_type == "ConvTranspose"]
    dq = producers[up.input[1]]  # the weight is read through a per-channel DQ on axis 1
    assert dq.op_type == "DequantizeLinear"
    assert {a.name: a.i for a in dq.attribute}.get("axis") == 1
    weight = initializers[dq.input[0]]
    assert weight.dtype == np.int8 and weight.shape[:2] == (8, 6 // groups)
    assert initializers[dq.input[1]].shape == (6 // groups,)
    assert producers[up.input[0]].op_type == "DequantizeLinear"  # quantized input

    model = compile_onnxruntime(path, tmp_path / "ort", threads=1)
    got = model.run(x.numpy())
    # Q/DQ against fake-quant: at most a step or two of the int8 grids apart.
    np.testing.assert_allclose(got, want, rtol=0, atol=0.02 * np.abs(want).max())
    # Evidence, not hidden: ONNX Runtime runs the conv and linear on integer kernels, the
    # transposed conv in float between its Q/DQ.
    assert model.info["operators"].get("ConvTranspose", 0) == 1
    assert integer_ops(model.info) == (2, 3)
    (note,) = [n for n in runtime_notes(holder) if "transposed" in n]
    assert "1 transposed convs (e.g. model.up)" in note and "no integer ConvTranspose" in note


def test_qat_quantizes_transposed_convs_through_fit(tmp_path: Path) -> None:
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_accel import QuantizationAware
    from tests.conftest import quiet_trainer

    class _Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = _Decoder(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)

        def training_step(self, batch, batch_idx: int) -> torch.Tensor:  # type: ignore[no-untyped-def]
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    data = TensorDataset(_batch(2, 16), torch.randint(0, 4, (16,)))
    module = _Module()
    qat = QuantizationAware()
    assert qat.planned_layers(module, _batch(2, 1)) == ["model.conv", "model.up", "model.head"]
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[qat])
    trainer.fit(module, DataLoader(data, batch_size=8))
    assert set(quantized_layers(module)) == {"model.conv", "model.up", "model.head"}
    assert qat.metrics["compress/quantized_layers"] == 1.0


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_binarize_transposed_convs_with_alpha_per_output_channel(dims: int, tmp_path: Path) -> None:
    holder = _Holder(_Decoder(dims, groups=2))
    settings = {"weights": True, "activations": True, "scaling": "channel", "estimator": "clipped"}
    binarize_submodules(holder, ["model.up"], settings)
    up = holder.get_submodule("model.up")
    assert isinstance(up, BINARY_TRANSPOSED)
    holder.train()
    holder(_batch(dims))  # initializes the activation thresholds
    set_progress(holder, 1.0)
    holder.eval()
    weight = up.weight.detach()
    # α is the mean |W| of each output channel: axis 1 of a transposed conv's weight.
    alpha = weight.abs().transpose(0, 1).flatten(1).mean(1)
    expected = torch.sign(weight) * alpha.reshape([1, -1] + [1] * dims)
    assert torch.allclose(up.effective_weight(), expected, atol=1e-6)

    x = _batch(dims, 4)
    with torch.no_grad():
        want = holder(x).numpy()
    path = to_onnx(holder, x, tmp_path / "binary.onnx")  # float, exact (no integer ConvTranspose)
    got = compile_onnxruntime(path, tmp_path / "ort", threads=1).run(x.numpy())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    save_packed(holder, tmp_path / "packed.pt")
    fresh = _Holder(_Decoder(dims, groups=2))
    binarize_submodules(fresh, ["model.up"], settings)
    load_packed(tmp_path / "packed.pt", fresh)
    assert torch.allclose(fresh.get_submodule("model.up").weight, expected, atol=1e-6)
