"""Peer suite (issue #12): the architectures people train, pruned and quantized through ``fit``.

For every classification model in the installed torchvision plus a few timm models (random
init, 10 classes, the smallest square input each accepts), in its own subprocess with a time
limit:

- **peer**: plain torch-pruning at 30% of the channels (``MetaPruner``, L2 magnitude, the
  classifier ignored; timm attention through ``num_heads`` as torch-pruning documents it):
  what torch-pruning alone achieves on the same model;
- **prune**: ``GradualPruning(0.3, mode="structured")`` through a real short ``fit`` on random
  data of the right shape (``max_epochs=2, limit_train_batches=2, limit_val_batches=1``: the
  pruning step at the start of epoch 1 then two fine-tuning steps), export to ONNX and ONNX
  Runtime parity against PyTorch;
- **qat**: ``QuantizationAware("onnxruntime")`` through a short ``fit`` (``max_epochs=1``),
  export, ONNX Runtime's optimized graph: integer kernels counted against float
  ``Conv``/``Gemm``/``MatMul`` left (a BatchNorm that ONNX Runtime rewrites as a float 1x1
  ``Conv`` is counted apart, as ``batch_norms_as_float_conv``), top-1 agreement with PyTorch.

Each failure is classified: ``refused before training`` (one clear error before the first
step, model untouched), ``crash mid-fit`` (an error after training started), ``mismatch``
(ONNX Runtime disagrees with PyTorch by more than 1e-3 of the largest output, and by more than
4x PyTorch's own fp32 error against fp64 on the same input; the output shape changed; or two
PyTorch evals of one batch differ), ``non-finite in PyTorch`` (PyTorch's own output holds
NaN/inf, at the same places as ONNX Runtime's, even after its BatchNorm statistics are
recalibrated), ``out of memory`` (over ``--memory-gb``), ``timeout``.
Results are appended to a JSON lines file as each model finishes; a Markdown coverage table
is printed at the end.

    .venv/bin/python benchmarks/architectures.py                      # all (~80 models, hours)
    .venv/bin/python benchmarks/architectures.py --models resnet18 'timm/*' --timeout 300
    .venv/bin/python benchmarks/architectures.py --limit 12 --small   # the smallest first
    .venv/bin/python benchmarks/architectures.py --table-only         # table of the results

Each part also runs under a cap on its address space (``--memory-gb``, 16 by default): a part
that outgrows it (torch-pruning alone on Swin V2) is recorded as ``out of memory`` instead of
the OOM killer taking the whole model's subprocess, and the other parts still run.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_RESULTS = HERE / "results" / "architectures.jsonl"
TIMM_MODELS = (
    "vit_tiny_patch16_224",
    "deit_tiny_patch16_224",
    "convnext_atto",
    "regnetx_002",
    "efficientnet_b0",
)
SIZES = (32, 64, 96, 128, 160, 224, 299)
# Constructor arguments a model needs for a plain logits output in training.
# torchvision's ViTs fix their input size at construction: two patches a side.
BUILD_ARGUMENTS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False},
    "inception_v3": {"aux_logits": False},
    "vit_b_16": {"image_size": 32},
    "vit_l_16": {"image_size": 32},
    "vit_b_32": {"image_size": 64},
    "vit_l_32": {"image_size": 64},
    "vit_h_14": {"image_size": 28},
}
# ConvTranspose: ONNX Runtime's CPU kernels have none on integers (a Q/DQ one runs in float).
FLOAT_KERNELS = (
    "Conv",
    "Gemm",
    "MatMul",
    "FusedConv",
    "FusedGemm",
    "FusedMatMul",
    "ConvTranspose",
)
PARITY_RTOL = 1e-3  # max |onnx - torch| / max |torch|, fp32
# ... or, where PyTorch's own fp32 output is that far from its fp64 one (an ill-conditioned
# random-init network: efficientnet_b7's logits reach 3.5e5 and fp32 PyTorch is 33% off fp64),
# this many times PyTorch's own fp32 error: ONNX Runtime is then as faithful as PyTorch fp32
FP32_ERROR_FACTOR = 4.0
PART_LIMIT_VARIABLE = "ARCHITECTURES_PART_LIMIT_S"  # seconds per part (peer, prune, qat)
# GiB of address space per part: torch-pruning alone on Swin V2 grows past 24 GB and the OOM
# killer took the whole model's subprocess with it (no row); under a limit the part fails with
# a MemoryError, is recorded, and the other parts still run
PART_MEMORY_VARIABLE = "ARCHITECTURES_PART_MEMORY_GB"


# ----------------------------------------------------------------------------- models
def model_names() -> list[str]:
    """The torchvision classification models, then the timm models as ``timm/<name>``."""
    import torchvision

    names = list(torchvision.models.list_models(module=torchvision.models))
    return names + [f"timm/{name}" for name in TIMM_MODELS]


def build(name: str) -> Any:
    """The model, random init, 10 classes (no download)."""
    if name.startswith("timm/"):
        import timm

        return timm.create_model(name.removeprefix("timm/"), pretrained=False, num_classes=10)
    import torchvision

    extra = BUILD_ARGUMENTS.get(name, {})
    return torchvision.models.get_model(name, weights=None, num_classes=10, **extra)


def smallest_input(model: Any, name: str = "") -> int:
    """The smallest square input size the model runs on (eval and train).

    Its constructor's ``image_size`` if it takes one (:data:`BUILD_ARGUMENTS`), else the first
    size in :data:`SIZES` that runs.
    """
    import torch

    fixed = BUILD_ARGUMENTS.get(name, {}).get("image_size")
    for size in (fixed,) if fixed else SIZES:
        try:
            with torch.no_grad():
                model.eval()(torch.randn(2, 3, size, size))
                model.train()(torch.randn(2, 3, size, size))
            return size
        except Exception:  # noqa: BLE001 - any failure means: too small, try the next size
            continue
    raise ValueError(f"runs on none of the input sizes {(fixed,) if fixed else SIZES}")


# ----------------------------------------------------------------------------- one model
def classify(err: BaseException, steps: int) -> dict[str, Any]:
    """A failure as ``refused before training``, ``crash mid-fit`` or ``out of memory``.

    An allocation refused under the part's address-space cap (:func:`limit_memory`) is the
    machine's limit, not a fault of the callback: ``out of memory``, whenever it happens.
    """
    memory = out_of_memory(err)
    if memory is not None:
        return memory
    message = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:400]
    kind = "refused before training" if steps == 0 else "crash mid-fit"
    return {"status": kind, "message": message}


def data_module(size: int) -> Any:
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    generator = torch.Generator().manual_seed(0)
    images = torch.randn(8, 3, size, size, generator=generator)
    labels = torch.randint(0, 10, (8,), generator=generator)
    loader = DataLoader(TensorDataset(images, labels), batch_size=4)
    return pl.LightningDataModule.from_datasets(
        train_dataset=TensorDataset(images, labels),
        val_dataset=TensorDataset(images, labels),
        batch_size=4,
    ), loader


def trainer(epochs: int, callbacks: list[Any], root: str) -> Any:
    import lightning.pytorch as pl

    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        limit_train_batches=2,
        limit_val_batches=1,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=root,
    )


def state_digest(model: Any) -> dict[str, Any]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def unchanged(model: Any, before: dict[str, Any]) -> bool:
    import torch

    after = model.state_dict()
    return after.keys() == before.keys() and all(
        after[k].shape == v.shape and torch.equal(after[k], v) for k, v in before.items()
    )


def parity_batch(size: int) -> Any:
    import torch

    return torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(1))


def recalibrate_batch_norms(model: Any, size: int, batches: int = 8) -> int:
    """Re-estimate BatchNorm running statistics where the eval output is non-finite.

    After two training steps a BatchNorm with a tiny momentum (torchvision's MNASNet: 3e-4;
    EfficientNet-B5..B7 at 32x32) still holds its init statistics, and a random-init network's
    eval activations overflow: PyTorch's own output is NaN, so parity cannot be judged on it.
    Here the running statistics are reset and re-estimated as a cumulative average
    (``momentum=None``) over ``batches`` batches of the training distribution (train-mode
    forwards, no gradients, weights untouched): the recalibration of Li et al., "EagleEye"
    (ECCV 2020, adaptive BatchNorm for evaluating pruned candidates).

    Returns:
        The number of BatchNorm layers recalibrated (0 when the eval output was finite).
    """
    import torch

    model.eval()
    with torch.no_grad():
        if torch.isfinite(model(parity_batch(size))).all():
            return 0
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum) for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    generator = torch.Generator().manual_seed(2)
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(8, 3, size, size, generator=generator))
    for norm, momentum in saved:
        norm.momentum = momentum
    model.eval()
    return len(norms)


def fp32_error(model: Any, batch: Any, want: Any) -> float | None:
    """PyTorch's own fp32 error on ``batch``: max |fp32 - fp64| / max |fp64| (None: no fp64)."""
    import copy

    import numpy as np
    import torch

    try:
        reference = copy.deepcopy(model).double().eval()
        with torch.no_grad():
            exact = reference(batch.double()).numpy()
    except Exception:  # noqa: BLE001 - a model that cannot run in fp64 keeps the fixed bound
        return None
    finite = np.isfinite(exact) & np.isfinite(want)
    if not finite.any():
        return None
    scale = max(float(np.abs(exact[finite]).max()), 1e-12)
    return float(np.abs(want[finite] - exact[finite]).max() / scale)


