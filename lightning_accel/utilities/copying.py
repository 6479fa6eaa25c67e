"""Copying modules that may be attached to a Trainer."""

from __future__ import annotations

import copy

from torch import nn


def detached_copy(model: nn.Module) -> nn.Module:
    """Deep copy of ``model`` without the Trainer a LightningModule may point to."""
    trainer = model.__dict__.get("_trainer")
    if trainer is None:
        return copy.deepcopy(model)
    model.__dict__["_trainer"] = None
    try:
        return copy.deepcopy(model)
    finally:
        model.__dict__["_trainer"] = trainer
