"""Where a local sweep looks next: grid and random here; Bayesian through W&B's own engine."""

from __future__ import annotations

import itertools
import math
import random
import warnings
from typing import Any

from lightning_accel.sweeps.config import SweepConfig

SWEEPS_INSTALL_HINT = (
    "pip install --no-deps sweeps jsonref jsonschema (W&B's sweep engine; --no-deps because its "
    "metadata pins numpy<2, though it runs with numpy 2)"
)


def grid_points(sweep: SweepConfig) -> list[dict[str, Any]]:
    """Every combination of the parameters' values, in file order."""
    keys = list(sweep.parameters)
    choices = [_values(sweep.parameters[k]) for k in keys]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*choices)]


def random_point(sweep: SweepConfig, rng: random.Random) -> dict[str, Any]:
    """One random sample of every parameter.

    ``values`` are chosen uniformly; ``min``/``max`` ranges are sampled uniformly (integers when
    both bounds are integers or with ``distribution: int_uniform``; rounded to ``q`` with
    ``q_uniform``; log-uniformly with ``log_uniform_values`` and ``q_log_uniform_values``).

    Raises:
        ValueError: If a parameter uses a W&B distribution this local search does not sample
            (it is never replaced by another one), naming the parameter and the choices.
    """
    return {key: _sample(key, spec, rng) for key, spec in sweep.parameters.items()}


def bayes_point(sweep: SweepConfig, finished: list[tuple[dict[str, Any], float | None]]) -> dict:
    """The next point of W&B's Bayesian search, given the finished trials and their metric.

    Raises:
        ModuleNotFoundError: If W&B's ``sweeps`` engine is not installed, naming the command.
    """
    try:
        with warnings.catch_warnings():  # its pydantic v1-style config warns on import
            warnings.simplefilter("ignore")
            import sweeps
    except ImportError as err:
        raise ModuleNotFoundError(
            f"method: bayes in a local sweep needs W&B's sweep engine: {SWEEPS_INSTALL_HINT}. "
            "Grid and random sweeps run without it."
        ) from err
    config = {k: sweep.config[k] for k in ("method", "metric", "parameters")}
    runs = [
        sweeps.SweepRun(
            name=f"trial-{i}",
            state=sweeps.RunState.finished,
            config={k: {"value": v} for k, v in values.items()},
            summary_metrics={sweep.metric: metric} if metric is not None else {},
        )
        for i, (values, metric) in enumerate(finished)
    ]
    proposal = sweeps.next_run(config, runs, validate=True)
    return {k: _plain(v["value"]) for k, v in proposal.config.items()}


def _values(spec: dict[str, Any]) -> list[Any]:
    return list(spec["values"]) if "values" in spec else [spec["value"]]


LOCAL_DISTRIBUTIONS = (
    "categorical", "constant", "uniform", "int_uniform", "q_uniform", "log_uniform_values",
    "q_log_uniform_values",
)  # fmt: skip


def _sample(key: str, spec: dict[str, Any], rng: random.Random) -> Any:
    distribution = spec.get("distribution")
    if distribution is not None and distribution not in LOCAL_DISTRIBUTIONS:
        raise ValueError(
            f"parameters.{key}: distribution {distribution!r} is not sampled by a local random "
            f"sweep (it samples {list(LOCAL_DISTRIBUTIONS)}); use one of those, or run the file "
            "with the W&B agent (without --local)"
        )
    if "values" in spec or "value" in spec:
        return rng.choice(_values(spec))
    low, high = spec["min"], spec["max"]
    if distribution in ("log_uniform_values", "q_log_uniform_values"):
        value = math.exp(rng.uniform(math.log(low), math.log(high)))
    elif distribution == "int_uniform" or (
        distribution is None and isinstance(low, int) and isinstance(high, int)
    ):
        return rng.randint(int(low), int(high))
    else:
        value = rng.uniform(low, high)
    return round(value / spec["q"]) * spec["q"] if "q" in spec else value


def _plain(value: Any) -> Any:
    """Numpy scalars to Python numbers, so overrides print cleanly."""
    return value.item() if hasattr(value, "item") else value
