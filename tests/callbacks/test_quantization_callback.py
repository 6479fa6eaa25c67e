"""QuantizationAware during fit: swaps, schedules, optimizer, logging, composition with pruning."""

from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from lightning_accel import ClassificationModule, GradualPruning, QuantizationAware
from lightning_accel.backends.onnxruntime import compile_onnxruntime
from lightning_accel.checkpointing.structural_log import structural_changes
from lightning_accel.export.onnx import to_onnx
from lightning_accel.quantization import activation_quantizers, quantized_layers
from tests.conftest import quiet_trainer, small_module


class PhaseProbe(Callback):
    """Records, per epoch, whether the model is quantized and its ranges and BN statistics."""

    def __init__(self) -> None:
        self.quantized: list[bool] = []
        self.scales: list[list[float]] = []
        self.bn_means: list[torch.Tensor] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        self.quantized.append(bool(quantized_layers(pl_module)))

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        quantizers = activation_quantizers(pl_module).values()
        self.scales.append([float(q.scale.detach()) for q in quantizers])
        layers = [m for m in quantized_layers(pl_module).values() if getattr(m, "bn", None)]
        self.bn_means.append(layers[0].bn.running_mean.clone() if layers else torch.zeros(1))


def test_layers_swap_at_start_epoch_and_the_optimizer_trains_them(digits, tmp_path) -> None:
    module, probe = small_module(), PhaseProbe()
    qat = QuantizationAware(start_epoch=1, learnable_scales=True, freeze_observers_epoch=2)
    trainer = quiet_trainer(tmp_path, max_epochs=3, callbacks=[qat, probe])
    trainer.fit(module, datamodule=digits)
    assert probe.quantized == [False, True, True]
    layers = quantized_layers(module)
    assert len(layers) == 5  # four convs and the classifier
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert {id(p) for p in module.parameters()} <= optimized  # new scale parameters included
    # Learned scales moved in the epoch after the observers froze.
    assert probe.scales[2] != probe.scales[1]
    metrics = trainer.callback_metrics
    assert float(metrics["compress/weight_bits"]) == 8.0
    assert float(metrics["compress/quantized_layers"]) == 1.0
    assert float(metrics["compress/activation_range_max"]) > 0
    assert float(metrics["val/acc"]) > 0.8


def test_frozen_observers_and_batchnorm_stop_moving(digits, tmp_path) -> None:
    module, probe = small_module(), PhaseProbe()
    qat = QuantizationAware(start_epoch=0, freeze_observers_epoch=2, freeze_bn_epoch=2)
    quiet_trainer(tmp_path, max_epochs=3, callbacks=[qat, probe]).fit(module, datamodule=digits)
    assert probe.scales[1] != probe.scales[0]  # observing
    assert probe.scales[2] == probe.scales[1]  # frozen at epoch 2
    assert not torch.equal(probe.bn_means[1], probe.bn_means[0])
    torch.testing.assert_close(probe.bn_means[2], probe.bn_means[1], atol=0, rtol=0)


def test_mixed_precision_and_ignored_layers(digits, tmp_path) -> None:
    module = small_module()
    qat = QuantizationAware(layer_bits={"model.4": 4, "model.8": 2}, ignore=["model.16"])
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[qat])
    trainer.fit(module, datamodule=digits)
    layers = quantized_layers(module)
    assert sorted(layers) == ["model.0", "model.11", "model.4", "model.8"]
    assert (
        layers["model.4"].weight_quantizer.bits == 4
        and layers["model.8"].weight_quantizer.bits == 2
    )
    assert type(module.model.get_submodule("16")) is nn.Linear  # stays float
    assert 2.0 < float(trainer.callback_metrics["compress/weight_bits"]) < 32.0
    from lightning_accel.export.compare import runtime_notes

    assert "2 layers were trained with weights below 8 bits" in runtime_notes(module)[0]


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_prune_then_quantize_in_one_fit_runs_on_integer_kernels(name, digits, tmp_path) -> None:
    module = ClassificationModule(name, input_size=8, lr=0.01)
    convs_before = {
        n: m.out_channels for n, m in module.named_modules() if isinstance(m, nn.Conv2d)
    }
    pruning = GradualPruning(0.5, mode="structured", end_epoch=1, round_to=8)
    qat = QuantizationAware(start_epoch=2, freeze_bn_epoch=2)
    trainer = quiet_trainer(
        tmp_path, max_epochs=3, callbacks=[pruning, qat], limit_train_batches=3, limit_val_batches=1
    )
    trainer.fit(module, datamodule=digits)
    assert [entry["kind"] for entry in structural_changes(module)][-1] == "quantization_aware"
    convs = {n: m for n, m in module.named_modules() if isinstance(m, nn.Conv2d)}
    assert sum(m.out_channels for m in convs.values()) < 0.7 * sum(convs_before.values())
    assert len(quantized_layers(module)) == len(convs) + 1
    onnx_path = to_onnx(module, torch.zeros(2, 1, 8, 8), tmp_path / "m.onnx")
    kernels = compile_onnxruntime(onnx_path, tmp_path, threads=2).info["integer_kernels"]
    assert kernels["QLinearConv"] == len(convs) and kernels["QGemm"] == 1
    assert kernels["QLinearAdd"] == (8 if name == "resnet18" else 10)


