"""ONNX Runtime on the CPU: full graph optimization, the optimized graph saved and inspected."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lightning_accel.backends.base import Backend, QDQFlavour
from lightning_accel.backends.inputs import random_batch
from lightning_accel.backends.timing import Latency, default_threads, summarize_times, time_calls
from lightning_accel.utilities.imports import _ONNXRUNTIME_AVAILABLE

# Kernels that show a quantized model really runs on integer arithmetic.
INTEGER_KERNELS = (
    "QLinearConv",
    "QLinearAdd",
    "QGemm",
    "QLinearMatMul",
    "ConvInteger",
    "MatMulInteger",
    # uint8 x int8 with int32 accumulation and a float output: Q/DQ linears on 3-D inputs
    # (transformers' projections) and activation matmuls.
    "MatMulIntegerToFloat",
)

BACKEND = Backend(
    name="onnxruntime",
    title="ONNX Runtime",
    device="cpu",
    summary=(
        "CPU execution provider, all graph optimizations; int8 from Q/DQ as QLinearConv/QGemm "
        "(uint8 asymmetric activations, int8 per-channel weights, int32 bias)"
    ),
    qdq=QDQFlavour(symmetric_activations=False, integer_bias=True),
    # It runs TensorRT-flavoured Q/DQ too, but without fusing it into integer kernels.
    runs_qdq_of=("onnxruntime", "openvino", "tensorrt"),
    float_precision="fp32",
    compiler="lightning_accel.backends.onnxruntime:compile_onnxruntime",
    availability="lightning_accel.backends.onnxruntime:onnxruntime_problem",
)


def u8s8_saturates(cpu_flags: str | None = None) -> bool:
    """Whether ONNX Runtime's uint8 x int8 kernels can saturate on this CPU.

    On x86-64 without VNNI (AVX2, or AVX-512 without VNNI) ONNX Runtime's ``QLinearConv`` and
    ``QGemm`` multiply uint8 activations by int8 weights with ``VPMADDUBSW``, which adds each
    pair of products into an int16 with saturation: 2 x 255 x 127 overflows it, so the optimized
    graph computes something else than its own Q/DQ arithmetic (measured here, AVX2 only: the
    stem of a QAT EfficientNet-B1 had 71 outputs off by the whole uint8 range, reproduced
    exactly by emulating the saturation). ONNX Runtime's advice is ``reduce_range``: weights in
    [-63, 63] (2 x 255 x 63 = 32130 fits). With VNNI (``VPDPBUSD``, int32 sums) or on other
    architectures nothing saturates.

    Args:
        cpu_flags: The ``flags`` line of ``/proc/cpuinfo``; ``None``: read this machine's
            (no file, e.g. not Linux: ``False``).
    """
    if cpu_flags is None:
        try:
            info = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        cpu_flags = next((line for line in info.splitlines() if line.startswith("flags")), "")
    flags = set(cpu_flags.replace(":", " ").split())
    has_vnni = bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})
    return "avx2" in flags and not has_vnni


def onnxruntime_problem() -> str | None:
    """What stops ONNX Runtime from running here, or ``None``."""
    if not _ONNXRUNTIME_AVAILABLE:
        return "the `onnxruntime` package is not installed (pip install onnxruntime)"
    return None


def operator_counts(onnx_path: Path) -> dict[str, int]:
    """How many nodes of each operator type an ONNX graph holds (top-level graph)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return dict(Counter(node.op_type for node in model.graph.node))


def batch_norms_as_conv(exported: Path, optimized: Path) -> int:
    """Float ``Conv`` nodes of ONNX Runtime's optimized graph that are BatchNorms of the export.

    ONNX Runtime's NCHWc layout pass rewrites a BatchNormalization it cannot fold into a conv
    (DenseNet: the one after each transition's average pool) as a depthwise 1x1 ``Conv`` named
    ``<batch norm output>_bn_nchwc``. Such a node is a BatchNorm, not a conv of the model; the
    model's other BatchNorms run in float as well and are not convolutions either.

    Args:
        exported: The ONNX file given to ONNX Runtime.
        optimized: ONNX Runtime's optimized graph of it.
    """
    import onnx

    outputs = {
        node.output[0]
        for node in onnx.load(str(exported), load_external_data=False).graph.node
        if node.op_type == "BatchNormalization"
    }
    graph = onnx.load(str(optimized), load_external_data=False).graph
    return sum(
        1
        for node in graph.node
        if node.op_type == "Conv" and any(node.name.startswith(f"{o}_bn_nchwc") for o in outputs)
    )


