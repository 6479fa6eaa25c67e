"""Quantization-aware training: fake-quant modules, graph preparation and Q/DQ conversion."""

from lightning_accel.quantization.convert import convert_to_qdq, has_fake_quant
from lightning_accel.quantization.prepare import (
    activation_quantizers,
    prepare_qat,
    quantize_submodules,
    quantized_layers,
)
from lightning_accel.quantization.spec import BACKENDS, QuantizationSpec

__all__ = [
    "BACKENDS",
    "QuantizationSpec",
    "activation_quantizers",
    "convert_to_qdq",
    "has_fake_quant",
    "prepare_qat",
    "quantize_submodules",
    "quantized_layers",
]
