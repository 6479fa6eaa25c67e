"""A log of structural changes kept on the model, saved in checkpoints and replayed on load.

Weights of a pruned or module-swapped model only fit a model of the same structure. Each
technique that changes structure appends an entry here; :func:`restore_compression` replays
the entries on a freshly built model before its weights load (contract 3 of DESIGN.md).
The log holds only plain Python values, so ``torch.load(weights_only=True)`` reads it.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Mapping
from typing import Any, cast

import torch
from torch import nn

from lightning_accel.utilities.copying import detached_copy

CHECKPOINT_KEY = "lightning_accel"
FORMAT_VERSION = 1
_LOG_ATTRIBUTE = "_lightning_accel_surgery"

Replay = Callable[[nn.Module, dict[str, Any]], None]
# Each technique's replay, named ``"module:function"`` and imported only when an entry of its
# kind is replayed: this module stays free of the techniques (no import cycle), and a new
# technique registers with one line here or with :func:`register_replay`.
REPLAYS: dict[str, Replay | str] = {
    "channel_pruning": "lightning_accel.pruning.channels:replay_channel_pruning_entry",
    "quantization_aware": "lightning_accel.quantization.prepare:replay_quantization",
    "binarization": "lightning_accel.binarization.layers:replay_binarization",
}


def register_replay(kind: str) -> Callable[[Replay], Replay]:
    """Register the function that replays log entries of ``kind``."""

    def decorator(fn: Replay) -> Replay:
        REPLAYS[kind] = fn
        return fn

    return decorator


def _replay_function(kind: str) -> Replay:
    replay = REPLAYS[kind]
    if isinstance(replay, str):
        module, _, name = replay.partition(":")
        replay = cast(Replay, getattr(importlib.import_module(module), name))
        REPLAYS[kind] = replay
    return replay


def structural_changes(model: nn.Module) -> list[dict[str, Any]]:
    """The structural changes applied to ``model`` so far (a live list)."""
    if not hasattr(model, _LOG_ATTRIBUTE):
        object.__setattr__(model, _LOG_ATTRIBUTE, [])
    return getattr(model, _LOG_ATTRIBUTE)


def record_structural_change(model: nn.Module, kind: str, **payload: Any) -> None:
    """Append a structural change to the model's log."""
    if kind not in REPLAYS:
        raise KeyError(f"no replay registered for surgery kind {kind!r}; known: {sorted(REPLAYS)}")
    structural_changes(model).append({"kind": kind, **payload})


def save_structural_log(model: nn.Module, checkpoint: dict[str, Any]) -> None:
    """Write the model's log into ``checkpoint["lightning_accel"]``."""
    section = checkpoint.setdefault(CHECKPOINT_KEY, {})
    section["format"] = FORMAT_VERSION
    section["surgery"] = copy.deepcopy(structural_changes(model))


def restore_compression(
    model: nn.Module, checkpoint: Mapping[str, Any], strict: bool = True
) -> None:
    """Replay a checkpoint's structural changes on ``model`` so its weights fit.

    Call it before loading the weights; :class:`CompressionCheckpointMixin` does so for a
    LightningModule. The replay is tried on a copy first: if the checkpoint belongs to another
    architecture, ``model`` is left untouched.

    Args:
        model: A freshly built model of the checkpoint's architecture.
        checkpoint: A Lightning checkpoint dict, or any dict with a ``"lightning_accel"`` section
            (and optionally ``"state_dict"``, whose shapes are checked).
        strict: Also require the checkpoint's tensor names to equal the model's (what a strict
            ``load_state_dict`` will require), checked before anything is loaded: PyTorch's
            own strict load copies the matching tensors before it reports missing ones.

    Raises:
        ValueError: If the checkpoint was made from a different architecture, or its
            ``"lightning_accel"`` section or ``"state_dict"`` is malformed.

    Example:
        >>> ckpt = torch.load("pruned.ckpt", weights_only=True)  # doctest: +SKIP
        >>> restore_compression(module, ckpt)  # doctest: +SKIP
        >>> module.load_state_dict(ckpt["state_dict"])  # doctest: +SKIP
    """
    entries = compression_history(checkpoint)
    if structural_changes(model):
        if structural_changes(model) == entries:
            return  # already replayed, e.g. by load_from_checkpoint before fit(ckpt_path=...)
        raise ValueError(
            "This model already carries structural changes; restore a checkpoint into a freshly "
            "built model."
        )
    trial = detached_copy(model)
    try:
        _replay_all(trial, entries)
    except (ValueError, RuntimeError, IndexError, KeyError, AttributeError) as err:
        raise ValueError(
            f"Cannot restore this checkpoint into {type(model).__name__}: its compression history "
            f"does not fit this architecture ({err}). Build the same architecture the checkpoint "
            "was trained with (same model name, num_classes and in_channels)."
        ) from err
    _check_shapes(trial, checkpoint.get("state_dict"), strict, has_history=bool(entries))
    if entries:
        _replay_all(model, entries)


