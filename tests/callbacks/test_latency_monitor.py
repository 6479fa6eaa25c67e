"""LatencyMonitor logs measured latency per epoch to any logger, W&B included (offline)."""

import csv
from pathlib import Path

import pytest
import wandb
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lightning_accel import ExportOnFitEnd, GradualPruning, LatencyMonitor
from lightning_accel.tracking.wandb_logging import wandb_logger
from tests.conftest import quiet_trainer, small_module
from tests.wandb_records import history_rows, read_records, record_types, run_file, summary_values


def test_latency_and_size_are_logged_every_epoch_and_follow_pruning(digits, tmp_path) -> None:
    logger = CSVLogger(tmp_path, name="csv")
    monitor = LatencyMonitor(batch_sizes=(1, 16), threads=1, runs=10)
    trainer = quiet_trainer(
        tmp_path, max_epochs=3, logger=logger, callbacks=[GradualPruning(0.5, end_epoch=2), monitor]
    )
    trainer.fit(small_module(), datamodule=digits)
    rows = [
        r
        for r in csv.DictReader(open(Path(logger.log_dir) / "metrics.csv"))
        if r.get("latency/onnxruntime/b1_ms")
    ]
    assert [int(float(r["epoch"])) for r in rows] == [0, 1, 2]
    assert all(float(r["latency/onnxruntime/b16_ms"]) > 0 for r in rows)
    assert float(rows[-1]["model/params"]) < float(rows[0]["model/params"])
    assert float(rows[-1]["model/onnx_bytes"]) < float(rows[0]["model/onnx_bytes"])
    assert all(float(r["latency/monitor_s"]) > 0 for r in rows)  # its own cost is reported
    assert monitor.history[-1]["model/sparsity"] > 0.5  # measured from the model's parameters


def test_works_with_tensorboard_and_without_logger(digits, tmp_path) -> None:
    for logger in (TensorBoardLogger(tmp_path, name="tb"), False):
        monitor = LatencyMonitor(threads=1, runs=5, every_n_epochs=2)
        quiet_trainer(tmp_path, max_epochs=2, logger=logger, callbacks=[monitor]).fit(
            small_module(), datamodule=digits
        )
        assert [row["epoch"] for row in monitor.history] == [1]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(backend="coreml"), "Unknown backend 'coreml'"),
        (dict(every_n_epochs=0), r"every_n_epochs must be an integer >= 1; got 0"),
        (dict(batch_sizes=()), "batch_sizes must be positive integers"),
    ],
)
@pytest.mark.bad_input("constructor")
def test_invalid_arguments_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LatencyMonitor(**kwargs)


def test_wandb_offline_run_holds_epoch_axis_table_summary_and_artifact(
    digits, tmp_path, monkeypatch
) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc credentials
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = wandb_logger("lightning-accel-test", save_dir=tmp_path / "runs")
    callbacks = [
        GradualPruning(0.5, end_epoch=1),
        LatencyMonitor(threads=1, runs=5),
        ExportOnFitEnd(tmp_path / "export", threads=1, latency_runs=5, batch_sizes=(1,)),
    ]
    try:
        trainer = quiet_trainer(tmp_path, max_epochs=2, logger=logger, callbacks=callbacks)
        trainer.fit(small_module(), datamodule=digits)
        run_id = logger.experiment.id
    finally:
        wandb.finish()
        wandb.teardown()
    records = read_records(run_file(tmp_path / "runs"))
    rows = history_rows(records)
    latency_rows = [r for r in rows if "latency/onnxruntime/b1_ms" in r]
    assert [r["epoch"] for r in latency_rows] == [0, 1]
    assert any("val/acc" in r and "epoch" in r for r in rows)
    logged = {key for r in rows for key in r}
    assert "compress/epoch_table/_type" in logged  # the per-epoch table
    assert "compress/accuracy_vs_latency_table/_type" in logged  # the chart's data
    (table_row,) = [r for r in rows if "compress/epoch_table/nrows" in r]
    assert table_row["compress/epoch_table/nrows"] == 2  # one row per epoch
    summary = summary_values(records)
    assert summary["speedup/onnxruntime/b1"] > 0
    assert summary["verification/onnxruntime/passed"] is True
    assert "artifact" in record_types(records)
    artifacts = {
        r.artifact.name: r.artifact for r in records if r.WhichOneof("record_type") == "artifact"
    }
    artifact = artifacts[f"onnx-{run_id}"]  # apart from Lightning's model-<id> checkpoints
    assert artifact.type == "model"
    assert {"model.onnx", "summary.json"} <= {entry.path for entry in artifact.manifest.contents}
    metrics = [r.metric for r in records if r.WhichOneof("record_type") == "metric"]
    assert any(m.glob_name == "latency/*" and m.step_metric == "epoch" for m in metrics)


def test_sparsity_in_the_history_is_zero_without_compression(digits, tmp_path) -> None:
    monitor = LatencyMonitor(runs=2, threads=1)
    quiet_trainer(tmp_path, max_epochs=1, callbacks=[monitor]).fit(
        small_module(), datamodule=digits
    )
    assert monitor.history[0]["model/sparsity"] == 0.0  # BatchNorm's zero biases are not pruning


def test_a_speedup_the_timing_cannot_support_is_warned_about(digits, tmp_path, monkeypatch) -> None:
    # The library's spread rule on real timings, made strict: any spread between rounds is
    # "too wide", so every measured epoch must warn, naming the epoch, batch and quartiles.
    from lightning_accel.backends import timing

    monkeypatch.setattr(timing, "RATIO_SPREAD_LIMIT", -1.0)
    monitor = LatencyMonitor(batch_sizes=(1,), threads=1, runs=5)
    trainer = quiet_trainer(
        tmp_path, max_epochs=2, callbacks=[GradualPruning(0.5, end_epoch=1), monitor]
    )
    with pytest.warns(UserWarning, match=r"LatencyMonitor, epoch \d, batch 1: .*varied") as seen:
        trainer.fit(small_module(), datamodule=digits)
    warned = [str(w.message) for w in seen if "LatencyMonitor, epoch" in str(w.message)]
    assert [m.split(",")[1].strip() for m in warned] == ["epoch 0", "epoch 1"]
    for row in monitor.history:
        p25, speedup, p75 = (
            row[f"latency/onnxruntime/b1_speedup{k}"] for k in ("_p25", "", "_p75")
        )
        assert 0 < p25 <= speedup <= p75
