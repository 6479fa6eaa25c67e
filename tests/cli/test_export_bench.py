"""`lightning-accel export CHECKPOINT` and `lightning-accel bench MODEL.onnx`."""

import copy
import json
import re
from pathlib import Path

import lightning.pytorch as pl
import onnx
import pytest
import torch

from lightning_accel import ClassificationModule, FashionMNISTDataModule, GradualPruning
from lightning_accel.cli.main import main
from lightning_accel.export.onnx import to_onnx
from tests.conftest import quiet_trainer


@pytest.fixture(scope="module")
def pruned_checkpoint(tmp_path_factory) -> Path:
    """A small CNN on 28×28 Fashion-MNIST, half its channels pruned, saved by Lightning."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("pruned")
    module = ClassificationModule("small_cnn", lr=0.05)
    trainer = quiet_trainer(
        folder,
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=1,
        callbacks=[GradualPruning(0.5, mode="structured", start_epoch=0, end_epoch=1)],
    )
    trainer.fit(module, datamodule=FashionMNISTDataModule(train_size=512, val_size=256))
    path = folder / "pruned.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_export_rebuilds_the_pruned_checkpoint_verifies_on_real_images_and_times_the_baseline(
    pruned_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "export"
    code = main(
        ["export", str(pruned_checkpoint), "--output-dir", str(out), "--batch-sizes", "1", "8"]
        + ["--runs", "5", "--threads", "2"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "| onnxruntime | 8 |" in captured.out and "passed" in captured.out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verification_inputs"] == "fashion-mnist test"
    assert summary["model"]["params"] < 0.5 * summary["baseline"]["params"]
    ort = summary["backends"]["onnxruntime"]
    assert ort["verification"]["passed"] and ort["verification"]["samples"] == 256
    assert set(ort["latency"]) == {"1", "8"}
    assert (out / "model.onnx").is_file() and (out / "baseline.onnx").is_file()
    assert "exporting the model to ONNX" in captured.err  # progress lines go to stderr


def test_export_with_tensorrt_missing_exits_1_after_writing_the_onnx_file(
    pruned_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present here; this test covers machines without TensorRT")
    out = tmp_path / "export"
    code = main(
        ["export", str(pruned_checkpoint), "--output-dir", str(out), "--backend", "tensorrt"]
        + ["--no-baseline"]
    )
    assert code == 1
    assert "TensorRT" in capsys.readouterr().err
    assert (out / "model.onnx").is_file() and (out / "summary.json").is_file()


@pytest.mark.bad_input("cli")
def test_export_errors_exit_2_and_name_the_fix(tmp_path: Path, capsys) -> None:
    assert main(["export", str(tmp_path / "missing.ckpt")]) == 2
    assert "No checkpoint at" in capsys.readouterr().err

    garbage = tmp_path / "notes.ckpt"
    garbage.write_text("not a checkpoint")
    assert main(["export", str(garbage)]) == 2
    assert "is not a readable PyTorch checkpoint" in capsys.readouterr().err
    assert garbage.read_text() == "not a checkpoint"  # left as it was

    not_lightning = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, not_lightning)
    assert main(["export", str(not_lightning)]) == 2
    assert "holds no 'state_dict'" in capsys.readouterr().err

    assert main(["export", str(not_lightning), "--module", "no.such.Module"]) == 2
    assert "Cannot import the module class 'no.such.Module'" in capsys.readouterr().err

    assert main(["export", str(not_lightning), "--module", "torch.nn.Linear"]) == 2
    assert "'torch.nn.Linear' is not a LightningModule class" in capsys.readouterr().err


def test_export_of_a_custom_module_checkpoint_says_how_to_export_from_python(
    tmp_path: Path, capsys
) -> None:
    module = ClassificationModule(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)))
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(module, datamodule=FashionMNISTDataModule(train_size=64, val_size=0))
    path = tmp_path / "custom.ckpt"
    trainer.save_checkpoint(path)
    assert main(["export", str(path)]) == 2
    assert "load_from_checkpoint(path, model=YourNet())" in capsys.readouterr().err


def test_bench_times_a_model_against_its_baseline(tmp_path: Path, capsys) -> None:
    wide = torch.nn.Sequential(
        torch.nn.Conv2d(1, 64, 3), torch.nn.ReLU(), torch.nn.Conv2d(64, 64, 3)
    )
    narrow = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3)
    )
    example = torch.randn(1, 1, 28, 28)
    to_onnx(wide.eval(), example, tmp_path / "wide.onnx")
    to_onnx(narrow.eval(), example, tmp_path / "narrow.onnx")
    code = main(
        ["bench", str(tmp_path / "narrow.onnx"), "--baseline", str(tmp_path / "wide.onnx")]
        + ["--batch-sizes", "16", "--runs", "20", "--threads", "2"]
    )
    out = capsys.readouterr().out
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith("| onnxruntime | 16 |"))
    speedup = float(row.split("|")[-2].split("x")[0])
    assert speedup > 2  # 64 -> 8 channels: far fewer MACs, measured in one run


@pytest.mark.bad_input("cli")
def test_bench_errors_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["bench", str(tmp_path / "missing.onnx")]) == 2
    assert "No ONNX model at" in capsys.readouterr().err
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 not protobuf")
    assert main(["bench", str(junk)]) == 2
    assert "is not an ONNX model" in capsys.readouterr().err
    empty = tmp_path / "empty.onnx"
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])), str(empty))
    assert main(["bench", str(empty)]) == 2
    assert "its graph has no nodes" in capsys.readouterr().err
    assert main(["bench", str(junk), "--runs", "0"]) == 2
    assert "--batch-sizes and --runs must be >= 1" in capsys.readouterr().err


class NoExampleInput(pl.LightningModule):
    """A module that never sets example_input_array."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(64, width)


