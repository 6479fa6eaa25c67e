"""Every callback passes the same checks (as torchmetrics' MetricTester serves its metrics).

Construction refuses bad types with a ValueError naming the argument; a fit logs exactly the
metric names the callback declares; its state survives a checkpoint round trip; and a run
resumed from a mid-run checkpoint ends where the uninterrupted run ends.
"""

from __future__ import annotations

import csv
import typing
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

import lightning_accel.callbacks as callbacks_package
from lightning_accel import (
    Binarize,
    Distillation,
    ExportOnFitEnd,
    GradualPruning,
    LatencyBudgetPruning,
    LatencyMonitor,
    QuantizationAware,
)
from lightning_accel.backends import BackendName, backend_names
from lightning_accel.callbacks.base import AccelCallback
from tests.conftest import quiet_trainer, small_module

EPOCHS = 3

# name -> a callback that acts within EPOCHS epochs on the small CNN and the digits
FACTORIES: dict[str, Callable[[Path], AccelCallback]] = {
    "structured_pruning": lambda d: GradualPruning(0.5, end_epoch=1),
    "unstructured_pruning": lambda d: GradualPruning(0.5, mode="unstructured", end_epoch=1),
    "taylor_pruning": lambda d: GradualPruning(0.5, end_epoch=2, criterion="taylor"),
    "quantization": lambda d: QuantizationAware(start_epoch=1),
    "binarization": lambda d: Binarize(start_epoch=1, end_epoch=2),
    "distillation": lambda d: Distillation(start_epoch=1),
    "latency_budget": lambda d: LatencyBudgetPruning(
        target_speedup=1.3, batch_size=32, threads=1, end_epoch=1, round_to=4
    ),
    "latency": lambda d: LatencyMonitor(batch_sizes=(1,), runs=2, threads=1),
    "export": lambda d: ExportOnFitEnd(
        d / "export", batch_sizes=(1,), latency_runs=2, threads=1, benchmark=False
    ),
}
# Cases whose plan depends on measured time: two runs of the same schedule may pick different
# widths, so their resume check starts after the schedule ends (mid-schedule resume of
# LatencyBudgetPruning is tested in tests/callbacks/test_latency_budget.py).
RESUME_AFTER_SCHEDULE = {"latency_budget"}


