"""Runtimes that compile and run an exported ONNX model, in one registry.

Every backend is one :class:`~lightning_accel.backends.base.Backend` object defined in its own
module and registered here. Arguments (``ExportOnFitEnd(backends=...)``,
``LatencyMonitor(backend=...)``, ``QuantizationAware(backend=...)``), recipes, CLI choices and
the docs table all read this registry. Adding a runtime: one new module defining ``BACKEND``,
its name in :data:`BackendName` and one line in :data:`BACKENDS`.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from lightning_accel.backends import onnxruntime, openvino, tensorrt
from lightning_accel.backends.base import Backend, CompiledModel, QDQFlavour, Tolerance
from lightning_accel.backends.timing import Latency

BackendName = Literal["onnxruntime", "openvino", "tensorrt"]
DEFAULT_BACKEND: BackendName = "onnxruntime"  # runs on any CPU

BACKENDS: dict[str, Backend] = {
    backend.name: backend for backend in (onnxruntime.BACKEND, openvino.BACKEND, tensorrt.BACKEND)
}

if tuple(BACKENDS) != typing.get_args(BackendName):  # pragma: no cover - a registration slip
    raise ImportError(f"BackendName {typing.get_args(BackendName)} != registry {tuple(BACKENDS)}")

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "Backend",
    "BackendName",
    "CompiledModel",
    "Latency",
    "QDQFlavour",
    "Tolerance",
    "backend_names",
    "backends_table",
    "check_backends",
    "compile_model",
    "get_backend",
]


def backend_names() -> list[str]:
    """Registered backend names, in registration order (for CLI choices and messages)."""
    return list(BACKENDS)


def get_backend(name: str, argument: str = "backend") -> Backend:
    """The backend registered as ``name``.

    Raises:
        ValueError: Naming the argument, the unknown name and the valid ones.
    """
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(
            f"Unknown backend {name!r} in {argument}; choose from {sorted(BACKENDS)}. "
            "Example: backend='onnxruntime'"
        )
    return BACKENDS[name]


def check_backends(backends: Sequence[str] | str, argument: str = "backends") -> tuple[str, ...]:
    """Validate backend names; a single string counts as one name.

    Raises:
        ValueError: Naming the unknown backend and the valid ones, or an empty selection.
    """
    if not isinstance(backends, (str, Sequence)):
        raise ValueError(
            f"{argument} must name at least one of {sorted(BACKENDS)}; got {backends!r}. "
            "Example: backends=('onnxruntime',)"
        )
    names = (backends,) if isinstance(backends, str) else tuple(backends)
    if not names:
        raise ValueError(f"{argument} must name at least one of {sorted(BACKENDS)}")
    if len(set(map(str, names))) != len(names):
        raise ValueError(f"{argument} names a backend twice: {list(names)}")
    for name in names:
        get_backend(name, argument)
    return names


def compile_model(
    backend: str, onnx_path: Path, out_dir: Path, threads: int | None = None, **options: Any
) -> CompiledModel:
    """Compile an ONNX file for ``backend``, writing its artifacts under ``out_dir``.

    Args:
        backend: A registered backend name (:data:`BACKENDS`).
        onnx_path: The ONNX model.
        out_dir: Folder for the runtime's artifacts (optimized graph, engine).
        threads: CPU intra-op threads; default: all cores (ignored on a GPU).
        **options: Runtime-specific settings, e.g. TensorRT's ``precision``.

    Raises:
        ValueError: If ``backend`` is not registered.
        RuntimeError: If the runtime is unavailable here or cannot compile the graph.
    """
    return get_backend(backend).compile(onnx_path, out_dir, threads=threads, **options)


def backends_table() -> str:
    """The Markdown table of registered backends the README and docs show."""
    lines = [
        "| backend | device | runs | QAT Q/DQ flavour | float verified at |",
        "|---|---|---|---|---|",
    ]
    for b in BACKENDS.values():
        flavour = (
            ("int8 symmetric" if b.qdq.symmetric_activations else "uint8 asymmetric")
            + " activations, "
            + ("int32 bias" if b.qdq.integer_bias else "float bias")
        )
        lines.append(
            f"| `{b.name}` ({b.title}) | {b.device} | {b.summary} | {flavour} | "
            f"{b.float_precision} |"
        )
    return "\n".join(lines)
