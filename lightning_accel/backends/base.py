"""What a runtime is to lightning_accel: one :class:`Backend` object per runtime.

A backend says whether it can run here (and how to install it), compiles an ONNX file into a
:class:`CompiledModel`, states how closely its outputs must agree with PyTorch at each
precision, and which Q/DQ flavour quantization-aware training should emit for it. Every part
of the library that depends on the runtime asks this object instead of comparing names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from lightning_accel.backends.timing import Latency

Precision = Literal["fp32", "fp16", "int8"]


class CompiledModel(Protocol):
    """A model compiled for one runtime."""

    backend: str
    artifacts: dict[str, Path]
    info: dict[str, object]
    # Inclusive range of integer inputs (token ids) that random timing inputs are drawn from.
    input_bounds: tuple[int, int] | None

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """Outputs for one batch of inputs (batch first), cast to the graph's input dtype."""
        ...

    def latency(self, batch_size: int, runs: int = 50) -> Latency:
        """Latency at a batch size after warm-up, summarized by ``summarize_times``."""
        ...


@dataclass(frozen=True)
class Tolerance:
    """What counts as agreement between a runtime's logits and PyTorch's.

    Attributes:
        max_abs: Largest allowed |runtime - torch| logit difference, relative to the range of
            the torch logits (max - min over the batch).
        min_top1_agreement: Smallest allowed fraction of inputs with the same top-1 class.
    """

    max_abs: float
    min_top1_agreement: float


DEFAULT_TOLERANCES: Mapping[str, Tolerance] = {
    # fp32 kernels differ from torch only by summation order.
    "fp32": Tolerance(max_abs=1e-4, min_top1_agreement=0.999),
    "fp16": Tolerance(max_abs=2e-2, min_top1_agreement=0.99),
    # int8 grids move logits by a few quantization steps; predictions must still agree.
    "int8": Tolerance(max_abs=0.15, min_top1_agreement=0.99),
}


@dataclass(frozen=True)
class QDQFlavour:
    """The Q/DQ format a runtime fuses into integer kernels (what QAT trains for).

    Attributes:
        symmetric_activations: int8 symmetric activations (zero point 0); ``False``: uint8
            asymmetric, which ONNX Runtime's CPU kernels want.
        integer_bias: Quantize conv/linear biases to int32 (ONNX Runtime fuses Conv/Gemm into
            ``QLinearConv``/``QGemm`` only then); ``False``: float bias (TensorRT).
    """

    symmetric_activations: bool
    integer_bias: bool


@dataclass(frozen=True)
class Backend:
    """One runtime: availability, compilation, verification tolerances and Q/DQ flavour.

    Attributes:
        name: Registry name, used in arguments, recipes, the CLI and metric names.
        title: Human name, e.g. ``"ONNX Runtime"``.
        device: ``"cpu"`` or ``"cuda"``.
        summary: One line for the docs table: what it runs and how.
        qdq: The Q/DQ flavour ``QuantizationAware(backend=name)`` trains.
        runs_qdq_of: Names of backends whose QAT Q/DQ graphs this runtime can execute.
        float_precision: Precision a float graph is verified at (``"fp16"``: TensorRT builds
            float graphs in half precision).
        compiler: ``"module:function"`` that compiles ``(onnx_path, out_dir, threads=None)``;
            imported only when used, so the runtime package stays optional.
        availability: ``"module:function"`` returning what stops the runtime from running here,
            or ``None``.
        tolerances: Agreement with PyTorch required at each precision.
    """

    name: str
    title: str
    device: Literal["cpu", "cuda"]
    summary: str
    qdq: QDQFlavour
    runs_qdq_of: tuple[str, ...]
    float_precision: Precision
    compiler: str
    availability: str
    tolerances: Mapping[str, Tolerance] = field(default_factory=lambda: dict(DEFAULT_TOLERANCES))

    def problem(self) -> str | None:
        """What stops this runtime from running here (package, device), or ``None``."""
        return _resolve(self.availability)()

    def require(self) -> None:
        """Raise if this runtime cannot run here.

        Raises:
            RuntimeError: Naming what is missing and the install command.
        """
        problem = self.problem()
        if problem:
            raise RuntimeError(
                f"{self.title} backend unavailable: {problem}. Use backends=('onnxruntime',) on "
                "this machine, or install what is missing."
            )

    def compile(
        self, onnx_path: Path, out_dir: Path, threads: int | None = None, **options: Any
    ) -> CompiledModel:
        """Compile an ONNX file, writing artifacts under ``out_dir``.

        Args:
            onnx_path: The ONNX model.
            out_dir: Folder for the runtime's artifacts (optimized graph, engine).
            threads: CPU intra-op threads; default: all cores (ignored on a GPU).
            **options: Runtime-specific settings, e.g. TensorRT's ``precision``.

        Raises:
            RuntimeError: If the runtime is unavailable or cannot compile the graph.
        """
        return _resolve(self.compiler)(Path(onnx_path), Path(out_dir), threads=threads, **options)

    def tolerance(self, precision: str) -> Tolerance:
        """The agreement required at ``precision``.

        Raises:
            ValueError: If ``precision`` is not one this backend verifies.
        """
        if precision not in self.tolerances:
            raise ValueError(
                f"precision must be one of {sorted(self.tolerances)} for {self.name}; "
                f"got {precision!r}"
            )
        return self.tolerances[precision]

    def verification_precision(self, quantized: bool) -> str:
        """The precision a graph is verified at: int8 with Q/DQ, else the float precision."""
        return "int8" if quantized else self.float_precision


def _resolve(target: str) -> Callable[..., Any]:
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)  # type: ignore[no-any-return]
