"""Prune ResNet-18 to half its channels while fine-tuning on Fashion-MNIST, then measure it.

.venv/bin/python examples/prune_resnet18_fashion_mnist.py
"""

import lightning.pytorch as L

from lightning_accel import ClassificationModule, FashionMNISTDataModule, GradualPruning
from lightning_accel.backends.onnxruntime import latency
from lightning_accel.export.onnx import to_onnx

if __name__ == "__main__":
    L.seed_everything(0)
    data = FashionMNISTDataModule(train_size=5_000, val_size=1_000)
    model = ClassificationModule("resnet18", lr=0.05, cosine_epochs=4)
    dense_path = to_onnx(model.model, model.example_input_array, "runs/example/dense.onnx")

    pruning = GradualPruning(0.5, mode="structured", schedule="cubic", start_epoch=1, end_epoch=3)
    trainer = L.Trainer(max_epochs=4, callbacks=[pruning], accelerator="cpu")
    trainer.fit(model, datamodule=data)
    trainer.test(model, datamodule=data)

    pruned_path = to_onnx(model.model, model.example_input_array, "runs/example/pruned.onnx")
    for batch in (1, 64):
        dense, pruned = latency(dense_path, batch), latency(pruned_path, batch)
        print(
            f"batch {batch}: dense {dense.median_ms:.2f} ms, pruned {pruned.median_ms:.2f} ms, "
            f"{dense.median_ms / pruned.median_ms:.2f}x faster"
        )
