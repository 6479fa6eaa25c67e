"""lightning_accel: training-time model acceleration for PyTorch Lightning.

Callbacks prune, quantize and binarize during ``fit``; the result is exported to ONNX and its
latency measured on the target runtime. TensorRT, W&B and ONNX Runtime are imported only where
they are used.
"""

from lightning_accel.callbacks import (
    Binarize,
    ExportOnFitEnd,
    GradualPruning,
    LatencyMonitor,
    QuantizationAware,
)
from lightning_accel.data import DigitsDataModule, FashionMNISTDataModule
from lightning_accel.module import ClassificationModule
from lightning_accel.surgery import CompressionCheckpointMixin, restore_compression

__version__ = "0.1.0"

__all__ = [
    "Binarize",
    "ClassificationModule",
    "CompressionCheckpointMixin",
    "DigitsDataModule",
    "ExportOnFitEnd",
    "FashionMNISTDataModule",
    "GradualPruning",
    "LatencyMonitor",
    "QuantizationAware",
    "restore_compression",
]
