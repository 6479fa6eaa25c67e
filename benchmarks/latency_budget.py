"""Latency-budget pruning vs uniform pruning at equal measured latency (issue #15).

Fashion-MNIST; every variant is fine-tuned from the same dense checkpoint (``--dense-epochs``)
for the same epochs, pruned at its first batch (``schedule="constant"``). Parts:

``equal``  per model (ResNet-18, MobileNetV2): uniform ``GradualPruning(0.5, round_to=8)``, its
           speedup S measured against the dense model (alternating rounds, ONNX Runtime batch
           1), then ``LatencyBudgetPruning(target_speedup=S)``: accuracy at equal latency;
           the dense model fine-tuned as long is the accuracy reference.
``curve``  ResNet-18: budgets of 2x/3x/4x against uniform 30/50/70%, accuracy vs measured
           speedup.
``plans``  ResNet-18: the widths ``LatencyBudgetPruning`` picks for one budget (2x) on ONNX
           Runtime and on OpenVINO, each at batch 1 and 64: the callback's closed-loop plan
           (two training batches) and the allocator's open-loop plan from the first latency
           model alone; then every pruned model timed on every one of those runtimes against
           the dense model (which plan is fastest where, and how far the open loop lands).
``qat``    ResNet-18: the 4x-budget model of ``curve`` (fine-tuned here if ``curve`` did not
           run) then one epoch of ``QuantizationAware``;
           its int8 ONNX against the dense fp32 model on ONNX Runtime at batch 1 and 64. With
           ``--distill``, the same again with the dense fp32 model as the teacher
           (``Distillation``, T=4, alpha=0.5) in both the pruning fine-tune and the QAT epoch.

Latency: the final models of a part timed in alternating rounds with the dense model in this
process; speedups are medians of per-round ratios with half their interquartile range.
Results merge into ``benchmarks/results/latency_budget.json`` (one part can be rerun alone);
the dense checkpoints are cached in ``--cache`` between runs.

    .venv/bin/python benchmarks/latency_budget.py                     # every part, scaled down
    .venv/bin/python benchmarks/latency_budget.py --parts equal --models resnet18 --seeds 0 1
    .venv/bin/python benchmarks/latency_budget.py --train-size 12000 --test-size 10000 --epochs 4
    .venv/bin/python benchmarks/latency_budget.py --train-size 8000 --test-size 10000 \
        --dense-epochs 3 --epochs 3 --distill                         # the README's run
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from lightning_accel import (
    ClassificationModule,
    Distillation,
    FashionMNISTDataModule,
    GradualPruning,
    LatencyBudgetPruning,
    QuantizationAware,
)
from lightning_accel.backends import compile_model
from lightning_accel.backends.timing import compare_latency
from lightning_accel.export.onnx import to_onnx
from lightning_accel.pruning.allocation import allocate
from lightning_accel.pruning.channels import out_channels
from lightning_accel.pruning.latency_model import (
    Probe,
    build_latency_model,
    channel_groups,
    dependency_graph,
    group_scores,
    random_inputs,
    round_ratio,
    thinned_copy,
)
from lightning_accel.utilities.layer_selection import select_layers

RESULTS = Path(__file__).parent / "results" / "latency_budget.json"
DENSE_LR, TUNE_LR = 0.05, 0.02
BUDGET_4X: dict[int, Any] = {}  # the curve's 4x-budget model per seed, for the qat part


def trainer(epochs: int, callbacks: list, **limits: int) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        **limits,
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


def conv_widths(module: torch.nn.Module) -> dict[str, int]:
    return {
        name: out_channels(m)
        for name, m in module.named_modules()
        if isinstance(m, torch.nn.Conv2d) and "downsample" not in name
    }


def dense_model(name: str, seed: int, data: FashionMNISTDataModule, args: Any) -> Any:
    """``args.dense_epochs`` dense epochs (cached per model, seed, data size and epochs)."""
    epochs, cache = args.dense_epochs, args.cache
    path = cache / f"{name}-seed{seed}-train{args.train_size}-epochs{epochs}.pt"
    pl.seed_everything(seed)
    dense = ClassificationModule(name, lr=DENSE_LR, cosine_epochs=epochs)
    if path.exists():
        dense.load_state_dict(torch.load(path, weights_only=True))
    else:
        trainer(epochs, []).fit(dense, datamodule=data)
        cache.mkdir(parents=True, exist_ok=True)
        torch.save(dense.state_dict(), path)
    return dense


def fine_tune(dense: Any, callbacks: list, data: Any, epochs: int, seed: int) -> Any:
    pl.seed_everything(seed + 100)
    module = copy_of(dense, TUNE_LR, epochs)
    trainer(epochs, callbacks).fit(module, datamodule=data)
    return module


def uniform(amount: float) -> GradualPruning:
    return GradualPruning(amount, schedule="constant", start_epoch=0, end_epoch=1, round_to=8)


def budget(
    speedup: float, threads: int, batch: int = 1, backend: str = "onnxruntime"
) -> LatencyBudgetPruning:
    return LatencyBudgetPruning(
        target_speedup=speedup,
        backend=backend,
        threads=threads,
        batch_size=batch,
        schedule="constant",
        start_epoch=0,
        end_epoch=1,
        widths_per_group=2,
    )


def time_against_dense(
    dense: Any, models: dict[str, Any], threads: int, backend: str = "onnxruntime", batch: int = 1
) -> dict[str, list]:
    """Speedup of each model over ``dense``, all timed in 7 alternating rounds."""
    probe = Probe(backend, dense.example_input_array[:1], batch, threads, rounds=7)
    try:
        compiled = [probe.compile(dense, True)] + [probe.compile(m, True) for m in models.values()]
        runs = probe.time_rounds(compiled)
    finally:
        probe.close()
    return {name: list(round_ratio(runs[0], runs[i + 1])) for i, name in enumerate(models.keys())}


def callback_figures(callback: LatencyBudgetPruning) -> dict[str, Any]:
    stages = [row for row in callback.history if "speedup" in row]
    return {
        "target_speedup": callback.target_speedup,
        "callback_speedup": callback.last.get("speedup"),
        "callback_spread": callback.last.get("spread"),
        "measured_steps": len(stages),
        "target_ms": callback.target_ms,
        "stages": [
            {k: row.get(k) for k in ("goal_ms", "predicted_ms", "measured_ms", "speedup")}
            for row in callback.history
        ],
    }


# ----------------------------------------------------------------------------------- parts
def part_equal(name: str, seed: int, data: Any, args: argparse.Namespace) -> dict[str, Any]:
    dense = dense_model(name, seed, data, args)
    rows: dict[str, dict[str, Any]] = {
        f"dense ({args.dense_epochs} epochs)": {"acc": accuracy(dense, data)}
    }
    tuned = fine_tune(dense, [], data, args.epochs, seed)
    rows["dense fine-tuned"] = {"acc": accuracy(tuned, data)}
    half = fine_tune(dense, [uniform(0.5)], data, args.epochs, seed)
    rows["uniform 50%"] = {"acc": accuracy(half, data)}
    ((s, _),) = time_against_dense(dense, {"u": half}, args.threads, args.backend).values()
    callback = budget(s, args.threads, backend=args.backend)
    fitted = fine_tune(dense, [callback], data, args.epochs, seed)
    rows["latency budget"] = {"acc": accuracy(fitted, data), **callback_figures(callback)}
    timed = time_against_dense(
        dense,
        {"dense fine-tuned": tuned, "uniform 50%": half, "latency budget": fitted},
        args.threads,
        args.backend,
    )
    for key, (speedup, spread) in timed.items():
        rows[key].update(speedup=speedup, spread=spread)
    widths = {"uniform 50%": conv_widths(half), "latency budget": conv_widths(fitted)}
    return {"rows": rows, "widths": widths}


def part_curve(seed: int, data: Any, args: argparse.Namespace) -> dict[str, Any]:
    dense = dense_model("resnet18", seed, data, args)
    models: dict[str, Any] = {}
    rows: dict[str, dict[str, Any]] = {}
    for amount in (0.3, 0.5, 0.7):
        key = f"uniform {amount:.0%}"
        models[key] = fine_tune(dense, [uniform(amount)], data, args.epochs, seed)
        rows[key] = {"acc": accuracy(models[key], data)}
    for speedup in (2.0, 3.0, 4.0):
        key = f"budget {speedup:g}x"
        callback = budget(speedup, args.threads, backend=args.backend)
        try:
            models[key] = fine_tune(dense, [callback], data, args.epochs, seed)
        except ValueError as err:  # refused in setup: out of reach
            rows[key] = {"error": str(err).splitlines()[0]}
            continue
        rows[key] = {"acc": accuracy(models[key], data), **callback_figures(callback)}
    for key, (s, spread) in time_against_dense(dense, models, args.threads, args.backend).items():
        rows[key].update(speedup=s, spread=spread)
    if "budget 4x" in models and args.backend == "onnxruntime":  # qat budgets on ONNX Runtime
        BUDGET_4X[seed] = models["budget 4x"]
    return {"rows": rows, "widths": {k: conv_widths(m) for k, m in models.items()}}


RUNTIMES = (("onnxruntime", 1), ("onnxruntime", 64), ("openvino", 1), ("openvino", 64))


def plan(dense: Any, backend: str, batch: int, speedup: float, threads: int) -> dict[str, Any]:
    """The allocator's widths for ``speedup`` on one runtime and batch size (no training)."""
    example = dense.example_input_array[:1]
    layers = select_layers(dense, example, (), True, "benchmark")
    groups = channel_groups(dense, example, layers, 8)
    probe = Probe(backend, example, batch, threads, rounds=3)
    try:
        model = build_latency_model(dense, example, groups, probe, 8, widths_per_group=2)
    finally:
        probe.close()
    graph = dependency_graph(dense, example)
    scores = group_scores(dense, graph, layers, [g.name for g in groups], "l2")
    weights = {g.name: float(len(g.layers)) for g in groups}
    target = model.base_ms / speedup
    chosen = allocate(scores, model.saving, model.base_ms, target, 8, 1.0, weights)
    return {"base_ms": model.base_ms, "predicted_ms": chosen.predicted_ms, "widths": chosen.widths}


