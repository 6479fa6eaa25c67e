import json

import numpy as np
import pytest
import torch
from torch import nn

from lightning_accel.export.compare import ComparisonSettings, export_and_compare
from lightning_accel.export.verify import TOLERANCES, compare_outputs


def test_identical_outputs_pass_at_fp32() -> None:
    logits = np.random.default_rng(0).standard_normal((64, 10)).astype(np.float32)
    result = compare_outputs(logits, logits + 1e-6, "fp32")
    assert result.passed and result.top1_agreement == 1.0 and result.samples == 64


def test_int8_tolerates_small_logit_noise_but_not_flipped_predictions() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((200, 10)).astype(np.float32) * 4
    noisy = logits + rng.uniform(-0.05, 0.05, logits.shape).astype(np.float32)
    assert not compare_outputs(logits, noisy, "fp32").passed  # too loose for fp32
    flipped = logits.copy()
    flipped[:10] = -flipped[:10]  # 5% of predictions change
    result = compare_outputs(logits, flipped, "int8")
    assert not result.passed and result.top1_agreement <= 0.96
    assert "FAILED" in result.describe() and "need >= 99.0%" in result.describe()


def test_tolerances_are_ordered_by_precision() -> None:
    assert TOLERANCES["fp32"].max_abs < TOLERANCES["fp16"].max_abs < TOLERANCES["int8"].max_abs


@pytest.mark.bad_input("data")
def test_shape_mismatch_and_unknown_precision_are_errors() -> None:
    with pytest.raises(
        ValueError, match=r"runtime output shape \(2, 5\) differs from PyTorch's \(2, 10\)"
    ):
        compare_outputs(np.zeros((2, 10)), np.zeros((2, 5)))
    with pytest.raises(ValueError, match="precision must be one of"):
        compare_outputs(np.zeros((2, 10)), np.zeros((2, 10)), "int4")


@pytest.mark.bad_input("data")
def test_non_finite_pytorch_outputs_fail_and_blame_the_model_not_the_runtime() -> None:
    logits = np.random.default_rng(0).standard_normal((8, 10)).astype(np.float32)
    logits[3, 2] = np.nan
    result = compare_outputs(logits, logits.copy(), "fp32")
    assert not result.passed
    assert result.max_abs_error is None and result.relative_max_error is None
    assert "the PyTorch model produced non-finite outputs (1 of 80" in result.describe()
    assert "logit error" not in result.describe()  # no "max logit error nan"
    json.dumps(result.as_dict(), allow_nan=False)


@pytest.mark.bad_input("data")
def test_non_finite_runtime_outputs_fail_and_blame_the_runtime() -> None:
    logits = np.random.default_rng(0).standard_normal((8, 10)).astype(np.float32)
    candidate = logits.copy()
    candidate[0] = np.inf
    result = compare_outputs(logits, candidate, "fp16")
    assert not result.passed
    assert "the runtime produced non-finite outputs (10 of 80" in result.describe()
    json.dumps(result.as_dict(), allow_nan=False)


@pytest.mark.bad_input("data")
def test_export_of_a_nan_model_fails_verification_and_its_summary_is_valid_json(tmp_path) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    with torch.no_grad():
        model[1].weight.fill_(float("nan"))
    settings = ComparisonSettings(benchmark=False, threads=1)
    outcome = export_and_compare(model, None, [torch.randn(4, 1, 4, 4)], tmp_path, settings)
    (mismatch,) = outcome.mismatches
    assert mismatch.startswith("onnxruntime verification FAILED (fp32, 4 samples): the PyTorch")
    assert "produced non-finite outputs (12 of 12 values" in mismatch
    assert "logit error" not in mismatch
    json.dumps(outcome.summary, allow_nan=False)
