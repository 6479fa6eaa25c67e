"""Per-epoch metrics of a run, kept without a tracking server and written as one CSV.

``ExportOnFitEnd`` records the Trainer's scalar metrics at the end of every training epoch
(validation has run by then) and merges ``LatencyMonitor``'s measured rows; the CSV has one
row per epoch and one column per metric, ready for a spreadsheet or pandas.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning_accel.utilities.files import atomic_write


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The scalar entries of a metrics mapping (tensors of one element, numbers) as floats."""
    values: dict[str, float] = {}
    for key, value in metrics.items():
        if hasattr(value, "numel") and value.numel() == 1:
            values[key] = float(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            values[key] = float(value)
    return values


def merge_epoch_rows(*sources: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows of several sources joined on their ``epoch``, sorted by epoch.

    Later sources add columns to (and overwrite equal keys in) an epoch's row; rows without
    an ``epoch`` are dropped.

    Example:
        >>> merge_epoch_rows([{"epoch": 0, "val/acc": 0.9}], [{"epoch": 0, "ms": 1.0}])
        [{'epoch': 0, 'val/acc': 0.9, 'ms': 1.0}]
    """
    rows: dict[int, dict[str, Any]] = {}
    for source in sources:
        for row in source:
            if row.get("epoch") is None:
                continue
            epoch = int(row["epoch"])
            rows.setdefault(epoch, {"epoch": epoch}).update({**row, "epoch": epoch})
    return [rows[epoch] for epoch in sorted(rows)]


def write_epoch_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Write one row per epoch, ``epoch`` first, then every metric in name order (atomically).

    Args:
        rows: One mapping per epoch, e.g. from :func:`merge_epoch_rows`.
        path: The CSV file.

    Returns:
        ``path``.
    """
    columns = sorted({key for row in rows for key in row}, key=lambda k: (k != "epoch", k))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, buffer.getvalue())
    return path
