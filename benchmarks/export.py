"""Export-hook benchmark: ResNet-18 on Fashion-MNIST, pruned, monitored and exported in one fit.

GradualPruning, LatencyMonitor and ExportOnFitEnd run together. Reports LatencyMonitor's cost
per epoch (against the epoch time), export and verification time, and the export hook's table.

    .venv/bin/python benchmarks/export.py            # ~12 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from lightning_accel import (
    ClassificationModule,
    ExportOnFitEnd,
    FashionMNISTDataModule,
    GradualPruning,
    LatencyMonitor,
)
from lightning_accel.callbacks.export import format_summary


class EpochTimer(Callback):
    """Wall time of each training epoch, validation and LatencyMonitor included."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=55_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", default="runs/bench_export")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pl.seed_everything(0)
    out = Path(args.output_dir)
    monitor = LatencyMonitor(batch_sizes=(1,), threads=args.threads)
    export = ExportOnFitEnd(out, batch_sizes=(1, 64), threads=args.threads)
    timer = EpochTimer()
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer, GradualPruning(0.5, end_epoch=args.epochs - 1), monitor, export],
    )
    data = FashionMNISTDataModule(train_size=args.train_size, val_size=5000)
    trainer.fit(
        ClassificationModule("resnet18", lr=0.05, cosine_epochs=args.epochs), datamodule=data
    )

    print("| epoch | epoch s | LatencyMonitor s | share of epoch | b1 latency ms |")
    print("|---|---|---|---|---|")
    for seconds, row in zip(timer.seconds, monitor.history, strict=True):
        cost = row["latency/monitor_s"]
        print(
            f"| {int(row['epoch'])} | {seconds:.1f} | {cost:.1f} | {cost / seconds:.1%} | "
            f"{row['latency/onnxruntime/b1_ms']:.2f} |"
        )
    timings = export.summary["timings"]
    print(
        f"\nexport (model + baseline) {timings['export_s']:.1f} s, verification "
        f"{timings['verify_onnxruntime_s']:.2f} s, "
        f"benchmark {timings['benchmark_onnxruntime_s']:.1f} s\n"
    )
    print(format_summary(export.summary))
    (out / "bench_export.json").write_text(
        json.dumps(
            {"epoch_s": timer.seconds, "monitor": monitor.history, "summary": export.summary},
            indent=2,
            default=str,
        )
    )


if __name__ == "__main__":
    main()
