"""Under DDP (two CPU processes, gloo) both ranks make the same pruning decisions (contract 8)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parents[1] / "ddp_pruning_run.py"


@pytest.mark.parametrize("mode", ["structured", "unstructured", "binarize"])
@pytest.mark.bad_input("distributed")
def test_ranks_end_with_identical_shapes_and_masks(tmp_path, mode: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path), mode],
        check=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
        capture_output=True,
    )
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0["shapes"] == rank1["shapes"]
    expected = 1.0 if mode == "binarize" else 0.5  # full binarization or the target sparsity
    assert rank0["sparsity"] == rank1["sparsity"] == pytest.approx(expected)
    for name, mask in rank0["masks"].items():
        assert torch.equal(mask, rank1["masks"][name]), name
    for name, weight in rank0["weights"].items():
        # DDP kept them in sync; with Binarize that includes the learned activation thresholds,
        # which start from each rank's own first batch unless averaged across ranks
        torch.testing.assert_close(weight, rank1["weights"][name], msg=name)
    if mode == "binarize":
        assert any("activation_shift" in name for name in rank0["weights"])
    params = sum(
        v.numel()
        for k, v in rank0["weights"].items()
        if not any(b in k for b in ("running", "num_batches", "progress", "shift_initialized"))
    )
    assert rank0["optimizer_params"] == params  # the rebuilt optimizer holds the pruned params
    if mode == "structured":
        assert rank0["shapes"]["model.4.weight"][0] == 16
