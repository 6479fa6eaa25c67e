"""What one sweep trial reports: accuracy, latency, and the objective a sweep optimizes."""

from __future__ import annotations

from typing import Any

from lightning_accel.backends import DEFAULT_BACKEND

TRIAL_METRICS = (
    "sweep/objective",
    "sweep/accuracy",
    "sweep/latency_ms",
    "sweep/params",
    "sweep/latency_iqr_ms",
)


def objective(accuracy: float, latency_ms: float, latency_budget_ms: float | None) -> float:
    """Accuracy under a latency budget.

    Within the budget the objective is the accuracy (a fraction in [0, 1]); past it, the
    accuracy minus the fraction by which the budget is exceeded (1.5x the budget costs 0.5), so
    any trial within budget beats any trial far outside it.

    Args:
        accuracy: Validation accuracy, a fraction in [0, 1].
        latency_ms: Measured latency, in milliseconds.
        latency_budget_ms: The budget, in milliseconds (> 0); ``None``: no budget.

    Returns:
        The objective to maximize; below ``accuracy`` only past the budget.
    """
    if latency_budget_ms is None or latency_ms <= latency_budget_ms:
        return accuracy
    return accuracy - (latency_ms / latency_budget_ms - 1.0)


def trial_result(
    summary: dict[str, Any],
    latency_budget_ms: float | None = None,
    backend: str = DEFAULT_BACKEND,
    batch_size: int = 1,
) -> dict[str, float]:
    """The ``sweep/*`` metrics of a finished trial, from ``ExportOnFitEnd``'s summary.

    Args:
        summary: The export summary (``accuracy``, ``backends``, ``model.params``).
        latency_budget_ms: Budget of ``sweep/objective``, in milliseconds; ``None``: no budget.
        backend: The backend whose latency counts, e.g. ``"onnxruntime"`` or ``"tensorrt"``.
        batch_size: The batch size whose latency counts.

    Returns:
        ``sweep/objective``, ``sweep/accuracy`` (fraction), ``sweep/latency_ms``,
        ``sweep/params`` and ``sweep/latency_iqr_ms`` (the latency's measured spread).

    Raises:
        ValueError: If the summary lacks the accuracy or the latency at ``batch_size``.
        KeyError: If the summary has no ``model.params``.
    """
    accuracy = summary.get("accuracy")
    latency = summary.get("backends", {}).get(backend, {}).get("latency", {}).get(str(batch_size))
    if accuracy is None or latency is None:
        raise ValueError(
            f"The trial's export summary has no accuracy or no {backend} latency at batch "
            f"{batch_size}: the recipe needs validation data and ExportOnFitEnd with "
            f"backends=[{backend}] and {batch_size} in batch_sizes."
        )
    latency_ms = float(latency["model_ms"])
    return {
        "sweep/objective": objective(float(accuracy), latency_ms, latency_budget_ms),
        "sweep/accuracy": float(accuracy),
        "sweep/latency_ms": latency_ms,
        "sweep/params": float(summary["model"]["params"]),
        "sweep/latency_iqr_ms": float(latency.get("model_iqr_ms") or 0.0),
    }
