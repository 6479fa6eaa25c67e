"""The fake-quant model computes what ONNX Runtime's integer kernels compute: int32 bias grid (#14).

Export writes each ONNX Runtime layer's bias as int32 at scale ``input_scale x weight_scale``
(``QLinearConv`` adds it to the int32 accumulator). A fake-quant model that kept a float bias
differed from its exported graph by up to half a bias step per output channel, most in depthwise
convs whose BatchNorm factor ``gamma / sigma`` is large (5 to 32 in the benchmark's MobileNetV2):
enough to flip requantization roundings, which a deep depthwise network amplifies (PyTorch vs
ONNX Runtime top-1 agreement 96.6% on a pruned QAT MobileNetV2 before, 99.7% after). A tiny
MobileNetV2-like block (stem, depthwise conv + BN + ReLU6, projection conv + BN, linear) on the
sklearn digits, after one QAT step, must agree with the exported graph to float rounding.
"""

from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

from lightning_accel.backends.onnxruntime import compile_onnxruntime, u8s8_saturates
from lightning_accel.export.onnx import to_onnx
from lightning_accel.quantization import QuantizationSpec, quantize_submodules
from lightning_accel.quantization.convert import convert_to_qdq
from lightning_accel.utilities.copying import detached_copy
from tests.conftest import Holder


def inverted_residual_block() -> nn.Sequential:
    """Stem conv, depthwise 3x3 + BN + ReLU6, projection 1x1 + BN, linear head (8x8 input)."""
    block = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU6(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU6(),
        nn.Conv2d(16, 8, 1, bias=False),
        nn.BatchNorm2d(8),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 10),
    )
    with torch.no_grad():  # depthwise BatchNorm factors as large as MobileNetV2's (5 to 32)
        depthwise_bn = block[4]
        depthwise_bn.weight.copy_(torch.linspace(5.0, 30.0, 16))
        depthwise_bn.bias.copy_(torch.linspace(-3.0, 3.0, 16))
    return block


def one_qat_step() -> tuple[Holder, torch.Tensor]:
    """The block quantized for ONNX Runtime after one SGD step on digits; eval mode; test images."""
    images, labels = load_digits(return_X_y=True)
    x = torch.tensor(images, dtype=torch.float32).reshape(-1, 1, 8, 8) / 8.0 - 1.0
    y = torch.tensor(labels)
    holder = Holder(inverted_residual_block())
    names = [n for n, m in holder.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    # reduce_range as QuantizationAware sets it: ONNX Runtime's u8s8 kernels saturate on CPUs
    # without VNNI (0.19 of the range off on an AVX2-only machine with full-range weights).
    spec = QuantizationSpec("onnxruntime", dict.fromkeys(names, 8), reduce_range=u8s8_saturates())
    quantize_submodules(holder, spec)
    holder.train()
    optimizer = torch.optim.SGD(holder.parameters(), lr=0.05)
    loss = nn.functional.cross_entropy(holder(x[:256]), y[:256])
    loss.backward()
    optimizer.step()
    return holder.eval(), x[1000:1256]


def test_fake_quant_eval_is_the_exported_qdq_graph() -> None:
    model, x = one_qat_step()
    with torch.no_grad():
        fake = model(x)
        qdq = convert_to_qdq(detached_copy(model).eval())(x)
    # Same float computation up to summation order: far below one activation step.
    error = float((fake - qdq).abs().max() / (fake.max() - fake.min()))
    assert error <= 1e-5, (
        f"PyTorch differs from its exported Q/DQ graph by {error:.1e} of the range"
    )


def test_onnxruntime_integer_kernels_match_pytorch(tmp_path: Path) -> None:
    model, x = one_qat_step()
    with torch.no_grad():
        reference = model(x).numpy()
    path = to_onnx(model, x[:1], tmp_path / "block.onnx")
    output = compile_onnxruntime(path, tmp_path / "ort", threads=1).run(x.numpy())
    error = np.abs(output - reference).max() / (reference.max() - reference.min())
    assert error <= 1e-3, f"ONNX Runtime logits differ from PyTorch's by {error:.1e} of the range"
    assert (output.argmax(1) == reference.argmax(1)).all()
