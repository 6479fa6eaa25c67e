"""Distillation during fit: the teacher stays out of the student, survives checkpoints, and the
loss reaches the student through ClassificationModule or one line in a user's training_step."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_accel import ClassificationModule, Distillation, GradualPruning, QuantizationAware
from lightning_accel.distillation import distill, kd_loss
from lightning_accel.export.onnx import to_onnx
from lightning_accel.models.zoo import SmallCNN
from tests.conftest import quiet_trainer, small_module

X = torch.zeros(1, 1, 8, 8)


def _conv_widths(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_initial_teacher_is_the_dense_model_even_when_distillation_comes_last(digits) -> None:
    module = small_module()
    dense = {k: v.clone() for k, v in module.state_dict().items()}
    distillation = Distillation(temperature=2.0, alpha=0.7)
    callbacks = [GradualPruning(0.5, end_epoch=1), QuantizationAware(start_epoch=2), distillation]
    quiet_trainer(max_epochs=3, limit_train_batches=4, callbacks=callbacks).fit(
        module, datamodule=digits
    )
    teacher = distillation.teacher
    assert teacher is not None and teacher is not module
    # untouched by pruning and QAT: dense widths, float layers, the weights fit started with
    assert _conv_widths(teacher) == [16, 32, 64, 64]
    assert _conv_widths(module)[1:] == [16, 32, 32]
    assert type(teacher.get_submodule("model.4")) is nn.Conv2d
    assert type(module.get_submodule("model.4")) is not nn.Conv2d
    for name, value in teacher.state_dict().items():
        torch.testing.assert_close(value, dense[name], msg=name)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    # not a submodule of the student, not in its state_dict
    assert all(m is not teacher.model for m in module.modules())
    shared = {v.data_ptr() for v in teacher.state_dict().values()} & {
        v.data_ptr() for v in module.state_dict().values()
    }
    assert not shared
    assert 0.0 <= distillation.metrics["distill/agreement"] <= 1.0
    assert distillation.metrics["distill/loss"] > 0


def test_teacher_is_absent_from_the_exported_onnx(digits, tmp_path: Path) -> None:
    import onnx

    module = small_module()
    keys = list(module.state_dict())
    distillation = Distillation()
    quiet_trainer(max_epochs=1, limit_train_batches=2, callbacks=[distillation]).fit(
        module, datamodule=digits
    )
    assert list(module.state_dict()) == keys  # no teacher (or projection) in the student
    path = to_onnx(module.model, X, tmp_path / "student.onnx")
    graph = onnx.load(str(path)).graph
    stored = sum(int(torch.tensor(list(t.dims)).prod()) for t in graph.initializer)
    student = sum(
        v.numel() for v in module.model.state_dict().values() if v.dtype.is_floating_point
    )
    assert stored <= student  # a teacher inside would double it
    assert distillation.teacher is not None
    assert not any(n.op_type == "Softmax" for n in graph.node)


def test_distillation_changes_the_loss_by_the_formula(digits) -> None:
    torch.manual_seed(0)
    module = small_module()
    teacher = SmallCNN(10, 1).eval()
    x, y = next(iter(digits.train_dataloader()))
    distillation = Distillation(teacher=nn.Sequential(teacher), temperature=3.0, alpha=0.4)
    seen: list[Tensor] = []

    class Spy(pl.Callback):
        def on_before_backward(self, trainer, pl_module, loss) -> None:
            seen.append(loss.detach())

    trainer = quiet_trainer(max_epochs=1, limit_train_batches=1, callbacks=[distillation, Spy()])
    start = small_module()
    start.load_state_dict(module.state_dict())
    loader = DataLoader(TensorDataset(x, y), batch_size=len(x))
    trainer.fit(module, train_dataloaders=loader)
    with torch.no_grad():
        logits = start(x)
        expected = 0.6 * F.cross_entropy(logits, y) + 0.4 * kd_loss(logits, teacher(x), 3.0)
    torch.testing.assert_close(seen[0], expected)


class OwnModule(pl.LightningModule):
    """A user's module: the one documented line, or not."""

    def __init__(self, with_line: bool = True) -> None:
        super().__init__()
        self.net = SmallCNN(10, 1)
        self.with_line = with_line

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        if self.with_line:
            loss = distill(self, x, logits, loss)  # the one line
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def test_own_module_distills_through_one_line(digits) -> None:
    module = OwnModule()
    distillation = Distillation(alpha=0.9)
    quiet_trainer(max_epochs=1, limit_train_batches=3, callbacks=[distillation]).fit(
        module, datamodule=digits
    )
    means = distillation.metrics
    assert means["distill/loss"] != pytest.approx(means["distill/task_loss"])
    assert distillation.distiller is not None and distillation.distiller.batches == 3


@pytest.mark.bad_input("constructor")
def test_own_module_without_the_line_is_refused_before_the_optimizer_steps(digits) -> None:
    module = OwnModule(with_line=False)
    before = {
        k: v.clone()
        for k, v in module.state_dict().items()
        if "running" not in k and "batches_tracked" not in k
    }
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=3, callbacks=[Distillation()])
    with pytest.raises(RuntimeError, match=r"(?s)did not call distill.*loss = distill\(self, x"):
        trainer.fit(module, datamodule=digits)
    for name, value in before.items():
        torch.testing.assert_close(module.state_dict()[name], value, msg=name)


