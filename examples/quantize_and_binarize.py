"""Int8 QAT and binarization of a small CNN on Fashion-MNIST: what each export runs on.

.venv/bin/python examples/quantize_and_binarize.py
"""

import lightning.pytorch as L

from lightning_accel import (
    Binarize,
    ClassificationModule,
    FashionMNISTDataModule,
    QuantizationAware,
)
from lightning_accel.backends.onnxruntime import compile_onnxruntime
from lightning_accel.binarization import save_packed
from lightning_accel.export.onnx import to_onnx


def fit(callback: L.Callback) -> ClassificationModule:
    L.seed_everything(0)
    model = ClassificationModule("small_cnn", lr=0.05, cosine_epochs=3)
    trainer = L.Trainer(
        max_epochs=3,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=FashionMNISTDataModule(train_size=3_000, val_size=1_000))
    print(f"{type(callback).__name__}: val top-1 {float(trainer.callback_metrics['val/acc']):.3f}")
    return model


if __name__ == "__main__":
    quantized = fit(QuantizationAware("onnxruntime", start_epoch=1, freeze_observers_epoch=2))
    onnx_path = to_onnx(quantized, quantized.example_input_array, "runs/example/qat.onnx")
    kernels = compile_onnxruntime(onnx_path, onnx_path.parent).info["integer_kernels"]
    print(f"int8 kernels: {kernels}")

    binary = fit(Binarize(ste="approx_sign", start_epoch=0, end_epoch=2))
    onnx_path = to_onnx(binary, binary.example_input_array, "runs/example/binary.onnx")
    kernels = compile_onnxruntime(onnx_path, onnx_path.parent).info["integer_kernels"]
    size = save_packed(binary.model, "runs/example/binary.packed")
    print(f"binarized layers on: {kernels}; packed {size.binary_ratio:.1f}x smaller than fp32")