def ort_session(
    onnx_path: str | os.PathLike,
    threads: int | None = None,
    optimized_path: str | os.PathLike | None = None,
    stop_spinning_after_run: bool = False,
) -> Any:
    """A CPU ONNX Runtime session with full graph optimization and a fixed thread count.

    Args:
        onnx_path: The model.
        threads: Intra-op threads; defaults to all available cores.
        optimized_path: If given, ONNX Runtime writes its optimized graph there.
        stop_spinning_after_run: Stop the intra-op threads' busy-waiting as soon as a run
            returns (``session.force_spinning_stop``); by default they keep spinning for the next
            run. Turn it on when another runtime is timed in the same process: threads left
            spinning keep the cores busy and slow whatever runs next. Measured here
            (``benchmarks/ort_spinning.py``, ResNet-18, 2 threads): OpenVINO's pruned int8
            speedup over ORT fp32 at b64 read 9.1x beside a spinning session, 13.8x beside one
            that stops, 14.6x in separate processes; stopping costs ORT itself 2% at b1, where
            ``session.intra_op.allow_spinning=0`` costs 26% (docs/backends.md).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    if stop_spinning_after_run:
        options.add_session_config_entry("session.force_spinning_stop", "1")
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def latency(
    onnx_path: str | os.PathLike,
    batch_size: int = 1,
    threads: int | None = None,
    warmup: int = 10,
    runs: int = 50,
    min_seconds: float = 0.0,
    input_bounds: tuple[int, int] | None = None,
    stop_spinning_after_run: bool = False,
) -> Latency:
    """Latency of an ONNX model in ONNX Runtime on the CPU, on seeded random inputs.

    Args:
        onnx_path: The model file; its inputs' non-batch dimensions must be static. Every
            input gets its own random batch of its declared dtype (several inputs, int64 ids).
        batch_size: Inputs per run (the batch dimension must be dynamic or equal to this).
        threads: Intra-op threads; defaults to all available cores.
        warmup: Untimed runs first.
        runs: Timed runs (at least).
        min_seconds: Keep timing until this much time has passed.
        input_bounds: Inclusive range of integer inputs (token ids); default ``(0, 1)``,
            valid for any embedding. Float inputs are standard normal.
        stop_spinning_after_run: See :func:`ort_session`.

    Raises:
        FileNotFoundError: If ``onnx_path`` does not exist.
        ValueError: If ``batch_size``, ``warmup`` or ``runs`` is out of range.
    """
    if not Path(onnx_path).is_file():
        raise FileNotFoundError(f"No ONNX model at {onnx_path}. Export one with to_onnx() first.")
    if batch_size < 1 or runs < 1 or warmup < 0:
        raise ValueError(
            f"batch_size and runs must be >= 1 and warmup >= 0; got batch_size={batch_size}, "
            f"runs={runs}, warmup={warmup}"
        )
    session = ort_session(onnx_path, threads, stop_spinning_after_run=stop_spinning_after_run)
    feed = {
        meta.name: _random_input(meta, batch_size, input_bounds) for meta in session.get_inputs()
    }
    times = time_calls(lambda: session.run(None, feed), warmup, runs, min_seconds)
    return summarize_times(times, batch_size, session.get_session_options().intra_op_num_threads)


def _numpy_dtype(meta: Any) -> Any:
    """The numpy dtype of an ONNX Runtime input, e.g. ``tensor(int64)`` -> ``np.int64``."""
    name = str(meta.type).removeprefix("tensor(").removesuffix(")")
    return np.dtype({"float": "float32", "double": "float64", "float16": "float16"}.get(name, name))


def _random_input(
    meta: Any, batch_size: int, input_bounds: tuple[int, int] | None = None
) -> np.ndarray:
    """Seeded random batch for one graph input (every input of a several-input model gets one)."""
    dims = [d for d in meta.shape[1:] if isinstance(d, int)]
    if len(dims) != len(meta.shape) - 1:
        raise ValueError(
            f"Input {meta.name!r} has dynamic non-batch dimensions {meta.shape}; export with a "
            "fixed image size."
        )
    return random_batch(dims, _numpy_dtype(meta), batch_size, input_bounds)


@dataclass
class OnnxRuntimeModel:
    """An ONNX Runtime CPU session over a model, with its optimized graph on disk."""

    onnx_path: Path
    optimized_path: Path
    threads: int | None = None
    backend: str = "onnxruntime"
    artifacts: dict[str, Path] = field(default_factory=dict)
    info: dict[str, object] = field(default_factory=dict)
    input_bounds: tuple[int, int] | None = None
    stop_spinning_after_run: bool = False

    def __post_init__(self) -> None:
        self._session = ort_session(
            self.onnx_path,
            self.threads,
            optimized_path=self.optimized_path,
            stop_spinning_after_run=self.stop_spinning_after_run,
        )
        self._input = self._session.get_inputs()[0].name
        counts = operator_counts(self.optimized_path)
        self.artifacts = {"onnx": self.onnx_path, "optimized": self.optimized_path}
        self.info = {
            "integer_kernels": {op: counts[op] for op in INTEGER_KERNELS if op in counts},
            "operators": counts,
            "batch_norms_as_float_conv": batch_norms_as_conv(self.onnx_path, self.optimized_path),
        }

    def run(self, inputs: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        if isinstance(inputs, dict):  # several inputs, by graph input name
            metas = {meta.name: meta for meta in self._session.get_inputs()}
            feed = {n: x.astype(_numpy_dtype(metas[n])) for n, x in inputs.items()}
            return self._session.run(None, feed)[0]
        dtype = _numpy_dtype(self._session.get_inputs()[0])
        return self._session.run(None, {self._input: inputs.astype(dtype)})[0]

    def latency(self, batch_size: int, runs: int = 50) -> Latency:
        return latency(
            self.onnx_path,
            batch_size,
            threads=self.threads,
            runs=runs,
            min_seconds=1.0,
            input_bounds=self.input_bounds,
            stop_spinning_after_run=self.stop_spinning_after_run,
        )


def compile_onnxruntime(
    onnx_path: Path,
    out_dir: Path,
    threads: int | None = None,
    stop_spinning_after_run: bool = False,
) -> OnnxRuntimeModel:
    """Build a CPU session with all graph optimizations and save the optimized graph.

    Args:
        onnx_path: The ONNX model.
        out_dir: Folder for the optimized graph (``<stem>.ort.onnx``); created if missing.
        threads: Intra-op threads; default: all cores.
        stop_spinning_after_run: See :func:`ort_session`; on for a session timed beside
            another runtime in the same process.

    Raises:
        RuntimeError: If ONNX Runtime is not installed.
    """
    BACKEND.require()
    out_dir.mkdir(parents=True, exist_ok=True)
    optimized = out_dir / f"{Path(onnx_path).stem}.ort.onnx"
    return OnnxRuntimeModel(
        Path(onnx_path), optimized, threads, stop_spinning_after_run=stop_spinning_after_run
    )
