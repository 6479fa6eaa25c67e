"""Turning a fake-quant model into the Q/DQ form ONNX export writes.

Weights become int8 tensors (BatchNorm folded) read through per-channel ``DequantizeLinear``
on axis 0; activation quantizers become ``QuantizeLinear``/``DequantizeLinear`` pairs. Built on
``torch.ops.quantized_decomposed``, which the dynamo exporter writes as Q/DQ with a dynamic
batch dimension. For ONNX Runtime the bias is int32 at scale input_scale x weight_scale,
which its ``QLinearConv``/``QGemm`` fusion needs; TensorRT takes a float bias. Layers trained at
fewer than 8 bits keep their integer values, which int8 holds exactly; activations trained at
fewer than 8 bits run at 8 bits over the same range.
"""

from __future__ import annotations

import warnings
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from lightning_accel.quantization.fake_quant import (
    ActivationQuantizer,
    WeightQuantizer,
    activation_range,
)
from lightning_accel.quantization.layers import (
    CONV_TRANSPOSE,
    QUANT_LAYERS,
    QUANT_TRANSPOSED,
    QuantLinear,
)
from lightning_accel.quantization.spec import RUNTIME_BITS
from lightning_accel.utilities.modules import set_submodule, weightless_conv

_INT32 = (-(2**31), 2**31 - 1)


def quantized_decomposed_ops() -> Any:
    """``torch.ops.quantized_decomposed``: Q/DQ ops that export to ONNX with a dynamic batch."""
    import torch.ao.quantization.fx._decomposed  # noqa: F401  registers quantized_decomposed

    return torch.ops.quantized_decomposed


def has_fake_quant(model: nn.Module) -> bool:
    """Whether ``model`` holds fake-quant layers or activation quantizers."""
    return any(isinstance(m, (*QUANT_LAYERS, ActivationQuantizer)) for m in model.modules())


class QDQActivation(nn.Module):
    """Quantize then dequantize an activation at 8 bits (a Q/DQ pair in ONNX)."""

    def __init__(self, scale: float, zero_point: int, symmetric: bool) -> None:
        super().__init__()
        self.scale = scale
        self.zero_point = zero_point
        self.dtype = torch.int8 if symmetric else torch.uint8
        self.quant_min, self.quant_max = activation_range(RUNTIME_BITS, symmetric)

    def forward(self, x: Tensor, observe: bool = True) -> Tensor:
        ops = quantized_decomposed_ops()
        args = (self.scale, self.zero_point, self.quant_min, self.quant_max, self.dtype)
        return ops.dequantize_per_tensor(ops.quantize_per_tensor(x, *args), *args)

    @classmethod
    def from_quantizer(cls, quantizer: ActivationQuantizer) -> QDQActivation:
        """The 8-bit Q/DQ of a trained quantizer's range."""
        scale = float(quantizer.scale.detach().reshape(-1)[0])
        zero_point = int(torch.round(quantizer.zero_point.detach()).reshape(-1)[0])
        if quantizer.bits != RUNTIME_BITS:  # same range, finer 8-bit grid
            low = (quantizer.quant_min - zero_point) * scale
            high = (quantizer.quant_max - zero_point) * scale
            quant_min, quant_max = activation_range(RUNTIME_BITS, quantizer.symmetric)
            if quantizer.symmetric:
                scale, zero_point = high / quant_max, 0
            else:
                scale = (high - low) / (quant_max - quant_min)
                zero_point = int(round(quant_min - low / scale))
        return cls(scale, zero_point, quantizer.symmetric)


