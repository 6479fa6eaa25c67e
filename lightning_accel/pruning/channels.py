"""Structured (channel) pruning through torch-pruning's dependency graph.

Removing a channel removes it from every coupled layer (BatchNorm, residual adds, depthwise
convs), so the model and its exported graph really shrink. In attention blocks (timm's ViT
and any module with a ``qkv`` projection, ``num_heads`` and ``head_dim``) whole heads go,
and MLP hidden widths shrink like conv channels. Each call returns a *history* of plain lists
(layer name, out/in, indices) that :func:`replay_channel_pruning` reapplies.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from lightning_accel.pruning.criteria import Criterion, group_importance
from lightning_accel.utilities.layer_selection import (
    PRUNABLE_LAYERS,
    fold_hint,
    reparametrized_weight,
)
from lightning_accel.utilities.modules import ModelInput, eval_mode

PruningHistory = list[list]  # [[module_name, is_out_channel_pruning, [indices]], ...]

# Raw nn.Parameters of a ViT's embedding; safe while the embedding width itself stays.
_EMBEDDING_PARAMETERS = {"cls_token", "pos_embed", "reg_token", "dist_token"}


def attention_modules(model: nn.Module) -> dict[str, Any]:
    """Multi-head attention blocks by the name of their ``qkv`` projection.

    Recognizes timm's ``Attention`` and look-alikes: a fused ``qkv`` ``nn.Linear`` plus
    ``num_heads`` and ``head_dim`` attributes.
    """
    found = {}
    for name, module in model.named_modules():
        qkv = getattr(module, "qkv", None)
        if (
            isinstance(qkv, nn.Linear)
            and hasattr(module, "num_heads")
            and hasattr(module, "head_dim")
        ):
            found[f"{name}.qkv" if name else "qkv"] = module
    return found


def sync_attention_heads(model: nn.Module) -> None:
    """After a pruning step, make the width attributes models read in ``forward`` match.

    timm attention: each block's head count from its ``qkv``. torchvision's
    ``VisionTransformer`` reshapes its patch embedding with ``self.hidden_dim``: set to its
    ``conv_proj``'s output channels (as torch-pruning's torchvision example does).
    """
    for module in model.modules():
        patch_embedding = getattr(module, "conv_proj", None)
        if hasattr(module, "hidden_dim") and isinstance(patch_embedding, nn.Conv2d):
            setattr(module, "hidden_dim", patch_embedding.out_channels)  # noqa: B010 - mypy
    for attention in attention_modules(model).values():
        heads = attention.qkv.out_features // (3 * attention.head_dim)
        attention.num_heads = heads
        if hasattr(attention, "attn_dim"):
            attention.attn_dim = heads * attention.head_dim


@contextmanager
def _tracing_mode(model: nn.Module) -> Iterator[None]:
    """Trace in eval mode with grad on, so BatchNorm statistics are not updated by the trace."""
    with eval_mode(model), torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def unsupported_layers(model: nn.Module, prunable: Sequence[str] | None = None) -> list[str]:
    """Modules holding parameters that torch-pruning has no pruning rule for.

    A ViT's own embedding parameters (``cls_token``, ``pos_embed``) are fine as long as its
    patch embedding, and so the embedding width, is not pruned.
    """
    import torch_pruning as tp  # imported here: it pulls in timm (and W&B) when installed

    t = tp.ops.OPTYPE
    sliceable = {
        t.CONV,
        t.DEPTHWISE_CONV,
        t.LINEAR,
        t.BN,
        t.PRELU,
        t.LN,
        t.GN,
        t.IN,
        t.EMBED,
        t.MHA,
        t.LSTM,
    }
    keep_width = set(prunable or ())
    per_channel = per_channel_parameters(model)
    names = []
    for name, module in model.named_modules():
        own = {n for n, p in module.named_parameters(recurse=False) if p not in per_channel}
        if not own:
            continue
        if own <= _EMBEDDING_PARAMETERS and hasattr(module, "patch_embed"):
            patch = f"{name}.patch_embed.proj" if name else "patch_embed.proj"
            if prunable is not None and patch not in keep_width:
                continue
        if tp.ops.module2type(module) not in sliceable:
            names.append(name)  # "" is the root module
    return names


def per_channel_parameters(model: nn.Module) -> dict[nn.Parameter, int]:
    """Raw parameters that scale channels, with the dimension torch-pruning must cut.

    A parameter of a module torch-pruning has no rule for is taken when it has exactly one
    dimension longer than 1 (ConvNeXt's layer scale ``[C, 1, 1]``, a learned per-channel
    gain ``[C]``), or when it is laid out as tokens, ``[1, T, C]`` (torchvision ViT's
    ``class_token`` and ``encoder.pos_embedding``): torch-pruning cuts it along the channel
    dimension as its ``unwrapped_parameters`` (for tokens the last one, torch-pruning's own
    default). Anything else stays unsupported, since the dimension to cut cannot be known.

    Returns:
        ``{parameter: dimension}``, for torch-pruning's ``unwrapped_parameters``.
    """
    import torch_pruning as tp

    t = tp.ops.OPTYPE
    handled = {t.CONV, t.DEPTHWISE_CONV, t.LINEAR, t.BN, t.PRELU, t.LN, t.GN, t.IN, t.EMBED}
    found: dict[nn.Parameter, int] = {}
    for module in model.modules():
        if tp.ops.module2type(module) in handled | {t.MHA, t.LSTM}:
            continue
        for name, parameter in module.named_parameters(recurse=False):
            if name in _EMBEDDING_PARAMETERS and hasattr(module, "patch_embed"):
                continue  # a ViT's token width: handled with its patch embedding
            if per_head_parameter(module, parameter):
                continue  # one value per head (Swin V2's logit_scale): no channel dimension
            long_dims = [d for d, size in enumerate(parameter.shape) if size > 1]
            if len(long_dims) == 1:
                found[parameter] = long_dims[0]
            elif parameter.dim() == 3 and parameter.shape[0] == 1:
                found[parameter] = 2  # tokens [1, T, C]
    return found


def per_head_parameter(module: nn.Module, parameter: Tensor) -> bool:
    """Whether ``parameter`` of an attention ``module`` holds one value per head.

    A module with an integer ``num_heads`` whose raw parameter has exactly one dimension
    longer than 1, of ``num_heads`` entries (torchvision Swin V2's ``logit_scale``,
    ``[heads, 1, 1]``), scales heads, not channels: cutting it by channel indices would
    corrupt it (torch-pruning fails on it with an ``IndexError``).
    """
    heads = getattr(module, "num_heads", None)
    if not isinstance(heads, int) or isinstance(heads, bool) or heads < 2:
        return False
    long_dims = [size for size in parameter.shape if size > 1]
    return long_dims == [heads]


def _why_unsliceable(module: nn.Module, per_channel: Mapping[nn.Parameter, int]) -> str:
    """Why the raw parameters of ``module`` cannot be cut by channel, naming the first one."""
    for name, parameter in module.named_parameters(recurse=False):
        if parameter in per_channel:
            continue
        shape = tuple(parameter.shape)
        if per_head_parameter(module, parameter):
            return (
                f"its raw nn.Parameter {name!r} of shape {shape} holds one value per attention "
                f"head (num_heads={getattr(module, 'num_heads', '?')}), not one per channel, "
                "and torch-pruning has no rule to remove heads from this attention"
            )
        return (
            f"its raw nn.Parameter {name!r} of shape {shape} has no single channel dimension "
            "that torch-pruning could slice"
        )
    return "it holds raw nn.Parameters that torch-pruning has no rule to slice"


def check_structured_support(
    model: nn.Module, prunable: Sequence[str] | None = None, global_scope: bool = False
) -> None:
    """Refuse models with layers whose channels torch-pruning cannot follow.

    Args:
        model: Root module to check.
        prunable: Names of the layers to be pruned; ``None``: assume any layer may be (a ViT's
            ``cls_token``/``pos_embed`` then count as unsupported).
        global_scope: Whether channels will be ranked across layers (``scope='global'``).

    Raises:
        ValueError: If ``global_scope`` and an attention ``qkv`` layer is in ``prunable``, or a
            module holds parameters torch-pruning cannot slice (naming the first one).
    """
    if global_scope and set(attention_modules(model)) & set(prunable or ()):
        raise ValueError(
            "Structured pruning with scope='global' cannot rank attention heads against "
            "channels. Use scope='layer' (heads and MLP widths shrink by the same fraction)."
        )
    unsupported = unsupported_layers(model, prunable)
    for name in unsupported:
        owner, found, _ = name.rpartition(".parametrizations.")
        if found or name.startswith("parametrizations."):
            owner = owner if found else ""
            how = reparametrized_weight(model.get_submodule(owner) if owner else model)
            raise ValueError(
                f"Structured pruning cannot handle layer {owner or '(the root module)'!r}: its "
                f"weight is reparametrized by {how or 'torch.nn.utils.parametrize'}, which "
                "torch-pruning cannot slice as a whole. Fold it into a plain weight before fit "
                f"({fold_hint(how or 'parametrize')}), or use mode='unstructured'."
            )
    if unsupported:
        module = model.get_submodule(unsupported[0]) if unsupported[0] else model
        where = repr(unsupported[0]) if unsupported[0] else "(the root module)"
        why = _why_unsliceable(module, per_channel_parameters(model))
        raise ValueError(
            f"Structured pruning cannot handle layer {where} "
            f"({type(module).__name__}): {why}, so removing channels would corrupt it. "
            "Use mode='unstructured' or "
            "mode='2:4' for this model, or build the layer from standard modules "
            "(Conv, Linear, BatchNorm, LayerNorm)."
        )


def prune_channels(
    model: nn.Module,
    example_input: ModelInput,
    prunable: Sequence[str],
    ratio: float | Mapping[str, float],
    global_scope: bool = False,
    round_to: int | None = None,
    criterion: Criterion = "l2",
    protect: Sequence[str] = (),
) -> PruningHistory:
    """Remove a fraction of the current output channels of the ``prunable`` layers.

    Channels are ranked by ``criterion`` over their whole coupled group (weights of every
    layer the channel touches). Layers outside ``prunable`` keep their output channels.

    Args:
        model: Root module; history names are relative to it.
        example_input: An input batch on the model's device, for tracing: a tensor, or a tuple
            of tensors the model takes as positional inputs (any dtype, e.g. int64 token ids).
        prunable: Names of conv, transposed conv and linear layers whose output channels may be
            removed; every other such layer keeps its output channels.
        ratio: Fraction of current channels to remove, in [0, 1): one for all layers, or one
            per layer name (see :func:`ratios_to_widths`).
        global_scope: Rank channels across layers (uneven widths) instead of per layer;
            needs a single ``ratio``.
        round_to: Keep channel counts a multiple of this (fast kernels like multiples of 8).
        criterion: ``"l1"``, ``"l2"``, ``"taylor"`` (needs gradients on the weights) or a
            callable scoring a torch-pruning group (see :mod:`lightning_accel.pruning.criteria`).
        protect: Names of other modules whose channels must stay (an attention block, a norm,
            a module with raw parameters, a block): no channel coupled to them is removed.

    Returns:
        The pruning history of this call.
    """
    import torch_pruning as tp

    check_structured_support(model, prunable, global_scope)
    keep = set(prunable)
    per_layer = dict(ratio) if isinstance(ratio, Mapping) else {}
    ignored: list[nn.Module | nn.Parameter] = [
        module
        for name, module in model.named_modules()
        if isinstance(module, PRUNABLE_LAYERS) and name not in keep
    ]
    per_channel = per_channel_parameters(model)
    for name in protect:
        held = model.get_submodule(name)
        raw = [n for n, p in held.named_parameters() if p in per_channel]
        if raw:
            # torch-pruning would skip slicing them but still cut the channels they scale.
            raise ValueError(
                f"ignore=[{name!r}] names a module holding raw per-channel parameters "
                f"({', '.join(raw)}); torch-pruning keeps their width only if the conv/linear "
                "layers coupled to them keep theirs: ignore those layers instead"
            )
        ignored.append(held)
    attention = attention_modules(model)
    heads = {n: r for n, r in per_layer.items() if n in attention}
    with _tracing_mode(model):
        pruner = tp.pruner.MetaPruner(
            model,
            example_input,
            importance=group_importance(criterion),
            pruning_ratio=0.0 if per_layer else float(ratio),  # type: ignore[arg-type]
            pruning_ratio_dict={model.get_submodule(n): r for n, r in per_layer.items()} or None,
            global_pruning=global_scope,
            max_pruning_ratio=0.95,
            ignored_layers=ignored,
            unwrapped_parameters=list(per_channel_parameters(model).items()),
            round_to=round_to,
            # whole heads go from qkv (never single dims: the head size stays)
            num_heads={m.qkv: m.num_heads for m in attention.values()},
            prune_num_heads=bool(heads),
            prune_head_dims=False,
            head_pruning_ratio_dict={model.get_submodule(n): r for n, r in heads.items()} or None,
        )
        pruner.DG.verbose = False
        shared, frozen = shared_parameters(model), frozen_parameters(model)
        pruner.step()
        retie(shared)
        refreeze(frozen)
    sync_attention_heads(model)
    return [
        [str(n), bool(out), [int(i) for i in idxs]] for n, out, idxs in pruner.pruning_history()
    ]


SharedParameter = list[tuple[nn.Module, str]]


def shared_parameters(model: nn.Module) -> list[SharedParameter]:
    """Parameters held by several modules (tied embedding and output weights), as holders.

    Returns:
        One ``[(module, attribute), ...]`` list per parameter that more than one module holds.
    """
    holders: dict[int, SharedParameter] = {}
    for module in model.modules():
        for name, parameter in module._parameters.items():
            if parameter is not None:
                holders.setdefault(id(parameter), []).append((module, name))
    return [group for group in holders.values() if len(group) > 1]


@torch.no_grad()
def retie(shared: Sequence[SharedParameter]) -> None:
    """Make every holder of a shared parameter hold one parameter again after slicing.

    torch-pruning slices each holder's parameter into a new one (the same channels, since
    the holders are coupled): without this, tied weights silently become two tensors that
    train apart (and count twice).

    Raises:
        RuntimeError: If the holders were sliced differently (they cannot be tied again).
    """
    for (first, first_name), *others in shared:
        kept = first._parameters[first_name]
        for module, name in others:
            sliced = module._parameters[name]
            if sliced is kept or sliced is None or kept is None:
                continue
            if sliced.shape != kept.shape or not torch.equal(sliced, kept):
                raise RuntimeError(
                    f"a weight shared by {type(first).__name__}.{first_name} and "
                    f"{type(module).__name__}.{name} was pruned to shapes "
                    f"{tuple(kept.shape)} and {tuple(sliced.shape)}: they can no longer be "
                    "tied. Leave one of them out with ignore=[...]"
                )
            module._parameters[name] = kept


def frozen_parameters(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """Where the parameters the user froze (``requires_grad=False``) are held."""
    return [
        (module, name)
        for module in model.modules()
        for name, parameter in module._parameters.items()
        if parameter is not None and not parameter.requires_grad
    ]


def refreeze(frozen: Sequence[tuple[nn.Module, str]]) -> None:
    """Freeze again the parameters torch-pruning sliced into new (trainable) ones."""
    for module, name in frozen:
        parameter = module._parameters.get(name)
        if parameter is not None:
            parameter.requires_grad_(False)


def out_channels(module: nn.Module) -> int:
    """Output channels (conv) or features (linear) of a layer."""
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels  # type: ignore[return-value]


def ratios_to_widths(
    model: nn.Module, initial_widths: Mapping[str, int], sparsity: float
) -> dict[str, float]:
    """Per-layer ratios that bring each layer to ``(1 - sparsity)`` of its initial width.

    Computed from the initial widths rather than step by step, so rounding never accumulates
    over many pruning steps. Attention ``qkv`` layers count in whole heads.

    Args:
        model: Root module in its current (possibly already pruned) state.
        initial_widths: Output channels (features) of each prunable layer before any pruning,
            by layer name.
        sparsity: Target fraction of each initial width to remove, in [0, 1).

    Returns:
        Per-layer ratios in [0, 1) of the *current* channels to remove, for
        :func:`prune_channels`.

    Raises:
        AttributeError: If a name in ``initial_widths`` is not a submodule of ``model``.
    """
    attention = attention_modules(model)
    ratios = {}
    for name, initial in initial_widths.items():
        current = out_channels(model.get_submodule(name))
        if name in attention:
            ratios[name] = _head_ratio(attention[name], initial, current, sparsity)
            continue
        target = planned_width(initial, sparsity)
        # torch-pruning keeps int(current * (1 - ratio)) channels; +0.5 guards float round-off.
        ratios[name] = max(0.0, 1.0 - (target + 0.5) / current)
    return ratios


def planned_width(initial: int, sparsity: float) -> int:
    """The width a layer of ``initial`` channels is planned to keep at ``sparsity`` (>= 1)."""
    return max(1, round(initial * (1.0 - sparsity)))


def _head_ratio(attention: Any, initial: int, current: int, sparsity: float) -> float:
    """The head-pruning ratio that leaves ``round((1 - sparsity) * initial heads)`` heads."""
    per_head = 3 * attention.head_dim
    initial_heads, current_heads = initial // per_head, current // per_head
    remove = current_heads - max(1, round(initial_heads * (1.0 - sparsity)))
    # torch-pruning removes ceil(ratio * heads) heads; -0.5 guards float round-off.
    return (remove - 0.5) / current_heads if remove > 0 else 0.0


def replay_channel_pruning(
    model: nn.Module, example_input: ModelInput, history: PruningHistory
) -> None:
    """Reapply a recorded channel-pruning history to a freshly built model.

    Args:
        model: The unpruned model, changed in place.
        example_input: An input batch on the model's device, for tracing.
        history: ``[[layer_name, is_out_channels, [indices]], ...]`` as :func:`prune_channels`
            returns it, in order.

    Raises:
        ValueError: If the history names a layer the model lacks or an index out of range.
    """
    modules = dict(model.named_modules())
    for name, is_out, idxs in history:
        module = modules.get(name)
        if module is None:
            raise ValueError(f"layer {name!r} does not exist in this model")
        size = _channels(module, is_out)
        if size is not None and idxs and max(idxs) >= size:
            raise ValueError(
                f"layer {name!r} has {size} {'output' if is_out else 'input'} channels but the "
                f"history removes index {max(idxs)}"
            )
    import torch_pruning as tp

    with _tracing_mode(model):
        graph = tp.DependencyGraph().build_dependency(
            model,
            example_input,
            unwrapped_parameters=list(per_channel_parameters(model).items()),
            verbose=False,
        )
        shared, frozen = shared_parameters(model), frozen_parameters(model)
        graph.load_pruning_history([(n, out, list(idxs)) for n, out, idxs in history])
        retie(shared)
        refreeze(frozen)
    sync_attention_heads(model)


def _channels(module: nn.Module, out: bool) -> int | None:
    if not isinstance(module, PRUNABLE_LAYERS):
        return None
    if out:
        return out_channels(module)
    return module.in_features if isinstance(module, nn.Linear) else module.in_channels  # type: ignore[return-value]


def replay_channel_pruning_entry(model: nn.Module, entry: dict[str, Any]) -> None:
    """Replay a ``"channel_pruning"`` entry of the structural log (see ``checkpointing``).

    The entry gives the example input as ``input_shape`` (one float tensor) or as ``inputs``
    (``[{"shape": [...], "dtype": "torch.int64"}, ...]``, several inputs of any dtype); zeros of
    those shapes and dtypes trace the model (zero is a valid token id too).
    """
    device = next(model.parameters()).device
    example: ModelInput
    if "inputs" in entry:
        example = tuple(
            torch.zeros(spec["shape"], dtype=_dtype(spec["dtype"]), device=device)
            for spec in entry["inputs"]
        )
        if len(example) == 1:
            example = example[0]
    else:
        example = torch.zeros(entry["input_shape"], device=device)
    replay_channel_pruning(model, example, entry["history"])


def input_specs(example: ModelInput) -> list[dict[str, Any]]:
    """Shapes and dtypes of an example input, for the structural log (see above)."""
    tensors = example if isinstance(example, tuple) else (example,)
    return [{"shape": list(t.shape), "dtype": str(t.dtype)} for t in tensors]


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown input dtype {name!r} in the structural log")
    return dtype
