"""Each structured pruning step is a transaction (issue #12): checked, and undone on a mismatch."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lightning_accel import ClassificationModule, GradualPruning
from lightning_accel.pruning.transaction import PruningStepError
from tests.conftest import quiet_trainer

pytestmark = pytest.mark.bad_input("data")


class _Fragile(nn.Module):
    """A CNN whose forward breaks once armed and its middle conv no longer has 32 channels.

    With ``widen`` set, an armed forward instead drops a logit once that conv was cut (a shape
    that torch-pruning's trace cannot see).
    """

    armed = False  # class-wide, so the rehearsal's copy (before arming) runs fine
    widen = False

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.mid = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.out = nn.Conv2d(32, 16, 3, padding=1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mid(torch.relu(self.stem(x)))
        logits = self.head(torch.relu(self.out(x)))
        if type(self).armed and type(self).widen and x.shape[1] != 32:
            return logits[:, :9]
        if type(self).armed and x.shape[1] != 32:
            raise RuntimeError(f"this model needs 32 channels here; got {x.shape[1]}")
        return logits


class _Snapshot(pl.Callback):
    """Just before the first pruning step (epoch 1, batch 0): arm the failure, keep the state."""

    def __init__(self, arm: object) -> None:
        self.arm = arm
        self.state: dict[str, torch.Tensor] = {}
        self.optimizer: dict = {}
        self.params: list[nn.Parameter] = []
        self.grads: dict[str, torch.Tensor] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        if trainer.current_epoch == 1 and batch_idx == 0:
            setattr(*self.arm, True)  # type: ignore[call-arg]
            self.state = {k: v.clone() for k, v in pl_module.state_dict().items()}
            optimizer = trainer.optimizers[0]
            self.optimizer = {
                k: {n: t.clone() if isinstance(t, torch.Tensor) else t for n, t in v.items()}
                for k, v in optimizer.state_dict()["state"].items()
            }
            self.params = list(optimizer.param_groups[0]["params"])
            self.grads = {
                n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None
            }


def _assert_exactly_as_before(module: ClassificationModule, trainer, snap: _Snapshot) -> None:  # type: ignore[no-untyped-def]
    after = module.state_dict()
    assert after.keys() == snap.state.keys()
    for key, value in snap.state.items():
        assert after[key].shape == value.shape and torch.equal(after[key], value), key
    optimizer = trainer.optimizers[0]
    params = dict(module.named_parameters())
    # The optimizer still holds the model's own parameter objects, with its state bit for bit.
    assert [id(p) for p in optimizer.param_groups[0]["params"]] == [id(p) for p in snap.params]
    assert {id(p) for p in params.values()} == {id(p) for p in snap.params}
    state = optimizer.state_dict()["state"]
    assert state.keys() == snap.optimizer.keys()
    for key, saved in snap.optimizer.items():
        for name, value in saved.items():
            assert torch.equal(torch.as_tensor(state[key][name]), torch.as_tensor(value))
    for name, grad in snap.grads.items():
        assert torch.equal(params[name].grad, grad), name


def test_a_forward_that_breaks_after_the_cut_undoes_the_step(digits, tmp_path) -> None:
    _Fragile.armed = False
    module = ClassificationModule(_Fragile(), input_size=8, lr=0.05, optimizer="adamw")
    snap = _Snapshot((_Fragile, "armed"))
    pruning = GradualPruning(0.5, end_epoch=1)
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[snap, pruning])
    try:
        with pytest.raises(
            PruningStepError,
            match=r"step to sparsity 0\.500 was undone: layer 'model\.mid\.0' failed while being "
            r"pruned \(RuntimeError: this model needs 32 channels here; got 16\)\. The model, its "
            r"weights and the optimizer are exactly as before the step\. Fix: leave 'model\.mid\.0'"
            r" out with ignore=\['model\.mid\.0'\]",
        ):
            trainer.fit(module, datamodule=digits)
    finally:
        _Fragile.armed = False
    assert snap.state, "the failing step was never reached"
    _assert_exactly_as_before(module, trainer, snap)
    assert module.model.mid[0].out_channels == 32 and module.model.mid[1].num_features == 32
    assert module.eval()(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_a_step_that_changes_the_output_shape_is_undone(digits, tmp_path) -> None:
    _Fragile.armed, _Fragile.widen = False, True
    net = _Fragile()
    module = ClassificationModule(net, input_size=8, lr=0.05)
    snap = _Snapshot((_Fragile, "armed"))
    trainer = quiet_trainer(
        tmp_path,
        max_epochs=2,
        callbacks=[snap, GradualPruning(0.5, end_epoch=1)],
    )
    try:
        with pytest.raises(
            PruningStepError,
            match=r"layer '\(model output\)' changed the model's output shapes from "
            r"\(1, 10\) to \(1, 9\)\..*Fix: leave the output layers out with ignore=",
        ):
            trainer.fit(module, datamodule=digits)
    finally:
        _Fragile.armed, _Fragile.widen = False, False
    _assert_exactly_as_before(module, trainer, snap)
    assert net.mid[0].out_channels == 32


class _Switch:
    on = False


def _criterion_failing_when_armed(group):  # type: ignore[no-untyped-def]
    """Scores like L1 magnitude; raises once armed, on the second group of a step."""
    import torch_pruning as tp

    if _Switch.on:
        _Switch.calls = getattr(_Switch, "calls", 0) + 1
        if _Switch.calls >= 2:  # after the first group is already cut: a half-pruned model
            raise RuntimeError("criterion failed")
    return tp.importance.GroupMagnitudeImportance(p=1)(group)


def test_a_failing_criterion_leaves_the_model_and_optimizer_as_they_were(digits, tmp_path) -> None:
    _Switch.on, _Switch.calls = False, 0
    module = ClassificationModule("small_cnn", input_size=8, lr=0.05)
    snap = _Snapshot((_Switch, "on"))
    pruning = GradualPruning(0.5, end_epoch=1, criterion=_criterion_failing_when_armed)
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[snap, pruning])
    widths = {n: m.weight.shape for n, m in module.named_modules() if hasattr(m, "weight")}
    try:
        with pytest.raises(PruningStepError, match=r"failed while being pruned \(RuntimeError"):
            trainer.fit(module, datamodule=digits)
    finally:
        _Switch.on = False
    assert _Switch.calls >= 2
    _assert_exactly_as_before(module, trainer, snap)
    assert {n: m.weight.shape for n, m in module.named_modules() if hasattr(m, "weight")} == widths
