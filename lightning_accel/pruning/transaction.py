"""A structured pruning step as a transaction: checked against its plan, undone on a mismatch.

After each step (issue #12) every selected layer must be at its planned width (within
``round_to``), the model's output shapes must be unchanged, every layer must agree with its
own attributes (attention heads, grouped and depthwise convs, norms: see
:mod:`lightning_accel.pruning.consistency`) and no layer outside the selection may have changed
its width. On a mismatch, or on any error inside the step, the model is put back exactly as it
was and one :class:`PruningStepError` names the layer, what went wrong and the fix.

A layer left *wider* than planned is benign: torch-pruning's graph couples its channels to a
layer that keeps its width (a 1-channel gate, an ignored layer); it is reported, and the
sparsity logged is the one measured.

The undo keeps object identity: the same ``nn.Module`` and ``nn.Parameter`` objects get their
tensors and attributes back, so the ``LightningModule``, the optimizer's references to its
parameters and the optimizer state all stay valid (bit for bit).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from lightning_accel.pruning.channels import attention_modules, out_channels, planned_width
from lightning_accel.pruning.consistency import inconsistent_layers
from lightning_accel.pruning.plan import output_shapes
from lightning_accel.utilities.layer_selection import PRUNABLE_LAYERS
from lightning_accel.utilities.modules import ModelInput, eval_mode, run_model

T = TypeVar("T")

_CONTAINERS = ("_parameters", "_buffers", "_modules")


class PruningStepError(RuntimeError):
    """A structured pruning step failed its check; the model was restored as before the step."""


class ModelSnapshot:
    """Everything a structural change can touch, kept to put the model back in place.

    For every submodule: its attributes, parameters, buffers, children and hook dictionaries
    (by reference, so the same objects come back); for every parameter and buffer: a clone of
    its data and gradient. :meth:`restore` gives the original objects their original content.
    """

    def __init__(self, model: nn.Module) -> None:
        self._modules: list[tuple[nn.Module, dict[str, Any], dict[str, dict[Any, Any]]]] = []
        self._tensors: dict[int, tuple[Tensor, Tensor, Tensor | None]] = {}
        for module in model.modules():
            attributes = dict(module.__dict__)
            contents = {k: dict(v) for k, v in attributes.items() if isinstance(v, dict)}
            self._modules.append((module, attributes, contents))
            for tensor in (*module._parameters.values(), *module._buffers.values()):
                if tensor is not None and id(tensor) not in self._tensors:
                    grad = tensor.grad.detach().clone() if tensor.grad is not None else None
                    self._tensors[id(tensor)] = (tensor, tensor.detach().clone(), grad)

    @torch.no_grad()
    def restore(self) -> None:
        """Put every saved module, parameter and buffer back as it was, in place."""
        for module, attributes, contents in self._modules:
            module.__dict__.clear()
            module.__dict__.update(attributes)
            for key, saved in contents.items():
                container = attributes[key]
                container.clear()
                container.update(saved)
        for tensor, data, grad in self._tensors.values():
            tensor.data = data
            tensor.grad = grad


@dataclass(frozen=True)
class StepPlan:
    """What one structured step should reach.

    Attributes:
        layers: Names of the selected (prunable) layers.
        initial_widths: Output channels of each selected layer before any pruning.
        sparsity: The fraction of each initial width the step removes (layer scope).
        round_to: The channel multiple torch-pruning keeps, or ``None``.
        per_layer: Whether each layer has a planned width (``scope='layer'``); with global
            ranking only the other checks apply.
    """

    layers: Sequence[str]
    initial_widths: Mapping[str, int]
    sparsity: float
    round_to: int | None = None
    per_layer: bool = True


@dataclass(frozen=True)
class StepProblem:
    """A mismatch: the layer, what is wrong and how to fix it."""

    layer: str
    what: str
    fix: str


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output channels (features) of every conv, transposed conv and linear layer, by name.

    The ``out_proj`` of an ``nn.MultiheadAttention`` is left out: its width is the attention's
    embedding, checked with the attention itself.
    """
    inside_attention = {
        f"{name}.out_proj" if name else "out_proj"
        for name, module in model.named_modules()
        if isinstance(module, nn.MultiheadAttention)
    }
    return {
        name: out_channels(module)
        for name, module in model.named_modules()
        if isinstance(module, PRUNABLE_LAYERS) and name not in inside_attention
    }


def _channel_groups(model: nn.Module) -> dict[int, int]:
    """Widths that a grouped (not depthwise) conv or a GroupNorm takes, with its group count.

    torch-pruning removes such channels evenly from every group, so a coupled layer may end
    up to ``groups - 1`` channels below its planned width.
    """
    groups: dict[int, int] = {}
    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd) and 1 < module.groups < module.in_channels:
            for width in (module.in_channels, module.out_channels):
                groups[width] = max(groups.get(width, 1), module.groups)
        elif isinstance(module, nn.GroupNorm) and 1 < module.num_groups < module.num_channels:
            width = module.num_channels
            groups[width] = max(groups.get(width, 1), module.num_groups)
    return groups


