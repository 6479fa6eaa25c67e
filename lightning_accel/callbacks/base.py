"""The frame every lightning_accel callback shares, as Lightning's ``BaseFinetuning`` serves its.

Epoch-schedule validation against the Trainer, the structural log in checkpoints,
optimizer rebuilds after surgery, and one metrics dictionary that is both what the callback
logs and what it declares through ``logged_metrics()``.
"""

from __future__ import annotations

import math
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
from lightning_accel.checkpointing.structural_log import check_checkpoint_fits
from lightning_accel.utilities.layer_selection import WeightedLayer
from lightning_accel.utilities.validation import (  # re-exported: the callbacks' shared checks
    check_batch_sizes,
    check_bool,
    check_end_epoch,
    check_epoch,
    check_int,
    check_number,
    check_patterns,
)

__all__ = [
    "AccelCallback",
    "check_batch_sizes",
    "check_bool",
    "check_end_epoch",
    "check_epoch",
    "check_finite_weights",
    "check_int",
    "check_number",
    "check_patterns",
    "check_resume_fits",
    "count_non_finite",
    "example_input",
    "layer_modules",
    "rebuild_optimizers",
]


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
        self._batch: tuple[int, Any] | None = None  # index and batch of the running step

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Lightning loads a resumed checkpoint's weights after setup, before any other hook.
        accel = [c for c in trainer.callbacks if isinstance(c, AccelCallback)]  # type: ignore[attr-defined]
        if stage == "fit" and accel and accel[0] is self:
            check_resume_fits(pl_module)
            # Every lightning_accel callback's settings in W&B config / hparams.yaml, once.
            from lightning_accel.tracking.run_config import log_callback_settings

            log_callback_settings(trainer)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        _unwrap_resume_check(pl_module)

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        _unwrap_resume_check(pl_module)  # Lightning skips teardown when fit raises

    # ----------------------------------------------------------------- non-finite values
    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch = (batch_idx, batch)

    @override
    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor
    ) -> None:
        """Stop at the first non-finite loss, before it reaches any weight.

        Raises:
            ValueError: Saying where the loss became non-finite and whether the batch held
                non-finite inputs.
        """
        if bool(torch.isfinite(loss.detach()).all()):
            return
        index, batch = self._batch if self._batch is not None else (-1, None)
        bad_inputs = count_non_finite(batch)
        where = f"epoch {trainer.current_epoch}, training batch {index}"
        cause = (
            f"that batch holds {bad_inputs} non-finite input values (NaN or inf): clean the data"
            if bad_inputs
            else "its inputs are finite, so training diverged: lower the learning rate or use "
            "gradient clipping (Trainer(gradient_clip_val=...))"
        )
        raise ValueError(
            f"{self.technique}: the loss is {float(loss.detach().float().mean())} at {where}; "
            f"{cause}. Stopped before the optimizer step, so the weights are still finite."
        )

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

    def check_reached_within_max_steps(
        self, trainer: pl.Trainer, what: str, epoch: int, completes: bool = False
    ) -> None:
        """Refuse a schedule point that ``max_steps`` stops training before (in ``on_train_start``).

        Args:
            trainer: The Trainer, with its train dataloader loaded.
            what: The setting that asks for the epoch, e.g. ``"end_epoch=4"``.
            epoch: The epoch the schedule needs (0-based).
            completes: ``True``: the epoch must run to its end; ``False``: its first batch must
                run.

        Raises:
            ValueError: Naming the epoch, the step it needs, ``max_steps`` and the fix.
        """
        max_steps, batches = trainer.max_steps, trainer.num_training_batches
        if max_steps is None or max_steps < 0 or not math.isfinite(batches):
            return
        accumulate = max(int(getattr(trainer, "accumulate_grad_batches", 1)), 1)
        batch = (epoch + 1) * int(batches) - 1 if completes else epoch * int(batches)
        needed = batch // accumulate + 1  # optimizer steps until that batch has run
        if needed > max_steps:
            raise ValueError(
                f"The {self.technique} schedule cannot finish: {what} needs training batch "
                f"{batch} counted from the start (batch {batch - epoch * int(batches)} of epoch "
                f"{epoch}, optimizer step {needed}, {int(batches)} batches per epoch), but "
                f"max_steps={max_steps} stops training before. Raise max_steps to >= {needed} "
                "or move the schedule earlier."
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


def check_resume_fits(pl_module: pl.LightningModule) -> None:
    """Make ``fit(ckpt_path=...)`` refuse a checkpoint that does not fit, before loading it.

    Lightning calls the module's ``on_load_checkpoint`` just before it loads the weights. A
    module with :class:`CompressionCheckpointMixin` checks there (after replaying its
    compression history); any other module gets, for this fit, its own hook wrapped with the
    same check (removed again in ``teardown``).
    """
    if isinstance(pl_module, CompressionCheckpointMixin) or "on_load_checkpoint" in vars(pl_module):
        return
    own_hook = pl_module.on_load_checkpoint

    def on_load_checkpoint(checkpoint: dict[str, Any]) -> None:
        if isinstance(checkpoint, dict):
            strict = bool(getattr(pl_module, "strict_loading", True))
            check_checkpoint_fits(pl_module, checkpoint, strict)
        own_hook(checkpoint)

    on_load_checkpoint.lightning_accel_check = True  # type: ignore[attr-defined]
    pl_module.__dict__["on_load_checkpoint"] = on_load_checkpoint


def _unwrap_resume_check(pl_module: pl.LightningModule) -> None:
    hook = vars(pl_module).get("on_load_checkpoint")
    if getattr(hook, "lightning_accel_check", False):
        del pl_module.__dict__["on_load_checkpoint"]


def count_non_finite(batch: Any) -> int:
    """How many NaN or inf values the floating-point tensors of a batch hold (any nesting)."""
    if isinstance(batch, Tensor):
        return int((~torch.isfinite(batch)).sum()) if batch.is_floating_point() else 0
    if isinstance(batch, dict):
        return sum(count_non_finite(v) for v in batch.values())
    if isinstance(batch, (list, tuple)):
        return sum(count_non_finite(v) for v in batch)
    return 0


def check_finite_weights(model: torch.nn.Module, technique: str) -> None:
    """Refuse to act on a model with NaN or inf parameters.

    Raises:
        ValueError: Naming the first such parameter.
    """
    for name, parameter in model.named_parameters():
        if not bool(torch.isfinite(parameter.detach()).all()):
            raise ValueError(
                f"{technique}: parameter {name!r} holds NaN or inf values, so ranking or "
                "quantizing it would be meaningless. Training diverged or the data holds "
                "non-finite values; fix that first."
            )


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


def example_input(
    trainer: pl.Trainer, pl_module: pl.LightningModule, several: bool = False
) -> Tensor:
    """One input sample on the module's device: ``example_input_array`` or a training batch.

    Args:
        trainer: The Trainer, for its train dataloader.
        pl_module: The module, for ``example_input_array`` and its device.
        several: Accept several positional inputs (e.g. an image and int64 token ids): a tuple
            of tensors is returned as a tuple of one-sample tensors; otherwise it is refused.

    Raises:
        ValueError: If neither gives a tensor (or, with ``several``, a tuple of tensors).
    """
    sample: Any = pl_module.example_input_array
    loader = trainer.train_dataloader
    data: Any = None
    if loader is not None:
        batch = next(iter(loader))
        data = batch[0] if isinstance(batch, (list, tuple)) else batch
    if sample is None:
        if loader is None:
            raise ValueError(
                "Cannot find an example input: set `self.example_input_array` in your "
                "LightningModule or give the Trainer a train dataloader."
            )
        sample = data
    elif (
        isinstance(sample, Tensor)
        and isinstance(data, Tensor)
        and tuple(sample.shape[1:]) != tuple(data.shape[1:])
    ):
        raise ValueError(
            f"{type(pl_module).__name__}.example_input_array has shape {tuple(sample.shape)}, "
            f"but the training data's inputs are {tuple(data.shape)} (batch first): set "
            f"example_input_array to one input batch, e.g. torch.zeros(1, "
            f"{', '.join(str(d) for d in data.shape[1:])})."
        )
    if (
        several
        and isinstance(sample, (list, tuple))
        and sample
        and all(isinstance(t, Tensor) for t in sample)
    ):
        # Several positional inputs (e.g. an image and int64 token ids), as Lightning's own
        # example_input_array tuples; the batch's first element holds them (#12).
        return tuple(t[:1].to(pl_module.device) for t in sample)  # type: ignore[return-value]
    if not isinstance(sample, Tensor):
        raise ValueError(
            f"The example input must be a tensor (the first element of a batch); got "
            f"{type(sample).__name__}. Set `self.example_input_array` to one input tensor."
        )
    return sample[:1].to(pl_module.device)


def layer_modules(pl_module: torch.nn.Module, names: list[str]) -> dict[str, WeightedLayer]:
    """Conv/linear layers by name, looked up afresh (structural pruning replaces parameters)."""
    return {name: cast(WeightedLayer, pl_module.get_submodule(name)) for name in names}
