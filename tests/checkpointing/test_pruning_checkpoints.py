"""Pruned checkpoints load, resume mid-schedule and refuse other architectures (contract 3)."""

import copy
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_accel import ClassificationModule, GradualPruning, restore_compression
from lightning_accel.checkpointing.structural_log import structural_changes
from lightning_accel.models.zoo import SmallCNN
from tests.conftest import quiet_trainer, small_module


def _train_with_checkpoints(
    data, tmp_path: Path, mode: str = "structured", epochs: int = 4, ckpt_path=None, module=None
):
    module = module or small_module()
    pruning = GradualPruning(
        0.8 if mode == "unstructured" else 0.5, mode=mode, end_epoch=3, update_every_n_steps=5
    )
    checkpoints = ModelCheckpoint(
        dirpath=tmp_path, filename="{epoch}", save_top_k=-1, every_n_epochs=1
    )
    trainer = quiet_trainer(
        tmp_path,
        max_epochs=epochs,
        callbacks=[pruning, checkpoints],
        enable_checkpointing=True,
        deterministic=True,
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return module, pruning


def _outputs(module: torch.nn.Module, data) -> torch.Tensor:
    x, _ = next(iter(data.val_dataloader()))
    with torch.no_grad():
        return module.eval()(x)


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory):
    from lightning_accel import DigitsDataModule

    data = DigitsDataModule()
    data.setup()
    tmp_path = tmp_path_factory.mktemp("pruned")
    torch.manual_seed(0)
    module, pruning = _train_with_checkpoints(data, tmp_path)
    return data, tmp_path, module, pruning


def test_load_from_checkpoint_rebuilds_pruned_model(pruned_run) -> None:
    data, tmp_path, module, _ = pruned_run
    loaded = ClassificationModule.load_from_checkpoint(tmp_path / "epoch=3.ckpt")
    assert loaded.model[8].weight.shape == module.model[8].weight.shape
    torch.testing.assert_close(_outputs(loaded, data), _outputs(module, data))


def test_weights_only_load_plus_restore_compression(pruned_run) -> None:
    data, tmp_path, module, _ = pruned_run
    checkpoint = torch.load(tmp_path / "epoch=3.ckpt", weights_only=True)
    assert checkpoint["lightning_accel"]["surgery"][0]["kind"] == "channel_pruning"
    fresh = small_module()
    restore_compression(fresh, checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"])
    torch.testing.assert_close(_outputs(fresh, data), _outputs(module, data))


def test_resume_mid_schedule_ends_with_the_same_architecture(pruned_run, tmp_path) -> None:
    data, ckpt_dir, module, pruning = pruned_run
    resumed, resumed_pruning = _train_with_checkpoints(
        data, tmp_path, ckpt_path=ckpt_dir / "epoch=1.ckpt"
    )
    mid = torch.load(ckpt_dir / "epoch=1.ckpt", weights_only=True)
    # The checkpoint really is mid-schedule: the resumed run pruned further after loading it.
    assert 0 < len(mid["lightning_accel"]["surgery"]) < len(structural_changes(resumed))
    assert resumed_pruning.applied_sparsity == pytest.approx(pruning.applied_sparsity)
    shapes = {k: v.shape for k, v in resumed.state_dict().items()}
    assert shapes == {k: v.shape for k, v in module.state_dict().items()}


@pytest.mark.bad_input("checkpoint")
def test_resume_with_another_target_prunes_to_it_from_the_original_widths(
    pruned_run, tmp_path
) -> None:
    from lightning_accel.pruning.channels import out_channels

    data, ckpt_dir, _, pruning = pruned_run
    module = small_module()
    resumed = GradualPruning(0.6, end_epoch=3, update_every_n_steps=5)
    trainer = quiet_trainer(tmp_path, max_epochs=4, callbacks=[resumed])
    with pytest.warns(UserWarning, match="targeted sparsity 0.5 with target 0.6"):
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_dir / "epoch=1.ckpt")
    original = pruning._initial_widths
    assert resumed._initial_widths == original
    for name, width in original.items():
        assert out_channels(module.get_submodule(name)) == max(1, round(width * 0.4)), name
    # a lower target than what the checkpoint already pruned cannot be reached: refused
    lower = GradualPruning(0.1, end_epoch=3, update_every_n_steps=5)
    trainer = quiet_trainer(tmp_path / "lower", max_epochs=4, callbacks=[lower])
    with pytest.raises(ValueError, match=r"cannot resume a run that has already pruned to 0\.\d+"):
        trainer.fit(small_module(), datamodule=data, ckpt_path=ckpt_dir / "epoch=2.ckpt")


def test_unstructured_resume_keeps_the_masks(digits, tmp_path) -> None:
    _train_with_checkpoints(digits, tmp_path / "a", mode="unstructured", epochs=4)
    resumed, pruning = _train_with_checkpoints(
        digits,
        tmp_path / "b",
        mode="unstructured",
        epochs=4,
        ckpt_path=tmp_path / "a" / "epoch=1.ckpt",
    )
    weights = [resumed.model[i].weight for i in (4, 8, 11)]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert pruning.applied_sparsity == pytest.approx(0.8)
    assert zeros == pytest.approx(0.8, abs=1e-3)


