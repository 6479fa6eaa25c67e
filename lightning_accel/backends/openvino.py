"""OpenVINO on the CPU: the exported ONNX file compiled per batch size, integer execution shown.

OpenVINO reads the ONNX file itself (``Core.read_model``), so fp32 graphs and Q/DQ graphs take
the same path as in ONNX Runtime. Each measured batch size gets a static-shape compilation
(``Model.reshape``), the shape OpenVINO's CPU plugin optimizes best. Float graphs run at fp32
(``INFERENCE_PRECISION_HINT=f32``): the plugin's default on CPUs with bf16 support is bf16,
which would neither verify at the fp32 tolerance nor be the fp32 figure it claims to be.

Evidence of integer execution, the counterpart of ONNX Runtime's ``QLinearConv`` count, comes
from the runtime graph the plugin executes (``CompiledModel.get_runtime_model()``): each
operation's ``layerType`` and ``runtimePrecision`` (``u8``/``i8`` for integer kernels).
Source: OpenVINO's ``ov::exec_model_info`` (docs.openvino.ai, "Runtime information").

Residual adds (#14): the CPU plugin fuses ``Conv -> Q/DQ -> Add(skip) -> Q`` into the integer
convolution as a oneDNN "sum" post-op, and for that pattern it drops the rounding of the
convolution's own requantization (``src/plugins/intel_cpu/src/dnnl_postops_composer.cpp``:
"drop rounding one special residual pattern // TODO: validate this unsafe optimization"). The
Add then sees the convolution's unrounded output, not the Q/DQ value ONNX Runtime and PyTorch
compute; in a deep residual network the differences compound (MobileNetV2 int8 on
Fashion-MNIST: 97.5% top-1 agreement with ONNX Runtime's exact Q/DQ execution on 1,024 images).
No compile option changes it (``INFERENCE_PRECISION_HINT=f32``, ``EXECUTION_MODE_HINT=ACCURACY``).
The plugin fuses a sum only into a convolution with a single consumer
(``GraphOptimizer::FuseConvolutionSumAndConvolutionSumActivation``), so this backend makes each
such convolution's quantized output an extra (unread) model output (:func:`residual_sum_inputs`,
``Model.add_outputs``): the Add then runs as its own int8 Eltwise on rounded values and the
compiled model computes the Q/DQ graph exactly (MobileNetV2: 99.0%, the rest being close calls;
per-layer integer outputs equal ONNX Runtime's on 99%+ of values). The price is the unfused Add:
measured on MobileNetV2 int8, 2 threads, alternating rounds: +18% [-4%, +30%] at batch 1 and
+4% [-7%, +20%] at batch 64. :func:`unrounded_residual_sums` counts sums still fused in the
executed graph (0 after this; the caveat below is given if any remain).

Integer saturation on CPUs without VNNI is a separate fault with the same symptom: uint8 x int8
products summed in pairs into int16 (``VPMADDUBSW``) saturate when weights use the full int8
range; OpenVINO's documented workaround ("Saturation (overflow) issue workaround", NNCF's
``overflow_fix``) is 7-bit weights, which ``QuantizationAware(reduce_range=...)`` trains.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lightning_accel.backends.base import Backend, QDQFlavour
from lightning_accel.backends.inputs import random_batch
from lightning_accel.backends.timing import Latency, default_threads, summarize_times, time_calls
from lightning_accel.utilities.imports import _OPENVINO_AVAILABLE

INSTALL_HINT = 'pip install "lightning-accel[openvino]"'
# Runtime-graph layer types that carry a model's multiply-accumulates.
COMPUTE_LAYERS = ("Convolution", "Deconvolution", "FullyConnected", "MatMul")
INTEGER_PRECISIONS = ("u8", "i8")
RESIDUAL_SUM_CAVEAT = (
    "OpenVINO fused {count} residual Add(s) into the integer convolution before them and skips "
    "that convolution's requantization rounding there (its CPU plugin's 'drop rounding one "
    "special residual pattern'), so it departs from the Q/DQ graph ONNX Runtime and PyTorch "
    "compute; deep residual networks lose top-1 agreement to it. This backend unfuses the Adds "
    "it finds after Conv -> QuantizeLinear; these ones follow another pattern."
)

BACKEND = Backend(
    name="openvino",
    title="OpenVINO",
    device="cpu",
    summary=(
        "CPU plugin, static shape per batch size, fp32 inference precision; int8 from Q/DQ as "
        "u8/i8 convolutions and fully-connected layers (runtimePrecision)"
    ),
    # Measured in docs/backends.md: ONNX Runtime's flavour runs as fast as symmetric int8 here.
    qdq=QDQFlavour(symmetric_activations=False, integer_bias=True),
    runs_qdq_of=("onnxruntime", "openvino", "tensorrt"),
    float_precision="fp32",
    compiler="lightning_accel.backends.openvino:compile_openvino",
    availability="lightning_accel.backends.openvino:openvino_problem",
)


def openvino_problem() -> str | None:
    """What stops OpenVINO from running here, or ``None``."""
    if not _OPENVINO_AVAILABLE:
        return f"the `openvino` package is not installed ({INSTALL_HINT})"
    return None


def require_openvino() -> Any:
    """Import OpenVINO or raise one error naming the extra to install.

    Raises:
        RuntimeError: If the ``openvino`` package is missing.
    """
    BACKEND.require()
    import openvino

    return openvino


def _rt_value(info: Any, key: str) -> str:
    """One runtime-info entry of an executed operation as text; ``""`` when it has none."""
    return str(info[key].astype(str)) if key in info else ""


def precision_counts(runtime_model: Any) -> dict[str, dict[str, int]]:
    """Executed compute layers by type and runtime precision, e.g. ``{"Convolution": {"u8": 20}}``.

    Args:
        runtime_model: ``CompiledModel.get_runtime_model()``: the graph the plugin executes.
    """
    counts: dict[str, Counter[str]] = {}
    for op in runtime_model.get_ordered_ops():
        info = op.get_rt_info()
        layer = _rt_value(info, "layerType")
        if layer in COMPUTE_LAYERS:
            precision = _rt_value(info, "runtimePrecision")
            counts.setdefault(layer, Counter())[precision] += 1
    return {layer: dict(sorted(c.items())) for layer, c in sorted(counts.items())}


def residual_sum_inputs(onnx_path: Path) -> list[str]:
    """Quantized convolution outputs that a residual Add takes: the sums the CPU plugin fuses.

    The pattern is ``Conv -> QuantizeLinear -> DequantizeLinear -> Add``; the names returned
    are the ``QuantizeLinear`` outputs (uint8/int8 tensors). Making them model outputs gives
    each such convolution a second consumer, so the plugin keeps the Add apart and rounds
    (see the module docstring).

    Args:
        onnx_path: The ONNX model (external weights are not read).
    """
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    producer = {output: node for node in graph.node for output in node.output}
    names: list[str] = []
    for add in (node for node in graph.node if node.op_type == "Add"):
        for tensor in add.input:
            dequantize = producer.get(tensor)
            if dequantize is None or dequantize.op_type != "DequantizeLinear":
                continue
            quantize = producer.get(dequantize.input[0])
            if quantize is None or quantize.op_type != "QuantizeLinear":
                continue
            source = producer.get(quantize.input[0])
            if source is not None and source.op_type == "Conv" and quantize.output[0] not in names:
                names.append(quantize.output[0])
    return names


def unrounded_residual_sums(runtime_model: Any) -> int:
    """Integer convolutions into which the CPU plugin fused a residual Add (a "sum" post-op).

    Such a convolution takes, besides its input, weights and bias, an integer tensor from
    another layer (the skip connection it adds in place). For this pattern the plugin skips the
    rounding of the convolution's requantization before the Add (see the module docstring), so
    the count says how many places the executed graph departs from the Q/DQ semantics.

    Args:
        runtime_model: ``CompiledModel.get_runtime_model()``: the graph the plugin executes.
    """
    count = 0
    for op in runtime_model.get_ordered_ops():
        info = op.get_rt_info()
        if _rt_value(info, "layerType") != "Convolution":
            continue
        if _rt_value(info, "runtimePrecision") not in INTEGER_PRECISIONS:
            continue
        for k in range(1, op.get_input_size()):
            source = op.input(k).get_source_output().get_node().get_rt_info()
            source_layer = _rt_value(source, "layerType")
            dtype = op.input(k).get_element_type().get_type_name()
            if dtype in INTEGER_PRECISIONS and source_layer != "Const":
                count += 1
                break
    return count


def integer_evidence(counts: dict[str, dict[str, int]]) -> dict[str, Any]:
    """How many executed convolutions/matmuls run on integer kernels, from :func:`precision_counts`.

    Returns:
        ``integer_ops`` and ``float_ops`` (by layer type), and ``integer_share`` (0..1; ``None``
        for a graph without compute layers).
    """
    integer = {
        k: sum(n for p, n in v.items() if p in INTEGER_PRECISIONS) for k, v in counts.items()
    }
    floating = {
        k: sum(n for p, n in v.items() if p not in INTEGER_PRECISIONS) for k, v in counts.items()
    }
    total = sum(integer.values()) + sum(floating.values())
    return {
        "integer_ops": {k: n for k, n in integer.items() if n},
        "float_ops": {k: n for k, n in floating.items() if n},
        "integer_share": sum(integer.values()) / total if total else None,
    }


@dataclass
class OpenVINOModel:
    """An ONNX model compiled by OpenVINO's CPU plugin, one static-shape compilation per batch.

    Attributes:
        onnx_path: The ONNX model; its non-batch input dimensions must be static.
        out_dir: Folder for the executed graph (``<stem>.openvino.xml``, OpenVINO IR).
        threads: ``INFERENCE_NUM_THREADS``; default: all cores.
    """

    onnx_path: Path
    out_dir: Path
    threads: int | None = None
    backend: str = "openvino"
    artifacts: dict[str, Path] = field(default_factory=dict)
    info: dict[str, object] = field(default_factory=dict)
    input_bounds: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        self._ov = require_openvino()
        self._core = self._ov.Core()
        self._model = self._read()
        # Every graph input (several for e.g. an image and int64 token ids), in order: its
        # name, static non-batch dimensions and dtype.
        self._inputs: list[tuple[str, tuple[int, ...], np.dtype]] = []
        for port in self._model.inputs:
            shape = port.get_partial_shape()
            if shape.rank.is_dynamic or any(d.is_dynamic for d in list(shape)[1:]):
                raise RuntimeError(
                    f"OpenVINO needs static non-batch input dimensions; {self.onnx_path} has "
                    f"input {port.get_any_name()!r} of shape {shape}. Export with a fixed size."
                )
            dims = tuple(d.get_length() for d in list(shape)[1:])
            dtype = np.dtype(port.get_element_type().to_dtype())
            self._inputs.append((port.get_any_name(), dims, dtype))
        _, self._dims, self._dtype = self._inputs[0]
        self._compiled: dict[int, tuple[Any, Any]] = {}
        compiled, _ = self._for_batch(1)
        runtime = compiled.get_runtime_model()
        graph = self.out_dir / f"{self.onnx_path.stem}.openvino.xml"
        self._ov.serialize(runtime, str(graph))
        counts = precision_counts(runtime)
        sums = unrounded_residual_sums(runtime)
        self.artifacts = {"onnx": self.onnx_path, "runtime_graph": graph}
        self.info = {
            **integer_evidence(counts),
            "runtime_precisions": counts,
            "unrounded_residual_sums": sums,
            "unfused_residual_sums": len(self._exact_sums),
            "inference_precision": compiled.get_property("INFERENCE_PRECISION_HINT").to_string(),
            "threads": int(compiled.get_property("INFERENCE_NUM_THREADS")),
            "version": self._ov.get_version(),
        }
        if sums:  # said with a failed verification (export/compare.py), not otherwise
            self.info["accuracy_caveat"] = RESIDUAL_SUM_CAVEAT.format(count=sums)

    def _read(self) -> Any:
        """The ONNX graph as an OpenVINO model, with residual-sum inputs as extra outputs."""
        try:
            model = self._core.read_model(str(self.onnx_path))
        except Exception as err:  # OpenVINO raises its own exception types
            raise RuntimeError(
                f"OpenVINO could not read {self.onnx_path}: {_first_lines(err)}. The ONNX file "
                "is kept; run it on another backend (e.g. backends=('onnxruntime',)) or report "
                "the operator to OpenVINO."
            ) from err
        self._exact_sums = residual_sum_inputs(self.onnx_path)
        if self._exact_sums:  # outputs 1.. are never read: they only keep the Adds unfused
            model.add_outputs(self._exact_sums)
        return model

    def _for_batch(self, batch_size: int) -> tuple[Any, Any]:
        """The compiled model and an infer request for a static batch size (cached)."""
        if batch_size not in self._compiled:
            model = self._model.clone()
            config = {
                "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_NUM_THREADS": self.threads or default_threads(),
                "INFERENCE_PRECISION_HINT": "f32",
            }
            try:
                model.reshape(
                    {
                        port: [batch_size, *dims]
                        for port, (_, dims, _) in zip(model.inputs, self._inputs, strict=True)
                    }
                )
                compiled = self._core.compile_model(model, "CPU", config)
            except Exception as err:  # OpenVINO raises its own exception types
                raise RuntimeError(
                    f"OpenVINO could not compile {self.onnx_path} at batch {batch_size}: "
                    f"{_first_lines(err)}. The ONNX file is kept."
                ) from err
            self._compiled[batch_size] = (compiled, compiled.create_infer_request())
        return self._compiled[batch_size]

    def run(self, inputs: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        """Outputs for one batch: an array (one input) or a dict by graph input name."""
        if isinstance(inputs, dict):  # several inputs, each cast to its port's dtype
            missing = [name for name, _, _ in self._inputs if name not in inputs]
            if missing:
                raise ValueError(f"OpenVINO: no value for graph inputs {missing}")
            feed = {
                i: np.ascontiguousarray(inputs[name], dtype=dtype)
                for i, (name, _, dtype) in enumerate(self._inputs)
            }
        else:
            feed = {0: np.ascontiguousarray(inputs, dtype=self._dtype)}
        _, request = self._for_batch(int(next(iter(feed.values())).shape[0]))
        request.infer(feed)
        return np.array(request.get_output_tensor(0).data, copy=True)

    def latency(self, batch_size: int, runs: int = 50) -> Latency:
        if batch_size < 1 or runs < 1:
            raise ValueError(f"batch_size and runs must be >= 1; got {batch_size}, {runs}")
        compiled, request = self._for_batch(batch_size)
        feed = {  # every graph input its own random batch of its dtype
            i: random_batch(dims, dtype, batch_size, self.input_bounds)
            for i, (_, dims, dtype) in enumerate(self._inputs)
        }
        times = time_calls(lambda: request.infer(feed, share_inputs=True), 10, runs, 1.0)
        return summarize_times(
            times, batch_size, int(compiled.get_property("INFERENCE_NUM_THREADS"))
        )


def _first_lines(err: BaseException, lines: int = 4) -> str:
    """OpenVINO's message without its C++ source locations, shortened."""
    text = [line.strip() for line in str(err).splitlines() if line.strip()]
    kept = [line for line in text if not line.startswith(("Check '", "Exception from"))] or text
    return " ".join(kept[:lines]) or type(err).__name__


def compile_openvino(onnx_path: Path, out_dir: Path, threads: int | None = None) -> OpenVINOModel:
    """Read an ONNX file with OpenVINO and compile it for the CPU (batch 1 first).

    Args:
        onnx_path: The ONNX model.
        out_dir: Folder for the executed graph; created if missing.
        threads: ``INFERENCE_NUM_THREADS``; default: all cores.

    Raises:
        RuntimeError: If OpenVINO is not installed (naming the extra), or cannot read or
            compile the graph (its message; the ONNX file is left as it is).
    """
    BACKEND.require()
    if not Path(onnx_path).is_file():
        raise RuntimeError(f"No ONNX model at {onnx_path}. Export one with to_onnx() first.")
    out_dir.mkdir(parents=True, exist_ok=True)
    return OpenVINOModel(Path(onnx_path), Path(out_dir), threads)


__all__ = [
    "BACKEND",
    "OpenVINOModel",
    "compile_openvino",
    "integer_evidence",
    "openvino_problem",
    "precision_counts",
    "residual_sum_inputs",
    "unrounded_residual_sums",
]
