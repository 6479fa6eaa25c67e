"""Under DDP (two CPU processes, gloo) every rank distills from the same teacher (contract 8)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parent / "ddp_run.py"


@pytest.mark.bad_input("distributed")
def test_every_rank_has_rank_zeros_teacher(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path)],
        check=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
        capture_output=True,
    )
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    weight = "model.0.weight"
    assert not torch.equal(rank0["initial"][weight], rank1["initial"][weight])  # built apart
    for name, value in rank0["teacher"].items():
        torch.testing.assert_close(rank1["teacher"][name], value, msg=name)
        torch.testing.assert_close(value, rank0["initial"][name], msg=name)  # rank 0's start