@torch.no_grad()
def output_shapes_of(model: nn.Module, example: ModelInput) -> Any:
    """Shapes of the model's outputs on ``example``, in eval mode (modes given back)."""
    with eval_mode(model):
        return output_shapes(run_model(model, example))


def check_step(
    model: nn.Module,
    example: ModelInput,
    plan: StepPlan,
    widths_before: Mapping[str, int],
    shapes_before: Any,
) -> tuple[StepProblem | None, list[str]]:
    """Check a pruned model against the plan of the step that pruned it.

    Args:
        model: The model after the step.
        example: One input batch, to run the model.
        plan: What the step should reach.
        widths_before: :func:`layer_widths` before the step.

    A selected layer may end up to ``round_to - 1`` channels (or, coupled to a grouped conv of
    ``g`` groups, ``g - 1``) below its planned width: torch-pruning's rounding.
        shapes_before: :func:`output_shapes_of` before the step.

    Returns:
        The first problem found (or ``None``), and the benign ones: selected layers left wider
        than planned, as ``"name: W of planned P channels"``.
    """
    selected = set(plan.layers)
    widths = layer_widths(model)
    for name, before in widths_before.items():
        if name not in selected and widths.get(name) != before:
            return StepProblem(
                name,
                f"is outside the selection but went from {before} to {widths.get(name)} "
                "output channels",
                f"this is a bug in the pruning of this architecture; leave {name!r} and the "
                "layers coupled to it out with ignore=[...], or use mode='unstructured'",
            ), []
    for name, problem in inconsistent_layers(model):
        return StepProblem(
            name,
            problem,
            "keep widths a multiple of the head count or groups with round_to=..., or leave "
            f"the layers feeding {name!r} out with ignore=[...]",
        ), []
    short = []
    if plan.per_layer:
        attention = attention_modules(model)
        grouped = _channel_groups(model)
        for name in plan.layers:
            if name in attention:
                continue  # loses whole heads; checked for consistency above
            planned = planned_width(plan.initial_widths[name], plan.sparsity)
            width = widths[name]
            # torch-pruning keeps a multiple of round_to, and removes channels coupled to a
            # grouped conv evenly from every group (RegNet, ResNeXt): either may round down.
            slack = max((plan.round_to or 1), grouped.get(width, 1)) - 1
            if width < planned - slack:
                return StepProblem(
                    name,
                    f"was cut to {width} channels, below its planned {planned} "
                    f"(of {plan.initial_widths[name]}, round_to={plan.round_to})",
                    f"leave {name!r} out with ignore=[{name!r}], or use mode='unstructured'",
                ), []
            if width > planned + slack:
                short.append(f"{name}: {width} of planned {planned} channels")
    shapes = output_shapes_of(model, example)
    if shapes != shapes_before:
        return StepProblem(
            "(model output)",
            f"changed the model's output shapes from {shapes_before} to {shapes}",
            "leave the output layers out with ignore=[...] (keep_first_and_last=True keeps the "
            "last layer)",
        ), short
    return None, short


def pruning_step(
    model: nn.Module,
    example: ModelInput,
    plan: StepPlan,
    prune: Callable[[], T],
    technique: str = "GradualPruning",
) -> tuple[T, list[str]]:
    """Run ``prune`` as a transaction: check the result, restore the model on any mismatch.

    Args:
        model: The model ``prune`` changes in place.
        example: One input batch on the model's device (a tensor or a tuple of tensors).
        plan: What the step should reach.
        prune: Changes ``model`` in place; its result is passed through.
        technique: Name used in the message.

    Returns:
        ``prune``'s result, and the selected layers left wider than planned (benign).

    Raises:
        PruningStepError: If ``prune`` raises or its result fails :func:`check_step`; the model
            (modules, parameters, buffers, gradients, attributes) is exactly as before.
    """
    widths_before = layer_widths(model)
    shapes_before = output_shapes_of(model, example)
    snapshot = ModelSnapshot(model)
    cause: BaseException | None = None
    try:
        result = prune()
        problem, short = check_step(model, example, plan, widths_before, shapes_before)
    except Exception as err:
        cause = err
        changed = [n for n, w in layer_widths(model).items() if widths_before.get(n) != w]
        layer = changed[0] if changed else (plan.layers[0] if plan.layers else "(model)")
        first_line = str(err).splitlines()[0] if str(err) else ""
        problem = StepProblem(
            layer,
            f"failed while being pruned ({type(err).__name__}: {first_line})",
            f"leave {layer!r} out with ignore=[{layer!r}], keep widths a multiple of the head "
            "count or groups with round_to=..., or use mode='unstructured'",
        )
    if problem is None:
        return result, short
    snapshot.restore()
    raise PruningStepError(
        f"{technique}(mode='structured'): the pruning step to sparsity {plan.sparsity:.3f} was "
        f"undone: layer {problem.layer!r} {problem.what}. The model, its weights and the "
        f"optimizer are exactly as before the step. Fix: {problem.fix}."
    ) from cause
