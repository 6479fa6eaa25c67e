"""Time ONNX files on a backend, with a baseline timed the same way: ``lightning-accel bench``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lightning_accel.backends import get_backend
from lightning_accel.backends.timing import compare_latency, default_threads
from lightning_accel.export.compare import no_progress


def check_onnx_file(path: Path) -> None:
    """Fail early, and clearly, on a missing file or one that is not an ONNX model.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If it does not parse as an ONNX model.
    """
    import onnx

    if not path.is_file():
        raise FileNotFoundError(
            f"No ONNX model at {path}. Export one first (lightning-accel export)."
        )
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:
        raise ValueError(f"{path} is not an ONNX model ({type(err).__name__}).") from err
    if not model.graph.node:
        raise ValueError(f"{path} is not an ONNX model: its graph has no nodes.")


def bench_onnx(
    onnx_path: Path,
    baseline_path: Path | None,
    backend: str,
    dirpath: Path,
    batch_sizes: Sequence[int] = (1, 64),
    threads: int | None = None,
    runs: int = 50,
    progress: Callable[[str], None] = no_progress,
) -> list[dict[str, Any]]:
    """Time an ONNX model (and a baseline, in the same process) on one backend.

    Args:
        onnx_path: The model file.
        baseline_path: Another ONNX file timed the same way, or ``None``.
        backend: A registered backend name.
        dirpath: Folder for compiled artifacts.
        batch_sizes: Batch sizes to time.
        threads: CPU intra-op threads; default: all cores.
        runs: Timed runs per figure.
        progress: Called with a short line before each long step.

    Returns:
        One row per batch size: ``batch``, ``model_ms``, ``p90_ms``, ``iqr_ms``,
        ``throughput`` and, with a baseline, ``baseline_ms`` and ``speedup`` (times in ms).

    Raises:
        FileNotFoundError: If a file is missing.
        ValueError: If a file is not ONNX or the backend is unknown.
        RuntimeError: If the backend cannot run here.
    """
    for path in (onnx_path, baseline_path):
        if path is not None:
            check_onnx_file(path)
    runtime = get_backend(backend)
    progress(f"compiling {onnx_path.name} for {backend}")
    model = runtime.compile(onnx_path, dirpath / "model", threads=threads)
    baseline = None
    if baseline_path is not None:
        progress(f"compiling {baseline_path.name} for {backend}")
        baseline = runtime.compile(baseline_path, dirpath / "baseline", threads=threads)
    rows = []
    for batch_size in batch_sizes:
        progress(f"timing batch {batch_size}")
        inputs = random_onnx_input(onnx_path, batch_size)
        if baseline is None:
            measured = model.latency(batch_size, runs)
            rows.append(
                {
                    "batch": batch_size,
                    "model_ms": measured.median_ms,
                    "p90_ms": measured.p90_ms,
                    "iqr_ms": measured.iqr_ms,
                    "throughput": measured.throughput,
                }
            )
            continue
        # Alternating rounds: drift on a shared machine lands on both sides, not one.
        compared = compare_latency(
            model, baseline, inputs, batch_size, runs, threads=threads or default_threads()
        )
        row: dict[str, Any] = compared.as_row()
        rows.append(
            {
                "batch": batch_size,
                **row,
                "p90_ms": row["model_p90_ms"],
                "iqr_ms": row["model_iqr_ms"],
            }
        )
    return rows


def random_onnx_input(
    path: Path, batch_size: int, seed: int = 0
) -> np.ndarray | dict[str, np.ndarray]:
    """Seeded random inputs for an ONNX model: normal floats, or 0/1 integers (token ids).

    Each input is drawn per its declared dtype and shape; integers lie in ``[0, 1]``, valid for
    any embedding. A model with one input gets an array, one with several a dict by input name.

    Args:
        path: The ONNX file (external data is not read).
        batch_size: Rows of each input.
        seed: Seed of the random values.

    Raises:
        ValueError: If a non-batch dimension of an input is not fixed.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    declared = [i for i in graph.input if i.name not in initializers]
    feeds = {i.name: _random_graph_input(path, i, batch_size, seed) for i in declared}
    return next(iter(feeds.values())) if len(feeds) == 1 else feeds


def _random_graph_input(path: Path, first: Any, batch_size: int, seed: int) -> np.ndarray:
    from onnx import helper

    tensor = first.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim][1:]
    if any(d is None for d in dims):
        raise ValueError(
            f"{path}: input {first.name!r} has dynamic non-batch dimensions; export with a fixed "
            "input size."
        )
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    rng = np.random.default_rng(seed)
    shape = (batch_size, *[int(d) for d in dims if d is not None])
    if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def format_bench(rows: list[dict[str, Any]], backend: str) -> str:
    """``bench_onnx`` rows as a Markdown table."""
    with_baseline = bool(rows) and "speedup" in rows[0]
    header = "| backend | batch | median ms | p90 ms | inputs/s |"
    rule = "|---|---|---|---|---|"
    if with_baseline:
        header += " baseline ms | speedup (IQR) |"
        rule += "---|---|"
    lines = [header, rule]
    for row in rows:
        line = (
            f"| {backend} | {row['batch']} | {row['model_ms']:.3f} | {row['p90_ms']:.3f} | "
            f"{row['throughput']:,.0f} |"
        )
        if with_baseline:
            line += (
                f" {row['baseline_ms']:.3f} | {row['speedup']:.2f}x "
                f"({row['speedup_p25']:.2f}-{row['speedup_p75']:.2f}) |"
            )
        lines.append(line)
    if with_baseline:
        lines.append(
            "speedup: median of per-round ratios (interquartile range), model and baseline timed "
            "in alternating rounds"
        )
        lines += [
            f"warning: batch {row['batch']}: {row['warning']}" for row in rows if row.get("warning")
        ]
    return "\n".join(lines)
