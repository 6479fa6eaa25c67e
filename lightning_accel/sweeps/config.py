"""Sweep files: W&B sweep configs whose parameters are recipe keys, validated before any trial.

A sweep file is a plain W&B sweep configuration, so ``wandb sweep FILE`` accepts it as is. The
trial command names the recipe, the logger and the latency budget::

    method: grid
    metric: {name: sweep/objective, goal: maximize}
    parameters:
      callbacks.pruning.target_sparsity: {values: [0.3, 0.5, 0.7]}
    command: [lightning-accel, fit, --recipe, recipes/resnet18.yaml, --logger, wandb,
              --latency-budget-ms, "1.0", ${args_no_hyphens}]
"""

from __future__ import annotations

import argparse
import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_accel.recipes.files import find_recipe
from lightning_accel.recipes.recipe import Recipe, RecipeError
from lightning_accel.recipes.typecheck import read_yaml
from lightning_accel.sweeps.objective import TRIAL_METRICS

METHODS = ("grid", "random", "bayes")
GOALS = ("maximize", "minimize")
_KEYS = {
    "program", "command", "method", "metric", "parameters", "name", "description",
    "project", "entity", "early_terminate", "run_cap",
}  # fmt: skip
_DISTRIBUTION_KEYS = {"values", "value", "min", "max", "distribution", "q", "mu", "sigma"}
# W&B's distributions that take values, value or min/max (the keys above)
DISTRIBUTIONS = {
    "categorical": "values", "constant": "value", "uniform": "min", "int_uniform": "min",
    "q_uniform": "min", "log_uniform": "min", "log_uniform_values": "min",
    "q_log_uniform": "min", "q_log_uniform_values": "min", "inv_log_uniform": "min",
    "inv_log_uniform_values": "min",
}  # fmt: skip


class SweepError(ValueError):
    """A sweep file that cannot run; the message names the file, the key and the fix."""


