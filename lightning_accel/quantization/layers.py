"""Conv and linear layers that train against fake-quantized weights.

A conv followed by BatchNorm becomes one :class:`QuantConv2d` (or 1d/3d) that owns the
BatchNorm, as in PyTorch's ``_ConvBnNd`` (Krishnamoorthi 2018, sec. 3.2): the weight is scaled
by gamma / running_std, fake-quantized, and the scaling undone after the conv, so training sees
the same int8 grid as the BatchNorm-folded conv that export writes. Once the BatchNorm runs on
its running statistics (frozen, or in eval) the layer computes the folded conv itself, the
exported graph's arithmetic. For ONNX Runtime the (folded) bias is rounded to the int32 grid
export writes (:mod:`~lightning_accel.quantization.integer_bias`). Parameter names stay those of
the original layer (``<name>.weight``); the BatchNorm moves to ``<name>.bn``.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_accel.quantization.fake_quant import WeightQuantizer
from lightning_accel.quantization.integer_bias import layer_bias

_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class _QuantConvMixin:
    """Forward pass shared by the quantized conv classes."""

    weight: Tensor
    bias: Tensor | None
    bn: Any
    weight_quantizer: WeightQuantizer
    bn_frozen: Tensor
    _conv_forward: Any

    def forward(self, x: Tensor, input_scale: Tensor | float | None = None) -> Tensor:
        """The conv on fake-quant weights; ``input_scale``: the input's 8-bit scale.

        ``input_scale`` (passed by QAT preparation for ONNX Runtime) puts the bias on the int32
        grid export writes; ``None`` keeps it in float.
        """
        if self.bn is None:
            weight = self.weight_quantizer(self.weight)
            return self._conv_forward(x, weight, layer_bias(self, self.bias, input_scale))
        bn = self.bn
        factor = bn_scale_factor(bn)
        shape = [-1] + [1] * (self.weight.dim() - 1)
        weight = self.weight_quantizer(self.weight * factor.reshape(shape))
        if not bn.training or bool(self.bn_frozen):
            # Running statistics: the BatchNorm-folded conv, computed as the exported graph does.
            bias = (self.bias if self.bias is not None else 0.0) - bn.running_mean
            bias = bias * factor + (bn.bias if bn.bias is not None else 0.0)
            return self._conv_forward(x, weight, layer_bias(self, bias, input_scale))
        out = self._conv_forward(x, weight, None) / factor.reshape([1, -1] + shape[2:])
        if self.bias is not None:
            out = out + self.bias.reshape([1, -1] + shape[2:])
        return F.batch_norm(
            out,
            bn.running_mean,
            bn.running_var,
            bn.weight,
            bn.bias,
            True,
            bn.momentum if bn.momentum is not None else 0.1,
            bn.eps,
        )

    @torch.no_grad()
    def folded_weight_and_bias(self) -> tuple[Tensor, Tensor | None]:
        """Weight and bias with the BatchNorm (running statistics) folded in."""
        if self.bn is None:
            return self.weight.detach().clone(), None if self.bias is None else self.bias.detach()
        bn = self.bn
        factor = bn_scale_factor(bn)
        weight = self.weight * factor.reshape([-1] + [1] * (self.weight.dim() - 1))
        bias = torch.zeros_like(bn.running_mean) if self.bias is None else self.bias
        shift = bn.bias if bn.bias is not None else torch.zeros_like(bias)
        return weight.detach(), (shift + (bias - bn.running_mean) * factor).detach()


def bn_scale_factor(bn: Any) -> Tensor:
    """Gamma / sqrt(running_var + eps) of a BatchNorm, kept away from zero."""
    std = torch.sqrt(bn.running_var + bn.eps)
    factor = bn.weight / std if bn.weight is not None else 1.0 / std
    return torch.where(factor.abs() < 1e-12, torch.full_like(factor, 1e-12), factor)


class QuantConv1d(_QuantConvMixin, nn.Conv1d):
    """Conv1d (with optional folded BatchNorm) on fake-quantized weights."""


class QuantConv2d(_QuantConvMixin, nn.Conv2d):
    """Conv2d (with optional folded BatchNorm) on fake-quantized weights."""


class QuantConv3d(_QuantConvMixin, nn.Conv3d):
    """Conv3d (with optional folded BatchNorm) on fake-quantized weights."""


class QuantLinear(nn.Linear):
    """Linear layer on fake-quantized weights."""

    weight_quantizer: WeightQuantizer

    def forward(self, x: Tensor, input_scale: Tensor | float | None = None) -> Tensor:
        """The linear map on fake-quant weights; ``input_scale`` as for the convs."""
        weight = self.weight_quantizer(self.weight)
        return F.linear(x, weight, layer_bias(self, self.bias, input_scale))

    @torch.no_grad()
    def folded_weight_and_bias(self) -> tuple[Tensor, Tensor | None]:
        """Weight and bias as they are (a linear layer has no BatchNorm to fold)."""
        return self.weight.detach().clone(), None if self.bias is None else self.bias.detach()


class _QuantConvTransposeMixin:
    """Forward pass shared by the quantized transposed convs.

    A transposed conv's weight is ``[in, out / groups, *kernel]``: its output channels lie on
    axis 1, so the weight is quantized per axis-1 slice (one scale per output channel of a
    group, ONNX ``DequantizeLinear(axis=1)``). No BatchNorm is folded in.
    """

    weight: Tensor
    bias: Tensor | None
    weight_quantizer: WeightQuantizer
    stride: Any
    padding: Any
    output_padding: Any
    groups: int
    dilation: Any

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        """The transposed conv on fake-quant weights; ``output_size`` as torch's layer takes it."""
        weight = self.weight_quantizer(self.weight.transpose(0, 1)).transpose(0, 1)
        return conv_transpose(self, x, weight, output_size)

    @torch.no_grad()
    def folded_weight_and_bias(self) -> tuple[Tensor, Tensor | None]:
        """Weight (``[in, out / groups, *kernel]``) and bias as they are."""
        return self.weight.detach().clone(), None if self.bias is None else self.bias.detach()


CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def conv_transpose(layer: Any, x: Tensor, weight: Tensor, output_size: list[int] | None) -> Tensor:
    """``layer``'s transposed conv of ``x`` with ``weight`` in place of its own.

    Args:
        layer: A ``ConvTranspose1d/2d/3d`` subclass (its stride, padding, groups, dilation, bias).
        x: The input, ``(N, C_in, *spatial)``.
        weight: ``[C_in, C_out / groups, *kernel]``, e.g. fake-quantized or binarized.
        output_size: The spatial output size forward was asked for, or ``None``.
    """
    return CONV_TRANSPOSE[weight.dim() - 2](
        x,
        weight,
        layer.bias,
        layer.stride,
        layer.padding,
        output_padding(layer, x, output_size),
        layer.groups,
        layer.dilation,
    )


def output_padding(layer: Any, x: Tensor, output_size: list[int] | None) -> Any:
    """The layer's ``output_padding``, or the one ``output_size`` asks for (torch's own rule).

    Args:
        layer: A ``ConvTranspose1d/2d/3d`` (or its fake-quant / binary subclass).
        x: The layer's input, ``(N, C_in, *spatial)``.
        output_size: The spatial output size forward was asked for, or ``None``.
    """
    if output_size is None:
        return layer.output_padding
    dims = layer.weight.dim() - 2
    return layer._output_padding(
        x, output_size, layer.stride, layer.padding, layer.kernel_size, dims, layer.dilation
    )


class QuantConvTranspose1d(_QuantConvTransposeMixin, nn.ConvTranspose1d):
    """ConvTranspose1d on fake-quantized weights (per output channel, axis 1)."""


class QuantConvTranspose2d(_QuantConvTransposeMixin, nn.ConvTranspose2d):
    """ConvTranspose2d on fake-quantized weights (per output channel, axis 1)."""


class QuantConvTranspose3d(_QuantConvTransposeMixin, nn.ConvTranspose3d):
    """ConvTranspose3d on fake-quantized weights (per output channel, axis 1)."""


QUANT_TRANSPOSED = (QuantConvTranspose1d, QuantConvTranspose2d, QuantConvTranspose3d)
QuantLayer = (
    QuantConv1d
    | QuantConv2d
    | QuantConv3d
    | QuantLinear
    | QuantConvTranspose1d
    | QuantConvTranspose2d
    | QuantConvTranspose3d
)
QUANT_LAYERS = (QuantConv1d, QuantConv2d, QuantConv3d, QuantLinear, *QUANT_TRANSPOSED)
_QUANT_CONV_FOR: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: QuantConv1d,
    nn.Conv2d: QuantConv2d,
    nn.Conv3d: QuantConv3d,
}
_QUANT_TRANSPOSED_FOR: dict[type[nn.Module], type[nn.Module]] = {
    nn.ConvTranspose1d: QuantConvTranspose1d,
    nn.ConvTranspose2d: QuantConvTranspose2d,
    nn.ConvTranspose3d: QuantConvTranspose3d,
}


