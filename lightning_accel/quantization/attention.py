"""Attention written as explicit matmuls, so QAT can quantize both operands of each (torch.fx).

``F.scaled_dot_product_attention`` exports to ONNX as ``MatMul(q, k^T)``, a scale, a softmax and
``MatMul(probs, v)``, with no quantizer in between: ONNX Runtime then runs both matmuls in
float (timm's ViT and DeiT: 24 float matmuls in 12 blocks). This module rewrites each such call
in a traced graph into the same math, step by step (PyTorch's own reference formula in the
``scaled_dot_product_attention`` documentation)::

    scores = (q * scale) @ k.transpose(-2, -1)      # scale = 1 / sqrt(head_dim) by default
    scores = scores masked by attn_mask / is_causal  # only when given
    probs = softmax(scores, -1), then dropout         # an nn.Dropout: off in eval and export
    out = probs @ v

after which the activation-activation matmuls are ordinary graph nodes that
:mod:`lightning_accel.quantization.prepare` quantizes on both inputs (``DequantizeLinear`` on
both operands is what ONNX Runtime fuses into ``MatMulIntegerToFloat`` / ``QLinearMatMul``).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

ATTENTION_DROPOUT_PREFIX = "attention_dropouts"
_SDPA_PARAMETERS = (
    "query",
    "key",
    "value",
    "attn_mask",
    "dropout_p",
    "is_causal",
    "scale",
    "enable_gqa",
)
_SDPA_DEFAULTS: dict[str, Any] = {
    "attn_mask": None,
    "dropout_p": 0.0,
    "is_causal": False,
    "scale": None,
    "enable_gqa": False,
}
MATMUL_FUNCTIONS = {operator.matmul, torch.matmul, torch.bmm}
MATMUL_METHODS = ("matmul", "bmm")


def scaled_query(query: Tensor, scale: float | None) -> Tensor:
    """``query`` times the softmax scale: ``scale``, or ``1 / sqrt(head_dim)`` (last axis)."""
    return query * (scale if scale is not None else query.shape[-1] ** -0.5)


def masked_scores(scores: Tensor, attn_mask: Tensor | None, is_causal: bool) -> Tensor:
    """Attention scores ``[..., L, S]`` with a causal and/or given mask applied.

    A boolean ``attn_mask`` keeps the positions where it is ``True`` (the others become
    ``-inf``); a float one is added, as in ``F.scaled_dot_product_attention``.

    Args:
        scores: ``q @ k^T`` (scaled), shape ``[..., L, S]``.
        attn_mask: ``None``, a boolean keep-mask or a float additive mask broadcastable to
            ``scores``.
        is_causal: Mask out every position ``s > l`` (upper triangle).
    """
    if is_causal:
        rows, columns = scores.shape[-2:]
        keep = torch.ones(rows, columns, dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    return scores


def decompose_attention(graph_module: fx.GraphModule) -> int:
    """Rewrite every ``F.scaled_dot_product_attention`` call in ``graph_module`` (in place).

    A call stays as it is where the explicit form would not be the same computation: a
    dropout probability computed at run time, or ``enable_gqa=True``. A constant nonzero
    dropout becomes an ``nn.Dropout`` submodule, so it follows the module's train/eval mode
    (timm passes ``attn_drop.p if self.training else 0``, which tracing fixes to one value).

    Returns:
        How many calls were rewritten. The graph is not recompiled; the caller does that.
    """
    graph = graph_module.graph
    rewritten = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not F.scaled_dot_product_attention:
            continue
        positional = dict(zip(_SDPA_PARAMETERS, node.args, strict=False))
        arguments = {**_SDPA_DEFAULTS, **positional, **node.kwargs}
        dropout = arguments["dropout_p"]
        if not isinstance(dropout, (int, float)) or arguments["enable_gqa"] is not False:
            continue
        with graph.inserting_before(node):
            query = graph.call_function(scaled_query, (arguments["query"], arguments["scale"]))
            key_t = graph.call_method("transpose", (arguments["key"], -2, -1))
            scores = graph.call_function(torch.matmul, (query, key_t))
            if arguments["attn_mask"] is not None or arguments["is_causal"] is not False:
                scores = graph.call_function(
                    masked_scores, (scores, arguments["attn_mask"], arguments["is_causal"])
                )
            probs = graph.call_function(torch.softmax, (scores, -1))
            if dropout:
                name = f"{ATTENTION_DROPOUT_PREFIX}.{node.name}"
                graph_module.add_submodule(name, nn.Dropout(float(dropout)))
                probs = graph.call_module(name, (probs,))
            out = graph.call_function(torch.matmul, (probs, arguments["value"]))
        node.replace_all_uses_with(out)
        graph.erase_node(node)
        rewritten += 1
    return rewritten


def is_activation_matmul(node: fx.Node) -> bool:
    """Whether ``node`` multiplies two computed tensors (not a parameter): ``a @ b``, bmm."""
    is_matmul = (node.op == "call_function" and node.target in MATMUL_FUNCTIONS) or (
        node.op == "call_method" and node.target in MATMUL_METHODS
    )
    return (
        is_matmul
        and len(node.args) >= 2
        and all(isinstance(a, fx.Node) and a.op != "get_attr" for a in node.args[:2])
    )
