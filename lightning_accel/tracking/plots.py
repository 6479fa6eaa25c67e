"""PNG charts a run leaves beside ``summary.json``, readable without a W&B server.

Drawn with matplotlib (the ``plots`` extra: ``pip install 'lightning-accel[plots]'``), on its
file-only ``Agg`` backend. Without matplotlib nothing is drawn and :func:`plots_available`
says why once; the CSV of per-epoch metrics is written either way.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PLOTS_INSTALL_HINT = "pip install 'lightning-accel[plots]' (matplotlib)"


def plots_available() -> str | None:
    """``None`` when matplotlib is installed, else a one-line note with the install command."""
    if importlib.util.find_spec("matplotlib") is None:
        return f"No PNG charts: matplotlib is not installed ({PLOTS_INSTALL_HINT})."
    return None


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def plot_epochs(rows: Sequence[Mapping[str, Any]], path: Path, latency_key: str | None) -> Path:
    """Accuracy (and latency, when measured) per epoch, one panel each.

    Args:
        rows: One mapping per epoch with ``epoch`` and any of ``val/acc`` and ``latency_key``.
        path: The PNG file.
        latency_key: The latency column, e.g. ``"latency/onnxruntime/b1_ms"``; ``None``: none.

    Returns:
        ``path``.
    """
    plt = _pyplot()
    panels = [("val/acc", "validation accuracy")]
    if latency_key and any(latency_key in row for row in rows):
        panels.append((latency_key, f"{latency_key} (ms)"))
    figure, axes = plt.subplots(len(panels), 1, figsize=(6, 2.6 * len(panels)), squeeze=False)
    for ax, (key, label) in zip(axes[:, 0], panels, strict=True):
        points = [(row["epoch"], row[key]) for row in rows if row.get(key) is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("epoch")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_accuracy_vs_latency(
    rows: Sequence[Mapping[str, Any]],
    latency_key: str | None,
    final: tuple[float, float] | None,
    baseline_ms: float | None,
    path: Path,
) -> Path:
    """Accuracy against batch-1 latency: each epoch measured, the final model, the baseline.

    Args:
        rows: Per-epoch rows; those with ``val/acc`` and ``latency_key`` become points.
        latency_key: The per-epoch latency column, or ``None``.
        final: ``(latency_ms, accuracy)`` of the exported model, or ``None``.
        baseline_ms: The uncompressed baseline's latency, drawn as a vertical line (its
            accuracy is not measured at export), or ``None``.
        path: The PNG file.

    Returns:
        ``path``.
    """
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(6, 4))
    if latency_key:
        points = [r for r in rows if None not in (r.get(latency_key), r.get("val/acc"))]
        ax.plot(
            [r[latency_key] for r in points],
            [r["val/acc"] for r in points],
            marker="o",
            alpha=0.6,
            label="per epoch (LatencyMonitor)",
        )
        for r in points:
            ax.annotate(str(r["epoch"]), (r[latency_key], r["val/acc"]), fontsize=7)
    if final is not None:
        ax.scatter([final[0]], [final[1]], color="C3", s=60, zorder=3, label="final model")
    if baseline_ms is not None:
        ax.axvline(baseline_ms, color="grey", linestyle="--", label="baseline latency")
    ax.set_xlabel("latency, batch 1 (ms)")
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_pareto(trials: Sequence[Any], path: Path) -> Path:
    """A sweep's finished trials, accuracy against batch-1 latency, with the Pareto front.

    Args:
        trials: :class:`~lightning_accel.sweeps.results.Trial` objects, Pareto already marked;
            error bars show each latency's measured interquartile range.
        path: The PNG file.

    Returns:
        ``path``.
    """
    plt = _pyplot()
    done = [t for t in trials if t.result is not None]
    figure, ax = plt.subplots(figsize=(6, 4))
    for on_front in (False, True):
        group = [t for t in done if t.pareto == on_front]
        if not group:
            continue
        ax.errorbar(
            [t.result["sweep/latency_ms"] for t in group],
            [t.result["sweep/accuracy"] for t in group],
            xerr=[t.result.get("sweep/latency_iqr_ms", 0.0) / 2 for t in group],
            fmt="o",
            color="C3" if on_front else "C0",
            label="Pareto front" if on_front else "dominated",
        )
        for t in group:
            ax.annotate(str(t.number), (t.result["sweep/latency_ms"], t.result["sweep/accuracy"]))
    front = sorted((t for t in done if t.pareto), key=lambda t: t.result["sweep/latency_ms"])
    if len(front) > 1:
        ax.plot(
            [t.result["sweep/latency_ms"] for t in front],
            [t.result["sweep/accuracy"] for t in front],
            color="C3",
            alpha=0.5,
        )
    ax.set_xlabel("latency, batch 1 (ms)")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    if done:
        ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
