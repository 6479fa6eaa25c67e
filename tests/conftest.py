"""Shared fixtures: tiny models and the bundled digits, so every test runs in seconds."""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lightning_accel import ClassificationModule, DigitsDataModule

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")


@pytest.fixture(autouse=True)
def _seed_and_threads() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)


@pytest.fixture
def digits() -> DigitsDataModule:
    data = DigitsDataModule(batch_size=64)
    data.setup()
    return data


class Holder(nn.Module):
    """A stand-in for a LightningModule: the network lives in ``self.model``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def small_module(**kwargs: object) -> ClassificationModule:
    """The small CNN sized for 8x8 digits."""
    return ClassificationModule("small_cnn", input_size=8, lr=0.05, **kwargs)  # type: ignore[arg-type]


def quiet_trainer(tmp_path: object = None, **kwargs: object) -> pl.Trainer:
    """A CPU Trainer without progress bars; no logger/checkpoints unless asked for."""
    settings: dict = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    settings.update(kwargs)
    return pl.Trainer(**settings)


@contextlib.contextmanager
def refused_before_training(
    trainer: pl.Trainer, module: nn.Module, match: str, error: type[Exception] = ValueError
) -> Iterator[None]:
    """Assert the block (a ``fit``) raises ``error`` matching ``match`` before the first step.

    The library's contract for input it can judge before training: one clear error, no
    optimizer step taken, and the module's state dict as it was (same keys, equal tensors).
    """
    before = copy.deepcopy(module.state_dict())
    with pytest.raises(error, match=match):
        yield
    assert trainer.global_step == 0
    after = module.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


# ----------------------------------------------------------------------------- bad-input tally
# Tests of bad input and faults carry @pytest.mark.bad_input("<kind>") (or a module-level
# pytestmark); every parametrized case counts once. The run ends with the tally by kind, the
# figure the README quotes.
BAD_INPUT_KINDS = (
    "constructor",
    "recipe",
    "cli",
    "checkpoint",
    "file system",
    "data",
    "distributed",
    "schedule",
    "request",
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"bad_input(kind): a bad input or fault the library must refuse; {BAD_INPUT_KINDS}",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        marker = item.get_closest_marker("bad_input")
        if marker is None:
            continue
        kind = marker.args[0] if marker.args else ""
        if kind not in BAD_INPUT_KINDS:
            raise pytest.UsageError(
                f"{item.nodeid}: bad_input kind {kind!r} not in {BAD_INPUT_KINDS}"
            )
        item.user_properties.append(("bad_input", kind))


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    tally: dict[str, dict[str, int]] = {}
    for outcome in ("passed", "failed", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            if getattr(report, "when", "call") != "call" and outcome != "skipped":
                continue
            for key, kind in getattr(report, "user_properties", []):
                if key == "bad_input":
                    tally.setdefault(kind, {}).setdefault(outcome, 0)
                    tally[kind][outcome] += 1
    if not tally:
        return
    total = sum(sum(v.values()) for v in tally.values())
    passed = sum(v.get("passed", 0) for v in tally.values())
    terminalreporter.section("bad inputs and faults tried")
    for kind in BAD_INPUT_KINDS:
        if kind in tally:
            counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(tally[kind].items()))
            terminalreporter.write_line(f"{kind:12s} {counts}")
    terminalreporter.write_line(f"{'all':12s} {total} tried, {passed} passed")