def closed_loop_plan(
    dense: Any, data: Any, backend: str, batch: int, speedup: float, threads: int
) -> tuple[Any, dict[str, Any]]:
    """The callback's own plan for ``speedup`` on one runtime: two training batches, no more.

    ``schedule="constant"`` prunes the whole budget at the first batch, with every stage
    exported and timed on ``backend`` (the closed loop), so the widths are the ones a full fit
    would train; one SGD step on the weights does not change a latency.
    """
    callback = budget(speedup, threads, batch, backend)
    module = copy_of(dense, TUNE_LR, 1)
    # end_epoch=1: the schedule needs epoch 1 to start, so 2 epochs of one batch each
    trainer(2, [callback], limit_train_batches=1, limit_val_batches=0).fit(module, datamodule=data)
    return module, {**callback_figures(callback), "widths": dict(callback.widths)}


def cross_speedups(dense: Any, models: dict[str, Any], threads: int) -> dict[str, dict]:
    """Every model timed on every runtime: ``{model: {runtime: [speedup vs dense, ±]}}``.

    Each runtime times the dense model and all the others in the same 7 alternating rounds,
    so a plan made for one runtime is seen on the others at the same moment.
    """
    cross: dict[str, dict[str, list]] = {k: {} for k in models}
    for backend, batch in RUNTIMES:
        try:
            timed = time_against_dense(dense, models, threads, backend, batch)
        except RuntimeError:  # a runtime missing here
            continue
        for name, speedup in timed.items():
            cross[name][f"{backend} b{batch}"] = speedup
    return cross


