"""Helpers callbacks share after they change a model's parameters."""

from __future__ import annotations

from typing import Any, cast

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from lightning_accel.layers import WeightedLayer


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


def check_pruning_finishes_before(trainer: pl.Trainer, start_epoch: int, technique: str) -> None:
    """Refuse a layer swap that would start before structured pruning has finished.

    Structured pruning rewires layers through torch-pruning's graph, which knows plain layers
    only: quantized or binarized layers must come after it.

    Raises:
        ValueError: Naming the epochs and how to reorder them.
    """
    from lightning_accel.callbacks.pruning import GradualPruning

    max_epochs = trainer.max_epochs if trainer.max_epochs is not None else -1
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        if not isinstance(callback, GradualPruning) or callback.mode != "structured":
            continue
        end = callback.end_epoch
        if end is None:
            end = max(max_epochs - 1, callback.start_epoch + 1)
        if start_epoch <= end:
            raise ValueError(
                f"{technique}(start_epoch={start_epoch}) would start before structured "
                f"GradualPruning finishes (its target is reached at the start of epoch {end}). "
                f"Prune first, then {technique}: set start_epoch >= {end + 1}, or end the "
                "pruning earlier with GradualPruning(end_epoch=...)."
            )


def warn_without_checkpoint_support(pl_module: pl.LightningModule, kind: str) -> None:
    """Warn when ``pl_module`` cannot replay structural changes from its checkpoints."""
    from lightning_accel.surgery import CompressionCheckpointMixin

    if not isinstance(pl_module, CompressionCheckpointMixin):
        rank_zero_warn(
            f"{type(pl_module).__name__} does not inherit CompressionCheckpointMixin: "
            f"checkpoints of the {kind} model will only load if its on_load_checkpoint calls "
            "lightning_accel.restore_compression(self, checkpoint)."
        )
