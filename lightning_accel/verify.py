"""Does a compiled model compute what the PyTorch model computes? Tolerances per precision."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

Precision = Literal["fp32", "fp16", "int8"]


@dataclass(frozen=True)
class Tolerance:
    """What counts as agreement.

    Attributes:
        max_abs: Largest allowed |runtime - torch| logit difference, relative to the range of
            the torch logits (max - min over the batch).
        min_top1_agreement: Smallest allowed fraction of inputs with the same top-1 class.
    """

    max_abs: float
    min_top1_agreement: float


TOLERANCES: dict[str, Tolerance] = {
    # fp32 kernels differ from torch only by summation order.
    "fp32": Tolerance(max_abs=1e-4, min_top1_agreement=0.999),
    "fp16": Tolerance(max_abs=2e-2, min_top1_agreement=0.99),
    # int8 grids move logits by a few quantization steps; predictions must still agree.
    "int8": Tolerance(max_abs=0.15, min_top1_agreement=0.99),
}


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
    reference: np.ndarray, candidate: np.ndarray, precision: str = "fp32"
) -> Verification:
    """Compare logits of a runtime (``candidate``) with PyTorch's (``reference``).

    Raises:
        ValueError: If shapes differ or the precision is unknown.
    """
    if precision not in TOLERANCES:
        raise ValueError(f"precision must be one of {sorted(TOLERANCES)}; got {precision!r}")
    if reference.shape != candidate.shape:
        raise ValueError(
            f"runtime output shape {candidate.shape} differs from PyTorch's {reference.shape}"
        )
    tolerance = TOLERANCES[precision]
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
