"""What a user sees at the end of fit: a line per stage, the table once, the files, the charts."""

import csv
import io
import json
import logging

import pytest
import yaml
from lightning.pytorch.loggers import CSVLogger

from lightning_accel import DigitsDataModule, ExportOnFitEnd, GradualPruning, LatencyMonitor
from tests.conftest import quiet_trainer, small_module


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One small fit for all tests here: unstructured pruning, per-epoch latency, export."""
    tmp_path = tmp_path_factory.mktemp("end_of_fit")
    digits = DigitsDataModule(batch_size=64)
    export = ExportOnFitEnd(tmp_path / "export", batch_sizes=(1,), threads=1, latency_runs=6)
    callbacks = [
        GradualPruning(0.5, mode="unstructured", end_epoch=1),
        LatencyMonitor(threads=1, runs=3),
        export,
    ]
    logger = CSVLogger(tmp_path / "logs", name="run")
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=callbacks, logger=logger)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    lightning_log = logging.getLogger("lightning.pytorch")
    lightning_log.addHandler(handler)
    try:
        trainer.fit(small_module(), datamodule=digits)
    finally:
        lightning_log.removeHandler(handler)
    return export, tmp_path, stream.getvalue(), logger


def test_each_stage_is_one_line_the_table_once_and_the_paths_last(finished) -> None:
    export, tmp_path, text, _ = finished
    for stage in (
        "exporting the model to ONNX",
        "compiling for onnxruntime",
        "verifying",
        "timing",
    ):
        assert f"ExportOnFitEnd: {stage}" in text, stage
    assert text.count("| backend | batch |") == 1  # the summary table, once
    last = [line for line in text.splitlines() if "ExportOnFitEnd: done in" in line]
    assert len(last) == 1
    assert str(tmp_path / "export" / "summary.json") in last[0]
    assert str(tmp_path / "export" / "model.onnx") in last[0]


def test_epochs_csv_and_charts_lie_beside_summary_json(finished) -> None:
    _, tmp_path, _, _ = finished
    out = tmp_path / "export"
    with open(out / "epochs.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["0", "1"]  # one row per epoch
    assert float(rows[1]["val/acc"]) > 0 and float(rows[1]["latency/onnxruntime/b1_ms"]) > 0
    # LatencyMonitor times the fit-start model alternately with the current one
    speedup = [float(rows[1][f"latency/onnxruntime/b1_speedup{q}"]) for q in ("_p25", "", "_p75")]
    assert 0 < speedup[0] <= speedup[1] <= speedup[2]  # the median within its quartiles
    for chart in ("epochs.png", "accuracy_vs_latency.png"):
        assert (out / chart).read_bytes()[:4] == b"\x89PNG", chart
    listed = {f["path"] for f in json.loads((out / "summary.json").read_text())["run"]["files"]}
    assert {"epochs.csv", "epochs.png", "accuracy_vs_latency.png"} <= listed


def test_sparsity_gain_is_reported_as_compressed_size(finished) -> None:
    export, _, text, _ = finished
    model, baseline = export.summary["model"], export.summary["baseline"]
    assert model["onnx_bytes"] == pytest.approx(baseline["onnx_bytes"], rel=0.05)  # dense file
    assert model["onnx_compressed_bytes"] < 0.8 * baseline["onnx_compressed_bytes"]  # 50% zeros
    assert "compressed ONNX (zlib)" in text


def test_timing_reports_the_speedup_spread_from_alternating_rounds(finished) -> None:
    export, *_ = finished
    row = export.summary["backends"]["onnxruntime"]["latency"]["1"]
    assert row["rounds"] >= 1 and row["speedup_p25"] <= row["speedup"] <= row["speedup_p75"]
    assert row["baseline_p90_ms"] >= row["baseline_ms"] and isinstance(row["trusted"], bool)


def test_every_callback_setting_is_in_the_logged_hyperparameters(finished) -> None:
    *_, logger = finished
    with open(f"{logger.log_dir}/hparams.yaml") as f:
        hparams = yaml.safe_load(f)
    assert hparams["callbacks.pruning.target_sparsity"] == 0.5
    assert hparams["callbacks.pruning.mode"] == "unstructured"
    assert hparams["callbacks.latency.runs"] == 3
    assert hparams["callbacks.export.latency_runs"] == 6
    assert hparams["lr"] == 0.05  # the module's own, still there


def test_saving_last_ckpt_logs_no_weights_only_default_line(finished) -> None:
    _, _, text, _ = finished
    assert "`weights_only` was not set" not in text
