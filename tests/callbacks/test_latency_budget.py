"""LatencyBudgetPruning on a 3-layer CNN at batch 1: the budget is met as measured, logged,
checkpointed and resumed; impossible budgets are refused before anything changes."""

from __future__ import annotations

import copy
import csv
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_accel import ClassificationModule
from lightning_accel.callbacks.latency_budget import LatencyBudgetPruning, callback_from_flags
from lightning_accel.pruning.latency_model import Probe
from tests.conftest import quiet_trainer
from tests.pruning.test_latency_model import cnn3

KEY = "latency/onnxruntime"


def _module(width: int = 64) -> ClassificationModule:
    torch.manual_seed(0)
    return ClassificationModule(cnn3(width), input_size=32, lr=0.02)


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(64, 1, 32, 32, generator=g)
    labels = (images.mean((1, 2, 3)) > 0).long()  # learnable: the sign of the mean
    return DataLoader(TensorDataset(images, labels), batch_size=16)


def _fit(module, callback, root: Path, epochs: int = 3, ckpt_path=None, **kwargs):
    kwargs.setdefault("callbacks", [callback])
    trainer = quiet_trainer(root, max_epochs=epochs, **kwargs)
    trainer.fit(module, _loader(), _loader(), ckpt_path=ckpt_path)
    return trainer


def _independent_speedup(backend: str, dense, pruned) -> float:
    """Both exported as shipped and timed in 7 alternating rounds on ``backend``, batch 1."""
    probe = Probe(backend, torch.zeros(1, 1, 32, 32), 1, threads=1, rounds=7)
    try:
        dense_t, pruned_t = probe.time(
            [probe.compile(dense, exact=True), probe.compile(pruned, exact=True)]
        )
    finally:
        probe.close()
    return dense_t.median_ms / pruned_t.median_ms


@pytest.fixture(scope="module")
def budget_run():
    """One fit to 1.5x, with a CSV logger and a checkpoint per epoch (shared by the tests)."""
    torch.set_num_threads(2)
    root = Path(tempfile.mkdtemp(prefix="latency-budget-test-"))
    module = _module()
    dense = copy.deepcopy(module)
    callback = LatencyBudgetPruning(target_speedup=1.5, threads=1, end_epoch=2)
    checkpoints = ModelCheckpoint(root / "ckpt", "{epoch}", save_top_k=-1)
    trainer = _fit(
        module,
        callback,
        root,
        logger=CSVLogger(root, name="csv"),
        enable_checkpointing=True,
        callbacks=[callback, checkpoints],
    )
    return trainer, module, dense, callback, root


def test_speedup_budget_is_met_as_measured(budget_run) -> None:
    _, module, dense, callback, _ = budget_run
    assert callback.progress == 1.0
    assert callback.metrics[f"{KEY}/speedup"] >= 1.5 / (1.0 + callback.tolerance + 0.02)
    # the final figure is the confirmation in fresh sessions, not the step that stopped the loop
    assert callback.last["sessions"] == 2 and callback.history[-1]["sessions"] == 2
    assert callback.metrics[f"{KEY}/speedup"] == pytest.approx(callback.last["speedup"])
    # generous: other jobs share these 2 cores
    assert _independent_speedup("onnxruntime", dense, module) >= 1.5 * 0.8
    widths = callback.widths
    assert all(w % 8 == 0 and 8 <= w <= 64 for w in widths.values())
    assert min(widths.values()) < 64  # something was cut


def test_latency_and_widths_are_logged_per_epoch(budget_run) -> None:
    trainer, _, _, callback, _ = budget_run
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for name in ("target_ms", "measured_ms", "predicted_ms", "dense_ms", "speedup"):
        values = [float(r[f"{KEY}/{name}"]) for r in rows if r.get(f"{KEY}/{name}")]
        assert len(values) == 3, name  # one per epoch
    measured = [float(r[f"{KEY}/measured_ms"]) for r in rows if r.get(f"{KEY}/measured_ms")]
    assert measured[-1] < measured[0]  # epoch 0 is dense; the budget is met by epoch 2
    widths = [float(r["compress/width/model.3"]) for r in rows if r.get("compress/width/model.3")]
    assert widths[0] == 64 and widths[-1] == callback.widths["model.3"]


