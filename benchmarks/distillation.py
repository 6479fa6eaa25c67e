"""Distillation benchmark: compression with and without the dense model as teacher.

Fashion-MNIST. Per architecture a dense fp32 model is trained once (on ``--dense-train-size``
images: a teacher trained on more data than the compression sees, as a user's production
model would be); per case and seed, two copies of it are compressed with the same callbacks,
data (``--train-size`` images, a subset of the dense model's), epochs and batch order, one
plain and one with ``Distillation(teacher="initial")`` (the dense model, frozen). A seed sets
the order of the compression's training batches. Reported: test accuracy of fp32, plain and
distilled, the paired delta per seed with its mean and standard error, and the training-step
cost with the teacher against a plain step, timed in alternating rounds on the compressed
student (``compare_latency``) and, as a cross-check, the median step time of the two runs.

Cases: ``mobilenet_v2_prune_qat`` and ``resnet18_prune_qat`` (50% of channels pruned over
the first epochs, then int8 QAT for ONNX Runtime), ``resnet18_binary`` (weights and
activations of every inner layer binarized, XNOR-Net scaling, Bi-Real's approx-sign STE).

    .venv/bin/python benchmarks/distillation.py   # all three, full data: hours on 2 CPU cores
    # the scaled-down run in docs/distillation.md (23 minutes on 2 CPU cores):
    .venv/bin/python benchmarks/distillation.py --dense-train-size 10000 --train-size 3000 \
        --dense-epochs 3 --epochs 4 --seeds 0 1 --test-size 5000 --val-size 500 --batch-size 64
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from lightning_accel import (
    Binarize,
    ClassificationModule,
    Distillation,
    FashionMNISTDataModule,
    GradualPruning,
    QuantizationAware,
)
from lightning_accel.backends.timing import compare_latency
from lightning_accel.cli.fit_job import fine_tune_copy, make_trainer, test_accuracy
from lightning_accel.data.sampling import EpochShuffleSampler
from lightning_accel.distillation import Distiller

CASES = {
    "mobilenet_v2_prune_qat": ("mobilenet_v2", "prune_qat"),
    "resnet18_prune_qat": ("resnet18", "prune_qat"),
    "resnet18_binary": ("resnet18", "binary"),
}
TITLES = {
    "mobilenet_v2_prune_qat": "MobileNetV2 prune 50% + QAT",
    "resnet18_prune_qat": "ResNet-18 prune 50% + QAT",
    "resnet18_binary": "ResNet-18 fully binarized",
}


class ReorderedData(FashionMNISTDataModule):
    """The same split and training subset as ``seed=0``; batches drawn in ``order_seed``'s order."""

    def __init__(self, order_seed: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.order_seed = order_seed

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup() first"
        sampler = EpochShuffleSampler(len(self.train_set), self.order_seed)
        return DataLoader(self.train_set, self.batch_size, sampler=sampler, drop_last=True)


class StepTimer(pl.Callback):
    """Wall time of every training batch (forward, teacher, backward and optimizer step)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.seconds.append(time.perf_counter() - self._start)


def prune_qat_epochs(epochs: int) -> tuple[int, int]:
    """(pruning end epoch, QAT start epoch) for ``epochs`` compression epochs (>= 3).

    Pruning ramps up within the first epochs (cubic, several updates per epoch) so the teacher
    acts while channels go; then at least one epoch recovers in float, the rest train in QAT.
    """
    prune_end = max(1, (epochs - 1) // 2)
    return prune_end, prune_end + 1


def compression(kind: str, epochs: int, steps_per_epoch: int) -> list[pl.Callback]:
    """The compression callbacks of a case, scaled to ``epochs``."""
    if kind == "prune_qat":
        prune_end, qat_start = prune_qat_epochs(epochs)
        every = max(steps_per_epoch // 5, 1)
        return [
            GradualPruning(
                0.5, start_epoch=0, end_epoch=prune_end, update_every_n_steps=every, round_to=8
            ),
            QuantizationAware(start_epoch=qat_start),
        ]
    return [Binarize(scaling="channel", ste="approx_sign", start_epoch=0)]


def train_dense(
    model: str, args: argparse.Namespace, dense_data: FashionMNISTDataModule, data: Any
) -> tuple[ClassificationModule, float]:
    """The fp32 model and its test accuracy (cached in ``--output-dir`` across runs)."""
    out = Path(args.output_dir)
    cache = out / f"dense_{model}_{args.dense_train_size}x{args.dense_epochs}.pt"
    dense = ClassificationModule(model, lr=args.lr, cosine_epochs=args.dense_epochs)
    if cache.is_file() and args.reuse_dense:
        saved = torch.load(cache, weights_only=True)
        dense.load_state_dict(saved["state_dict"])
        trainer = make_trainer(1, [], out / model, "dense_test", progress=False)
        return dense, test_accuracy(trainer, dense, data)
    pl.seed_everything(0)
    trainer = make_trainer(args.dense_epochs, [], out / model, "dense", progress=False)
    trainer.fit(dense, datamodule=dense_data)
    accuracy = test_accuracy(trainer, dense, data)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": dense.state_dict(), "fp32": accuracy}, cache)
    return dense, accuracy


def fp32_as_long(model: str, dense: ClassificationModule, args: argparse.Namespace) -> float:
    """Test accuracy of the fp32 model fine-tuned as long as the compression, uncompressed.

    The same data (``--train-size``, seed 0's batch order), epochs and learning rate as a
    compressed student, no callbacks: the fp32 reference that had the students' extra epochs.

    Args:
        model: The architecture's name (its run folder).
        dense: The trained fp32 model; copied, not changed.
        args: The benchmark's arguments (data sizes, epochs, fine-tuning rate).
    """
    data = make_data(args, args.train_size, order_seed=0)
    pl.seed_everything(0)
    tuned = fine_tune_copy(dense, args.epochs, args.fine_tune_lr)
    out = Path(args.output_dir) / model
    trainer = make_trainer(args.epochs, [], out, "fp32_as_long", progress=False)
    trainer.fit(tuned, datamodule=data)
    return test_accuracy(trainer, tuned, data)


def step_cost(
    student: ClassificationModule, teacher: torch.nn.Module, batch: Any, args: argparse.Namespace
) -> dict[str, float]:
    """A distilled training step's time over a plain one, in alternating rounds.

    Both steps run the compressed student (train mode) forward, cross-entropy, backward and an
    SGD step; the distilled step adds the teacher's forward and the soft-target loss, exactly as
    ``distill`` does in ``fit``.
    """
    x, y = batch
    model = copy.deepcopy(student).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)
    distiller = Distiller(teacher, args.temperature, args.alpha)

    def step(with_teacher: bool) -> None:
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        if with_teacher:
            loss = distiller.combine(x, logits, loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # compare_latency's "speedup" is baseline / candidate: with the distilled step as the
    # baseline it is the distilled step's cost in plain steps.
    result = compare_latency(
        lambda: step(False),
        lambda: step(True),
        runs=4 * args.timing_rounds,
        rounds=args.timing_rounds,
        warmup=2,
        threads=args.threads,
    )
    return {
        "ratio": result.speedup,
        "ratio_p25": result.speedup_p25,
        "ratio_p75": result.speedup_p75,
        "plain_ms": result.model.median_ms,
        "distilled_ms": result.baseline.median_ms,
        "warning": result.warning or "",
    }


def run_seed(
    name: str,
    dense: ClassificationModule,
    args: argparse.Namespace,
    seed: int,
    result: dict[str, Any],
) -> None:
    """The plain and the distilled compression of ``dense`` with batch order ``seed``."""
    _, kind = CASES[name]
    out = Path(args.output_dir) / name
    data = make_data(args, args.train_size, order_seed=seed)
    data.setup("fit")
    steps_per_epoch = len(data.train_dataloader())
    row: dict[str, Any] = {}
    students: dict[str, ClassificationModule] = {}
    for variant in ("plain", "distilled"):
        pl.seed_everything(seed)
        student = fine_tune_copy(dense, args.epochs, args.fine_tune_lr)
        timer = StepTimer()
        callbacks: list[pl.Callback] = [*compression(kind, args.epochs, steps_per_epoch), timer]
        if variant == "distilled":
            callbacks.append(Distillation(temperature=args.temperature, alpha=args.alpha))
        trainer = make_trainer(args.epochs, callbacks, out, f"{variant}_s{seed}", False)
        trainer.fit(student, datamodule=data)
        row[variant] = test_accuracy(trainer, student, data)
        row[f"{variant}_step_ms"] = 1e3 * statistics.median(timer.seconds[5:] or timer.seconds)
        students[variant] = student
    row["delta_points"] = row["distilled"] - row["plain"]
    result["seeds"][str(seed)] = row
    if "step_cost" not in result:
        batch = next(iter(data.train_dataloader()))
        teacher = copy.deepcopy(dense).eval()
        result["step_cost"] = step_cost(students["plain"], teacher, batch, args)
    summarize(result)


def summarize(result: dict[str, Any]) -> None:
    """Means over the seeds run so far, the paired delta and its standard error."""
    rows = list(result["seeds"].values())
    deltas = [r["delta_points"] for r in rows]
    for key in ("plain", "distilled"):
        result[key] = statistics.mean(r[key] for r in rows)
    result["delta_points"] = statistics.mean(deltas)
    result["delta_stderr"] = (
        statistics.stdev(deltas) / len(deltas) ** 0.5 if len(deltas) > 1 else None
    )
    result["plain_vs_fp32_points"] = result["plain"] - result["fp32"]
    result["distilled_vs_fp32_points"] = result["distilled"] - result["fp32"]
    if "fp32_as_long" in result:
        result["distilled_vs_fp32_as_long_points"] = result["distilled"] - result["fp32_as_long"]
    result["in_run_step_ratio"] = statistics.median(
        r["distilled_step_ms"] / r["plain_step_ms"] for r in rows
    )


def make_data(args: argparse.Namespace, train_size: int | None, order_seed: int) -> ReorderedData:
    """Fashion-MNIST with the benchmark's split (seed 0) and test subset."""
    return ReorderedData(
        order_seed,
        batch_size=args.batch_size,
        train_size=train_size,
        val_size=args.val_size,
        test_size=args.test_size,
    )


_RESULTS: dict[str, Any] = {}


def save_partial(args: argparse.Namespace, name: str, result: dict[str, Any]) -> None:
    """Write what is measured so far (a run cut short keeps its finished seeds)."""
    _RESULTS.setdefault("settings", vars(args))
    _RESULTS.setdefault("cases", {})[name] = result
    path = Path(args.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_RESULTS, indent=2))


def table(results: dict[str, Any]) -> str:
    """The README's table (markdown)."""
    lines = [
        "| case | fp32 % | fp32 as long % | plain % | distilled % | Δ points (± s.e.) | "
        "per seed Δ | train step plain / distilled | step cost |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["cases"].items():
        if "delta_points" not in r:
            continue
        stderr = f" ± {r['delta_stderr']:.2f}" if r.get("delta_stderr") is not None else ""
        seeds = ", ".join(f"{s['delta_points']:+.2f}" for s in r["seeds"].values())
        cost = r["step_cost"]
        lines.append(
            f"| {TITLES[name]} | {r['fp32']:.2f} | {r.get('fp32_as_long', float('nan')):.2f} | "
            f"{r['plain']:.2f} | {r['distilled']:.2f} | "
            f"{r['delta_points']:+.2f}{stderr} | {seeds} | {cost['plain_ms']:.0f} / "
            f"{cost['distilled_ms']:.0f} ms | {cost['ratio']:.2f}x "
            f"[{cost['ratio_p25']:.2f}-{cost['ratio_p75']:.2f}] |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--train-size", type=int, default=None, help="default: all 55,000")
    parser.add_argument(
        "--dense-train-size", type=int, default=None, help="fp32 teacher's images; default: all"
    )
    parser.add_argument("--test-size", type=int, default=None, help="default: all 10,000")
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--dense-epochs", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=6, help="compression epochs (>= 3)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--fine-tune-lr", type=float, default=0.01)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--timing-rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output-dir", default="runs/bench_distillation")
    parser.add_argument("--results", default="benchmarks/results/distillation.json")
    parser.add_argument(
        "--reuse-dense", action="store_true", help="load the fp32 models a previous run saved"
    )
    parser.add_argument(
        "--fp32-as-long",
        action="store_true",
        help="also fine-tune each fp32 model, uncompressed, as long as the compression",
    )
    args = parser.parse_args()
    if args.epochs < 3:
        parser.error("--epochs must be >= 3: prune, recover, then QAT")
    if (args.train_size or 55000) > (args.dense_train_size or 55000):
        parser.error("--train-size must not exceed --dense-train-size (it is a subset of it)")
    torch.set_num_threads(args.threads)
    test_data = make_data(args, args.train_size, order_seed=0)
    dense_data = make_data(args, args.dense_train_size, order_seed=0)
    models: dict[str, tuple[ClassificationModule, float]] = {}
    as_long: dict[str, float] = {}
    results: dict[str, dict[str, Any]] = {}
    for seed in args.seeds:  # every case once before the next seed: a cut-short run has all
        for name in args.cases:
            model, _ = CASES[name]
            if model not in models:  # one fp32 model per architecture, shared by its cases
                models[model] = train_dense(model, args, dense_data, test_data)
                if args.fp32_as_long:
                    as_long[model] = fp32_as_long(model, models[model][0], args)
            dense, fp32 = models[model]
            result = results.setdefault(name, {"fp32": fp32, "seeds": {}})
            if model in as_long:
                result["fp32_as_long"] = as_long[model]
            run_seed(name, dense, args, seed, result)
            save_partial(args, name, result)
    print(table(_RESULTS))


if __name__ == "__main__":
    main()
