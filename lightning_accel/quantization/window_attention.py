"""torchvision's Swin window attention with ``qkv`` and ``proj`` called as modules (QAT).

torchvision's ``ShiftedWindowAttention`` (Swin) and ``ShiftedWindowAttentionV2`` (Swin V2)
pass ``self.qkv.weight`` and ``self.proj.weight`` into ``shifted_window_attention``, a
function torch.fx keeps as one opaque call (``torch.fx.wrap``): QAT finds neither linear
called as a module, and ONNX Runtime runs both projections and both attention matmuls in float
(four float kernels per block). Within :func:`quantizable_window_attention` each such layer
computes the same function (torchvision's ``shifted_window_attention``, Liu et al., 2021, and
its V2 cosine attention, Liu et al., 2022) with the projections called as modules and the
attention as explicit matmuls; only the shape bookkeeping (padding to whole windows, the cyclic
shift, window partition and its mask) stays in small fx leaf functions::

    windows = partition_windows(x)                 # [B, H, W, C] -> [B * nW, Wh * Ww, C]
    q, k, v = qkv(windows), split into heads       # [B * nW, heads, Wh * Ww, C / heads]
    scores = (q / sqrt(C / heads)) @ k^T + relative position bias (+ shift mask)
             (V2: normalize(q) @ normalize(k)^T * exp(min(logit_scale, log 100)))
    out = reverse_windows(proj(softmax(scores) @ v))   # back to [B, H, W, C]

The layer keeps its parameters and names (its class is swapped for a subclass while the block
runs, and swapped back on exit), so the layers QAT plans are ``<attention>.qkv`` and
``<attention>.proj``. Layers with a nonzero dropout are left as they are (torchvision passes
``self.training`` into the opaque call, which tracing would freeze), and so are V2 layers whose
key bias is not zero: V2 has no key bias (torchvision keeps that third of ``qkv.bias`` at zero
and zeroes it again on every call), so the rewrite, which calls ``qkv`` as it is, starts
equal to the original only where it is zero (torchvision's initialization and checkpoints);
during QAT that third then trains with the rest of the bias.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn


@contextmanager
def quantizable_window_attention(model: nn.Module) -> Iterator[list[str]]:
    """Within the block, ``model``'s Swin window attention layers call their linears as modules.

    Yields the names of the rewritten layers. On exit (error or not) every layer has its own
    class back; parameters, buffers and names are never changed.
    """
    swapped: dict[str, tuple[nn.Module, type[nn.Module]]] = {}
    try:
        for name, module in model.named_modules():
            rewritten = _rewritten_class(module)
            if rewritten is not None:
                swapped[name] = (module, type(module))
                module.__class__ = rewritten  # type: ignore[assignment]
        yield list(swapped)
    finally:
        for module, cls in swapped.values():
            module.__class__ = cls


def window_attention_forward(self: Any, x: Tensor) -> Tensor:
    """``ShiftedWindowAttention(V2).forward`` with ``qkv`` and ``proj`` as module calls.

    Args:
        self: The window attention layer.
        x: ``[B, H, W, C]``.

    Returns:
        ``[B, H, W, C]``, what torchvision's ``shifted_window_attention`` returns.
    """
    position_bias = self.get_relative_position_bias()  # [1, heads, N, N]
    windows = partition_windows(x, self.window_size, self.shift_size)  # [B * nW, N, C]
    qkv = self.qkv(windows)
    cosine = hasattr(self, "logit_scale")  # Swin V2
    qkv = qkv.unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    if cosine:
        scores = torch.matmul(F.normalize(q, dim=-1), F.normalize(k, dim=-1).transpose(-2, -1))
        scores = scores * torch.clamp(self.logit_scale, max=math.log(100.0)).exp()
    else:
        head_dim = self.qkv.in_features // self.num_heads
        scores = torch.matmul(q * head_dim**-0.5, k.transpose(-2, -1))
    scores = shift_mask(scores + position_bias, x, self.window_size, self.shift_size)
    probs = torch.softmax(scores, -1)
    out = self.proj(torch.matmul(probs, v).transpose(1, 2).flatten(2))
    return reverse_windows(out, x, self.window_size, self.shift_size)


def _rewritten_class(module: nn.Module) -> type[nn.Module] | None:
    """The subclass :func:`quantizable_window_attention` swaps in for ``module``, if any."""
    try:
        from torchvision.models import swin_transformer as swin
    except ImportError:
        return None
    if type(module) not in (swin.ShiftedWindowAttention, swin.ShiftedWindowAttentionV2):
        return None
    if getattr(module, "attention_dropout", 0.0) or getattr(module, "dropout", 0.0):
        return None
    qkv = module.get_submodule("qkv")
    bias = qkv.bias if isinstance(qkv, nn.Linear) else None
    if type(module) is swin.ShiftedWindowAttentionV2 and bias is not None:
        third = bias.numel() // 3
        if bool(bias[third : 2 * third].any()):
            return None  # V2 zeroes its key bias on every call; the rewrite needs it zero
    if type(module) not in _SUBCLASSES:
        _SUBCLASSES[type(module)] = type(
            f"Quantizable{type(module).__name__}",
            (type(module),),
            {"forward": window_attention_forward, "__module__": __name__},
        )
    return _SUBCLASSES[type(module)]


_SUBCLASSES: dict[type[nn.Module], type[nn.Module]] = {}


# ------------------------------------------------------------ shape bookkeeping (fx leaves)
def _padded_layout(
    x: Tensor, window_size: list[int], shift_size: list[int]
) -> tuple[int, int, list[int]]:
    """Padded height and width of ``x`` ``[B, H, W, C]`` and the shift that applies there."""
    _, height, width, _ = x.shape
    padded_h = height + (window_size[0] - height % window_size[0]) % window_size[0]
    padded_w = width + (window_size[1] - width % window_size[1]) % window_size[1]
    # a window as large as the feature map needs no shift (torchvision's rule)
    shift = [
        0 if window_size[0] >= padded_h else shift_size[0],
        0 if window_size[1] >= padded_w else shift_size[1],
    ]
    return padded_h, padded_w, shift


@fx.wrap
def partition_windows(x: Tensor, window_size: list[int], shift_size: list[int]) -> Tensor:
    """``x`` padded to whole windows, cyclically shifted, as windows.

    Args:
        x: ``[B, H, W, C]``.
        window_size: ``[Wh, Ww]``.
        shift_size: The layer's cyclic shift ``[sh, sw]`` (none where a window covers the map).

    Returns:
        ``[B * nW, Wh * Ww, C]``, nW windows per image.
    """
    batch, height, width, channels = x.shape
    padded_h, padded_w, shift = _padded_layout(x, window_size, shift_size)
    x = F.pad(x, (0, 0, 0, padded_w - width, 0, padded_h - height))
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    rows, columns = padded_h // window_size[0], padded_w // window_size[1]
    x = x.view(batch, rows, window_size[0], columns, window_size[1], channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(
        batch * rows * columns, window_size[0] * window_size[1], channels
    )


@fx.wrap
def shift_mask(scores: Tensor, x: Tensor, window_size: list[int], shift_size: list[int]) -> Tensor:
    """``scores`` with shifted windows' cross-region pairs at -100 (torchvision's mask).

    Args:
        scores: ``[B * nW, heads, N, N]``, N = Wh * Ww.
        x: The layer's input ``[B, H, W, C]`` (its size fixes the padding and shift).
        window_size: ``[Wh, Ww]``.
        shift_size: The layer's cyclic shift ``[sh, sw]``.
    """
    padded_h, padded_w, shift = _padded_layout(x, window_size, shift_size)
    if sum(shift) == 0:
        return scores
    regions = scores.new_zeros((padded_h, padded_w))
    rows = ((0, -window_size[0]), (-window_size[0], -shift[0]), (-shift[0], None))
    columns = ((0, -window_size[1]), (-window_size[1], -shift[1]), (-shift[1], None))
    for index, (h, w) in enumerate((h, w) for h in rows for w in columns):
        regions[h[0] : h[1], w[0] : w[1]] = index
    windows = (padded_h // window_size[0]) * (padded_w // window_size[1])
    regions = regions.view(
        padded_h // window_size[0], window_size[0], padded_w // window_size[1], window_size[1]
    )
    regions = regions.permute(0, 2, 1, 3).reshape(windows, window_size[0] * window_size[1])
    pairs = regions.unsqueeze(1) - regions.unsqueeze(2)
    mask = pairs.masked_fill(pairs != 0, -100.0).masked_fill(pairs == 0, 0.0)
    _, heads, tokens, _ = scores.shape
    scores = scores.view(-1, windows, heads, tokens, tokens) + mask.unsqueeze(1).unsqueeze(0)
    return scores.view(-1, heads, tokens, tokens)


@fx.wrap
def reverse_windows(
    windows: Tensor, x: Tensor, window_size: list[int], shift_size: list[int]
) -> Tensor:
    """Windows back to ``x``'s layout, shift undone, padding cut.

    Args:
        windows: ``[B * nW, Wh * Ww, C]``.
        x: The layer's input ``[B, H, W, C]``.
        window_size: ``[Wh, Ww]``.
        shift_size: The layer's cyclic shift ``[sh, sw]``.

    Returns:
        ``[B, H, W, C]``.
    """
    batch, height, width, _ = x.shape
    padded_h, padded_w, shift = _padded_layout(x, window_size, shift_size)
    out = windows.view(
        batch,
        padded_h // window_size[0],
        padded_w // window_size[1],
        window_size[0],
        window_size[1],
        windows.shape[-1],
    )
    out = out.permute(0, 1, 3, 2, 4, 5).reshape(batch, padded_h, padded_w, windows.shape[-1])
    if sum(shift) > 0:
        out = torch.roll(out, shifts=(shift[0], shift[1]), dims=(1, 2))
    return out[:, :height, :width, :].contiguous()
