import copy

import pytest
import torch
from torch import nn

from lightning_accel.layers import select_layers
from lightning_accel.structured import prune_channels, replay_channel_pruning
from lightning_accel.zoo import build


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "small_cnn"])
def test_structured_pruning_shrinks_residual_and_depthwise_models(name: str) -> None:
    model = build(name).eval()
    x = torch.randn(2, 1, 28, 28)
    before = sum(p.numel() for p in model.parameters())
    layers = select_layers(model, x[:1], [], True, "test")
    prune_channels(model, x[:1], layers, 0.5)
    after = sum(p.numel() for p in model.parameters())
    assert after < 0.45 * before
    assert model(x).shape == (2, 10)


def test_replayed_history_rebuilds_the_same_model() -> None:
    model = build("resnet18").eval()
    fresh = copy.deepcopy(model)
    x = torch.randn(1, 1, 28, 28)
    layers = select_layers(model, x, [], True, "test")
    history = prune_channels(model, x, layers, 0.3) + []
    history2 = prune_channels(model, x, layers, 0.3)
    replay_channel_pruning(fresh, x, history)
    replay_channel_pruning(fresh, x, history2)
    torch.testing.assert_close(fresh(x), model(x))


def test_layer_with_raw_parameters_is_refused_before_any_change() -> None:
    class LayerScale(nn.Module):
        def __init__(self, channels: int) -> None:
            super().__init__()
            self.gamma = nn.Parameter(torch.ones(1, channels, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.gamma

    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Conv2d(8, 8, 3), LayerScale(8), nn.Conv2d(8, 4, 3))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(
        ValueError, match=r"cannot handle layer '2' \(LayerScale\).*mode='unstructured'"
    ):
        prune_channels(model, torch.randn(1, 1, 12, 12), ["1"], 0.5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_history_from_another_architecture_is_refused() -> None:
    x = torch.randn(1, 1, 28, 28)
    with pytest.raises(ValueError, match="layer 'layer4.1.conv1' does not exist"):
        replay_channel_pruning(build("small_cnn"), x, [["layer4.1.conv1", True, [0, 1]]])