def test_onnxruntime_int8_agrees_with_fake_quant_on_the_fashion_mnist_test_set(tmp_path) -> None:
    from lightning_accel import FashionMNISTDataModule

    data = FashionMNISTDataModule(train_size=6000, val_size=1000, batch_size=128)
    module = ClassificationModule("small_cnn", lr=0.05)
    qat = QuantizationAware(start_epoch=1, freeze_observers_epoch=2)
    quiet_trainer(tmp_path, max_epochs=3, callbacks=[qat]).fit(module, datamodule=data)
    data.setup("test")
    images = data.test_set.tensors[0]  # type: ignore[union-attr]
    assert len(images) == 10_000
    compiled = compile_onnxruntime(
        to_onnx(module, images[:2], tmp_path / "m.onnx"), tmp_path, threads=2
    )
    module.eval()
    with torch.no_grad():
        expected = torch.cat([module(batch).argmax(1) for batch in images.split(1000)])
    actual = torch.cat(
        [torch.from_numpy(compiled.run(batch.numpy())).argmax(1) for batch in images.split(1000)]
    )
    assert (actual == expected).float().mean() >= 0.99
    # A trained model, so agreement is not that of a constant prediction.
    assert (expected == data.test_set.tensors[1]).float().mean() > 0.65  # type: ignore[union-attr]


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if out.mean() > 0:  # data-dependent branch
            out = out.relu()
        return self.fc(out.mean((2, 3)))


class _NoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x.flatten(1)[:, :10]


@pytest.mark.parametrize(
    ("model", "match"),
    [(_Untraceable, "torch.fx cannot trace"), (_NoLayers, "nothing to quantize")],
)
@pytest.mark.bad_input("data")
def test_unquantizable_models_fail_before_training_and_stay_intact(
    model, match, digits, tmp_path
) -> None:
    module = ClassificationModule(model(), input_size=8)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[QuantizationAware(start_epoch=1)])
    with pytest.raises(ValueError, match=match):
        trainer.fit(module, datamodule=digits)
    assert not quantized_layers(module) and not structural_changes(module)
    after = module.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"backend": "coreml"}, r"Unknown backend 'coreml' in QuantizationAware\(backend"),
        ({"weight_bits": 1}, "weight_bits must be an integer from 2 to 8"),
        ({"weight_bits": 16}, "weight_bits must be an integer from 2 to 8"),
        ({"activation_bits": 9}, "activation_bits must be an integer from 2 to 8"),
        ({"layer_bits": {"model.0": 12}}, r"layer_bits\['model.0'\] must be an integer"),
        ({"observer": "histogram"}, "observer must be one of"),
        ({"start_epoch": -1}, "start_epoch must be an integer >= 0"),
        ({"start_epoch": 2, "freeze_bn_epoch": 1}, "freeze_bn_epoch=1 comes before start_epoch=2"),
        (
            {"start_epoch": 2, "freeze_observers_epoch": 0},
            "freeze_observers_epoch=0 comes before start_epoch=2",
        ),
    ],
)
@pytest.mark.bad_input("constructor")
def test_bad_arguments_are_refused(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        QuantizationAware(**kwargs)


@pytest.mark.parametrize(
    ("callbacks", "match"),
    [
        (
            [QuantizationAware(start_epoch=3)],
            r"QuantizationAware schedule cannot finish: .*start_epoch=3.*max_epochs=3",
        ),
        ([QuantizationAware(ignore=["model.99"])], "pattern 'model.99' matches no layer"),
        ([QuantizationAware(layer_bits={"head.*": 4})], "pattern 'head.*' matches no layer"),
        (
            [GradualPruning(0.5, end_epoch=1), QuantizationAware(start_epoch=1)],
            "QuantizationAware\\(start_epoch=1\\) would start before structured GradualPruning",
        ),
    ],
)
@pytest.mark.bad_input("schedule")
def test_impossible_plans_fail_before_any_change(callbacks, match, digits, tmp_path) -> None:
    module = small_module()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        quiet_trainer(tmp_path, max_epochs=3, callbacks=callbacks).fit(module, datamodule=digits)
    assert not quantized_layers(module)
    assert all(torch.equal(module.state_dict()[k], v) for k, v in before.items())


def test_fit_with_qat_writes_no_files_of_its_own(digits, tmp_path: Path) -> None:
    quiet_trainer(tmp_path, max_epochs=1, callbacks=[QuantizationAware()]).fit(
        small_module(), datamodule=digits
    )
    assert not any(tmp_path.iterdir())


def test_export_hook_verifies_the_int8_model_against_the_fp32_baseline(digits, tmp_path) -> None:
    import json

    from lightning_accel import ExportOnFitEnd

    export = ExportOnFitEnd(tmp_path / "export", batch_sizes=(64,), threads=2, latency_runs=10)
    quiet_trainer(tmp_path, max_epochs=2, callbacks=[QuantizationAware(start_epoch=1), export]).fit(
        small_module(), datamodule=digits
    )
    summary = json.loads((tmp_path / "export" / "summary.json").read_text())
    ort = summary["backends"]["onnxruntime"]
    assert ort["info"]["integer_kernels"] == {"QLinearConv": 4, "QGemm": 1}
    assert ort["verification"]["precision"] == "int8" and ort["verification"]["passed"]
    # Same layers, now quantized: MACs match the baseline's but for the folded BatchNorms.
    assert summary["model"]["macs"] == pytest.approx(summary["baseline"]["macs"], rel=0.05)
    assert summary["model"]["onnx_bytes"] < 0.6 * summary["baseline"]["onnx_bytes"]


@pytest.mark.parametrize("kind", ["pruned", "quantized", "binarized"])
def test_module_without_the_mixin_is_warned_about_checkpoints(kind) -> None:
    import lightning.pytorch as pl

    from lightning_accel.callbacks.base import AccelCallback

    with pytest.warns(UserWarning, match=f"checkpoints of the {kind} model will only load if"):
        AccelCallback().warn_without_checkpoint_support(pl.LightningModule(), kind)
