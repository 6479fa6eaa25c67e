"""Sign with straight-through gradients, and the XNOR-Net weight scale."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

Estimator = Literal["clipped", "approx_sign"]
ESTIMATORS = ("clipped", "approx_sign")
Scaling = Literal["channel", "tensor"] | None
SCALINGS = ("channel", "tensor", None)


def hard_sign(x: Tensor) -> Tensor:
    """±1 with sign(0) = +1, so every value is binary."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


class _SignClipped(torch.autograd.Function):
    """sign forward; identity gradient inside [-1, 1], zero outside (hardtanh STE)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return hard_sign(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


class _SignApprox(torch.autograd.Function):
    """sign forward; gradient of Bi-Real Net's ApproxSign (Liu et al., 2018).

    The piecewise-quadratic ApproxSign has derivative 2 - 2|x| on [-1, 1], zero outside.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return hard_sign(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * (2 - 2 * x.abs()).clamp(min=0)


def binarize_activation(x: Tensor, estimator: str) -> Tensor:
    """sign(x) whose gradient is the chosen straight-through estimator."""
    function = _SignClipped if estimator == "clipped" else _SignApprox
    return function.apply(x)  # type: ignore[no-any-return]


def weight_scale(weight: Tensor, scaling: str | None) -> Tensor:
    """α = mean |W| per output channel, per tensor, or 1; shaped to broadcast over ``weight``."""
    shape = [-1] + [1] * (weight.dim() - 1)
    if scaling == "channel":
        return weight.detach().abs().flatten(1).mean(1).reshape(shape)
    if scaling == "tensor":
        return weight.detach().abs().mean().reshape([1] * weight.dim())
    return torch.ones([1] * weight.dim(), device=weight.device, dtype=weight.dtype)


def binarize_weight(weight: Tensor, scaling: str | None) -> Tensor:
    """α·sign(W) forward, identity gradient to the latent real weights (XNOR-Net)."""
    binary = weight_scale(weight, scaling) * hard_sign(weight)
    return weight + (binary - weight).detach()
