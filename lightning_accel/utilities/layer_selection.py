"""Finding the layers a technique acts on: execution order, ignore patterns, defaults."""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

import torch
from torch import Tensor, nn

from lightning_accel.utilities.modules import ModelInput, eval_mode, run_model

WEIGHTED_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
WeightedLayer = nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear
TRANSPOSED_CONVS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
# Layers whose output channels structured pruning can remove (torch-pruning cuts them all).
PRUNABLE_LAYERS = WEIGHTED_LAYERS + TRANSPOSED_CONVS


@torch.no_grad()
def layers_in_call_order(
    model: nn.Module,
    example_input: ModelInput,
    kinds: tuple[type[nn.Module], ...] = WEIGHTED_LAYERS,
) -> list[str]:
    """Names of layers of the given ``kinds`` in the order a forward pass calls them.

    Runs one forward pass in eval mode on ``example_input`` (a tensor, or a tuple of tensors
    passed as positional inputs) and restores every submodule's own training mode.

    Args:
        model: The root module.
        example_input: One input batch.
        kinds: Layer classes to list; default conv/linear (:data:`PRUNABLE_LAYERS` adds the
            transposed convs).
    """
    order: list[str] = []
    handles = [
        module.register_forward_hook(lambda mod, args, out, name=name: order.append(name))
        for name, module in model.named_modules()
        if isinstance(module, kinds)
    ]
    try:
        with eval_mode(model):
            run_model(model, example_input)
    finally:
        for handle in handles:
            handle.remove()
    return list(dict.fromkeys(order))


def match_patterns(names: Sequence[str], patterns: Sequence[str], argument: str) -> set[str]:
    """Names matching any glob pattern; a pattern matching nothing is an error.

    Args:
        names: Candidate dotted module names, e.g. ``"model.layer1.0.conv1"``.
        patterns: Case-sensitive ``fnmatch`` globs (or exact names) over ``names``.
        argument: How the argument appears in the error message, e.g. ``"X(ignore=...)"``.

    Returns:
        The names matched by at least one pattern (empty if ``patterns`` is empty).

    Raises:
        ValueError: If a pattern matches no name; names the pattern and some valid layer names.
    """
    matched: set[str] = set()
    for pattern in patterns:
        hits = {name for name in names if fnmatchcase(name, pattern) or name == pattern}
        if not hits:
            sample = ", ".join(list(names)[:6])
            raise ValueError(
                f"{argument} pattern {pattern!r} matches no layer. Patterns are globs over module "
                f"names, e.g. 'model.fc' or 'model.layer4.*'. Layers here include: {sample}"
            )
        matched |= hits
    return matched


def select_layers(
    model: nn.Module,
    example_input: ModelInput,
    ignore: Sequence[str],
    keep_first_and_last: bool,
    technique: str,
    kinds: tuple[type[nn.Module], ...] = WEIGHTED_LAYERS,
    keep_last: bool = False,
) -> list[str]:
    """Layers of the given ``kinds`` a technique may change, in call order.

    Args:
        model: The root module; names are relative to it.
        example_input: One input batch for a forward pass (a tensor or a tuple of tensors).
        ignore: Glob patterns of layers to leave alone.
        keep_first_and_last: Leave the first layer called and the last (the classifier, or a
            segmentation head such as a ``ConvTranspose2d``) alone.
        technique: Name used in error messages, e.g. ``"GradualPruning"``.
        kinds: Layer classes to consider; default conv/linear, :data:`PRUNABLE_LAYERS` for
            structured pruning.
        keep_last: Leave the last layer called alone even with ``keep_first_and_last=False``
            (structured pruning: its width is the model's output width).

    Raises:
        ValueError: If a pattern matches nothing, no layer is left, or a selected layer's weight
            is already reparametrized (``torch.nn.utils.prune``, ``parametrize``).
    """
    order = layers_in_call_order(model, example_input, kinds)
    matched = ignored_modules(model, ignore, order, technique)
    skipped = {n for n in order if any(n == m or n.startswith(f"{m}.") for m in matched)}
    if keep_first_and_last and order:
        skipped |= {order[0], order[-1]}
    if keep_last and order:
        skipped.add(order[-1])
    selected = [name for name in order if name not in skipped]
    if not selected:
        raise ValueError(
            f"{technique} found no layer to compress: the model calls {len(order)} conv/linear "
            f"layer(s) {order[:4]} and all are kept (first and last layers stay dense by default; "
            "`ignore` removes more). Use a model with hidden conv/linear layers, or pass "
            "keep_first_and_last=False."
        )
    check_plain_weights(model, selected, technique)
    return selected


