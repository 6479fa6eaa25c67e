"""Argument checks shared by constructors: each error names the argument, the value and a fix.

``bool`` is refused wherever a number is expected (``True`` is not a batch size), and strings
are never converted (``"0.1"`` is refused rather than guessed at).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def check_int(
    value: object, argument: str, example: str, minimum: int = 1, optional: bool = False
) -> int | None:
    """An integer ``>= minimum`` (``None`` too when ``optional``); ``bool`` is refused.

    Args:
        value: The value given.
        argument: The argument's name, for the message.
        example: A valid call, for the message.
        minimum: The smallest allowed value.
        optional: Whether ``None`` is allowed.

    Returns:
        ``value`` unchanged.

    Raises:
        ValueError: Naming the argument, the value and an example.

    Example:
        >>> check_int(64, "batch_size", "DigitsDataModule(batch_size=64)")
        64
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        allowed = f"an integer >= {minimum}" + (" or None" if optional else "")
        raise ValueError(f"{argument} must be {allowed}; got {value!r}. Example: {example}")
    return value


def check_number(
    value: object,
    argument: str,
    example: str,
    low: float,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite real number from ``low`` to ``high``; strings, ``bool``, NaN and inf are refused.

    Args:
        value: The value given.
        argument: The argument's name, for the message.
        example: A valid call, for the message.
        low: Smallest allowed value (excluded when ``low_open``).
        high: Largest allowed value (excluded when ``high_open``); ``math.inf``: no upper bound.
        low_open: Whether ``low`` itself is refused, e.g. a learning rate of 0.
        high_open: Whether ``high`` itself is refused, e.g. a fraction of 1.

    Returns:
        ``value`` as a ``float``.

    Raises:
        ValueError: Naming the argument, the range, the value and an example.

    Example:
        >>> check_number(0.05, "lr", "ClassificationModule('small_cnn', lr=0.05)", 0, low_open=True)
        0.05
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < low
        or value > high
        or (low_open and value == low)
        or (high_open and value == high)
    ):
        raise ValueError(
            f"{argument} must be {_describe_range(low, high, low_open, high_open)}; got "
            f"{value!r}. Example: {example}"
        )
    return float(value)


def _describe_range(low: float, high: float, low_open: bool, high_open: bool) -> str:
    """``"a number in [0, 1]"`` (the callbacks' wording), or ``"a finite number > 0"``."""
    if math.isinf(high):
        return f"a finite number {'>' if low_open else '>='} {low}"
    return f"a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def check_bool(value: object, argument: str) -> bool:
    """``True`` or ``False``, nothing else (``0``, ``"yes"`` and ``None`` are refused).

    Args:
        value: The value given.
        argument: The argument's name, for the message.

    Returns:
        ``value`` unchanged.

    Raises:
        ValueError: Naming the argument and the value.
    """
    if not isinstance(value, bool):
        raise ValueError(f"{argument} must be True or False; got {value!r}")
    return value


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


def check_patterns(value: object, argument: str) -> list[str]:
    """Glob patterns over layer names: one string or a list of strings.

    Raises:
        ValueError: Naming the argument and the first item that is not a string.
    """
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
        raise ValueError(
            f"{argument} must be a glob pattern or a list of them (strings); got {value!r}. "
            f"Example: {argument}=['model.fc', 'model.layer4.*']"
        )
    return list(items)


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
    if isinstance(end_epoch, bool) or not isinstance(end_epoch, int):
        raise ValueError(
            f"end_epoch must be an integer or None; got {end_epoch!r}. Example: {example}"
        )
    if end_epoch <= start_epoch:
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
        or len(set(value)) != len(value)
    ):
        raise ValueError(
            f"{argument} must be positive integers, each once; got {value!r}. "
            f"Example: {argument}=(1, 64)"
        )
    return tuple(value)
