"""The int32 bias grid of ONNX Runtime's integer kernels, seen by the fake-quant layers (#14).

For ONNX Runtime, export writes a layer's bias (BatchNorm folded in) as int32 at scale
``input_scale x weight_scale`` per output channel (:class:`~.convert.QDQLayer`): ``QLinearConv``
and ``QGemm`` add it to the int32 accumulator. A fake-quant layer that kept its bias in float
computed something else than the exported graph: each output channel moved by up to half a bias
step, ``0.5 * s_x * s_w`` (a hundredth of an output step in MobileNetV2's depthwise convs, whose
BatchNorm factors ``gamma / sigma`` reach 30 and with them the weight scales). That is enough
to flip requantization roundings, and a deep depthwise network amplifies each flip block by
block: PyTorch vs ONNX Runtime top-1 agreement was 96.6% on a pruned QAT MobileNetV2 on
Fashion-MNIST, 99.7% with the bias on the grid (1,000 test images).

The layers therefore round their (folded) bias onto that grid in the eval-mode forward pass, so
the PyTorch model that verification compares a runtime with computes the exported graph. They
need the scale of the activation quantizer that feeds them: :func:`pass_input_scales` hands it
to each layer call in the traced graph as the keyword ``input_scale``, read live from the
quantizer (so it follows observer updates, ``.to(device)`` and loaded checkpoints; no new state
is saved).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, fx

from lightning_accel.quantization.fake_quant import ActivationQuantizer, activation_range

RUNTIME_BITS = 8  # the activation width runtimes execute (see spec.RUNTIME_BITS)
INT32_RANGE = (-(2**31), 2**31 - 1)


def runtime_scale(scale: Tensor | float, bits: int, symmetric: bool) -> Tensor | float:
    """The 8-bit scale over the range an activation quantizer trains (what export writes).

    Args:
        scale: The quantizer's scale, a ``(1,)`` tensor (or a float once converted to Q/DQ).
        bits: The quantizer's bit width; at 8 the scale is returned as it is.
        symmetric: Signed symmetric (TensorRT) or unsigned asymmetric (ONNX Runtime) range.

    Returns:
        The scale of the 8-bit grid over the same range (``QDQActivation.from_quantizer``).
    """
    if bits == RUNTIME_BITS:
        return scale
    low, high = activation_range(bits, symmetric)
    low8, high8 = activation_range(RUNTIME_BITS, symmetric)
    if symmetric:
        return scale * high / high8
    return scale * (high - low) / (high8 - low8)


def on_integer_grid(bias: Tensor, weight_scale: Tensor, input_scale: Tensor | float) -> Tensor:
    """``bias`` rounded to the int32 grid ``input_scale x weight_scale`` (straight-through).

    Args:
        bias: Float bias, ``[C_out]`` (BatchNorm folded in).
        weight_scale: Per-output-channel weight scales, ``[C_out]``.
        input_scale: The input activation's (8-bit) scale, a ``(1,)`` tensor or a float.

    Returns:
        ``round(bias / step) * step`` clamped to int32, ``step = input_scale * weight_scale``;
        the gradient passes to ``bias`` as if unrounded.
    """
    step = (weight_scale.detach() * input_scale).reshape(-1)
    if isinstance(step, Tensor):
        step = step.detach()
    rounded = torch.round(bias.detach() / step).clamp(*INT32_RANGE) * step
    return bias + (rounded - bias).detach()


def layer_bias(
    layer: Any, bias: Tensor | None, input_scale: Tensor | float | None
) -> Tensor | None:
    """The bias ``layer`` adds: in eval, on the int32 grid where its backend fuses an int32 bias.

    Training keeps the float bias: rounding it there (straight-through) cost the LSQ test model
    (learned scales, 8x8 digits) 20 points of validation accuracy, and the grid matters only
    for what the runtime computes, which is what the eval-mode model is compared with.

    Args:
        layer: A fake-quant conv or linear; ``layer.integer_bias`` (set by QAT preparation)
            says whether its backend wants an int32 bias, and ``layer.weight_quantizer.scale``
            holds the weight scales its forward pass just used.
        bias: The float bias (folded), or ``None``.
        input_scale: Scale of the quantizer feeding the layer, or ``None`` (no grid known:
            export then writes a float bias too).
    """
    if layer.training or bias is None or input_scale is None:
        return bias
    if not getattr(layer, "integer_bias", False):
        return bias
    return on_integer_grid(bias, layer.weight_quantizer.scale, input_scale)


def pass_input_scales(graph_module: fx.GraphModule, layer_nodes: list[fx.Node]) -> None:
    """Give each integer-bias conv/linear call its input quantizer's scale (in place).

    Adds ``input_scale=runtime_scale(<quantizer>.scale, bits, symmetric)`` to the call of every
    layer in ``layer_nodes`` that has a bias (or a folded BatchNorm), trains for an integer bias
    and reads an activation quantizer's output. The caller leaves transposed convs out: they
    keep a float bias (ONNX Runtime runs them in float). The graph is not recompiled; the
    caller does that.
    """
    graph = graph_module.graph
    for node in layer_nodes:
        layer = graph_module.get_submodule(str(node.target))
        has_bias = (
            getattr(layer, "bias", None) is not None or getattr(layer, "bn", None) is not None
        )
        if not getattr(layer, "integer_bias", False):
            continue
        source = node.args[0] if node.args else None
        if not has_bias or not isinstance(source, fx.Node) or source.op != "call_module":
            continue
        quantizer = graph_module.get_submodule(str(source.target))
        if not isinstance(quantizer, ActivationQuantizer):
            continue
        with graph.inserting_before(node):
            scale = graph.get_attr(f"{source.target}.scale")
            scale = graph.call_function(runtime_scale, (scale, quantizer.bits, quantizer.symmetric))
        node.kwargs = {**node.kwargs, "input_scale": scale}
