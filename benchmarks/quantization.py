"""Quantization benchmark: fp32, ONNX Runtime's PTQ, our QAT, and 50% pruning + QAT.

Fashion-MNIST, one run per model. Every variant starts from the same fp32 model. Post-training
quantization (PTQ) is ONNX Runtime's ``quantize_static`` (QDQ, per-channel int8 weights, uint8
activations, calibrated on 512 training images). QAT fine-tunes the fp32 model with
``QuantizationAware``; prune + QAT fine-tunes with ``GradualPruning`` (50% of channels,
round_to=8) and then ``QuantizationAware``.
Accuracy is measured on the full test set in ONNX Runtime, on the exported model itself.
Latency is ONNX Runtime on the CPU, measured in this process one model after another.

    .venv/bin/python benchmarks/quantization.py            # ~45 min on 2 CPU cores
    .venv/bin/python benchmarks/quantization.py --quick    # ~5 min smoke run
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))

from pruning import StepTimer  # noqa: E402

from lightning_accel import (  # noqa: E402
    ClassificationModule,
    FashionMNISTDataModule,
    GradualPruning,
    QuantizationAware,
)
from lightning_accel.backends import get_backend  # noqa: E402
from lightning_accel.backends.onnxruntime import (  # noqa: E402
    INTEGER_KERNELS,
    latency,
    operator_counts,
    ort_session,
)
from lightning_accel.backends.timing import compare_latency  # noqa: E402
from lightning_accel.cli.fit_job import fine_tune_copy, make_trainer  # noqa: E402
from lightning_accel.export.bench import random_onnx_input  # noqa: E402
from lightning_accel.export.onnx import to_onnx  # noqa: E402
from lightning_accel.quantization.post_training import quantize_static_onnx  # noqa: E402

CALIBRATION_IMAGES = 512


def onnx_predictions(onnx_path: Path, loader, threads: int, optimized: Path) -> np.ndarray:  # noqa: ANN001
    """Top-1 predictions of an ONNX model over a loader (ONNX Runtime, CPU)."""
    session = ort_session(onnx_path, threads, optimized_path=optimized)
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x.numpy()})[0].argmax(1) for x, _ in loader])


def torch_predictions(model: torch.nn.Module, loader) -> np.ndarray:  # noqa: ANN001
    model.eval()
    with torch.no_grad():
        return np.concatenate([model(x).argmax(1).numpy() for x, _ in loader])


def measure(name: str, onnx_path: Path, labels: np.ndarray, loader, args) -> dict:  # noqa: ANN001
    optimized = onnx_path.with_suffix(".ort.onnx")
    predictions = onnx_predictions(onnx_path, loader, args.threads, optimized)
    counts = operator_counts(optimized)
    row = {
        "name": name,
        "file": onnx_path.name,
        "accuracy": 100.0 * float((predictions == labels).mean()),
        "onnx_mb": onnx_path.stat().st_size / 1e6,
        "integer_kernels": {op: counts[op] for op in INTEGER_KERNELS if op in counts},
        "latency_ms": {
            b: latency(onnx_path, b, threads=args.threads, runs=50, min_seconds=1.0).median_ms
            for b in (1, 64)
        },
        "predictions": predictions,
    }
    print(f"  {name}: top-1 {row['accuracy']:.2f}%  {row['latency_ms']}", flush=True)
    return row


def fit(module, callbacks, epochs: int, out: Path, name: str, data) -> list[float]:  # noqa: ANN001
    timer = StepTimer()
    make_trainer(epochs, [timer, *callbacks], out, name, progress=False).fit(
        module, datamodule=data
    )
    return timer.times


def run_model(model_name: str, data, args) -> dict:  # noqa: ANN001
    out = Path(args.output_dir) / model_name
    test_loader = data.test_dataloader()
    labels = np.concatenate([y.numpy() for _, y in test_loader])
    example = torch.zeros(1, 1, 28, 28)
    started = time.perf_counter()

    pl.seed_everything(0, workers=True)
    dense = ClassificationModule(model_name, lr=args.lr, cosine_epochs=args.dense_epochs)
    fp32_steps = fit(dense, [], args.dense_epochs, out, "fp32", data)
    rows = [
        measure("fp32", to_onnx(dense.model, example, out / "fp32.onnx"), labels, test_loader, args)
    ]

    calibration = []
    for x, _ in data.train_dataloader():
        calibration.append(x.numpy())
        if sum(len(b) for b in calibration) >= CALIBRATION_IMAGES:
            break
    ptq = quantize_static_onnx(out / "fp32.onnx", out / "ptq.onnx", calibration)
    rows.append(measure("PTQ (ORT quantize_static)", ptq, labels, test_loader, args))

    pl.seed_everything(1, workers=True)
    qat_module = fine_tune_copy(dense, args.qat_epochs, args.lr / 10)
    qat = QuantizationAware(
        "onnxruntime",
        freeze_observers_epoch=args.qat_epochs - 1,
        freeze_bn_epoch=args.qat_epochs - 1,
    )
    qat_steps = fit(qat_module, [qat], args.qat_epochs, out, "qat", data)
    row = measure(
        "QAT", to_onnx(qat_module.model, example, out / "qat.onnx"), labels, test_loader, args
    )
    row["torch_agreement"] = float(
        (torch_predictions(qat_module, test_loader) == row["predictions"]).mean()
    )
    rows.append(row)

    pl.seed_everything(2, workers=True)
    epochs = args.prune_epochs + args.qat_epochs
    pruned = fine_tune_copy(dense, epochs, args.lr / 5)
    callbacks = [
        GradualPruning(0.5, mode="structured", end_epoch=args.prune_epochs - 1, round_to=8),
        QuantizationAware(
            "onnxruntime",
            start_epoch=args.prune_epochs,
            freeze_observers_epoch=epochs - 1,
            freeze_bn_epoch=epochs - 1,
        ),
    ]
    fit(pruned, callbacks, epochs, out, "prune_qat", data)
    row = measure(
        "prune 50% + QAT",
        to_onnx(pruned.model, example, out / "prune_qat.onnx"),
        labels,
        test_loader,
        args,
    )
    row["torch_agreement"] = float(
        (torch_predictions(pruned, test_loader) == row["predictions"]).mean()
    )
    rows.append(row)

    for row in rows:
        row.pop("predictions")
    return {
        "model": model_name,
        "rows": rows,
        "fp32_step_ms": 1000 * statistics.median(fp32_steps),
        "qat_step_ms": 1000 * statistics.median(qat_steps),
        "seconds": time.perf_counter() - started,
    }


def _speedup(row: dict, base: dict, batch: int) -> str:
    """The alternating-round speedup with its quartiles, else the ratio of medians."""
    alternating = row.get("speedup", {})
    figures = alternating.get(batch, alternating.get(str(batch)))
    if figures:
        return f"{figures[0]:.2f}x [{figures[1]:.2f}–{figures[2]:.2f}]"
    return f"{base['latency_ms'][batch] / row['latency_ms'][batch]:.2f}x"


def format_results(result: dict) -> str:
    rows, base = result["rows"], result["rows"][0]
    lines = [
        f"**{result['model']}**",
        "",
        "| variant | top-1 % (ORT) | Δ vs fp32 | ONNX MB | ms @b1 | speedup @b1 | ms @b64 | "
        "speedup @b64 | integer kernels |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        kernels = ", ".join(f"{n} {op}" for op, n in row["integer_kernels"].items()) or "none"
        lines.append(
            f"| {row['name']} | {row['accuracy']:.2f} | {row['accuracy'] - base['accuracy']:+.2f} "
            f"| {row['onnx_mb']:.1f} | {row['latency_ms'][1]:.2f} "
            f"| {_speedup(row, base, 1)} | {row['latency_ms'][64]:.2f} "
            f"| {_speedup(row, base, 64)} | {kernels} |"
        )
    agreement = {r["name"]: r["torch_agreement"] for r in rows if "torch_agreement" in r}
    lines += [
        "",
        f"Training step (median): fp32 {result['fp32_step_ms']:.1f} ms, QAT "
        f"{result['qat_step_ms']:.1f} ms ({result['qat_step_ms'] / result['fp32_step_ms']:.2f}x). "
        "Top-1 agreement of ONNX Runtime int8 with the PyTorch fake-quant model: "
        + ", ".join(f"{name} {value:.2%}" for name, value in agreement.items())
        + f". {result['seconds']:.0f} s.",
    ]
    return "\n".join(lines)


def step_cost(model_name: str, data, steps: int = 12) -> tuple[float, float]:  # noqa: ANN001
    """Median ms of an fp32 and of a QAT training step (forward, backward, SGD), same batches.

    Measured back to back in one process, fp32 before and after QAT, so load on the machine
    affects both alike.
    """
    from lightning_accel.quantization import QuantizationSpec, quantize_submodules

    torch.manual_seed(0)
    module = ClassificationModule(model_name)
    batches = [b for _, b in zip(range(steps), data.train_dataloader(), strict=False)]

    def median_step_ms() -> float:
        optimizer = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)
        module.train()
        times = []
        for x, y in batches:
            start = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(module(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            times.append(time.perf_counter() - start)
        return 1000 * statistics.median(times[2:])

    fp32_ms = median_step_ms()
    layers = {n: 8 for n, m in module.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    reference = copy.deepcopy(module)
    quantize_submodules(module, QuantizationSpec("onnxruntime", layers))
    quantized_ms = median_step_ms()
    module = reference
    fp32_ms = statistics.median([fp32_ms, median_step_ms()])
    return fp32_ms, quantized_ms


def time_against_fp32(
    onnx_path: Path, fp32_path: Path, threads: int
) -> tuple[dict[int, float], dict[int, list[float]]]:
    """Median ms and speedup [median, p25, p75] at batch 1 and 64, alternating with fp32 (#18)."""
    runtime = get_backend("onnxruntime")
    with tempfile.TemporaryDirectory(prefix="bench-quantization-") as tmp:
        model = runtime.compile(onnx_path, Path(tmp) / "model", threads=threads)
        base = runtime.compile(fp32_path, Path(tmp) / "fp32", threads=threads)
        ms, speedup = {}, {}
        for b in (1, 64):
            inputs = random_onnx_input(onnx_path, b)
            c = compare_latency(model, base, inputs, b, runs=100, rounds=10, threads=threads)
            if c.warning:
                print(f"  {onnx_path.name} @b{b}: {c.warning}", flush=True)
            ms[b] = c.model.median_ms
            speedup[b] = [c.speedup, c.speedup_p25, c.speedup_p75]
    return ms, speedup


def remeasure(args) -> None:  # noqa: ANN001
    """Time the saved ONNX files again (e.g. on a quiet machine) and reprint the tables."""
    path = Path(args.output_dir) / "results.json"
    saved = json.loads(path.read_text())
    files = ("fp32.onnx", "ptq.onnx", "qat.onnx", "prune_qat.onnx")
    for result in saved["results"]:
        folder = Path(args.output_dir) / result["model"]
        paths = [folder / row.get("file", f) for row, f in zip(result["rows"], files, strict=True)]
        for row, onnx_path in zip(result["rows"], paths, strict=True):
            row["latency_ms"], row["speedup"] = time_against_fp32(onnx_path, paths[0], args.threads)
        fp32_ms, qat_ms = step_cost(result["model"], data_for(args))
        result["fp32_step_ms"], result["qat_step_ms"] = fp32_ms, qat_ms
        print(format_results(result) + "\n")
    saved["remeasured"] = True
    path.write_text(json.dumps(saved, indent=2))


def data_for(args) -> FashionMNISTDataModule:  # noqa: ANN001
    data = FashionMNISTDataModule(train_size=args.train_size, val_size=2000)
    data.setup()
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    parser.add_argument("--train-size", type=int, default=20_000)
    parser.add_argument("--dense-epochs", type=int, default=3)
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument("--prune-epochs", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", default="runs/bench_quantization")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--remeasure", action="store_true", help="only re-time the ONNX files of a finished run"
    )
    args = parser.parse_args()
    if args.remeasure:
        remeasure(args)
        return
    if args.quick:
        args.train_size, args.dense_epochs, args.qat_epochs, args.prune_epochs = 1024, 1, 2, 2
    torch.set_num_threads(args.threads)
    data = FashionMNISTDataModule(
        train_size=args.train_size, val_size=2000, test_size=2000 if args.quick else None
    )
    data.setup()
    results = []
    for model_name in args.models:
        print(f"{model_name}:", flush=True)
        results.append(run_model(model_name, data, args))
        print(format_results(results[-1]), flush=True)
    print()
    for result in results:
        print(format_results(result) + "\n")
    print(
        f"Fashion-MNIST, {args.train_size} training images, {args.dense_epochs} fp32 epochs; QAT "
        f"fine-tunes {args.qat_epochs} epochs; prune + QAT {args.prune_epochs} + "
        f"{args.qat_epochs} epochs; ONNX Runtime, {args.threads} threads."
    )
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.output_dir) / "results.json").write_text(
        json.dumps({"args": vars(args), "results": results}, indent=2)
    )


if __name__ == "__main__":
    main()
