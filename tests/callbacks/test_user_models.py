"""The user's own model (issue #12): shared weights and reparametrized layers."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from lightning_accel import ClassificationModule, GradualPruning, QuantizationAware
from lightning_accel.pruning.masks import weight_owners, weight_sparsity
from tests.conftest import quiet_trainer, small_module


class _Tied(nn.Module):
    """Two hidden Linear layers that share one weight tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU())
        self.a = nn.Linear(32, 32)
        self.b = nn.Linear(32, 32)
        self.b.weight = self.a.weight
        self.c = nn.Linear(32, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(torch.relu(self.c(torch.relu(self.b(torch.relu(self.a(x)))))))


def test_a_shared_weight_is_ranked_and_counted_once(digits, tmp_path) -> None:
    module = ClassificationModule(_Tied(), input_size=8, lr=0.05)
    pruning = GradualPruning(0.6, mode="unstructured", end_epoch=1)
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[pruning])
    trainer.fit(module, datamodule=digits)
    net = module.model
    distinct = [net.a.weight, net.c.weight]  # b shares a's tensor
    zeros = sum(int((w == 0).sum()) for w in distinct) / sum(w.numel() for w in distinct)
    assert zeros == pytest.approx(0.6, abs=1e-3)  # measured over distinct tensors
    logged = pruning.metrics["compress/weight_sparsity"]
    assert logged == pytest.approx(zeros)  # logged = measured = target
    assert weight_owners({"a": net.a, "b": net.b, "c": net.c}) == {"a": "a", "b": "a", "c": "c"}
    assert weight_sparsity({"a": net.a, "b": net.b}) == weight_sparsity({"a": net.a})


@pytest.mark.bad_input("data")
@pytest.mark.parametrize(
    "callback",
    [
        GradualPruning(0.8, mode="unstructured", end_epoch=1),
        GradualPruning(0.5, mode="structured", end_epoch=1),
        QuantizationAware(start_epoch=0),
    ],
    ids=["unstructured", "structured", "qat"],
)
def test_a_layer_torch_prune_reparametrized_is_refused_before_training(
    digits, tmp_path, callback
) -> None:
    module = small_module()
    prune.l1_unstructured(module.model[4], "weight", amount=0.3)
    before = copy.deepcopy(module.state_dict())
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[callback])
    with pytest.raises(
        ValueError,
        match=r"cannot act on layer 'model\.4': its weight is already reparametrized by "
        r"torch\.nn\.utils\.prune.*prune\.remove\(module, 'weight'\).*ignore=\['model\.4'\]",
    ):
        trainer.fit(module, datamodule=digits)
    assert module.state_dict().keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_the_refused_layer_can_be_left_out_with_ignore(digits, tmp_path) -> None:
    module = small_module()
    prune.l1_unstructured(module.model[4], "weight", amount=0.3)
    pruning = GradualPruning(0.8, mode="unstructured", end_epoch=1, ignore=["model.4"])
    quiet_trainer(tmp_path, max_epochs=2, callbacks=[pruning]).fit(module, datamodule=digits)
    assert pruning.metrics["compress/weight_sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert hasattr(module.model[4], "weight_orig")  # the user's reparametrization is untouched
