"""Everywhere a backend is named, "openvino" works: ExportOnFitEnd, LatencyMonitor,
QuantizationAware and the CLI's bench command."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lightning_accel import ExportOnFitEnd, LatencyMonitor, QuantizationAware
from lightning_accel.backends.openvino import openvino_problem
from lightning_accel.cli.main import main
from lightning_accel.export.onnx import to_onnx
from tests.conftest import quiet_trainer, small_module

pytestmark = pytest.mark.skipif(
    openvino_problem() is not None, reason=f"OpenVINO cannot run here: {openvino_problem()}"
)


def test_qat_for_openvino_exports_to_both_cpu_runtimes_and_is_monitored(digits, tmp_path) -> None:
    logger = CSVLogger(tmp_path, name="csv")
    export = ExportOnFitEnd(
        tmp_path / "export",
        backends=("onnxruntime", "openvino"),
        batch_sizes=(1,),
        latency_runs=3,
        threads=1,
    )
    callbacks = [
        QuantizationAware("openvino", start_epoch=1),
        LatencyMonitor(backend="openvino", threads=1, runs=3),
        export,
    ]
    trainer = quiet_trainer(tmp_path, max_epochs=2, logger=logger, callbacks=callbacks)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(small_module(), datamodule=digits)
    # ONNX Runtime and OpenVINO want the same Q/DQ flavour: nothing to warn about
    assert not [w for w in caught if "quantized for" in str(w.message)]
    backends = export.summary["backends"]
    for name in ("onnxruntime", "openvino"):
        assert backends[name]["verification"]["passed"], backends[name]["verification"]
        assert backends[name]["latency"]["1"]["vs_onnxruntime_fp32"] > 0
    assert backends["openvino"]["info"]["integer_share"] == 1.0
    assert backends["openvino"]["info"]["integer_ops"]["Convolution"] == 4
    rows = list(csv.DictReader(open(Path(logger.log_dir) / "metrics.csv")))
    measured = [float(r["latency/openvino/b1_ms"]) for r in rows if r.get("latency/openvino/b1_ms")]
    assert len(measured) == 2 and min(measured) > 0


def test_cli_bench_runs_on_openvino(tmp_path: Path, capsys) -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Flatten())
    path = to_onnx(model.eval(), torch.randn(1, 1, 12, 12), tmp_path / "m.onnx")
    code = main(
        ["bench", str(path), "--backend", "openvino", "--batch-sizes", "4", "--runs", "3"]
        + ["--threads", "1"]
    )
    assert code == 0
    assert any(line.startswith("| openvino | 4 |") for line in capsys.readouterr().out.splitlines())


def test_a_float_models_table_says_float_not_zero_integer_ops() -> None:
    from lightning_accel.export.compare import format_summary

    entry = {
        "info": {"integer_kernels": {}, "operators": {"Conv": 2, "Gemm": 1}},
        "verification": {"passed": True, "precision": "fp32"},
        "latency": {"1": {"model_ms": 1.0, "baseline_ms": 2.0, "speedup": 2.0}},
    }
    quantized = {**entry, "verification": {"passed": True, "precision": "int8"}}
    model = {"params": 1, "macs": 1, "onnx_bytes": 1}
    table = format_summary({"model": model, "backends": {"onnxruntime": entry}})
    assert "| - (float) |" in table and "0/3" not in table
    # a quantized model left on float kernels is shown as such, not hidden
    table = format_summary({"model": model, "backends": {"onnxruntime": quantized}})
    assert "| 0/3 |" in table


def test_a_recipe_and_its_sweep_objective_run_on_openvino(tmp_path: Path) -> None:
    # Recipes and sweeps name a backend through the export's list; the first one is the one a
    # sweep's objective reads, so a sweep on OpenVINO is one override away.
    from lightning_accel.recipes.recipe import bundled_recipes
    from lightning_accel.recipes.run import run_recipe

    (path,) = [p for p in bundled_recipes() if p.stem == "small_cnn"]
    overrides = [
        "callbacks.export.backends=[openvino, onnxruntime]",
        "callbacks.latency.backend=openvino",
    ]
    summary = run_recipe(
        path, overrides, quick=True, logger="csv", output_dir=tmp_path, progress=False
    )
    openvino = summary["backends"]["openvino"]
    assert openvino["verification"]["passed"], openvino["verification"]
    trial = json.loads((tmp_path / "small_cnn" / "trial.json").read_text())
    assert trial["sweep/latency_ms"] == pytest.approx(openvino["latency"]["1"]["model_ms"])
    assert trial["sweep/latency_ms"] != pytest.approx(
        summary["backends"]["onnxruntime"]["latency"]["1"]["model_ms"]
    )
    assert any(key.startswith("latency/openvino/") for key in trial)
