"""Pruning math in plain torch: schedules, masks, channel pruning and criteria.

Nothing here imports Lightning; :class:`lightning_accel.GradualPruning` decides *when*.
"""

from lightning_accel.pruning.channels import prune_channels, replay_channel_pruning
from lightning_accel.pruning.criteria import CRITERIA, Criterion, CriterionName
from lightning_accel.pruning.masks import apply_masks, magnitude_masks, n_m_mask, weight_sparsity
from lightning_accel.pruning.schedules import SCHEDULES, StepSchedule, get_schedule

__all__ = [
    "CRITERIA",
    "SCHEDULES",
    "Criterion",
    "CriterionName",
    "StepSchedule",
    "apply_masks",
    "get_schedule",
    "magnitude_masks",
    "n_m_mask",
    "prune_channels",
    "replay_channel_pruning",
    "weight_sparsity",
]
