"""From a trained model to a verified, timed runtime artifact.

- :mod:`~lightning_accel.export.onnx`: ``to_onnx``, the dynamo exporter with Q/DQ and binary
  layers converted, leaving the model as it was found.
- :mod:`~lightning_accel.export.verify`: runtime outputs against PyTorch's, per precision.
- :mod:`~lightning_accel.export.compare`: export a model and its baseline, compile both per
  backend, verify and time them; the summary ``ExportOnFitEnd`` and the CLI print.
- :mod:`~lightning_accel.export.checkpoint`: the same from a saved checkpoint.
- :mod:`~lightning_accel.export.bench`: time ONNX files (``lightning-accel bench``).
"""

from lightning_accel.export.onnx import DEFAULT_OPSET, to_onnx

__all__ = ["DEFAULT_OPSET", "to_onnx"]
