"""A sweep's outcome: its trials, the accuracy-vs-latency Pareto front, a table, a W&B record."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal


@dataclass
class Trial:
    """One trial of a sweep.

    Attributes:
        number: Its position in the sweep, from 0.
        values: The swept recipe keys and their values.
        result: Its ``sweep/*`` metrics and the last value of every metric it logged, or
            ``None`` if it failed.
        error: Why it failed, or ``None``.
        seconds: Wall time.
        folder: Where its files are.
    """

    number: int
    values: dict[str, Any]
    result: dict[str, float] | None = None
    error: str | None = None
    seconds: float = 0.0
    folder: str = ""
    pareto: bool = field(default=False)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def mark_pareto_front(trials: list[Trial]) -> list[Trial]:
    """Flag the finished trials no other trial beats on both accuracy and latency; return them.

    Latencies closer than their measured spread are a tie, not a trade-off: two trials count
    as equally fast when their batch-1 latencies differ by no more than the larger of their
    interquartile ranges (``sweep/latency_iqr_ms``, measured with the latency). A trial is
    dominated when another is at least as accurate and at least as fast (within that spread),
    and strictly better on one of the two.
    """
    done = [t for t in trials if t.result is not None]
    front = []
    for trial in done:
        trial.pareto = not any(_dominates(other, trial) for other in done if other is not trial)
        if trial.pareto:
            front.append(trial)
    return sorted(front, key=lambda t: t.result["sweep/latency_ms"])  # type: ignore[index]


def latency_tolerance(a: dict[str, float], b: dict[str, float]) -> float:
    """Milliseconds within which two trials' latencies tie: the larger measured spread."""
    return max(a.get("sweep/latency_iqr_ms", 0.0), b.get("sweep/latency_iqr_ms", 0.0))


def _dominates(other: Trial, trial: Trial) -> bool:
    a, b = other.result, trial.result
    assert a is not None and b is not None  # finished trials only
    tolerance = latency_tolerance(a, b)
    acc_a, acc_b = a["sweep/accuracy"], b["sweep/accuracy"]
    ms_a, ms_b = a["sweep/latency_ms"], b["sweep/latency_ms"]
    as_fast = ms_a <= ms_b + tolerance
    faster = ms_a < ms_b - tolerance
    return acc_a >= acc_b and as_fast and (acc_a > acc_b or faster)


def format_trials(trials: list[Trial], metric: str) -> str:
    """A Markdown table of trials: values, accuracy, latency, the swept metric, Pareto flag."""
    keys = list(trials[0].values) if trials else []
    header = ["#", *keys, "accuracy %", "ms @b1", metric, "Pareto"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for t in trials:
        cells = [str(t.number), *(_short(t.values.get(k)) for k in keys)]
        if t.result is None:
            cells += ["-", "-", f"failed: {(t.error or '')[:60]}", ""]
        else:
            value = t.result.get(metric)
            cells += [
                f"{100 * t.result['sweep/accuracy']:.2f}",
                f"{t.result['sweep/latency_ms']:.3f}",
                f"{value:.4g}" if isinstance(value, float) else "-",
                "*" if t.pareto else "",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def log_sweep_to_wandb(
    trials: list[Trial], sweep_name: str, save_dir: Path, project: str = "lightning-accel"
) -> Path | None:
    """Log the trial table and an accuracy-vs-latency chart as one W&B run; return its folder.

    The run is offline without credentials.

    Args:
        trials: The sweep's trials, with ``pareto`` already marked (see
            :func:`mark_pareto_front`).
        sweep_name: Prefix of the run name, ``<sweep_name>-summary``.
        save_dir: Folder for W&B's files; created if missing.
        project: W&B project.

    Returns:
        The run's local folder (under ``save_dir/wandb``).
    """
    import wandb

    from lightning_accel.tracking.wandb_logging import has_wandb_credentials

    online = has_wandb_credentials() and os.environ.get("WANDB_MODE") != "offline"
    mode: Literal["online", "offline"] = "online" if online else "offline"
    save_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=project, name=f"{sweep_name}-summary", dir=str(save_dir), mode=mode,
        job_type="sweep-summary", reinit="finish_previous",
    )  # fmt: skip
    keys = list(trials[0].values) if trials else []
    columns: list[str | int] = [
        "trial",
        *keys,
        "accuracy",
        "latency_ms",
        "objective",
        "pareto",
        "error",
    ]
    rows = [
        [
            t.number,
            *(_short(t.values.get(k)) for k in keys),
            t.result["sweep/accuracy"] if t.result else None,
            t.result["sweep/latency_ms"] if t.result else None,
            t.result["sweep/objective"] if t.result else None,
            t.pareto,
            t.error,
        ]
        for t in trials
    ]
    table = wandb.Table(columns=columns, data=rows)
    run.log(
        {
            "sweep/trials": table,
            "sweep/accuracy_vs_latency": wandb.plot.scatter(
                table, "latency_ms", "accuracy", title="accuracy vs latency (batch 1)"
            ),
        }
    )
    front = [t for t in trials if t.pareto]
    run.summary["sweep/pareto_trials"] = [t.number for t in front]
    run.summary["sweep/finished"] = sum(t.result is not None for t in trials)
    folder = Path(run.dir).parent
    run.finish()
    wandb.teardown()  # wandb reads its settings once per process; later runs here start clean
    return folder


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
