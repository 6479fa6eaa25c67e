import sys

import pytest
import torch

from lightning_accel import ClassificationModule
from lightning_accel.models.zoo import MODELS, build


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("in_channels", [1, 3])
def test_zoo_models_take_28x28_images(name: str, in_channels: int) -> None:
    model = build(name, num_classes=7, in_channels=in_channels).eval()
    assert model(torch.randn(2, in_channels, 28, 28)).shape == (2, 7)


@pytest.mark.bad_input("constructor")
def test_unknown_model_lists_the_available_ones() -> None:
    names = ", ".join(sorted(MODELS))
    with pytest.raises(ValueError, match=f"Unknown model 'resnet19'. Available: {names}"):
        build("resnet19")


def test_classification_module_wraps_any_module_and_trains_a_step(digits) -> None:
    module = ClassificationModule(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)), input_size=8
    )
    x, y = next(iter(digits.train_dataloader()))
    optimizer = module.configure_optimizers()
    loss_before = torch.nn.functional.cross_entropy(module(x), y)
    for _ in range(5):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(module(x), y).backward()
        optimizer.step()
    assert torch.nn.functional.cross_entropy(module(x), y) < loss_before


@pytest.mark.bad_input("constructor")
def test_classification_module_rejects_unknown_optimizer() -> None:
    with pytest.raises(ValueError, match="optimizer must be 'sgd' or 'adamw'; got 'adam'"):
        ClassificationModule("small_cnn", optimizer="adam")


@pytest.mark.bad_input("constructor")
def test_a_model_whose_library_is_missing_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # as if timm were not installed
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'lightning-accel\[zoo\]'"):
        build("vit_tiny")


def test_mobilenet_v3_batchnorm_statistics_keep_up_with_short_runs() -> None:
    model = build("mobilenet_v3_small")
    momenta = {m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert momenta == {0.1}  # torchvision's 0.01 leaves eval-mode outputs at chance for ~500 steps
