"""The package stays lint-clean and type-clean: ruff (lint and format) and mypy."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "lightning_accel", "tests", "benchmarks", "examples"],
        ["ruff", "format", "--check", "lightning_accel", "tests", "benchmarks", "examples"],
        ["mypy", "lightning_accel"],
    ],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_tool_passes(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
