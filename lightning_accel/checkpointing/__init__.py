"""Checkpoints of compressed models: the structural log, saved with every checkpoint and replayed.

Weights of a pruned or module-swapped model only fit a model of the same structure; see
:mod:`lightning_accel.checkpointing.structural_log` (DESIGN.md, contract 3).
"""

from lightning_accel.checkpointing.structural_log import (
    CHECKPOINT_KEY,
    CompressionCheckpointMixin,
    record_structural_change,
    register_replay,
    restore_compression,
    save_structural_log,
    structural_changes,
)

__all__ = [
    "CHECKPOINT_KEY",
    "CompressionCheckpointMixin",
    "record_structural_change",
    "register_replay",
    "restore_compression",
    "save_structural_log",
    "structural_changes",
]
