"""``nn.MultiheadAttention`` quantized: its projections and matmuls on integer kernels (#12).

The peer suite left torchvision's ViTs (and any user model with ``nn.MultiheadAttention``)
with six float kernels per block: the layer is one fx leaf whose projections are not called as
modules. QAT now rewrites it with four ``nn.Linear`` projections and explicit matmuls; these
tests check the rewrite computes what PyTorch's layer computes, in every input form, and that
QAT then runs the whole attention on ONNX Runtime's integer kernels.
"""

from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_accel import QuantizationAware
from lightning_accel.backends.onnxruntime import u8s8_saturates
from lightning_accel.quantization import QuantizationSpec, quantize_submodules
from lightning_accel.quantization.multihead import (
    DecomposedMultiheadAttention,
    decomposed_multihead_attention,
)
from lightning_accel.quantization.prepare import replay_quantization
from tests.conftest import Holder
from tests.quantization.test_integer_kernels import (
    CONV_MATMUL_INTEGER,
    FLOAT_COMPUTE,
    count,
    optimized_graph,
    quantized,
)

N, L, S, E, HEADS = 3, 5, 7, 16, 4


def masks() -> list[dict[str, torch.Tensor | bool]]:
    """The mask forms ``nn.MultiheadAttention`` takes (no row fully masked)."""
    keep_out = torch.rand(L, S) > 0.6
    keep_out[:, 0] = False
    padding = torch.rand(N, S) > 0.6
    padding[:, 1] = False
    return [
        {},
        {"attn_mask": keep_out},
        {"key_padding_mask": padding},
        {"attn_mask": torch.randn(N * HEADS, L, S), "average_attn_weights": False},
        {"attn_mask": keep_out, "key_padding_mask": padding, "need_weights": False},
        {"key_padding_mask": padding.float() * -1e4},
    ]


@pytest.mark.parametrize("batch_first", [True, False], ids=["batch-first", "sequence-first"])
@pytest.mark.parametrize(
    "options",
    [{}, {"kdim": 6, "vdim": 5}, {"bias": False}],
    ids=["packed", "kdim-vdim", "no-bias"],
)
def test_decomposed_attention_computes_what_pytorch_computes(
    batch_first: bool, options: dict[str, int | bool]
) -> None:
    attention = nn.MultiheadAttention(E, HEADS, dropout=0.1, batch_first=batch_first, **options)
    attention.eval()
    rewritten = DecomposedMultiheadAttention(attention).eval()
    kdim, vdim = int(options.get("kdim", E)), int(options.get("vdim", E))

    def layout(length: int, width: int) -> torch.Tensor:
        return torch.randn(N, length, width) if batch_first else torch.randn(length, N, width)

    query, key, value = layout(L, E), layout(S, kdim), layout(S, vdim)
    for arguments in masks():
        want, want_weights = attention(query, key, value, **arguments)
        got, got_weights = rewritten(query, key, value, **arguments)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        if want_weights is None:
            assert got_weights is None
        else:
            assert got_weights is not None
            torch.testing.assert_close(got_weights, want_weights, rtol=1e-5, atol=1e-5)
    # unbatched [L, E]
    unbatched = (
        (query[0], key[0], value[0]) if batch_first else (query[:, 0], key[:, 0], value[:, 0])
    )
    for want, got in zip(attention(*unbatched), rewritten(*unbatched), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_decomposed_attention_dropout_follows_train_mode() -> None:
    attention = nn.MultiheadAttention(E, HEADS, dropout=0.5, batch_first=True).eval()
    rewritten = DecomposedMultiheadAttention(attention)
    x = torch.randn(N, L, E)
    torch.testing.assert_close(rewritten.eval()(x, x, x)[0], attention(x, x, x)[0])
    assert not torch.allclose(rewritten.train()(x, x, x)[0], attention(x, x, x)[0])


def test_bias_kv_attention_is_left_alone() -> None:
    attention = nn.MultiheadAttention(E, HEADS, add_bias_kv=True)
    with pytest.raises(ValueError, match="add_bias_kv or add_zero_attn"):
        DecomposedMultiheadAttention(attention)
    holder = Holder(nn.Sequential(attention))
    with decomposed_multihead_attention(holder) as names:
        assert names == [] and holder.model[0] is attention


class TokenAttention(nn.Module):
    """``Linear(16 -> 32) -> nn.MultiheadAttention(32, 4) -> mean -> Linear``: issue #12 case 2."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(16, 32)
        self.attention = nn.MultiheadAttention(32, 4, batch_first=True)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h, _ = self.attention(h, h, h)  # need_weights=True, the default
        return self.head(h.mean(1))


def test_planning_names_the_projections_and_leaves_the_model_as_it_was() -> None:
    holder = Holder(TokenAttention())
    before = {k: v.clone() for k, v in holder.state_dict().items()}
    original = holder.model.attention
    planned = QuantizationAware("onnxruntime").planned_layers(holder, torch.randn(2, 6, 16))
    projections = [f"model.attention.{p}_proj" for p in ("q", "k", "v", "out")]
    assert planned == ["model.embed", *projections, "model.head"]
    assert holder.model.attention is original  # restored, not a copy
    assert holder.state_dict().keys() == before.keys()
    assert all(torch.equal(holder.state_dict()[k], v) for k, v in before.items())


def test_failed_preparation_restores_the_attention() -> None:
    holder = Holder(TokenAttention())
    original = holder.model.attention
    spec = QuantizationSpec("onnxruntime", {"model.attention.q_proj": 8, "model.missing": 8})
    with pytest.raises(ValueError, match="not called as modules"):
        quantize_submodules(holder, spec)
    assert holder.model.attention is original


def quantized_tokens(model: nn.Module, x: torch.Tensor) -> Holder:
    """``model`` with every layer QuantizationAware plans quantized, observed on ``x``."""
    return quantized(model, x, QuantizationAware("onnxruntime").planned_layers(Holder(model), x))


def test_user_attention_runs_on_integer_kernels_and_replays_from_a_checkpoint(
    tmp_path: Path,
) -> None:
    x = torch.randn(4, 6, 16)
    model = quantized_tokens(TokenAttention(), x)
    graph = optimized_graph(model, x, tmp_path)  # also: ONNX Runtime agrees with PyTorch
    # embed, q, k, v, out, head and the two attention matmuls
    assert count(graph, CONV_MATMUL_INTEGER) == 8
    assert count(graph, FLOAT_COMPUTE) == 0, [n.op_type for n in graph.node]
    # a checkpoint's structural log replays the same structure on a fresh model
    fresh = Holder(TokenAttention())
    spec = {name: 8 for name in QuantizationAware("onnxruntime").planned_layers(fresh, x)}
    replayed = QuantizationSpec("onnxruntime", spec, reduce_range=u8s8_saturates())
    replay_quantization(fresh, {"spec": replayed.to_dict()})
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), model(x))


def test_torchvision_vit_attention_runs_on_integer_kernels(tmp_path: Path) -> None:
    vision_transformer = pytest.importorskip("torchvision.models.vision_transformer")
    model = vision_transformer.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=3,
        hidden_dim=48,
        mlp_dim=96,
        num_classes=10,
    )
    x = torch.randn(4, 3, 32, 32)
    graph = optimized_graph(quantized_tokens(model, x), x, tmp_path)
    # patch conv, 4 projections + 2 MLP linears + 2 matmuls per block, head
    assert count(graph, CONV_MATMUL_INTEGER) == 1 + 2 * (4 + 2 + 2) + 1
    assert count(graph, FLOAT_COMPUTE) == 0, [n.op_type for n in graph.node]
