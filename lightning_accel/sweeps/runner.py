"""Running a sweep: locally (no W&B server; each trial an offline W&B run) or with W&B's agent."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning_accel.sweeps.config import SweepConfig
from lightning_accel.sweeps.results import Trial
from lightning_accel.sweeps.search import bayes_point, grid_points, random_point


def trial_command(
    sweep: SweepConfig, values: dict[str, Any], folder: Path, quick: bool
) -> list[str]:
    """The ``lightning-accel fit`` command line of one trial, run by this Python.

    Args:
        sweep: The validated sweep file.
        values: This trial's value of each swept recipe key, passed as overrides.
        folder: The trial's ``--output-dir``.
        quick: Add ``--quick`` (a smoke run).

    Returns:
        The argument list, starting with ``sys.executable``.
    """
    command = [sys.executable, "-m", "lightning_accel.cli", "fit", "--recipe", str(sweep.recipe)]
    command += sweep.fit_args + ["--output-dir", str(folder)]
    if sweep.latency_budget_ms is not None:
        command += ["--latency-budget-ms", str(sweep.latency_budget_ms)]
    if quick:
        command.append("--quick")
    for override in sweep.extra_overrides:
        command += ["--set", override]
    return command + sweep.overrides(values)


def run_trial(sweep: SweepConfig, trial: Trial, folder: Path, quick: bool) -> Trial:
    """Fit one trial in a fresh process and fill in its result or its error.

    A fresh process keeps W&B's per-process state from leaking between trials. The trial's
    output goes to ``folder/trial.log``.

    Args:
        sweep: The validated sweep file.
        trial: The trial to run; filled in place.
        folder: The trial's output folder; created if missing.
        quick: Run as a smoke run (``fit --quick``).

    Returns:
        ``trial``, with ``seconds``, ``folder`` and either ``result`` (read from
        ``folder/<recipe stem>/trial.json``) or ``error`` set.
    """
    folder.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "WANDB_SILENT": "true",
        "WANDB_DIR": str(folder),
        # Named after its values and grouped by sweep, as the W&B agent's trials are compared.
        "WANDB_NAME": trial_name(trial),
        "WANDB_RUN_GROUP": sweep.config.get("name") or sweep.path.stem,
        "WANDB_JOB_TYPE": "sweep-trial",
    }
    started = time.perf_counter()
    with open(folder / "trial.log", "w") as log:
        completed = subprocess.run(
            trial_command(sweep, trial.values, folder, quick),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            stdin=subprocess.DEVNULL,
        )
    trial.seconds = time.perf_counter() - started
    trial.folder = str(folder)
    result_file = folder / sweep.recipe.stem / "trial.json"
    if completed.returncode == 0 and result_file.is_file():
        trial.result = {
            k: v for k, v in json.loads(result_file.read_text()).items() if k != "overrides"
        }
    else:
        tail = (folder / "trial.log").read_text().strip().splitlines()[-1:] or [""]
        trial.error = f"exit {completed.returncode}: {tail[0]} (log: {folder / 'trial.log'})"
    return trial


def trial_name(trial: Trial) -> str:
    """A trial's run name: its number and swept values, e.g. ``trial-2 target_sparsity=0.7``."""
    shown = " ".join(
        f"{key.rpartition('.')[2]}={value:.4g}"
        if isinstance(value, float)
        else f"{key.rpartition('.')[2]}={value}"
        for key, value in trial.values.items()
    )
    return f"trial-{trial.number} {shown}".strip()


