"""What TensorRT 10 and 11 are given, checked without TensorRT: the fp16 graph TensorRT 11 parses
is valid and computes the fp32 model's outputs within fp16 tolerance in ONNX Runtime; Q/DQ
graphs go to it unchanged, in symmetric int8. Engine builds themselves skip here (no GPU)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from lightning_accel.backends import compile_model
from lightning_accel.backends.tensorrt import build_plan, tensorrt_major, tensorrt_problem
from lightning_accel.data.digits import load_digits_tensors
from lightning_accel.export.onnx import to_onnx
from lightning_accel.export.verify import compare_outputs
from lightning_accel.models.zoo import build
from lightning_accel.quantization import QuantizationSpec, quantize_submodules


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return load_digits_tensors()[0][:64]


@pytest.fixture
def float_onnx(images, tmp_path):
    torch.manual_seed(0)
    model = build("small_cnn").eval()
    return model, to_onnx(model, images[:1], tmp_path / "m.onnx")


def tensorrt_qdq(images: torch.Tensor, tmp_path) -> tuple[nn.Module, object]:
    torch.manual_seed(0)
    holder = nn.Module()
    holder.model = build("small_cnn")
    layers = {n: 8 for n, m in holder.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    quantize_submodules(holder, QuantizationSpec("tensorrt", layers))
    holder.model.train()
    with torch.no_grad():
        holder.model(images)
    model = holder.model.eval()
    return model, to_onnx(model, images[:1], tmp_path / "q.onnx")


def test_tensorrt_11_fp16_graph_is_valid_and_equals_fp32_within_fp16_tolerance(
    float_onnx, images, tmp_path
) -> None:
    model, path = float_onnx
    plan = build_plan(path, "auto", major=11, work_dir=tmp_path / "trt")
    assert plan.precision == "fp16" and plan.strongly_typed and plan.builder_flags == ()
    assert plan.onnx_path != path and plan.onnx_path.is_file()
    proto = onnx.load(str(plan.onnx_path))
    onnx.checker.check_model(proto, full_check=True)
    weights = [numpy_helper.to_array(t) for t in proto.graph.initializer if t.dims]
    assert weights and all(w.dtype == np.float16 for w in weights if w.ndim == 4)
    io = [v.type.tensor_type.elem_type for v in (*proto.graph.input, *proto.graph.output)]
    assert io == [onnx.TensorProto.FLOAT] * 2  # callers feed and read fp32 as before
    fp16 = compile_model("onnxruntime", plan.onnx_path, tmp_path / "ort", threads=1)
    with torch.no_grad():
        reference = model(images).numpy()
    output = fp16.run(images.numpy())
    check = compare_outputs(reference, output, "fp16")
    assert check.passed, check.describe()
    assert not np.array_equal(output, reference)  # it really computed in fp16


def test_tensorrt_11_takes_the_qdq_graph_as_is_in_symmetric_int8(images, tmp_path) -> None:
    _, path = tensorrt_qdq(images, tmp_path)
    plan = build_plan(path, "auto", major=11, work_dir=tmp_path / "trt")
    assert plan.precision == "int8" and plan.strongly_typed and plan.onnx_path == path
    proto = onnx.load(str(path))
    constants = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    constants.update(
        {
            n.output[0]: numpy_helper.to_array(n.attribute[0].t)
            for n in proto.graph.node
            if n.op_type == "Constant"
        }
    )
    quantize = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"]
    assert len(quantize) >= 5
    for node in quantize:  # int8 symmetric activations: int8 zero points equal to 0
        zero_point = constants[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any()


def test_tensorrt_10_keeps_its_weak_typing_flags(float_onnx, images, tmp_path) -> None:
    _, path = float_onnx
    plan = build_plan(path, "auto", major=10, work_dir=tmp_path)
    assert (plan.precision, plan.strongly_typed, plan.builder_flags) == ("fp16", False, ("FP16",))
    assert plan.onnx_path == path and not list(tmp_path.glob("*.fp16.onnx"))
    _, qdq = tensorrt_qdq(images, tmp_path)
    assert build_plan(qdq, "auto", major=10, work_dir=tmp_path).builder_flags == ("FP16", "INT8")
    assert build_plan(path, "fp32", major=10, work_dir=tmp_path).builder_flags == ()


@pytest.mark.bad_input("constructor")
def test_int8_without_qdq_and_unknown_versions_are_refused(float_onnx, tmp_path) -> None:
    _, path = float_onnx
    with pytest.raises(ValueError, match="builds INT8 only from Q/DQ nodes"):
        build_plan(path, "int8", major=11, work_dir=tmp_path)
    with pytest.raises(ValueError, match="precision must be 'auto', 'fp32', 'fp16' or 'int8'"):
        build_plan(path, "bf16", major=11, work_dir=tmp_path)
    assert tensorrt_major(SimpleNamespace(__version__="11.0.1")) == 11
    with pytest.raises(RuntimeError, match="supports TensorRT 10 and 11"):
        tensorrt_major(SimpleNamespace(__version__="9.3.0"))


@pytest.mark.skipif(
    tensorrt_problem() is not None, reason=f"TensorRT cannot run here: {tensorrt_problem()}"
)
def test_tensorrt_engine_builds_fp16_and_int8_on_the_installed_version(
    float_onnx, images, tmp_path
) -> None:
    model, path = float_onnx
    engine = compile_model("tensorrt", path, tmp_path / "trt", precision="fp16")
    assert engine.info["tensorrt_version"]
    with torch.no_grad():
        reference = model(images).numpy()
    assert compare_outputs(reference, engine.run(images.numpy()), "fp16").passed
    qmodel, qdq = tensorrt_qdq(images, tmp_path)
    int8 = compile_model("tensorrt", qdq, tmp_path / "trt_int8")
    with torch.no_grad():
        qreference = qmodel(images).numpy()
    assert compare_outputs(qreference, int8.run(images.numpy()), "int8").passed
