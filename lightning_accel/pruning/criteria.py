"""Pruning criteria: how channels (structured) or weights (unstructured) are ranked.

A criterion is named (``"l1"``, ``"l2"``, ``"taylor"``) or given as a callable. For structured
pruning it scores each channel of a torch-pruning dependency group (every layer the channel
touches, scored together); for unstructured and 2:4 pruning it scores each weight.

- ``"l1"`` / ``"l2"``: magnitude, the L1 or L2 norm of the group's weights
  (torch-pruning's ``GroupMagnitudeImportance``; Li et al., 2017, "Pruning Filters for
  Efficient ConvNets"). Per weight, both are ``|w|``.
- ``"taylor"``: first-order Taylor expansion of the loss, ``|w · ∂L/∂w|``
  (torch-pruning's ``GroupTaylorImportance``; Molchanov et al., 2019, "Importance Estimation
  for Neural Network Pruning"). Needs the gradients of a training batch, which the pruning
  callback takes from the batch before each pruning step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

CriterionName = Literal["l1", "l2", "taylor"]
# A structured criterion: torch-pruning's Importance protocol, ``group -> [channels] scores``.
GroupCriterion = Callable[[Any], Tensor]
Criterion = CriterionName | GroupCriterion

CRITERIA: dict[str, str] = {
    "l1": "magnitude: L1 norm of the channel's weights in every coupled layer",
    "l2": "magnitude: L2 norm of the channel's weights in every coupled layer",
    "taylor": "first-order Taylor: |weight x gradient| summed over the coupled layers",
}
_NEEDS_GRADIENTS = {"taylor"}


def check_criterion(criterion: object, argument: str = "criterion") -> None:
    """Refuse an unknown criterion name or a non-callable.

    Raises:
        ValueError: Naming the argument, the bad value and the valid names.
    """
    if isinstance(criterion, str):
        if criterion not in CRITERIA:
            raise ValueError(
                f"{argument} must be one of {sorted(CRITERIA)} or a callable scoring a "
                f"torch-pruning group; got {criterion!r}. Example: GradualPruning(0.5, "
                f"{argument}='l2')"
            )
        return
    if not callable(criterion):
        raise ValueError(
            f"{argument} must be one of {sorted(CRITERIA)} or a callable; got "
            f"{type(criterion).__name__}"
        )


def needs_gradients(criterion: Criterion) -> bool:
    """Whether the criterion reads ``.grad`` of the weights (a backward pass must precede it)."""
    return isinstance(criterion, str) and criterion in _NEEDS_GRADIENTS


def group_importance(criterion: Criterion) -> GroupCriterion:
    """The torch-pruning importance object (or the callable itself) for a criterion."""
    import torch_pruning as tp

    check_criterion(criterion)
    if not isinstance(criterion, str):
        return criterion
    if criterion == "taylor":
        return tp.importance.GroupTaylorImportance()  # type: ignore[no-any-return]
    return tp.importance.GroupMagnitudeImportance(p=1 if criterion == "l1" else 2)  # type: ignore[no-any-return]


@torch.no_grad()
def weight_scores(weight: Tensor, criterion: Criterion) -> Tensor:
    """Per-weight scores for unstructured and N:M masks (same shape as ``weight``).

    Raises:
        ValueError: If the criterion is a group callable (structured only) or ``taylor`` finds
            no gradient.
    """
    check_criterion(criterion)
    if not isinstance(criterion, str):
        raise ValueError(
            "A callable criterion scores torch-pruning groups, so it works with "
            "mode='structured' only. Use criterion='l1', 'l2' or 'taylor' for unstructured or "
            "2:4 pruning."
        )
    if criterion == "taylor":
        if weight.grad is None:
            raise ValueError(
                "criterion='taylor' needs the weights' gradients; none are present. Prune after "
                "at least one training batch (start_epoch >= 1, or a later step)."
            )
        return (weight.detach() * weight.grad).abs()
    return weight.detach().abs()


def has_gradients(parameters: list[Tensor]) -> bool:
    """Whether every parameter holds a gradient (what ``"taylor"`` needs)."""
    return all(p.grad is not None for p in parameters)