@dataclass
class SweepConfig:
    """A validated sweep file.

    Attributes:
        path: The YAML file.
        config: The W&B sweep configuration, as written.
        recipe: The recipe each trial fits.
        fit_args: The trial command's ``fit`` options other than ``--recipe``.
        latency_budget_ms: The budget of ``sweep/objective``, if the command sets one.
        extra_overrides: ``sweep --set`` overrides added to every trial (checked first).
    """

    path: Path
    config: dict[str, Any] = field(repr=False)
    recipe: Path
    fit_args: list[str]
    latency_budget_ms: float | None
    extra_overrides: list[str] = field(default_factory=list)

    @property
    def method(self) -> str:
        return self.config["method"]

    @property
    def metric(self) -> str:
        return self.config["metric"]["name"]

    @property
    def parameters(self) -> dict[str, dict[str, Any]]:
        return self.config["parameters"]

    @property
    def run_cap(self) -> int | None:
        """W&B's ``run_cap``: the most trials the sweep runs, or ``None``."""
        return self.config.get("run_cap")

    def command_overrides(self) -> list[str]:
        """The trial command's overrides (flags translated, ``--set``), then ``sweep --set``'s."""
        from lightning_accel.cli.fit_args import check_recipe_fit_options

        return check_recipe_fit_options(self.fit_args) + self.extra_overrides

    @classmethod
    def from_yaml(cls, path: str | Path, extra_overrides: Sequence[str] = ()) -> SweepConfig:
        """Read and validate a sweep file against W&B's keys and the recipe it sweeps.

        Args:
            path: The sweep file.
            extra_overrides: ``key=value`` recipe overrides for every trial (``sweep --set``).

        Raises:
            SweepError: Naming the file, the key, the bad value and what is allowed.
        """
        path = Path(path)
        if not path.is_file():
            raise SweepError(f"Sweep file {path} does not exist.")
        _, config = read_yaml(path, SweepError)
        if not isinstance(config, dict):
            raise SweepError(f"{path} must hold a mapping of W&B sweep keys (method, metric, ...)")
        unknown = sorted(set(config) - _KEYS)
        if unknown:
            raise SweepError(f"{path}: unknown keys {unknown}; W&B sweeps allow {sorted(_KEYS)}")
        if config.get("method") not in METHODS:
            raise SweepError(
                f"{path}: method must be one of {METHODS}; got {config.get('method')!r}"
            )
        metric = config.get("metric")
        if not isinstance(metric, dict) or not isinstance(metric.get("name"), str):
            raise SweepError(f"{path}: metric must be a mapping with a name and a goal")
        if metric.get("goal", "minimize") not in GOALS:
            raise SweepError(f"{path}: metric.goal must be one of {GOALS}; got {metric['goal']!r}")
        recipe, fit_args, budget = _parse_command(
            path, config.get("command"), config.get("program")
        )
        run_cap = config.get("run_cap")
        if run_cap is not None and not (isinstance(run_cap, int) and run_cap >= 1):
            raise SweepError(f"{path}: run_cap must be an integer >= 1; got {run_cap!r}")
        sweep = cls(path, config, recipe, fit_args, budget, list(extra_overrides))
        try:
            Recipe.from_yaml(recipe, sweep.command_overrides())
        except RecipeError as err:
            raise SweepError(f"{path}: --set: {err}") from err
        sweep._check_parameters()
        sweep._check_metric()
        _check_schema(path, config)  # W&B's own check last: ours name the fix more plainly
        return sweep

    def overrides(self, values: dict[str, Any]) -> list[str]:
        """A trial's parameter values as recipe overrides, ``key=value``."""
        return [f"{key}={json.dumps(value)}" for key, value in values.items()]

    def _check_parameters(self) -> None:
        parameters = self.config.get("parameters")
        if not isinstance(parameters, dict) or not parameters:
            raise SweepError(f"{self.path}: parameters must map recipe keys to value specs")
        for key, spec in parameters.items():
            if not isinstance(spec, dict) or not (set(spec) & {"values", "value", "min"}):
                raise SweepError(
                    f"{self.path}: parameters.{key} must give values: [...], value: x or "
                    f"min/max; got {spec!r}"
                )
            unknown = sorted(set(spec) - _DISTRIBUTION_KEYS)
            if unknown:
                raise SweepError(
                    f"{self.path}: parameters.{key} has unknown keys {unknown}; "
                    f"allowed: {sorted(_DISTRIBUTION_KEYS)}"
                )
            self._check_spec(key, spec)
            if self.method == "grid" and "values" not in spec and "value" not in spec:
                raise SweepError(
                    f"{self.path}: parameters.{key}: a grid sweep needs values: [...] "
                    "(min/max ranges need method: random or bayes)"
                )
            for value in _edge_values(key, spec):
                try:
                    Recipe.from_yaml(
                        self.recipe, self.command_overrides() + self.overrides({key: value})
                    )
                except RecipeError as err:
                    raise SweepError(
                        f"{self.path}: parameter {key}={value!r} does not fit recipe "
                        f"{self.recipe}: {err}"
                    ) from err

    def _check_spec(self, key: str, spec: dict[str, Any]) -> None:
        """One parameter's values, range and distribution have W&B's shapes."""
        where = f"{self.path}: parameters.{key}"
        if "values" in spec and not (isinstance(spec["values"], list) and spec["values"]):
            raise SweepError(
                f"{where}.values must be a non-empty list, e.g. values: [0.3, 0.5]; "
                f"got {spec['values']!r}"
            )
        if ("min" in spec) != ("max" in spec):
            raise SweepError(f"{where} needs both min and max; got {spec!r}")
        for bound in ("min", "max", "q", "mu", "sigma"):
            if bound in spec and not _is_number(spec[bound]):
                raise SweepError(f"{where}.{bound} must be a number; got {spec[bound]!r}")
        if "min" in spec and spec["min"] > spec["max"]:
            raise SweepError(
                f"{where}: min must not exceed max; got min={spec['min']}, max={spec['max']}"
            )
        if "q" in spec and spec["q"] <= 0:
            raise SweepError(f"{where}.q must be > 0; got {spec['q']}")
        distribution = spec.get("distribution")
        if distribution is None:
            return
        if distribution not in DISTRIBUTIONS:
            raise SweepError(
                f"{where}.distribution must be one of {sorted(DISTRIBUTIONS)}; got {distribution!r}"
            )
        needs = DISTRIBUTIONS[distribution]
        if needs not in spec:
            what = {"values": "values: [...]", "value": "value: x"}.get(needs, "min and max")
            raise SweepError(f"{where}: distribution {distribution} needs {what}; got {spec!r}")
        if distribution.endswith("_values") and spec["min"] <= 0:
            raise SweepError(
                f"{where}: distribution {distribution} needs min > 0; got min={spec['min']}"
            )

    def _check_metric(self) -> None:
        logged = metrics_logged_by(Recipe.from_yaml(self.recipe))
        if self.metric not in logged:
            raise SweepError(
                f"{self.path}: metric {self.metric!r} is logged by nothing in {self.recipe}; "
                f"choose one of {sorted(logged)}"
            )