class QDQLayer(nn.Module):
    """A conv or linear layer reading int8 weights (and an int32 or float bias) through DQ.

    Weights are dequantized per output channel: on axis 0 for convs and linears, on axis 1
    for transposed convs (whose weight is ``[in, out / groups, *kernel]``).
    """

    def __init__(self, layer: nn.Module, input_scale: float | None) -> None:
        super().__init__()
        weight, bias = layer.folded_weight_and_bias()  # type: ignore[operator]
        quantizer = cast(WeightQuantizer, layer.weight_quantizer)
        self.transposed = isinstance(layer, QUANT_TRANSPOSED)
        self.axis = 1 if self.transposed else 0
        scale = (
            quantizer.scale.detach().clone()
            if quantizer.learnable
            else quantizer.max_abs_scale(weight.transpose(0, self.axis))
        )
        shape = [1] * weight.dim()
        shape[self.axis] = -1
        # The integers the fake-quant op trained with: it multiplies by 1 / scale, which rounds
        # a value at (or next to) a half step otherwise than round(weight / scale) (a QAT
        # EfficientNet-B1 weight at -31.5 steps became -31 in training, -32 in the export).
        fake_quantized = torch.fake_quantize_per_channel_affine(
            weight.float(),
            scale.float(),
            torch.zeros_like(scale, dtype=torch.int32),
            self.axis,
            quantizer.quant_min,
            quantizer.quant_max,
        )
        integers = torch.round(fake_quantized / scale.float().reshape(shape))
        self.register_buffer(
            "weight_int8", integers.clamp(quantizer.quant_min, quantizer.quant_max).to(torch.int8)
        )
        self.register_buffer("weight_scale", scale.float())
        self.register_buffer("zero_point", torch.zeros_like(scale, dtype=torch.int64))
        self.weight_range = (quantizer.quant_min, quantizer.quant_max)
        self.register_buffer("bias", None)
        self.register_buffer("bias_int32", None)
        self.register_buffer("bias_scale", None)
        self.register_buffer("bias_zero_point", None)
        if bias is not None and input_scale is not None and getattr(layer, "integer_bias", False):
            # One bias scale per output channel: a grouped transposed conv repeats its
            # per-group weight scales.
            groups = int(getattr(layer, "groups", 1)) if self.transposed else 1
            self.bias_scale = scale.float().repeat(groups) * input_scale
            self.bias_zero_point = torch.zeros_like(self.bias_scale, dtype=torch.int64)
            self.bias_int32 = torch.round(bias / self.bias_scale).clamp(*_INT32).to(torch.int32)
        elif bias is not None:
            self.bias = bias.float().clone()
        self.is_linear = isinstance(layer, QuantLinear)
        self.conv = None if self.is_linear or self.transposed else weightless_conv(layer)
        self.geometry: tuple[Any, ...] | None = (
            (layer.stride, layer.padding, layer.output_padding, layer.groups, layer.dilation)
            if self.transposed
            else None
        )

    def forward(self, x: Tensor, input_scale: Any = None) -> Tensor:
        """The layer on its Q/DQ weights; ``input_scale`` (the fake-quant call's) is unused."""
        ops = quantized_decomposed_ops()
        weight = ops.dequantize_per_channel(
            self.weight_int8,
            self.weight_scale,
            self.zero_point,
            self.axis,
            *self.weight_range,
            torch.int8,
        )
        bias = self.bias
        if self.bias_scale is not None:
            bias = ops.dequantize_per_channel(
                self.bias_int32, self.bias_scale, self.bias_zero_point, 0, *_INT32, torch.int32
            )
        if self.is_linear:
            return F.linear(x, weight, bias)
        if self.geometry is not None:
            return CONV_TRANSPOSE[weight.dim() - 2](x, weight, bias, *self.geometry)  # type: ignore[arg-type]
        return self.conv._conv_forward(x, weight, bias)  # type: ignore[union-attr,operator]


def convert_to_qdq(model: nn.Module) -> nn.Module:
    """Replace fake-quant modules of ``model`` (in place) by their Q/DQ forms; returns it.

    Call it on a copy: :func:`lightning_accel.export.to_onnx` does.
    """
    input_scales = _input_scales(model)
    replacements: dict[str, nn.Module] = {}
    low_bits = []
    for name, module in model.named_modules():
        if isinstance(module, QUANT_LAYERS):
            replacements[name] = QDQLayer(module, input_scales.get(name))
            if module.weight_quantizer.bits < RUNTIME_BITS:
                low_bits.append(f"{name} ({module.weight_quantizer.bits}-bit)")
        elif isinstance(module, ActivationQuantizer):
            replacements[name] = QDQActivation.from_quantizer(module)
            if module.bits < RUNTIME_BITS:
                low_bits.append(f"{name} ({module.bits}-bit activations)")
    for name, replacement in replacements.items():
        set_submodule(model, name, replacement)
    if low_bits:
        warnings.warn(
            f"{len(low_bits)} quantizers were trained below 8 bits (e.g. {low_bits[0]}). ONNX "
            "Runtime and TensorRT run only 8-bit kernels: low-bit weights keep their integer "
            "values inside int8 (exact, no speed or size gain at run time); low-bit activations "
            "run on the finer 8-bit grid of the same range.",
            stacklevel=2,
        )
    return model


def _input_scales(model: nn.Module) -> dict[str, float]:
    """Scale of the activation quantizer feeding each quantized layer, by full layer name."""
    scales: dict[str, float] = {}
    for prefix, graph_module in model.named_modules():
        if not isinstance(graph_module, fx.GraphModule):
            continue
        for node in graph_module.graph.nodes:
            source = node.args[0] if node.op == "call_module" and node.args else None
            if not isinstance(source, fx.Node) or source.op != "call_module":
                continue
            quantizer = graph_module.get_submodule(str(source.target))
            layer = graph_module.get_submodule(str(node.target))
            if isinstance(quantizer, ActivationQuantizer) and isinstance(layer, QUANT_LAYERS):
                name = f"{prefix}.{node.target}" if prefix else str(node.target)
                scales[name] = QDQActivation.from_quantizer(quantizer).scale
    return scales
