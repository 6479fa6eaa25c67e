"""ExportOnFitEnd: export, verify and benchmark at fit end; every failure keeps the checkpoint."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from lightning_accel import ClassificationModule, ExportOnFitEnd, GradualPruning
from lightning_accel.backends.tensorrt import tensorrt_problem
from tests.conftest import quiet_trainer, small_module


def _fit(module, data, callbacks, tmp_path, epochs=2):
    trainer = quiet_trainer(tmp_path, max_epochs=epochs, callbacks=callbacks)
    trainer.fit(module, datamodule=data)
    return trainer


def test_pruned_model_is_exported_verified_and_faster_than_its_baseline(digits, tmp_path) -> None:
    export = ExportOnFitEnd(tmp_path / "export", batch_sizes=(1, 64), threads=1, latency_runs=20)
    _fit(small_module(), digits, [GradualPruning(0.5, end_epoch=1), export], tmp_path)
    out = tmp_path / "export"
    for name in (
        "last.ckpt",
        "model.onnx",
        "baseline.onnx",
        "summary.json",
        "onnxruntime/model.ort.onnx",
    ):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads(json.dumps(export.summary, default=str))
    ort = summary["backends"]["onnxruntime"]
    assert ort["verification"]["passed"] and ort["verification"]["samples"] == len(digits.val_set)
    assert summary["model"]["params"] < 0.5 * summary["baseline"]["params"]
    assert ort["latency"]["64"]["speedup"] > 1.2  # half the channels: fewer MACs, measured faster
    assert summary["accuracy"] > 0.8
    assert {"export_s", "verify_onnxruntime_s", "benchmark_onnxruntime_s"} <= set(
        summary["timings"]
    )
    loaded = ClassificationModule.load_from_checkpoint(out / "last.ckpt")
    assert loaded.model[4].weight.shape[0] == 16


class _Noisy(nn.Module):
    """Adds fresh noise in every forward pass, so no runtime can reproduce PyTorch's outputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.randn_like(x)


def _noisy_module() -> ClassificationModule:
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(512, 10), _Noisy()
    )
    return ClassificationModule(net, input_size=8)


@pytest.mark.bad_input("data")
def test_failed_verification_is_an_error_and_keeps_the_checkpoint(digits, tmp_path) -> None:
    export = ExportOnFitEnd(tmp_path / "export", benchmark=False, threads=1)
    with pytest.raises(
        RuntimeError, match=r"(?s)onnxruntime verification FAILED \(fp32.*last.ckpt"
    ):
        _fit(_noisy_module(), digits, [export], tmp_path, epochs=1)
    assert (tmp_path / "export" / "last.ckpt").is_file()
    assert not json.loads((tmp_path / "export" / "summary.json").read_text())["backends"][
        "onnxruntime"
    ]["verification"]["passed"]


def test_failed_verification_can_be_a_warning(digits, tmp_path) -> None:
    export = ExportOnFitEnd(
        tmp_path / "export", benchmark=False, threads=1, on_verification_failure="warn"
    )
    with pytest.warns(UserWarning, match="verification FAILED"):
        _fit(_noisy_module(), digits, [export], tmp_path, epochs=1)


