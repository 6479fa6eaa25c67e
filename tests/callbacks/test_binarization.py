"""Binarize during fit: schedule, logging, export (float and int8), packing, checkpoints, errors."""

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn

from lightning_accel import (
    Binarize,
    ClassificationModule,
    DigitsDataModule,
    GradualPruning,
    QuantizationAware,
    restore_compression,
)
from lightning_accel.backends.onnxruntime import compile_onnxruntime
from lightning_accel.binarization import BINARY_LAYERS, load_packed, save_packed
from lightning_accel.checkpointing.structural_log import structural_changes
from lightning_accel.export.onnx import to_onnx
from tests.conftest import quiet_trainer, small_module

EPOCHS = 4


class ProgressProbe(Callback):
    def __init__(self) -> None:
        self.progress: list[float] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        layers = [m for m in pl_module.modules() if isinstance(m, BINARY_LAYERS)]
        self.progress.append(float(layers[0].progress) if layers else -1.0)


def _train(data, tmp_path, ckpt_path=None, **kwargs):
    torch.manual_seed(0)
    module, probe = small_module(), ProgressProbe()
    callbacks = [
        Binarize(**{"start_epoch": 1, "end_epoch": 3, **kwargs}),
        probe,
        ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1, every_n_epochs=1),
    ]
    trainer = quiet_trainer(
        tmp_path,
        max_epochs=EPOCHS,
        callbacks=callbacks,
        enable_checkpointing=True,
        deterministic=True,
    )
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return module, probe, trainer


def _batch(data) -> torch.Tensor:
    return next(iter(data.val_dataloader()))[0]


def _outputs(module, data) -> torch.Tensor:
    with torch.no_grad():
        return module.eval()(_batch(data))


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory):
    data = DigitsDataModule()
    data.setup()
    tmp_path = tmp_path_factory.mktemp("binary")
    module, probe, trainer = _train(data, tmp_path)
    return data, tmp_path, module, probe, trainer


def test_progressive_schedule_reaches_binary_and_the_model_still_learns(binary_run) -> None:
    _, _, module, probe, trainer = binary_run
    # Progress at the end of each epoch: not started, rising through epochs 1-2, 1 from epoch 3.
    assert probe.progress[0] == -1.0
    assert 0 < probe.progress[1] < probe.progress[2] < 1 and probe.progress[3] == 1.0
    binary = [m for m in module.modules() if isinstance(m, BINARY_LAYERS)]
    assert len(binary) == 3  # first conv and classifier stay real
    assert isinstance(module.model[0], nn.Conv2d) and type(module.model[16]) is nn.Linear
    metrics = trainer.callback_metrics
    assert float(metrics["compress/binary_layers"]) == pytest.approx(3 / 5)
    assert float(metrics["compress/binarization"]) == 1.0
    assert float(metrics["val/acc"]) > 0.8


def test_float_export_equals_pytorch_and_int8_export_runs_on_qlinearconv(
    binary_run, tmp_path
) -> None:
    data, _, module, _, _ = binary_run
    x = _batch(data)
    expected = _outputs(module, data).numpy()
    exact = compile_onnxruntime(
        to_onnx(module, x, tmp_path / "float.onnx", binary_as_int8=False), tmp_path, threads=2
    )
    assert not exact.info["integer_kernels"]
    np.testing.assert_allclose(exact.run(x.numpy()), expected, atol=1e-4, rtol=1e-4)
    int8 = compile_onnxruntime(to_onnx(module, x, tmp_path / "int8.onnx"), tmp_path, threads=2)
    assert int8.info["integer_kernels"]["QLinearConv"] == 3  # the three binarized convs
    # BatchNorms as Mul/Add: no NCHW-pinned op between the NHWC int8 convs, so no transpose
    # pair around each of them (a BatchNormalization there cost two transposes per conv)
    operators = int8.info["operators"]
    assert "BatchNormalization" not in operators
    assert operators.get("Transpose", 0) < 2 * 3
    # ±1 products summed exactly in int32, requantized without loss (no sum reaches the ±256
    # saturation bound here), then scaled by α: PyTorch's outputs, up to float rounding
    np.testing.assert_allclose(int8.run(x.numpy()), expected, atol=1e-4, rtol=1e-4)


