"""The model's input inside a batch, and random inputs of the right dtype when none exist.

Export, verification and timing feed the model what its data holds: float images, int64
token ids, or the entry of a dict batch named by ``input_key``. Random inputs stand in only
where no batch exists, drawn per dtype (integers within the range real batches showed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def model_input(batch: Any, input_key: str | None = None, owner: str = "ExportOnFitEnd") -> Tensor:
    """The tensor a batch feeds the model: the batch itself, its first element, or a dict entry.

    Args:
        batch: A batch as the dataloader yields it: a tensor, a tuple/list whose first element
            is the input, or a dict.
        input_key: For dict batches, the key holding the model's input.
        owner: Who asks, for messages (the argument to set is ``{owner}(input_key=...)``).

    Raises:
        ValueError: If the input is not a tensor, or a dict batch has no (or another) key.
    """
    if isinstance(batch, dict):
        keys = sorted(map(str, batch))
        if input_key is None:
            raise ValueError(
                f"The batches are dicts (keys {keys}): pass {owner}(input_key=...) naming the key "
                f"that holds the model's input, e.g. input_key={keys[0]!r}."
            )
        if input_key not in batch:
            raise ValueError(
                f"{owner}(input_key={input_key!r}) is not a key of the batches {keys}."
            )
        found = batch[input_key]
    elif isinstance(batch, (list, tuple)) and batch:
        found = batch[0]
    else:
        found = batch
    if not isinstance(found, Tensor):
        raise ValueError(
            f"{owner} exports models with one tensor input; the batches give "
            f"{type(found).__name__}. Make the first element of each batch the input tensor, or "
            f"pass input_key=... for dict batches."
        )
    return found


def value_range(inputs: Sequence[Tensor]) -> tuple[int, int] | None:
    """Smallest and largest value of integer inputs (token ids); ``None`` for float inputs."""
    if not inputs or inputs[0].is_floating_point():
        return None
    return int(min(int(x.min()) for x in inputs)), int(max(int(x.max()) for x in inputs))


def random_input(
    like: Tensor, shape: Sequence[int], bounds: tuple[int, int] | None = None, seed: int = 0
) -> Tensor:
    """Seeded random input of ``like``'s dtype: normal floats, or integers within ``bounds``.

    Args:
        like: A tensor of the dtype to produce.
        shape: The shape to produce (batch first).
        bounds: Inclusive integer range for integer dtypes; default: ``like``'s own range.
        seed: Generator seed.
    """
    generator = torch.Generator().manual_seed(seed)
    if like.is_floating_point():
        return torch.randn(tuple(shape), generator=generator, dtype=like.dtype)
    low, high = bounds or (int(like.min()), int(like.max()))
    return torch.randint(low, high + 1, tuple(shape), generator=generator, dtype=like.dtype)
