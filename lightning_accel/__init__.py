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

Importing the package imports nothing heavy: the public names below are loaded on first use
(PEP 562 module ``__getattr__``), so ``lightning-accel --help`` answers without importing
Lightning or torch, and ``lightning_accel.serving`` runs in an image without them. TensorRT,
W&B and ONNX Runtime are imported only where they are used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lightning_accel import _moved

if TYPE_CHECKING:  # imported on first use (below): the torch-free serving path stays torch-free
    from lightning_accel.callbacks import (
        Binarize,
        Distillation,
        ExportOnFitEnd,
        GradualPruning,
        LatencyBudgetPruning,
        LatencyMonitor,
        QuantizationAware,
    )
    from lightning_accel.checkpointing import CompressionCheckpointMixin, restore_compression
    from lightning_accel.data import DigitsDataModule, FashionMNISTDataModule
    from lightning_accel.models import ClassificationModule

# name -> the subpackage defining it; ``import lightning_accel`` loads neither torch nor Lightning,
# so ``lightning_accel.serving`` runs in an image without them (``lightning-accel serve``).
_LAZY = {
    "Binarize": "callbacks",
    "Distillation": "callbacks",
    "ExportOnFitEnd": "callbacks",
    "GradualPruning": "callbacks",
    "LatencyBudgetPruning": "callbacks",
    "LatencyMonitor": "callbacks",
    "QuantizationAware": "callbacks",
    "CompressionCheckpointMixin": "checkpointing",
    "restore_compression": "checkpointing",
    "DigitsDataModule": "data",
    "FashionMNISTDataModule": "data",
    "ClassificationModule": "models",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"lightning_accel.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    try:  # a subpackage used before it was imported, e.g. ``lightning_accel.callbacks``
        return importlib.import_module(f"lightning_accel.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"lightning_accel.{name}":
            raise
    raise AttributeError(f"module 'lightning_accel' has no attribute {name!r}")


_moved.install()

__version__ = "0.1.0"

__all__ = [
    "Binarize",
    "ClassificationModule",
    "CompressionCheckpointMixin",
    "DigitsDataModule",
    "Distillation",
    "ExportOnFitEnd",
    "FashionMNISTDataModule",
    "GradualPruning",
    "LatencyBudgetPruning",
    "LatencyMonitor",
    "QuantizationAware",
    "restore_compression",
]