def _check_schema(path: Path, config: dict[str, Any]) -> None:
    """W&B's own schema check, when its sweep engine is installed; deprecations only warn."""
    from lightning_accel.sweeps.engine import schema_problems

    try:
        errors, deprecated = schema_problems(config)
    except ModuleNotFoundError:  # the agent path validates on the server; --local needs it
        return
    if errors:
        raise SweepError(f"{path}: W&B's sweep schema: {'; '.join(errors)}")
    for message in deprecated:
        warnings.warn(f"{path}: {message} (sampled as W&B does)", UserWarning, stacklevel=3)


def metrics_logged_by(recipe: Recipe) -> set[str]:
    """Every metric a run of ``recipe`` logs: its module's, its callbacks' and the trial's."""
    logged = set(TRIAL_METRICS)
    for part in (recipe.build_model(), *recipe.callbacks()):
        names = getattr(part, "logged_metrics", None)
        if callable(names):
            logged.update(names())
    return logged


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _edge_values(key: str, spec: dict[str, Any]) -> list[Any]:
    """A parameter's extreme values as W&B's engine draws them (log bounds are exponents)."""
    if "values" in spec:
        return list(spec["values"])
    if "value" in spec:
        return [spec["value"]]
    try:
        from lightning_accel.sweeps.engine import plain_value, sweep_engine

        sweep_engine()  # installed, or ModuleNotFoundError below
        from sweeps.params import HyperParameter

        parameter = HyperParameter(key, spec)
        return [plain_value(parameter.ppf(0.0), spec), plain_value(parameter.ppf(1.0), spec)]
    except ModuleNotFoundError:  # validated against the raw bounds; trials need the engine
        return [spec["min"], spec["max"]]


def _parse_command(
    path: Path, command: Any, program: Any = None
) -> tuple[Path, list[str], float | None]:
    """The recipe, the other ``fit`` options and the latency budget of the trial command."""
    example = (
        "command: [lightning-accel, fit, --recipe, recipes/resnet18.yaml, --logger, wandb, "
        "${args_no_hyphens}]"
    )
    if not isinstance(command, list) or "fit" not in command:
        raise SweepError(f"{path}: command must run `lightning-accel fit`, e.g. {example}")
    tokens = [str(t) for t in command[command.index("fit") + 1 :] if not str(t).startswith("${")]
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    parser.add_argument("--recipe")
    parser.add_argument("--latency-budget-ms", type=float)
    try:
        known, rest = parser.parse_known_args(tokens)
    except argparse.ArgumentError as err:
        raise SweepError(f"{path}: command: {err}") from err
    if not known.recipe:
        raise SweepError(f"{path}: command names no --recipe, e.g. {example}")
    recipe = _find(Path(known.recipe), path)
    if recipe is None:
        raise SweepError(f"{path}: the command's recipe {known.recipe} does not exist")
    budget = known.latency_budget_ms
    if budget is not None and budget <= 0:
        raise SweepError(f"{path}: --latency-budget-ms must be > 0; got {budget}")
    launcher = [str(t) for t in command[: command.index("fit")]]
    if not _runs_lightning_accel(launcher, program):
        raise SweepError(
            f"{path}: command must run `lightning-accel fit`; it runs {' '.join(launcher)!r} "
            f"(e.g. {example})"
        )
    from lightning_accel.cli.fit_args import check_recipe_fit_options

    try:
        command_overrides = check_recipe_fit_options([*rest, "--recipe", str(recipe)])
    except ValueError as err:
        raise SweepError(f"{path}: command: {err}") from err
    try:
        # The command's own overrides (--set, translated flags) go through the recipe's checks.
        Recipe.from_yaml(recipe, command_overrides)
    except RecipeError as err:
        raise SweepError(f"{path}: command: {err}") from err
    return recipe, rest, budget


def _runs_lightning_accel(launcher: list[str], program: Any) -> bool:
    """Whether the words before ``fit`` start this package's command line, nothing else."""
    if launcher[:1] == ["${env}"]:
        launcher = launcher[1:]
    if launcher in (["lightning-accel"], ["${program}"] if program == "lightning-accel" else []):
        return True
    # A bare interpreter name only: a path (/tmp/x/python) could be any program.
    python = launcher[:1] == ["${interpreter}"] or (
        bool(launcher) and re.fullmatch(r"python[\d.]*", launcher[0]) is not None
    )
    return python and launcher[1:] == ["-m", "lightning_accel.cli"]


def _find(recipe: Path, sweep_file: Path) -> Path | None:
    """The recipe by path (from here or the sweep file's folders) or bundled name.

    Relative to the working folder, to the sweep file's folder or one above it, else a bundled
    recipe of that name, so a sweep file runs from any folder.
    """
    return find_recipe(recipe, *sweep_file.resolve().parents)
