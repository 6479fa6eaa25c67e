"""Conv and linear layers on binary weights and/or binary inputs, with latent real weights.

``progress`` (a buffer, 0 to 1) moves a layer from real to binary: the layer computes with
``(1 - p)·W + p·α·sign(W)`` and reads ``(1 - p)·x + p·sign(x - β)``. At ``p = 1`` it is exactly
binary. BatchNorm, residual shortcuts and everything outside the layer stay real-valued.

β is a learned per-channel threshold (ReActNet's RSign, Liu et al. 2020), initialized to the
channel means of the first training batch. Without it, inputs that follow a ReLU, which are
all >= 0, would binarize to +1 everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_accel.binarization.functions import binarize_activation, binarize_weight
from lightning_accel.quantization.layers import conv_transpose
from lightning_accel.utilities.distributed import mean_across_ranks
from lightning_accel.utilities.modules import per_channel, set_submodule


class _BinaryMixin:
    """Binarization shared by the binary layer classes."""

    # Traced as one call by QAT's torch.fx preparation (a layer is binarized or quantized).
    keep_as_fx_leaf: ClassVar[bool] = True

    weight: Tensor
    bias: Any
    training: bool
    progress: Tensor
    binary_weights: bool
    binary_activations: bool
    scaling: str | None
    estimator: str

    activation_shift: Tensor
    shift_initialized: Tensor

    def effective_input(self, x: Tensor) -> Tensor:
        if not self.binary_activations:
            return x
        shift = self.activation_shift
        if self.training and not bool(self.shift_initialized):
            with torch.no_grad():  # start at the channel means: half the inputs on each side
                # averaged over DDP ranks, so every rank starts from the same threshold
                shift.copy_(mean_across_ranks(x.detach().transpose(0, 1).flatten(1).mean(1)))
                self.shift_initialized.fill_(True)
        binary = binarize_activation(x - per_channel(shift, x), self.estimator)
        return _blend(x, binary, self.progress)

    def effective_weight(self) -> Tensor:
        if not self.binary_weights:
            return self.weight
        return _blend(self.weight, binarize_weight(self.weight, self.scaling), self.progress)

    def extra_repr(self) -> str:
        return (
            super().extra_repr()  # type: ignore[misc]
            + f", binary_weights={self.binary_weights}, binary_activations="
            f"{self.binary_activations}, scaling={self.scaling}, ste={self.estimator}"
        )


def _blend(real: Tensor, binary: Tensor, progress: Tensor) -> Tensor:
    if bool(progress >= 1):
        return binary
    return real + progress * (binary - real)


class BinaryConv1d(_BinaryMixin, nn.Conv1d):
    """Conv1d with binarized weights and/or inputs."""

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.effective_input(x), self.effective_weight(), self.bias)


class BinaryConv2d(_BinaryMixin, nn.Conv2d):
    """Conv2d with binarized weights and/or inputs."""

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.effective_input(x), self.effective_weight(), self.bias)


class BinaryConv3d(_BinaryMixin, nn.Conv3d):
    """Conv3d with binarized weights and/or inputs."""

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.effective_input(x), self.effective_weight(), self.bias)


class BinaryLinear(_BinaryMixin, nn.Linear):
    """Linear layer with binarized weights and/or inputs."""

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.effective_input(x), self.effective_weight(), self.bias)


class _BinaryTransposeMixin(_BinaryMixin):
    """A transposed conv: weight ``[in, out / groups, *kernel]``, α per output channel (axis 1)."""

    stride: Any
    padding: Any
    output_padding: Any
    groups: int
    dilation: Any

    def effective_weight(self) -> Tensor:
        if not self.binary_weights:
            return self.weight
        weight = self.weight.transpose(0, 1)
        binary = _blend(weight, binarize_weight(weight, self.scaling), self.progress)
        return binary.transpose(0, 1)

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        """The transposed conv on binary weights/inputs; ``output_size`` as torch's takes it."""
        return conv_transpose(self, self.effective_input(x), self.effective_weight(), output_size)


class BinaryConvTranspose1d(_BinaryTransposeMixin, nn.ConvTranspose1d):
    """ConvTranspose1d with binarized weights and/or inputs."""


class BinaryConvTranspose2d(_BinaryTransposeMixin, nn.ConvTranspose2d):
    """ConvTranspose2d with binarized weights and/or inputs."""


class BinaryConvTranspose3d(_BinaryTransposeMixin, nn.ConvTranspose3d):
    """ConvTranspose3d with binarized weights and/or inputs."""


BINARY_TRANSPOSED = (BinaryConvTranspose1d, BinaryConvTranspose2d, BinaryConvTranspose3d)
BINARY_LAYERS = (BinaryConv1d, BinaryConv2d, BinaryConv3d, BinaryLinear, *BINARY_TRANSPOSED)
_BINARY_FOR: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv1d: BinaryConv1d,
    nn.Conv2d: BinaryConv2d,
    nn.Conv3d: BinaryConv3d,
    nn.Linear: BinaryLinear,
}
_BINARY_TRANSPOSED_FOR: dict[type[nn.Module], type[nn.Module]] = {
    nn.ConvTranspose1d: BinaryConvTranspose1d,
    nn.ConvTranspose2d: BinaryConvTranspose2d,
    nn.ConvTranspose3d: BinaryConvTranspose3d,
}