def compression_history(checkpoint: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The checkpoint's structural log (``[]`` if it has none), its layout checked.

    Args:
        checkpoint: A Lightning checkpoint dict, as ``torch.load`` returns it.

    Returns:
        The entries of ``checkpoint["lightning_accel"]["surgery"]``, oldest first.

    Raises:
        ValueError: Naming the malformed part: the checkpoint itself, its ``"lightning_accel"``
            section, the section's ``"surgery"`` list or an entry, or ``"state_dict"``.
    """
    fix = (
        "The file was not written by lightning_accel or was edited: re-save it with "
        "Trainer.save_checkpoint from a module with CompressionCheckpointMixin."
    )
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"A checkpoint must be a mapping; got {type(checkpoint).__name__}. {fix}")
    state_dict = checkpoint.get("state_dict")
    if state_dict is not None and not isinstance(state_dict, Mapping):
        raise ValueError(
            f"checkpoint['state_dict'] must be a mapping of tensor names to tensors; got "
            f"{type(state_dict).__name__}. The file was edited or not written by Lightning: "
            "re-save it with Trainer.save_checkpoint."
        )
    section = checkpoint.get(CHECKPOINT_KEY, {})
    if not isinstance(section, Mapping):
        raise ValueError(
            f"checkpoint[{CHECKPOINT_KEY!r}] must be a mapping; got {type(section).__name__}. {fix}"
        )
    entries = section.get("surgery", [])
    if not isinstance(entries, list):
        raise ValueError(
            f"checkpoint[{CHECKPOINT_KEY!r}]['surgery'] must be a list; got "
            f"{type(entries).__name__}. {fix}"
        )
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("kind"), str):
            raise ValueError(
                f"checkpoint[{CHECKPOINT_KEY!r}]['surgery'][{index}] must be a mapping with a "
                f"'kind' string; got {entry!r:.80}. {fix}"
            )
    return entries


def _replay_all(model: nn.Module, entries: list[dict[str, Any]]) -> None:
    for entry in entries:
        kind = entry.get("kind")
        if kind not in REPLAYS:
            raise KeyError(
                f"unknown surgery kind {kind!r}; known: {sorted(REPLAYS)}. Upgrade lightning-accel."
            )
        _replay_function(kind)(model, entry)
        structural_changes(model).append(copy.deepcopy(entry))


def check_checkpoint_fits(
    model: nn.Module, checkpoint: Mapping[str, Any], strict: bool = True
) -> None:
    """Refuse a checkpoint whose tensors do not fit ``model`` as it is now, before loading.

    For modules without :class:`CompressionCheckpointMixin` (which runs the same check after
    replaying the compression history): PyTorch's strict ``load_state_dict`` copies the
    matching tensors before it reports the missing ones, leaving the module half-overwritten.

    Args:
        model: The module the checkpoint will be loaded into.
        checkpoint: A Lightning checkpoint dict.
        strict: Also require equal tensor names (what a strict load requires).

    Raises:
        ValueError: Naming the missing, extra or differently shaped tensors and the fix.
    """
    history = compression_history(checkpoint)
    _check_shapes(model, checkpoint.get("state_dict"), strict, bool(history))


def _check_shapes(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor] | None,
    strict: bool,
    has_history: bool,
) -> None:
    if not state_dict:
        return
    # Without a log, a model pruned or swapped by lightning_accel looks like another one.
    history_hint = (
        ""
        if has_history
        else " It may also have been saved without its compression history (no "
        f"checkpoint[{CHECKPOINT_KEY!r}] section: the module lacked CompressionCheckpointMixin, "
        "or its on_save_checkpoint did not call save_structural_log); then compress the model "
        "the same way before loading, and give the module the mixin (or call "
        "save_structural_log and restore_compression in its checkpoint hooks) from then on."
    )
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state_dict)), sorted(set(state_dict) - set(own))
    if strict and (missing or unexpected):
        raise ValueError(
            f"This checkpoint does not fit {type(model).__name__}: "
            + "; ".join(
                f"{label} {len(keys)} tensors (e.g. {keys[:3]})"
                for label, keys in (("it lacks", missing), ("it has another", unexpected))
                if keys
            )
            + ". It comes from another architecture. Build the same architecture the checkpoint "
            "was trained with (same model name, num_classes and in_channels)."
            + history_hint
            + " Nothing was loaded."
        )
    for key, value in state_dict.items():
        if key in own and hasattr(value, "shape") and own[key].shape != value.shape:
            raise ValueError(
                f"Checkpoint tensor {key!r} has shape {tuple(value.shape)} but this model's has "
                f"{tuple(own[key].shape)} after replaying the checkpoint's compression: the "
                "checkpoint comes from another architecture. Build the model it was trained with."
                + history_hint
            )


class CompressionCheckpointMixin:
    """Mixin for a LightningModule whose structure lightning_accel callbacks may change.

    It saves the structural log with every checkpoint and replays it before the weights load,
    so ``load_from_checkpoint`` and ``Trainer.fit(ckpt_path=...)`` work on pruned models.
    Put it before ``LightningModule`` in the bases; if you override the hooks, call ``super()``.

    Example:
        >>> class MyModule(CompressionCheckpointMixin, L.LightningModule): ...  # doctest: +SKIP
    """

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        save_structural_log(self, checkpoint)  # type: ignore[arg-type]
        super().on_save_checkpoint(checkpoint)  # type: ignore[misc]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        strict = bool(getattr(self, "strict_loading", True))
        restore_compression(self, checkpoint, strict)  # type: ignore[arg-type]
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]
