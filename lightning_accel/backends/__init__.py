"""Runtimes that compile and run an exported ONNX model: ONNX Runtime (CPU) and TensorRT (GPU)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from lightning_accel.benchmark import Latency


class CompiledModel(Protocol):
    """A model compiled for one runtime."""

    backend: str
    artifacts: dict[str, Path]
    info: dict[str, object]

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """Outputs for one batch of float32 inputs."""
        ...

    def latency(self, batch_size: int, runs: int = 50) -> Latency:
        """Median latency at a batch size, after warm-up."""
        ...


Compiler = Callable[..., CompiledModel]


def _compile_onnxruntime(onnx_path: Path, out_dir: Path, **kwargs: object) -> CompiledModel:
    from lightning_accel.backends.onnxruntime import compile_onnxruntime

    return compile_onnxruntime(onnx_path, out_dir, **kwargs)  # type: ignore[arg-type]


def _compile_tensorrt(onnx_path: Path, out_dir: Path, **kwargs: object) -> CompiledModel:
    from lightning_accel.backends.tensorrt import compile_tensorrt

    return compile_tensorrt(onnx_path, out_dir, **kwargs)  # type: ignore[arg-type]


BACKENDS: dict[str, Compiler] = {"onnxruntime": _compile_onnxruntime, "tensorrt": _compile_tensorrt}


def check_backends(
    backends: tuple[str, ...] | list[str], argument: str = "backends"
) -> tuple[str, ...]:
    """Validate backend names.

    Raises:
        ValueError: Naming the unknown backend and the valid ones.
    """
    if isinstance(backends, str):
        backends = (backends,)
    if not backends:
        raise ValueError(f"{argument} must name at least one of {sorted(BACKENDS)}")
    for name in backends:
        if name not in BACKENDS:
            raise ValueError(
                f"Unknown backend {name!r} in {argument}; choose from {sorted(BACKENDS)}"
            )
    return tuple(backends)


def compile_model(backend: str, onnx_path: Path, out_dir: Path, **kwargs: object) -> CompiledModel:
    """Compile an ONNX file for ``backend``, writing its artifacts under ``out_dir``."""
    check_backends((backend,), "backend")
    return BACKENDS[backend](onnx_path, out_dir, **kwargs)
