"""ONNX Runtime's own post-training static quantization, the baseline QAT is compared with."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np


def quantize_static_onnx(
    onnx_path: str | os.PathLike,
    output_path: str | os.PathLike,
    calibration_batches: Iterable[np.ndarray],
) -> Path:
    """Quantize an fp32 ONNX model with ONNX Runtime's ``quantize_static`` (QDQ, per channel).

    The model is pre-processed first (shape inference, BatchNorm folded into convs), then
    calibrated with min/max ranges: uint8 asymmetric activations and int8 per-channel
    symmetric weights, the same scheme :class:`~lightning_accel.QuantizationAware` trains for
    ONNX Runtime, so both run on the same integer kernels. On an x86 CPU without VNNI the
    weights keep to [-64, 64] (ONNX Runtime's ``reduce_range``; QAT's to [-63, 63]): its
    uint8 x int8 kernels saturate on full-range weights there (see
    :func:`~lightning_accel.backends.onnxruntime.u8s8_saturates`).

    Args:
        onnx_path: The fp32 model.
        output_path: Where to write the quantized model.
        calibration_batches: Input batches (float32 arrays) for range calibration.

    Raises:
        ValueError: If no calibration batch is given.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from lightning_accel.backends.onnxruntime import u8s8_saturates

    batches = [np.asarray(batch, dtype=np.float32) for batch in calibration_batches]
    if not batches:
        raise ValueError("quantize_static_onnx needs at least one calibration batch.")

    class _Reader(CalibrationDataReader):
        def __init__(self, input_name: str) -> None:
            self._feeds = iter([{input_name: batch} for batch in batches])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    import onnx

    input_name = onnx.load(str(onnx_path), load_external_data=False).graph.input[0].name
    output_path = Path(output_path)
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "preprocessed.onnx"
        quant_pre_process(str(onnx_path), str(prepared))
        quantize_static(
            str(prepared),
            str(output_path),
            _Reader(input_name),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            reduce_range=u8s8_saturates(),
        )
    return output_path
