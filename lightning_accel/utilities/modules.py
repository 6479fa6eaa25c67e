"""Module surgery helpers shared by the layer-swapping techniques."""

from __future__ import annotations

from typing import Any

from torch import nn

_CONV_BY_DIM = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted ``name`` inside ``root``."""
    parent, _, attribute = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attribute, module)


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
