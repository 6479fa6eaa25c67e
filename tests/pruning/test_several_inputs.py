"""Models with several inputs and int64 inputs (issue #12): pruning's graph, replay and bench.

An image plus int64 token ids (the digits' first rows as ids 0..16), through structured
``GradualPruning`` with real batches ``((image, tokens), label)``, then ONNX and
``lightning-accel bench`` (its ``bench_onnx``) on the exported file.
"""

from __future__ import annotations

import contextlib
import copy

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightning_accel import GradualPruning
from lightning_accel.checkpointing.structural_log import structural_changes
from lightning_accel.export.bench import bench_onnx, random_onnx_input
from lightning_accel.pruning.channels import replay_channel_pruning_entry
from tests.conftest import quiet_trainer, refused_before_training


class _ImageAndTokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.embed = nn.Embedding(17, 16)
        self.tokens = nn.Sequential(nn.Linear(16, 32), nn.ReLU())
        self.fuse = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, image: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        text = self.tokens(self.embed(tokens).mean(1))
        return self.fuse(torch.cat([self.image(image), text], dim=1))


class _Module(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.model = _ImageAndTokens()

    def forward(self, image: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(image, tokens)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:  # type: ignore[no-untyped-def]
        (image, tokens), label = batch
        return nn.functional.cross_entropy(self(image, tokens), label)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


class _Pairs(Dataset):
    """Digits as ``((image, token ids), label)``: the ids are the first row's pixel values."""

    def __init__(self, digits) -> None:  # type: ignore[no-untyped-def]
        from sklearn.datasets import load_digits

        data = load_digits()
        self.images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16
        self.tokens = torch.tensor(data.images[:, 0, :], dtype=torch.int64)  # 0..16
        self.labels = torch.tensor(data.target)

    def __len__(self) -> int:
        return 256

    def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
        return (self.images[i], self.tokens[i]), self.labels[i]


@pytest.fixture
def loader() -> DataLoader:
    return DataLoader(_Pairs(None), batch_size=64)


def test_two_inputs_with_int64_ids_prune_replay_export_and_bench(loader, tmp_path) -> None:
    module = _Module()
    fresh = copy.deepcopy(module)
    # The token branch is called first; keep_first_and_last=False lets it shrink too (with it
    # kept, the concatenation couples the image branch to it: see test_user_models' gate).
    pruning = GradualPruning(0.5, end_epoch=1, keep_first_and_last=False)
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[pruning])
    trainer.fit(module, train_dataloaders=loader)
    net = module.model
    assert net.image[2].out_channels == 16 and net.tokens[0].out_features == 16
    assert net.fuse[0].in_features == 32 and net.fuse[0].out_features == 16
    assert net.fuse[2].out_features == 10  # the output width never changes
    assert pruning.measured_sparsity(module) == pytest.approx(0.5, abs=0.02)

    # The structural log records both inputs with their dtypes; replay rebuilds the shapes.
    entry = next(e for e in structural_changes(module) if e["kind"] == "channel_pruning")
    assert entry["inputs"][1] == {"shape": [1, 8], "dtype": "torch.int64"}
    replay_channel_pruning_entry(fresh, entry)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {
        k: v.shape for k, v in module.state_dict().items()
    }

    image, tokens = torch.randn(2, 1, 8, 8), torch.randint(0, 17, (2, 8))
    path = tmp_path / "two_inputs.onnx"
    torch.onnx.export(
        net.eval(),
        (image, tokens),
        path,
        dynamo=True,
        dynamic_shapes=({0: "batch"}, {0: "batch"}),
        external_data=False,  # fmt: skip
    )
    feeds = random_onnx_input(path, 3)
    assert isinstance(feeds, dict) and len(feeds) == 2
    ids = next(x for x in feeds.values() if x.dtype == np.int64)
    assert ids.shape == (3, 8) and ids.min() >= 0 and ids.max() <= 1  # small, non-negative

    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    got = session.run(None, {names[0]: image.numpy(), names[1]: tokens.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, net(image, tokens).numpy(), rtol=1e-4, atol=1e-5)

    for baseline in (None, path):  # without and with a baseline (alternating rounds)
        rows = bench_onnx(path, baseline, "onnxruntime", tmp_path / "bench", (1, 4), 1, runs=3)
        assert [r["batch"] for r in rows] == [1, 4] and all(r["model_ms"] > 0 for r in rows)


class _TokenClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(1000, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(tokens).mean(1))


def test_bench_times_an_onnx_model_with_one_int64_input(tmp_path) -> None:
    path = tmp_path / "tokens.onnx"
    torch.onnx.export(
        _TokenClassifier().eval(),
        (torch.randint(0, 1000, (2, 12)),),
        path,
        dynamo=True,
        dynamic_shapes=({0: "batch"},),
        external_data=False,  # fmt: skip
    )
    ids = random_onnx_input(path, 5)
    assert isinstance(ids, np.ndarray) and ids.dtype == np.int64 and ids.shape == (5, 12)
    rows = bench_onnx(path, path, "onnxruntime", tmp_path / "bench", (2,), 1, runs=3)
    assert rows[0]["model_ms"] > 0 and rows[0]["baseline_ms"] > 0


class _Validated(_Module):
    def validation_step(self, batch, batch_idx: int) -> None:  # type: ignore[no-untyped-def]
        (image, tokens), label = batch
        self.log("val/acc", (self(image, tokens).argmax(1) == label).float().mean())


def test_qat_trains_exports_and_verifies_two_inputs_on_integer_kernels(loader, tmp_path) -> None:
    """Image + int64 ids through QAT: fx traces both placeholders; one ONNX input per tensor,
    verified on real batches; every conv/linear on ONNX Runtime integer kernels (5 of 5: the
    token branch's linear, followed by a ReLU, has its output quantized after the ReLU)."""
    import onnx

    from lightning_accel import ExportOnFitEnd, QuantizationAware
    from lightning_accel.export.compare import integer_ops
    from lightning_accel.quantization import activation_quantizers, quantized_layers

    export = ExportOnFitEnd(
        tmp_path / "export",
        backends=("onnxruntime",),
        batch_sizes=(4,),
        verify_batches=2,
        latency_runs=3,
        threads=1,
    )
    module = _Validated()
    trainer = quiet_trainer(
        tmp_path, max_epochs=1, limit_train_batches=2, callbacks=[QuantizationAware(), export]
    )
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    assert len(quantized_layers(module)) == 5  # 2 convs + 3 linears (the embedding stays)
    assert activation_quantizers(module)
    graph = onnx.load(str(tmp_path / "export" / "model.onnx")).graph
    inputs = {i.name: i.type.tensor_type.elem_type for i in graph.input}
    assert inputs == {"image": onnx.TensorProto.FLOAT, "tokens": onnx.TensorProto.INT64}
    entry = export.summary["backends"]["onnxruntime"]
    assert entry["verification"]["passed"] and entry["verification"]["samples"] == 128
    assert entry["verification"]["top1_agreement"] >= 0.95
    kernels = entry["info"]["integer_kernels"]
    assert kernels.get("QLinearConv", 0) == 2 and kernels.get("QGemm", 0) == 3, kernels
    assert integer_ops(entry["info"]) == (5, 5)
    assert entry["latency"]["4"]["model_ms"] > 0


@pytest.mark.bad_input("data")
def test_qat_refuses_a_model_fx_cannot_trace_before_training(loader, tmp_path) -> None:
    """Data-dependent control flow on an input: refused before training, model untouched."""
    from lightning_accel import QuantizationAware

    class _Branchy(_ImageAndTokens):
        def forward(self, image: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
            if tokens.max() > 8:  # data-dependent: torch.fx cannot trace it
                tokens = tokens.clamp(max=8)
            return super().forward(image, tokens)

    module = _Module()
    module.model = _Branchy()
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[QuantizationAware()])
    with refused_before_training(
        trainer, module, r"_Branchy cannot be quantized: torch.fx cannot trace"
    ):
        trainer.fit(module, train_dataloaders=loader)


def test_export_on_fit_end_exports_verifies_and_times_two_inputs(loader, tmp_path) -> None:
    """Image + int64 ids: one ONNX graph with two named inputs, verified on real batches."""
    import onnx

    from lightning_accel import ExportOnFitEnd

    export = ExportOnFitEnd(
        tmp_path / "export",
        backends=("onnxruntime", "openvino"),
        batch_sizes=(1, 4),
        verify_batches=2,
        latency_runs=4,
        threads=1,
    )
    module = _Validated()
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[export])
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)

    graph = onnx.load(str(tmp_path / "export" / "model.onnx")).graph
    inputs = {i.name: i.type.tensor_type.elem_type for i in graph.input}
    assert inputs == {"image": onnx.TensorProto.FLOAT, "tokens": onnx.TensorProto.INT64}
    for backend in ("onnxruntime", "openvino"):
        entry = export.summary["backends"][backend]
        check = entry["verification"]
        assert check["passed"] and check["samples"] == 128  # two real batches of 64
        assert check["relative_max_error"] < 1e-4 and check["top1_agreement"] == 1.0
        assert [entry["latency"][b]["model_ms"] > 0 for b in ("1", "4")] == [True, True]
        assert entry["latency"]["4"]["baseline_ms"] > 0
    assert export.summary["model"]["params"] == sum(p.numel() for p in module.parameters())


