"""From a trained model to a verified, timed runtime artifact.

- :mod:`~lightning_accel.export.onnx`: ``to_onnx``, the dynamo exporter with Q/DQ and binary
  layers converted, leaving the model as it was found.
- :mod:`~lightning_accel.export.verify`: runtime outputs against PyTorch's, per precision.
- :mod:`~lightning_accel.export.compare`: export a model and its baseline, compile both per
  backend, verify and time them; the summary ``ExportOnFitEnd`` and the CLI print.
- :mod:`~lightning_accel.export.checkpoint`: the same from a saved checkpoint.
- :mod:`~lightning_accel.export.bench`: time ONNX files (``lightning-accel bench``).
- :mod:`~lightning_accel.export.manifest`: ``manifest.json``, what serving needs (torch-free).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning_accel.export.onnx import DEFAULT_OPSET, to_onnx

__all__ = ["DEFAULT_OPSET", "to_onnx"]


def __getattr__(name: str) -> Any:
    # Loaded on first use: the manifest (export/manifest.py) is read where torch is absent.
    if name in __all__:
        from lightning_accel.export import onnx

        return getattr(onnx, name)
    raise AttributeError(f"module 'lightning_accel.export' has no attribute {name!r}")
