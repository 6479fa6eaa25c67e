"""W&B credentials found as W&B finds them; callback settings recorded; history CSV; charts."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_accel.tracking.history import merge_epoch_rows, write_epoch_csv

KEY = "0123456789012345678901234567890123456789"


def _has_credentials(env: dict[str, str]) -> bool:
    # A fresh process: W&B reads its settings (WANDB_BASE_URL) once per process.
    code = (
        "from lightning_accel.tracking.wandb_logging import has_wandb_credentials;"
        "print(has_wandb_credentials())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    return out.stdout.strip() == "True"


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    return {**env, "HOME": str(tmp_path), "NETRC": str(tmp_path / "netrc")}


def test_a_self_hosted_server_with_a_netrc_entry_counts_as_credentials(tmp_path, clean_env):
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine wandb.example.org\n  login user\n  password {KEY}\n")
    netrc.chmod(0o600)
    assert _has_credentials({**clean_env, "WANDB_BASE_URL": "https://wandb.example.org"})
    # the same entry is no credential for another server
    assert not _has_credentials({**clean_env, "WANDB_BASE_URL": "https://other.example.org"})
    assert _has_credentials({**clean_env, "WANDB_API_KEY": KEY})


def test_epoch_rows_merge_on_epoch_and_the_csv_has_one_row_per_epoch(tmp_path: Path) -> None:
    trainer_rows = [{"epoch": 0, "val/acc": 0.5}, {"epoch": 1, "val/acc": 0.7}]
    monitor_rows = [{"epoch": 1, "latency/onnxruntime/b1_ms": 0.2}, {"step": 3}]
    rows = merge_epoch_rows(trainer_rows, monitor_rows)
    path = write_epoch_csv(rows, tmp_path / "epochs.csv")
    with open(path) as f:
        table = list(csv.DictReader(f))
    assert [r["epoch"] for r in table] == ["0", "1"]
    assert list(table[0]) == ["epoch", "latency/onnxruntime/b1_ms", "val/acc"]
    assert table[0]["latency/onnxruntime/b1_ms"] == "" and table[1]["val/acc"] == "0.7"


def test_without_matplotlib_there_is_one_clear_note(monkeypatch) -> None:
    import importlib.util

    from lightning_accel.tracking import plots

    assert plots.plots_available() is None  # installed here (the plots extra)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    note = plots.plots_available()
    assert note is not None and "pip install 'lightning-accel[plots]'" in note


def test_a_sweep_pareto_chart_is_a_png(tmp_path: Path) -> None:
    from lightning_accel.sweeps.results import Trial, mark_pareto_front
    from lightning_accel.tracking.plots import plot_pareto

    trials = [
        Trial(0, {}, result={"sweep/accuracy": 0.9, "sweep/latency_ms": 2.0}),
        Trial(1, {}, result={"sweep/accuracy": 0.8, "sweep/latency_ms": 1.0}),
        Trial(2, {}, result={"sweep/accuracy": 0.7, "sweep/latency_ms": 3.0}),
    ]
    mark_pareto_front(trials)
    path = plot_pareto(trials, tmp_path / "pareto.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_callback_settings_name_every_argument_under_recipe_keys() -> None:
    from lightning_accel import ExportOnFitEnd, GradualPruning
    from lightning_accel.tracking.run_config import callback_settings

    settings = callback_settings([GradualPruning(0.3, mode="unstructured"), ExportOnFitEnd("x")])
    assert settings["callbacks.pruning.target_sparsity"] == 0.3
    assert settings["callbacks.pruning.mode"] == "unstructured"
    assert settings["callbacks.export.batch_sizes"] == [1, 64]  # kept in its settings object
    assert settings["callbacks.export.latency_runs"] == 50


def test_a_lone_compression_callback_records_its_settings_in_hparams(tmp_path, digits) -> None:
    import yaml
    from lightning.pytorch.loggers import CSVLogger

    from lightning_accel import GradualPruning
    from tests.conftest import quiet_trainer, small_module

    logger = CSVLogger(tmp_path, name="run")
    trainer = quiet_trainer(
        tmp_path,
        max_epochs=2,
        logger=logger,
        limit_train_batches=2,
        limit_val_batches=1,
        callbacks=[GradualPruning(0.3, mode="unstructured", end_epoch=1)],
    )
    trainer.fit(small_module(), datamodule=digits)
    hparams = yaml.safe_load((tmp_path / "run" / "version_0" / "hparams.yaml").read_text())
    assert hparams["callbacks.pruning.target_sparsity"] == 0.3  # no export/monitor callback
    assert hparams["callbacks.pruning.mode"] == "unstructured"
