"""Where a local sweep looks next: W&B's own sweep engine (``sweeps``) for every method.

Grid, random and Bayesian search, and every W&B distribution (``log_uniform`` bounds are
exponents, ``q_log_uniform_values`` is log-uniform then rounded, ...), are drawn by the same
code the W&B server runs, so a ``--local`` sweep samples what ``wandb agent`` would.
"""

from __future__ import annotations

import random
from typing import Any

from lightning_accel.sweeps.config import SweepConfig
from lightning_accel.sweeps.engine import plain_value, sweep_engine


def grid_points(sweep: SweepConfig) -> list[dict[str, Any]]:
    """Every point of a grid sweep, in the order W&B's grid search proposes them."""
    engine = sweep_engine()
    config = _engine_config(sweep, "grid")
    points: list[dict[str, Any]] = []
    runs: list[Any] = []
    while True:
        proposal = engine.next_run(config, runs, validate=False)
        if proposal is None:
            return points
        runs.append(
            engine.SweepRun(
                name=f"trial-{len(runs)}", state=engine.RunState.finished, config=proposal.config
            )
        )
        points.append(_values(proposal.config, sweep))


def random_point(sweep: SweepConfig, seed: int | str = 0) -> dict[str, Any]:
    """One sample of every parameter, drawn by W&B's random search.

    Args:
        sweep: The validated sweep file.
        seed: Seeds the draw (the engine samples with Python's ``random``; its state is put
            back afterwards), e.g. ``f"{sweep_seed}-{trial}"``.
    """
    engine = sweep_engine()
    state = random.getstate()
    random.seed(seed)
    try:
        proposal = engine.next_run(_engine_config(sweep, "random"), [], validate=False)
    finally:
        random.setstate(state)
    return _values(proposal.config, sweep)


def bayes_point(sweep: SweepConfig, finished: list[tuple[dict[str, Any], float | None]]) -> dict:
    """The next point of W&B's Bayesian search, given the finished trials and their metric."""
    engine = sweep_engine()
    runs = [
        engine.SweepRun(
            name=f"trial-{i}",
            state=engine.RunState.finished,
            config={k: {"value": v} for k, v in values.items()},
            summary_metrics={sweep.metric: metric} if metric is not None else {},
        )
        for i, (values, metric) in enumerate(finished)
    ]
    proposal = engine.next_run(_engine_config(sweep, "bayes"), runs, validate=False)
    return _values(proposal.config, sweep)


def _engine_config(sweep: SweepConfig, method: str) -> dict[str, Any]:
    return {"method": method, "metric": sweep.config["metric"], "parameters": sweep.parameters}


def _values(config: dict[str, Any], sweep: SweepConfig | None = None) -> dict[str, Any]:
    specs = sweep.parameters if sweep is not None else {}
    return {k: plain_value(v["value"], specs.get(k, {})) for k, v in config.items()}
