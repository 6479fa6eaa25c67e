"""QAT checkpoints load three ways and resume mid-training with the same outputs (contract 3)."""

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_accel import (
    ClassificationModule,
    DigitsDataModule,
    GradualPruning,
    QuantizationAware,
    restore_compression,
)
from lightning_accel.checkpointing.structural_log import structural_changes
from lightning_accel.quantization import quantized_layers
from tests.conftest import quiet_trainer, small_module

EPOCHS = 4


def _train(data, tmp_path, ckpt_path=None, learnable=False):
    torch.manual_seed(0)
    module = small_module()
    callbacks = [
        GradualPruning(0.5, mode="structured", end_epoch=1, round_to=8),
        QuantizationAware(start_epoch=2, freeze_observers_epoch=3, learnable_scales=learnable),
        ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1, every_n_epochs=1),
    ]
    trainer = quiet_trainer(
        tmp_path,
        max_epochs=EPOCHS,
        callbacks=callbacks,
        enable_checkpointing=True,
        deterministic=True,
        limit_train_batches=6,
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return module


def _outputs(module, data) -> torch.Tensor:
    x, _ = next(iter(data.val_dataloader()))
    with torch.no_grad():
        return module.eval()(x)


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory):
    data = DigitsDataModule()
    data.setup()
    tmp_path = tmp_path_factory.mktemp("qat")
    return data, tmp_path, _train(data, tmp_path, learnable=True)


def test_load_from_checkpoint_rebuilds_the_quantized_model(qat_run) -> None:
    data, tmp_path, module = qat_run
    loaded = ClassificationModule.load_from_checkpoint(tmp_path / f"epoch={EPOCHS - 1}.ckpt")
    assert sorted(quantized_layers(loaded)) == sorted(quantized_layers(module))
    torch.testing.assert_close(_outputs(loaded, data), _outputs(module, data), atol=0, rtol=0)


def test_weights_only_load_plus_restore_compression(qat_run) -> None:
    data, tmp_path, module = qat_run
    checkpoint = torch.load(tmp_path / f"epoch={EPOCHS - 1}.ckpt", weights_only=True)
    kinds = [entry["kind"] for entry in checkpoint["lightning_accel"]["surgery"]]
    assert kinds[-1] == "quantization_aware" and "channel_pruning" in kinds
    fresh = small_module()
    restore_compression(fresh, checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"])
    torch.testing.assert_close(_outputs(fresh, data), _outputs(module, data), atol=0, rtol=0)


def test_resume_mid_training_reproduces_the_uninterrupted_run(qat_run, tmp_path) -> None:
    data, ckpt_dir, _ = qat_run
    uninterrupted = _train(data, tmp_path / "full")
    mid = torch.load(tmp_path / "full" / "epoch=2.ckpt", weights_only=True)
    assert mid["lightning_accel"]["surgery"][-1]["kind"] == "quantization_aware"  # mid-QAT
    resumed = _train(data, tmp_path / "resumed", ckpt_path=tmp_path / "full" / "epoch=2.ckpt")
    assert len(structural_changes(resumed)) == len(structural_changes(uninterrupted))
    torch.testing.assert_close(_outputs(resumed, data), _outputs(uninterrupted, data))