def test_every_public_callback_derives_from_the_base_and_is_covered() -> None:
    public = {getattr(callbacks_package, name) for name in callbacks_package.__all__}
    assert all(issubclass(cls, AccelCallback) for cls in public)
    covered = {type(factory(Path("unused"))) for factory in FACTORIES.values()}
    assert covered == public


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: GradualPruning(0.5, start_epoch=True), r"start_epoch must be an integer >= 0"),
        (lambda: GradualPruning(0.5, end_epoch=2.5), r"end_epoch must be an integer or None"),
        (lambda: GradualPruning(0.5, end_epoch="3"), r"end_epoch must be an integer or None"),
        (
            lambda: GradualPruning(0.5, mode="unstructured", round_to=8),
            r"round_to .* applies to mode='structured' only",
        ),
        (lambda: GradualPruning(0.5, mode="2:4", scope="global"), r"mode='2:4' .* has no scope"),
        (
            lambda: QuantizationAware(freeze_observers_epoch=True),
            r"freeze_observers_epoch must be an integer >= 0 or None; got True",
        ),
        (lambda: ExportOnFitEnd(backends=None), r"must name at least one of .*; got None"),
        (lambda: ExportOnFitEnd(backends=["onnxruntime"] * 2), r"names a backend twice"),
        (lambda: LatencyMonitor(batch_sizes=[1, 1]), r"positive integers, each once"),
        (lambda: GradualPruning(0.5, round_to=True), r"round_to must be an integer >= 1 or None"),
        (lambda: GradualPruning(0.5, round_to="8"), r"round_to must be an integer >= 1 or None"),
        (lambda: GradualPruning(0.5, round_to=2.5), r"round_to must be an integer >= 1 or None"),
        (
            lambda: GradualPruning(0.5, initial_sparsity="0.1"),
            r"initial_sparsity must be a number in \[0.0, 0.5\]; got '0.1'",
        ),
        (lambda: GradualPruning(True), r"target_sparsity must be in \[0, 1\); got True"),
        (lambda: GradualPruning(0.5, ignore=[3]), r"ignore must be a glob pattern or a list"),
        (lambda: QuantizationAware(layer_bits=["x"]), r"layer_bits must map glob patterns"),
        (lambda: QuantizationAware(learnable_scales="yes"), r"learnable_scales must be True"),
        (lambda: Binarize(weights=1), r"weights must be True or False; got 1"),
        (lambda: LatencyMonitor(threads="x"), r"threads must be an integer >= 1 or None"),
        (lambda: LatencyMonitor(runs="20"), r"runs must be an integer >= 1; got '20'"),
        (lambda: GradualPruning(0.5, criterion="l3"), r"criterion must be one of \['l1', 'l2'"),
        (lambda: QuantizationAware(start_epoch=True), r"start_epoch must be an integer >= 0"),
        (lambda: QuantizationAware(backend="coreml"), r"Unknown backend 'coreml'"),
        (
            lambda: QuantizationAware(freeze_bn_epoch=True),
            r"freeze_bn_epoch must be an integer >= 0 or None; got True",
        ),
        (lambda: Binarize(start_epoch="1"), r"start_epoch must be an integer >= 0; got '1'"),
        (lambda: Binarize(ste="sign"), r"ste must be one of"),
        (lambda: LatencyMonitor(backend="cuda"), r"Unknown backend 'cuda'"),
        (lambda: LatencyMonitor(every_n_epochs=True), r"every_n_epochs must be an integer >= 1"),
        (lambda: LatencyMonitor(batch_sizes=4), r"batch_sizes must be positive integers"),
        (lambda: ExportOnFitEnd(backends=()), r"must name at least one of"),
        (lambda: ExportOnFitEnd(batch_sizes=(1, True)), r"batch_sizes must be positive integers"),
        (lambda: ExportOnFitEnd(latency_runs=0), r"latency_runs must be an integer >= 1; got 0"),
    ],
)
@pytest.mark.bad_input("constructor")
def test_bad_argument_types_are_refused_at_construction(build, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_literal_types_list_what_the_registries_hold() -> None:
    assert list(typing.get_args(BackendName)) == backend_names()
    hints = typing.get_type_hints(QuantizationAware.__init__)
    assert typing.get_args(hints["backend"]) == typing.get_args(BackendName)
    assert typing.get_args(typing.get_type_hints(Binarize.__init__)["ste"]) == (
        "clipped",
        "approx_sign",
    )


def _fit(callback: AccelCallback, tmp_path: Path, data, epochs: int = EPOCHS, ckpt_path=None):
    torch.manual_seed(0)
    module = small_module()
    checkpoints = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1, every_n_epochs=1
    )
    trainer = quiet_trainer(
        tmp_path,
        max_epochs=epochs,
        callbacks=[callback, checkpoints],
        enable_checkpointing=True,
        logger=CSVLogger(tmp_path, name="log"),
        deterministic=True,
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return module, trainer


def _assert_same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b)
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        assert a == b


def _logged_names(trainer) -> set[str]:
    rows = list(csv.DictReader(open(Path(trainer.logger.log_dir) / "metrics.csv")))
    return {key for row in rows for key, value in row.items() if value not in ("", None)}


def _outputs(module, data) -> torch.Tensor:
    x, _ = next(iter(data.val_dataloader()))
    with torch.no_grad():
        return module.eval()(x)


@pytest.mark.parametrize("case", sorted(FACTORIES))
def test_callback_conformance(case: str, digits, tmp_path: Path) -> None:
    factory = FACTORIES[case]
    callback = factory(tmp_path / "full")
    module, trainer = _fit(callback, tmp_path / "full", digits)

    # logged names are exactly the declared ones (the module's own and Lightning's aside)
    own = {"train/loss", "train/acc", "val/loss", "val/acc", "epoch", "step"}
    logged = _logged_names(trainer) - own
    assert logged == set(callback.logged_metrics()), case
    assert set(callback.metrics) == set(callback.logged_metrics())

    # checkpoint round trip: the state a checkpoint holds rebuilds an equal callback
    state = callback.state_dict()
    twin = factory(tmp_path / "full")
    assert twin.state_key == callback.state_key
    twin.load_state_dict(state)
    _assert_same(twin.state_dict(), state)
    checkpoint = torch.load(tmp_path / "full" / "ckpt" / "epoch=2.ckpt", weights_only=True)
    assert (callback.state_key in checkpoint["callbacks"]) == bool(state)  # Lightning skips {}

    # resume mid-run: the same model as the uninterrupted run
    resumed_cb = factory(tmp_path / "resumed")
    resumed, _ = _fit(
        resumed_cb,
        tmp_path / "resumed",
        digits,
        ckpt_path=tmp_path / "full" / "ckpt" / f"epoch={int(case in RESUME_AFTER_SCHEDULE)}.ckpt",
    )
    torch.testing.assert_close(_outputs(resumed, digits), _outputs(module, digits))
