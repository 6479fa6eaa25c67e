"""``nn.MultiheadAttention`` rewritten with its projections as ``nn.Linear`` modules (QAT).

``nn.MultiheadAttention`` computes its q/k/v projections from one packed ``in_proj_weight``
inside ``F.multi_head_attention_forward``, and calls ``out_proj`` by its weight, not as a
module: torch.fx traces the whole attention as one leaf, QAT finds no layer to quantize in it,
and ONNX Runtime runs its four projections and two matmuls in float (torchvision's ViTs: six
float kernels per encoder block). :class:`DecomposedMultiheadAttention` computes the same
function from four ``nn.Linear`` modules (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``,
the packed weight split as PyTorch splits it) and the attention as explicit matmuls, PyTorch's
reference formula (``F.multi_head_attention_forward``)::

    q, k, v = q_proj(query), k_proj(key), v_proj(value)      # [N, L|S, E] -> [N, H, L|S, E/H]
    scores = (q / sqrt(E/H)) @ k^T, then attn_mask and key_padding_mask   # [N, H, L, S]
    probs = dropout(softmax(scores, -1))
    out = out_proj(merge_heads(probs @ v))                    # [N, L, E]

so :mod:`~lightning_accel.quantization.prepare` quantizes the four linears and both operands
of the two matmuls, as for timm's attention. Same signature and outputs as
``nn.MultiheadAttention.forward``: batched (``batch_first`` either way) and unbatched inputs,
boolean (``True`` = masked out) or float (added) ``attn_mask`` of shape ``[L, S]`` or
``[N * H, L, S]`` and ``key_padding_mask`` ``[N, S]``, attention weights averaged over heads or
not. Layers with ``add_bias_kv`` or ``add_zero_attn`` are left as they are (float).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, fx, nn

from lightning_accel.utilities.modules import set_submodule


class DecomposedMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` as four ``nn.Linear`` projections and explicit matmuls.

    Args:
        attention: The layer to rewrite. Its weights are copied (the packed ``in_proj_weight``
            split into q, k and v); ``attention`` itself is not changed.

    Raises:
        ValueError: If ``attention`` uses ``add_bias_kv`` or ``add_zero_attn`` (not rewritten).
    """

    def __init__(self, attention: nn.MultiheadAttention) -> None:
        super().__init__()
        if not is_decomposable(attention):
            raise ValueError(
                "nn.MultiheadAttention with add_bias_kv or add_zero_attn is not rewritten; it "
                "stays one float layer."
            )
        if attention._qkv_same_embed_dim:
            weights = attention.in_proj_weight.chunk(3)
        else:
            weights = (
                attention.q_proj_weight,
                attention.k_proj_weight,
                attention.v_proj_weight,
            )
        bias = attention.in_proj_bias
        biases = bias.chunk(3) if bias is not None else (None, None, None)
        self.q_proj, self.k_proj, self.v_proj = (
            _linear(w, b) for w, b in zip(weights, biases, strict=True)
        )
        out = attention.out_proj
        self.out_proj = _linear(out.weight, out.bias)
        self.num_heads = attention.num_heads
        self.batch_first = attention.batch_first
        head_dim = weights[0].shape[0] // self.num_heads
        self.scale = head_dim**-0.5
        self.attention_dropout = nn.Dropout(attention.dropout)
        self.train(attention.training)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """As ``nn.MultiheadAttention.forward``: ``(output, weights or None)``.

        Args:
            query: ``[N, L, E]`` (``batch_first``), ``[L, N, E]``, or unbatched ``[L, E]``.
            key: As ``query``, with S positions and ``kdim`` features.
            value: As ``key``, with ``vdim`` features.
            key_padding_mask: ``[N, S]``; boolean ``True`` (or float ``-inf``) ignores a key.
            need_weights: Also return the attention weights.
            attn_mask: ``[L, S]`` or ``[N * heads, L, S]``; boolean ``True`` masks a pair out,
                float is added to the scores.
            average_attn_weights: Weights averaged over heads ``[N, L, S]``, else per head
                ``[N, heads, L, S]``.
            is_causal: A hint there that ``attn_mask`` is the causal mask; the mask given is
                applied either way.

        Returns:
            The output (``query``'s layout, ``embed_dim`` features) and the weights or ``None``.
        """
        q = split_heads(self.q_proj(query), self.num_heads, self.batch_first)
        k = split_heads(self.k_proj(key), self.num_heads, self.batch_first)
        v = split_heads(self.v_proj(value), self.num_heads, self.batch_first)
        scores = torch.matmul(q * self.scale, k.transpose(-2, -1))
        if attn_mask is not None or key_padding_mask is not None:
            scores = apply_masks(scores, attn_mask, key_padding_mask)
        probs = self.attention_dropout(torch.softmax(scores, -1))
        out = self.out_proj(merge_heads(torch.matmul(probs, v), query, self.batch_first))
        if not need_weights:
            return out, None
        weights = probs.mean(1) if average_attn_weights else probs
        return out, head_weights(weights, query)


