"""Model zoo: classifiers whose stems suit small images such as Fashion-MNIST's 28x28."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from lightning_accel.utilities.imports import require

ModelBuilder = Callable[[int, int], nn.Module]
MODELS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Add a builder ``fn(num_classes, in_channels) -> nn.Module`` to the zoo."""

    def decorator(fn: ModelBuilder) -> ModelBuilder:
        MODELS[name] = fn
        return fn

    return decorator


def build(name: str, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """Build a randomly initialized model from the zoo (no weights are downloaded).

    Args:
        name: One of :data:`MODELS`, e.g. ``"resnet18"``.
        num_classes: Classifier outputs.
        in_channels: Image channels (1 for Fashion-MNIST).

    Raises:
        ValueError: If ``name`` is unknown or a size is not positive.

    Example:
        >>> build("small_cnn", num_classes=10, in_channels=1)  # doctest: +ELLIPSIS
        SmallCNN(...)
    """
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}. Available: {', '.join(sorted(MODELS))}")
    if num_classes < 1 or in_channels < 1:
        raise ValueError(
            f"num_classes and in_channels must be >= 1; got num_classes={num_classes}, "
            f"in_channels={in_channels}"
        )
    return MODELS[name](num_classes, in_channels)


class SmallCNN(nn.Sequential):
    """Three conv-BN-ReLU blocks and a linear classifier (~29k parameters)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16) -> None:
        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
            ]

        super().__init__(
            *block(in_channels, width),
            nn.MaxPool2d(2),
            *block(width, 2 * width),
            nn.MaxPool2d(2),
            *block(2 * width, 4 * width),
            nn.Conv2d(4 * width, 4 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(4 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4 * width, num_classes),
        )


@register_model("small_cnn")
def small_cnn(num_classes: int, in_channels: int) -> nn.Module:
    """Three conv-BN-ReLU blocks for quick experiments."""
    return SmallCNN(num_classes, in_channels)


@register_model("resnet18")
def resnet18(num_classes: int, in_channels: int) -> nn.Module:
    """Torchvision ResNet-18 with a 3x3 stride-1 stem; the max-pool then halves 28x28 to 14x14."""
    models = require("torchvision", "The resnet18 model").models
    model = models.resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    return model


@register_model("mobilenet_v2")
def mobilenet_v2(num_classes: int, in_channels: int) -> nn.Module:
    """Torchvision MobileNetV2 with a stride-1 stem, so 28x28 inputs end at 2x2, not 1x1."""
    models = require("torchvision", "The mobilenet_v2 model").models
    model = models.mobilenet_v2(weights=None, num_classes=num_classes)
    model.features[0][0] = nn.Conv2d(
        in_channels, 32, kernel_size=3, stride=1, padding=1, bias=False
    )
    return model


@register_model("resnet50")
def resnet50(num_classes: int, in_channels: int) -> nn.Module:
    """Torchvision ResNet-50 with the same 28x28 stem as :func:`resnet18`."""
    models = require("torchvision", "The resnet50 model").models
    model = models.resnet50(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    return model


@register_model("mobilenet_v3_small")
def mobilenet_v3_small(num_classes: int, in_channels: int) -> nn.Module:
    """Torchvision MobileNetV3-Small with a stride-1 stem.

    BatchNorm momentum is 0.1, not torchvision's 0.01: that value suits long ImageNet runs, and
    over a few hundred steps the running statistics stay near their initial values, so the
    model scores chance in eval mode while training loss falls.
    """
    models = require("torchvision", "The mobilenet_v3_small model").models
    norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.1)
    model = models.mobilenet_v3_small(weights=None, num_classes=num_classes, norm_layer=norm)
    model.features[0][0] = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
    return model


@register_model("efficientnet_b0")
def efficientnet_b0(num_classes: int, in_channels: int) -> nn.Module:
    """Torchvision EfficientNet-B0 with a stride-1 stem."""
    models = require("torchvision", "The efficientnet_b0 model").models
    model = models.efficientnet_b0(weights=None, num_classes=num_classes)
    model.features[0][0] = nn.Conv2d(in_channels, 32, 3, stride=1, padding=1, bias=False)
    return model


@register_model("vit_tiny")
def vit_tiny(num_classes: int, in_channels: int) -> nn.Module:
    """A timm VisionTransformer sized for 28x28 (0.7M parameters).

    4x4 patches (49 tokens and a class token), width 96, 6 blocks of 4 heads, MLP ratio 4.
    """
    timm = require("timm", "The vit_tiny model")
    return timm.models.vision_transformer.VisionTransformer(
        img_size=28,
        patch_size=4,
        in_chans=in_channels,
        num_classes=num_classes,
        embed_dim=96,
        depth=6,
        num_heads=4,
        mlp_ratio=4.0,
    )
