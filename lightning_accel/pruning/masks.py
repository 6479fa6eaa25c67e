"""Unstructured and N:M weight masks (magnitude criterion), in plain torch.

These masks zero weights but keep tensor shapes, so dense ONNX Runtime and TensorRT kernels
run no faster; they buy compressed size and, for 2:4, TensorRT's sparse tensor-core kernels.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from lightning_accel.utilities.layer_selection import WeightedLayer


@torch.no_grad()
def magnitude_masks(
    weights: Mapping[str, Tensor], sparsity: float, scope: str = "global"
) -> dict[str, Tensor]:
    """Keep-masks that zero the smallest-magnitude weights.

    Args:
        weights: Weight tensors by layer name.
        sparsity: Fraction of weights to zero, in [0, 1).
        scope: ``"global"`` ranks all weights together; ``"layer"`` zeroes ``sparsity`` of each.

    Returns:
        Boolean masks (``True`` = keep) with the weights' shapes.
    """
    if scope == "layer":
        return {name: _layer_mask(w, sparsity) for name, w in weights.items()}
    scores = torch.cat([w.detach().abs().flatten().float() for w in weights.values()])
    n_zero = int(round(sparsity * scores.numel()))
    if n_zero == 0:
        return {name: torch.ones_like(w, dtype=torch.bool) for name, w in weights.items()}
    # kthvalue is deterministic, so every DDP rank draws the same threshold from the same weights.
    threshold = scores.kthvalue(n_zero).values
    # Compared in the dtype the threshold was drawn in: float64 weights compared as float64
    # against a float32 threshold kept some at the threshold (0.4999 for 0.5); ties that
    # float32 creates are broken below.
    masks = {name: w.detach().abs().float() > threshold for name, w in weights.items()}
    return _break_ties(weights, masks, n_zero)


def _layer_mask(weight: Tensor, sparsity: float) -> Tensor:
    n_zero = int(round(sparsity * weight.numel()))
    mask = torch.ones(weight.numel(), dtype=torch.bool, device=weight.device)
    if n_zero:
        order = torch.argsort(weight.detach().abs().flatten(), stable=True)
        mask[order[:n_zero]] = False
    return mask.view_as(weight)


def _break_ties(
    weights: Mapping[str, Tensor], masks: dict[str, Tensor], n_zero: int
) -> dict[str, Tensor]:
    """Re-admit weights equal to the threshold (e.g. many exact zeros) so exactly n_zero are cut."""
    surplus = sum(int((~m).sum()) for m in masks.values()) - n_zero
    if surplus <= 0:
        return masks
    for name, w in weights.items():
        if surplus <= 0:
            break
        tied = (~masks[name]).flatten().nonzero().flatten()
        order = torch.argsort(w.detach().abs().flatten()[tied], descending=True, stable=True)
        readmit = tied[order[:surplus]]
        flat = masks[name].flatten().clone()
        flat[readmit] = True
        masks[name] = flat.view_as(w)
        surplus -= readmit.numel()
    return masks


@torch.no_grad()
def n_m_mask(weight: Tensor, n: int = 2, m: int = 4) -> Tensor:
    """Keep the ``n`` largest of every ``m`` consecutive weights along the input dimension.

    For a conv weight ``[out, in, kh, kw]`` the groups run over input channels at each kernel
    position, the layout TensorRT's 2:4 sparse kernels expect.

    Args:
        weight: Linear ``[out, in]`` or conv ``[out, in, *kernel]`` weight; ranked by magnitude.
        n: Weights kept per group, in [1, m].
        m: Group size along dim 1 (input channels/features).

    Returns:
        A boolean keep-mask (``True`` = keep) with ``weight``'s shape.

    Raises:
        ValueError: If the input dimension is not a multiple of ``m``.
    """
    in_features = weight.shape[1]
    if in_features % m:
        raise ValueError(
            f"{n}:{m} sparsity needs the input dimension to be a multiple of {m}; "
            f"got {in_features}. Add this layer to `ignore`."
        )
    # [out, in, *k] -> [out, *k, in] so that groups of m are consecutive input channels.
    moved = weight.detach().abs().movedim(1, -1)
    groups = moved.reshape(-1, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, groups.topk(n, dim=1).indices, True)
    return keep.reshape(moved.shape).movedim(-1, 1).contiguous()


@torch.no_grad()
def apply_masks(modules: Mapping[str, WeightedLayer], masks: Mapping[str, Tensor]) -> None:
    """Zero masked weights in place (parameter objects are kept, so optimizers stay valid)."""
    for name, mask in masks.items():
        modules[name].weight.mul_(mask.to(modules[name].weight.dtype))


def weight_owners(modules: Mapping[str, WeightedLayer]) -> dict[str, str]:
    """For each layer, the first layer (in order) holding the same weight tensor.

    Layers that share one weight (tied embeddings, reused blocks) must be ranked and counted
    once: ranked twice, a shared tensor would take twice its share of the sparsity.
    """
    first: dict[int, str] = {}
    return {name: first.setdefault(id(mod.weight), name) for name, mod in modules.items()}


def weight_sparsity(modules: Mapping[str, WeightedLayer]) -> float:
    """Fraction of exactly-zero weights over the distinct weight tensors of the given layers."""
    owners = weight_owners(modules)
    distinct = [mod for name, mod in modules.items() if owners[name] == name]
    total = sum(mod.weight.numel() for mod in distinct)
    zeros = sum(int((mod.weight == 0).sum()) for mod in distinct)
    return zeros / max(total, 1)
