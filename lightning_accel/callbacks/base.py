"""The frame every lightning_accel callback shares, as Lightning's ``BaseFinetuning`` serves its.

Epoch-schedule validation against the Trainer, the structural log in checkpoints,
optimizer rebuilds after surgery, and one metrics dictionary that is both what the callback
logs and what it declares through ``logged_metrics()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, cast

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from typing_extensions import override

from lightning_accel.checkpointing import CompressionCheckpointMixin, save_structural_log
from lightning_accel.utilities.layer_selection import WeightedLayer


class AccelCallback(Callback):
    """Base of the library's callbacks.

    Subclasses set :attr:`changes_structure` when they replace parameters or modules (the
    structural log then goes into every checkpoint), declare their metrics in
    :meth:`metric_names` and log through :meth:`log_metrics`, and validate epochs with
    :func:`check_epoch` in ``__init__`` and :meth:`check_schedule_fits` in ``setup``.
    """

    changes_structure: ClassVar[bool] = False
    technique: ClassVar[str] = "callback"

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}

    # ----------------------------------------------------------------- metrics
    def metric_names(self) -> tuple[str, ...]:
        """The metric names this callback logs (override)."""
        return ()

    def logged_metrics(self) -> tuple[str, ...]:
        """The metric names this callback logs; sweeps check their metric against it."""
        return self.metric_names()

    def log_metrics(self, pl_module: pl.LightningModule, metrics: dict[str, float]) -> None:
        """Log epoch-level metrics through ``pl_module.log`` and keep them in :attr:`metrics`.

        Raises:
            RuntimeError: If a name is not declared in :meth:`metric_names` (a library bug:
                declaration and logging must agree).
        """
        undeclared = sorted(set(metrics) - set(self.metric_names()))
        if undeclared:
            raise RuntimeError(f"{type(self).__name__} logs undeclared metrics {undeclared}")
        self.metrics.update(metrics)
        for name, value in metrics.items():
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=False)

    # ----------------------------------------------------------------- schedules
    def rewires_channels_until(self, trainer: pl.Trainer) -> int | None:
        """Last epoch at whose start this callback rewires channels, or ``None``.

        Channels are rewired through torch-pruning's graph, which knows only plain layers:
        layer swaps (QAT, binarization) must start later.
        """
        return None

    def check_schedule_fits(self, trainer: pl.Trainer, argument: str, last_epoch: int) -> None:
        """Refuse a schedule whose epoch ``argument=last_epoch`` is never reached.

        Args:
            trainer: The Trainer, whose ``max_epochs`` bounds the schedule.
            argument: The constructor argument that sets the epoch, e.g. ``"end_epoch"``.
            last_epoch: The last epoch the schedule needs to start (0-based).

        Raises:
            ValueError: Naming the argument, the epochs and both ways to fix them.
        """
        max_epochs = trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0 and last_epoch >= max_epochs:
            raise ValueError(
                f"The {self.technique} schedule cannot finish: it needs the start of "
                f"{argument}={last_epoch}, but training stops after max_epochs={max_epochs} "
                f"(epochs 0..{max_epochs - 1}). Set {argument} <= {max_epochs - 1} or "
                f"max_epochs >= {last_epoch + 1}."
            )

    def check_starts_after_channel_pruning(self, trainer: pl.Trainer, start_epoch: int) -> None:
        """Refuse a layer swap that would start before structured pruning has finished.

        Raises:
            ValueError: Naming the epochs and how to reorder them.
        """
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            if not isinstance(callback, AccelCallback) or callback is self:
                continue
            end = callback.rewires_channels_until(trainer)
            if end is not None and start_epoch <= end:
                raise ValueError(
                    f"{self.technique}(start_epoch={start_epoch}) would start before structured "
                    f"{callback.technique} finishes (its target is reached at the start of epoch "
                    f"{end}). Prune first, then {self.technique}: set start_epoch >= {end + 1}, "
                    f"or end the pruning earlier with {callback.technique}(end_epoch=...)."
                )

    # ----------------------------------------------------------------- structure
    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.changes_structure:
            save_structural_log(pl_module, checkpoint)

    def warn_without_checkpoint_support(self, pl_module: pl.LightningModule, kind: str) -> None:
        """Warn when ``pl_module`` cannot replay structural changes from its checkpoints."""
        if not isinstance(pl_module, CompressionCheckpointMixin):
            rank_zero_warn(
                f"{type(pl_module).__name__} does not inherit CompressionCheckpointMixin: "
                f"checkpoints of the {kind} model will only load if its on_load_checkpoint calls "
                "lightning_accel.restore_compression(self, checkpoint)."
            )


def check_epoch(value: object, argument: str, example: str, minimum: int = 0) -> int:
    """An epoch index ``>= minimum``; ``bool`` is refused (``True`` is not an epoch).

    Args:
        value: The value given.
        argument: The argument's name, for the message.
        example: A valid call, for the message.
        minimum: The smallest allowed epoch.

    Raises:
        ValueError: Naming the argument, the value and an example.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"{argument} must be an integer >= {minimum}; got {value!r}. Example: {example}"
        )
    return value


