"""Does a compiled model compute what the PyTorch model computes? Tolerances per precision."""

from __future__ import annotations

from dataclasses import asdict, dataclass
import numpy as np

from lightning_accel.backends.base import DEFAULT_TOLERANCES, Precision, Tolerance

__all__ = ["TOLERANCES", "Precision", "Tolerance", "Verification", "compare_outputs"]


TOLERANCES = DEFAULT_TOLERANCES


@dataclass(frozen=True)
class Verification:
    """Outcome of comparing runtime outputs with PyTorch's on the same inputs."""

    precision: str
    samples: int
    max_abs_error: float
    relative_max_error: float
    top1_agreement: float
    tolerance: Tolerance
    passed: bool

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (
            f"{verdict} ({self.precision}, {self.samples} samples): top-1 agreement "
            f"{self.top1_agreement:.2%} (need >= {self.tolerance.min_top1_agreement:.1%}), max "
            f"logit error {self.relative_max_error:.2e} of the logit range (allowed "
            f"{self.tolerance.max_abs:.0e})"
        )


def compare_outputs(
    reference: np.ndarray,
    candidate: np.ndarray,
    precision: str = "fp32",
    tolerance: Tolerance | None = None,
) -> Verification:
    """Compare logits of a runtime (``candidate``) with PyTorch's (``reference``).

    Args:
        reference: PyTorch outputs, ``[N, classes]``.
        candidate: The runtime's outputs for the same inputs, same shape.
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"``: names the tolerance used.
        tolerance: The agreement required; default: :data:`TOLERANCES` at ``precision`` (a
            backend passes its own, ``Backend.tolerance(precision)``).

    Raises:
        ValueError: If shapes differ or the precision is unknown.
    """
    if tolerance is None and precision not in TOLERANCES:
        raise ValueError(f"precision must be one of {sorted(TOLERANCES)}; got {precision!r}")
    if reference.shape != candidate.shape:
        raise ValueError(
            f"runtime output shape {candidate.shape} differs from PyTorch's {reference.shape}"
        )
    tolerance = tolerance or TOLERANCES[precision]
    error = float(np.abs(reference - candidate).max()) if reference.size else 0.0
    spread = float(reference.max() - reference.min()) if reference.size else 1.0
    relative = error / max(spread, 1e-12)
    agreement = (
        float((reference.argmax(-1) == candidate.argmax(-1)).mean()) if reference.size else 1.0
    )
    return Verification(
        precision=precision,
        samples=int(reference.shape[0]),
        max_abs_error=error,
        relative_max_error=relative,
        top1_agreement=agreement,
        tolerance=tolerance,
        passed=relative <= tolerance.max_abs and agreement >= tolerance.min_top1_agreement,
    )
