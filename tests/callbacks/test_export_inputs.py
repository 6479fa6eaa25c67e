"""The export hook feeds the model what its data holds: int64 token ids, dict batches."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lightning_accel import ExportOnFitEnd, LatencyMonitor
from lightning_accel.export.inputs import model_input, random_input, value_range
from tests.conftest import quiet_trainer, refused_before_training

VOCAB, LENGTH = 1000, 12


def _tokens(n: int = 256, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, LENGTH), generator=generator)
    return ids, ids[:, 0] % 10  # learnable: the class is the first token mod 10


class _Dicts(Dataset):
    def __init__(self, ids: torch.Tensor, labels: torch.Tensor) -> None:
        self.ids, self.labels = ids, labels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"tokens": self.ids[i], "label": self.labels[i]}


class TextClassifier(pl.LightningModule):
    """Embedding(1000, 32) → mean over tokens → Linear: a model whose input is int64 ids."""

    def __init__(self, dict_batches: bool = False) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, 32)
        self.head = nn.Linear(32, 10)
        self.dict_batches = dict_batches
        self.example_input_array = torch.zeros(1, LENGTH, dtype=torch.long)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(ids).mean(1))

    def _split(self, batch):
        return (batch["tokens"], batch["label"]) if self.dict_batches else batch

    def training_step(self, batch, batch_idx):
        ids, labels = self._split(batch)
        return F.cross_entropy(self(ids), labels)

    def validation_step(self, batch, batch_idx):
        ids, labels = self._split(batch)
        self.log("val/acc", (self(ids).argmax(1) == labels).float().mean())

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


def _loaders(dict_batches: bool):
    (train_ids, train_y), (val_ids, val_y) = _tokens(256, 0), _tokens(128, 1)
    kind = _Dicts if dict_batches else TensorDataset
    return DataLoader(kind(train_ids, train_y), 32), DataLoader(kind(val_ids, val_y), 64)


@pytest.mark.parametrize("dict_batches", [False, True], ids=["tuples", "dicts"])
def test_token_ids_export_verify_and_time_on_real_batches(tmp_path, dict_batches) -> None:
    export = ExportOnFitEnd(
        tmp_path / "export",
        batch_sizes=(1, 8),
        latency_runs=3,
        threads=1,
        input_key="tokens" if dict_batches else None,
    )
    monitor = LatencyMonitor(runs=2, threads=1)
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[export, monitor])
    trainer.fit(TextClassifier(dict_batches), *_loaders(dict_batches))
    summary = json.loads((tmp_path / "export" / "summary.json").read_text())
    verification = summary["backends"]["onnxruntime"]["verification"]
    assert verification["passed"] and verification["samples"] == 128  # every real batch
    assert verification["top1_agreement"] == 1.0
    assert summary["backends"]["onnxruntime"]["latency"]["8"]["model_ms"] > 0
    assert monitor.history and monitor.history[0]["latency/onnxruntime/b1_ms"] > 0


class _PassesInputsOn(TextClassifier):
    """A wrapper-style forward, ``forward(self, *inputs)``, passing its inputs on."""

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return super().forward(*inputs)


def test_a_forward_taking_star_inputs_exports_with_a_dynamic_batch(tmp_path) -> None:
    # torch.export matches dynamic_shapes to forward's parameters: one entry per input failed
    # for `*inputs` ("IndexError: list index out of range" after training).
    export = ExportOnFitEnd(tmp_path / "export", batch_sizes=(1, 8), latency_runs=2, threads=1)
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=2, callbacks=[export])
    trainer.fit(_PassesInputsOn(), *_loaders(dict_batches=False))
    summary = json.loads((tmp_path / "export" / "summary.json").read_text())
    verification = summary["backends"]["onnxruntime"]["verification"]
    assert verification["passed"] and verification["samples"] == 128
    assert summary["backends"]["onnxruntime"]["latency"]["8"]["model_ms"] > 0


class _LogitsAndFeatures(TextClassifier):
    def forward(self, ids: torch.Tensor):  # type: ignore[no-untyped-def, override]
        features = self.embedding(ids).mean(1)
        return {"logits": self.head(features), "features": features}


@pytest.mark.bad_input("data")
def test_a_forward_returning_several_outputs_is_refused_before_training(tmp_path) -> None:
    # Was refused after training: "ExportOnFitEnd failed: 'dict' object has no attribute 'numpy'".
    module = _LogitsAndFeatures()
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[ExportOnFitEnd(tmp_path / "e")])
    with refused_before_training(
        trainer,
        module,
        r"models whose forward returns one tensor; _LogitsAndFeatures\.forward returns a dict "
        r"\{'logits': tensor \(2, 10\), 'features': tensor \(2, 32\)\}\. Return one tensor",
    ):
        trainer.fit(module, *_loaders(dict_batches=False))


@pytest.mark.bad_input("data")
def test_dict_batches_without_input_key_are_refused_before_training(tmp_path) -> None:
    module = TextClassifier(dict_batches=True)
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[ExportOnFitEnd(tmp_path / "e")])
    with refused_before_training(
        trainer, module, r"batches are dicts \(keys \['label', 'tokens'\]\): pass ExportOnFitEnd"
    ):
        trainer.fit(module, *_loaders(dict_batches=True))
    with pytest.raises(ValueError, match=r"input_key='image'\) is not a key of the batches"):
        model_input({"tokens": torch.zeros(1)}, "image")
    with pytest.raises(ValueError, match="input_key must be a dict key"):
        ExportOnFitEnd(input_key=3)  # type: ignore[arg-type]


@pytest.mark.bad_input("data")
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=["float64", "bfloat16"])
@pytest.mark.parametrize(
    ("make", "openvino"),
    [
        (lambda d: ExportOnFitEnd(d, threads=1), "backends=\\('openvino',\\)"),
        (lambda d: LatencyMonitor(runs=2, threads=1), "backend='openvino'"),
    ],
    ids=["export", "latency"],
)
def test_a_float_dtype_the_runtime_cannot_run_is_refused_before_training(
    tmp_path, dtype, make, openvino
) -> None:
    # Was: ONNX Runtime's "NOT_IMPLEMENTED: Could not find an implementation for Conv" after
    # training (ExportOnFitEnd), or mid-fit at the first measurement (LatencyMonitor).
    module = TextClassifier().to(dtype)
    callback = make(tmp_path / "export")
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[callback])
    name = str(dtype).removeprefix("torch.")
    fix = "" if dtype == torch.bfloat16 else f".*or use {openvino}"
    with refused_before_training(
        trainer,
        module,
        rf"{type(callback).__name__}: parameter 'embedding.weight' is {name}, and onnxruntime "
        rf"cannot run {name} convolutions.*Train in float32{fix}",
    ):
        trainer.fit(module, *_loaders(dict_batches=False))


def test_random_inputs_follow_the_dtype_and_the_range_seen() -> None:
    ids = torch.tensor([[3, 7], [5, 9]])
    assert value_range([ids]) == (3, 9) and value_range([torch.randn(2)]) is None
    drawn = random_input(ids, (64, 2), value_range([ids]))
    assert drawn.dtype == torch.int64 and int(drawn.min()) >= 3 and int(drawn.max()) <= 9
    assert random_input(torch.zeros(1), (4, 3)).dtype == torch.float32