@pytest.mark.bad_input("checkpoint")
def test_checkpoint_from_another_architecture_is_refused_and_model_kept(pruned_run) -> None:
    _, tmp_path, _, _ = pruned_run
    checkpoint = torch.load(tmp_path / "epoch=3.ckpt", weights_only=True)
    other = ClassificationModule(SmallCNN(width=8), input_size=8)
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(
        ValueError,
        match="Cannot restore this checkpoint into ClassificationModule|comes from another architecture",
    ):
        restore_compression(other, checkpoint)
    assert {k: v.shape for k, v in other.state_dict().items()} == {
        k: v.shape for k, v in before.items()
    }
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())


class _WithExtraHead(ClassificationModule):
    def __init__(self) -> None:
        super().__init__("small_cnn", input_size=8, lr=0.05)
        self.extra = torch.nn.Linear(10, 10)


@pytest.mark.bad_input("checkpoint")
def test_resume_into_a_partly_matching_module_touches_nothing(digits, tmp_path) -> None:
    dense = quiet_trainer(tmp_path / "dense", max_steps=2, enable_checkpointing=False)
    dense.fit(small_module(), datamodule=digits)
    dense.save_checkpoint(tmp_path / "dense.ckpt")
    for module in (_WithExtraHead(), ClassificationModule("resnet18", input_size=8)):
        before = copy.deepcopy(module.state_dict())
        trainer = quiet_trainer(tmp_path / "resumed", max_epochs=1)
        with pytest.raises(
            ValueError,
            match=r"does not fit .*Build the same architecture.*"
            r"Nothing was loaded",
        ):
            trainer.fit(module, datamodule=digits, ckpt_path=tmp_path / "dense.ckpt")
        assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


@pytest.mark.bad_input("checkpoint")
def test_load_from_checkpoint_into_another_architecture_names_the_fix(pruned_run) -> None:
    _, tmp_path, _, _ = pruned_run
    with pytest.raises(
        ValueError, match="Build the same architecture the checkpoint was trained with"
    ):
        ClassificationModule.load_from_checkpoint(
            tmp_path / "epoch=3.ckpt", model="resnet18", input_size=8
        )


def test_pruned_vit_checkpoint_loads_three_ways_with_its_heads(tmp_path: Path) -> None:
    pytest.importorskip("timm", reason="vit_tiny needs timm (the zoo extra)")
    from lightning_accel import FashionMNISTDataModule

    module = ClassificationModule("vit_tiny", lr=1e-3, optimizer="adamw")
    pruning = GradualPruning(
        0.5, mode="structured", start_epoch=0, end_epoch=2, update_every_n_steps=2
    )
    trainer = quiet_trainer(
        tmp_path, max_epochs=3, limit_train_batches=4, limit_val_batches=1, callbacks=[pruning]
    )
    trainer.fit(module, datamodule=FashionMNISTDataModule(train_size=512, val_size=128))
    assert [b.attn.num_heads for b in module.model.blocks] == [2] * 6
    path = tmp_path / "vit.ckpt"
    trainer.save_checkpoint(path)
    x = torch.randn(3, 1, 28, 28)
    expected = module.eval()(x)

    loaded = ClassificationModule.load_from_checkpoint(path).eval()
    assert loaded.model.blocks[0].attn.num_heads == 2
    torch.testing.assert_close(loaded(x), expected)

    fresh = ClassificationModule("vit_tiny").eval()
    checkpoint = torch.load(path, weights_only=True)
    restore_compression(fresh, checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"])
    torch.testing.assert_close(fresh(x), expected)


class _Plain(torch.nn.Module):
    def __init__(self, extra: bool) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        self.extra = torch.nn.Linear(10, 10) if extra else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return self.extra(y) if self.extra is not None else y


@pytest.mark.bad_input("checkpoint")
def test_a_module_without_the_mixin_is_also_checked_before_anything_loads(digits, tmp_path) -> None:
    import lightning.pytorch as pl

    class Plain(pl.LightningModule):  # no CompressionCheckpointMixin
        def __init__(self, extra: bool = False) -> None:
            super().__init__()
            self.net = _Plain(extra)

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            return torch.nn.functional.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = quiet_trainer(tmp_path / "a", max_steps=2, limit_val_batches=0)
    trainer.fit(Plain(), datamodule=digits)
    trainer.save_checkpoint(tmp_path / "plain.ckpt")
    module = Plain(extra=True)  # one extra Linear on the user's side
    before = copy.deepcopy(module.state_dict())
    trainer = quiet_trainer(
        tmp_path / "b",
        max_steps=4,
        limit_val_batches=0,
        callbacks=[GradualPruning(0.5, mode="unstructured", end_epoch=1)],
    )
    with pytest.raises(
        ValueError, match=r"does not fit Plain: it lacks 2 tensors.*Nothing was loaded"
    ):
        trainer.fit(module, datamodule=digits, ckpt_path=tmp_path / "plain.ckpt")
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert "on_load_checkpoint" not in vars(module)  # the user's module is given back as it was
