"""An fp16 copy of an ONNX graph, for runtimes whose networks are strongly typed (TensorRT 11).

TensorRT 11 removed the builder flag that let it pick fp16 kernels for an fp32 graph: a
strongly typed network runs each tensor in the type the graph gives it, so fp16 must be in
the ONNX file. The conversion uses ``onnxconverter_common.float16.convert_float_to_float16``
(the ONNX project's converter): weights and activations become fp16, the graph's inputs and
outputs stay fp32 (``keep_io_types``) so callers feed and read the same arrays, and operators
fp16 cannot hold (its default block list) keep fp32 behind casts. Why this and not NVIDIA
ModelOpt's AutoCast: see docs/backends.md.
"""

from __future__ import annotations

from pathlib import Path

from lightning_accel.utilities.files import atomic_write

# Graph entries that must stay fp32: Q/DQ scales are fp32 in TensorRT's explicit quantization.
KEEP_FP32_OPS = ("QuantizeLinear", "DequantizeLinear")


def convert_to_fp16(onnx_path: Path, out_path: Path) -> Path:
    """Write an fp16 copy of an ONNX model with fp32 inputs and outputs.

    Args:
        onnx_path: The fp32 ONNX model (weights inside the file or beside it).
        out_path: Where to write the fp16 model (atomically); its folder is created.

    Returns:
        ``out_path``.

    Raises:
        ModuleNotFoundError: If ``onnxconverter-common`` is missing, naming the extra.
        RuntimeError: If the converted graph fails ``onnx.checker``.
    """
    import onnx

    try:
        from onnxconverter_common import float16
    except ImportError as err:
        raise ModuleNotFoundError(
            "Building fp16 TensorRT 11 engines needs `onnxconverter-common`, which is not "
            "installed. Install it with: pip install 'lightning-accel[tensorrt]'"
        ) from err
    model = onnx.load(str(onnx_path))
    converted = float16.convert_float_to_float16(
        model,
        keep_io_types=True,
        op_block_list=[*float16.DEFAULT_OP_BLOCK_LIST, *KEEP_FP32_OPS],
    )
    try:
        onnx.checker.check_model(converted)
    except onnx.checker.ValidationError as err:
        raise RuntimeError(f"The fp16 conversion of {onnx_path} is not valid ONNX: {err}") from err
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out_path, converted.SerializeToString())
    return out_path
