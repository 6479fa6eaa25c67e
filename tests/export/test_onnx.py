import errno

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from lightning_accel.backends.onnxruntime import latency, ort_session
from lightning_accel.export.onnx import to_onnx
from lightning_accel.models.zoo import build


@pytest.mark.parametrize("batch", [1, 7])
def test_onnx_runtime_matches_pytorch_with_dynamic_batch(tmp_path, batch: int) -> None:
    model = build("small_cnn")
    x = torch.randn(batch, 1, 28, 28)
    path = to_onnx(model, x[:1], tmp_path / "m.onnx")
    session = ort_session(path, threads=1)
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_export_is_one_self_contained_file_and_leaves_model_as_found(tmp_path) -> None:
    model = build("small_cnn").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = to_onnx(model, torch.randn(1, 1, 28, 28), tmp_path / "sub" / "m.onnx")
    assert [p.name for p in path.parent.iterdir()] == ["m.onnx"]  # no external data, no temp file
    onnx.checker.check_model(onnx.load(str(path)))
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.bad_input("data")
def test_input_the_model_rejects_is_a_clear_error_and_writes_nothing(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"rejects an input of shape \(2, 3, 28, 28\)"):
        to_onnx(build("small_cnn", in_channels=1), torch.randn(1, 3, 28, 28), tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


@pytest.mark.bad_input("data")
def test_untraceable_model_fails_clearly_without_leaving_a_partial_file(tmp_path) -> None:
    class Branchy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # Python control flow on a tensor value
                return x * 2
            return x

    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), Branchy()), nn.Linear(4, 2))
    with pytest.raises(
        RuntimeError, match=r"failed in layer '1.1' \(Branchy\): .*data-dependent.*control flow"
    ):
        to_onnx(model, torch.randn(1, 4), tmp_path / "m.onnx")
    assert not any(hook for m in model.modules() for hook in m._forward_hooks.values())
    assert list(tmp_path.iterdir()) == []


def test_latency_is_a_median_over_timed_runs(tmp_path) -> None:
    path = to_onnx(build("small_cnn"), torch.randn(1, 1, 28, 28), tmp_path / "m.onnx")
    small = latency(path, batch_size=1, threads=1, warmup=2, runs=15)
    large = latency(path, batch_size=32, threads=1, warmup=2, runs=15)
    assert small.runs >= 15 and small.threads == 1
    assert 0 < small.p90_ms and small.median_ms <= small.p90_ms
    assert large.median_ms > small.median_ms  # 32 images cost more than one
    assert large.throughput > 0


@pytest.mark.bad_input("file system")
def test_latency_of_missing_file_names_the_fix(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="Export one with to_onnx"):
        latency(tmp_path / "none.onnx")


@pytest.mark.bad_input("file system")
def test_directory_path_is_refused_as_a_write_error_and_nothing_is_left(tmp_path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(ValueError, match=r"Cannot write the ONNX file to .*out: it is a directory"):
        to_onnx(build("small_cnn"), torch.randn(1, 1, 28, 28), target)
    assert list(tmp_path.iterdir()) == [target] and list(target.iterdir()) == []


@pytest.mark.bad_input("file system")
def test_failed_write_names_the_path_and_keeps_the_earlier_file(tmp_path, monkeypatch) -> None:
    path = to_onnx(build("small_cnn"), torch.randn(1, 1, 28, 28), tmp_path / "m.onnx")
    before = path.read_bytes()

    def disk_full(self, destination, **kwargs) -> None:
        with open(destination, "wb") as f:
            f.write(b"half a graph")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch.onnx.ONNXProgram, "save", disk_full)
    with pytest.raises(
        RuntimeError, match=r"Could not write the ONNX file .*m.onnx: No space"
    ) as err:
        to_onnx(build("small_cnn", num_classes=7), torch.randn(1, 1, 28, 28), path)
    assert "traceable" not in str(err.value)
    assert path.read_bytes() == before  # the complete file was not replaced by the partial one
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_external_data_export_is_staged_and_renamed_into_place(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("lightning_accel.export.onnx._PROTOBUF_LIMIT", 1)  # force external data
    model = build("small_cnn")
    x = torch.randn(3, 1, 28, 28)
    path = to_onnx(model, x[:1], tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    session = ort_session(path, threads=1)
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, model.eval()(x).numpy(), rtol=1e-4, atol=1e-5)
    # a later self-contained export replaces the graph and removes the stale weights beside it
    monkeypatch.setattr("lightning_accel.export.onnx._PROTOBUF_LIMIT", 2 * 1024**3)
    to_onnx(model, x[:1], path)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]
