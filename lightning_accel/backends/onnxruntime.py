"""ONNX Runtime on the CPU: full graph optimization, the optimized graph saved and inspected."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lightning_accel.benchmark import Latency, latency, ort_session

# Kernels that show a quantized model really runs on integer arithmetic.
INTEGER_KERNELS = (
    "QLinearConv",
    "QLinearAdd",
    "QGemm",
    "QLinearMatMul",
    "ConvInteger",
    "MatMulInteger",
)


def operator_counts(onnx_path: Path) -> dict[str, int]:
    """How many nodes of each operator type an ONNX graph holds (top-level graph)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return dict(Counter(node.op_type for node in model.graph.node))


@dataclass
class OnnxRuntimeModel:
    """An ONNX Runtime CPU session over a model, with its optimized graph on disk."""

    onnx_path: Path
    optimized_path: Path
    threads: int | None = None
    backend: str = "onnxruntime"
    artifacts: dict[str, Path] = field(default_factory=dict)
    info: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._session = ort_session(
            self.onnx_path, self.threads, optimized_path=self.optimized_path
        )
        self._input = self._session.get_inputs()[0].name
        counts = operator_counts(self.optimized_path)
        self.artifacts = {"onnx": self.onnx_path, "optimized": self.optimized_path}
        self.info = {
            "integer_kernels": {op: counts[op] for op in INTEGER_KERNELS if op in counts},
            "operators": counts,
        }

    def run(self, inputs: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: inputs.astype(np.float32)})[0]

    def latency(self, batch_size: int, runs: int = 50) -> Latency:
        return latency(self.onnx_path, batch_size, threads=self.threads, runs=runs, min_seconds=1.0)


def compile_onnxruntime(
    onnx_path: Path, out_dir: Path, threads: int | None = None
) -> OnnxRuntimeModel:
    """Build a CPU session with all graph optimizations and save the optimized graph."""
    out_dir.mkdir(parents=True, exist_ok=True)
    optimized = out_dir / f"{Path(onnx_path).stem}.ort.onnx"
    return OnnxRuntimeModel(Path(onnx_path), optimized, threads)
