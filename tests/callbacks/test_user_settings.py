"""The callbacks respect what the user set on their model: train/eval mode, requires_grad, hooks."""

from __future__ import annotations

import copy

import pytest
import torch

from lightning_accel import GradualPruning, LatencyMonitor, QuantizationAware
from lightning_accel.utilities.modules import eval_mode
from tests.conftest import quiet_trainer, refused_before_training, small_module


def _frozen_stem():
    module = small_module()
    norm = module.model[1]  # after the first conv, which pruning keeps dense
    norm.eval()
    norm.requires_grad_(False)
    return module, norm, copy.deepcopy(norm.state_dict())


@pytest.mark.parametrize(
    "callbacks",
    [
        [GradualPruning(0.5, end_epoch=1)],
        [GradualPruning(0.5, mode="unstructured", end_epoch=1), LatencyMonitor(runs=2)],
    ],
    ids=["structured", "unstructured+latency"],
)
def test_a_batchnorm_the_user_froze_stays_frozen(digits, tmp_path, callbacks) -> None:
    module, norm, before = _frozen_stem()
    quiet_trainer(tmp_path, max_epochs=2, callbacks=callbacks).fit(module, datamodule=digits)
    assert norm.training is False
    assert module.model[5].training is True  # the others are back in train mode
    for key, value in norm.state_dict().items():
        assert torch.equal(value, before[key]), key  # running statistics did not move


def test_eval_mode_gives_each_submodule_its_own_mode_back() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2), torch.nn.Dropout())
    net.train()
    net[1].eval()
    with eval_mode(net):
        assert not any(m.training for m in net.modules())
    assert [m.training for m in net] == [True, False, True]
    assert net.training is True


def test_a_layer_the_user_froze_stays_frozen_when_its_channels_are_pruned(digits, tmp_path) -> None:
    # torch-pruning slices weights into new parameters, which require grad: the frozen conv
    # (model.4, pruned) and its BatchNorm (model.5, sliced with it) trained again.
    module = small_module()
    frozen = [module.model[4], module.model[5]]
    for layer in frozen:
        layer.requires_grad_(False)
    pruning = GradualPruning(0.5, end_epoch=1)
    quiet_trainer(tmp_path, max_epochs=2, callbacks=[pruning]).fit(module, datamodule=digits)
    assert module.model[4].out_channels == 16  # pruned, so its parameters were replaced
    for layer in frozen:
        for name, parameter in layer.named_parameters():
            assert not parameter.requires_grad and parameter.grad is None, name
    assert module.model[8].weight.requires_grad  # the others still train


def test_a_hook_on_a_quantized_layer_goes_on_firing(digits, tmp_path) -> None:
    # The layer swap for fake-quant dropped the user's hooks: they stopped firing, silently.
    module = small_module()
    seen: list[tuple[int, ...]] = []
    module.model[4].register_forward_hook(lambda m, args, out: seen.append(tuple(out.shape)))
    handle = module.model[8].register_forward_pre_hook(lambda m, args: seen.append((-1,)))
    qat = QuantizationAware(start_epoch=0)
    quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=2, callbacks=[qat]).fit(
        module, datamodule=digits
    )
    assert type(module.model.get_submodule("4")).__name__ == "QuantConv2d"  # traced: no [4]
    seen.clear()
    module.eval()(torch.zeros(3, 1, 8, 8))
    assert seen == [(3, 32, 4, 4), (-1,)]
    handle.remove()  # the user's handle still removes it
    seen.clear()
    module(torch.zeros(3, 1, 8, 8))
    assert seen == [(3, 32, 4, 4)]


@pytest.mark.bad_input("data")
def test_a_hook_on_a_module_qat_traces_through_is_refused_before_training(digits, tmp_path) -> None:
    module = small_module()
    module.model.register_forward_hook(lambda m, args, out: None)  # the Sequential itself
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[QuantizationAware(start_epoch=0)])
    with refused_before_training(
        trainer,
        module,
        r"cannot keep the hooks on 'model' \(SmallCNN: forward_hooks\): QAT traces through "
        r"this module .* silently stop firing\. Register the hook on a layer inside it",
    ):
        trainer.fit(module, datamodule=digits)
