"""Latency-budget pruning vs uniform pruning at equal measured latency (issue #15).

Fashion-MNIST, one architecture (ResNet-18 by default), every variant fine-tuned from the same
dense checkpoint for the same epochs:

1. uniform ``GradualPruning(0.5, round_to=8)``: its latency is measured against the dense model
   (alternating rounds on ONNX Runtime) as a speedup S;
2. ``LatencyBudgetPruning(target_speedup=S)`` on the same runtime, batch and threads: the same
   latency as uniform (a speedup budget is the latency ``dense / S`` judged in the same timing
   rounds as the dense model, so CPU contention cancels), and its accuracy;
3. the widths the allocator picks for a 2x budget at batch 1 and at batch 64 (no training).

Latency of the final models: dense, uniform and budget timed in alternating rounds in this
process; speedups are medians of per-round ratios, with half their interquartile range.

    .venv/bin/python benchmarks/latency_budget.py                   # scaled down: ~5 min
    .venv/bin/python benchmarks/latency_budget.py --train-size 12000 --epochs 4
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch

from lightning_accel import (
    ClassificationModule,
    FashionMNISTDataModule,
    GradualPruning,
    LatencyBudgetPruning,
)
from lightning_accel.pruning.allocation import allocate
from lightning_accel.pruning.channels import out_channels
from lightning_accel.pruning.latency_model import (
    Probe,
    build_latency_model,
    channel_groups,
    dependency_graph,
    group_scores,
    round_ratio,
)
from lightning_accel.utilities.layer_selection import select_layers

RESULTS = Path(__file__).parent / "results" / "latency_budget.json"


def trainer(epochs: int, callbacks: list) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )


def accuracy(module: ClassificationModule, data: FashionMNISTDataModule) -> float:
    result = trainer(1, []).test(module, datamodule=data, verbose=False)
    return 100.0 * float(result[0]["test/acc"])


def copy_of(dense: ClassificationModule, lr: float, epochs: int) -> ClassificationModule:
    hp = dict(dense.hparams)
    hp.update(lr=lr, cosine_epochs=epochs)
    module = ClassificationModule(**hp)
    module.load_state_dict(dense.state_dict())
    return module


def widths(module: ClassificationModule) -> dict[str, int]:
    return {
        name: out_channels(m)
        for name, m in module.named_modules()
        if isinstance(m, torch.nn.Conv2d) and "downsample" not in name
    }


def widths_at_batch(dense: ClassificationModule, batch: int, speedup: float, threads: int) -> dict:
    """The allocator's widths for ``speedup`` at one batch size (latency model, no training)."""
    example = dense.example_input_array[:1]
    layers = select_layers(dense, example, (), True, "benchmark")
    groups = channel_groups(dense, example, layers, 8)
    probe = Probe("onnxruntime", example, batch, threads, rounds=3)
    try:
        model = build_latency_model(dense, example, groups, probe, 8, widths_per_group=2)
    finally:
        probe.close()
    graph = dependency_graph(dense, example)
    scores = group_scores(dense, graph, layers, [g.name for g in groups], "l2")
    weights = {g.name: float(len(g.layers)) for g in groups}
    plan = allocate(scores, model.saving, model.base_ms, model.base_ms / speedup, 8, 1.0, weights)
    return {"base_ms": model.base_ms, "predicted_ms": plan.predicted_ms, "widths": plan.widths}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs per variant")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads")
    parser.add_argument("--skip-batch-widths", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    pl.seed_everything(0)
    started = time.perf_counter()
    data = FashionMNISTDataModule(
        batch_size=128, train_size=args.train_size, test_size=args.test_size, val_size=500
    )
    dense = ClassificationModule(args.model, lr=0.05, cosine_epochs=1)
    trainer(1, []).fit(dense, datamodule=data)  # one dense epoch: magnitudes mean something
    rows: dict[str, dict] = {"dense": {"acc": accuracy(dense, data)}}

    uniform = copy_of(dense, 0.02, args.epochs)
    prune = GradualPruning(0.5, schedule="constant", start_epoch=0, end_epoch=1, round_to=8)
    trainer(args.epochs, [prune]).fit(uniform, datamodule=data)
    rows["uniform 50%"] = {"acc": accuracy(uniform, data)}

    probe = Probe("onnxruntime", dense.example_input_array[:1], 1, args.threads, rounds=7)
    try:
        dense_c, uniform_c = probe.compile(dense, True), probe.compile(uniform, True)
        d_runs, u_runs = probe.time_rounds([dense_c, uniform_c])
        speedup, _ = round_ratio(d_runs, u_runs)
        budget = copy_of(dense, 0.02, args.epochs)
        callback = LatencyBudgetPruning(
            target_speedup=speedup,
            threads=args.threads,
            schedule="constant",
            start_epoch=0,
            end_epoch=1,
            widths_per_group=2,
        )
        trainer(args.epochs, [callback]).fit(budget, datamodule=data)
        rows["latency budget"] = {"acc": accuracy(budget, data), "target_speedup": speedup}
        budget_c = probe.compile(budget, True)
        runs = probe.time_rounds([dense_c, uniform_c, budget_c])
    finally:
        probe.close()
    for name, index in (("uniform 50%", 1), ("latency budget", 2)):
        ratio, spread = round_ratio(runs[0], runs[index])
        rows[name].update(speedup=ratio, spread=spread)
    rows["dense"].update(speedup=1.0, spread=0.0)
    layer_widths = {"uniform 50%": widths(uniform), "latency budget": widths(budget)}

    batch_widths = {}
    if not args.skip_batch_widths:
        for batch in (1, 64):
            batch_widths[batch] = widths_at_batch(dense, batch, 2.0, args.threads)

    print(
        f"\n{args.model}, Fashion-MNIST train {args.train_size} / test {args.test_size}, "
        f"{args.epochs} fine-tuning epochs, ONNX Runtime batch 1, {args.threads} thread(s)\n"
    )
    print("| variant | test acc (%) | speedup vs dense (measured, +- half IQR) |")
    print("|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['acc']:.1f} | {row['speedup']:.2f}x +- {row['spread']:.0%} |")
    print("\n| layer | uniform 50% | latency budget |")
    print("|---|---|---|")
    for layer, width in layer_widths["uniform 50%"].items():
        print(f"| {layer} | {width} | {layer_widths['latency budget'][layer]} |")
    if batch_widths:
        print("\nAllocator's widths for a 2x budget (same dense model, l2 importance):")
        print("| group | batch 1 | batch 64 |")
        print("|---|---|---|")
        for group, width in batch_widths[1]["widths"].items():
            print(f"| {group} | {width} | {batch_widths[64]['widths'][group]} |")
    elapsed = time.perf_counter() - started
    print(f"\n{elapsed:.0f} s")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "args": vars(args),
                "rows": rows,
                "layer_widths": layer_widths,
                "batch_widths": {str(k): v for k, v in batch_widths.items()},
                "seconds": elapsed,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
