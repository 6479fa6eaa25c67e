"""Structured pruning checked against its plan, and rehearsed on a copy before training.

Measured sparsity, layers left short of their planned width, and a rehearsal that refuses a
plan which would break the model before anything is changed.

torch-pruning removes a channel only together with everything its dependency graph couples
to it; a coupled layer that must keep its width (a 1-channel gate, an ignored layer, the
classifier) can keep a layer from reaching its planned width. What is reported is therefore
measured on the model, never the requested value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from lightning_accel.pruning.channels import attention_modules, out_channels, planned_width
from lightning_accel.pruning.consistency import inconsistent_layers
from lightning_accel.utilities.copying import detached_copy
from lightning_accel.utilities.layer_selection import (
    PRUNABLE_LAYERS,
    fold_hint,
    layers_in_call_order,
    reparametrized_weight,
)
from lightning_accel.utilities.modules import ModelInput, eval_mode, run_model


def channel_sparsity(model: nn.Module, initial_widths: Mapping[str, int]) -> float:
    """Measured fraction of output channels removed over the given layers.

    Args:
        model: The (pruned) model.
        initial_widths: Output channels of each prunable layer before pruning, by name.

    Returns:
        ``1 - sum(current widths) / sum(initial widths)``, in [0, 1].
    """
    initial = sum(initial_widths.values())
    current = sum(out_channels(model.get_submodule(name)) for name in initial_widths)
    return 1.0 - current / initial if initial else 0.0


def layers_short_of_plan(
    model: nn.Module, initial_widths: Mapping[str, int], sparsity: float, round_to: int | None
) -> list[str]:
    """Layers left wider than ``(1 - sparsity)`` of their initial width (beyond ``round_to``).

    Args:
        model: The pruned model.
        initial_widths: Output channels of each prunable layer before pruning, by name.
        sparsity: The per-layer fraction of channels the plan removes.
        round_to: Channel multiple the pruner kept (a layer may stay up to ``round_to - 1``
            channels wider); ``None``: exact.

    Returns:
        ``"name: W of planned P channels"`` for each such layer (attention layers, which lose
        whole heads, are not listed).
    """
    attention = attention_modules(model)
    slack = (round_to or 1) - 1
    short = []
    for name, initial in initial_widths.items():
        if name in attention:
            continue
        planned = planned_width(initial, sparsity)
        width = out_channels(model.get_submodule(name))
        if width > planned + slack:
            short.append(f"{name}: {width} of planned {planned} channels")
    return short


def output_shapes(output: Any) -> Any:
    """The shapes of a model's output (tensors, tuples, lists, dicts of them)."""
    if isinstance(output, Tensor):
        return tuple(output.shape)
    if isinstance(output, dict):
        return {key: output_shapes(value) for key, value in output.items()}
    if isinstance(output, (list, tuple)):
        return [output_shapes(value) for value in output]
    return type(output).__name__


@torch.no_grad()
def _shapes_of(model: nn.Module, example: ModelInput) -> Any:
    with eval_mode(model):
        return output_shapes(run_model(model, example))


def rehearse(
    model: nn.Module, example: ModelInput, prune: Callable[[nn.Module], object], technique: str
) -> nn.Module:
    """Prune a copy of ``model`` with ``prune`` and check it still runs with the same outputs.

    Args:
        model: The model to protect; it is not changed.
        example: One input batch on the model's device (a tensor or a tuple of tensors).
        prune: Prunes the module it is given in place, to the final target.
        technique: Name used in messages, e.g. ``"GradualPruning"``.

    Returns:
        The pruned copy (to measure what the plan reaches).

    Raises:
        ValueError: If pruning fails, the pruned copy fails or changes its output shapes, or a
            layer of it disagrees with its own attributes (attention heads, groups), naming the
            cause and the fix; ``model`` is untouched.
    """
    expected = _shapes_of(model, example)
    trial = detached_copy(model)
    try:
        prune(trial)
    except Exception as err:
        _refuse_cut_reparametrization(model, trial, technique, err)
        _refuse_cut_separate_projections(model, trial, technique, err)
        raise _fails(model, technique, err) from err
    _refuse_cut_reparametrization(model, trial, technique)
    _refuse_cut_separate_projections(model, trial, technique)
    try:
        got = _shapes_of(trial, example)
    except Exception as err:
        raise _fails(model, technique, err) from err
    if got != expected:
        layers = _layers_behind(model, trial, example, expected, got)
        ignore = f"ignore={layers}" if layers else "ignore=[...]"
        behind = f" (cut by layer(s) {', '.join(map(repr, layers))})" if layers else ""
        raise ValueError(
            f"{technique}(mode='structured') would change the model's output shapes from "
            f"{expected} to {got}{behind}. Leave the layers that give an output its width "
            f"out with {ignore}. The model was not changed."
        )
    broken = inconsistent_layers(trial)
    if broken:
        name, problem = broken[0]
        raise ValueError(
            f"{technique}(mode='structured') would break {type(model).__name__}: after pruning "
            f"a copy to the target, layer {name!r} {problem}. Keep widths a multiple of the head "
            f"count or groups with round_to=..., or leave the layers feeding {name!r} out with "
            "ignore=[...]. The model was not changed."
        )
    return trial


def _dims(shapes: Any) -> list[int]:
    """Every dimension in a nest of output shapes, in order."""
    if isinstance(shapes, tuple):
        return list(shapes)
    if isinstance(shapes, dict):
        return [d for value in shapes.values() for d in _dims(value)]
    if isinstance(shapes, list):
        return [d for value in shapes for d in _dims(value)]
    return []