def unoptimized_error(path: Path, batch: Any, want: Any) -> float:
    """ONNX Runtime's error with every graph optimization off (fusions ruled in or out)."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: batch})[0]
    finite = np.isfinite(want) & np.isfinite(got)
    scale = max(float(np.abs(want[finite]).max()), 1e-12)
    return float(np.abs(got[finite] - want[finite]).max() / scale)


def parity(model: Any, size: int, workdir: Path, name: str) -> dict[str, Any]:
    """Export to ONNX and compare ONNX Runtime with PyTorch on a seeded batch."""
    import numpy as np
    import torch

    from lightning_accel.backends.onnxruntime import ort_session
    from lightning_accel.export.onnx import to_onnx

    batch = parity_batch(size)
    path = to_onnx(model, batch, workdir / f"{name}.onnx")
    optimized = workdir / f"{name}.opt.onnx"
    session = ort_session(path, threads=1, optimized_path=optimized)
    got = session.run(None, {session.get_inputs()[0].name: batch.numpy()})[0]
    model.eval()
    with torch.no_grad():
        want = model(batch).numpy()
        again = model(batch).numpy()
    if not np.array_equal(want, again, equal_nan=True):  # e.g. a train-mode op frozen by fx
        drift = float(np.nanmax(np.abs(want - again)))
        return {
            "status": "mismatch",
            "message": f"PyTorch eval not repeatable (max diff {drift:.3g})",
        }
    if got.shape != want.shape:
        return {"status": "mismatch", "message": f"ONNX output {got.shape}, torch {want.shape}"}
    finite = np.isfinite(want)
    if not np.array_equal(finite, np.isfinite(got)):
        return {"status": "mismatch", "message": "non-finite outputs differ from PyTorch's"}
    scale = max(float(np.abs(want[finite]).max()) if finite.any() else 0.0, 1e-12)
    error = float(np.abs(got[finite] - want[finite]).max() / scale) if finite.any() else 0.0
    top1 = float((got.argmax(1) == want.argmax(1)).mean())
    result: dict[str, Any] = {
        "onnx_rel_error": error,
        "top1_agreement": top1,
        "optimized": str(optimized),
    }
    if error > PARITY_RTOL:
        result["torch_fp32_vs_fp64"] = fp32_error(model, batch, want)
        result["onnx_rel_error_unoptimized"] = unoptimized_error(path, batch.numpy(), want)
    if want.ndim == 2 and want.shape[1] > 1 and finite.all():
        # How decidable top-1 is: images whose top-2 margin in PyTorch is within the largest
        # |ONNX - PyTorch| difference can flip on any difference that large.
        top2 = np.sort(want, axis=1)[:, -2:]
        margin = top2[:, 1] - top2[:, 0]
        result["top2_margin_min"] = float(margin.min())
        result["close_calls"] = int((margin <= float(np.abs(got - want).max())).sum())
    if not finite.all():  # e.g. mnasnet at 32x32, random init: NaN in PyTorch as in ONNX
        result["nonfinite_in_torch_too"] = True
    return result


def run_peer(name: str, size: int) -> dict[str, Any]:
    """Plain torch-pruning at 30% of the channels, the classifier ignored."""
    import torch
    import torch_pruning as tp

    model = build(name).eval()
    example = torch.randn(1, 3, size, size)
    with torch.no_grad():
        shape = tuple(model(example).shape)
    params = sum(p.numel() for p in model.parameters())
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    ignored = [m for m in layers if getattr(m, "out_features", getattr(m, "out_channels", 0)) == 10]
    heads = {
        m.qkv: m.num_heads for m in model.modules() if hasattr(m, "qkv") and hasattr(m, "num_heads")
    }
    # torchvision ViT, as torch-pruning's torchvision example prunes it: widths a multiple of
    # the head count, and hidden_dim (read by forward) set from conv_proj afterwards
    attention = [m for m in model.modules() if isinstance(m, torch.nn.MultiheadAttention)]
    round_to = attention[0].num_heads if attention else None
    try:
        pruner = tp.pruner.MetaPruner(
            model,
            example,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=0.3,
            ignored_layers=ignored,
            num_heads=heads,
            prune_num_heads=bool(heads),
            prune_head_dims=False,
            round_to=round_to,
        )
        pruner.step()
        if hasattr(model, "hidden_dim") and hasattr(model, "conv_proj"):
            model.hidden_dim = model.conv_proj.out_channels
        for module in model.modules():  # timm attention keeps its own head count
            if module in heads.values() or (
                hasattr(module, "qkv") and hasattr(module, "num_heads")
            ):
                module.num_heads = module.qkv.out_features // (3 * module.head_dim)
        with torch.no_grad():
            after = tuple(model(example).shape)
    except Exception as err:  # noqa: BLE001 - recorded, not raised
        return out_of_memory(err) or {
            "status": "failed",
            "message": f"{type(err).__name__}: {str(err)[:300]}",
        }
    if after != shape:
        return {"status": "mismatch", "message": f"output {shape} became {after}"}
    kept = sum(p.numel() for p in model.parameters()) / params
    return {"status": "ok", "params_kept": round(kept, 4)}


def short_fit(
    module_class: Any, name: str, size: int, workdir: Path, epochs: int, callback: Any
) -> tuple[Any, dict[str, Any] | None]:
    """Fit the model with one callback; the module and, if fit raised, its classified failure."""
    module = module_class(build(name), num_classes=10, in_channels=3, input_size=size, lr=0.01)
    before = state_digest(module)
    fit = trainer(epochs, [callback], str(workdir))
    data, _ = data_module(size)
    try:
        fit.fit(module, datamodule=data)
    except Exception as err:  # noqa: BLE001 - classified
        result = classify(err, fit.global_step)
        if result["status"] == "refused before training":
            result["model_untouched"] = unchanged(module, before)
        return module, result
    return module, None


def run_prune(name: str, size: int, workdir: Path) -> dict[str, Any]:
    from lightning_accel import ClassificationModule, GradualPruning

    pruning = GradualPruning(0.3, mode="structured", end_epoch=1)
    module, failure = short_fit(ClassificationModule, name, size, workdir, 2, pruning)
    if failure is not None:
        return failure
    result: dict[str, Any] = {
        "measured_sparsity": round(pruning.measured_sparsity(module), 4),
        "params_kept": round(float(pruning.metrics.get("compress/params_kept", 1.0)), 4),
    }
    recalibrated = recalibrate_batch_norms(module.model, size)
    if recalibrated:
        result["batch_norms_recalibrated"] = recalibrated
    try:
        check = parity(module.model, size, workdir, "pruned")
    except Exception as err:  # noqa: BLE001
        return {
            **result,
            "status": "export failed",
            "message": f"{type(err).__name__}: {str(err)[:300]}",
        }
    check.pop("optimized", None)
    result.update(check)
    if "status" in check:
        return result
    own = check.get("torch_fp32_vs_fp64") or 0.0
    ok = check["onnx_rel_error"] <= max(PARITY_RTOL, FP32_ERROR_FACTOR * own)
    result["status"] = nonfinite_status(check) or ("ok" if ok else "mismatch")
    return result


NONFINITE = "non-finite in PyTorch"


def nonfinite_status(check: dict[str, Any]) -> str | None:
    """``NONFINITE`` where PyTorch's own outputs hold NaN/inf (ONNX Runtime's at the same places).

    Parity is then measured over the finite outputs only, and top-1 is meaningless: neither
    "ok" nor "mismatch" (e.g. mnasnet at 32x32 from random init: its BatchNorm momentum of
    3e-4 leaves eval statistics at their init after a short fit, and activations overflow).
    """
    return NONFINITE if check.get("nonfinite_in_torch_too") else None


def run_qat(name: str, size: int, workdir: Path) -> dict[str, Any]:
    from lightning_accel import ClassificationModule, QuantizationAware
    from lightning_accel.backends.onnxruntime import (
        INTEGER_KERNELS,
        batch_norms_as_conv,
        operator_counts,
    )

    qat = QuantizationAware("onnxruntime")
    module, failure = short_fit(ClassificationModule, name, size, workdir, 1, qat)
    if failure is not None:
        return failure
    try:
        check = parity(module.model, size, workdir, "qat")
    except Exception as err:  # noqa: BLE001
        return {"status": "export failed", "message": f"{type(err).__name__}: {str(err)[:300]}"}
    if "status" in check:
        return check
    optimized = Path(check.pop("optimized"))
    ops = operator_counts(optimized)
    # MatMulIntegerToFloat counts: a Q/DQ linear on 3-D activations (ViT's qkv, proj, fc1)
    integer = sum(ops.get(op, 0) for op in INTEGER_KERNELS)
    batch_norms = batch_norms_as_conv(workdir / "qat.onnx", optimized)
    floating = sum(ops.get(op, 0) for op in FLOAT_KERNELS) - batch_norms
    all_integer = floating == 0 and integer > 0
    return {
        **check,
        "integer_kernels": integer,
        "float_kernels_left": floating,
        "batch_norms_as_float_conv": batch_norms,
        "all_integer": all_integer,
        "status": nonfinite_status(check)
        or ("ok" if check["top1_agreement"] >= 0.75 else "mismatch"),
    }


class PartTimeout(BaseException):
    """One part of a model's run went over its share of the time limit.

    A ``BaseException``, like ``KeyboardInterrupt``: the library's own ``except Exception``
    (e.g. the ONNX export, which wraps any failure in one message) must not turn a timeout
    into a failure of the model (swin_v2_b's QAT export was recorded "export failed:
    PartTimeout").
    """


def _part_timeout(signum: int, frame: Any) -> None:
    raise PartTimeout


def part_memory_gib() -> float:
    """The address-space cap each part runs under, in GiB (0: none), as the driver set it."""
    return float(os.environ.get(PART_MEMORY_VARIABLE, "0"))


def out_of_memory(err: BaseException) -> dict[str, Any] | None:
    """The part's row if ``err`` is an allocation refused under its memory limit, else None."""
    text = str(err)
    refused = isinstance(err, MemoryError) or any(
        mark in text for mark in ("can't allocate memory", "std::bad_alloc", "Cannot allocate")
    )
    if not refused:
        return None
    message = f"over {part_memory_gib():g} GiB of address space: {type(err).__name__}: {text[:200]}"
    return {"status": "out of memory", "message": message}


def limit_memory(gib: float) -> None:
    """Cap this process's address space (soft limit, raised again by the next part)."""
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    soft = int(gib * 1024**3) if gib > 0 else hard
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def run_one(name: str) -> dict[str, Any]:
    """All three parts for one model (inside its subprocess)."""
    import gc

    import torch

    signal.signal(signal.SIGALRM, _part_timeout)
    memory_gib = part_memory_gib()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    started = time.perf_counter()
    size = smallest_input(build(name), name)
    row: dict[str, Any] = {"model": name, "input": size}
    with tempfile.TemporaryDirectory() as tmp:
        for part, run in (
            ("peer", lambda: run_peer(name, size)),
            ("prune", lambda: run_prune(name, size, Path(tmp))),
            ("qat", lambda: run_qat(name, size, Path(tmp))),
        ):
            # torch-pruning's own torchvision example lists Swin as "stuck": each part gets a
            # share of the model's time limit, so one part that hangs leaves the others a turn
            signal.alarm(int(os.environ.get(PART_LIMIT_VARIABLE, "0")))
            limit_memory(memory_gib)
            try:
                row[part] = run()
            except PartTimeout:
                row[part] = {"status": "timeout", "message": "part over its share of the limit"}
            except Exception as err:  # noqa: BLE001 - a harness failure, recorded
                row[part] = out_of_memory(err) or {
                    "status": "harness error",
                    "message": repr(err)[:300],
                    "trace": traceback.format_exc(limit=3)[-600:],
                }
            finally:
                signal.alarm(0)
                limit_memory(0)
                gc.collect()
    row["seconds"] = round(time.perf_counter() - started, 1)
    return row


# ----------------------------------------------------------------------------- driver
def run_isolated(name: str, timeout: float, memory_gib: float = 0.0) -> dict[str, Any]:
    """Run :func:`run_one` in a subprocess with a time limit; its last stdout line is the row.

    Each of the three parts gets a third of ``timeout`` (s) and ``memory_gib`` GiB of address
    space (0: no limit).
    """
    env = dict(
        os.environ,
        PYTHONWARNINGS="ignore",
        OMP_NUM_THREADS="1",
        **{
            PART_LIMIT_VARIABLE: str(max(int(timeout / 3), 1)),
            PART_MEMORY_VARIABLE: str(memory_gib),
        },
    )
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--one", name],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"model": name, "status": "timeout", "message": f"over {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"model": name, "status": "crashed", "message": tail[0][:300]}
    return json.loads(lines[-1])


def part_status(part: dict[str, Any] | None) -> str:
    """A part's status; rows written before ``NONFINITE`` existed say "ok" with the flag."""
    if not part:
        return "-"
    if part.get("nonfinite_in_torch_too"):
        return NONFINITE
    if part.get("status") == "crash mid-fit" and "can't allocate memory" in part.get("message", ""):
        return "out of memory"  # rows written before classify() knew the cap
    if part.get("status") == "failed" and part.get("message", "").startswith("PartTimeout"):
        return "timeout"  # rows written while PartTimeout was an Exception the peer caught
    return str(part.get("status", "?"))


def outcome(part: dict[str, Any] | None) -> str:
    if part is None:
        return "-"
    status = part_status(part)
    if status == "ok":
        return "ok"
    message = str(part.get("message", "")).replace("|", "/")[:90]
    return f"{status}: {message}" if message else status


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown coverage table (one row per model, latest result per model)."""
    latest = {row["model"]: row for row in rows}
    lines = [
        "| model | input | torch-pruning 30% | GradualPruning 0.3 (sparsity, ONNX err) | "
        "QAT ORT (int kernels / float left, top-1) |",
        "|---|---|---|---|---|",
    ]
    for name, row in latest.items():
        if "status" in row:
            lines.append(f"| {name} | - | {outcome(row)} | | |")
            continue
        peer, prune, qat = row.get("peer"), row.get("prune"), row.get("qat")
        peer_cell = outcome(peer) + (
            f" ({peer['params_kept']:.2f} params)" if peer and "params_kept" in peer else ""
        )
        prune_cell = outcome(prune)
        if prune and "measured_sparsity" in prune and "onnx_rel_error" in prune:
            prune_cell += f" ({prune['measured_sparsity']:.2f}, {prune['onnx_rel_error']:.1e})"
            if prune.get("nonfinite_in_torch_too"):
                prune_cell += ", NaN outputs in PyTorch too"
        qat_cell = outcome(qat)
        if qat and "integer_kernels" in qat:
            qat_cell += (
                f" ({qat['integer_kernels']} / {qat['float_kernels_left']}, "
                f"{qat['top1_agreement']:.2f})"
            )
        lines.append(f"| {name} | {row['input']} | {peer_cell} | {prune_cell} | {qat_cell} |")
    done = [r for r in latest.values() if "status" not in r]
    pruned = sum(1 for r in done if part_status(r.get("prune")) == "ok")
    peer_ok = sum(1 for r in done if part_status(r.get("peer")) == "ok")
    qat_int = sum(1 for r in done if r.get("qat", {}).get("all_integer"))
    crashes = sum(
        1 for r in done for p in ("prune", "qat") if part_status(r.get(p)) == "crash mid-fit"
    )
    refused = sum(
        1
        for r in done
        for p in ("prune", "qat")
        if part_status(r.get(p)) == "refused before training"
    )
    qat_run = sum(1 for r in done if "integer_kernels" in r.get("qat", {}))
    timeouts = sum(1 for r in latest.values() if r.get("status") == "timeout")
    nonfinite = sum(1 for r in done for p in ("prune", "qat") if part_status(r.get(p)) == NONFINITE)
    mismatches = sum(
        1 for r in done for p in ("prune", "qat") if part_status(r.get(p)) == "mismatch"
    )
    part_timeouts = sum(
        1 for r in done for p in ("peer", "prune", "qat") if part_status(r.get(p)) == "timeout"
    )
    memory = sum(
        1
        for r in done
        for p in ("peer", "prune", "qat")
        if part_status(r.get(p)) == "out of memory"
    )
    lines.append("")
    lines.append(
        f"{len(latest)} models: torch-pruning alone prunes {peer_ok}, GradualPruning prunes and "
        f"matches ONNX Runtime on {pruned}, QAT puts every conv/linear on integer kernels on "
        f"{qat_int} of {qat_run} exported, {qat_int} of all {len(latest)} models "
        f"({100 * qat_int / max(len(latest), 1):.0f}%); refusals "
        f"before training: {refused}; crashes mid-fit: {crashes}; ONNX Runtime mismatches: "
        f"{mismatches}; PyTorch's own output non-finite (random init): {nonfinite}; over the "
        f"time limit: {timeouts} models, {part_timeouts} parts; parts out of memory under the "
        f"per-part cap: {memory}."
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=None, help="glob patterns over names")
    parser.add_argument("--limit", type=int, default=None, help="run at most this many")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per model")
    parser.add_argument(
        "--memory-gb",
        type=float,
        default=16.0,
        help="GiB of address space per part (0: none); a part over it is 'out of memory'",
    )
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--table-only", action="store_true", help="print the table and stop")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one)), flush=True)
        return
    if args.table_only:
        rows = [json.loads(line) for line in args.results.read_text().splitlines() if line]
        print(table(rows))
        return
    names = model_names()
    if args.models:
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in args.models)]
    names = names[: args.limit] if args.limit else names
    args.results.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        row = run_isolated(name, args.timeout, args.memory_gb)
        rows.append(row)
        with args.results.open("a") as out:  # incremental: a killed run keeps what it did
            out.write(json.dumps(row) + "\n")
        print(f"{name}: {row.get('seconds', '-')} s", file=sys.stderr, flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
