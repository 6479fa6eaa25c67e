"""The model's input inside a batch, and random inputs of the right dtype when none exist.

Export, verification and timing feed the model what its data holds: float images, int64
token ids, several positional inputs (a batch ``((image, token_ids), label)`` gives the tuple
``(image, token_ids)``), or the entry of a dict batch named by ``input_key``. Random inputs
stand in only where no batch exists, drawn per dtype (integers within the range real batches
showed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

# One input tensor, or several positional inputs (e.g. an image and int64 token ids).
ModelInput = Tensor | tuple[Tensor, ...]


def model_input(
    batch: Any, input_key: str | None = None, owner: str = "ExportOnFitEnd"
) -> ModelInput:
    """What a batch feeds the model: the batch itself, its first element, or a dict entry.

    A first element (or dict entry) that is a tuple or list of tensors gives several
    positional inputs, returned as a tuple in that order: the model is called
    ``model(*inputs)``.

    Args:
        batch: A batch as the dataloader yields it: a tensor, a tuple/list whose first element
            is the input (one tensor or a tuple/list of tensors), or a dict.
        input_key: For dict batches, the key holding the model's input.
        owner: Who asks, for messages (the argument to set is ``{owner}(input_key=...)``).

    Raises:
        ValueError: If the input is neither a tensor nor a tuple of tensors, or a dict batch
            has no (or another) key.
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
    if isinstance(found, (list, tuple)) and found and all(isinstance(t, Tensor) for t in found):
        return tuple(found)
    if not isinstance(found, Tensor):
        raise ValueError(
            f"{owner} exports models whose input is a tensor or a tuple of tensors (several "
            f"positional inputs); the batches give {type(found).__name__}. Make the first "
            "element of each batch the input (a tensor, or a tuple of tensors), or pass "
            "input_key=... for dict batches."
        )
    return found


def as_tuple(inputs: ModelInput) -> tuple[Tensor, ...]:
    """The positional inputs: ``(inputs,)`` for one tensor, the tuple itself for several."""
    return inputs if isinstance(inputs, tuple) else (inputs,)


def map_inputs(inputs: ModelInput, fn: Any) -> ModelInput:
    """``fn`` applied to each input tensor, keeping one tensor or a tuple as given."""
    if isinstance(inputs, tuple):
        return tuple(fn(t) for t in inputs)
    return fn(inputs)  # type: ignore[no-any-return]


def first_rows(inputs: ModelInput, rows: int = 1) -> ModelInput:
    """The first ``rows`` rows of each input (batch first)."""
    return map_inputs(inputs, lambda t: t[:rows])


def call_model(model: Any, inputs: ModelInput) -> Any:
    """``model(inputs)`` for one tensor, ``model(*inputs)`` for several."""
    return model(*as_tuple(inputs))


def describe(inputs: ModelInput) -> str:
    """Shapes and dtypes, e.g. ``(2, 1, 8, 8) float32, (2, 8) int64``, for messages."""
    return ", ".join(
        f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}" for t in as_tuple(inputs)
    )


def value_range(inputs: Sequence[ModelInput]) -> tuple[int, int] | None:
    """Smallest and largest value of the integer inputs (token ids); ``None`` without any.

    With several inputs, the float ones are skipped and the range covers every integer one.
    """
    integers = [t for x in inputs for t in as_tuple(x) if not t.is_floating_point()]
    if not integers:
        return None
    return int(min(int(x.min()) for x in integers)), int(max(int(x.max()) for x in integers))


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


def graph_input_names(onnx_path: Any) -> list[str]:
    """The ONNX graph's inputs in order (initializers left out), read without external data."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return [i.name for i in graph.input if i.name not in initializers]


def runtime_feed(inputs: ModelInput, names: Sequence[str]) -> np.ndarray | dict[str, np.ndarray]:
    """What a compiled model's ``run`` takes: one array, or a dict by graph input name.

    Args:
        inputs: One tensor, or several positional inputs (on the CPU).
        names: The graph's input names (:func:`graph_input_names`), in positional order.

    Raises:
        ValueError: If the number of inputs differs from the graph's.
    """
    arrays = [t.detach().cpu().numpy() for t in as_tuple(inputs)]
    if len(arrays) != len(names):
        raise ValueError(
            f"The ONNX graph has {len(names)} inputs {list(names)}, but {len(arrays)} were given."
        )
    if len(arrays) == 1:
        return arrays[0]
    return dict(zip(names, arrays, strict=True))


def repeat_rows(
    feed: np.ndarray | dict[str, np.ndarray], batch_size: int
) -> np.ndarray | dict[str, np.ndarray]:
    """A timing batch of ``batch_size`` rows from each input's rows (dtypes kept)."""

    def repeat(example: np.ndarray) -> np.ndarray:
        shape = (batch_size, *example.shape[1:])
        return np.resize(example, shape).astype(example.dtype, copy=False)

    if isinstance(feed, dict):
        return {name: repeat(x) for name, x in feed.items()}
    return repeat(feed)
