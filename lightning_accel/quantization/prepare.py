"""Swapping a model's layers for fake-quant ones and placing activation quantizers (torch.fx).

Placement follows ONNX Runtime's QDQ fusion rules, which TensorRT's explicit quantization
also accepts: every quantized conv or linear reads a quantized input; every quantized conv's
output is quantized after its BatchNorm and ReLU (ONNX Runtime then drops the ReLU into the
requantization and runs ``QLinearConv``); both inputs and the (post-ReLU) output of a residual
add are quantized, so the add runs as ``QLinearAdd``. A linear's output is quantized only where
a ReLU follows it (``Gemm -> Relu`` with no ``QuantizeLinear`` after the ReLU is left in float:
ONNX Runtime's selector takes the ReLU as part of the group and then wants a Q after it);
elsewhere its float output is what ``QGemm`` / ``MatMulIntegerToFloat`` write. Both operands
of a matmul between two activations (attention's ``q @ k^T`` and ``probs @ v``, after
:func:`~lightning_accel.quantization.attention.decompose_attention` has written
``scaled_dot_product_attention`` out) are quantized, so it runs as ``MatMulIntegerToFloat``.
One quantizer serves every reader of a tensor, as one Q/DQ pair does in the exported graph.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from lightning_accel.quantization.attention import decompose_attention, is_activation_matmul
from lightning_accel.quantization.fake_quant import ActivationQuantizer
from lightning_accel.quantization.integer_bias import pass_input_scales
from lightning_accel.quantization.layers import (
    QUANT_LAYERS,
    QUANT_TRANSPOSED,
    batch_norm_tail,
    is_batch_norm_for,
    quantize_layer,
)
from lightning_accel.quantization.multihead import decompose_multihead_attention, restore_modules
from lightning_accel.quantization.spec import QuantizationSpec
from lightning_accel.quantization.tracing import ModeDependentForward, trace_mode_independent
from lightning_accel.quantization.window_attention import quantizable_window_attention
from lightning_accel.utilities.modules import set_submodule

QUANTIZER_PREFIX = "activation_quantizers"
_RELU_MODULES = (nn.ReLU, nn.ReLU6)
_RELU_FUNCTIONS = {F.relu, torch.relu, F.relu6}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
# Ops whose output stays on their input's int8 grid: ONNX Runtime runs them on uint8 when the
# Q/DQ around them share one scale (as its own quantizer writes them).
_GRID_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.Flatten, nn.Identity)
_GRID_FUNCTIONS = {F.max_pool1d, F.max_pool2d, F.max_pool3d, torch.flatten}
_GRID_METHODS = ("flatten", "view", "reshape")
# Identity in eval: torchvision's stochastic depth (an optional dependency, so known by name;
# traced as its function, or as its module where that is a leaf). Not dropout: a layer reading
# through one needs the quantizer after it (pass_input_scales finds its input scale there).
_STOCHASTIC_DEPTH = "torchvision.ops.stochastic_depth"


def quantize_submodules(root: nn.Module, spec: QuantizationSpec) -> None:
    """Prepare every direct child of ``root`` that holds a layer of ``spec`` for QAT, in place.

    Each child is traced and replaced by its quantized ``torch.fx.GraphModule``, after every
    ``nn.MultiheadAttention`` in it has been rewritten with ``nn.Linear`` projections
    (:mod:`~lightning_accel.quantization.multihead`; ``spec`` names them ``<attention>.q_proj``
    and so on) and with torchvision's Swin window attention calling its ``qkv`` and ``proj``
    as modules (:mod:`~lightning_accel.quantization.window_attention`). All children are
    prepared before any is swapped in, so a failure leaves ``root`` as it was.

    Raises:
        ValueError: If a layer sits directly on ``root``, a child cannot be traced, or a
            layer is not called as a module in the forward pass.
    """
    groups: dict[str, dict[str, int]] = {}
    for name, bits in spec.weight_bits.items():
        child, _, rest = name.partition(".")
        if not rest:
            raise ValueError(
                f"Layer {name!r} is a direct attribute of {type(root).__name__}; QAT traces the "
                "network it belongs to. Keep the network in a submodule (e.g. self.model = ...)."
            )
        groups.setdefault(child, {})[rest] = bits
    originals = decompose_multihead_attention(root)
    try:
        with quantizable_window_attention(root):
            prepared = {
                child: prepare_qat(root.get_submodule(child), layers, spec, prefix=f"{child}.")
                for child, layers in groups.items()
            }
    except Exception:
        restore_modules(root, originals)
        raise
    for child, module in prepared.items():
        setattr(root, child, module)


def prepare_qat(
    model: nn.Module, weight_bits: Mapping[str, int], spec: QuantizationSpec, prefix: str = ""
) -> fx.GraphModule:
    """A traced copy of ``model`` whose layers ``weight_bits`` names train on fake-quant.

    Parameters are shared with ``model``; BatchNorms after quantized convs move into them.

    Args:
        model: The network.
        weight_bits: Bits per layer, by module name relative to ``model``.
        spec: Backend, activation bits, observer and scale learning.
        prefix: Prepended to layer names in error messages.

    Raises:
        ValueError: If ``model`` cannot be traced, a named layer is not called as a module, or
            sits in a module whose forward branches on ``self.training`` (see
            :func:`~lightning_accel.quantization.tracing.trace_mode_independent`).
    """
    try:
        # Modules whose forward reads self.training (StochasticDepth) stay single calls.
        graph_module, mode_leaves = trace_mode_independent(model)
    except ModeDependentForward:
        raise
    except Exception as err:
        raise ValueError(
            f"{type(model).__name__} cannot be quantized: torch.fx cannot trace it "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
            "QuantizationAware supports networks without data-dependent Python control flow "
            "(torchvision-style CNNs); leave the rest out with ignore=[...]."
        ) from err
    _check_hooks_kept(model, graph_module, prefix)
    inside = sorted(
        prefix + name
        for name in weight_bits
        if any(name.startswith(f"{leaf}.") for leaf in mode_leaves)
    )
    if inside:
        raise ModeDependentForward(
            f"Layers {inside} sit in a module whose forward branches on self.training, which "
            "QAT keeps as one call so that eval and export run its eval branch; they cannot be "
            "quantized there. Leave them out with ignore=[...]."
        )
    decompose_attention(graph_module)
    rewriter = _Rewriter(graph_module, spec)
    layer_nodes = rewriter.swap_layers(weight_bits)
    missing = sorted(set(weight_bits) - {str(node.target) for node in layer_nodes})
    if missing:
        raise ValueError(
            f"Layers {[prefix + name for name in missing]} are not called as modules in "
            f"{type(model).__name__}.forward, so they cannot be quantized. Leave them out with "
            "ignore=[...]."
        )
    rewriter.place_activation_quantizers(layer_nodes)
    # int32 bias grid (ONNX Runtime); transposed convs keep a float bias (run in float there)
    pass_input_scales(
        graph_module,
        [
            node
            for node in layer_nodes
            if not isinstance(graph_module.get_submodule(str(node.target)), QUANT_TRANSPOSED)
        ],
    )
    graph_module.graph.lint()
    graph_module.delete_all_unused_submodules()
    graph_module.recompile()
    return graph_module


_HOOK_DICTS = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_backward_pre_hooks",
    "_backward_hooks",
    "_is_full_backward_hook",
)


def _check_hooks_kept(model: nn.Module, graph_module: fx.GraphModule, prefix: str) -> None:
    """Refuse hooks on modules the trace runs through: they would stop firing, silently.

    torch.fx inlines the forward of every module that is not a leaf (a block, a Sequential,
    the network itself), so the traced network never calls it as a module; leaf layers stay
    modules, and a swapped layer takes its hooks to its quantized form.

    Raises:
        ValueError: Naming the first such module and how to keep the hook.
    """
    called = {str(node.target) for node in graph_module.graph.nodes if node.op == "call_module"}
    for name, module in model.named_modules():
        hooks = [
            kind
            for kind in ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks")
            if getattr(module, kind, None)
        ] + (["_backward_hooks"] if getattr(module, "_backward_hooks", None) else [])
        if hooks and name not in called:
            where = prefix + name if name else prefix.rstrip(".") or type(model).__name__
            raise ValueError(
                f"QuantizationAware cannot keep the hooks on {where!r} "
                f"({type(module).__name__}: {', '.join(h.strip('_') for h in hooks)}): QAT "
                "traces through this module with torch.fx, which no longer calls it as a "
                "module, so its hooks would silently stop firing. Register the hook on a layer "
                "inside it (convs, linears and activation modules stay modules and keep their "
                "hooks), or remove it before fit."
            )


class _Rewriter:
    """Graph edits of one traced network."""

    def __init__(self, graph_module: fx.GraphModule, spec: QuantizationSpec) -> None:
        self.graph_module = graph_module
        self.graph = graph_module.graph
        self.spec = spec
        self.modules = dict(graph_module.named_modules())
        parameter = next(graph_module.parameters(), None)
        self.device = parameter.device if parameter is not None else torch.device("cpu")
        self.quantized: dict[fx.Node, fx.Node] = {}

    def swap_layers(self, weight_bits: Mapping[str, int]) -> list[fx.Node]:
        """Replace each named layer (and the BatchNorm after a conv) by its quantized form."""
        layer_nodes = []
        swapped: set[str] = set()
        for node in list(self.graph.nodes):
            target = str(node.target)
            if node.op != "call_module" or target not in weight_bits:
                continue
            layer_nodes.append(node)
            if target in swapped:  # a layer called twice shares one quantized module
                continue
            layer = self.modules[target]
            bn_node = self._batch_norm_after(node, layer)
            bn = self.modules[str(bn_node.target)] if bn_node is not None else None
            quantized = quantize_layer(
                layer, bn, weight_bits[target], self.spec.learnable, self.spec.reduce_range
            )
            quantized.integer_bias = self.spec.integer_bias  # type: ignore[assignment]
            for hooks in _HOOK_DICTS:  # the user's hooks go on firing (shared: removable)
                if hooks in layer.__dict__:
                    quantized.__dict__[hooks] = layer.__dict__[hooks]
            set_submodule(self.graph_module, target, quantized)
            if bn_node is not None and bn is not None:  # the BatchNorm now lives at <layer>.bn
                self.graph_module.delete_submodule(str(bn_node.target))
                bn_node.replace_all_uses_with(self._call_tail(node, str(bn_node.target), bn))
                self.graph.erase_node(bn_node)
            swapped.add(target)
        self.modules = dict(self.graph_module.named_modules())
        return layer_nodes

    def _call_tail(self, node: fx.Node, bn_target: str, bn: nn.Module) -> fx.Node:
        """Call the steps a folded norm-act BatchNorm ran after normalizing (its drop, act).

        They move out of the BatchNorm (which becomes a plain one at ``<layer>.bn``) to its
        old path, ``<bn_target>.act``, and are called after the conv: the conv's output is
        then quantized after the act, as for a conv, BatchNorm and ReLU. Returns the node
        whose value the BatchNorm's readers now read.
        """
        tail = nn.Module()
        for child in batch_norm_tail(bn) or ():
            module = bn.get_submodule(child)
            bn.register_module(child, nn.Identity())
            if not isinstance(module, nn.Identity):
                tail.register_module(child, module)
        last = node
        if not tail._modules:
            return last
        self.graph_module.add_submodule(bn_target, tail)
        for child in tail._modules:
            with self.graph.inserting_after(last):
                last = self.graph.call_module(f"{bn_target}.{child}", (last,))
        return last

    def place_activation_quantizers(self, layer_nodes: list[fx.Node]) -> None:
        """Quantize layer inputs and outputs, residual adds and activation matmul operands.

        A linear's output only where a ReLU follows it; both operands of a matmul between two
        activations.
        """
        for node in layer_nodes:
            if isinstance(node.args[0], fx.Node):
                self._quantize(node.args[0])
            output = self._after_relus(node)
            is_linear = isinstance(self.graph_module.get_submodule(str(node.target)), nn.Linear)
            if not is_linear or output is not node:
                self._quantize(output)
        for node in list(self.graph.nodes):
            if _is_add(node):
                for argument in node.args[:2]:
                    self._quantize(argument)  # type: ignore[arg-type]
                self._quantize(self._after_relus(node))
            elif is_activation_matmul(node):
                for argument in node.args[:2]:
                    self._quantize(argument)  # type: ignore[arg-type]

    def _quantize(self, node: fx.Node) -> fx.Node:
        if node in self.quantized:
            return self.quantized[node]
        if _is_eval_identity(node) and node.args[0] in self.quantized:
            # No quantizer of its own: in eval and export its output is its quantized input.
            # One there (observed on the 1/(1-p)-scaled training values) would export as a
            # second Q/DQ right after the first, at another scale, which ONNX Runtime's
            # DoubleQDQPairsRemover merges into one quantization at a third scale: on
            # efficientnet_b1 that moved its output by 0.32 of the largest logit (0.016 with
            # the remover off).
            self.quantized[node] = node
            return node
        if self._keeps_grid(node):
            # Share the input's quantizer (no observing): the values are already on its grid.
            source = self._quantize(node.args[0])  # type: ignore[arg-type]
            while _is_eval_identity(source):  # a stochastic depth: its input's quantizer
                source = self.quantized[source.args[0]]  # type: ignore[index]
            name, kwargs = str(source.target), {"observe": False}
        else:
            name, kwargs = f"{QUANTIZER_PREFIX}.{node.name}", {}  # type: ignore[dict-item]
            quantizer = ActivationQuantizer(
                self.spec.activation_bits,
                self.spec.symmetric_activations,
                self.spec.observer,  # type: ignore[arg-type]
                self.spec.learnable,
            )
            self.graph_module.add_submodule(name, quantizer.to(self.device))
        with self.graph.inserting_after(node):
            quantized = self.graph.call_module(name, (node,), kwargs)  # type: ignore[arg-type]
        node.replace_all_uses_with(quantized, delete_user_cb=lambda user: user is not quantized)
        self.quantized[node] = self.quantized[quantized] = quantized
        return quantized

    def _keeps_grid(self, node: fx.Node) -> bool:
        if not node.args or not isinstance(node.args[0], fx.Node):
            return False
        if node.op == "call_module":
            return isinstance(self.modules.get(str(node.target)), _GRID_MODULES)
        if node.op == "call_function":
            return node.target in _GRID_FUNCTIONS
        return node.op == "call_method" and node.target in _GRID_METHODS

    def _batch_norm_after(self, node: fx.Node, layer: nn.Module) -> fx.Node | None:
        if len(node.users) != 1:
            return None
        (user,) = node.users
        if user.op == "call_module" and is_batch_norm_for(self.modules[str(user.target)], layer):
            return user
        return None

    def _after_relus(self, node: fx.Node) -> fx.Node:
        """The last of a chain of ReLUs reading ``node`` alone: where its value is requantized."""
        while len(node.users) == 1:
            (user,) = node.users
            if not self._is_relu(user):
                break
            node = user
        return node

    def _is_relu(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            return isinstance(self.modules.get(str(node.target)), _RELU_MODULES)
        if node.op == "call_function":
            return node.target in _RELU_FUNCTIONS
        return node.op == "call_method" and node.target in ("relu", "relu_")


def _is_eval_identity(node: fx.Node) -> bool:
    """A stochastic depth: the identity in eval, so nothing in the exported graph."""
    if not node.args or not isinstance(node.args[0], fx.Node):
        return False
    if node.op == "call_function":
        return getattr(node.target, "__module__", None) == _STOCHASTIC_DEPTH
    if node.op != "call_module":
        return False
    owner = node.graph.owning_module
    if owner is None:
        return False
    return type(owner.get_submodule(str(node.target))).__module__ == _STOCHASTIC_DEPTH


def _is_add(node: fx.Node) -> bool:
    is_add = (node.op == "call_function" and node.target in _ADD_FUNCTIONS) or (
        node.op == "call_method" and node.target in ("add", "add_")
    )
    return is_add and len(node.args) >= 2 and all(isinstance(a, fx.Node) for a in node.args[:2])


def quantized_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The fake-quant conv/linear layers of ``model``, by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QUANT_LAYERS)}


def activation_quantizers(model: nn.Module) -> dict[str, ActivationQuantizer]:
    """The activation quantizers of ``model``, by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, ActivationQuantizer)}


def replay_quantization(model: nn.Module, entry: dict[str, Any]) -> None:
    """Replay a ``"quantization_aware"`` entry of the structural log (see ``checkpointing``)."""
    quantize_submodules(model, QuantizationSpec.from_dict(entry["spec"]))


def qdq_target(model: nn.Module) -> str | None:
    """The backend whose Q/DQ flavour ``model``'s fake-quant modules follow, or ``None``.

    Read from the modules themselves (activation signedness, int32 bias), so it holds for a
    model prepared by hand as well as by ``QuantizationAware``.
    """
    from lightning_accel.backends import BACKENDS, QDQFlavour

    layers = quantized_layers(model)
    activations = activation_quantizers(model)
    if not layers and not activations:
        return None
    flavour = QDQFlavour(
        symmetric_activations=any(q.symmetric for q in activations.values()),
        integer_bias=any(bool(getattr(m, "integer_bias", False)) for m in layers.values()),
    )
    return next((name for name, b in BACKENDS.items() if b.qdq == flavour), None)
