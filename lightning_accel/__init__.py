"""lightning_accel: training-time model acceleration for PyTorch Lightning.

Callbacks prune, quantize and binarize during ``fit``; the result is exported to ONNX and its
latency measured on the target runtime. The subpackages are the acceleration stack:

- ``pruning``, ``quantization``, ``binarization``: the compression math, in plain torch;
- ``callbacks``: when it happens during ``fit`` (one base, one technique per callback);
- ``checkpointing``: the structural log that makes compressed checkpoints load;
- ``export``: ONNX export, verification against PyTorch and the export-and-compare pipeline;
- ``backends``: the runtimes (one registry: ONNX Runtime, TensorRT) and shared timing;
- ``tracking``: Weights & Biases; ``recipes`` and ``sweeps``: configurations;
- ``models`` and ``data``: the bundled zoo and datasets; ``cli``: the command line and main job.

TensorRT, W&B and ONNX Runtime are imported only where they are used.
"""

from lightning_accel import _moved
from lightning_accel.callbacks import (
    Binarize,
    ExportOnFitEnd,
    GradualPruning,
    LatencyMonitor,
    QuantizationAware,
)
from lightning_accel.checkpointing import CompressionCheckpointMixin, restore_compression
from lightning_accel.data import DigitsDataModule, FashionMNISTDataModule
from lightning_accel.models import ClassificationModule

_moved.install()

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
