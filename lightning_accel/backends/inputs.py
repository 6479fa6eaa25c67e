"""Seeded random inputs every CPU backend times with, drawn per dtype like the real data."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def random_batch(
    dims: Sequence[int],
    dtype: np.dtype | type,
    batch_size: int,
    input_bounds: tuple[int, int] | None = None,
) -> np.ndarray:
    """A seeded batch ``[batch_size, *dims]`` of the graph input's dtype.

    Args:
        dims: The input's static non-batch dimensions.
        dtype: The input's numpy dtype.
        batch_size: Rows.
        input_bounds: Inclusive range of integer inputs (token ids); default ``(0, 1)``, valid
            for any embedding. Float inputs are standard normal.
    """
    rng = np.random.default_rng(0)
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
        low, high = input_bounds or (0, 1)
        return rng.integers(low, high + 1, (batch_size, *dims)).astype(dtype)
    return rng.standard_normal((batch_size, *dims)).astype(dtype)
