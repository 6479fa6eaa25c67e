import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parents[1] / "examples"


def test_own_module_example_loads_pruned_checkpoints_three_ways(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "own_module_checkpoints.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "conv widths: [32, 32]" in result.stdout  # second conv 64 -> 32; the stem stays dense
    assert "same outputs: True" in result.stdout


def test_quantize_and_binarize_example_runs_on_integer_kernels(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "quantize_and_binarize.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "int8 kernels: {'QLinearConv': 4, 'QGemm': 1}" in result.stdout
    assert "binarized layers on: {'QLinearConv': 3}" in result.stdout
    assert "x smaller than fp32" in result.stdout
