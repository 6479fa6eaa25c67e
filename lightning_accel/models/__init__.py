"""The bundled model zoo and the ready-made classification LightningModule."""

from lightning_accel.models.module import ClassificationModule

__all__ = ["ClassificationModule"]
