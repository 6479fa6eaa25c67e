"""What a quantized model is quantized for: backend, bit widths, observer, scale learning."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from lightning_accel.backends import BACKENDS, BackendName, get_backend

MIN_BITS, MAX_BITS = 2, 8
RUNTIME_BITS = 8  # ONNX Runtime and TensorRT execute int8 only


@dataclass(frozen=True)
class QuantizationSpec:
    """The plan one QAT preparation follows, saved in checkpoints to replay it.

    Attributes:
        backend: The registered backend whose Q/DQ flavour is trained, e.g.
            ``"onnxruntime"`` (uint8 asymmetric activations, int32 bias) or ``"tensorrt"``
            (int8 symmetric activations, float bias).
        weight_bits: Weight bit width per quantized layer, by full module name.
        activation_bits: Activation bit width.
        observer: Range observer of the activation quantizers.
        learnable: Whether scales are learned (LSQ).
        reduce_range: Whether weight integers stay in [-63, 63], so that ONNX Runtime's u8s8
            kernels on x86 CPUs without VNNI cannot saturate (see
            :func:`~lightning_accel.backends.onnxruntime.u8s8_saturates`).
    """

    backend: BackendName
    weight_bits: dict[str, int] = field(default_factory=dict)
    activation_bits: int = 8
    observer: str = "ema_minmax"
    learnable: bool = False
    reduce_range: bool = False

    @property
    def symmetric_activations(self) -> bool:
        """Whether the backend wants int8 symmetric activations (else uint8 asymmetric)."""
        return get_backend(self.backend).qdq.symmetric_activations

    @property
    def integer_bias(self) -> bool:
        """Whether the backend fuses Conv/Gemm into integer kernels only with an int32 bias."""
        return get_backend(self.backend).qdq.integer_bias

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for ``torch.load(weights_only=True)``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> QuantizationSpec:
        """The spec saved by :meth:`to_dict`."""
        return cls(**values)


__all__ = ["BACKENDS", "MAX_BITS", "MIN_BITS", "QuantizationSpec", "check_bits"]


def check_bits(value: object, argument: str) -> int:
    """A bit width in [2, 8], or a ValueError naming ``argument``."""
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_BITS <= value <= MAX_BITS:
        raise ValueError(
            f"{argument} must be an integer from {MIN_BITS} to {MAX_BITS}; got {value!r}. "
            f"Example: QuantizationAware(weight_bits=8, layer_bits={{'model.layer4.*': 4}})"
        )
    return value
