"""Q/DQ placement and export: ONNX Runtime's integer kernels, TensorRT's explicit-quantization
format, BatchNorm folding and low-bit layers."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from lightning_accel.backends.onnxruntime import compile_onnxruntime, u8s8_saturates
from lightning_accel.export.onnx import to_onnx
from lightning_accel.models import zoo
from lightning_accel.quantization import (
    QuantizationSpec,
    activation_quantizers,
    convert_to_qdq,
    quantize_submodules,
    quantized_layers,
)
from lightning_accel.utilities.copying import detached_copy
from tests.conftest import Holder

WEIGHTED = (nn.Conv2d, nn.Linear)


def quantized(model: nn.Module, backend: str = "onnxruntime", bits: dict | None = None) -> Holder:
    """``model`` with every conv/linear quantized, observers calibrated on random batches."""
    holder = Holder(model)
    names = [n for n, m in holder.named_modules() if isinstance(m, WEIGHTED)]
    spec = QuantizationSpec(
        backend,  # type: ignore[arg-type]
        {n: (bits or {}).get(n, 8) for n in names},
        reduce_range=backend == "onnxruntime" and u8s8_saturates(),  # as QuantizationAware
    )
    quantize_submodules(holder, spec)
    holder.train()
    with torch.no_grad():
        for _ in range(3):
            holder(torch.randn(16, 1, 28, 28))
    return holder.eval()


def count_convs(model: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d) for m in model.modules())


@pytest.mark.parametrize(("name", "adds"), [("resnet18", 8), ("mobilenet_v2", 10)])
def test_onnxruntime_runs_every_quantized_layer_on_integer_kernels(
    name: str, adds: int, tmp_path: Path
) -> None:
    model = quantized(zoo.build(name, 10, 1))
    x = torch.randn(8, 1, 28, 28)
    compiled = compile_onnxruntime(to_onnx(model, x, tmp_path / "m.onnx"), tmp_path, threads=2)
    kernels = compiled.info["integer_kernels"]
    assert kernels == {"QLinearConv": count_convs(model), "QLinearAdd": adds, "QGemm": 1}
    operators = compiled.info["operators"]
    assert "Conv" not in operators and "FusedConv" not in operators  # no float conv left
    with torch.no_grad():
        reference = model(x).numpy()
    np.testing.assert_allclose(compiled.run(x.numpy()), reference, atol=0.1 * np.ptp(reference))


def test_batchnorm_is_folded_and_export_matches_the_fake_quant_model(tmp_path: Path) -> None:
    model = quantized(zoo.build("small_cnn", 10, 1))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.model.children())
    assert all(
        isinstance(layer.bn, nn.BatchNorm2d) for layer in list(quantized_layers(model).values())[:4]
    )
    deploy = convert_to_qdq(detached_copy(model))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deploy.modules())
    x = torch.randn(32, 1, 28, 28)
    with torch.no_grad():
        expected, folded = model(x), deploy(x)
    # Folding reorders float arithmetic, so a value on a rounding edge may move one level.
    spread = float(expected.max() - expected.min())
    torch.testing.assert_close(folded, expected, atol=0.02 * spread, rtol=0)
    assert (folded.argmax(1) == expected.argmax(1)).float().mean() >= 0.95
    graph = onnx.load(str(to_onnx(model, x, tmp_path / "m.onnx"))).graph
    assert not [n for n in graph.node if n.op_type == "BatchNormalization"]


def _initializers(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in graph.initializer}


def test_tensorrt_export_follows_explicit_quantization_rules(tmp_path: Path) -> None:
    model = quantized(zoo.build("resnet18", 10, 1), backend="tensorrt")
    assert all(q.symmetric for q in activation_quantizers(model).values())
    proto = onnx.load(str(to_onnx(model, torch.randn(2, 1, 28, 28), tmp_path / "trt.onnx")))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 13
    graph, constants = proto.graph, _initializers(proto.graph)
    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq
    for node in qdq:  # symmetric int8 everywhere: zero points are int8 zeros
        zero_point = constants[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any()
    weight_dq = [n for n in qdq if n.op_type == "DequantizeLinear" and n.input[0] in constants]
    assert len(weight_dq) == count_convs(model) + 1  # every conv and the classifier
    for node in weight_dq:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        weights, scales = constants[node.input[0]], constants[node.input[1]]
        assert axis == 0 and weights.dtype == np.int8 and scales.shape == (weights.shape[0],)
    convs = [n for n in graph.node if n.op_type == "Conv"]
    produced_by = {out: n.op_type for n in graph.node for out in n.output}
    for conv in convs:  # activation and weight come through DQ; TensorRT takes a float bias
        assert produced_by[conv.input[0]] == "DequantizeLinear"
        assert produced_by[conv.input[1]] == "DequantizeLinear"


def test_onnxruntime_export_carries_int32_bias_and_uint8_activations(tmp_path: Path) -> None:
    model = quantized(zoo.build("small_cnn", 10, 1))
    proto = onnx.load(str(to_onnx(model, torch.randn(2, 1, 28, 28), tmp_path / "m.onnx")))
    constants = _initializers(proto.graph)
    dtypes = {
        constants[n.input[0]].dtype
        for n in proto.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in constants
    }
    assert dtypes == {np.dtype(np.int8), np.dtype(np.int32)}  # weights int8, linear bias int32
    activation_zero_points = {
        constants[n.input[2]].dtype for n in proto.graph.node if n.op_type == "QuantizeLinear"
    }
    assert activation_zero_points == {np.dtype(np.uint8)}


def test_low_bit_weights_export_exactly_inside_int8_with_a_note(tmp_path: Path) -> None:
    model = quantized(zoo.build("small_cnn", 10, 1), bits={"model.4": 4, "model.8": 2})
    assert quantized_layers(model)["model.4"].weight_quantizer.bits == 4
    with pytest.warns(UserWarning, match="run only 8-bit kernels"):
        deploy = convert_to_qdq(detached_copy(model))
    assert deploy.model.get_submodule("4").weight_int8.abs().max() <= 7
    assert deploy.model.get_submodule("8").weight_int8.abs().max() <= 1
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(
            deploy(x), expected, atol=0.02 * float(expected.max() - expected.min()), rtol=0
        )


class _DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return self.conv(x)
        return self.conv(-x)


@pytest.mark.bad_input("data")
def test_untraceable_network_is_refused_and_left_untouched() -> None:
    holder = Holder(nn.Sequential(nn.Conv2d(1, 4, 3), _DataDependent()))
    before = {k: v.clone() for k, v in holder.state_dict().items()}
    spec = QuantizationSpec("onnxruntime", {"model.0": 8, "model.1.conv": 8})
    with pytest.raises(ValueError, match="torch.fx cannot trace"):
        quantize_submodules(holder, spec)
    assert isinstance(holder.model, nn.Sequential) and not quantized_layers(holder)
    assert holder.state_dict().keys() == before.keys()


@pytest.mark.bad_input("data")
def test_layer_directly_on_the_root_is_refused() -> None:
    root = nn.Sequential(nn.Conv2d(1, 4, 3))
    with pytest.raises(ValueError, match="Keep the network in a submodule"):
        quantize_submodules(root, QuantizationSpec("onnxruntime", {"0": 8}))


@pytest.mark.parametrize("bits", [8, 7])
def test_exported_weight_integers_are_those_the_fake_quant_op_trained_with(bits: int) -> None:
    """Weights at half a step: the fake-quant op (x * 1/scale) and round(x / scale) round some
    of them apart, one step off (efficientnet_b1 at 7 bits: -31.5 steps trained as -31,
    exported as -32, 4% of its largest logit). The export writes the trained integers."""
    from lightning_accel.quantization.convert import QDQLayer
    from lightning_accel.quantization.layers import quantize_layer

    q_max = 2 ** (bits - 1) - 1
    generator = torch.Generator().manual_seed(0)
    top = torch.rand(256, 1, generator=generator) + 0.5  # each channel's largest weight
    halves = torch.randint(-q_max, q_max, (256, 3), generator=generator) + 0.5
    conv = nn.Conv2d(4, 256, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.cat([top, top * halves / q_max], 1).reshape(256, 4, 1, 1))
    layer = quantize_layer(conv, None, bits, learnable=False).eval()
    with torch.no_grad():
        trained = layer.weight_quantizer(layer.weight)
    exported = QDQLayer(layer, None)
    written = exported.weight_int8.float() * exported.weight_scale.reshape(-1, 1, 1, 1)
    assert torch.equal(written, trained)
