"""Binary layers: straight-through gradients, XNOR scales, progressive blending, thresholds."""

import pytest
import torch
from torch import nn

from lightning_accel.binarization import binarize_layer
from lightning_accel.binarization.convert import FloatBinaryLayer, Int8BinaryLayer
from lightning_accel.binarization.functions import binarize_activation, binarize_weight


def test_clipped_ste_passes_gradient_only_inside_the_unit_interval() -> None:
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], requires_grad=True)
    out = binarize_activation(x, "clipped")
    out.sum().backward()
    assert out.tolist() == [-1, -1, 1, 1, 1]
    assert x.grad.tolist() == [0, 1, 1, 1, 0]


def test_approx_sign_ste_is_the_bireal_piecewise_derivative() -> None:
    x = torch.tensor([-2.0, -0.5, 0.0, 0.25, 1.0], requires_grad=True)
    binarize_activation(x, "approx_sign").sum().backward()
    assert x.grad.tolist() == pytest.approx([0.0, 1.0, 2.0, 1.5, 0.0])


@pytest.mark.parametrize("scaling", ["channel", "tensor", None])
def test_weights_become_plus_minus_alpha_with_identity_gradient(scaling) -> None:
    weight = torch.randn(4, 3, 3, 3, requires_grad=True)
    binary = binarize_weight(weight, scaling)
    magnitudes = binary.detach().abs()
    if scaling == "channel":
        expected = weight.detach().abs().flatten(1).mean(1).reshape(4, 1, 1, 1).expand_as(weight)
    elif scaling == "tensor":
        expected = weight.detach().abs().mean().expand_as(weight)
    else:
        expected = torch.ones_like(weight)
    torch.testing.assert_close(magnitudes, expected)
    assert torch.equal(binary.detach().sign(), weight.detach().sign())
    binary.sum().backward()
    torch.testing.assert_close(weight.grad, torch.ones_like(weight))


def test_progress_moves_a_layer_from_real_to_binary() -> None:
    conv = nn.Conv2d(4, 8, 3, padding=1)
    x = torch.rand(2, 4, 6, 6)  # non-negative, like a ReLU output
    with torch.no_grad():
        real = conv(x)
    layer = binarize_layer(conv, True, True, "channel", "clipped").train()
    with torch.no_grad():
        torch.testing.assert_close(layer(x), real)  # progress 0: the real layer
        # The threshold starts at the channel means, so inputs fall on both sides of it.
        torch.testing.assert_close(layer.activation_shift, x.transpose(0, 1).flatten(1).mean(1))
        layer.progress.fill_(1.0)
        binary = layer(x)
        shifted = x - layer.activation_shift.reshape(1, -1, 1, 1)
        signs = torch.where(shifted >= 0, 1.0, -1.0)
        assert (signs > 0).any() and (signs < 0).any()
        expected = layer._conv_forward(signs, binarize_weight(conv.weight, "channel"), conv.bias)
        torch.testing.assert_close(binary, expected)
        layer.progress.fill_(0.5)
        half = layer(x)
    assert not torch.allclose(half, real) and not torch.allclose(half, binary)


def test_binary_layer_shares_the_original_parameters() -> None:
    conv = nn.Conv2d(2, 4, 3)
    layer = binarize_layer(conv, True, False, None, "clipped")
    assert layer.weight is conv.weight and layer.bias is conv.bias


def test_only_plain_layers_binarize() -> None:
    class Custom(nn.Conv2d):
        pass

    with pytest.raises(TypeError, match="cannot be binarized"):
        binarize_layer(Custom(1, 2, 3), True, True, "channel", "clipped")


def _fully_binary_conv(in_channels: int, bias: bool) -> nn.Module:
    torch.manual_seed(0)
    layer = binarize_layer(
        nn.Conv2d(in_channels, 6, 3, padding=1, bias=bias), True, True, "channel", "clipped"
    )
    layer.progress.fill_(1.0)
    with torch.no_grad():
        layer.activation_shift.uniform_(-0.5, 0.5)
    return layer.eval()


@pytest.mark.parametrize("in_channels, bias", [(8, False), (8, True), (3, False)])
def test_int8_form_computes_what_the_float_form_computes(in_channels, bias) -> None:
    # even inputs per output: sums of ±1 are even, requantized with step 2; odd: step 1
    layer = _fully_binary_conv(in_channels, bias)
    x = torch.randn(4, in_channels, 7, 7)
    expected = FloatBinaryLayer(layer)(x)
    torch.testing.assert_close(Int8BinaryLayer(layer)(x), expected, rtol=1e-5, atol=1e-5)


def test_int8_form_saturates_sums_beyond_its_256_levels() -> None:
    layer = _fully_binary_conv(64, False)  # 576 products per output
    with torch.no_grad():
        layer.weight.abs_()  # all +1: every interior output sums to 576
        layer.activation_shift.zero_()
    x = torch.ones(1, 64, 5, 5)
    alpha = layer.weight.abs().mean((1, 2, 3))
    out = Int8BinaryLayer(layer)(x)
    float_out = FloatBinaryLayer(layer)(x)[0, :, 2, 2].tolist()
    assert float_out == pytest.approx((576 * alpha).tolist(), rel=1e-4)
    # the largest even level
    assert out[0, :, 2, 2].tolist() == pytest.approx((254 * alpha).tolist(), rel=1e-4)
