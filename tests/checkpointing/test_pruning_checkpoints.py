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
