"""Pruning benchmark: dense vs 50% structured vs 80% unstructured vs 2:4, one run, same epochs.

Every variant starts from the same dense checkpoint and fine-tunes for the same epochs; the
dense row fine-tunes too, without pruning. Latency is ONNX Runtime on the CPU, measured in this
process one model after another, so the speedups are ratios taken under the same conditions.

    .venv/bin/python benchmarks/pruning.py            # ~30 min on 2 CPU cores
    .venv/bin/python benchmarks/pruning.py --quick    # ~3 min smoke run
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from lightning_accel import ClassificationModule, FashionMNISTDataModule, GradualPruning
from lightning_accel.cli.fit_job import fine_tune_copy, make_trainer, test_accuracy
from lightning_accel.cli.report import format_table, measure_model, time_against_baseline


class StepTimer(Callback):
    """Wall time between consecutive training-batch starts (the whole step, all hooks)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._last: float | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        now = time.perf_counter()
        if self._last is not None:
            self.times.append(now - self._last)
        self._last = now


def time_hooks(callback: Callback, durations: list[float]) -> None:
    """Record the wall time a callback spends in its per-batch hooks, per training batch."""
    start, end = callback.on_train_batch_start, callback.on_train_batch_end

    def timed_start(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
        t0 = time.perf_counter()
        start(*args, **kwargs)
        durations.append(time.perf_counter() - t0)

    def timed_end(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
        t0 = time.perf_counter()
        end(*args, **kwargs)
        durations[-1] += time.perf_counter() - t0

    callback.on_train_batch_start = timed_start  # type: ignore[method-assign]
    callback.on_train_batch_end = timed_end  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--train-size", type=int, default=20_000)
    parser.add_argument("--dense-epochs", type=int, default=3)
    parser.add_argument("--fine-tune-epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", default="runs/bench_pruning")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.train_size, args.dense_epochs, args.fine_tune_epochs = 2048, 1, 2
    out = Path(args.output_dir)
    torch.set_num_threads(args.threads)
    pl.seed_everything(0, workers=True)
    data = FashionMNISTDataModule(
        train_size=args.train_size, val_size=2000, test_size=2000 if args.quick else None
    )

    started = time.perf_counter()
    dense = ClassificationModule(args.model, lr=args.lr, cosine_epochs=args.dense_epochs)
    make_trainer(args.dense_epochs, [], out, "pretrain", progress=False).fit(dense, datamodule=data)

    end_epoch = max(args.fine_tune_epochs - 2, 1)
    variants = {
        "dense": None,
        "structured 50%": GradualPruning(0.5, mode="structured", end_epoch=end_epoch),
        "unstructured 80%": GradualPruning(
            0.8, mode="unstructured", end_epoch=end_epoch, update_every_n_steps=25
        ),
        "2:4 (50%)": GradualPruning(0.5, mode="2:4", end_epoch=end_epoch),
    }
    rows, step_ms, hook_ms = [], {}, {}
    for name, callback in variants.items():
        pl.seed_everything(1, workers=True)
        module = fine_tune_copy(dense, args.fine_tune_epochs, args.lr / 5)
        timer, hook_times = StepTimer(), []
        if callback:
            time_hooks(callback, hook_times)
        callbacks = [timer] + ([callback] if callback else [])
        trainer = make_trainer(
            args.fine_tune_epochs, callbacks, out, name.split()[0], progress=False
        )
        trainer.fit(module, datamodule=data)
        accuracy = test_accuracy(trainer, module, data)
        step_ms[name] = 1000 * statistics.median(timer.times)
        # The median batch does not prune: pruning steps are a few outliers.
        hook_ms[name] = 1000 * statistics.median(hook_times) if hook_times else 0.0
        rows.append(
            measure_model(
                name,
                module.model,
                accuracy,
                module.example_input_array,
                out / f"{name.split()[0]}.onnx",
                threads=args.threads,
                runs=50,
            )
        )
        print(
            f"{name}: top-1 {accuracy:.2f}%  ({time.perf_counter() - started:.0f} s so far)",
            flush=True,
        )

    time_against_baseline(rows, rows[0], threads=args.threads)  # alternating rounds (#18)
    print()
    print(format_table(rows, rows[0]))
    print()
    print("| variant | median train step ms | callback ms per step (median) | callback overhead |")
    print("|---|---|---|---|")
    for name, ms in step_ms.items():
        print(f"| {name} | {ms:.1f} | {hook_ms[name]:.2f} | {hook_ms[name] / ms:.2%} |")
    print(
        f"\n{args.model}, {args.train_size} training images, {args.dense_epochs} dense + "
        f"{args.fine_tune_epochs} fine-tune epochs, ONNX Runtime {args.threads} threads; "
        f"total {time.perf_counter() - started:.0f} s"
    )
    (out / "results.json").write_text(
        json.dumps(
            {
                "args": vars(args),
                "models": [asdict(r) for r in rows],
                "train_step_ms": step_ms,
                "callback_ms": hook_ms,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