def test_packed_file_is_32x_smaller_for_binary_layers_and_reloads_exactly(
    binary_run, tmp_path
) -> None:
    data, ckpt_dir, module, _, _ = binary_run
    size = save_packed(module, tmp_path / "model.packed")
    weights = [m.weight for m in module.modules() if isinstance(m, BINARY_LAYERS)]
    # 1 bit per weight plus one fp32 scale per output channel.
    packed = sum((w.numel() + 7) // 8 + 4 * w.shape[0] for w in weights)
    assert size.binary_packed_bytes == packed
    assert size.binary_fp32_bytes == 4 * sum(w.numel() for w in weights)
    assert 28 < size.binary_ratio < 32
    assert size.file_bytes == (tmp_path / "model.packed").stat().st_size
    fresh = small_module()
    restore_compression(fresh, torch.load(ckpt_dir / f"epoch={EPOCHS - 1}.ckpt", weights_only=True))
    load_packed(tmp_path / "model.packed", fresh)
    torch.testing.assert_close(_outputs(fresh, data), _outputs(module, data))


@pytest.mark.bad_input("file system")
def test_truncated_or_foreign_packed_files_are_refused_and_model_kept(binary_run, tmp_path) -> None:
    _, ckpt_dir, module, _, _ = binary_run
    path = tmp_path / "model.packed"
    save_packed(module, path)
    truncated = tmp_path / "truncated.packed"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    target = small_module()
    restore_compression(
        target, torch.load(ckpt_dir / f"epoch={EPOCHS - 1}.ckpt", weights_only=True)
    )
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match="truncated or not a packed model"):
        load_packed(truncated, target)
    with pytest.raises(ValueError, match="saved from another architecture"):
        load_packed(path, ClassificationModule("small_cnn", input_size=8, num_classes=7))
    with pytest.raises(ValueError, match="saved from another architecture"):
        load_packed(path, small_module())  # same net, not binarized
    with pytest.raises(FileNotFoundError, match="save_packed"):
        load_packed(tmp_path / "missing.packed", target)
    assert all(torch.equal(target.state_dict()[k], v) for k, v in before.items())
    with pytest.raises(ValueError, match="no fully binarized weight"):
        save_packed(small_module(), tmp_path / "nothing.packed")