def check_end_epoch(start_epoch: int, end_epoch: object, example: str) -> int | None:
    """``None`` or an epoch after ``start_epoch``.

    Args:
        start_epoch: The validated first epoch.
        end_epoch: The value given for ``end_epoch``.
        example: A valid call, for the message.

    Raises:
        ValueError: Naming both epochs and an example.
    """
    if end_epoch is None:
        return None
    if isinstance(end_epoch, bool) or not isinstance(end_epoch, int) or end_epoch <= start_epoch:
        raise ValueError(
            f"end_epoch must be after start_epoch; got start_epoch={start_epoch}, "
            f"end_epoch={end_epoch!r}. Example: {example}"
        )
    return end_epoch


def check_batch_sizes(value: object, argument: str) -> tuple[int, ...]:
    """A non-empty sequence of positive integer batch sizes.

    Raises:
        ValueError: Naming the argument and the value.
    """
    if (
        isinstance(value, (str, bytes))
        or not isinstance(value, Sequence)
        or not value
        or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in value)
    ):
        raise ValueError(
            f"{argument} must be positive integers; got {value!r}. Example: {argument}=(1, 64)"
        )
    return tuple(value)


def rebuild_optimizers(trainer: pl.Trainer) -> None:
    """Rebuild optimizers (and the DDP wrapper) after parameters were replaced.

    Without this, training silently updates the orphaned tensors of the old parameters.
    Learning-rate schedulers keep their progress; optimizer moments (momentum, Adam's
    averages) restart, since they belong to tensors that no longer exist.
    """
    strategy = trainer.strategy
    if isinstance(strategy, DDPStrategy) and isinstance(strategy.model, DistributedDataParallel):
        # DDP's reducer holds the old parameters: wrap the module again.
        strategy.model = strategy._setup_model(trainer.lightning_module)
        strategy._register_ddp_hooks()
    scheduler_states = [cfg.scheduler.state_dict() for cfg in trainer.lr_scheduler_configs]
    strategy.setup_optimizers(trainer)
    for cfg, state in zip(trainer.lr_scheduler_configs, scheduler_states, strict=True):
        cfg.scheduler.load_state_dict(state)
        groups = cfg.scheduler.optimizer.param_groups
        for group, lr in zip(groups, cfg.scheduler.get_last_lr(), strict=True):
            group["lr"] = lr


def example_input(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Tensor:
    """One input sample on the module's device: ``example_input_array`` or a training batch.

    Raises:
        ValueError: If neither gives a tensor.
    """
    sample: Any = pl_module.example_input_array
    if sample is None:
        loader = trainer.train_dataloader
        if loader is None:
            raise ValueError(
                "Cannot find an example input: set `self.example_input_array` in your "
                "LightningModule or give the Trainer a train dataloader."
            )
        batch = next(iter(loader))
        sample = batch[0] if isinstance(batch, (list, tuple)) else batch
    if not isinstance(sample, Tensor):
        raise ValueError(
            f"The example input must be a tensor (the first element of a batch); got "
            f"{type(sample).__name__}. Set `self.example_input_array` to one input tensor."
        )
    return sample[:1].to(pl_module.device)


def layer_modules(pl_module: torch.nn.Module, names: list[str]) -> dict[str, WeightedLayer]:
    """Conv/linear layers by name, looked up afresh (structural pruning replaces parameters)."""
    return {name: cast(WeightedLayer, pl_module.get_submodule(name)) for name in names}
