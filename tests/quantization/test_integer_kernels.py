"""Every conv, linear and attention matmul of a QAT model on ONNX Runtime integer kernels (#12).

The peer suite (``benchmarks/architectures.py``) found three kinds of layers left in float:
timm ViT/DeiT attention (``q @ k^T`` and ``probs @ v`` had no quantizer on either operand: 24
float matmuls), a linear followed by a ReLU whose output had no quantizer (ONNX Runtime's
selector takes ``Gemm -> Relu`` as one group and then wants a ``QuantizeLinear``: the
two-input test model's token branch), and DenseNet, whose three "float convs" are BatchNorms
(after each transition's average pool) that ONNX Runtime's NCHWc layout pass rewrites as
depthwise 1x1 ``Conv`` nodes: every conv of the model runs on ``QLinearConv``. Tiny models at
small inputs, each exported and compiled (seconds).
"""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from lightning_accel.backends.onnxruntime import compile_onnxruntime, u8s8_saturates
from lightning_accel.export.compare import integer_ops
from lightning_accel.export.onnx import to_onnx
from lightning_accel.quantization import (
    QuantizationSpec,
    activation_quantizers,
    quantize_submodules,
)
from lightning_accel.quantization.attention import decompose_attention
from lightning_accel.quantization.prepare import QUANTIZER_PREFIX
from tests.conftest import Holder

WEIGHTED = (nn.Conv2d, nn.Linear)
# ONNX Runtime's integer kernels for a conv, linear or matmul (MatMulIntegerToFloat: uint8 x
# int8 with int32 accumulation, float output; what a 3-D linear or an unrequantized matmul uses).
CONV_MATMUL_INTEGER = ("QLinearConv", "QGemm", "QLinearMatMul", "MatMulIntegerToFloat")
FLOAT_COMPUTE = ("Conv", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul")


def quantized(model: nn.Module, x: torch.Tensor, names: list[str] | None = None) -> Holder:
    """``model`` with the layers ``names`` (default: every conv/linear) quantized for ONNX
    Runtime, observed on ``x``; names are relative to the holder (``model.<layer>``)."""
    holder = Holder(model)
    if names is None:
        names = [n for n, m in holder.named_modules() if type(m) in WEIGHTED]
    # reduce_range as QuantizationAware sets it: on a CPU without VNNI ONNX Runtime's u8s8
    # kernels saturate on full-range weights (test_reduced_weight_range_... below).
    spec = QuantizationSpec("onnxruntime", dict.fromkeys(names, 8), reduce_range=u8s8_saturates())
    quantize_submodules(holder, spec)
    holder.train()
    with torch.no_grad():
        for _ in range(3):
            holder(x)
    return holder.eval()


def optimized_graph(model: Holder, x: torch.Tensor, tmp_path: Path) -> onnx.GraphProto:
    """ONNX Runtime's optimized graph of ``model``, after checking it agrees with PyTorch."""
    compiled = compile_onnxruntime(to_onnx(model, x, tmp_path / "m.onnx"), tmp_path, threads=1)
    with torch.no_grad():
        reference = model(x).numpy()
    got = compiled.run(x.numpy())
    assert float(np.abs(got - reference).max()) <= 0.05 * float(np.abs(reference).max())
    return onnx.load(str(compiled.optimized_path)).graph


def count(graph: onnx.GraphProto, ops: tuple[str, ...]) -> int:
    return sum(node.op_type in ops for node in graph.node)


def tiny_vit(fused_attn: bool) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(
        img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, num_classes=10
    )
    for block in model.blocks:
        block.attn.fused_attn = fused_attn  # F.scaled_dot_product_attention, or q @ k^T
    return model


@pytest.mark.parametrize("fused_attn", [True, False], ids=["sdpa", "explicit-matmuls"])
def test_timm_vit_attention_matmuls_run_on_integer_kernels(
    fused_attn: bool, tmp_path: Path
) -> None:
    pytest.importorskip("timm")
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    model = quantized(tiny_vit(fused_attn), x)
    graph = optimized_graph(model, x, tmp_path)
    # patch conv + 4 linears per block + head, and 2 attention matmuls per block
    assert count(graph, CONV_MATMUL_INTEGER) == 1 + 2 * 4 + 1 + 2 * 2
    assert count(graph, FLOAT_COMPUTE) == 0, [n.op_type for n in graph.node]
    # the export summary counts MatMulIntegerToFloat as integer too
    info = compile_onnxruntime(tmp_path / "m.onnx", tmp_path / "again", threads=1).info
    assert integer_ops(info) == (14, 14)


def test_attention_written_out_computes_what_sdpa_computes() -> None:
    """Mask, causal and scale as ``F.scaled_dot_product_attention``; its dropout follows eval."""

    class Attention(nn.Module):
        def forward(self, q, k, v, mask):  # type: ignore[no-untyped-def]
            plain = F.scaled_dot_product_attention(q, k, v)
            masked = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3)
            causal = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=0.5)
            return plain + masked + causal

    q, k, v = (torch.randn(2, 3, 5, 8) for _ in range(3))
    mask = torch.rand(5, 5) > 0.3
    mask[:, 0] = True  # no row fully masked
    traced = fx.symbolic_trace(Attention())
    assert decompose_attention(traced) == 3
    traced.recompile()
    targets = {node.target for node in traced.graph.nodes}
    assert F.scaled_dot_product_attention not in targets and torch.matmul in targets
    traced.eval()  # the dropout is an nn.Dropout: off in eval, as the reference below
    reference = (
        F.scaled_dot_product_attention(q, k, v)
        + F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3)
        + F.scaled_dot_product_attention(q, k, v, is_causal=True)
    )
    torch.testing.assert_close(traced(q, k, v, mask), reference, rtol=1e-5, atol=1e-5)
    traced.train()
    assert not torch.allclose(traced(q, k, v, mask), reference)


