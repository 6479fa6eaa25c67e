"""Lightning callbacks: each owns one acceleration technique."""

from lightning_accel.callbacks.pruning import GradualPruning

__all__ = ["GradualPruning"]
