"""ONNX Runtime vs OpenVINO on the CPU: the same ONNX files, timed in alternating fresh processes.

ResNet-18 and MobileNetV2 (``lightning_accel.models`` zoo, 28x28 stems) on Fashion-MNIST, four
variants each: dense fp32, 50% structured (torch-pruning, channels removed), QAT int8 (Q/DQ in
ONNX Runtime's flavour, which OpenVINO runs too) and 50% structured + QAT int8. Every file is
verified against PyTorch on 256 Fashion-MNIST test images on both runtimes, and OpenVINO's
executed graph is read for the runtime precision of its convolutions and matmuls.

Timing: rounds A, B, A, B... where each round is a fresh process that compiles every file on
one runtime and times it at each batch size (2 threads, median after warm-up), so drift on a
shared machine hits both runtimes. Ratios are per round, reported as median [min-max].

Every variant is trained through the library's callbacks, as a user would: the dense model
(SGD, cosine), then ``GradualPruning`` (50% of channels, cubic schedule) during fine-tuning,
``QuantizationAware`` (int8, ONNX Runtime's Q/DQ flavour, which OpenVINO runs fastest) from the
dense model, and ``QuantizationAware`` continued on the pruned model (prune + QAT). Accuracy is
PyTorch's on the first ``--test-size`` test images.

Scaled down to fit a shared 2-core machine: ``--train-size`` training images (default 4,000),
``--dense-epochs`` 2, ``--prune-epochs`` 2 (pruning in the first, fine-tuning at 50% in the
second), ``--qat-epochs`` 1. Accuracy is therefore below a full run's; the latency and
integer-execution figures do not depend on training.

    .venv/bin/python benchmarks/runtimes.py                 # ~9 min on 2 CPU cores
    .venv/bin/python benchmarks/runtimes.py --flavour       # Q/DQ flavour on OpenVINO, ~1 min
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from lightning_accel import (
    ClassificationModule,
    FashionMNISTDataModule,
    GradualPruning,
    QuantizationAware,
)
from lightning_accel.backends import compile_model
from lightning_accel.cli.fit_job import fine_tune_copy, make_trainer
from lightning_accel.data.fashion_mnist import load_split
from lightning_accel.export.onnx import to_onnx
from lightning_accel.export.verify import compare_outputs
from lightning_accel.models.zoo import build
from lightning_accel.quantization import QuantizationSpec, quantize_submodules

RUNTIMES = ("onnxruntime", "openvino")
VARIANTS = ("dense fp32", "50% structured", "QAT int8", "50% structured + QAT int8")


def quantized(
    model: nn.Module, calibration: torch.Tensor, backend: str = "onnxruntime"
) -> nn.Module:
    """``model`` with every conv/linear on fake-quant for ``backend``, ranges observed."""
    holder = nn.Module()
    holder.model = copy.deepcopy(model)
    layers = {n: 8 for n, m in holder.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    quantize_submodules(holder, QuantizationSpec(backend, layers))  # type: ignore[arg-type]
    holder.model.train()
    with torch.no_grad():
        for x in calibration.split(64):
            holder.model(x)
    return holder.model.eval()


def fit(
    module: ClassificationModule,
    callbacks: list,
    epochs: int,
    data: FashionMNISTDataModule,
    out: Path,
    name: str,
) -> ClassificationModule:
    """Train ``module`` in place with ``callbacks`` for ``epochs`` (a quiet CPU Trainer)."""
    make_trainer(epochs, callbacks, out / "training", name, progress=False).fit(
        module, datamodule=data
    )
    return module


def trained_variants(
    name: str, args: argparse.Namespace, data: FashionMNISTDataModule, out: Path
) -> Iterator[tuple[str, nn.Module, float]]:
    """Yield ``(variant, model, train_s)`` for the four variants, each trained by the callbacks.

    The pruned model is yielded (and exported by the caller) before quantization-aware training
    continues on it in place, so "50% structured" and "50% structured + QAT int8" are the same
    network before and after QAT.
    """
    started = time.perf_counter()
    dense = ClassificationModule(name, lr=args.lr, cosine_epochs=args.dense_epochs)
    fit(dense, [], args.dense_epochs, data, out, f"{name}_dense")
    yield "dense fp32", dense.model, time.perf_counter() - started

    started = time.perf_counter()
    slim = fine_tune_copy(dense, args.prune_epochs, args.lr / 5)
    pruning = GradualPruning(
        0.5, mode="structured", schedule="cubic", start_epoch=0, end_epoch=args.prune_epochs - 1
    )
    fit(slim, [pruning], args.prune_epochs, data, out, f"{name}_pruned")
    yield "50% structured", slim.model, time.perf_counter() - started

    started = time.perf_counter()
    qat = fine_tune_copy(dense, args.qat_epochs, args.lr / 10)
    fit(qat, [QuantizationAware("onnxruntime")], args.qat_epochs, data, out, f"{name}_qat")
    yield "QAT int8", qat.model, time.perf_counter() - started

    started = time.perf_counter()
    slim.hparams["lr"], slim.hparams["cosine_epochs"] = args.lr / 10, args.qat_epochs
    fit(slim, [QuantizationAware("onnxruntime")], args.qat_epochs, data, out, f"{name}_pqat")
    yield "50% structured + QAT int8", slim.model, time.perf_counter() - started


def build_files(args: argparse.Namespace, out: Path) -> dict:
    """Train, compress and export every model variant; verify each on both runtimes."""
    test_x, test_y = load_split("test", args.data)
    test, labels = test_x[: args.test_size], test_y[: args.test_size].numpy()
    verify = test[:256]
    data = FashionMNISTDataModule(
        args.data, batch_size=64, val_size=500, train_size=args.train_size, test_size=1000
    )
    files: dict = {}
    for name in args.models:
        torch.manual_seed(0)
        for variant, model, train_s in trained_variants(name, args, data, out):
            model.eval()
            slug = f"{name}_{variant.split()[0].replace('%', '')}_{len(files)}"
            path = to_onnx(model, test[:1], out / f"{slug}.onnx")
            with torch.no_grad():
                predicted = torch.cat([model(x).argmax(1) for x in test.split(250)]).numpy()
                reference = model(verify).numpy()
            accuracy = float((predicted == labels).mean())
            entry = {
                "model": name,
                "variant": variant,
                "path": str(path),
                "accuracy": accuracy,
                "train_s": train_s,
                "verified": {},
            }
            precision = "int8" if "QAT" in variant else "fp32"
            for runtime in RUNTIMES:
                compiled = compile_model(runtime, path, out / runtime / slug, threads=args.threads)
                check = compare_outputs(reference, compiled.run(verify.numpy()), precision)
                entry["verified"][runtime] = check.as_dict()
                if runtime == "openvino":
                    entry["openvino_ops"] = {
                        k: compiled.info[k]
                        for k in (
                            "integer_ops",
                            "float_ops",
                            "integer_share",
                            "unrounded_residual_sums",
                        )
                    }
            files[f"{name} / {variant}"] = entry
            print(
                f"built {name} / {variant}: {path.name}, top-1 {accuracy:.1%}, "
                f"trained {train_s:.0f} s",
                file=sys.stderr,
            )
    return files


def worker(runtime: str, paths: list[str], batch_sizes: list[int], threads: int) -> None:
    """One timing round in this (fresh) process: every file on ``runtime``, JSON on stdout."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, path in enumerate(paths):
            compiled = compile_model(runtime, Path(path), Path(tmp) / str(i), threads=threads)
            results[path] = {str(b): compiled.latency(b, runs=10).median_ms for b in batch_sizes}
    print(json.dumps(results))