def test_densenet_convs_all_run_on_qlinearconv(tmp_path: Path) -> None:
    """Concatenations and pre-activation BatchNorms: every conv is a QLinearConv; what ONNX
    Runtime leaves as a float ``Conv`` is a BatchNorm it rewrote as a depthwise 1x1 conv."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.DenseNet(
        growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2, num_classes=10
    )
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    x = torch.randn(4, 3, 32, 32)
    graph = optimized_graph(quantized(model, x), x, tmp_path)
    assert count(graph, ("QLinearConv",)) == convs and count(graph, ("QGemm",)) == 1
    initializers = {t.name: t for t in graph.initializer}
    for node in (n for n in graph.node if n.op_type in FLOAT_COMPUTE):
        weight = initializers[node.input[1]]
        group = next(a.i for a in node.attribute if a.name == "group")
        assert "_bn_nchwc" in node.name, node.name  # ONNX Runtime's BatchNorm rewrite
        assert list(weight.dims[1:]) == [1, 1, 1] and group == weight.dims[0]
    # the export summary's count: those BatchNorms are not float convs left
    info = compile_onnxruntime(tmp_path / "m.onnx", tmp_path / "again", threads=1).info
    assert info["batch_norms_as_float_conv"] == count(graph, FLOAT_COMPUTE)
    assert integer_ops(info) == (convs + 1, convs + 1)


def test_linear_before_a_relu_gets_its_output_quantized() -> None:
    """Its output is requantized after the ReLU (QGemm); a linear without ReLU keeps a float
    output (the logits)."""
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    holder = quantized(model, torch.randn(4, 8))
    order = [str(n.target) for n in holder.model.graph.nodes if n.op == "call_module"]
    assert len(activation_quantizers(holder)) == 2  # the input, and after the ReLU
    assert order[order.index("1") + 1].startswith(QUANTIZER_PREFIX)
    assert order[-1] == "2"  # the logits: no quantizer after them


def test_linear_reading_through_a_dropout_gets_an_int32_bias(tmp_path: Path) -> None:
    """VGG's classifier: ``Linear -> ReLU -> Dropout -> Linear``. The second linear's bias goes
    on the int32 grid of the quantizer it reads, like any other (while QAT briefly gave dropouts
    no quantizer of their own, that bias stayed float, and ONNX Runtime ran vgg19_bn's last
    ``Gemm`` in float)."""
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 4))
    x = torch.randn(4, 8)
    holder = quantized(model, x)
    graph = optimized_graph(holder, x, tmp_path)
    assert count(graph, ("QGemm",)) == 2 and count(graph, FLOAT_COMPUTE) == 0
    exported = onnx.load(str(tmp_path / "m.onnx")).graph
    producers = {output: node for node in exported.node for output in node.output}
    gemms = [n for n in exported.node if n.op_type in ("Gemm", "MatMul")]
    biases = [producers.get(n.input[2]) for n in gemms if len(n.input) > 2]
    assert len(biases) == 2 and all(
        b is not None and b.op_type == "DequantizeLinear" for b in biases
    )


def _saturating_conv(reduce_range: bool) -> Holder:
    """A 1x1 conv whose uint8 inputs sit near 255 and whose int8 weights are all at the top of
    their range: each pair of products, 2 x 255 x 127, overflows an int16."""
    conv = nn.Conv2d(16, 8, 1)
    with torch.no_grad():
        conv.weight.fill_(0.1)
        conv.bias.zero_()
    holder = Holder(nn.Sequential(conv))
    spec = QuantizationSpec("onnxruntime", {"model.0": 8}, reduce_range=reduce_range)
    quantize_submodules(holder, spec)
    with torch.no_grad():
        holder.train()(_near_top_of_grid())
    return holder.eval()


def _near_top_of_grid() -> torch.Tensor:
    return 3.9 + 0.1 * torch.rand(2, 16, 4, 4, generator=torch.Generator().manual_seed(0))


def test_u8s8_saturation_is_detected_from_the_cpu_flags() -> None:
    from lightning_accel.backends.onnxruntime import u8s8_saturates

    assert u8s8_saturates("flags\t\t: fpu sse4_2 avx2 fma")  # AVX2, no VNNI
    assert u8s8_saturates("flags\t\t: fpu avx2 avx512f avx512bw")  # AVX-512 without VNNI
    assert not u8s8_saturates("flags\t\t: fpu avx2 avx512f avx512_vnni")
    assert not u8s8_saturates("flags\t\t: fpu avx2 avx_vnni")
    assert not u8s8_saturates("Features\t: fp asimd asimddp")  # Arm: no VPMADDUBSW


@pytest.mark.bad_input("constructor")
def test_reduce_range_takes_a_bool_or_none() -> None:
    from lightning_accel import QuantizationAware

    with pytest.raises(ValueError, match="reduce_range"):
        QuantizationAware("onnxruntime", reduce_range="yes")  # type: ignore[arg-type]


def test_reduced_weight_range_runs_in_onnx_runtime_as_pytorch_computes(tmp_path: Path) -> None:
    """ONNX Runtime's u8s8 QLinearConv on x86 without VNNI adds product pairs into a saturating
    int16 (efficientnet_b1's QAT stem: 71 outputs off by the whole uint8 range). Weights in
    [-63, 63] (``reduce_range``) cannot saturate it, on any CPU."""
    from lightning_accel.backends.onnxruntime import u8s8_saturates

    x = _near_top_of_grid()
    outputs = {}
    for reduce_range in (False, True):
        model = _saturating_conv(reduce_range)
        path = to_onnx(model, x, tmp_path / f"reduce_{reduce_range}.onnx")
        compiled = compile_onnxruntime(path, tmp_path / str(reduce_range), threads=1)
        assert count(onnx.load(str(compiled.optimized_path)).graph, ("QLinearConv",)) == 1
        with torch.no_grad():
            reference = model(x).numpy()
        outputs[reduce_range] = np.abs(compiled.run(x.numpy()) - reference).max()
        step = float(model.model.activation_quantizers._0.scale)  # the output's uint8 step
        weights = model.model.get_submodule("0").weight_quantizer
        assert (weights.quant_min, weights.quant_max) == (
            (-63, 63) if reduce_range else (-127, 127)
        )
    assert outputs[True] <= step * 1.01  # at most one rounding step
    if u8s8_saturates():  # this CPU shows the fault the reduced range avoids
        assert outputs[False] > 10 * step
