"""The main job on both CPU runtimes: defaults, the fallback without OpenVINO, a tiny real run."""

import json

import pytest

from lightning_accel.backends import openvino as openvino_backend
from lightning_accel.cli.fit_job import PruningJobConfig, print_report, run_pruning_job


def test_default_job_measures_onnxruntime_and_openvino_when_installed() -> None:
    cfg = PruningJobConfig()
    assert cfg.runtimes() == (("onnxruntime", "openvino"), None)
    assert cfg.qat_epochs == 1 and cfg.quantizes()  # a pruned + int8 row by default
    # ONNX Runtime, the reference, is always measured; --backend adds to it.
    assert PruningJobConfig(backends=("openvino",)).runtimes()[0] == ("onnxruntime", "openvino")
    assert PruningJobConfig(backends=("onnxruntime",)).runtimes() == (("onnxruntime",), None)


def test_without_openvino_the_default_job_measures_onnxruntime_with_a_note(monkeypatch) -> None:
    monkeypatch.setattr(openvino_backend, "_OPENVINO_AVAILABLE", False)
    runtimes, note = PruningJobConfig().runtimes()
    assert runtimes == ("onnxruntime",)
    assert note is not None and "\n" not in note
    assert 'pip install "lightning-accel[openvino]"' in note and "ONNX Runtime only" in note


def test_int8_row_follows_structured_pruning_only() -> None:
    assert not PruningJobConfig(qat_epochs=0).quantizes()
    # unstructured/2:4 zeros would grow back during QAT without the pruning masks
    assert not PruningJobConfig(mode="unstructured").quantizes()


@pytest.mark.bad_input("constructor")
def test_unknown_job_backend_is_refused_naming_the_choices() -> None:
    with pytest.raises(ValueError, match=r"backends must be among \['onnxruntime', 'openvino'\]"):
        PruningJobConfig(backends=("tensorrt",))


def test_tiny_job_verifies_and_times_three_rows_on_both_runtimes(tmp_path, capsys) -> None:
    cfg = PruningJobConfig(
        model="small_cnn",
        dense_epochs=2,
        prune_epochs=2,
        qat_epochs=1,
        train_size=1024,
        val_size=128,
        test_size=256,
        latency_runs=5,
        threads=2,
        output_dir=str(tmp_path),
    )
    rows = run_pruning_job(cfg, progress=False)
    dense, pruned, int8 = rows
    assert int8.name == "structured 50% + int8 QAT (+1 ep)"
    assert pruned.params < 0.5 * dense.params and int8.params == pruned.params
    for row in rows:
        assert list(row.runtimes) == ["onnxruntime", "openvino"]
        for figures in row.runtimes.values():
            assert figures.error is None
            assert figures.verification is not None and figures.verification["passed"], row.name
            assert set(figures.latency_ms) == set(figures.vs_onnxruntime_fp32) == {1, 64}
        ort = row.runtimes["onnxruntime"]
        assert ort.latency_ms == row.latency_ms  # the row's own fields stay ONNX Runtime's
        assert ort.vs_onnxruntime_fp32 == ort.speedup
    for figures in dense.runtimes.values():
        assert figures.speedup == {1: 1.0, 64: 1.0}
        assert figures.integer_ops is not None and figures.integer_ops[0] == 0  # float model
    # OpenVINO's baseline against ONNX Runtime's: the runtime alone, with its spread
    ov_dense = dense.runtimes["openvino"]
    assert set(ov_dense.vs_onnxruntime_fp32_iqr) == {1, 64}
    for figures in int8.runtimes.values():
        assert figures.verification["precision"] == "int8"
        integer, total = figures.integer_ops
        assert total > 0 and integer == total  # every conv/matmul on integer kernels
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["runtimes"] == ["onnxruntime", "openvino"] and summary["notes"] == []
    assert summary["models"][2]["runtimes"]["openvino"]["integer_ops"] == list(
        int8.runtimes["openvino"].integer_ops
    )
    capsys.readouterr()
    print_report(rows)
    table = capsys.readouterr().out
    assert "| runtime | int8 ops | verified |" in table and "vs ORT fp32 @b64" in table
    assert table.count("| ONNX Runtime |") == 3 and table.count("| OpenVINO |") == 3
