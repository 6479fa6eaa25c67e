"""Fake-quantizers: grids, ranges, observers and learnable scales."""

import pytest
import torch

from lightning_accel.quantization.fake_quant import ActivationQuantizer, WeightQuantizer


def test_uint8_activation_grid_covers_the_observed_range() -> None:
    quantizer = ActivationQuantizer(bits=8, symmetric=False).train()
    x = torch.linspace(-1.0, 3.0, 1000)
    out = quantizer(x)
    scale, zero_point = float(quantizer.scale), int(quantizer.zero_point)
    assert scale == pytest.approx(4.0 / 255, rel=1e-5)
    assert zero_point == round(1.0 / scale)
    levels = out / scale + zero_point
    torch.testing.assert_close(levels, levels.round(), atol=1e-3, rtol=0)
    assert levels.min() >= 0 and levels.max() <= 255
    assert (out - x).abs().max() <= scale / 2 + 1e-6


def test_int8_symmetric_activation_has_zero_point_zero() -> None:
    quantizer = ActivationQuantizer(bits=8, symmetric=True).train()
    quantizer(torch.tensor([-0.5, 2.0]))
    assert int(quantizer.zero_point) == 0
    assert float(quantizer.scale) == pytest.approx(2.0 / 127)


def test_percentile_observer_ignores_a_rare_outlier() -> None:
    x = torch.randn(100_000)
    x[0] = 1000.0
    minmax, percentile = ActivationQuantizer(), ActivationQuantizer(observer="percentile")
    minmax(x), percentile(x)
    assert float(minmax.max_val) == 1000.0
    assert float(percentile.max_val) < 5.0


def test_frozen_observer_keeps_its_range() -> None:
    quantizer = ActivationQuantizer().train()
    quantizer(torch.rand(64))
    scale = quantizer.scale.clone()
    quantizer.observer_enabled.fill_(False)
    quantizer(10 * torch.rand(64))
    torch.testing.assert_close(quantizer.scale, scale)


def test_ema_moves_range_slowly_after_the_first_batch() -> None:
    quantizer = ActivationQuantizer().train()
    quantizer(torch.tensor([0.0, 1.0]))
    quantizer(torch.tensor([0.0, 101.0]))
    assert float(quantizer.max_val) == pytest.approx(1.0 + 0.01 * 100)


@pytest.mark.parametrize("bits", [8, 4, 2])
def test_weight_quantizer_is_per_channel_symmetric(bits: int) -> None:
    weight = torch.randn(6, 3, 3, 3) * torch.arange(1, 7).reshape(6, 1, 1, 1)
    quantizer = WeightQuantizer(6, bits)
    out = quantizer(weight)
    q_max = 2 ** (bits - 1) - 1
    torch.testing.assert_close(quantizer.scale, weight.abs().flatten(1).amax(1) / q_max)
    levels = out / quantizer.scale.reshape(-1, 1, 1, 1)
    torch.testing.assert_close(levels, levels.round(), atol=1e-4, rtol=0)
    assert levels.abs().max() <= q_max + 1e-4


def test_learnable_scales_get_gradients_once_observers_freeze() -> None:
    activation = ActivationQuantizer(learnable=True).train()
    weights = WeightQuantizer(4, learnable=True)
    weight = torch.randn(4, 8, requires_grad=True)
    x = torch.randn(16, 8)
    activation(x), weights(weight)  # observers initialize the scales
    activation.observer_enabled.fill_(False)
    weights.observer_enabled.fill_(False)
    initial = activation.scale.detach().clone()
    loss = (activation(x) @ weights(weight).T).square().mean()
    loss.backward()
    assert activation.scale.grad is not None and activation.scale.grad.abs().sum() > 0
    assert weights.scale.grad is not None and weights.scale.grad.abs().sum() > 0
    assert weight.grad is not None
    torch.testing.assert_close(activation.scale.detach(), initial)