def quantize_layer(
    layer: nn.Module,
    bn: nn.Module | None,
    bits: int,
    learnable: bool,
    reduce_range: bool = False,
) -> QuantLayer:
    """A quantized layer sharing ``layer``'s parameters (and owning ``bn``, for convs).

    Args:
        layer: A plain ``nn.Conv1d``/``2d``/``3d``, ``nn.ConvTranspose1d``/``2d``/``3d`` or
            ``nn.Linear`` (not a subclass).
        bn: The BatchNorm that follows a conv, to fold into it (see :func:`is_batch_norm_for`),
            or ``None``; ignored for a Linear.
        bits: Weight bit width, in [2, 8] (per-output-channel, symmetric).
        learnable: Learn the per-channel weight scales once the observer is frozen.
        reduce_range: Keep weight integers in [-63, 63] (ONNX Runtime on CPUs without VNNI).

    Returns:
        The quantized layer, on ``layer``'s device and dtype and in its training mode.

    Raises:
        TypeError: If ``layer`` is not a plain Conv1d/2d/3d, ConvTranspose1d/2d/3d or Linear.
    """
    weight = cast(Tensor, layer.weight)
    factory = {"device": weight.device, "dtype": weight.dtype}
    new: Any
    conv: Any = layer
    if type(layer) is nn.Linear:
        new = QuantLinear(conv.in_features, conv.out_features, conv.bias is not None, **factory)
    elif type(layer) in _QUANT_CONV_FOR:
        new = _QUANT_CONV_FOR[type(layer)](  # type: ignore[index]
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            **factory,
        )
        new.register_module("bn", bn)
        new.register_buffer("bn_frozen", torch.zeros((), dtype=torch.bool, device=weight.device))
    elif type(layer) in _QUANT_TRANSPOSED_FOR:
        if conv.padding_mode != "zeros":
            raise TypeError(
                f"{type(layer).__name__}(padding_mode={conv.padding_mode!r}) cannot be quantized: "
                "transposed convs take only zero padding. Leave it out with ignore=[...]."
            )
        new = _QUANT_TRANSPOSED_FOR[type(layer)](  # type: ignore[index]
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.output_padding,
            conv.groups,
            conv.bias is not None,
            conv.dilation,
            **factory,
        )
    else:
        raise TypeError(
            f"{type(layer).__name__} cannot be quantized: only plain nn.Conv1d/2d/3d, "
            "nn.ConvTranspose1d/2d/3d and nn.Linear are. Leave it out with ignore=[...]."
        )
    new.weight = weight
    new.bias = conv.bias
    channels = weight.shape[1] if isinstance(new, QUANT_TRANSPOSED) else weight.shape[0]
    new.weight_quantizer = WeightQuantizer(channels, bits, learnable, reduce_range).to(
        weight.device
    )
    new.train(layer.training)
    return new


def is_batch_norm_for(module: nn.Module, layer: nn.Module) -> bool:
    """Whether ``module`` is a BatchNorm over ``layer``'s output channels that can be folded.

    Plain ``nn.BatchNorm1d/2d/3d`` fold, and so does a norm-act subclass whose extra steps
    :func:`batch_norm_tail` knows (timm's ``BatchNormAct2d``); any other subclass may compute
    more than the normalization, so it stays a module of its own.
    """
    return (
        isinstance(module, _BATCH_NORMS)
        and batch_norm_tail(module) is not None
        and isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
        and module.num_features == layer.out_channels
        and module.track_running_stats
        and module.running_var is not None
    )


def batch_norm_tail(module: nn.Module) -> tuple[str, ...] | None:
    """Child modules a BatchNorm applies, in order, after normalizing; ``None`` if unknown.

    ``()`` for a plain ``nn.BatchNorm1d/2d/3d``; ``("drop", "act")`` for timm's norm-act
    layers (``timm.layers.norm_act.BatchNormAct2d``: batch norm, then ``self.drop``, then
    ``self.act``). Folding such a layer into a conv keeps these children as calls after it.
    """
    if type(module) in _BATCH_NORMS:
        return ()
    is_timm_norm_act = type(module).__module__.startswith("timm.") and all(
        isinstance(getattr(module, child, None), nn.Module) for child in _TIMM_NORM_ACT_TAIL
    )
    return _TIMM_NORM_ACT_TAIL if is_timm_norm_act else None


_TIMM_NORM_ACT_TAIL = ("drop", "act")
