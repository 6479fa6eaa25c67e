"""One NaN in the data or a diverging run stops training with an error that says so."""

from __future__ import annotations

import pytest
import torch

from lightning_accel import ClassificationModule, GradualPruning, LatencyMonitor
from lightning_accel.callbacks.base import check_finite_weights, count_non_finite
from tests.conftest import quiet_trainer, small_module


@pytest.mark.bad_input("data")
def test_nan_pixel_stops_training_before_any_weight_turns_nan(digits, tmp_path) -> None:
    images, labels = digits.train_set.tensors
    images = images.clone()
    images[5, 0, 3, 3] = float("nan")  # one pixel of one training image
    digits.train_set = torch.utils.data.TensorDataset(images, labels)
    module = small_module()
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[GradualPruning(0.5, end_epoch=1)])
    with pytest.raises(
        ValueError,
        match=r"loss is nan at epoch 0, training batch \d+; that "
        r"batch holds 1 non-finite input values",
    ):
        trainer.fit(module, datamodule=digits)
    assert all(bool(torch.isfinite(p).all()) for p in module.parameters())


@pytest.mark.bad_input("data")
def test_diverging_run_is_told_to_lower_the_learning_rate(digits, tmp_path) -> None:
    module = ClassificationModule("small_cnn", input_size=8, lr=1e12)
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[LatencyMonitor(runs=2)])
    with pytest.raises(ValueError, match="inputs are finite, so training diverged: lower the"):
        trainer.fit(module, datamodule=digits)


def test_non_finite_helpers() -> None:
    batch = {"image": torch.tensor([1.0, float("inf"), float("nan")]), "ids": torch.tensor([1])}
    assert count_non_finite(batch) == 2
    assert count_non_finite((torch.zeros(3), [torch.tensor([float("nan")])])) == 1
    model = torch.nn.Linear(2, 2)
    check_finite_weights(model, "X")
    with torch.no_grad():
        model.bias[0] = float("nan")
    with pytest.raises(ValueError, match="X: parameter 'bias' holds NaN or inf values"):
        check_finite_weights(model, "X")


@pytest.mark.bad_input("data")
def test_example_input_array_of_the_wrong_size_is_named(digits, tmp_path) -> None:
    module = small_module()
    module.example_input_array = torch.zeros(1, 1, 28, 28)  # the data is 8x8
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[GradualPruning(0.5, end_epoch=1)])
    with pytest.raises(
        ValueError,
        match=r"example_input_array has shape \(1, 1, 28, 28\), but the training data's inputs "
        r"are \(64, 1, 8, 8\).*torch.zeros\(1, 1, 8, 8\)",
    ):
        trainer.fit(module, datamodule=digits)
