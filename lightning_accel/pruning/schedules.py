"""Sparsity schedules: how far along its target a technique is at a given training step.

Schedules are plain functions of *progress* in [0, 1] so they can be tested without a
``Trainer``; :class:`StepSchedule` maps training-batch indices to progress and decides on
which batches a callback acts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

ScheduleName = Literal["cubic", "linear", "constant"]
SparsitySchedule = Callable[[float, float, float], float]


def cubic_sparsity(progress: float, initial: float, final: float) -> float:
    """Zhu & Gupta (2017), "To prune, or not to prune", eq. 1.

    ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3``,
    with ``progress = (t - t0) / (n * dt)``.
    Prunes fast while many redundant weights remain and slowly near the target.

    Args:
        progress: Fraction of the schedule done, clamped to [0, 1].
        initial: Sparsity at ``progress = 0``, in [0, 1).
        final: Sparsity at ``progress = 1``, in [0, 1).

    Returns:
        The target sparsity at ``progress``.

    Example:
        >>> cubic_sparsity(1.0, 0.0, 0.8)
        0.8
    """
    p = min(max(progress, 0.0), 1.0)
    return final + (initial - final) * (1.0 - p) ** 3


def linear_sparsity(progress: float, initial: float, final: float) -> float:
    """Sparsity growing linearly from ``initial`` to ``final``.

    Args:
        progress: Fraction of the schedule done, clamped to [0, 1].
        initial: Sparsity at ``progress = 0``, in [0, 1).
        final: Sparsity at ``progress = 1``, in [0, 1).

    Returns:
        The target sparsity at ``progress``.
    """
    p = min(max(progress, 0.0), 1.0)
    return initial + (final - initial) * p


def constant_sparsity(progress: float, initial: float, final: float) -> float:
    """The final sparsity from the first pruning step on (one-shot pruning).

    Args:
        progress: Fraction of the schedule done; ignored.
        initial: Starting sparsity; ignored.
        final: Sparsity returned at every step, in [0, 1).

    Returns:
        ``final``.
    """
    return final


SCHEDULES: dict[str, SparsitySchedule] = {
    "cubic": cubic_sparsity,
    "linear": linear_sparsity,
    "constant": constant_sparsity,
}


def get_schedule(name: str) -> SparsitySchedule:
    """Look a schedule up by name.

    Raises:
        ValueError: If ``name`` is not a registered schedule; the message lists the valid ones.
    """
    if name not in SCHEDULES:
        raise ValueError(
            f"schedule must be one of {sorted(SCHEDULES)}; got {name!r}. "
            "Example: GradualPruning(0.5, schedule='cubic')"
        )
    return SCHEDULES[name]


@dataclass(frozen=True)
class StepSchedule:
    """Places a sparsity schedule on training batches.

    The schedule starts at the first batch of ``start_epoch`` and reaches ``final`` exactly at the
    first batch of ``end_epoch``. In between, the technique acts every ``every_n_steps`` batches.

    Args:
        start_epoch: First epoch with pruning.
        end_epoch: Epoch at whose first batch the target is reached.
        steps_per_epoch: Training batches per epoch.
        every_n_steps: Batches between two updates; ``None`` means once per epoch.
        initial: Sparsity at ``start_epoch``.
        final: Sparsity at ``end_epoch``.
        name: Schedule name from :data:`SCHEDULES`.
    """

    start_epoch: int
    end_epoch: int
    steps_per_epoch: int
    every_n_steps: int | None
    initial: float
    final: float
    name: str = "cubic"

    @property
    def start_step(self) -> int:
        return self.start_epoch * self.steps_per_epoch

    @property
    def end_step(self) -> int:
        return self.end_epoch * self.steps_per_epoch

    def sparsity_at(self, step: int) -> float:
        """Target sparsity at a global training-batch index."""
        if step < self.start_step:
            return 0.0
        span = max(self.end_step - self.start_step, 1)
        return get_schedule(self.name)((step - self.start_step) / span, self.initial, self.final)

    def is_update_step(self, step: int) -> bool:
        """Whether the technique acts on this training batch."""
        if step < self.start_step or step > self.end_step:
            return False
        every = self.every_n_steps or self.steps_per_epoch
        return step == self.end_step or (step - self.start_step) % every == 0

    def due(
        self, epoch: int, batch_idx: int, applied: float, pending: bool = False
    ) -> float | None:
        """The value to apply at this training batch, or ``None`` when nothing is due.

        The dispatch every scheduled callback runs in ``on_train_batch_start``: act on update
        batches (or on any batch while an update is ``pending``, e.g. waiting one batch for
        gradients) when the schedule has moved past what was ``applied``.

        Args:
            epoch: ``trainer.current_epoch``.
            batch_idx: Index of the batch within the epoch.
            applied: The schedule value applied so far (sparsity, or progress in [0, 1]).
            pending: An update was deferred from an earlier batch.

        Returns:
            The schedule's value at this batch when it is an update (or pending) batch and the
            value exceeds ``applied``; else ``None``.

        Example:
            >>> s = StepSchedule(0, 2, 10, None, 0.0, 0.5, "linear")
            >>> s.due(0, 0, 0.0), s.due(0, 3, 0.0), s.due(1, 0, 0.0), s.due(1, 0, 0.25)
            (None, None, 0.25, None)
        """
        step = epoch * self.steps_per_epoch + batch_idx
        if not (pending or self.is_update_step(step)):
            return None
        value = self.sparsity_at(step)
        return value if value > applied + 1e-9 else None
