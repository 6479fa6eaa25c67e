import pytest
import torch
from torch import nn

from lightning_accel.models.zoo import build
from lightning_accel.utilities.layer_selection import layers_in_call_order, select_layers


def test_call_order_follows_forward_not_registration() -> None:
    class Reversed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(4, 2)
            self.stem = nn.Linear(3, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.stem(x))

    assert layers_in_call_order(Reversed(), torch.randn(1, 3)) == ["stem", "head"]


def test_first_and_last_layers_stay_dense_by_default() -> None:
    model = build("resnet18")
    layers = select_layers(model, torch.randn(1, 1, 28, 28), [], True, "GradualPruning")
    assert "conv1" not in layers and "fc" not in layers
    assert "layer1.0.conv1" in layers and "layer2.0.downsample.0" in layers


@pytest.mark.bad_input("constructor")
def test_ignore_pattern_that_matches_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"pattern 'layer9\.\*' matches no layer"):
        select_layers(build("resnet18"), torch.randn(1, 1, 28, 28), ["layer9.*"], True, "X")


@pytest.mark.bad_input("data")
def test_model_with_no_prunable_layer_is_an_error() -> None:
    with pytest.raises(ValueError, match="found no layer to compress"):
        select_layers(
            nn.Sequential(nn.Flatten(), nn.Linear(4, 2)),
            torch.randn(1, 4),
            [],
            True,
            "GradualPruning",
        )
