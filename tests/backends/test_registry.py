"""One registry names the backends: arguments, CLI choices, Q/DQ flavour and docs derive from it."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from lightning_accel import ExportOnFitEnd, QuantizationAware
from lightning_accel.backends import (
    BACKENDS,
    BackendName,
    backend_names,
    backends_table,
    check_backends,
    get_backend,
)
from lightning_accel.backends.timing import summarize_times, time_calls
from lightning_accel.cli.main import main
from lightning_accel.quantization.spec import QuantizationSpec
from tests.conftest import quiet_trainer, small_module

ROOT = Path(__file__).parents[2]


def test_the_literal_type_and_the_registry_agree() -> None:
    assert list(typing.get_args(BackendName)) == backend_names() == list(BACKENDS)
    for name, backend in BACKENDS.items():
        assert backend.name == name
        assert name in backend.runs_qdq_of  # every runtime runs the Q/DQ it asks QAT for


@pytest.mark.bad_input("constructor")
def test_unknown_backend_names_the_argument_and_the_valid_ones() -> None:
    with pytest.raises(
        ValueError, match=r"Unknown backend 'coreml' in backends; choose from \['onnxruntime'"
    ):
        check_backends(("onnxruntime", "coreml"))
    with pytest.raises(ValueError, match="must name at least one of"):
        check_backends(())
    assert check_backends("onnxruntime") == ("onnxruntime",)


def test_cli_choices_come_from_the_registry(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "model.onnx", "--backend", "nope"])
    err = capsys.readouterr().err
    assert all(f"'{name}'" in err for name in backend_names())


def test_readme_and_docs_show_the_registry_table() -> None:
    table = backends_table()
    assert table in (ROOT / "README.md").read_text()
    assert table in (ROOT / "docs" / "export.md").read_text()


def test_quantization_flavour_comes_from_the_backend() -> None:
    for name, backend in BACKENDS.items():
        spec = QuantizationSpec(backend=name)  # type: ignore[arg-type]
        assert spec.symmetric_activations == backend.qdq.symmetric_activations
        assert spec.integer_bias == backend.qdq.integer_bias


def test_verification_precision_and_tolerance_are_per_backend() -> None:
    ort, trt = get_backend("onnxruntime"), get_backend("tensorrt")
    assert ort.verification_precision(quantized=False) == "fp32"
    assert trt.verification_precision(quantized=False) == "fp16"
    assert ort.verification_precision(quantized=True) == "int8"
    assert ort.tolerance("fp32").max_abs < ort.tolerance("int8").max_abs
    with pytest.raises(ValueError, match="precision must be one of"):
        ort.tolerance("int4")


def test_timing_summary_is_computed_once_for_every_backend() -> None:
    latency = summarize_times([4.0, 1.0, 3.0, 2.0, 100.0], batch_size=8, threads=2)
    assert latency.median_ms == 3.0
    assert latency.p90_ms == pytest.approx(61.6)  # linear interpolation between 4 and 100
    assert latency.iqr_ms == pytest.approx(2.0)
    assert latency.throughput == pytest.approx(8 / 0.003)
    with pytest.raises(ValueError, match="at least one timed run"):
        summarize_times([], 1, 1)
    calls = []
    times = time_calls(lambda: calls.append(1), warmup=3, runs=5)
    assert len(times) == 5 and len(calls) == 8 and min(times) >= 0


@pytest.mark.bad_input("constructor")
def test_export_refuses_a_backend_that_cannot_run_the_trained_qdq(digits, tmp_path) -> None:
    module = small_module()
    trainer = quiet_trainer(
        tmp_path,
        max_epochs=2,
        callbacks=[
            QuantizationAware("onnxruntime", start_epoch=1),
            ExportOnFitEnd(tmp_path / "export", backends=("tensorrt",)),
        ],
    )
    with pytest.raises(ValueError, match=r"QuantizationAware\(backend='onnxruntime'\) trains Q/DQ"):
        trainer.fit(module, datamodule=digits)
    assert not (tmp_path / "export" / "last.ckpt").exists()


def test_export_to_another_runtime_than_qat_targets_is_said(digits, tmp_path) -> None:
    module = small_module()
    export = ExportOnFitEnd(
        tmp_path / "export", batch_sizes=(1,), latency_runs=2, threads=1, benchmark=False
    )
    trainer = quiet_trainer(
        tmp_path, max_epochs=2, callbacks=[QuantizationAware("tensorrt", start_epoch=1), export]
    )
    with pytest.warns(UserWarning, match="quantized for 'tensorrt' but also exported"):
        trainer.fit(module, datamodule=digits)
    assert any(
        "Quantized for 'tensorrt' but run on 'onnxruntime'" in n for n in export.summary["notes"]
    )
