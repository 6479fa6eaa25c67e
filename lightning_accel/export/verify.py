"""Does a compiled model compute what the PyTorch model computes? Tolerances per precision."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from lightning_accel.backends.base import DEFAULT_TOLERANCES, Precision, Tolerance

__all__ = ["TOLERANCES", "Precision", "Tolerance", "Verification", "compare_outputs"]


TOLERANCES = DEFAULT_TOLERANCES


@dataclass(frozen=True)
class Verification:
    """Outcome of comparing runtime outputs with PyTorch's on the same inputs.

    Attributes:
        precision: The tolerance's name: ``"fp32"``, ``"fp16"`` or ``"int8"``.
        samples: Rows compared.
        max_abs_error: Largest absolute logit difference; ``None`` when an output is not
            finite (no number would mean anything, and JSON has no NaN).
        relative_max_error: ``max_abs_error`` over PyTorch's logit range; ``None`` likewise.
        top1_agreement: Share of rows with the same top-1 class; ``None`` likewise.
        tolerance: The agreement required.
        passed: Whether the runtime computes what PyTorch computes, within ``tolerance``.
        problem: Why the comparison could not be made (non-finite outputs), else ``None``.
    """

    precision: str
    samples: int
    max_abs_error: float | None
    relative_max_error: float | None
    top1_agreement: float | None
    tolerance: Tolerance
    passed: bool
    problem: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The fields as plain JSON-ready values (no NaN or infinity)."""
        return asdict(self)

    def describe(self) -> str:
        """One line: the verdict and the figures, or what made the comparison impossible."""
        verdict = "passed" if self.passed else "FAILED"
        if self.problem is not None:
            return f"{verdict} ({self.precision}, {self.samples} samples): {self.problem}"
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

    Non-finite outputs fail the verification with a message saying whose outputs they are
    (PyTorch's: the trained weights diverged; the runtime's alone: the runtime is at fault),
    and leave the error figures ``None``.

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
    samples = int(reference.shape[0]) if reference.ndim else 1
    problem = _non_finite_problem(reference, candidate)
    if problem is not None:
        return Verification(precision, samples, None, None, None, tolerance, False, problem)
    error = float(np.abs(reference - candidate).max()) if reference.size else 0.0
    spread = float(reference.max() - reference.min()) if reference.size else 1.0
    relative = error / max(spread, 1e-12)
    agreement = (
        float((reference.argmax(-1) == candidate.argmax(-1)).mean()) if reference.size else 1.0
    )
    return Verification(
        precision=precision,
        samples=samples,
        max_abs_error=error,
        relative_max_error=relative,
        top1_agreement=agreement,
        tolerance=tolerance,
        passed=relative <= tolerance.max_abs and agreement >= tolerance.min_top1_agreement,
    )


def _non_finite_problem(reference: np.ndarray, candidate: np.ndarray) -> str | None:
    """Whose outputs hold NaN or infinity, and what that means; ``None`` if all are finite."""
    bad_reference = int(np.size(reference) - np.count_nonzero(np.isfinite(reference)))
    if bad_reference:
        return (
            f"the PyTorch model produced non-finite outputs ({bad_reference} of "
            f"{np.size(reference)} values are NaN or infinite), so there is nothing to verify "
            "the runtime against. The trained weights have likely diverged: check the training "
            "loss and lower the learning rate, or export an earlier checkpoint."
        )
    bad_candidate = int(np.size(candidate) - np.count_nonzero(np.isfinite(candidate)))
    if bad_candidate:
        return (
            f"the runtime produced non-finite outputs ({bad_candidate} of {np.size(candidate)} "
            "values are NaN or infinite) where PyTorch's are all finite: the runtime, not the "
            "model, is at fault (e.g. fp16 overflow); verify at another precision or backend."
        )
    return None