def test_checkpoints_load_three_ways_and_resume_mid_schedule(binary_run, tmp_path) -> None:
    data, ckpt_dir, module, _, _ = binary_run
    last = ckpt_dir / f"epoch={EPOCHS - 1}.ckpt"
    loaded = ClassificationModule.load_from_checkpoint(last)
    torch.testing.assert_close(_outputs(loaded, data), _outputs(module, data), atol=0, rtol=0)
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["lightning_accel"]["surgery"][0]["kind"] == "binarization"
    fresh = small_module()
    restore_compression(fresh, checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"])
    torch.testing.assert_close(_outputs(fresh, data), _outputs(module, data), atol=0, rtol=0)
    # Epoch 1 ends mid-schedule; resuming from it reproduces the uninterrupted run.
    resumed, probe, _ = _train(data, tmp_path, ckpt_path=ckpt_dir / "epoch=1.ckpt")
    assert probe.progress[-1] == 1.0 and len(structural_changes(resumed)) == 1
    torch.testing.assert_close(_outputs(resumed, data), _outputs(module, data))


def test_export_summary_says_no_runtime_has_1_bit_kernels(binary_run, tmp_path) -> None:
    from lightning_accel.export.compare import format_summary, runtime_notes

    _, _, module, _, _ = binary_run
    (note,) = runtime_notes(module)
    assert "neither ONNX Runtime, OpenVINO nor TensorRT has 1-bit kernels" in note
    summary = {"model": {"params": 1, "macs": 1, "onnx_bytes": 1}, "backends": {}, "notes": [note]}
    assert "1-bit kernels" in format_summary(summary)


def test_switch_at_once_and_weights_only(digits, tmp_path) -> None:
    module, probe, _ = _train(digits, tmp_path, activations=False, end_epoch=None, scaling="tensor")
    assert probe.progress[1:] == [1.0, 1.0, 1.0]
    x = _batch(digits)
    compiled = compile_onnxruntime(to_onnx(module, x, tmp_path / "w.onnx"), tmp_path, threads=2)
    assert not compiled.info["integer_kernels"]  # real inputs: stays a float graph
    np.testing.assert_allclose(
        compiled.run(x.numpy()), _outputs(module, digits).numpy(), atol=1e-4, rtol=1e-4
    )


def test_structured_pruning_then_binarization(digits, tmp_path) -> None:
    module = small_module()
    callbacks = [
        GradualPruning(0.5, end_epoch=1, round_to=8),
        Binarize(start_epoch=2),
    ]
    quiet_trainer(tmp_path, max_epochs=3, callbacks=callbacks).fit(module, datamodule=digits)
    assert [e["kind"] for e in structural_changes(module)][-1] == "binarization"
    assert module.model[4].out_channels == 16 and isinstance(module.model[4], BINARY_LAYERS)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ste": "tanh"}, "ste must be one of"),
        ({"scaling": "row"}, "scaling must be one of"),
        ({"weights": False, "activations": False}, "weights=True or activations=True"),
        ({"start_epoch": 3, "end_epoch": 2}, "end_epoch must be after start_epoch"),
    ],
)
@pytest.mark.bad_input("constructor")
def test_bad_arguments_are_refused(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        Binarize(**kwargs)


class _TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


@pytest.mark.parametrize(
    ("module", "callbacks", "match"),
    [
        (small_module, [Binarize(start_epoch=1, end_epoch=3)], "schedule cannot finish"),
        (small_module, [Binarize(ignore=["model.99"])], "pattern 'model.99' matches no layer"),
        (
            lambda: ClassificationModule(_TwoLayers(), input_size=8),
            [Binarize()],
            "found no layer to compress",
        ),
        (
            small_module,
            [Binarize(), QuantizationAware(ignore=["model.0"])],
            "Binarize and QuantizationAware both act on 3 layers",
        ),
    ],
)
@pytest.mark.bad_input("schedule")
def test_impossible_plans_fail_before_any_change(
    module, callbacks, match, digits, tmp_path
) -> None:
    model = module()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        quiet_trainer(tmp_path, max_epochs=3, callbacks=callbacks).fit(model, datamodule=digits)
    assert not any(isinstance(m, BINARY_LAYERS) for m in model.modules())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


@pytest.mark.bad_input("schedule")
def test_binarizing_before_structured_pruning_ends_is_refused(digits, tmp_path) -> None:
    module = small_module()
    callbacks = [GradualPruning(0.5, end_epoch=2), Binarize(start_epoch=1)]
    with pytest.raises(ValueError, match="Binarize\\(start_epoch=1\\) would start before"):
        quiet_trainer(tmp_path, max_epochs=3, callbacks=callbacks).fit(module, datamodule=digits)
    assert not any(isinstance(m, BINARY_LAYERS) for m in module.modules())


def test_binarize_and_quantize_different_layers_in_one_fit(digits, tmp_path) -> None:
    module = small_module()
    callbacks = [
        Binarize(ignore=["model.11"]),  # binarizes model.4 and model.8 from epoch 0
        QuantizationAware(start_epoch=1, ignore=["model.4", "model.8"]),
    ]
    quiet_trainer(tmp_path, max_epochs=2, callbacks=callbacks).fit(module, datamodule=digits)
    from lightning_accel.quantization import quantized_layers

    assert sorted(quantized_layers(module)) == ["model.0", "model.11", "model.16"]
    assert isinstance(module.model.get_submodule("4"), BINARY_LAYERS)
    compiled = compile_onnxruntime(
        to_onnx(module, _batch(digits), tmp_path / "m.onnx"), tmp_path, threads=2
    )
    assert compiled.info["integer_kernels"]["QLinearConv"] == 4
