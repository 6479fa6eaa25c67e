"""Size and cost of a model: parameters, non-zero parameters, MACs."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from lightning_accel.utilities.modules import ModelInput, eval_mode, run_model


@dataclass(frozen=True)
class ModelStats:
    """What a model costs.

    Attributes:
        params: Parameters (dense count).
        nonzero_params: Parameters that are not exactly zero.
        macs: Multiply-accumulates for one input of the example shape (dense kernels).
    """

    params: int
    nonzero_params: int
    macs: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@torch.no_grad()
def model_stats(model: nn.Module, example_input: ModelInput) -> ModelStats:
    """Count parameters and MACs for a single input shaped like ``example_input[:1]``.

    ``example_input`` may be a tuple of tensors (several positional inputs, any dtype).

    Every submodule's own training mode is restored afterwards (eval mode keeps BatchNorm
    statistics).
    """
    import torch_pruning as tp  # imported here: it pulls in timm when installed

    _count_quantized_layers_as_their_float_kind()
    with eval_mode(model):
        device = next(model.parameters()).device
        if any(hasattr(m, "weight_orig") for m in model.modules()):
            # torch.nn.utils.prune recomputes `weight` in a forward pre-hook; after a training
            # step it is a non-leaf tensor, which torch-pruning's deepcopy cannot copy. A
            # no-grad forward makes it a plain tensor again.
            run_model(model, _first(example_input, device))
        macs, params = tp.utils.count_ops_and_params(model, _first(example_input, device))
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    return ModelStats(params=int(params), nonzero_params=nonzero, macs=int(macs))


def _count_quantized_layers_as_their_float_kind() -> None:
    """Teach torch-pruning's op counter (which matches exact types) the fake-quant layers."""
    from torch_pruning.utils import op_counter

    from lightning_accel.quantization.layers import (
        QuantConv1d,
        QuantConv2d,
        QuantConv3d,
        QuantLinear,
    )

    kinds = {
        QuantConv1d: nn.Conv1d,
        QuantConv2d: nn.Conv2d,
        QuantConv3d: nn.Conv3d,
        QuantLinear: nn.Linear,
    }
    for quantized, float_kind in kinds.items():
        op_counter.MODULES_MAPPING.setdefault(quantized, op_counter.MODULES_MAPPING[float_kind])


def _first(example: ModelInput, device: torch.device) -> ModelInput:
    """The first sample of one input or of each of several, on ``device``."""
    if isinstance(example, tuple):
        return tuple(t[:1].to(device) for t in example)
    return example[:1].to(device)