@pytest.mark.skipif(
    tensorrt_problem() is None,
    reason="TensorRT is available here: the missing-TensorRT error cannot occur",
)
@pytest.mark.bad_input("constructor")
def test_tensorrt_requested_without_it_fails_after_writing_onnx_and_checkpoint(
    digits, tmp_path
) -> None:
    export = ExportOnFitEnd(
        tmp_path / "export", backends=("onnxruntime", "tensorrt"), threads=1, latency_runs=5
    )
    with pytest.warns(UserWarning, match="TensorRT cannot run here"):
        with pytest.raises(
            RuntimeError, match=r"(?s)TensorRT backend unavailable: .*safe in .*last.ckpt"
        ):
            _fit(small_module(), digits, [export], tmp_path, epochs=1)
    out = tmp_path / "export"
    assert (out / "last.ckpt").is_file() and (out / "model.onnx").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backends"]["onnxruntime"]["verification"]["passed"]
    assert "error" in summary["backends"]["tensorrt"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(backends=("onnxruntime", "tflite")), "Unknown backend 'tflite'"),
        (dict(batch_sizes=(1, 0)), "batch_sizes must be positive integers"),
        (dict(precision="int4"), "precision must be one of"),
        (dict(input_shape=(28, 28, -1)), "input_shape must be a batch shape"),
        (
            dict(on_verification_failure="ignore"),
            "on_verification_failure must be 'error' or 'warn'",
        ),
        (dict(input_shape=28), r"input_shape must be a batch shape like \(1, 1, 28, 28\); got 28"),
        (dict(dirpath=None), r"dirpath must be a folder path \(str or os.PathLike\); got None"),
        (dict(threads="x"), r"threads must be an integer >= 1 or None; got 'x'"),
        (dict(threads=0), r"threads must be an integer >= 1 or None; got 0"),
        (dict(verify_batches="4"), r"verify_batches must be an integer >= 1; got '4'"),
        (dict(latency_runs=2.5), r"latency_runs must be an integer >= 1; got 2.5"),
        (dict(verify="yes"), r"verify must be True or False; got 'yes'"),
        (dict(precision=3), r"precision must be one of \(.*\); got 3"),
    ],
)
@pytest.mark.bad_input("constructor")
def test_invalid_arguments_are_refused_at_construction(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ExportOnFitEnd(**kwargs)


@pytest.mark.bad_input("constructor")
def test_input_shape_the_model_rejects_is_refused_before_training(digits, tmp_path) -> None:
    module = small_module()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(
        ValueError, match=r"input_shape=\(1, 3, 8, 8\)\): the model rejects this input"
    ):
        _fit(module, digits, [ExportOnFitEnd(tmp_path / "e", input_shape=(1, 3, 8, 8))], tmp_path)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


@pytest.mark.bad_input("file system")
def test_unwritable_dirpath_is_refused_before_training(digits, tmp_path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match=r"dirpath=.*a_file/export.* is not a writable folder"):
        _fit(small_module(), digits, [ExportOnFitEnd(blocker / "export")], tmp_path)
    assert blocker.read_text() == "not a folder"


@pytest.mark.bad_input("data")
def test_untraceable_model_fails_with_the_layer_named_and_keeps_the_checkpoint(
    digits, tmp_path
) -> None:
    class Gate(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x if x.mean() > 0 else -x  # Python branch on a tensor value

    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), Gate(), nn.Flatten(), nn.Linear(512, 10))
    module = ClassificationModule(net, input_size=8)
    with pytest.raises(
        RuntimeError, match=r"(?s)failed in layer 'model.1' \(Gate\).*safe in .*last.ckpt"
    ):
        _fit(module, digits, [ExportOnFitEnd(tmp_path / "export", threads=1)], tmp_path, epochs=1)
    assert (tmp_path / "export" / "last.ckpt").is_file()
    assert not (tmp_path / "export" / "model.onnx").exists()
    assert not list((tmp_path / "export").glob("*.partial"))


def test_killed_export_leaves_no_file_under_the_final_name(tmp_path) -> None:
    script = (
        "import sys, torch; from lightning_accel.export.onnx import to_onnx; from lightning_accel.models.zoo import build;"
        "to_onnx(build('resnet18'), torch.randn(1, 1, 28, 28), sys.argv[1])"
    )
    target = tmp_path / "model.onnx"
    process = subprocess.Popen([sys.executable, "-c", script, str(target)])
    deadline = time.time() + 120
    while (
        not list(tmp_path.glob("*.partial")) and time.time() < deadline and process.poll() is None
    ):
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert list(tmp_path.glob("*.partial")), "the export never started"
    assert not target.exists()
