"""Keeping data-dependent values identical on every DDP rank (DESIGN.md, contract 8)."""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor


def mean_across_ranks(value: Tensor) -> Tensor:
    """The mean of ``value`` over all ranks (``value`` itself outside a process group).

    Every rank must call it at the same point (it is a collective operation).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / dist.get_world_size()
