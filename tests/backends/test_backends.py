import time

import numpy as np
import pytest
import torch

from lightning_accel.backends import check_backends, compile_model
from lightning_accel.backends.tensorrt import build_engine, has_2_4_weights, tensorrt_problem
from lightning_accel.export.onnx import to_onnx
from lightning_accel.models.zoo import build
from lightning_accel.pruning.masks import n_m_mask

requires_tensorrt = pytest.mark.skipif(
    tensorrt_problem() is not None, reason=f"TensorRT cannot run here: {tensorrt_problem()}"
)


@pytest.fixture
def small_onnx(tmp_path):
    model = build("small_cnn").eval()
    return model, to_onnx(model, torch.randn(1, 1, 28, 28), tmp_path / "m.onnx")


def test_onnxruntime_saves_its_optimized_graph_and_runs_like_torch(small_onnx, tmp_path) -> None:
    model, path = small_onnx
    compiled = compile_model("onnxruntime", path, tmp_path / "ort", threads=1)
    assert compiled.artifacts["optimized"].is_file()
    assert compiled.info["integer_kernels"] == {}  # a float model runs no integer kernels
    assert compiled.info["operators"]["Conv"] == 4
    x = torch.randn(3, 1, 28, 28)
    np.testing.assert_allclose(
        compiled.run(x.numpy()), model(x).detach().numpy(), rtol=1e-4, atol=1e-5
    )
    assert compiled.latency(1, runs=5).median_ms > 0


def test_onnxruntime_threads_stop_spinning_after_a_run_when_asked(small_onnx, tmp_path) -> None:
    # Timed beside another runtime (#14), ONNX Runtime's reference session must leave the cores
    # idle between runs: its threads' CPU time while the caller sleeps stays near zero.
    _, path = small_onnx
    compiled = compile_model(
        "onnxruntime", path, tmp_path / "ort", threads=2, stop_spinning_after_run=True
    )
    options = compiled._session.get_session_options()
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    x = np.random.default_rng(0).standard_normal((64, 1, 28, 28)).astype(np.float32)
    for _ in range(5):
        compiled.run(x)
    before = time.process_time()
    time.sleep(0.2)
    assert time.process_time() - before < 0.01  # spinning threads burn ~0.04 s here


@pytest.mark.bad_input("constructor")
def test_unknown_backend_lists_the_valid_ones() -> None:
    with pytest.raises(
        ValueError,
        match=(
            r"Unknown backend 'coreml' in backends; "
            r"choose from \['onnxruntime', 'openvino', 'tensorrt'\]"
        ),
    ):
        check_backends(("onnxruntime", "coreml"))


@pytest.mark.skipif(
    tensorrt_problem() is None, reason="TensorRT is available: the missing-path error cannot occur"
)
@pytest.mark.bad_input("constructor")
def test_tensorrt_without_package_or_gpu_names_what_is_missing(small_onnx, tmp_path) -> None:
    _, path = small_onnx
    with pytest.raises(RuntimeError, match="TensorRT backend unavailable: .*(tensorrt|NVIDIA GPU)"):
        compile_model("tensorrt", path, tmp_path / "trt")
    with pytest.raises(RuntimeError, match="Use backends=\\('onnxruntime',\\)"):
        build_engine(path, tmp_path / "m.engine")
    assert not (tmp_path / "m.engine").exists()


def test_2_4_weights_are_detected_in_the_onnx_graph(tmp_path) -> None:
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8)
    ).eval()
    dense = to_onnx(model, torch.randn(1, 16), tmp_path / "dense.onnx")
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.mul_(n_m_mask(layer.weight))
    sparse = to_onnx(model, torch.randn(1, 16), tmp_path / "sparse.onnx")
    assert not has_2_4_weights(dense) and has_2_4_weights(sparse)


@requires_tensorrt
def test_tensorrt_engine_matches_onnxruntime(small_onnx, tmp_path) -> None:
    _, path = small_onnx
    trt_model = compile_model("tensorrt", path, tmp_path / "trt", precision="fp32")
    ort_model = compile_model("onnxruntime", path, tmp_path / "ort")
    x = np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(trt_model.run(x), ort_model.run(x), rtol=1e-3, atol=1e-3)
    assert (tmp_path / "trt" / "timing.cache").is_file()
