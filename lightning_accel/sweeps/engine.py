"""W&B's sweep engine (package ``sweeps``): loading it, its schema check, its values as Python."""

from __future__ import annotations

import warnings
from typing import Any

SWEEPS_INSTALL_HINT = (
    "pip install 'lightning-accel[sweeps]' (W&B's sweep engine, package `sweeps`; or pip install "
    "--no-deps sweeps jsonref jsonschema: its metadata pins numpy<2, though it runs with numpy 2)"
)


def sweep_engine() -> Any:
    """W&B's ``sweeps`` package.

    Raises:
        ModuleNotFoundError: If it is not installed, naming the install command.
    """
    try:
        with warnings.catch_warnings():  # its pydantic v1-style config warns on import
            warnings.simplefilter("ignore")
            import sweeps
    except ImportError as err:
        raise ModuleNotFoundError(
            f"A local sweep draws its trials with W&B's sweep engine: {SWEEPS_INSTALL_HINT}."
        ) from err
    return sweeps


def schema_problems(config: dict[str, Any]) -> tuple[list[str], list[str]]:
    """W&B's own schema check of a sweep configuration: ``(errors, deprecations)``.

    Deprecated distributions (``log_uniform`` with exponent bounds, ``q_log_uniform``,
    ``inv_log_uniform``) still sample as W&B defines them; they are returned apart, to warn.
    """
    problems = sweep_engine().schema_violations_from_proposed_config(config)
    deprecated = [p for p in problems if "base-e exponents" in p]
    return [p for p in problems if p not in deprecated], deprecated


def plain_value(value: Any, spec: dict[str, Any]) -> Any:
    """A drawn value as a plain Python number; whole numbers of an integer-``q`` grid as ints.

    W&B's ``q_*`` distributions return floats (``32.0``) even with an integer step; a recipe key
    typed ``int`` (a batch size) takes the integer.
    """
    value = value.item() if hasattr(value, "item") else value
    quantized = str(spec.get("distribution", "")).startswith("q_")
    step = spec.get("q", 1)
    if quantized and isinstance(step, int) and isinstance(value, float) and value.is_integer():
        return int(value)
    return value
