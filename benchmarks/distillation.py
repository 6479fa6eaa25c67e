"""Distillation benchmark: compression with and without the dense model as teacher.

Fashion-MNIST. For each case a dense fp32 model is trained first; then two copies of it are
compressed with the same callbacks, data and epochs, one plain and one with
``Distillation(teacher="initial")`` (the trained dense model, frozen). Reported: test accuracy
of fp32, plain and distilled (PyTorch, on the test split), the distillation delta, and the
training-step cost with the teacher against a plain step (median wall time per training batch
of the two compression runs, measured in the same process).

Cases: ``mobilenet_v2_prune_qat`` and ``resnet18_prune_qat`` (50% channels pruned, then int8
QAT for ONNX Runtime), ``resnet18_binary`` (all inner layers binarized).

    .venv/bin/python benchmarks/distillation.py   # all three, full data: hours on 2 CPU cores
    # the scaled-down run in docs/distillation.md (about 5 minutes):
    .venv/bin/python benchmarks/distillation.py --cases mobilenet_v2_prune_qat \
        --train-size 3000 --val-size 500 --test-size 2000 --batch-size 64 --dense-epochs 3 \
        --epochs 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_accel import (
    Binarize,
    ClassificationModule,
    Distillation,
    FashionMNISTDataModule,
    GradualPruning,
    QuantizationAware,
)
from lightning_accel.cli.fit_job import fine_tune_copy, make_trainer, test_accuracy

CASES = {
    "mobilenet_v2_prune_qat": ("mobilenet_v2", "prune_qat"),
    "resnet18_prune_qat": ("resnet18", "prune_qat"),
    "resnet18_binary": ("resnet18", "binary"),
}


class StepTimer(pl.Callback):
    """Wall time of every training batch (forward, teacher, backward and optimizer step)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.seconds.append(time.perf_counter() - self._start)


def compression(kind: str, epochs: int) -> list[pl.Callback]:
    """The compression callbacks of a case, scaled to ``epochs`` (>= 3 for prune + QAT)."""
    if kind == "prune_qat":
        return [
            GradualPruning(0.5, start_epoch=0, end_epoch=max(epochs - 2, 1), round_to=8),
            QuantizationAware(start_epoch=max(epochs - 1, 2)),
        ]
    return [Binarize(start_epoch=0)]


def run_case(name: str, data: FashionMNISTDataModule, args: argparse.Namespace) -> dict[str, Any]:
    """Dense training, then the plain and the distilled compression of the same model."""
    model, kind = CASES[name]
    out = Path(args.output_dir) / name
    pl.seed_everything(0)
    dense = ClassificationModule(model, lr=args.lr, cosine_epochs=args.dense_epochs)
    trainer = make_trainer(args.dense_epochs, [], out, "dense", progress=False)
    trainer.fit(dense, datamodule=data)
    result: dict[str, Any] = {"fp32": test_accuracy(trainer, dense, data)}
    steps: dict[str, list[float]] = {}
    for variant in ("plain", "distilled"):
        pl.seed_everything(0)
        student = fine_tune_copy(dense, args.epochs, args.fine_tune_lr)
        timer = StepTimer()
        callbacks: list[pl.Callback] = [*compression(kind, args.epochs), timer]
        if variant == "distilled":
            callbacks.append(Distillation(temperature=args.temperature, alpha=args.alpha))
        trainer = make_trainer(args.epochs, callbacks, out, variant, progress=False)
        trainer.fit(student, datamodule=data)
        result[variant] = test_accuracy(trainer, student, data)
        steps[variant] = timer.seconds[5:] or timer.seconds  # past warm-up
    result["delta_points"] = result["distilled"] - result["plain"]
    result["plain_vs_fp32_points"] = result["plain"] - result["fp32"]
    result["distilled_vs_fp32_points"] = result["distilled"] - result["fp32"]
    plain, taught = statistics.median(steps["plain"]), statistics.median(steps["distilled"])
    result["step_ms"] = {"plain": 1e3 * plain, "distilled": 1e3 * taught}
    result["step_cost_ratio"] = taught / plain
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--train-size", type=int, default=None, help="default: all 55,000")
    parser.add_argument("--test-size", type=int, default=None, help="default: all 10,000")
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--dense-epochs", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=6, help="compression epochs (>= 3)")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--fine-tune-lr", type=float, default=0.01)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", default="runs/bench_distillation")
    args = parser.parse_args()
    if args.epochs < 3:
        parser.error("--epochs must be >= 3: prune, then QAT, then one QAT epoch")
    torch.set_num_threads(args.threads)
    data = FashionMNISTDataModule(
        batch_size=args.batch_size,
        train_size=args.train_size,
        val_size=args.val_size,
        test_size=args.test_size,
    )
    results = {"settings": vars(args), "cases": {}}
    for name in args.cases:
        results["cases"][name] = run_case(name, data, args)
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.output_dir) / "results.json").write_text(json.dumps(results, indent=2))
    print("| case | fp32 | plain | distilled | delta | step cost |")
    print("|---|---|---|---|---|---|")
    for name, r in results["cases"].items():
        print(
            f"| {name} | {r['fp32']:.2f} | {r['plain']:.2f} | {r['distilled']:.2f} | "
            f"{r['delta_points']:+.2f} | {r['step_cost_ratio']:.2f}x |"
        )


if __name__ == "__main__":
    main()