def _fit(tmp_path: Path, digits, ckpt_path=None, epochs: int = 3):
    torch.manual_seed(0)
    module = small_module()
    distillation = Distillation(start_epoch=1, features={"model.5": "model.5"})
    trainer = quiet_trainer(
        tmp_path,
        max_epochs=epochs,
        limit_train_batches=6,
        callbacks=[
            GradualPruning(0.5, start_epoch=1, end_epoch=2),
            distillation,
            ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1),
        ],
        enable_checkpointing=True,
        deterministic=True,
    )
    trainer.fit(module, datamodule=digits, ckpt_path=ckpt_path)
    return module, distillation


def test_resume_mid_run_reproduces_the_uninterrupted_run(digits, tmp_path: Path) -> None:
    full, full_cb = _fit(tmp_path / "full", digits)
    # the teacher is the model at the start of start_epoch=1: trained one epoch, dense
    assert full_cb.teacher is not None and _conv_widths(full_cb.teacher) == [16, 32, 64, 64]
    assert _conv_widths(full)[1:] == [16, 32, 32]
    projection = full_cb.distiller.projections["model.5"]  # student 16 channels -> teacher 32
    assert projection.weight.shape == (32, 16, 1, 1)
    checkpoint = torch.load(tmp_path / "full" / "epoch=1.ckpt", weights_only=True)
    assert "teacher" in checkpoint["callbacks"]["Distillation"]
    assert not any("teacher" in key for key in checkpoint["state_dict"])
    for ckpt in ("epoch=0.ckpt", "epoch=1.ckpt"):  # before and after the teacher was taken
        resumed, resumed_cb = _fit(tmp_path / ckpt, digits, ckpt_path=tmp_path / "full" / ckpt)
        x, _ = next(iter(digits.val_dataloader()))
        with torch.no_grad():
            torch.testing.assert_close(resumed.eval()(x), full.eval()(x), msg=ckpt)
            torch.testing.assert_close(resumed_cb.teacher(x), full_cb.teacher(x), msg=ckpt)
    # the student loads without the teacher
    loaded = ClassificationModule.load_from_checkpoint(tmp_path / "full" / "epoch=2.ckpt")
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), full.eval()(x))


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": 1.5}, r"alpha must be a number in \[0, 1\]; got 1.5"),
        ({"alpha": -0.1}, r"alpha must be a number in \[0, 1\]; got -0.1"),
        ({"temperature": 0}, r"temperature must be a finite number > 0; got 0"),
        ({"temperature": -2.0}, r"temperature must be a finite number > 0; got -2.0"),
        ({"teacher": "no/such/dense.ckpt"}, r"teacher='no/such/dense.ckpt'\): no such file"),
        ({"teacher": 3}, r"teacher must be 'initial', an nn.Module or a checkpoint path"),
        ({"start_epoch": 2, "end_epoch": 1}, r"end_epoch must be after start_epoch"),
        ({"features": "model.4"}, r"features must map student layer names"),
    ],
)
@pytest.mark.bad_input("constructor")
def test_bad_arguments_are_refused_at_construction(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Distillation(**kwargs)


def _refused(module: pl.LightningModule, digits, distillation: Distillation, message: str) -> None:
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=2, callbacks=[distillation])
    with pytest.raises(ValueError, match=message):
        trainer.fit(module, datamodule=digits)
    assert set(module.state_dict()) == set(before)
    for name, value in before.items():
        torch.testing.assert_close(module.state_dict()[name], value, msg=name)


@pytest.mark.bad_input("checkpoint")
def test_teacher_checkpoint_of_another_architecture_is_refused(digits, tmp_path: Path) -> None:
    other = ClassificationModule("small_cnn", num_classes=5, input_size=8)
    torch.save({"state_dict": other.state_dict()}, tmp_path / "other.ckpt")
    _refused(small_module(), digits, Distillation(teacher=tmp_path / "other.ckpt"), "another arch")


def test_teacher_checkpoint_of_the_dense_model_is_loaded(digits, tmp_path: Path) -> None:
    dense = small_module()
    torch.save({"state_dict": dense.state_dict()}, tmp_path / "dense.ckpt")
    distillation = Distillation(teacher=str(tmp_path / "dense.ckpt"))
    quiet_trainer(max_epochs=1, limit_train_batches=1, callbacks=[distillation]).fit(
        small_module(), datamodule=digits
    )
    assert distillation.teacher is not None
    torch.testing.assert_close(distillation.teacher.state_dict(), dense.state_dict())


@pytest.mark.bad_input("data")
def test_teacher_with_another_number_of_outputs_is_refused(digits) -> None:
    _refused(small_module(), digits, Distillation(teacher=SmallCNN(5, 1)), "scores 5 classes")


@pytest.mark.bad_input("data")
def test_feature_layers_that_match_nothing_are_refused(digits) -> None:
    _refused(
        small_module(), digits, Distillation(features=["model.44"]), r"\['model.44'\] match no"
    )


class TupleModule(OwnModule):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        out = self.net(x)
        return out, out


@pytest.mark.bad_input("data")
def test_a_model_whose_outputs_are_not_logits_is_refused(digits) -> None:
    _refused(TupleModule(), digits, Distillation(), r"a \(N, C\) float tensor.*got a tuple")
