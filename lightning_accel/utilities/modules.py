"""Module surgery helpers shared by the layer-swapping techniques."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

_CONV_BY_DIM = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted ``name`` inside ``root``.

    Args:
        root: The module to change in place.
        name: Dotted path relative to ``root``, e.g. ``"layer1.0.conv1"``; its parent must exist.
        module: The module to place there (replacing any module already at ``name``).

    Raises:
        AttributeError: If the parent path of ``name`` is not a submodule of ``root``.
    """
    parent, _, attribute = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attribute, module)


def per_channel(values: Tensor, like: Tensor) -> Tensor:
    """A 1-D per-channel tensor shaped to broadcast over ``like``'s dim 1 (N, C, ...)."""
    return values.reshape([1, -1] + [1] * (like.dim() - 2))


def weightless_conv(layer: Any) -> nn.Module:
    """A conv of ``layer``'s geometry with no weight, for its ``_conv_forward``."""
    shell = _CONV_BY_DIM[layer.weight.dim() - 2](
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        layer.stride,
        layer.padding,
        layer.dilation,
        layer.groups,
        False,
        layer.padding_mode,
        device="meta",
    )
    shell.register_parameter("weight", None)
    return shell


class ChannelAffine(nn.Module):
    """An eval-mode BatchNorm as a per-channel multiply-add: ``x * scale + shift``.

    Same arithmetic as the BatchNorm, other ONNX ops: ``Mul`` and ``Add`` let ONNX Runtime move
    layout transposes through them (``BatchNormalization`` pins the NCHW layout), and it still
    folds them into a preceding float ``Conv``.
    """

    scale: Tensor
    shift: Tensor

    def __init__(self, norm: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        assert norm.running_mean is not None and norm.running_var is not None
        scale = torch.rsqrt(norm.running_var.detach() + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight.detach()
        shift = -norm.running_mean.detach() * scale
        if norm.bias is not None:
            shift = shift + norm.bias.detach()
        self.register_buffer("scale", scale.clone())
        self.register_buffer("shift", shift.clone())

    def forward(self, x: Tensor) -> Tensor:
        return x * per_channel(self.scale, x) + per_channel(self.shift, x)


def batchnorm_to_affine(model: nn.Module) -> int:
    """Replace (in place) every BatchNorm with running statistics by a :class:`ChannelAffine`.

    Only for eval-mode exports: the replacement computes what the BatchNorm computes in eval
    mode. Returns how many were replaced.
    """
    norms = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_var is not None
    ]
    for name in norms:
        set_submodule(model, name, ChannelAffine(model.get_submodule(name)))  # type: ignore[arg-type]
    return len(norms)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode, then give every submodule back its *own* mode.

    ``model.train(was_training)`` would set every submodule alike, putting a BatchNorm the user
    froze in eval mode back into training (its running statistics would move again).
    """
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training


ModelInput = Tensor | tuple[Tensor, ...]
"""What a model is called with: one tensor, or a tuple of tensors passed as positional inputs."""


def run_model(model: nn.Module, inputs: ModelInput) -> Any:
    """Call ``model`` on one input tensor, or on a tuple of tensors as positional inputs."""
    return model(*inputs) if isinstance(inputs, tuple) else model(inputs)
