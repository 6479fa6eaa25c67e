"""Is every layer still self-consistent after channels were removed?

torch-pruning slices weights and updates the attributes it knows about; a layer it only partly
understands can be left with a weight that disagrees with its own attributes (a conv whose
channels no longer divide by its groups, an attention block whose embedding no longer divides
by its head count). Such a model may still run on one input shape and fail on the next, or
export wrongly; :func:`inconsistent_layers` finds them by comparing each layer's tensors with
the attributes its ``forward`` reads.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn


def inconsistent_layers(model: nn.Module) -> list[tuple[str, str]]:
    """Layers whose tensors disagree with their attributes, with what is wrong.

    Checked: conv and transposed conv (weight shape, bias, channels divisible by ``groups``),
    ``nn.Linear``, BatchNorm, LayerNorm, GroupNorm, ``nn.MultiheadAttention`` (embedding
    divisible by the head count, projection shapes) and timm-style attention (``qkv`` width
    equal to ``3 * num_heads * head_dim``).

    Args:
        model: The root module.

    Returns:
        ``[(layer name, what is wrong), ...]`` in module order; empty when all agree.
    """
    found = []
    for name, module in model.named_modules():
        for problem in _problems(module):
            found.append((name, problem))
    return found


def _problems(module: nn.Module) -> Iterator[str]:  # noqa: C901 - one branch per layer kind
    if isinstance(module, nn.modules.conv._ConvNd):
        yield from _conv_problems(module)
    elif isinstance(module, nn.Linear):
        if tuple(module.weight.shape) != (module.out_features, module.in_features):
            yield (
                f"has a weight of shape {tuple(module.weight.shape)} but declares "
                f"{module.in_features} -> {module.out_features} features"
            )
        if module.bias is not None and module.bias.numel() != module.out_features:
            yield f"has {module.bias.numel()} biases for {module.out_features} outputs"
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        sizes = {
            label: int(tensor.numel())
            for label, tensor in (
                ("weight", module.weight),
                ("bias", module.bias),
                ("running_mean", module.running_mean),
                ("running_var", module.running_var),
            )
            if tensor is not None
        }
        wrong = {label: n for label, n in sizes.items() if n != module.num_features}
        if wrong:
            yield f"declares {module.num_features} features but holds {wrong}"
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None and tuple(module.weight.shape) != module.normalized_shape:
            yield (
                f"normalizes shape {module.normalized_shape} with a weight of shape "
                f"{tuple(module.weight.shape)}"
            )
    elif isinstance(module, nn.GroupNorm):
        if module.num_channels % module.num_groups:
            yield f"has {module.num_channels} channels, not divisible by {module.num_groups} groups"
        if module.weight is not None and module.weight.numel() != module.num_channels:
            yield f"declares {module.num_channels} channels but has {module.weight.numel()} weights"
    elif isinstance(module, nn.MultiheadAttention):
        yield from _multihead_problems(module)
    qkv = getattr(module, "qkv", None)
    heads, head_dim = getattr(module, "num_heads", None), getattr(module, "head_dim", None)
    if isinstance(qkv, nn.Linear) and isinstance(heads, int) and isinstance(head_dim, int):
        if qkv.out_features != 3 * heads * head_dim:
            yield (
                f"has a qkv projection of {qkv.out_features} features for {heads} heads of "
                f"{head_dim} (needs {3 * heads * head_dim})"
            )
        proj = getattr(module, "proj", None)
        if isinstance(proj, nn.Linear) and proj.in_features != heads * head_dim:
            yield (
                f"projects {proj.in_features} features back, but its {heads} heads of "
                f"{head_dim} give {heads * head_dim}"
            )


def _conv_problems(conv: nn.modules.conv._ConvNd) -> Iterator[str]:
    groups = conv.groups
    for label, channels in (("input", conv.in_channels), ("output", conv.out_channels)):
        if channels % groups:
            yield f"has {channels} {label} channels, not divisible by its {groups} groups"
    # A conv's weight is (out, in / groups, *k); a transposed conv's is (in, out / groups, *k).
    first, second = (conv.in_channels, conv.out_channels)
    if not conv.transposed:
        first, second = second, first
    expected = (first, second // groups)
    if tuple(conv.weight.shape[:2]) != expected:
        yield (
            f"has a weight of shape {tuple(conv.weight.shape)} but declares "
            f"{conv.in_channels} -> {conv.out_channels} channels in {groups} groups "
            f"(expects {expected} first)"
        )
    if conv.bias is not None and conv.bias.numel() != conv.out_channels:
        yield f"has {conv.bias.numel()} biases for {conv.out_channels} output channels"


def _multihead_problems(attention: nn.MultiheadAttention) -> Iterator[str]:
    embed, heads = attention.embed_dim, attention.num_heads
    if embed % heads:
        yield f"has embed_dim {embed}, not divisible by its {heads} heads"
    elif attention.head_dim * heads != embed:
        yield f"has {heads} heads of {attention.head_dim} for embed_dim {embed}"
    if attention.in_proj_weight is not None and tuple(attention.in_proj_weight.shape) != (
        3 * embed,
        embed,
    ):
        yield (
            f"has an in_proj_weight of shape {tuple(attention.in_proj_weight.shape)} for "
            f"embed_dim {embed} (needs {(3 * embed, embed)})"
        )
    if attention.out_proj.in_features != embed or attention.out_proj.out_features != embed:
        yield (
            f"has an out_proj of {attention.out_proj.in_features} -> "
            f"{attention.out_proj.out_features} features for embed_dim {embed}"
        )