def part_plans(seed: int, data: Any, args: argparse.Namespace) -> dict[str, Any]:
    dense = dense_model("resnet18", seed, data, args)
    example = dense.example_input_array[:1]
    found: dict[str, dict[str, Any]] = {}
    closed: dict[str, dict[str, Any]] = {}
    models: dict[str, Any] = {}
    for backend, batch in RUNTIMES:
        key = f"{backend} b{batch}"
        try:
            found[key] = plan(dense, backend, batch, 2.0, args.threads)
            models[key], closed[key] = closed_loop_plan(
                dense, data, backend, batch, 2.0, args.threads
            )
        except RuntimeError as err:  # a runtime missing here
            found[key] = {"error": str(err).splitlines()[0]}
            continue
        models[f"{key} open loop"] = thinned_copy(dense, example, found[key]["widths"])
    return {
        "speedup": 2.0,
        "plans": found,
        "closed_loop": closed,
        "cross": cross_speedups(dense, models, args.threads),
    }


def onnx_accuracy(path: Path, data: Any, threads: int) -> float:
    model = compile_model("onnxruntime", path, path.parent / "ort", threads=threads)
    right = total = 0
    for x, y in data.test_dataloader():
        right += int((np.asarray(model.run(x.numpy())).argmax(1) == y.numpy()).sum())
        total += len(y)
    return 100.0 * right / total


def quantize(module: Any, data: Any, seed: int, teacher: Any = None) -> Any:
    """One ``QuantizationAware`` epoch at a tenth of the fine-tuning rate (and the teacher)."""
    module.hparams.lr, module.hparams.cosine_epochs = TUNE_LR / 10, 1
    pl.seed_everything(seed + 200)
    callbacks: list = [QuantizationAware("onnxruntime")]
    if teacher is not None:
        callbacks.append(Distillation(teacher=teacher))
    trainer(1, callbacks).fit(module, datamodule=data)
    return module


