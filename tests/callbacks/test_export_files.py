"""ExportOnFitEnd and its folder: one run at a time, earlier runs set aside, honest checkpoints."""

import io
import json
import os
import re

import pytest
import torch
from filelock import FileLock, Timeout
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins import TorchCheckpointIO
from torch import nn

from lightning_accel import ClassificationModule, ExportOnFitEnd
from tests.conftest import quiet_trainer, small_module

LOCK = ".lightning_accel.lock"


def _linear_module() -> ClassificationModule:
    """Another model than the small CNN: a different file, a different summary."""
    return ClassificationModule(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), input_size=8)


def _fit(module, data, tmp_path, callbacks, **kwargs):
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=callbacks, **kwargs)
    trainer.fit(module, datamodule=data)
    return trainer


def _summary(path):
    def refuse(constant: str) -> None:
        raise AssertionError(f"summary.json holds {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.bad_input("file system")
def test_second_run_sets_the_first_runs_files_aside_and_lists_only_its_own(
    digits, tmp_path
) -> None:
    out = tmp_path / "export"
    first = ExportOnFitEnd(out, batch_sizes=(1,), latency_runs=3, threads=1)
    _fit(small_module(), digits, tmp_path, [first])
    first_run = _summary(out / "summary.json")["run"]
    first_onnx = (out / "model.onnx").read_bytes()
    assert (out / "baseline.onnx").is_file()

    second = ExportOnFitEnd(out, benchmark=False, threads=1)
    earlier = out / "earlier" / first_run["id"]
    with pytest.warns(UserWarning, match=r"held an earlier run's export files .*moved them to "):
        _fit(_linear_module(), digits, tmp_path, [second])

    # the first run's files, together and untouched, under earlier/<its run id>/
    for name in ("last.ckpt", "model.onnx", "baseline.onnx", "summary.json", "manifest.json",
                 "epochs.csv"):  # fmt: skip
        assert (earlier / name).is_file(), name
    assert (earlier / "onnxruntime" / "model.ort.onnx").is_file()
    assert (earlier / "model.onnx").read_bytes() == first_onnx
    assert _summary(earlier / "summary.json")["run"] == first_run
    # the second run's folder: its files only, no stale baseline beside its model
    # matplotlib is in the dev set-up; nothing was timed, so no accuracy-vs-latency chart
    charts = ["epochs.png"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [LOCK, "earlier", "epochs.csv", "last.ckpt", "manifest.json", "model.onnx"]
        + ["onnxruntime", "summary.json", *charts]
    )
    summary = _summary(out / "summary.json")
    run = summary["run"]
    assert run["id"] != first_run["id"] and run["started"] <= run["finished"]
    assert run["files"] == [
        {"path": name, "bytes": (out / name).stat().st_size}
        for name in sorted(
            [*charts, "epochs.csv", "last.ckpt", "manifest.json", "model.onnx"]
            + ["onnxruntime/model.ort.onnx"]
        )
    ]
    assert "baseline" not in summary and summary == second.summary
    json.dumps(summary, allow_nan=False)
    state = torch.load(out / "last.ckpt", weights_only=True)["state_dict"]
    assert state["model.1.weight"].shape == (10, 64)  # the second model's checkpoint, whole
    free = FileLock(out / LOCK, timeout=0)
    free.acquire()  # both runs let the folder go
    free.release()


@pytest.mark.bad_input("file system")
def test_run_into_a_folder_another_run_holds_is_refused_in_setup(digits, tmp_path) -> None:
    out = tmp_path / "export"
    out.mkdir()
    other_run = FileLock(out / LOCK, timeout=0)
    other_run.acquire()
    module = small_module()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    try:
        with pytest.raises(
            ValueError,
            match=r"dirpath='.*export'\): another run is exporting into this folder now .*"
            r"Pass another dirpath, e.g. dirpath='.*export-2'",
        ):
            _fit(module, digits, tmp_path, [ExportOnFitEnd(out, threads=1)])
        assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
        assert sorted(p.name for p in out.iterdir()) == [LOCK]
        with pytest.raises(Timeout):  # the refused run did not release the other run's lock
            FileLock(out / LOCK, timeout=0).acquire()
    finally:
        other_run.release()


class _LosesWrites(TorchCheckpointIO):
    """Reports success and writes nothing, as Lightning does when a folder turns read-only."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        del checkpoint, path, storage_options


class _TruncatesWrites(TorchCheckpointIO):
    """Writes the first half of the checkpoint, as a full disk would."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])


class _Sabotage(Callback):
    """After setup has checked the folder, break it the way the case says."""

    def __init__(self, out, case: str) -> None:
        self.out, self.case = out, case

    def on_train_start(self, trainer, pl_module) -> None:
        if self.case == "read-only":
            os.chmod(self.out, 0o500)
            if os.access(self.out, os.W_OK):
                os.chmod(self.out, 0o700)
                pytest.skip("running as root: chmod does not stop writes here")
        elif self.case == "last.ckpt is a directory":
            (self.out / "last.ckpt").mkdir()


@pytest.mark.parametrize(
    ("case", "plugins", "reason"),
    [
        ("read-only", [], r"nothing was written"),
        ("lost", [_LosesWrites()], r"nothing was written"),
        ("truncated", [_TruncatesWrites()], r"the file written \(\d+ bytes\) is incomplete"),
        (
            "last.ckpt is a directory",
            [],
            r"the complete file could not be renamed onto it \(Is a directory\)",
        ),
    ],
)
@pytest.mark.bad_input("file system")
def test_checkpoint_that_was_not_written_is_never_called_safe(
    digits, tmp_path, case, plugins, reason
) -> None:
    out = tmp_path / "export"
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}")
    callbacks = [ExportOnFitEnd(out, benchmark=False, threads=1), checkpoints, _Sabotage(out, case)]
    module = small_module()
    trainer = quiet_trainer(
        tmp_path, max_epochs=1, callbacks=callbacks, plugins=plugins, enable_checkpointing=True
    )
    try:
        with pytest.raises(RuntimeError) as err:
            trainer.fit(module, datamodule=digits)
    finally:
        os.chmod(out, 0o700)
    message = str(err.value)
    assert "safe in" not in message
    assert f"could not write the checkpoint {out / 'last.ckpt'}: " in message
    assert "pass ExportOnFitEnd(dirpath=...) a folder you can write to" in message
    assert "trainer.save_checkpoint('<a writable folder>/last.ckpt')" in message
    assert re.search(reason, message), message
    assert not (out / "last.ckpt").is_file() and not (out / "model.onnx").exists()
    free = FileLock(out / LOCK, timeout=0)
    free.acquire()  # the failed run let the folder go
    free.release()
    if case == "last.ckpt is a directory":
        # what the message promises: the ModelCheckpoint file, the staged copy, the live model
        assert str(tmp_path / "ckpt" / "epoch=0.ckpt") in message
        kept = re.search(r"A complete checkpoint was written to (\S+unsaved-\S+\.ckpt):", message)
        assert kept and ClassificationModule.load_from_checkpoint(kept.group(1))
        trainer.save_checkpoint(tmp_path / "recovered.ckpt")
        recovered = ClassificationModule.load_from_checkpoint(tmp_path / "recovered.ckpt")
        x = torch.randn(2, 1, 8, 8)
        with torch.no_grad():
            torch.testing.assert_close(recovered.eval()(x), module.eval()(x))


class _Diverge(Callback):
    """Sets the classifier's weights to NaN after training, as a diverged run leaves them."""

    def on_train_end(self, trainer, pl_module) -> None:
        with torch.no_grad():
            pl_module.model[-1].weight.fill_(float("nan"))


@pytest.mark.bad_input("data")
def test_non_finite_model_fails_verification_naming_pytorch_and_summary_stays_json(
    digits, tmp_path
) -> None:
    out = tmp_path / "export"
    export = ExportOnFitEnd(out, benchmark=False, threads=1)
    with pytest.raises(
        RuntimeError,
        match=r"(?s)onnxruntime verification FAILED \(fp32, \d+ samples\): the PyTorch model "
        r"produced non-finite outputs .*safe in .*last.ckpt",
    ):
        _fit(_linear_module(), digits, tmp_path, [export, _Diverge()])
    summary = _summary(out / "summary.json")
    verification = summary["backends"]["onnxruntime"]["verification"]
    assert not verification["passed"] and verification["max_abs_error"] is None
    json.dumps(summary, allow_nan=False)
