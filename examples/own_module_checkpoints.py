"""Your own LightningModule, pruned, saved and loaded back three ways.

.venv/bin/python examples/own_module_checkpoints.py
"""

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from torch import nn

from lightning_accel import (
    CompressionCheckpointMixin,
    DigitsDataModule,
    GradualPruning,
    restore_compression,
)


class DigitsNet(CompressionCheckpointMixin, L.LightningModule):
    """Inheriting the mixin is all it takes for pruned checkpoints to load."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(64, 10),
        )
        self.example_input_array = torch.zeros(1, 1, 8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


if __name__ == "__main__":
    model = DigitsNet()
    trainer = L.Trainer(
        max_epochs=3,
        callbacks=[GradualPruning(0.5, end_epoch=2)],
        accelerator="cpu",
        default_root_dir="runs/own_module",
    )
    trainer.fit(model, datamodule=DigitsDataModule())
    trainer.save_checkpoint("runs/own_module/pruned.ckpt")

    loaded = DigitsNet.load_from_checkpoint("runs/own_module/pruned.ckpt")
    checkpoint = torch.load("runs/own_module/pruned.ckpt", weights_only=True)
    plain = DigitsNet()
    restore_compression(plain, checkpoint)
    plain.load_state_dict(checkpoint["state_dict"])
    x = torch.randn(4, 1, 8, 8)
    model.eval(), loaded.eval(), plain.eval()
    print("conv widths:", [m.out_channels for m in loaded.net if isinstance(m, nn.Conv2d)])
    print(
        "same outputs:", torch.allclose(model(x), loaded(x)) and torch.allclose(model(x), plain(x))
    )