def run_local(
    sweep: SweepConfig,
    count: int | None,
    output_dir: Path,
    quick: bool = False,
    seed: int = 0,
    progress: Callable[[str], None] = print,
) -> list[Trial]:
    """Run a sweep here, without a W&B server: grid and random always, bayes with ``sweeps``.

    Args:
        sweep: The validated sweep file.
        count: Trials to run; ``None`` runs the whole grid (required for random and bayes).
        output_dir: Each trial writes under ``output_dir/trial-<n>``.
        quick: Run each trial as a smoke run (``fit --quick``).
        seed: Seed of random search.
        progress: Called with one line per trial.

    ``run_cap`` caps the trials as on the W&B server; ``early_terminate`` is refused (its
    hyperband stopping reads each running trial's metric history, which only the W&B server
    keeps).

    Raises:
        ValueError: If ``count`` is missing for random or bayes (without ``run_cap``), or below
            1, or the file sets ``early_terminate``.
    """
    if count is not None and count < 1:
        raise ValueError(f"--count must be >= 1; got {count}")
    if "early_terminate" in sweep.config:
        raise ValueError(
            f"{sweep.path}: early_terminate (hyperband) stops running trials from the metric "
            "history W&B's server keeps; a --local sweep cannot honour it. Remove the key, or "
            "run the file with the W&B agent (without --local)."
        )
    grid = grid_points(sweep) if sweep.method == "grid" else []
    limits = [n for n in (count, sweep.run_cap) if n is not None]
    if sweep.method == "grid":
        total = min([len(grid), *limits])
    elif not limits:
        raise ValueError(
            f"A {sweep.method} sweep never ends by itself: pass --count N (or set run_cap)."
        )
    else:
        total = min(limits)
    trials: list[Trial] = []
    for number in range(total):
        if sweep.method == "grid":
            values = grid[number]
        elif sweep.method == "random":
            values = random_point(sweep, f"{seed}-{number}")
        else:
            values = bayes_point(sweep, [(t.values, _metric(t, sweep.metric)) for t in trials])
        progress(f"trial {number + 1}/{total}: {sweep.overrides(values)}")
        trial = run_trial(sweep, Trial(number, values), output_dir / f"trial-{number}", quick)
        value = _metric(trial, sweep.metric)
        missing = trial.error or f"{sweep.metric} not reported"
        outcome = f"{sweep.metric}={value:.4g}" if value is not None else missing
        progress(f"trial {number + 1}/{total}: {outcome}")
        trials.append(trial)
    return trials


def run_with_agent(sweep: SweepConfig, count: int | None, project: str) -> str:
    """Create the sweep on the W&B server and run W&B's agent here for ``count`` trials.

    Needs W&B credentials and ``lightning-accel`` on ``PATH`` (the agent runs the file's
    ``command``).

    Args:
        sweep: The validated sweep file; its ``config`` is sent to W&B as is.
        count: Trials for the agent to run; ``None``: until the sweep ends or is stopped.
        project: W&B project to create the sweep in.

    Returns:
        The W&B sweep id.

    Raises:
        ValueError: Without credentials (use ``--local``): bad input, exit code 2.
        RuntimeError: Without ``lightning-accel`` on ``PATH``, or when the agent exits with an
            error.
    """
    import wandb

    from lightning_accel.tracking.wandb_logging import has_wandb_credentials

    if not has_wandb_credentials():
        raise ValueError(
            "No W&B credentials (WANDB_API_KEY or `wandb login`): the W&B agent needs the "
            "server. Run the same file without one: lightning-accel sweep FILE --local --count N"
        )
    if shutil.which("lightning-accel") is None:
        raise RuntimeError("The W&B agent runs `lightning-accel`, which is not on PATH.")
    config = dict(sweep.config)
    if sweep.extra_overrides:  # sweep --set: into the command every trial runs
        command = list(config["command"])
        at = next((i for i, t in enumerate(command) if str(t).startswith("${args")), len(command))
        extra = [w for o in sweep.extra_overrides for w in ("--set", o)]
        config["command"] = command[:at] + extra + command[at:]
    sweep_id = wandb.sweep(config, project=project)
    agent = ["wandb", "agent", "--project", project, sweep_id]
    if count is not None:
        agent[2:2] = ["--count", str(count)]
    if subprocess.run(agent, stdin=subprocess.DEVNULL).returncode != 0:
        raise RuntimeError(f"`{' '.join(agent)}` failed; see its output above.")
    return sweep_id


def fetch_agent_trials(sweep: SweepConfig, sweep_id: str, project: str) -> list[Trial]:
    """The finished runs of a W&B sweep, read back through W&B's public API.

    Args:
        sweep: The sweep file; its ``parameters`` name the values read from each run's config.
        sweep_id: The id :func:`run_with_agent` returned.
        project: W&B project of the sweep, under the API's default entity.

    Returns:
        One trial per run of the sweep; a run that logged no ``sweep/accuracy`` becomes a trial
        with ``error`` set.
    """
    import wandb

    api = wandb.Api()
    remote = api.sweep(f"{api.default_entity}/{project}/{sweep_id}")
    trials = []
    for number, run in enumerate(remote.runs):
        values = {k: run.config.get(k) for k in sweep.parameters}
        summary = {k: run.summary.get(k) for k in ("sweep/objective", "sweep/accuracy")}
        if summary["sweep/accuracy"] is None:
            trials.append(Trial(number, values, error=f"run {run.id} logged no sweep/accuracy"))
            continue
        result = {k: float(run.summary[k]) for k in run.summary.keys() if k.startswith("sweep/")}
        trials.append(Trial(number, values, result=result, folder=run.url))
    return trials


def _metric(trial: Trial, name: str) -> float | None:
    return trial.result.get(name) if trial.result is not None else None
