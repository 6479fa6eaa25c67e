"""Binary layers in their export forms: float (exact) or int8 Q/DQ (ONNX Runtime's kernels).

Neither ONNX Runtime nor TensorRT has 1-bit kernels. Binary inputs (±1) times weights ±1 are
exactly representable in int8 Q/DQ: inputs as uint8 with scale 1 and zero point 1 (0 and 2
stand for -1 and +1, written straight from the comparison ``x >= β``), weights as int8 ±1 with
scale 1. ONNX Runtime then runs each binarized layer as ``QLinearConv``, whose integer output
(the sum of ±1 products) is requantized exactly up to a saturation bound, then scaled by α.
In the int8 form BatchNorms become per-channel ``Mul``/``Add``: ONNX Runtime runs
``QLinearConv`` in NHWC, and a ``BatchNormalization`` next to it costs two layout transposes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_accel.binarization.functions import hard_sign, weight_scale
from lightning_accel.binarization.layers import BINARY_LAYERS, BINARY_TRANSPOSED, BinaryLinear
from lightning_accel.quantization.convert import QDQActivation, quantized_decomposed_ops
from lightning_accel.quantization.layers import CONV_TRANSPOSE
from lightning_accel.utilities.modules import (
    batchnorm_to_affine,
    per_channel,
    set_submodule,
    weightless_conv,
)


def has_binary_layers(model: nn.Module) -> bool:
    """Whether ``model`` holds binarized layers."""
    return any(isinstance(m, BINARY_LAYERS) for m in model.modules())


class _ExportedBinaryLayer(nn.Module):
    """Shared geometry: a conv shell (weightless) or a linear marker."""

    shift: Tensor

    def __init__(self, layer: Any) -> None:
        super().__init__()
        self.is_linear = isinstance(layer, BinaryLinear)
        self.transposed = isinstance(layer, BINARY_TRANSPOSED)
        self.conv = None if self.is_linear or self.transposed else weightless_conv(layer)
        self.geometry = (
            (layer.stride, layer.padding, layer.output_padding, layer.groups, layer.dilation)
            if self.transposed
            else None
        )
        self.progress = float(layer.progress)
        self.binary_activations = bool(layer.binary_activations)
        self.register_buffer("shift", layer.activation_shift.detach().clone())

    def _at_or_above_shift(self, x: Tensor) -> Tensor:
        """Whether sign(x - β) >= 0 per channel, as one comparison ``x >= β``."""
        return x >= per_channel(self.shift, x)

    def _layer(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.is_linear:
            return F.linear(x, weight, bias)
        if self.geometry is not None:
            return CONV_TRANSPOSE[weight.dim() - 2](x, weight, bias, *self.geometry)
        return self.conv._conv_forward(x, weight, bias)  # type: ignore[union-attr,operator]


class FloatBinaryLayer(_ExportedBinaryLayer):
    """A binary layer as float ops: sign of the input, constant α·sign(W) weights."""

    weight: Tensor
    bias: Tensor | None

    def __init__(self, layer: Any) -> None:
        super().__init__(layer)
        weight = layer.weight.detach()
        if layer.binary_weights:  # α per output channel: axis 1 of a transposed conv's weight
            axis = 1 if self.transposed else 0
            channels_first = weight.transpose(0, axis)
            binary = weight_scale(channels_first, layer.scaling) * hard_sign(channels_first)
            weight = weight + self.progress * (binary.transpose(0, axis) - weight)
        self.register_buffer("weight", weight.clone())
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        if self.binary_activations:
            binary = torch.where(self._at_or_above_shift(x), 1.0, -1.0).to(x.dtype)
            x = x + self.progress * (binary - x)
        return self._layer(x, self.weight, self.bias)


class Int8BinaryLayer(_ExportedBinaryLayer):
    """A fully binarized layer as Q/DQ: uint8 ±1 inputs, int8 ±1 weights, then α and bias.

    The int8 conv sums ±1 products into an integer n, which α scales afterwards (α·n + b is the
    binary layer's output). n is even when each output sums an even number of products (an
    even number of input channels per group: padding adds zeros), so the requantization with
    step 2 and zero point 128 holds every n in [-256, 254] exactly; only rarer, larger sums
    saturate (ResNet-18's sums reach 350; at most 1 in 10,000 values in its last stage).
    """

    plus_one: Tensor
    minus_one: Tensor
    alpha: Tensor
    bias: Tensor | None

    def __init__(self, layer: Any) -> None:
        super().__init__(layer)
        weight = layer.weight.detach()
        channels = weight.shape[0]
        alpha = weight_scale(weight, layer.scaling).reshape(-1).expand(channels)
        self.register_buffer("weight_int8", hard_sign(weight).to(torch.int8))
        self.register_buffer("unit_scale", torch.ones(channels))
        self.register_buffer("zero_point", torch.zeros(channels, dtype=torch.int64))
        self.register_buffer("alpha", alpha.float().contiguous().clone())
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())
        self.register_buffer("plus_one", torch.tensor(2, dtype=torch.uint8))  # uint8 of +1
        self.register_buffer("minus_one", torch.tensor(0, dtype=torch.uint8))
        inputs_per_group = weight.shape[1]
        step = 2.0 if inputs_per_group % 2 == 0 else 1.0
        self.output_qdq = QDQActivation(step, 128, symmetric=False)

    def forward(self, x: Tensor) -> Tensor:
        ops = quantized_decomposed_ops()
        weight = ops.dequantize_per_channel(
            self.weight_int8, self.unit_scale, self.zero_point, 0, -127, 127, torch.int8
        )
        signs = torch.where(self._at_or_above_shift(x), self.plus_one, self.minus_one)
        binary = ops.dequantize_per_tensor(signs, 1.0, 1, 0, 255, torch.uint8)
        sums = self.output_qdq(self._layer(binary, weight, None))
        out = sums * per_channel(self.alpha, sums)
        return out if self.bias is None else out + per_channel(self.bias, sums)


def convert_binary_layers(model: nn.Module, int8: bool) -> nn.Module:
    """Replace binary layers of ``model`` (in place; call it on a copy) by their export forms.

    With ``int8``, layers with binary weights *and* inputs, fully binarized, become Q/DQ
    (``QLinearConv`` in ONNX Runtime), and then every BatchNorm a per-channel multiply-add; the
    other binary layers stay float. Binarized transposed convs stay float (exact) too: ONNX
    Runtime's CPU kernels have no integer ``ConvTranspose``, it would run Q/DQ ones in float.
    """
    replacements: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if isinstance(module, BINARY_LAYERS):
            exact_int8 = (
                int8
                and not isinstance(module, BINARY_TRANSPOSED)
                and module.binary_weights
                and module.binary_activations
                and float(module.progress) >= 1
            )
            replacements[name] = Int8BinaryLayer(module) if exact_int8 else FloatBinaryLayer(module)
    for name, replacement in replacements.items():
        set_submodule(model, name, replacement)
    if any(isinstance(m, Int8BinaryLayer) for m in replacements.values()):
        batchnorm_to_affine(model)
    return model