def test_resume_mid_schedule_replays_the_pruning(budget_run, tmp_path) -> None:
    _, module, _, callback, root = budget_run
    saved = torch.load(root / "ckpt" / "epoch=1.ckpt", weights_only=True)
    assert saved["lightning_accel"]["surgery"]  # the channel cuts are in the structural log
    state = next(v for k, v in saved["callbacks"].items() if "LatencyBudgetPruning" in k)
    assert 0.0 < state["progress"] < 1.0  # epoch 1 took the cubic schedule's first step
    resumed_callback = LatencyBudgetPruning(target_speedup=1.5, threads=1, end_epoch=2)
    resumed = _module()
    _fit(resumed, resumed_callback, tmp_path, ckpt_path=root / "ckpt" / "epoch=1.ckpt")
    assert resumed_callback.progress == 1.0
    assert resumed_callback.history[0]["epoch"] == 1  # restored, then one more step
    assert resumed_callback.metrics[f"{KEY}/speedup"] >= 1.5 / (
        1.0 + resumed_callback.tolerance + 0.02
    )
    # load_from_checkpoint rebuilds the pruned widths
    final = ClassificationModule.load_from_checkpoint(
        root / "ckpt" / "epoch=2.ckpt", model=cnn3(), weights_only=False
    )
    assert final.model[3].out_channels == module.model[3].out_channels


def test_the_budget_is_met_on_openvino_as_openvino_measures_it(tmp_path) -> None:
    """The other CPU runtime end to end: latency model, closed loop and logs from OpenVINO."""
    torch.set_num_threads(2)
    module = _module()
    dense = copy.deepcopy(module)
    callback = LatencyBudgetPruning(target_speedup=1.5, backend="openvino", threads=1, end_epoch=1)
    _fit(module, callback, tmp_path, epochs=2)
    assert callback.progress == 1.0
    assert callback.metrics["latency/openvino/speedup"] >= 1.5 / (1.0 + callback.tolerance + 0.02)
    assert not any(k.startswith(KEY) for k in callback.metrics)  # nothing timed on ORT
    assert _independent_speedup("openvino", dense, module) >= 1.5 * 0.8  # generous: shared cores


class _Scripted(LatencyBudgetPruning):
    """Confirmations and correction steps replaced by scripted speedups (control flow only)."""

    def __init__(self, confirmations: list[float]) -> None:
        super().__init__(target_speedup=1.5, threads=1, max_corrections=3)
        self.confirmations, self.steps = confirmations, 0
        self.dense_ms, self.target_ms = 3.0, 2.0
        self.last = self._reading(1.55, confirmed=False)  # the step that stopped the loop

    @staticmethod
    def _reading(speedup: float, confirmed: bool) -> dict[str, float]:
        out = {"measured_ms": 3.0 / speedup, "dense_ms": 3.0, "speedup": speedup, "spread": 0.01}
        return {**out, "sessions": 2.0} if confirmed else out

    def _confirm(self, pl_module) -> dict[str, float]:
        return self._reading(self.confirmations.pop(0), confirmed=True)

    def _step(self, trainer, pl_module, progress, refresh=True, aim_ms=None) -> None:
        self.steps += 1
        self.last = self._reading(1.55, confirmed=False)  # each correction looks within budget


def test_a_confirmation_outside_the_budget_sends_the_loop_back_to_cutting() -> None:
    from lightning.pytorch import Trainer

    trainer = Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    callback = _Scripted(confirmations=[1.30, 1.52])  # 1.30x: 2.31 ms against a 2 ms budget
    callback._finish(trainer, _module())
    assert callback.steps == 1  # one more cut after the first confirmation missed
    assert callback.last["speedup"] == 1.52 and callback.last["sessions"] == 2
    assert [row["speedup"] for row in callback.history] == [1.30, 1.52]
    stubborn = _Scripted(confirmations=[1.30] * 4)
    stubborn._finish(trainer, _module())
    assert stubborn.steps == 3 and stubborn.last["speedup"] == 1.30  # corrections used up
    with pytest.warns(UserWarning, match="NOT met"):
        stubborn._report_final()


def test_cli_flags_translate_to_the_callback() -> None:
    assert callback_from_flags() is None
    made = callback_from_flags(target_speedup=2.0, batch_size=64)
    assert isinstance(made, LatencyBudgetPruning) and made.target_speedup == 2.0
    assert made.batch_size == 64
    with pytest.raises(ValueError, match="exactly one target"):
        callback_from_flags(latency_budget_ms=1.0, target_speedup=2.0)


def test_an_unreachable_goal_is_warned_once_and_the_closest_latency_said_at_the_end() -> None:
    callback = LatencyBudgetPruning(target_latency_ms=1.0, threads=1, end_epoch=2)
    callback.dense_ms, callback.target_ms = 4.0, 1.0
    callback.last = {"measured_ms": 1.6, "dense_ms": 4.0, "spread": 0.01}
    with pytest.warns(UserWarning, match="cannot be reached") as caught:
        for measured in (1.8, 1.6, 1.7):  # three steps at the minimum widths
            callback._note_unreachable(1.0, 1.5, measured)
    assert len([w for w in caught if "cannot be reached" in str(w.message)]) == 1
    assert callback.closest == 1.6
    with pytest.warns(UserWarning, match=r"NOT met.*closest latency reachable was 1.6 ms"):
        callback._report_final()
    assert callback.state_dict()["closest"] == 1.6


