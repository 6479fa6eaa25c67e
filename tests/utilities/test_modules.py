"""Module surgery helpers: BatchNorm as a per-channel multiply-add."""

import pytest
import torch
from torch import nn

from lightning_accel.utilities.modules import ChannelAffine, batchnorm_to_affine


def _trained_norm(norm: nn.modules.batchnorm._BatchNorm, shape: tuple[int, ...]) -> nn.Module:
    norm.train()
    for _ in range(3):
        norm(torch.randn(shape) * 3 + 1)
    if norm.affine:
        with torch.no_grad():
            norm.weight.uniform_(-2, 2)
            norm.bias.uniform_(-1, 1)
    return norm.eval()


@pytest.mark.parametrize(
    "norm, shape",
    [
        (nn.BatchNorm2d(6), (4, 6, 5, 5)),
        (nn.BatchNorm1d(6), (4, 6)),
        (nn.BatchNorm2d(6, affine=False), (4, 6, 5, 5)),
    ],
)
def test_channel_affine_computes_what_the_eval_batchnorm_computes(norm, shape) -> None:
    norm = _trained_norm(norm, shape)
    x = torch.randn(shape)
    torch.testing.assert_close(ChannelAffine(norm)(x), norm(x), rtol=1e-5, atol=1e-5)


def test_batchnorm_to_affine_replaces_only_norms_with_running_statistics() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3),
        _trained_norm(nn.BatchNorm2d(6), (2, 6, 8, 8)),
        nn.ReLU(),
        nn.BatchNorm2d(6, track_running_stats=False),  # batch statistics even in eval
    ).eval()
    x = torch.randn(2, 3, 10, 10)
    expected = model(x)
    assert batchnorm_to_affine(model) == 1
    assert isinstance(model[1], ChannelAffine) and isinstance(model[3], nn.BatchNorm2d)
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
