import copy

import numpy as np
import pytest
import torch
from torch import nn

from lightning_accel.models.zoo import build
from lightning_accel.pruning.channels import (
    out_channels,
    prune_channels,
    ratios_to_widths,
    replay_channel_pruning,
)
from lightning_accel.utilities.layer_selection import select_layers


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


class _LayerScale(nn.Module):
    """ConvNeXt's layer scale: a raw per-channel parameter."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.arange(1.0, channels + 1).view(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class _Mixer(nn.Module):
    """A raw [C, C] parameter: which dimension to cut cannot be known."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.mix = nn.Parameter(torch.eye(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bchw,cd->bdhw", x, self.mix)


def test_a_per_channel_raw_parameter_is_pruned_with_its_channels() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.Conv2d(8, 8, 3), _LayerScale(8), nn.Conv2d(8, 4, 3)
    )
    x = torch.randn(1, 1, 12, 12)
    history = prune_channels(model, x, ["1"], 0.5)
    kept = sorted(set(range(8)) - {i for n, out, idxs in history if n == "1" and out for i in idxs})
    assert model[1].out_channels == 4 and model[2].gamma.shape == (1, 4, 1, 1)
    assert model[2].gamma.flatten().tolist() == [float(i + 1) for i in kept]  # the same channels
    assert model(x).shape == (1, 4, 6, 6)


@pytest.mark.bad_input("data")
def test_layer_with_raw_parameters_of_unknown_layout_is_refused_before_any_change() -> None:
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.Conv2d(8, 8, 3), _Mixer(8), nn.Conv2d(8, 4, 3))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(
        ValueError, match=r"cannot handle layer '2' \(_Mixer\).*mode='unstructured'"
    ):
        prune_channels(model, torch.randn(1, 1, 12, 12), ["1"], 0.5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.bad_input("data")
def test_raw_parameters_on_the_root_module_are_named_as_such() -> None:
    class Root(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 8, 3), nn.Conv2d(8, 4, 3)
            self.mix = nn.Parameter(torch.eye(4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.einsum("bchw,cd->bdhw", self.b(self.a(x)), self.mix)

    with pytest.raises(ValueError, match=r"cannot handle layer \(the root module\) \(Root\)"):
        prune_channels(Root(), torch.randn(1, 1, 12, 12), ["a"], 0.5)


@pytest.mark.bad_input("checkpoint")
def test_history_from_another_architecture_is_refused() -> None:
    x = torch.randn(1, 1, 28, 28)
    with pytest.raises(ValueError, match="layer 'layer4.1.conv1' does not exist"):
        replay_channel_pruning(build("small_cnn"), x, [["layer4.1.conv1", True, [0, 1]]])


def test_vit_loses_whole_heads_and_mlp_width_and_replays_exactly() -> None:
    pytest.importorskip("timm", reason="vit_tiny needs timm (the zoo extra)")
    model = build("vit_tiny").eval()
    fresh = copy.deepcopy(model)
    x = torch.randn(3, 1, 28, 28)
    layers = select_layers(model, x[:1], [], True, "test")
    widths = {name: out_channels(model.get_submodule(name)) for name in layers}
    history = []
    for sparsity in (0.25, 0.5):  # gradual: 4 -> 3 -> 2 heads
        history += prune_channels(model, x[:1], layers, ratios_to_widths(model, widths, sparsity))
    for block in model.blocks:
        assert block.attn.num_heads == 2 and block.attn.qkv.out_features == 3 * 2 * 24
        assert block.attn.proj.in_features == 48 and block.mlp.fc1.out_features == 192
        assert block.attn.proj.out_features == 96  # the token width, and pos_embed, stay
    assert model.pos_embed.shape == (1, 50, 96)
    replay_channel_pruning(fresh, x[:1], history)
    assert fresh.blocks[0].attn.num_heads == 2
    torch.testing.assert_close(fresh(x), model(x))


@pytest.mark.bad_input("constructor")
def test_global_scope_cannot_rank_heads_against_channels() -> None:
    pytest.importorskip("timm", reason="vit_tiny needs timm (the zoo extra)")
    model = build("vit_tiny").eval()
    x = torch.randn(1, 1, 28, 28)
    layers = select_layers(model, x, [], True, "test")
    with pytest.raises(ValueError, match="scope='global' cannot rank attention heads"):
        prune_channels(model, x, layers, 0.5, global_scope=True)
    assert model.blocks[0].attn.qkv.out_features == 288


def test_torchvision_convnext_prunes_exports_and_matches_onnxruntime(tmp_path) -> None:
    tv = pytest.importorskip("torchvision.models", reason="needs torchvision (the zoo extra)")
    from lightning_accel.backends import get_backend
    from lightning_accel.export.onnx import to_onnx

    model = tv.convnext_tiny(num_classes=10).eval()  # layer scales are raw nn.Parameters
    x = torch.randn(2, 3, 32, 32)
    before = sum(p.numel() for p in model.parameters())
    prune_channels(model, x[:1], select_layers(model, x[:1], [], True, "test"), 0.3, round_to=8)
    assert sum(p.numel() for p in model.parameters()) < 0.6 * before
    compiled = get_backend("onnxruntime").compile(
        to_onnx(model, x[:1], tmp_path / "m.onnx"), tmp_path / "ort", threads=2
    )
    with torch.no_grad():
        np.testing.assert_allclose(compiled.run(x.numpy()), model(x).numpy(), atol=1e-4, rtol=1e-4)


class _TiedLM(nn.Module):
    """Token ids -> embedding -> residual MLP -> output layer tied to the embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 32)
        self.mix = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32))
        self.out = nn.Linear(32, 20, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        return self.out(h + self.mix(h))


def test_tied_embedding_and_output_weights_stay_one_tensor_when_pruned_and_replayed() -> None:
    # The embedding width is coupled to mix.2 by the residual add; torch-pruning sliced the
    # tied weight into two parameters (trained apart, counted twice) before.
    model, ids = _TiedLM(), torch.randint(0, 20, (2, 6))
    fresh = copy.deepcopy(model)
    history = prune_channels(model, ids, ["mix.2"], 0.5)
    assert model.embed.weight.shape == (20, 16) and model.out.weight is model.embed.weight
    assert sum(p.numel() for p in model.parameters()) == 20 * 16 + 16 * 64 + 64 + 64 * 16 + 16
    replay_channel_pruning(fresh, ids, history)
    assert fresh.out.weight is fresh.embed.weight
    assert torch.equal(fresh(ids), model(ids))