def test_quick_runs_cap_a_recipe_speedup_budget() -> None:
    from lightning_accel.recipes.recipe import Recipe
    from lightning_accel.recipes.run import QUICK_SPEEDUP, quick_overrides

    path = Path(__file__).parents[2] / "recipes" / "resnet18_latency.yaml"
    recipe = Recipe.from_yaml(path)
    assert recipe.callback_config("latency_budget")["target_speedup"] == 2.5
    budget = Recipe.from_yaml(path, quick_overrides(recipe)).callback_config("latency_budget")
    assert budget["target_speedup"] == QUICK_SPEEDUP == 1.2  # fewer measured stages
    assert budget["widths_per_group"] == 1 and budget["timing_rounds"] == 3
    mild = Recipe.from_yaml(path, ["callbacks.latency_budget.target_speedup=1.1"])
    assert not any("target_speedup" in o for o in quick_overrides(mild))  # kept as asked


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one target"),
        (dict(target_latency_ms=1.0, target_speedup=2.0), "exactly one target"),
        (dict(target_speedup=1.0), "target_speedup must be"),
        (dict(target_speedup=0.5), "target_speedup must be"),
        (dict(target_latency_ms=-1.0), "target_latency_ms must be"),
        (dict(target_speedup=2.0, backend="coreml"), "Unknown backend 'coreml'"),
        (dict(target_speedup=2.0, round_to=0), "round_to must be"),
        (dict(target_speedup=2.0, schedule="exp"), "schedule must be one of"),
    ],
)
@pytest.mark.bad_input("constructor")
def test_bad_arguments_are_refused_at_construction(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LatencyBudgetPruning(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(target_latency_ms=1e3), ValueError, r"dense model already runs in .* ms"),
        (dict(target_latency_ms=1e-4), ValueError, r"cannot reach .*closest reachable"),
        (dict(target_speedup=1e3), ValueError, r"cannot reach .*speedup of at most"),
        (dict(target_speedup=2.0, backend="tensorrt"), RuntimeError, "cannot run here"),
        (dict(target_speedup=2.0, round_to=64), ValueError, "no prunable channel group"),
    ],
)
@pytest.mark.bad_input("constructor")
def test_impossible_budgets_are_refused_in_setup_with_the_model_untouched(
    kwargs: dict, error: type, message: str, tmp_path
) -> None:
    if kwargs.get("backend") == "tensorrt":
        from lightning_accel.backends import get_backend

        if get_backend("tensorrt").problem() is None:
            pytest.skip("TensorRT runs here")
    module = _module()
    before = copy.deepcopy(module.state_dict())
    with pytest.raises(error, match=message):
        _fit(module, LatencyBudgetPruning(threads=1, end_epoch=1, **kwargs), tmp_path, epochs=2)
    after = module.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.bad_input("distributed")
def test_ddp_ranks_apply_the_plan_rank_zero_measured(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    done = subprocess.run(
        [sys.executable, __file__, str(tmp_path)],
        env=env,
        cwd=tmp_path,
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0["shapes"] == rank1["shapes"]
    assert rank0["shapes"]["model.3.weight"][0] < 64 or rank0["shapes"]["model.6.weight"][0] < 64
    assert rank0["history"] == rank1["history"]  # rank zero's measurements, broadcast
    for name, weight in rank0["weights"].items():
        torch.testing.assert_close(weight, rank1["weights"][name], msg=name)


if __name__ == "__main__":  # run by the DDP test: two CPU processes (gloo)
    import lightning.pytorch as pl

    out = Path(sys.argv[1])
    pl.seed_everything(0)
    module = _module()
    callback = LatencyBudgetPruning(
        target_speedup=1.3, threads=1, end_epoch=1, max_corrections=1, timing_rounds=3
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=2,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, _loader(), _loader())
    torch.save(
        {
            "shapes": {k: tuple(v.shape) for k, v in module.state_dict().items()},
            "weights": module.state_dict(),
            "history": [
                {k: v for k, v in row.items() if k != "widths"} for row in callback.history
            ],
        },
        out / f"rank{trainer.global_rank}.pt",
    )


def test_a_plan_that_overshoots_the_budget_is_warned_about_at_the_end() -> None:
    # Seen on a busy machine: a 4x budget ended at 9.57x (-58% from the budget), reported only
    # as "budget met" though the extra channels cost accuracy and cannot come back.
    callback = LatencyBudgetPruning(target_speedup=4.0, threads=1, end_epoch=2)
    callback.dense_ms, callback.target_ms = 6.107, 6.107 / 4.0
    callback.last = {"measured_ms": 0.64, "dense_ms": 6.107, "speedup": 9.57, "spread": 0.171}
    with pytest.warns(UserWarning, match=r"pruned past the budget.*-58%\), 9\.57x .* 4\.00x was"):
        callback._report_final()
    callback.last = {"measured_ms": 1.5, "dense_ms": 6.107, "speedup": 4.07, "spread": 0.02}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # at the budget: nothing to warn about
        callback._report_final()