def _layers_behind(
    model: nn.Module, trial: nn.Module, example: ModelInput, expected: Any, got: Any
) -> list[str]:
    """For each output dimension that changed, the last layer called whose width changed so.

    The last such layer called is the one that gives the output its width (a conv before
    pooled features); earlier ones with the same change only feed it.
    """
    before, after = _dims(expected), _dims(got)
    if len(before) != len(after):
        return []
    changed = {(a, b) for a, b in zip(before, after, strict=True) if a != b}
    pruned = dict(trial.named_modules())
    last: dict[tuple[int, int], str] = {}
    for name in layers_in_call_order(model, example, PRUNABLE_LAYERS):
        if name not in pruned:
            continue
        widths = (out_channels(model.get_submodule(name)), out_channels(pruned[name]))
        if widths in changed:
            last[widths] = name
    return sorted(set(last.values()))


def _fails(model: nn.Module, technique: str, err: BaseException) -> ValueError:
    first_line = str(err).splitlines()[0] if str(err) else ""
    return ValueError(
        f"{technique}(mode='structured') would break {type(model).__name__}: pruning a "
        f"copy to the target fails ({type(err).__name__}: {first_line}). "
        "Leave the layers involved out with ignore=[...], keep widths a multiple of the "
        "attention head count with round_to=..., or use mode='unstructured'. The model "
        "was not changed."
    )


def _tensor_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """Shapes of a layer's parameters and buffers (with parametrizations') and its weight."""
    shapes = {n: tuple(t.shape) for n, t in module.named_parameters()}
    shapes.update({n: tuple(t.shape) for n, t in module.named_buffers()})
    weight = module.__dict__.get("weight")  # recomputed by a hook (weight_norm, prune)
    if isinstance(weight, Tensor):
        shapes["weight"] = tuple(weight.shape)
    return shapes


def _refuse_cut_reparametrization(
    model: nn.Module, trial: nn.Module, technique: str, cause: BaseException | None = None
) -> None:
    """Refuse when pruning cut a layer whose weight another tool recomputes (names it).

    torch-pruning slices the derived ``weight`` (or the tensors it is computed from) but not
    the whole reparametrization (``weight_norm``'s ``weight_g``/``weight_v``, ``prune``'s
    ``weight_orig``/``weight_mask``, a parametrization's ``original``): the layer breaks at its
    next forward, or trains tensors of the old shape. Any such layer whose channels are coupled
    to a pruned one is touched, selected or not.

    Raises:
        ValueError: Naming the first such layer, how it is reparametrized and how to fold it.
    """
    trial_modules = dict(trial.named_modules())
    for name, module in model.named_modules():
        how = reparametrized_weight(module)
        pruned = trial_modules.get(name)
        if how is None or pruned is None:
            continue
        before, after = _tensor_shapes(module), _tensor_shapes(pruned)
        changed = sorted(k for k in before if after.get(k) != before[k])
        if changed:
            raise ValueError(
                f"{technique}(mode='structured') cannot prune {type(model).__name__}: layer "
                f"{name!r} has its channels coupled to pruned layers, but its weight is "
                f"reparametrized by {how}, which torch-pruning cannot slice as a whole "
                f"({', '.join(changed)} would change shape and break the layer). Fold it into "
                f"a plain weight before fit ({fold_hint(how)}), or use mode='unstructured'. "
                "The model was not changed."
            ) from cause


def _refuse_cut_separate_projections(
    model: nn.Module, trial: nn.Module, technique: str, cause: BaseException | None = None
) -> None:
    """Refuse when pruning cut an ``nn.MultiheadAttention`` with ``kdim``/``vdim`` of its own.

    Such an attention holds separate ``q_proj_weight``/``k_proj_weight``/``v_proj_weight``,
    which torch-pruning slices inconsistently (the forward then fails: "expecting query
    weights shape of (24, 24), but got (24, 32)"); no ``round_to`` avoids it. Pruning works
    once the layers feeding its query, key and value keep their widths.

    Raises:
        ValueError: Naming the attention and the pruned layers feeding it, for ``ignore=``.
    """
    trial_modules = dict(trial.named_modules())
    for name, module in model.named_modules():
        pruned = trial_modules.get(name)
        if not isinstance(module, nn.MultiheadAttention) or module._qkv_same_embed_dim:
            continue
        if pruned is None or _tensor_shapes(module) == _tensor_shapes(pruned):
            continue
        widths = {module.embed_dim, module.kdim, module.vdim}
        feeding = [
            n
            for n, layer in model.named_modules()
            if isinstance(layer, PRUNABLE_LAYERS)
            and not n.startswith(f"{name}.")
            and out_channels(layer) in widths
            and n in trial_modules
            and out_channels(trial_modules[n]) != out_channels(layer)
        ]
        raise ValueError(
            f"{technique}(mode='structured') cannot prune {type(model).__name__}: "
            f"nn.MultiheadAttention {name!r} has kdim/vdim of its own ({module.kdim}/"
            f"{module.vdim}, embed_dim {module.embed_dim}), so it holds separate q/k/v "
            "projections, which torch-pruning cannot slice consistently (round_to does not "
            "help). Keep the widths feeding its query, key and value with ignore=[...] "
            f"(the pruned layers of its widths: {feeding}), or use mode='unstructured'. The "
            "model was not changed."
        ) from cause
