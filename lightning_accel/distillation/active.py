"""The one line a ``training_step`` adds: ``loss = distill(self, x, logits, loss)``.

A Lightning callback cannot change the loss ``training_step`` returns, so the step asks for
it: the ``Distillation`` callback registers its :class:`Distiller` for the module while it
distills, and :func:`distill` returns the task loss unchanged when none is registered.
"""

from __future__ import annotations

import weakref
from typing import Any

from torch import Tensor, nn

from lightning_accel.distillation.distiller import Distiller


class StepTracker:
    """Whether :func:`distill` ran in the current training step (the callback resets it)."""

    def __init__(self) -> None:
        self.called = False


_ACTIVE: weakref.WeakKeyDictionary[nn.Module, Distiller] = weakref.WeakKeyDictionary()
_SEEN: weakref.WeakKeyDictionary[nn.Module, StepTracker] = weakref.WeakKeyDictionary()


def distill(module: nn.Module, inputs: Any, logits: Tensor, task_loss: Tensor) -> Tensor:
    """The loss to return from ``training_step``: the task loss plus the teacher's term.

    Call it in every ``training_step`` (only there). Without a ``Distillation`` callback in
    the Trainer, or outside its ``start_epoch``..``end_epoch``, it returns ``task_loss``.

    Args:
        module: The LightningModule (``self``).
        inputs: The inputs the module's ``forward`` took for this batch (the teacher gets the
            same).
        logits: ``(N, C)`` float class scores the module computed from ``inputs``.
        task_loss: The module's own loss for the batch.

    Returns:
        ``(1 − alpha) · task_loss + alpha · T² · KL(...)`` while distilling, else ``task_loss``.

    Raises:
        ValueError: If ``logits`` are not a ``(N, C)`` float tensor, or the teacher's differ.

    Example:
        >>> def training_step(self, batch, batch_idx):  # doctest: +SKIP
        ...     x, y = batch
        ...     logits = self(x)
        ...     loss = F.cross_entropy(logits, y)
        ...     return distill(self, x, logits, loss)
    """
    seen = _SEEN.get(module)
    if seen is not None:
        seen.called = True
    distiller = _ACTIVE.get(module)
    if distiller is None:
        return task_loss
    return distiller.combine(inputs, logits, task_loss)


def register(module: nn.Module, tracker: StepTracker) -> None:
    """Make ``distill(module, ...)`` mark ``tracker`` called at every step."""
    _SEEN[module] = tracker


def set_active(module: nn.Module, distiller: Distiller | None) -> None:
    """Make ``distill(module, ...)`` use ``distiller`` (``None``: return the task loss)."""
    if distiller is None:
        _ACTIVE.pop(module, None)
    else:
        _ACTIVE[module] = distiller


def unregister(module: nn.Module) -> None:
    """Forget ``module`` (after ``fit``): ``distill`` returns its task loss again."""
    _SEEN.pop(module, None)
    _ACTIVE.pop(module, None)


def registered(module: nn.Module) -> StepTracker | None:
    """The tracker registered for ``module``, if a ``Distillation`` callback is fitting it."""
    return _SEEN.get(module)