def timing_round(runtime: str, paths: list[str], args: argparse.Namespace) -> dict:
    """Run :func:`worker` in a fresh interpreter and return its medians."""
    command = [sys.executable, __file__, "--worker", runtime, "--threads", str(args.threads)]
    command += ["--batch-sizes", *map(str, args.batch_sizes), "--paths", *paths]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def spread(values: list[float]) -> str:
    """Median [min-max] of per-round ratios."""
    return f"{statistics.median(values):.2f}x [{min(values):.2f}-{max(values):.2f}]"


def run_runtimes(args: argparse.Namespace, out: Path) -> None:
    files = build_files(args, out)
    paths = [entry["path"] for entry in files.values()]
    rounds: dict[str, list[dict]] = {runtime: [] for runtime in RUNTIMES}
    for r in range(args.rounds):
        order = RUNTIMES if r % 2 == 0 else RUNTIMES[::-1]  # A,B then B,A: no side always first
        for runtime in order:
            rounds[runtime].append(timing_round(runtime, paths, args))
            print(f"round {r + 1}/{args.rounds}: {runtime} timed", file=sys.stderr)
    lines = [
        "| model | variant | batch | ORT ms | OpenVINO ms | OpenVINO vs ORT (same file) | "
        "ORT vs ORT fp32 | OpenVINO vs ORT fp32 | OpenVINO int8 ops | verified ORT / OV "
        "| top-1 % |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in files.values():
        dense = files[f"{entry['model']} / dense fp32"]["path"]
        ops = entry.get("openvino_ops", {})
        share = ops.get("integer_share")
        integer = sum(ops.get("integer_ops", {}).values())
        total = integer + sum(ops.get("float_ops", {}).values())
        int_cell = f"{integer}/{total}" if share else "-"
        verified = " / ".join(
            "pass" if entry["verified"][rt]["passed"] else "FAIL" for rt in RUNTIMES
        )
        for b in map(str, args.batch_sizes):
            ort = [t[entry["path"]][b] for t in rounds["onnxruntime"]]
            ov = [t[entry["path"]][b] for t in rounds["openvino"]]
            base = [t[dense][b] for t in rounds["onnxruntime"]]
            entry.setdefault("latency_ms", {})[b] = {"onnxruntime": ort, "openvino": ov}
            same_file = spread([a / o for a, o in zip(ort, ov, strict=True)])
            ort_gain = spread([d / a for d, a in zip(base, ort, strict=True)])
            ov_gain = spread([d / o for d, o in zip(base, ov, strict=True)])
            lines.append(
                f"| {entry['model']} | {entry['variant']} | {b} | {statistics.median(ort):.2f} | "
                f"{statistics.median(ov):.2f} | {same_file} | {ort_gain} | {ov_gain} | "
                f"{int_cell} | {verified} | {100 * entry['accuracy']:.1f} |"
            )
    lines.append(
        f"{args.rounds} alternating rounds per runtime, fresh process each, {args.threads} "
        f"threads; ratios median [min-max] over rounds. Training on {args.train_size} images: "
        f"dense {args.dense_epochs} ep, 50% structured +{args.prune_epochs} ep, QAT int8 "
        f"+{args.qat_epochs} ep from dense, prune + QAT +{args.qat_epochs} ep from the pruned "
        f"model; top-1 on {args.test_size} test images (PyTorch), verification on 256."
    )
    table = "\n".join(lines)
    print(table)
    (out / "runtimes.md").write_text(table + "\n")
    (out / "runtimes.json").write_text(json.dumps(files, indent=2, default=float))


def run_flavour(args: argparse.Namespace, out: Path) -> None:
    """Does OpenVINO run ONNX Runtime's Q/DQ flavour as fast as symmetric int8 activations?"""
    calibration = load_split("train")[0][:512]
    torch.manual_seed(0)
    model = build("resnet18")
    paths = {}
    for flavour, backend in (
        ("uint8 asymmetric (ORT)", "onnxruntime"),
        ("int8 symmetric", "tensorrt"),
    ):
        q = quantized(model, calibration, backend)
        paths[flavour] = str(to_onnx(q, calibration[:1], out / f"flavour_{backend}.onnx"))
        ops = compile_model("openvino", Path(paths[flavour]), out / backend, threads=args.threads)
        print(f"{flavour}: OpenVINO runtime precisions {ops.info['runtime_precisions']}")
    names = list(paths)
    ratios: dict[str, list[float]] = {str(b): [] for b in args.batch_sizes}
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        times = timing_round("openvino", [paths[n] for n in order], args)
        for b in ratios:
            ratios[b].append(times[paths[names[0]]][b] / times[paths[names[1]]][b])
    for b, values in ratios.items():
        print(
            f"ResNet-18 batch {b}: uint8-asymmetric time / int8-symmetric time on OpenVINO = "
            f"{spread(values)} over {args.rounds} fresh-process rounds ({args.threads} threads)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/runtimes")
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--test-size", type=int, default=1000)
    parser.add_argument("--dense-epochs", type=int, default=2)
    parser.add_argument("--prune-epochs", type=int, default=2)
    parser.add_argument("--qat-epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.05, help="dense SGD peak learning rate")
    parser.add_argument("--data", default=None, help="Fashion-MNIST IDX folder")
    parser.add_argument("--flavour", action="store_true", help="measure the Q/DQ flavour only")
    parser.add_argument("--worker", choices=RUNTIMES, help=argparse.SUPPRESS)
    parser.add_argument("--paths", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.paths, args.batch_sizes, args.threads)
        return
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.flavour:
        run_flavour(args, out)
    else:
        run_runtimes(args, out)


if __name__ == "__main__":
    main()
