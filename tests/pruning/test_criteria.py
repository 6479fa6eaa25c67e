"""Pruning criteria by name or callable; unknown names list the valid ones."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_accel import GradualPruning
from lightning_accel.pruning.channels import prune_channels
from lightning_accel.pruning.criteria import CRITERIA, group_importance, weight_scores


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten())


def _scale_channels(net: nn.Sequential) -> None:
    """Channel c of the first conv gets weights of size ~(c + 1), one element large for c = 0."""
    with torch.no_grad():
        for c in range(8):
            net[0].weight[c].fill_(0.1 * (c + 1))
        net[0].weight[0, 0, 0, 0] = 3.0  # L1 of channel 0 stays small, its L2 becomes large
        net[2].weight.fill_(0.1)


@pytest.mark.bad_input("constructor")
def test_unknown_criterion_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"criterion must be one of \['l1', 'l2', 'taylor'\]"):
        GradualPruning(0.5, criterion="fisher")
    with pytest.raises(ValueError, match="needs mode='structured'"):
        GradualPruning(0.5, mode="unstructured", criterion=lambda group: torch.ones(1))
    with pytest.raises(ValueError, match="or a callable; got int"):
        GradualPruning(0.5, criterion=3)  # type: ignore[arg-type]
    assert set(CRITERIA) == {"l1", "l2", "taylor"}


def _kept_channels(criterion) -> set[int]:
    net = _net()
    _scale_channels(net)
    history = prune_channels(net, torch.randn(1, 1, 8, 8), ["0"], 0.5, criterion=criterion)
    removed = {i for name, out, idxs in history if name == "0" and out for i in idxs}
    return set(range(8)) - removed


def test_l1_and_l2_rank_channels_by_their_own_norm() -> None:
    # L2 (sum of squares) favours channel 0 (one large weight); L1 favours channels 4-7.
    assert _kept_channels("l2") == {0, 5, 6, 7}
    assert _kept_channels("l1") == {4, 5, 6, 7}


def test_a_callable_criterion_decides_which_channels_stay() -> None:
    def prefer_low_indices(group) -> torch.Tensor:
        channels = len(group[0].idxs)
        return torch.arange(channels, 0, -1, dtype=torch.float32)

    assert _kept_channels(prefer_low_indices) == {0, 1, 2, 3}
    assert callable(group_importance(prefer_low_indices))


def test_taylor_scores_need_gradients_and_use_them() -> None:
    weight = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    with pytest.raises(ValueError, match="needs the weights' gradients"):
        weight_scores(weight, "taylor")
    weight.grad = torch.tensor([1.0, 0.0, -0.5])
    torch.testing.assert_close(weight_scores(weight, "taylor"), torch.tensor([1.0, 0.0, 1.5]))
    torch.testing.assert_close(weight_scores(weight, "l1"), torch.tensor([1.0, 2.0, 3.0]))
