"""Fake-quantizers for training, built on core torch ops (contract 4 of DESIGN.md).

Weights: per-output-channel symmetric, scale = max |W_c| / q_max, re-measured every step.
Activations: per-tensor, uint8 asymmetric (ONNX Runtime) or int8 symmetric (TensorRT), with
a range observer (EMA of the min/max, or of the 0.01% / 99.99% percentiles) that can be
frozen. With ``learnable=True`` the scales are parameters (LSQ, Esser et al. 2020): the
observer initializes them, and once it is frozen the gradient moves them.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn

Observer = Literal["ema_minmax", "percentile"]
OBSERVERS = ("ema_minmax", "percentile")
_EMA = 0.01  # weight of a new batch in the range average
_PERCENTILE = 1e-4  # tail cut off on each side by the percentile observer
_MAX_SAMPLES = 1 << 18  # elements the percentile observer reads per batch
_MIN_SCALE = 1e-8


def activation_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer range of an activation: int8-style symmetric or uint8-style asymmetric."""
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)


# ONNX Runtime's u8s8 kernels on x86 CPUs without VNNI add pairs of uint8 x int8 products
# in int16 with saturation (VPMADDUBSW): 2 x 255 x 63 = 32130 fits, 2 x 255 x 127 does not.
# (63, not ONNX Runtime's 64: torch's learnable per-channel fake-quant op trained a
# 129-level range to 54% digits accuracy where [-63, 63] reached 97%.)
REDUCED_WEIGHT_MAX = 63


def weight_range(bits: int, reduce_range: bool = False) -> tuple[int, int]:
    """Narrow symmetric integer range of a weight, e.g. [-127, 127] at 8 bits.

    ``reduce_range`` caps it at [-63, 63] (ONNX Runtime's ``reduce_range``), where no pair of
    uint8 x int8 products can saturate an int16 sum.
    """
    q_max = 2 ** (bits - 1) - 1
    if reduce_range:
        q_max = min(q_max, REDUCED_WEIGHT_MAX)
    return -q_max, q_max


