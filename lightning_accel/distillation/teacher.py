"""Teachers: frozen copies, checkpoints loaded into a copy, identical on every DDP rank."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lightning_accel.checkpointing.structural_log import (
    CHECKPOINT_KEY,
    FORMAT_VERSION,
    restore_compression,
    structural_changes,
)
from lightning_accel.utilities.copying import detached_copy

__all__ = [
    "broadcast_module",
    "check_layer_names",
    "eval_forward",
    "freeze",
    "load_teacher_checkpoint",
    "restore_snapshot",
    "snapshot",
]


def freeze(teacher: nn.Module) -> nn.Module:
    """Put ``teacher`` in eval mode with ``requires_grad=False`` everywhere; return it."""
    teacher.eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher


def snapshot(model: nn.Module) -> nn.Module:
    """A frozen deep copy of ``model`` (without the Trainer a LightningModule points to)."""
    return freeze(detached_copy(model))


def snapshot_state(teacher: nn.Module) -> dict[str, Any]:
    """What a checkpoint keeps of a snapshot: its tensors and structural log (plain values)."""
    return {
        "state_dict": {k: v.detach().cpu().clone() for k, v in teacher.state_dict().items()},
        "surgery": [dict(entry) for entry in structural_changes(teacher)],
    }


def restore_snapshot(template: nn.Module, state: dict[str, Any]) -> nn.Module:
    """Rebuild a snapshot saved by :func:`snapshot_state` from a fresh copy of ``template``.

    The snapshot may have been taken after pruning or layer swaps: its structural log is
    replayed on the copy before the weights load.

    Raises:
        ValueError: If the saved snapshot does not fit ``template``'s architecture.
    """
    teacher = detached_copy(template)
    structural_changes(teacher).clear()
    checkpoint = {
        CHECKPOINT_KEY: {"format": FORMAT_VERSION, "surgery": list(state.get("surgery", []))},
        "state_dict": state["state_dict"],
    }
    try:
        restore_compression(teacher, checkpoint)
    except ValueError as err:
        raise ValueError(
            f"The checkpoint's Distillation teacher does not fit this model: {err} Resume with "
            "the same model the run started from."
        ) from err
    teacher.load_state_dict(state["state_dict"])
    return freeze(teacher)


def load_teacher_checkpoint(template: nn.Module, path: str | Path) -> nn.Module:
    """A frozen copy of ``template`` holding the weights of checkpoint ``path``.

    ``path`` holds a Lightning checkpoint (with ``"state_dict"``, and the compression history
    if the model was pruned or swapped) or a plain ``state_dict`` of the same LightningModule;
    it is read with ``weights_only=True``.

    Raises:
        ValueError: If the file is missing, unreadable, or holds another architecture
            (nothing is loaded then).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"Distillation(teacher={str(path)!r}): no such file. Pass the path of a checkpoint "
            "of the dense model (e.g. 'runs/dense/last.ckpt'), an nn.Module, or 'initial'."
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ValueError(
            f"Distillation(teacher={str(path)!r}) cannot be read as a torch checkpoint ({err})."
        ) from err
    if not isinstance(checkpoint, dict):
        raise ValueError(
            f"Distillation(teacher={str(path)!r}) holds a {type(checkpoint).__name__}, not a "
            "checkpoint dict or a state_dict."
        )
    if "state_dict" not in checkpoint:
        checkpoint = {"state_dict": checkpoint}
    teacher = detached_copy(template)
    structural_changes(teacher).clear()
    try:
        restore_compression(teacher, checkpoint)
    except ValueError as err:
        raise ValueError(
            f"Distillation(teacher={str(path)!r}): {err} The teacher checkpoint must come from "
            f"the same LightningModule class ({type(template).__name__}) and architecture."
        ) from err
    teacher.load_state_dict(checkpoint["state_dict"])
    return freeze(teacher)


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into ``module`` on every rank (in place).

    A no-op outside a process group. Every rank must call it at the same point.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if isinstance(tensor, Tensor):
                dist.broadcast(tensor, src=src)


@contextmanager
def eval_forward(module: nn.Module) -> Iterator[nn.Module]:
    """Run ``module`` in eval mode without gradients, then give every submodule its mode back.

    Eval mode keeps BatchNorm statistics untouched, so a dry run changes nothing.
    """
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            yield module
    finally:
        for submodule, training in modes:
            submodule.training = training


def check_layer_names(model: nn.Module, names: list[str], role: str) -> None:
    """Refuse feature-layer names that name no submodule of ``model``.

    Args:
        model: The student (the LightningModule) or the teacher.
        names: Submodule names, as ``model.named_modules()`` gives them.
        role: ``"student"`` or ``"teacher"``, for the message.

    Raises:
        ValueError: Naming the unmatched names and the closest real ones.
    """
    available = [name for name, _ in model.named_modules() if name]
    missing = [name for name in names if name not in available]
    if not missing:
        return
    hints = {name: difflib.get_close_matches(name, available, n=3) for name in missing}
    raise ValueError(
        f"Distillation(features=...): {role} layer(s) {missing} match no submodule of "
        f"{type(model).__name__}. Closest names: {hints}. Use names from "
        f"dict(model.named_modules()), e.g. {available[: min(3, len(available))]}."
    )
