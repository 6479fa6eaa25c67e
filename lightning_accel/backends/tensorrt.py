"""TensorRT on an NVIDIA GPU: a serialized engine built from the ONNX file, timed with CUDA events.

TensorRT 10 and 11 differ in how precision is chosen, and :func:`build_plan` is the one place
that branches on the installed major version:

- TensorRT 11 removed weak typing (``BuilderFlag.FP16``/``INT8``, precision constraints, the
  INT8 calibrator). Networks are strongly typed: INT8 comes from the Q/DQ nodes the QAT export
  writes (int8 symmetric), FP16 from an fp16 copy of the ONNX graph
  (:func:`~lightning_accel.backends.onnx_fp16.convert_to_fp16`); the rest runs in fp32.
- TensorRT 10 keeps its weak-typing flags: FP16 (and INT8 for Q/DQ graphs) let the builder
  pick kernels per layer, as before.

Weights that follow the 2:4 pattern use sparse tensor-core kernels (``SPARSE_WEIGHTS``) on
both. Device memory comes from torch, so no extra CUDA bindings are needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lightning_accel.backends.base import Backend, QDQFlavour
from lightning_accel.backends.timing import Latency, summarize_times
from lightning_accel.utilities.files import atomic_write
from lightning_accel.utilities.imports import _TENSORRT_AVAILABLE

MAX_BATCH = 256
SUPPORTED_MAJORS = (10, 11)

BACKEND = Backend(
    name="tensorrt",
    title="TensorRT",
    device="cuda",
    summary=(
        "TensorRT 10 or 11 engine on an NVIDIA GPU, dynamic batch; int8 from Q/DQ (explicit "
        "quantization, int8 symmetric), FP16 for float graphs (TensorRT 11: an fp16 copy of "
        "the ONNX graph, strongly typed), 2:4 sparse kernels"
    ),
    qdq=QDQFlavour(symmetric_activations=True, integer_bias=False),
    # Signed Q/DQ only: ONNX Runtime's uint8 activations with non-zero zero points do not build.
    runs_qdq_of=("tensorrt",),
    float_precision="fp16",
    compiler="lightning_accel.backends.tensorrt:compile_tensorrt",
    availability="lightning_accel.backends.tensorrt:tensorrt_problem",
)


def tensorrt_problem() -> str | None:
    """What stops TensorRT from running here, or ``None`` if it can run."""
    import torch

    missing = []
    if not _TENSORRT_AVAILABLE:
        missing.append(
            "the `tensorrt` package is not installed (pip install 'lightning-accel[tensorrt]')"
        )
    if not torch.cuda.is_available():
        missing.append("no NVIDIA GPU is visible to torch (torch.cuda.is_available() is False)")
    return "; ".join(missing) or None


def require_tensorrt() -> Any:
    """Import TensorRT or raise one error naming everything that is missing.

    Raises:
        RuntimeError: If the package or a GPU is missing.
    """
    BACKEND.require()
    import tensorrt as trt

    return trt


def has_qdq(onnx_path: Path) -> bool:
    """Whether the graph holds QuantizeLinear nodes (explicit quantization)."""
    from lightning_accel.backends.onnxruntime import operator_counts

    return operator_counts(onnx_path).get("QuantizeLinear", 0) > 0


def has_2_4_weights(onnx_path: Path) -> bool:
    """Whether any 4-D or 2-D initializer follows the 2:4 pattern along its input dimension."""
    import onnx
    from onnx import numpy_helper

    for init in onnx.load(str(onnx_path)).graph.initializer:
        weight = numpy_helper.to_array(init)
        if weight.ndim not in (2, 4) or weight.shape[1] % 4 or weight.size < 64:
            continue
        groups = np.moveaxis(weight, 1, -1).reshape(-1, 4)
        if ((groups != 0).sum(axis=1) <= 2).all():
            return True
    return False


def tensorrt_major(trt: Any) -> int:
    """The installed TensorRT major version, e.g. ``11`` for ``11.0.1``.

    Raises:
        RuntimeError: If it is not one this backend is built for (10 or 11).
    """
    major = int(str(trt.__version__).split(".")[0])
    if major not in SUPPORTED_MAJORS:
        raise RuntimeError(
            f"TensorRT {trt.__version__} is installed; lightning_accel supports TensorRT "
            f"{' and '.join(map(str, SUPPORTED_MAJORS))}. Install one with: "
            "pip install 'lightning-accel[tensorrt]'"
        )
    return major


@dataclass(frozen=True)
class BuildPlan:
    """What TensorRT is given for one precision: the graph, the network type, builder flags.

    Attributes:
        onnx_path: The graph to parse (an fp16 copy for TensorRT 11's FP16).
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"``.
        strongly_typed: Create the network with ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``.
        builder_flags: ``trt.BuilderFlag`` names to set (weak typing, TensorRT 10 only).
    """

    onnx_path: Path
    precision: str
    strongly_typed: bool
    builder_flags: tuple[str, ...]


def build_plan(onnx_path: Path, precision: str, major: int, work_dir: Path) -> BuildPlan:
    """How to build ``onnx_path`` at ``precision`` on TensorRT ``major``: the one version branch.

    Args:
        onnx_path: The exported ONNX model.
        precision: ``"auto"`` (INT8 with Q/DQ, else FP16), ``"fp32"``, ``"fp16"`` or ``"int8"``.
        major: TensorRT major version (:func:`tensorrt_major`).
        work_dir: Folder for an fp16 copy of the graph (TensorRT 11, FP16).

    Raises:
        ValueError: If ``precision`` is unknown, or INT8 is asked for a graph without Q/DQ on
            TensorRT 11 (it has no calibrator: the Q/DQ must come from QAT).
    """
    if precision not in ("auto", "fp32", "fp16", "int8"):
        raise ValueError(
            f"precision must be 'auto', 'fp32', 'fp16' or 'int8'; got {precision!r}. "
            "Example: compile_model('tensorrt', path, out, precision='fp16')"
        )
    quantized = has_qdq(onnx_path)
    if precision == "auto":
        precision = "int8" if quantized else "fp16"
    if major >= 11:
        if precision == "int8" and not quantized:
            raise ValueError(
                f"TensorRT {major} builds INT8 only from Q/DQ nodes in the graph, and "
                f"{onnx_path} has none: train with QuantizationAware(backend='tensorrt'), or "
                "build it at precision='fp16'."
            )
        source = onnx_path
        if precision == "fp16":
            from lightning_accel.backends.onnx_fp16 import convert_to_fp16

            source = convert_to_fp16(onnx_path, work_dir / f"{Path(onnx_path).stem}.fp16.onnx")
        return BuildPlan(source, precision, strongly_typed=True, builder_flags=())
    flags = {"fp32": (), "fp16": ("FP16",), "int8": ("FP16", "INT8")}[precision]
    return BuildPlan(onnx_path, precision, strongly_typed=False, builder_flags=flags)


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    precision: str = "auto",
    sparse: bool | None = None,
    timing_cache: Path | None = None,
    opt_batch: int = 64,
    max_batch: int = MAX_BATCH,
) -> Path:
    """Build and serialize a TensorRT engine for an ONNX file with a dynamic batch.

    Args:
        onnx_path: The ONNX model (Q/DQ nodes give explicit INT8 quantization).
        engine_path: Where to write the engine (atomically).
        precision: ``"auto"`` (INT8 with Q/DQ, else FP16), ``"fp32"``, ``"fp16"`` or ``"int8"``;
            see :func:`build_plan` for what each means on TensorRT 10 and 11.
        sparse: Enable 2:4 sparse kernels; ``None`` detects 2:4 weights in the graph.
        timing_cache: File that keeps kernel timings between builds.
        opt_batch: Batch size the engine is tuned for.
        max_batch: Largest batch the engine accepts.

    Raises:
        RuntimeError: If TensorRT is missing, cannot parse the graph or cannot build it.
    """
    trt = require_tensorrt()
    plan = build_plan(onnx_path, precision, tensorrt_major(trt), engine_path.parent)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if plan.strongly_typed else 0
    network = builder.create_network(flags)  # explicit batch is the only mode since TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(plan.onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {plan.onnx_path}: {errors}")
    config = builder.create_builder_config()
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if sparse if sparse is not None else has_2_4_weights(onnx_path):
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.exists() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    tensor = network.get_input(0)
    dims = tuple(tensor.shape)[1:]
    profile.set_shape(tensor.name, (1, *dims), (opt_batch, *dims), (max_batch, *dims))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(
            f"TensorRT {trt.__version__} failed to build an engine from {plan.onnx_path} "
            f"({plan.precision})"
        )
    atomic_write(engine_path, bytes(serialized))
    if timing_cache is not None:
        atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
    return engine_path


@dataclass
class TensorRTModel:
    """A deserialized TensorRT engine that runs float32 batches on the GPU."""

    engine_path: Path
    backend: str = "tensorrt"
    input_bounds: tuple[int, int] | None = None
    artifacts: dict[str, Path] = field(default_factory=dict)
    info: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        trt = require_tensorrt()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._engine = trt.Runtime(self._logger).deserialize_cuda_engine(
            self.engine_path.read_bytes()
        )
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._input, self._output = inputs[0], next(n for n in names if n not in inputs)
        self.artifacts = {"engine": self.engine_path}

    def _execute(self, inputs: Any) -> Any:
        import torch

        self._context.set_input_shape(self._input, tuple(inputs.shape))
        output = torch.empty(
            tuple(self._context.get_tensor_shape(self._output)), dtype=torch.float32, device="cuda"
        )
        self._context.set_tensor_address(self._input, inputs.data_ptr())
        self._context.set_tensor_address(self._output, output.data_ptr())
        self._context.execute_async_v3(torch.cuda.current_stream().cuda_stream)
        return output

    def run(self, inputs: np.ndarray) -> np.ndarray:
        import torch

        batch = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32)).cuda()
        output = self._execute(batch)
        torch.cuda.synchronize()
        return output.cpu().numpy()

    def latency(self, batch_size: int, runs: int = 200) -> Latency:
        import torch

        dims = tuple(self._engine.get_tensor_shape(self._input))[1:]
        batch = torch.randn(batch_size, *dims, device="cuda")
        for _ in range(20):
            self._execute(batch)
        times = []
        for _ in range(runs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            self._execute(batch)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return summarize_times(times, batch_size, threads=0)


def compile_tensorrt(
    onnx_path: Path, out_dir: Path, precision: str = "auto", threads: int | None = None
) -> TensorRTModel:
    """Build (with a timing cache in ``out_dir``) and load a TensorRT engine.

    Args:
        onnx_path: The ONNX model (dynamic batch).
        out_dir: Folder for ``<stem>.engine`` and ``timing.cache``.
        precision: ``"auto"``, ``"fp32"``, ``"fp16"`` or ``"int8"`` (see :func:`build_engine`).
        threads: Ignored (the GPU sets its own parallelism); accepted like every backend.

    Raises:
        RuntimeError: If TensorRT or a GPU is missing, or the engine does not build.
    """
    require_tensorrt()
    out_dir.mkdir(parents=True, exist_ok=True)
    engine = build_engine(
        onnx_path,
        out_dir / f"{Path(onnx_path).stem}.engine",
        precision,
        timing_cache=out_dir / "timing.cache",
    )
    model = TensorRTModel(engine)
    trt = require_tensorrt()
    model.info = {
        "precision": precision
        if precision != "auto"
        else ("int8" if has_qdq(onnx_path) else "fp16"),
        "sparse_2_4": has_2_4_weights(onnx_path),
        "tensorrt_version": str(trt.__version__),
        "strongly_typed": tensorrt_major(trt) >= 11,
    }
    return model