class ActivationQuantizer(nn.Module):
    """Per-tensor fake-quantization of an activation with a range observer.

    Args:
        bits: Bit width (2 to 8).
        symmetric: Signed range with zero point 0 (TensorRT) instead of unsigned asymmetric
            (ONNX Runtime).
        observer: ``"ema_minmax"`` or ``"percentile"``.
        learnable: Learn the scale (and zero point) once the observer is frozen.
    """

    min_val: Tensor
    max_val: Tensor
    observed: Tensor
    observer_enabled: Tensor
    scale: Tensor
    zero_point: Tensor

    def __init__(
        self,
        bits: int = 8,
        symmetric: bool = False,
        observer: Observer = "ema_minmax",
        learnable: bool = False,
    ) -> None:
        super().__init__()
        self.bits = bits
        self.symmetric = symmetric
        self.observer = observer
        self.learnable = learnable
        self.quant_min, self.quant_max = activation_range(bits, symmetric)
        self.register_buffer("min_val", torch.zeros(()))
        self.register_buffer("max_val", torch.zeros(()))
        self.register_buffer("observed", torch.zeros((), dtype=torch.bool))
        self.register_buffer("observer_enabled", torch.ones((), dtype=torch.bool))
        scale, zero_point = torch.ones(1), torch.zeros(1)
        if learnable:
            self.scale = nn.Parameter(scale)
        else:
            self.register_buffer("scale", scale)
        if learnable and not symmetric:
            self.zero_point = nn.Parameter(zero_point)
        else:
            self.register_buffer("zero_point", zero_point)

    def forward(self, x: Tensor, observe: bool = True) -> Tensor:
        """Fake-quantize ``x``; ``observe=False`` for a tensor already on this grid."""
        if observe and ((self.training and bool(self.observer_enabled)) or not bool(self.observed)):
            self._observe(x.detach())
        if self.learnable:
            _keep_in_range(self.scale, self.zero_point, self.quant_min, self.quant_max)
            return torch._fake_quantize_learnable_per_tensor_affine(
                x,
                self.scale,
                self.zero_point,
                self.quant_min,
                self.quant_max,
                _lsq_gradient_scale(x[0].numel() if x.dim() > 1 else x.numel(), self.quant_max),
            )
        return torch.fake_quantize_per_tensor_affine(
            x, self.scale, self.zero_point.int(), self.quant_min, self.quant_max
        )

    @torch.no_grad()
    def _observe(self, x: Tensor) -> None:
        low, high = _sync_across_ranks(*self._batch_range(x.float()))
        if bool(self.observed):
            low = self.min_val + _EMA * (low - self.min_val)
            high = self.max_val + _EMA * (high - self.max_val)
        self.min_val.copy_(low)
        self.max_val.copy_(high)
        self.observed.fill_(True)
        scale, zero_point = self.scale_and_zero_point()
        self.scale.data.copy_(scale)
        self.zero_point.data.copy_(zero_point)

    def _batch_range(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.observer == "ema_minmax":
            return x.min(), x.max()
        flat = x.flatten()
        if flat.numel() > _MAX_SAMPLES:
            flat = flat[:: flat.numel() // _MAX_SAMPLES + 1]  # deterministic on every rank
        bounds = torch.tensor([_PERCENTILE, 1 - _PERCENTILE], device=flat.device)
        low, high = torch.quantile(flat, bounds)
        return low, high

    def scale_and_zero_point(self, bits: int | None = None) -> tuple[Tensor, Tensor]:
        """Scale and zero point of the observed range, at ``bits`` (default: this quantizer's)."""
        quant_min, quant_max = activation_range(bits or self.bits, self.symmetric)
        low, high = self.min_val.clamp(max=0), self.max_val.clamp(min=0)
        if self.symmetric:
            scale = (torch.maximum(-low, high) / quant_max).clamp(min=_MIN_SCALE)
            return scale.reshape(1), torch.zeros(1, device=scale.device)
        scale = ((high - low) / (quant_max - quant_min)).clamp(min=_MIN_SCALE)
        zero_point = (quant_min - torch.round(low / scale)).clamp(quant_min, quant_max)
        return scale.reshape(1), zero_point.reshape(1)

    def extra_repr(self) -> str:
        kind = "int8-symmetric" if self.symmetric else "uint8-asymmetric"
        return f"bits={self.bits}, {kind}, observer={self.observer}, learnable={self.learnable}"


class WeightQuantizer(nn.Module):
    """Per-output-channel symmetric fake-quantization of a weight tensor (axis 0).

    Args:
        channels: Output channels of the weight.
        bits: Bit width (2 to 8).
        learnable: Learn the per-channel scales once the observer is frozen.
        reduce_range: Keep the integers in [-63, 63] (see :func:`weight_range`).
    """

    observed: Tensor
    observer_enabled: Tensor
    scale: Tensor
    zero_point: Tensor

    def __init__(
        self, channels: int, bits: int = 8, learnable: bool = False, reduce_range: bool = False
    ) -> None:
        super().__init__()
        self.bits = bits
        self.learnable = learnable
        self.reduce_range = reduce_range
        self.quant_min, self.quant_max = weight_range(bits, reduce_range)
        self.register_buffer("observer_enabled", torch.ones((), dtype=torch.bool))
        self.register_buffer("zero_point", torch.zeros(channels, dtype=torch.int32))
        if learnable:
            self.scale = nn.Parameter(torch.ones(channels))
            self.register_buffer("observed", torch.zeros((), dtype=torch.bool))
        else:
            self.register_buffer("scale", torch.ones(channels))

    def forward(self, weight: Tensor) -> Tensor:
        if not self.learnable:
            self.scale.copy_(self.max_abs_scale(weight))
            return torch.fake_quantize_per_channel_affine(
                weight, self.scale, self.zero_point, 0, self.quant_min, self.quant_max
            )
        if bool(self.observer_enabled) or not bool(self.observed):
            self.scale.data.copy_(self.max_abs_scale(weight))
            self.observed.fill_(True)
        _keep_in_range(self.scale, None, self.quant_min, self.quant_max)
        return torch._fake_quantize_learnable_per_channel_affine(
            weight,
            self.scale,
            self.zero_point.float(),
            0,
            self.quant_min,
            self.quant_max,
            _lsq_gradient_scale(weight[0].numel(), self.quant_max),
        )

    @torch.no_grad()
    def max_abs_scale(self, weight: Tensor) -> Tensor:
        """Per-channel scale that maps max |W_c| to the top of the integer range."""
        max_abs = weight.detach().abs().flatten(1).amax(dim=1)
        return (max_abs / self.quant_max).clamp(min=_MIN_SCALE)

    def extra_repr(self) -> str:
        limit = f", range [{self.quant_min}, {self.quant_max}]" if self.reduce_range else ""
        return f"bits={self.bits}, per-channel symmetric{limit}, learnable={self.learnable}"


def _lsq_gradient_scale(elements: int, quant_max: int) -> float:
    """LSQ's step-size gradient scale 1 / sqrt(N * Q_max), which keeps learned scales stable."""
    return 1.0 / math.sqrt(max(elements, 1) * quant_max)


@torch.no_grad()
def _keep_in_range(
    scale: Tensor, zero_point: Tensor | None, quant_min: int, quant_max: int
) -> None:
    """Keep learned scales positive and zero points inside the integer range."""
    scale.data.clamp_(min=_MIN_SCALE)  # .data: a shared quantizer may be read twice per step
    if zero_point is not None:
        zero_point.data.clamp_(quant_min, quant_max)


def _sync_across_ranks(low: Tensor, high: Tensor) -> tuple[Tensor, Tensor]:
    """Widest range over all ranks, so every DDP rank keeps the same scales (contract 8)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return low, high
    bounds = torch.stack([-low, high])
    dist.all_reduce(bounds, op=dist.ReduceOp.MAX)
    return -bounds[0], bounds[1]
