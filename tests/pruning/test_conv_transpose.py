"""Transposed convs are selected, pruned and protected like convs (issue #12).

A tiny encoder-decoder segments the digits into 3 intensity classes per pixel; its head is a
``ConvTranspose2d`` whose output (N, 3, 8, 8) must keep its width in every scope.
"""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lightning_accel import GradualPruning
from lightning_accel.utilities.layer_selection import PRUNABLE_LAYERS, select_layers
from tests.conftest import quiet_trainer


class _Segmenter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
        self.up = nn.Sequential(nn.ConvTranspose2d(32, 16, 2, stride=2), nn.ReLU())
        self.head = nn.ConvTranspose2d(16, 3, 3, padding=1)  # (N, 3, H, W) per-pixel classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.up(self.enc2(self.enc1(x))))


class _Segmentation(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = _Segmenter()
        self.example_input_array = torch.zeros(1, 1, 8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        images = batch[0]
        target = torch.bucketize(images[:, 0], torch.tensor([-0.3, 0.3]))  # 3 intensity classes
        return nn.functional.cross_entropy(self(images), target)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def test_transposed_convs_are_selected_and_the_head_is_kept() -> None:
    model = _Segmenter()
    names = select_layers(
        model, torch.zeros(1, 1, 8, 8), [], True, "GradualPruning", PRUNABLE_LAYERS
    )
    assert names == ["enc2.0", "up.0"]  # the decoder's ConvTranspose2d; first and head kept
    names = select_layers(
        model, torch.zeros(1, 1, 8, 8), ["up.*"], False, "X", PRUNABLE_LAYERS, keep_last=True
    )
    assert names == ["enc1.0", "enc2.0"]  # ignore= takes transposed convs; the head stays


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("keep_first_and_last", [True, False])
def test_a_conv_transpose_segmentation_head_keeps_its_width(
    digits, tmp_path, scope, keep_first_and_last
) -> None:
    module = _Segmentation()
    pruning = GradualPruning(0.5, end_epoch=1, scope=scope, keep_first_and_last=keep_first_and_last)
    quiet_trainer(tmp_path, max_epochs=2, limit_val_batches=0, callbacks=[pruning]).fit(
        module, datamodule=digits
    )
    net = module.model
    assert net.head.out_channels == 3 and net.head.weight.shape[1] == 3  # output width kept
    assert "up.0" in {n.removeprefix("model.") for n in pruning._layers}
    assert pruning.measured_sparsity(module) > 0.2
    if scope == "layer":
        assert net.up[0].out_channels == 8  # the decoder's transposed conv was cut to plan
    assert module.eval()(torch.zeros(2, 1, 8, 8)).shape == (2, 3, 8, 8)