@pytest.mark.bad_input("data")
@pytest.mark.parametrize("option", ["tensorrt", "input_shape"])
def test_export_refuses_what_cannot_take_several_inputs_before_training(
    loader, tmp_path, option
) -> None:
    from lightning_accel import ExportOnFitEnd

    kwargs: dict = {"backends": ("tensorrt",)} if option == "tensorrt" else {}
    if option == "input_shape":
        kwargs["input_shape"] = (1, 1, 8, 8)
    module = _Validated()
    export = ExportOnFitEnd(tmp_path / "export", **kwargs)
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[export])
    match = (
        r"tensorrt runs graphs with one input"
        if option == "tensorrt"
        else r"input_shape=\(1, 1, 8, 8\)\) gives one input, but the model takes several"
    )
    # Without a GPU here, setup also warns that TensorRT cannot run.
    with pytest.warns(UserWarning) if option == "tensorrt" else contextlib.nullcontext():
        with refused_before_training(trainer, module, match):
            trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)


def test_latency_monitor_times_two_inputs_with_their_dtypes(loader, tmp_path) -> None:
    from lightning_accel import LatencyMonitor

    monitor = LatencyMonitor(batch_sizes=(1, 4), runs=4, threads=1)
    module = _Validated()
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[monitor])
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    (row,) = monitor.history
    assert row["latency/onnxruntime/b1_ms"] > 0 and row["latency/onnxruntime/b4_ms"] > 0
    assert row["latency/onnxruntime/b4_speedup"] > 0
    assert row["model/params"] == sum(p.numel() for p in module.parameters())
    assert row["model/macs"] > 0