def binarize_layer(
    layer: nn.Module, weights: bool, activations: bool, scaling: str | None, estimator: str
) -> nn.Module:
    """A binary layer sharing ``layer``'s parameters.

    Args:
        layer: A plain ``nn.Conv1d``/``2d``/``3d``, ``nn.ConvTranspose1d``/``2d``/``3d`` or
            ``nn.Linear`` (not a subclass).
        weights: Binarize the weights to ``α·sign(W)`` (α per output channel: axis 1 of a
            transposed conv's weight).
        activations: Binarize the inputs to ``sign(x - β)`` with a learned per-channel ``β``.
        scaling: Weight scale ``α``: ``"channel"`` (mean ``|W|`` per output channel),
            ``"tensor"`` or ``None`` (α = 1).
        estimator: Straight-through gradient of the input sign: ``"clipped"`` or
            ``"approx_sign"``.

    Returns:
        The binary layer, on ``layer``'s device and dtype and in its training mode, with
        ``progress`` 0 (it computes like ``layer`` until the progress is raised).

    Raises:
        TypeError: If ``layer`` is not a plain Conv1d/2d/3d, ConvTranspose1d/2d/3d or Linear.
    """
    if type(layer) not in _BINARY_FOR and type(layer) not in _BINARY_TRANSPOSED_FOR:
        raise TypeError(
            f"{type(layer).__name__} cannot be binarized: only plain nn.Conv1d/2d/3d, "
            "nn.ConvTranspose1d/2d/3d and nn.Linear can (a layer QuantizationAware already "
            "swapped cannot). Leave it out with ignore=[...]."
        )
    old: Any = layer
    weight = cast(Tensor, old.weight)
    factory = {"device": weight.device, "dtype": weight.dtype}
    new: Any
    if type(layer) is nn.Linear:
        new = BinaryLinear(old.in_features, old.out_features, old.bias is not None, **factory)
    elif type(layer) in _BINARY_TRANSPOSED_FOR:
        new = _BINARY_TRANSPOSED_FOR[type(layer)](
            old.in_channels,
            old.out_channels,
            old.kernel_size,
            old.stride,
            old.padding,
            old.output_padding,
            old.groups,
            old.bias is not None,
            old.dilation,
            old.padding_mode,
            **factory,
        )
    else:
        new = _BINARY_FOR[type(layer)](
            old.in_channels,
            old.out_channels,
            old.kernel_size,
            old.stride,
            old.padding,
            old.dilation,
            old.groups,
            old.bias is not None,
            old.padding_mode,
            **factory,
        )
    new.weight, new.bias = weight, old.bias
    new.binary_weights, new.binary_activations = weights, activations
    new.scaling, new.estimator = scaling, estimator
    new.register_buffer("progress", torch.tensor(0.0, device=weight.device))
    new.register_buffer(
        "shift_initialized", torch.zeros((), dtype=torch.bool, device=weight.device)
    )
    inputs = old.in_features if type(layer) is nn.Linear else old.in_channels
    shift = torch.zeros(int(inputs), device=weight.device, dtype=weight.dtype)
    new.activation_shift = nn.Parameter(shift, requires_grad=activations)
    new.train(layer.training)
    return cast(nn.Module, new)


def binary_layer_names(model: nn.Module) -> list[str]:
    """Names of the binary layers in ``model``, in module order."""
    return [name for name, m in model.named_modules() if isinstance(m, BINARY_LAYERS)]


def binarize_submodules(
    model: nn.Module, layers: Sequence[str], settings: Mapping[str, Any]
) -> None:
    """Replace each named layer by its binary form (all built first, then swapped).

    Args:
        model: Root module; ``layers`` are dotted names inside it.
        layers: Plain conv/linear layers to binarize.
        settings: ``weights``, ``activations``, ``scaling`` and ``estimator``, as
            :func:`binarize_layer` takes them.

    Raises:
        TypeError: If a named layer is not a plain conv/linear layer (nothing is swapped then).
    """
    new = {
        name: binarize_layer(
            model.get_submodule(name),
            settings["weights"],
            settings["activations"],
            settings["scaling"],
            settings["estimator"],
        )
        for name in layers
    }
    for name, layer in new.items():
        set_submodule(model, name, layer)


def set_progress(model: nn.Module, progress: float) -> None:
    """Set the real-to-binary blend (0 to 1) of every binary layer."""
    for module in model.modules():
        if isinstance(module, BINARY_LAYERS):
            module.progress.fill_(progress)


def replay_binarization(model: nn.Module, entry: dict[str, Any]) -> None:
    """Replay a ``"binarization"`` entry of the structural log (see ``checkpointing``)."""
    binarize_submodules(model, entry["layers"], entry)
