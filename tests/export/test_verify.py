import numpy as np
import pytest

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


def test_shape_mismatch_and_unknown_precision_are_errors() -> None:
    with pytest.raises(
        ValueError, match=r"runtime output shape \(2, 5\) differs from PyTorch's \(2, 10\)"
    ):
        compare_outputs(np.zeros((2, 10)), np.zeros((2, 5)))
    with pytest.raises(ValueError, match="precision must be one of"):
        compare_outputs(np.zeros((2, 10)), np.zeros((2, 10)), "int4")