def test_export_of_a_module_without_example_input_names_the_fix(tmp_path: Path, capsys) -> None:
    path = tmp_path / "plain.ckpt"
    trainer = pl.Trainer(max_epochs=0, logger=False, enable_checkpointing=False)
    trainer.strategy.connect(NoExampleInput())
    trainer.save_checkpoint(path)
    module = f"{__name__}.NoExampleInput"
    assert main(["export", str(path), "--module", module, "--output-dir", str(tmp_path / "o")]) == 2
    assert "sets no example_input_array" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before anything was written


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory) -> dict:
    """The contents of an untrained small CNN's checkpoint (8x8 inputs), saved by Lightning."""
    path = tmp_path_factory.mktemp("small") / "small.ckpt"
    trainer = pl.Trainer(
        max_epochs=0, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.strategy.connect(ClassificationModule("small_cnn", input_size=8))
    trainer.save_checkpoint(path)
    return torch.load(path, weights_only=True)


def _set(*keys: str, value: object):
    """An edit that sets ``checkpoint[keys[0]]...[keys[-1]] = value``."""

    def edit(checkpoint: dict) -> None:
        for key in keys[:-1]:
            checkpoint = checkpoint[key]
        checkpoint[keys[-1]] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_set("lightning_accel", value=[]), r"checkpoint\['lightning_accel'\] must be a mapping"),
        (
            _set("lightning_accel", "surgery", value={}),
            r"checkpoint\['lightning_accel'\]\['surgery'\] must be a list; got dict",
        ),
        (
            _set("lightning_accel", "surgery", value=[["channel_pruning"]]),
            r"\['surgery'\]\[0\] must be a mapping with a 'kind' string",
        ),
        (_set("state_dict", value=[1]), r"checkpoint\['state_dict'\] must be a mapping"),
        (
            _set("hyper_parameters", value=[1]),
            r"checkpoint\['hyper_parameters'\] must be a mapping",
        ),
        (
            _set("hyper_parameters", "model", value={"name": "small_cnn"}),
            r"invalid, so ClassificationModule cannot be rebuilt: model must be a zoo name .* or "
            r"an nn.Module; got dict",
        ),
        (
            _set("hyper_parameters", "input_size", value="x"),
            r"invalid, .*: input_size must be an integer >= 1; got 'x'",
        ),
        (
            _set("hyper_parameters", "lr", value=float("nan")),
            r"invalid, .*: lr must be a finite number > 0; got nan",
        ),
        (_set("hyper_parameters", "input_shape", value="x"), r"unexpected keyword .*'input_shape'"),
    ],
    ids=[
        "section-list",
        "surgery-dict",
        "entry-list",
        "state-dict-list",
        "hparams-list",
        "model-dict",
        "input-size-str",
        "lr-nan",
        "unknown-hparam",
    ],
)
@pytest.mark.bad_input("checkpoint")
def test_export_of_a_malformed_checkpoint_exits_2_naming_the_file_and_the_part(
    small_checkpoint: dict, edit, message: str, tmp_path: Path, capsys
) -> None:
    crafted = copy.deepcopy(small_checkpoint)
    edit(crafted)
    path = tmp_path / "crafted.ckpt"
    torch.save(crafted, path)
    code = main(["export", str(path), "--output-dir", str(tmp_path / "o"), "--no-baseline"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(path) in err
    assert re.search(message, err), err
    assert not (tmp_path / "o").exists()  # refused before anything was written


@pytest.mark.bad_input("checkpoint")
def test_a_pruned_checkpoint_without_its_compression_history_says_so(
    pruned_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    contents = torch.load(pruned_checkpoint, weights_only=True)
    del contents["lightning_accel"]  # as a module without CompressionCheckpointMixin saves it
    path = tmp_path / "no_history.ckpt"
    torch.save(contents, path)
    code = main(["export", str(path), "--output-dir", str(tmp_path / "o"), "--no-baseline"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2, err
    assert f"{path}: Checkpoint tensor" in err
    assert "comes from another architecture. Build the model it was trained with." in err
    assert "saved without its compression history" in err
    assert "CompressionCheckpointMixin" in err


@pytest.mark.bad_input("file system")
def test_export_into_a_fit_s_export_folder_sets_the_fit_s_files_aside(
    pruned_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    from filelock import FileLock

    out = tmp_path / "exp"
    out.mkdir()
    (out / "baseline.onnx").write_bytes(b"a fit's baseline")  # an earlier run's files
    (out / "summary.json").write_text(json.dumps({"run": {"id": "fit-1", "files": []}}))
    with FileLock(out / ".lightning_accel.lock", timeout=0):  # a fit exporting there now
        code = main(["export", str(pruned_checkpoint), "--output-dir", str(out), "--no-baseline"])
        assert code == 2 and "another run is exporting into this folder" in capsys.readouterr().err
    code = main(["export", str(pruned_checkpoint), "--output-dir", str(out), "--no-baseline"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert (out / "earlier" / "fit-1" / "baseline.onnx").read_bytes() == b"a fit's baseline"
    assert not (out / "baseline.onnx").exists()  # nothing left beside the new model
    summary = json.loads((out / "summary.json").read_text())
    listed = {entry["path"] for entry in summary["run"]["files"]}
    assert "model.onnx" in listed and not any(p.startswith("earlier") for p in listed)
    assert "baseline not measured" in captured.out