def ignored_modules(
    model: nn.Module, ignore: Sequence[str], layers: Sequence[str], technique: str
) -> set[str]:
    """Module names the ``ignore`` patterns match: layers, and any other module.

    Besides conv/linear layers, a pattern may name what structured pruning would otherwise
    narrow: an ``nn.MultiheadAttention`` or timm attention block, a norm, a module holding raw
    parameters, or a whole block (every layer inside it is then left alone too).

    Args:
        model: The root module.
        ignore: Glob patterns (or exact names) over module names.
        layers: The layer names the technique considers, listed first in error messages.
        technique: Name used in the error message, e.g. ``"GradualPruning"``.

    Raises:
        ValueError: If a pattern matches no module.
    """
    names = list(dict.fromkeys([*layers, *(n for n, _ in model.named_modules() if n)]))
    return match_patterns(names, ignore, f"{technique}(ignore=...)")


def protected_modules(model: nn.Module, ignore: Sequence[str], technique: str) -> list[str]:
    """The modules other than conv/linear layers that ``ignore`` names, whose width stays.

    An attention block, a norm or a whole block named in ``ignore``: structured pruning hands
    them to torch-pruning as ignored, so no channel coupled to them is removed.

    Args:
        model: The root module.
        ignore: Glob patterns (or exact names) over module names.
        technique: Name used in the error message, e.g. ``"LatencyBudgetPruning"``.

    Returns:
        Their names, sorted.

    Raises:
        ValueError: If a pattern matches no module.
    """
    return sorted(
        name
        for name in ignored_modules(model, ignore, [], technique)
        if not isinstance(model.get_submodule(name), PRUNABLE_LAYERS)
    )


def reparametrized_weight(module: nn.Module) -> str | None:
    """How a layer's ``weight`` is reparametrized, or ``None`` for a plain parameter."""
    from torch.nn.utils import parametrize

    if hasattr(module, "weight_orig") and hasattr(module, "weight_mask"):
        return "torch.nn.utils.prune (weight_orig * weight_mask)"
    if parametrize.is_parametrized(module, "weight"):
        return "torch.nn.utils.parametrize (module.parametrizations.weight)"
    plain = ("weight" in module._parameters) or ("weight" in module._buffers)
    if not plain and isinstance(getattr(module, "weight", None), Tensor):
        # Recomputed in a forward pre-hook from other parameters: torch.nn.utils.weight_norm
        # (weight_g, weight_v), spectral_norm (weight_orig); masking or slicing `weight` is
        # undone by the next forward, while the optimizer trains the parameters behind it.
        sources = [n for n in module._parameters if n.startswith("weight_")]
        hooks = [type(h).__name__ for h in module._forward_pre_hooks.values()]
        how = f"a forward pre-hook ({', '.join(hooks) or 'unknown'})"
        return f"{how} that recomputes it from {', '.join(sources) or 'other tensors'}"
    return None


def check_plain_weights(model: nn.Module, names: Sequence[str], technique: str) -> None:
    """Refuse layers whose weight another tool already reparametrizes, before any change.

    Ranking or swapping such a layer would act on the derived ``weight`` while the optimizer
    trains ``weight_orig``: the reported sparsity would not be the model's.

    Args:
        model: The root module.
        names: Dotted names of the layers the technique will act on.
        technique: Name used in the message, e.g. ``"GradualPruning"``.

    Raises:
        ValueError: Naming the layer, the reparametrization and both fixes.
    """
    for name in names:
        how = reparametrized_weight(model.get_submodule(name))
        if how is not None:
            raise ValueError(
                f"{technique} cannot act on layer {name!r}: its weight is already "
                f"reparametrized by {how}. Fold it into a plain weight before fit "
                f"({fold_hint(how)}), or leave the layer out with ignore=[{name!r}]."
            )


def fold_hint(how: str) -> str:
    """The call that folds the reparametrization ``how`` (:func:`reparametrized_weight`)."""
    if "torch.nn.utils.prune" in how:
        return "torch.nn.utils.prune.remove(module, 'weight'); the zeros stay"
    if "parametrize" in how:
        return (
            "torch.nn.utils.parametrize.remove_parametrizations(module, 'weight', "
            "leave_parametrized=True)"
        )
    if "WeightNorm" in how:
        return "torch.nn.utils.remove_weight_norm(module)"
    if "SpectralNorm" in how:
        return "torch.nn.utils.remove_spectral_norm(module)"
    return "remove the hook and register the weight as a plain nn.Parameter"
