"""Check the TensorRT path on a real NVIDIA GPU and compare it with ONNX Runtime and OpenVINO.

Builds engines for ResNet-18 (Fashion-MNIST stem): dense, 50% structured-pruned, 2:4-pruned
(fp32 and fp16 each), int8 from QuantizationAware's TensorRT-style Q/DQ (symmetric), and
pruned + int8; verifies each against PyTorch on the same inputs and times it next to ONNX
Runtime and OpenVINO on the CPU. Works on TensorRT 10 (weak-typing builder flags) and 11
(strongly typed network; fp16 from an fp16 copy of the ONNX graph) and prints which ran.
Weights are random: this checks the runtime path and speed, not accuracy.

    pip install -e ".[zoo,tensorrt]"
    python benchmarks/gpu/tensorrt_check.py --out runs/gpu
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lightning_accel.backends import compile_model
from lightning_accel.backends.openvino import openvino_problem
from lightning_accel.backends.tensorrt import require_tensorrt, tensorrt_major, tensorrt_problem
from lightning_accel.export.onnx import to_onnx
from lightning_accel.export.verify import compare_outputs
from lightning_accel.models.zoo import build
from lightning_accel.pruning.channels import prune_channels
from lightning_accel.pruning.masks import n_m_mask
from lightning_accel.quantization import QuantizationSpec, quantize_submodules
from lightning_accel.utilities.layer_selection import select_layers


def variants() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    example = torch.randn(1, 1, 28, 28)
    dense = build("resnet18").eval()
    structured = build("resnet18").eval()
    prune_channels(structured, example, select_layers(structured, example, [], True, "check"), 0.5)
    two_four = build("resnet18").eval()
    with torch.no_grad():
        for name in select_layers(two_four, example, [], True, "check"):
            layer = two_four.get_submodule(name)
            if layer.weight.shape[1] % 4 == 0:
                layer.weight.mul_(n_m_mask(layer.weight))
    return {
        "dense": dense,
        "structured 50%": structured,
        "2:4": two_four,
        "int8 Q/DQ": int8_qdq(build("resnet18"), example),
        "structured 50% + int8": int8_qdq(structured, example),
    }


def int8_qdq(model: torch.nn.Module, example: torch.Tensor) -> torch.nn.Module:
    """``model`` prepared by QuantizationAware for TensorRT, ranges observed on random batches."""
    holder = torch.nn.Module()
    holder.model = model
    layers = {n: 8 for n, m in holder.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    quantize_submodules(holder, QuantizationSpec("tensorrt", layers))
    holder.train()
    with torch.no_grad():
        for _ in range(4):
            holder.model(torch.randn(32, *example.shape[1:]))
    return holder.model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/gpu")
    parser.add_argument("--batch-sizes", default="1,64,256")
    args = parser.parse_args()
    problem = tensorrt_problem()
    if problem:
        raise SystemExit(f"TensorRT cannot run here: {problem}")
    tensorrt = require_tensorrt()
    version = str(tensorrt.__version__)
    major = tensorrt_major(tensorrt)
    print(
        f"TensorRT {version} (major {major}): "
        + (
            "strongly typed networks, fp16 from an fp16 ONNX copy"
            if major >= 11
            else "weak-typing builder flags (FP16/INT8)"
        )
    )
    cpu_runtimes = ["onnxruntime"] + (["openvino"] if openvino_problem() is None else [])
    out = Path(args.out)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    x = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    results, rows = {}, []
    for name, model in variants().items():
        slug = name.split()[0].replace(":", "_")
        onnx_path = to_onnx(model, x[:1], out / f"{slug}.onnx")
        with torch.no_grad():
            reference = model(x).numpy()
        entry: dict = {}
        precisions = ("int8",) if "int8" in name else ("fp32", "fp16")
        for precision in precisions:
            trt = compile_model(
                "tensorrt", onnx_path, out / f"trt_{precision}", precision=precision
            )
            check = compare_outputs(reference, trt.run(x.numpy()), precision)
            entry[precision] = {
                "verification": check.as_dict(),
                "sparse_2_4": trt.info.get("sparse_2_4"),
                "tensorrt_version": trt.info.get("tensorrt_version"),
                "strongly_typed": trt.info.get("strongly_typed"),
                "latency_ms": {b: trt.latency(b).median_ms for b in batch_sizes},
            }
            rows.append(
                (name, f"TensorRT {precision}", check.passed, entry[precision]["latency_ms"])
            )
        for runtime in cpu_runtimes:
            cpu = compile_model(runtime, onnx_path, out / runtime)
            check = compare_outputs(reference, cpu.run(x.numpy()), precisions[0])
            entry[f"{runtime}_cpu"] = {b: cpu.latency(b, runs=20).median_ms for b in batch_sizes}
            rows.append((name, f"{runtime} CPU", check.passed, entry[f"{runtime}_cpu"]))
        results[name] = entry
    dense_fp16 = results["dense"]["fp16"]["latency_ms"]
    print(
        "| model | runtime | verified | "
        + " | ".join(f"ms @b{b}" for b in batch_sizes)
        + " | "
        + " | ".join(f"vs dense fp16 @b{b}" for b in batch_sizes)
        + " |"
    )
    print("|---|---|---|" + "---|" * 2 * len(batch_sizes))
    for name, runtime, ok, ms in rows:
        cells = [f"{ms[b]:.3f}" for b in batch_sizes] + [
            f"{dense_fp16[b] / ms[b]:.2f}x" for b in batch_sizes
        ]
        print(f"| {name} | {runtime} | {ok} | " + " | ".join(cells) + " |")
    print(f"GPU: {torch.cuda.get_device_name()}; TensorRT {version}")
    results["versions"] = {"tensorrt": version, "strongly_typed": major >= 11}
    (out / "tensorrt_check.json").write_text(json.dumps(results, indent=2, default=float))
    assert all(
        entry[p]["verification"]["passed"]
        for entry in results.values()
        for p in ("fp32", "fp16", "int8")
        if isinstance(entry, dict) and p in entry
    ), "a TensorRT engine disagreed with PyTorch"
    np.testing.assert_array_less(0, [dense_fp16[b] for b in batch_sizes])


if __name__ == "__main__":
    main()