def qat_key(args: argparse.Namespace) -> str:
    """Where a qat run's results go: ``qat`` for the 4x budget at batch 1, else with both."""
    if args.qat_speedup == 4.0 and args.qat_batch == 1:
        return "qat"
    return f"qat {args.qat_speedup:g}x b{args.qat_batch}"


def part_qat(seed: int, data: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The budget (``--qat-speedup`` at ``--qat-batch``), then QAT: int8 vs dense fp32."""
    dense = dense_model("resnet18", seed, data, args)
    speedup, batch = args.qat_speedup, args.qat_batch
    name = (
        "budget 4x" if qat_key(args) == "qat" else f"budget {speedup:g}x (planned at batch {batch})"
    )
    pruned = BUDGET_4X.get(seed) if name == "budget 4x" else None  # curve's, if it ran
    callback = budget(speedup, args.threads, batch)
    if pruned is None:
        pruned = fine_tune(dense, [callback], data, args.epochs, seed)
    tuned = fine_tune(dense, [], data, args.epochs + 1, seed)  # as many epochs as prune + QAT
    students = {f"{name} + QAT int8": (pruned, None)}
    if args.distill:
        # the dense fp32 reference teaches: a frozen copy, never pruned or quantized
        teacher = copy.deepcopy(tuned.model).eval()
        distill = Distillation(teacher=teacher)
        taught = fine_tune(
            dense, [budget(speedup, args.threads, batch), distill], data, args.epochs, seed
        )
        students[f"{name} + QAT int8, distilled"] = (taught, teacher)
    example = dense.example_input_array[:1]
    out = Path(tempfile.mkdtemp(prefix="bench-latency-qat-"))
    files = {"dense fp32": to_onnx(tuned.model, example, out / "dense" / "model.onnx")}
    rows: dict[str, dict[str, Any]] = {}
    widths = {key: conv_widths(student) for key, (student, _) in students.items()}
    for i, (key, (student, teacher)) in enumerate(students.items()):
        before = key.replace("+ QAT int8", "fp32 (before QAT)")
        rows[before] = {"acc": accuracy(student, data)}
        files[before] = to_onnx(student.model, example, out / f"fp{i}" / "model.onnx")
        quantize(student, data, seed, teacher)
        files[key] = to_onnx(student.model, example, out / f"qat{i}" / "model.onnx")
    for file_name, path in files.items():
        rows[file_name] = {
            **rows.get(file_name, {}),
            "acc": onnx_accuracy(path, data, args.threads),
        }
    rows[f"{name} + QAT int8"].update(callback_figures(callback) if callback.history else {})
    base = compile_model("onnxruntime", files["dense fp32"], out / "b", threads=args.threads)
    for i, key in enumerate(k for k in files if k != "dense fp32"):
        model = compile_model("onnxruntime", files[key], out / f"m{i}", threads=args.threads)
        for timed in (1, 64):
            inputs = random_inputs(example, timed)
            runs = 200 if timed == 1 else 30
            c = compare_latency(
                model, base, inputs, timed, runs=runs, rounds=6, threads=args.threads
            )
            rows[key][f"speedup_b{timed}"] = [c.speedup, c.speedup_p25, c.speedup_p75]
            rows[key][f"ms_b{timed}"] = c.model.median_ms
            rows["dense fp32"][f"ms_b{timed}"] = c.baseline.median_ms
    return {
        "rows": rows,
        "widths": widths,
        "budget_speedup": speedup,
        "budget_batch": batch,
        "qat_epochs": 1,
        "dense_epochs": args.dense_epochs + args.epochs + 1,
        "test_images": args.test_size,
    }


# ----------------------------------------------------------------------------------- report
def stderr(acc: float, n: int) -> float:
    """Binomial standard error of a test accuracy in points (test sampling only)."""
    p = acc / 100.0
    return 100.0 * math.sqrt(p * (1 - p) / n)


def _speed(row: dict[str, Any]) -> str:
    return f"{row['speedup']:.2f}x ±{row['spread']:.0%}" if "speedup" in row else "1.00x"


def report(results: dict[str, Any]) -> None:
    """Print the saved results as Markdown tables (accuracy ± its test-sampling error)."""
    n = results.get("args", {}).get("test_size", 2000)
    head = "| variant | test top-1 % | speedup vs dense (measured) | callback measured |"
    for model, by_seed in results.get("equal", {}).items():
        for seed, part in by_seed.items():
            print(f"\nequal latency: {model}, seed {seed}\n{head}\n|---|---|---|---|")
            for key, row in part["rows"].items():
                cb = f"{row['callback_speedup']:.2f}x" if row.get("callback_speedup") else "-"
                acc = f"{row['acc']:.1f} ±{stderr(row['acc'], n):.1f}"
                print(f"| {key} | {acc} | {_speed(row)} | {cb} |")
    curves = [
        (k, seed, part)
        for k in results
        if k.startswith("curve")
        for seed, part in results[k].items()
    ]
    for key, seed, part in curves:
        print(f"\n{key}: resnet18, seed {seed}\n{head}\n|---|---|---|---|")
        for variant, row in part["rows"].items():
            if "error" in row:
                print(f"| {variant} | refused: {row['error']} | | |")
                continue
            cb = f"{row['callback_speedup']:.2f}x" if row.get("callback_speedup") else "-"
            print(f"| {variant} | {row['acc']:.1f} | {_speed(row)} | {cb} |")
    for seed, part in results.get("plans", {}).items():
        plans = part.get("closed_loop") or part["plans"]
        names = [k for k in plans if "widths" in plans[k]]
        print(f"\nplans for {part['speedup']:g}x, seed {seed}\n| group | " + " | ".join(names))
        for group in plans[names[0]]["widths"] if names else []:
            widths = " | ".join(str(plans[k]["widths"][group]) for k in names)
            print(f"| {group} | {widths} |")
        cross = part.get("cross", {})
        runtimes = list(next(iter(cross.values()), {}))
        if runtimes:
            print("\nplan (rows) timed on runtime (columns), speedup vs dense ± half the IQR")
            print("| plan made for | " + " | ".join(runtimes) + " |")
            for name, row in cross.items():
                cells = " | ".join(f"{row[r][0]:.2f}x ±{row[r][1]:.0%}" for r in runtimes)
                print(f"| {name} | {cells} |")
    for key in (k for k in results if k.startswith("qat")):
        for seed, part in results[key].items():
            print(f"\n{key}, seed {seed}: {json.dumps(part['rows'], indent=1)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["equal", "curve", "plans", "qat"])
    parser.add_argument("--models", nargs="+", default=["resnet18", "mobilenet_v2"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs per variant")
    parser.add_argument("--dense-epochs", type=int, default=1, help="epochs of the dense model")
    parser.add_argument(
        "--distill", action="store_true", help="qat: also a variant the dense model teaches"
    )
    parser.add_argument("--threads", type=int, default=1, help="runtime threads")
    parser.add_argument(
        "--backend", default="onnxruntime", help="equal, curve: the runtime budgeted and timed"
    )
    parser.add_argument("--qat-speedup", type=float, default=4.0, help="qat: the budget")
    parser.add_argument(
        "--qat-batch", type=int, default=1, help="qat: the batch size the budget is planned at"
    )
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "bench-lb")
    parser.add_argument("--report", action="store_true", help="print the saved results only")
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON the parts merge into")
    args = parser.parse_args()
    path: Path = args.results
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    if "rows" in results:  # the single-part layout of the first version
        results = {}
    if args.report:
        report(results)
        return
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    data = FashionMNISTDataModule(
        batch_size=128, train_size=args.train_size, test_size=args.test_size, val_size=500
    )
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    results["args"] = settings
    on = "" if args.backend == "onnxruntime" else f" {args.backend}"  # result keys per runtime
    for seed in args.seeds:
        for part in args.parts:
            started = time.perf_counter()
            label = {
                "equal": f"equal {'+'.join(args.models)}{on}",
                "curve": f"curve{on}",
                "qat": qat_key(args),
            }.get(part, part)
            if part == "equal":
                for name in args.models:
                    out = part_equal(name, seed, data, args)
                    results.setdefault("equal", {}).setdefault(name + on, {})[str(seed)] = out
            elif part == "curve":
                results.setdefault(label, {})[str(seed)] = part_curve(seed, data, args)
            elif part == "plans":
                results.setdefault("plans", {})[str(seed)] = part_plans(seed, data, args)
            elif part == "qat":
                results.setdefault(qat_key(args), {})[str(seed)] = part_qat(seed, data, args)
            else:
                raise SystemExit(f"unknown part {part!r}: equal, curve, plans or qat")
            elapsed = time.perf_counter() - started
            results.setdefault("seconds", {})[f"{label} seed {seed}"] = elapsed
            results.setdefault("settings", {})[f"{label} seed {seed}"] = settings
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(results, indent=2))
    report(results)


if __name__ == "__main__":
    main()
