"""Lightning callbacks: each owns one acceleration technique."""

from lightning_accel.callbacks.binarization import Binarize
from lightning_accel.callbacks.distillation import Distillation
from lightning_accel.callbacks.export import ExportOnFitEnd
from lightning_accel.callbacks.latency import LatencyMonitor
from lightning_accel.callbacks.latency_budget import LatencyBudgetPruning
from lightning_accel.callbacks.pruning import GradualPruning
from lightning_accel.callbacks.quantization import QuantizationAware

__all__ = [
    "Binarize",
    "Distillation",
    "ExportOnFitEnd",
    "GradualPruning",
    "LatencyBudgetPruning",
    "LatencyMonitor",
    "QuantizationAware",
]
