"""Binarization benchmark: fp32, binary weights, binary weights + activations (two schedules).

Fashion-MNIST, one run per model. Every variant fine-tunes the same fp32 model for the same
epochs; binary weights and activations are switched on at once or progressively. Accuracy is
PyTorch's on the full test set (the float export computes the same); the int8 export's accuracy
is measured in ONNX Runtime. Sizes: the packed 1-bit file (``save_packed``) against the fp32
state dict. Latency is ONNX Runtime on the CPU, each file timed in a fresh process, one model
after another.

    .venv/bin/python benchmarks/binarization.py            # ~30 min on 2 CPU cores
    .venv/bin/python benchmarks/binarization.py --quick    # ~3 min smoke run
    # the README's run: trained on a GPU (~7 min on an H200), then on this machine
    python benchmarks/binarization.py --accelerator gpu --train-size 58000 \
        --dense-epochs 6 --fine-tune-epochs 8 --ramp-epochs 4 --output-dir runs/bench_h200
    .venv/bin/python benchmarks/binarization.py --remeasure --reexport --output-dir runs/bench_h200
    # (export again from the packed files, measure int8 accuracy, time each file 5 times)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn

from lightning_accel import Binarize, ClassificationModule, FashionMNISTDataModule
from lightning_accel.backends.onnxruntime import compile_onnxruntime, latency
from lightning_accel.binarization import binarize_layer, load_packed, save_packed
from lightning_accel.cli.fit_job import fine_tune_copy, make_trainer, test_accuracy
from lightning_accel.export.onnx import to_onnx
from lightning_accel.models.zoo import build
from lightning_accel.utilities.modules import set_submodule


def time_here(onnx_path: Path, threads: int) -> dict[int, float]:
    """Median ONNX Runtime latency at batch 1 and 64, in this process."""
    return {
        b: latency(onnx_path, b, threads=threads, runs=50, min_seconds=1.0).median_ms
        for b in (1, 64)
    }


def timed(onnx_path: Path, threads: int) -> dict[int, float]:
    """:func:`time_here` in a new Python process.

    On these machines a long-lived process sometimes drifted into a state where ONNX Runtime's
    int8 kernels ran up to 1.5x slower (fp32 much less) for the rest of its life; short
    processes did not.
    """
    code = (
        "import json, sys; from benchmarks.binarization import time_here; "
        "print(json.dumps(time_here(sys.argv[1], int(sys.argv[2]))))"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", code, str(Path(onnx_path).resolve()), str(threads)],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    return {int(b): ms for b, ms in json.loads(done.stdout.splitlines()[-1]).items()}


def int8_row(onnx_path: Path, out_dir: Path, model: nn.Module, data, threads: int) -> dict:  # noqa: ANN001
    """Test-set top-1 of an int8 export in ONNX Runtime, and how often it agrees with PyTorch."""
    compiled = compile_onnxruntime(onnx_path, out_dir, threads=threads)
    model = model.cpu().eval()
    hits = agree = total = 0
    with torch.no_grad():
        for x, y in data.test_dataloader():
            predicted = torch.from_numpy(compiled.run(x.numpy())).argmax(1)
            hits += int((predicted == y).sum())
            agree += int((predicted == model(x).argmax(1)).sum())
            total += len(y)
    return {
        "int8_accuracy": 100.0 * hits / total,
        "int8_agreement": 100.0 * agree / total,
        "int8_kernels": compiled.info["integer_kernels"],
    }


def run_model(model_name: str, data, args, save: Callable[[dict], None]) -> dict:  # noqa: ANN001
    """Train and measure every variant of ``model_name``; ``save`` gets the rows so far."""
    out = Path(args.output_dir) / model_name
    example = torch.zeros(1, 1, 28, 28)
    started = time.perf_counter()
    pl.seed_everything(0, workers=True)
    dense = ClassificationModule(model_name, lr=args.lr, cosine_epochs=args.dense_epochs)
    trainer = make_trainer(args.dense_epochs, [], out, "fp32", False, args.accelerator)
    trainer.fit(dense, datamodule=data)
    fp32_onnx = to_onnx(dense.model, example, out / "fp32.onnx")
    rows = [
        {
            "name": "fp32",
            "accuracy": test_accuracy(trainer, dense, data),
            "file_mb": sum(t.numel() * 4 for t in dense.model.state_dict().values()) / 1e6,
            "float_ms": timed(fp32_onnx, args.threads),
        }
    ]
    result = {"model": model_name, "rows": rows}
    save(result)
    ramp = args.ramp_epochs or max(args.fine_tune_epochs - 2, 1)
    variants = {
        "weights binary": dict(activations=False),
        "weights + activations, at once": dict(),
        f"weights + activations, progressive ({ramp} epochs)": dict(end_epoch=ramp),
    }
    for index, (name, kwargs) in enumerate(variants.items(), start=1):
        pl.seed_everything(index, workers=True)
        module = fine_tune_copy(dense, args.fine_tune_epochs, args.lr / 5)
        binarize = Binarize(scaling="channel", ste=args.ste, **kwargs)  # type: ignore[arg-type]
        trainer = make_trainer(
            args.fine_tune_epochs, [binarize], out, f"v{index}", False, args.accelerator
        )
        trainer.fit(module, datamodule=data)
        row = {"name": name, "accuracy": test_accuracy(trainer, module, data)}
        packed = save_packed(module.model, out / f"v{index}.packed")
        row["file_mb"] = packed.file_bytes / 1e6
        row["binary_ratio"] = packed.binary_ratio
        float_onnx = to_onnx(
            module.model, example, out / f"v{index}.float.onnx", binary_as_int8=False
        )
        row["float_ms"] = timed(float_onnx, args.threads)
        if binarize.activations:
            int8_onnx = to_onnx(module.model, example, out / f"v{index}.int8.onnx")
            row.update(int8_row(int8_onnx, out / f"v{index}", module.model, data, args.threads))
            row["int8_ms"] = timed(int8_onnx, args.threads)
        rows.append(row)
        result["seconds"] = time.perf_counter() - started
        save(result)
        print(f"  {name}: {row}", flush=True)
    return result


def device_name(accelerator: str) -> str:
    """The GPU's name where training ran on one, else the CPU's architecture."""
    if accelerator != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.machine()})"


def format_results(result: dict) -> str:
    rows, base = result["rows"], result["rows"][0]
    b1, b64 = base["float_ms"][1], base["float_ms"][64]
    lines = [
        f"**{result['model']}**",
        "",
        "| variant | top-1 % | Δ | file MB (packed) | binary-layer size ratio "
        "| float ms @b1 / @b64 | int8 top-1 % (agrees with PyTorch) | int8 ms @b1 / @b64 "
        "| int8 speedup @b1 / @b64 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        f1, f64 = row["float_ms"][1], row["float_ms"][64]
        int8 = "–", "–", "–"
        if "int8_ms" in row:
            i1, i64 = row["int8_ms"][1], row["int8_ms"][64]
            agreement = f" ({row['int8_agreement']:.1f}%)" if "int8_agreement" in row else ""
            int8 = (
                f"{row['int8_accuracy']:.2f}{agreement}",
                f"{i1:.2f} / {i64:.2f}",
                f"{b1 / i1:.2f}x / {b64 / i64:.2f}x",
            )
        ratio = f"{row['binary_ratio']:.1f}x" if "binary_ratio" in row else "–"
        lines.append(
            f"| {row['name']} | {row['accuracy']:.2f} | {row['accuracy'] - base['accuracy']:+.2f} "
            f"| {row['file_mb']:.2f} | {ratio} | {f1:.2f} / {f64:.2f} | {int8[0]} | {int8[1]} "
            f"| {int8[2]} |"
        )
    lines.append(f"\n{result.get('seconds', 0):.0f} s.")
    return "\n".join(lines)


def rebuild_binarized(model_name: str, packed: Path, activations: bool, ste: str) -> nn.Module:
    """The binarized model stored in a ``save_packed`` file, rebuilt layer by layer."""
    model = build(model_name)
    content = torch.load(packed, weights_only=True)
    for name in {key.rsplit(".", 1)[0] for key in content["packed"]}:
        layer = binarize_layer(model.get_submodule(name), True, activations, "channel", ste)
        set_submodule(model, name, layer)
    return load_packed(packed, model)


def reexport(result: dict, out: Path, data, args) -> None:  # noqa: ANN001
    """Export every variant again from its packed file, with this version's export code.

    Where the run's fp32 ONNX file is gone, an untrained model of the same architecture stands
    in for it: it times the same, and its accuracy stays the one the run measured.
    """
    example = torch.zeros(1, 1, 28, 28)
    if not (out / "fp32.onnx").exists():
        to_onnx(build(result["model"]), example, out / "fp32.onnx")
    for index, row in enumerate(result["rows"][1:], start=1):
        activations = "int8_ms" in row
        model = rebuild_binarized(result["model"], out / f"v{index}.packed", activations, args.ste)
        to_onnx(model, example, out / f"v{index}.float.onnx", binary_as_int8=False)
        if activations:
            int8_onnx = to_onnx(model, example, out / f"v{index}.int8.onnx")
            row.update(int8_row(int8_onnx, out / f"v{index}", model, data, args.threads))


def remeasure(args, data) -> None:  # noqa: ANN001
    """Time the saved ONNX files again (e.g. on a quiet machine) and reprint the tables.

    Every file is timed in each of ``--rounds`` rounds, one file after another, each time in a
    fresh process, and keeps its median over the rounds: a stretch of interference from
    outside then moves one round, not the result. With ``--reexport``, the files are first
    exported again from the packed files (e.g. after the run's ONNX files were lost with the
    GPU machine that trained them, or the export code improved).
    """
    path = Path(args.output_dir) / "results.json"
    saved = json.loads(path.read_text())
    results = [r for r in saved["results"] if r["model"] in args.models]
    files: list[tuple[dict, str, Path]] = []  # (row, latency key, ONNX file)
    for result in results:
        out = Path(args.output_dir) / result["model"]
        if args.reexport:
            reexport(result, out, data, args)
        for index, row in enumerate(result["rows"]):
            files.append(
                (row, "float_ms", out / ("fp32.onnx" if index == 0 else f"v{index}.float.onnx"))
            )
            if "int8_ms" in row:
                files.append((row, "int8_ms", out / f"v{index}.int8.onnx"))
    rounds = [[timed(onnx, args.threads) for _, _, onnx in files] for _ in range(args.rounds)]
    for position, (row, key, _) in enumerate(files):
        row[key] = {b: statistics.median(r[position][b] for r in rounds) for b in (1, 64)}
    for result in results:
        print(format_results(result) + "\n")
    saved["remeasured"] = f"on {platform.machine()}, {args.threads} threads, " + (
        f"median of {args.rounds} rounds"
        + (", re-exported from packed files" if args.reexport else "")
    )
    path.write_text(json.dumps(saved, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "small_cnn"])
    parser.add_argument("--train-size", type=int, default=10_000)
    parser.add_argument("--dense-epochs", type=int, default=3)
    parser.add_argument("--fine-tune-epochs", type=int, default=4)
    parser.add_argument(
        "--ramp-epochs", type=int, default=0, help="progressive ramp; 0: fine-tune epochs - 2"
    )
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--ste", default="approx_sign")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime and torch CPU threads")
    parser.add_argument("--accelerator", default="cpu", help="where to train: cpu, gpu, auto")
    parser.add_argument("--output-dir", default="runs/bench_binarization")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--remeasure", action="store_true", help="only re-time the ONNX files")
    parser.add_argument(
        "--reexport", action="store_true", help="with --remeasure: export again from packed files"
    )
    parser.add_argument("--rounds", type=int, default=5, help="with --remeasure: timing rounds")
    args = parser.parse_args()
    if args.quick:
        args.train_size, args.dense_epochs, args.fine_tune_epochs = 1024, 1, 3
    if args.remeasure and not args.reexport:
        remeasure(args, None)
        return
    torch.set_num_threads(args.threads)
    data = FashionMNISTDataModule(
        train_size=args.train_size, val_size=2000, test_size=2000 if args.quick else None
    )
    data.setup()
    if args.remeasure:
        remeasure(args, data)
        return
    results: list[dict] = []
    results_path = Path(args.output_dir) / "results.json"
    results_path.parent.mkdir(parents=True, exist_ok=True)

    def save(result: dict) -> None:
        if not results or results[-1] is not result:
            results.append(result)
        run = {"args": vars(args), "device": device_name(args.accelerator), "results": results}
        results_path.write_text(json.dumps(run, indent=2, default=float))

    for model_name in args.models:
        print(f"{model_name}:", flush=True)
        print(format_results(run_model(model_name, data, args, save)), flush=True)
    print()
    for result in results:
        print(format_results(result) + "\n")
    print(
        f"Fashion-MNIST, {args.train_size} training images, {args.dense_epochs} fp32 epochs, then "
        f"{args.fine_tune_epochs} fine-tune epochs per variant; ste={args.ste}; ONNX Runtime, "
        f"{args.threads} threads; trained on {device_name(args.accelerator)}."
    )


if __name__ == "__main__":
    main()
