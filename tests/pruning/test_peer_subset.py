"""A fixed subset of the peer suite (benchmarks/architectures.py) at tiny input sizes.

The gate, attention and ConvNeXt cases live in tests/callbacks/test_user_models.py and
tests/pruning/test_channels.py; here: a DenseNet-like block (concatenated features) and a
RegNet-like block (grouped conv in a residual bottleneck), each pruned through ``fit``, exported
and checked in ONNX Runtime; and the per-layer consistency check that every step runs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lightning_accel import ClassificationModule, GradualPruning
from lightning_accel.export.onnx import to_onnx
from lightning_accel.pruning.consistency import inconsistent_layers
from tests.conftest import quiet_trainer, refused_before_training


class _DenseBlock(nn.Module):
    """Two DenseNet layers: each adds 8 channels concatenated to what came before."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.layer1 = nn.Sequential(nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1))
        self.layer2 = nn.Sequential(nn.BatchNorm2d(24), nn.ReLU(), nn.Conv2d(24, 8, 3, padding=1))
        self.transition = nn.Sequential(nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 16, 1))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.cat([x, self.layer1(x)], 1)
        x = torch.cat([x, self.layer2(x)], 1)
        return self.head(self.transition(x))


class _GroupedBottleneck(nn.Module):
    """A RegNet-like block: 1x1 -> grouped 3x3 (groups of 8 channels) -> 1x1, plus identity."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(32, 24, 1), nn.BatchNorm2d(24), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(24, 24, 3, padding=1, groups=3), nn.BatchNorm2d(24))
        self.c = nn.Sequential(nn.ReLU(), nn.Conv2d(24, 32, 1), nn.BatchNorm2d(32))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(torch.relu(x + self.c(self.b(self.a(x)))))


def assert_onnx_runtime_matches(model: nn.Module, tmp_path) -> None:
    """The exported model, run in ONNX Runtime on a digits-shaped batch, matches PyTorch."""
    import onnxruntime as ort

    x = torch.randn(4, 1, 8, 8)
    path = to_onnx(model, x, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model.eval()(x).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("net", [_DenseBlock, _GroupedBottleneck], ids=["densenet", "regnet"])
def test_block_prunes_through_fit_and_matches_onnx_runtime(digits, tmp_path, net) -> None:
    module = ClassificationModule(net(), input_size=8, lr=0.05)
    pruning = GradualPruning(0.3, end_epoch=1)
    quiet_trainer(tmp_path, max_epochs=2, limit_train_batches=4, callbacks=[pruning]).fit(
        module, datamodule=digits
    )
    sparsity = pruning.measured_sparsity(module)
    assert 0.2 < sparsity <= 0.4  # measured on the model
    assert pruning.metrics["compress/sparsity"] == pytest.approx(sparsity)
    assert inconsistent_layers(module) == []
    if net is _GroupedBottleneck:
        grouped = module.model.b[0]
        assert grouped.in_channels < 24 and grouped.in_channels % grouped.groups == 0
    assert_onnx_runtime_matches(module.model, tmp_path)


def test_inconsistent_layers_names_what_disagrees() -> None:
    model = nn.Sequential(
        nn.Conv2d(8, 12, 3, groups=4),
        nn.MultiheadAttention(embed_dim=16, num_heads=4),
        nn.BatchNorm2d(12),
        nn.ConvTranspose2d(12, 6, 2, groups=2),
    )
    assert inconsistent_layers(model) == []
    model[0].out_channels = 10  # as a pruner that forgot the groups would leave it
    model[1].embed_dim = 14
    model[2].num_features = 11
    model[3].weight = nn.Parameter(torch.zeros(10, 3, 2, 2))
    found: dict[str, str] = {}
    for name, problem in inconsistent_layers(model):
        found[name] = found.get(name, "") + problem + "; "
    assert "10 output channels, not divisible by its 4 groups" in found["0"]
    assert "embed_dim 14, not divisible by its 4 heads" in found["1"]
    assert "declares 11 features" in found["2"]
    assert "weight of shape (10, 3, 2, 2)" in found["3"]


def _tiny_vit() -> nn.Module:
    """torchvision's ViT on 8x8 digits (a 1x1 conv makes the 3 channels it takes)."""
    from torchvision.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(
        image_size=8,
        patch_size=4,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
        num_classes=10,
    )
    return nn.Sequential(nn.Conv2d(1, 3, 1), vit)


def test_torchvision_vit_embedding_prunes_through_fit(digits, tmp_path) -> None:
    """Its raw ``class_token`` [1, 1, E] and ``encoder.pos_embedding`` [1, T, E] are cut along
    E with the patch embedding; ``hidden_dim`` follows; widths stay multiples of the heads."""
    pytest.importorskip("torchvision")
    module = ClassificationModule(_tiny_vit(), input_size=8, lr=0.05)
    pruning = GradualPruning(0.3, end_epoch=1, round_to=2)
    quiet_trainer(tmp_path, max_epochs=2, limit_train_batches=2, callbacks=[pruning]).fit(
        module, datamodule=digits
    )
    vit = module.model[1]
    width = vit.conv_proj.out_channels
    assert width < 16 and width % 2 == 0 and vit.hidden_dim == width
    assert vit.class_token.shape[-1] == width and vit.encoder.pos_embedding.shape[-1] == width
    assert inconsistent_layers(module) == []
    assert pruning.metrics["compress/sparsity"] == pytest.approx(pruning.measured_sparsity(module))
    assert_onnx_runtime_matches(module.model, tmp_path)


@pytest.mark.bad_input("data")
def test_swin_v2_is_refused_before_training_naming_its_per_head_parameter(digits, tmp_path) -> None:
    """Swin V2's ``logit_scale`` ([heads, 1, 1]) scales heads, not channels: it was taken as a
    per-channel parameter, and torch-pruning then failed with a raw ``IndexError`` (and on a
    small Swin, V1 or V2, its dependency graph does not finish). Refused with the layer and
    the reason before training; the model untouched."""

    pytest.importorskip("torchvision")
    from torchvision.models import swin_transformer as swin

    net = swin.SwinTransformer(
        patch_size=[2, 2],
        embed_dim=16,
        depths=[2],
        num_heads=[2],
        window_size=[2, 2],
        num_classes=10,
        block=swin.SwinTransformerBlockV2,
        downsample_layer=swin.PatchMergingV2,
    )
    module = ClassificationModule(nn.Sequential(nn.Conv2d(1, 3, 1), net), input_size=8)
    trainer = quiet_trainer(tmp_path, max_epochs=2, limit_train_batches=2)
    trainer.callbacks.append(GradualPruning(0.3, end_epoch=1))
    with refused_before_training(
        trainer,
        module,
        r"layer 'model.1.features.1.0.attn' \(ShiftedWindowAttentionV2\): its raw "
        r"nn.Parameter 'logit_scale' of shape \(2, 1, 1\) holds one value per attention head",
    ):
        trainer.fit(module, datamodule=digits)
