"""`fit --recipe small_cnn --quick --target-sparsity 0.3 --train-size 500`: every flag applied."""

import csv
from pathlib import Path

import pytest
import yaml

from lightning_accel.cli.main import main
from lightning_accel.data.fashion_mnist import DEBIAN_DIR

pytestmark = pytest.mark.skipif(
    not Path(DEBIAN_DIR).is_dir(), reason="Fashion-MNIST is not installed (dataset-fashion-mnist)"
)


def test_a_quick_recipe_run_applies_the_flags_and_records_its_configuration(tmp_path) -> None:
    out = tmp_path / "runs"
    argv = ["fit", "--recipe", "small_cnn", "--quick", "--target-sparsity", "0.3"]
    argv += ["--train-size", "500", "--threads", "1", "--output-dir", str(out)]
    assert main(argv) == 0
    run = out / "small_cnn"
    config = yaml.safe_load((run / "config.yaml").read_text())  # as LightningCLI saves it
    pruning = config["trainer"]["callbacks"][0]["init_args"]
    assert pruning["target_sparsity"] == 0.3 and config["data"]["init_args"]["train_size"] == 500
    assert config["trainer"]["max_epochs"] == 2 and pruning["end_epoch"] == 1  # scaled by --quick
    assert "--quick" not in (run / "config.yaml").read_text().splitlines()[0]
    (hparams_file,) = run.glob("**/hparams.yaml")
    hparams = yaml.safe_load(hparams_file.read_text())
    assert hparams["callbacks.pruning.target_sparsity"] == 0.3
    assert hparams["data.train_size"] == 500 and hparams["recipe.name"] == "small_cnn"
    with open(run / "export" / "epochs.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    assert float(rows[-1]["model/sparsity"]) == pytest.approx(0.3, abs=0.03)  # measured, not 0.8