def is_decomposable(attention: nn.MultiheadAttention) -> bool:
    """Whether :class:`DecomposedMultiheadAttention` computes what ``attention`` computes."""
    return attention.bias_k is None and attention.bias_v is None and not attention.add_zero_attn


@contextmanager
def decomposed_multihead_attention(model: nn.Module) -> Iterator[list[str]]:
    """Within the block, every decomposable ``nn.MultiheadAttention`` of ``model`` is rewritten.

    Yields the names of the rewritten layers; on exit (error or not) the original layers are
    back, exactly as they were (the rewrite copies, it never changes them).
    """
    originals = decompose_multihead_attention(model)
    try:
        yield list(originals)
    finally:
        restore_modules(model, originals)


def decompose_multihead_attention(model: nn.Module) -> dict[str, nn.MultiheadAttention]:
    """Replace every decomposable ``nn.MultiheadAttention`` in ``model`` (in place).

    Returns:
        The replaced layers by name, for :func:`restore_modules`.
    """
    originals = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.MultiheadAttention) and is_decomposable(module)
    }
    for name, attention in originals.items():
        set_submodule(model, name, DecomposedMultiheadAttention(attention))
    return originals


def restore_modules(model: nn.Module, originals: dict[str, nn.MultiheadAttention]) -> None:
    """Put the layers :func:`decompose_multihead_attention` replaced back in place."""
    for name, attention in originals.items():
        set_submodule(model, name, attention)


# ------------------------------------------------------------------ layout (fx leaf functions)
@fx.wrap
def split_heads(x: Tensor, heads: int, batch_first: bool) -> Tensor:
    """``x`` as ``[N, heads, L, E / heads]``.

    Args:
        x: ``[N, L, E]`` if ``batch_first``, else ``[L, N, E]``; or unbatched ``[L, E]``.
        heads: Number of heads (divides E).
        batch_first: The layout of a batched ``x``.
    """
    if x.dim() == 2:
        x = x.unsqueeze(0)
    elif not batch_first:
        x = x.transpose(0, 1)
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


@fx.wrap
def merge_heads(x: Tensor, query: Tensor, batch_first: bool) -> Tensor:
    """Heads merged back into ``query``'s layout.

    Args:
        x: ``[N, H, L, D]``.
        query: The attention's query (its rank and ``batch_first`` fix the layout).
        batch_first: The layout of a batched ``query``.

    Returns:
        ``[N, L, H * D]`` (``batch_first``), ``[L, N, H * D]``, or ``[L, H * D]`` unbatched.
    """
    x = x.transpose(1, 2).flatten(2)
    if query.dim() == 2:
        return x.squeeze(0)
    return x if batch_first else x.transpose(0, 1)


@fx.wrap
def head_weights(weights: Tensor, query: Tensor) -> Tensor:
    """Attention weights without the batch axis for an unbatched ``query``."""
    return weights.squeeze(0) if query.dim() == 2 else weights


@fx.wrap
def apply_masks(
    scores: Tensor, attn_mask: Tensor | None, key_padding_mask: Tensor | None
) -> Tensor:
    """``scores`` with ``nn.MultiheadAttention``'s masks applied.

    A boolean mask marks the positions *not* to attend to (``True`` becomes ``-inf``); a float
    mask is added.

    Args:
        scores: ``[N, H, L, S]``.
        attn_mask: ``[L, S]`` or ``[N * H, L, S]``, or ``None``.
        key_padding_mask: ``[N, S]`` (``[S]`` unbatched), or ``None``.
    """
    batch, heads, rows, columns = scores.shape
    if attn_mask is not None:
        if attn_mask.dim() == 3:
            attn_mask = attn_mask.reshape(batch, heads, rows, columns)
        scores = _masked(scores, attn_mask)
    if key_padding_mask is not None:
        scores = _masked(scores, key_padding_mask.reshape(batch, 1, 1, columns))
    return scores


def _masked(scores: Tensor, mask: Tensor) -> Tensor:
    if mask.dtype == torch.bool:
        return scores.masked_fill(mask, float("-inf"))
    return scores + mask


def _linear(weight: Tensor, bias: Tensor | None) -> nn.Linear:
    """A new ``nn.Linear`` holding copies of ``weight`` and ``bias`` (no autograd link)."""
    layer = nn.Linear(
        weight.shape[1],
        weight.shape[0],
        bias=bias is not None,
        device=weight.device,
        dtype=weight.dtype,
    )
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer
