"""compare_latency: candidate and baseline timed in alternating rounds, the ratio's spread."""

import time

import numpy as np
import pytest

from lightning_accel.backends.timing import (
    RATIO_SPREAD_LIMIT,
    compare_latency,
    spread_warning,
    summarize_times,
    time_calls,
    timing_batch,
)


def _sleeper(seconds: float, log: list[str] | None = None, name: str = ""):
    def call() -> None:
        if log is not None:
            log.append(name)
        time.sleep(seconds)

    return call


def test_rounds_alternate_abba_and_the_ratio_is_measured() -> None:
    log: list[str] = []
    result = compare_latency(
        _sleeper(0.002, log, "A"), _sleeper(0.006, log, "B"), runs=8, rounds=4, warmup=1
    )
    timed = log[2:]  # after one warm-up call each
    blocks = [timed[i] for i in range(0, len(timed), 2)]  # first call of each per-round block
    assert blocks == ["A", "B", "B", "A", "A", "B", "B", "A"]  # ABBA: drift lands on both
    assert result.rounds == 4 and result.model.runs == 8 and result.baseline.runs == 8
    assert 2.0 < result.speedup < 3.6  # 6 ms / 2 ms, measured (sleep overshoots a little)
    assert result.speedup_p25 <= result.speedup <= result.speedup_p75


def test_drift_during_timing_does_not_land_on_one_side() -> None:
    # The same work gets slower as the machine fills up: timed one side after the other,
    # the later side looks slower; in alternating rounds both see the same drift.
    calls = [0]

    def drifting() -> None:
        calls[0] += 1
        time.sleep(0.001 * (1 + calls[0] / 20))

    sequential = np.median(time_calls(drifting, 0, 40)) / np.median(time_calls(drifting, 0, 40))
    calls[0] = 0
    alternating = compare_latency(drifting, drifting, runs=40, rounds=10, warmup=0)
    assert sequential < 0.8  # one-after-the-other: a "speedup" of the same function
    assert 0.8 < alternating.speedup < 1.25


def test_a_wide_spread_is_flagged_with_the_rule() -> None:
    fast, slow = summarize_times([1.0] * 10, 1, 1), summarize_times([1.0] * 8 + [5.0] * 2, 1, 1)
    assert spread_warning(fast, fast, 1.98, 2.0, 2.02) is None
    ratio_warning = spread_warning(fast, fast, 1.5, 2.0, 2.5)
    assert ratio_warning is not None and "1.50x-2.50x between rounds" in ratio_warning
    assert f"IQR over {RATIO_SPREAD_LIMIT:.0%}" in ratio_warning
    tail = spread_warning(fast, slow, 2.0, 2.0, 2.0)
    assert tail is not None and "baseline's p90" in tail and "do not trust" in tail


def test_compiled_models_are_run_on_the_given_batch() -> None:
    class Model:
        def __init__(self) -> None:
            self.shapes: list[tuple[int, ...]] = []

        def run(self, inputs: np.ndarray) -> np.ndarray:
            self.shapes.append(inputs.shape)
            return inputs

    model, baseline = Model(), Model()
    batch = timing_batch(np.arange(6, dtype=np.int64).reshape(2, 3), 5)
    assert batch.shape == (5, 3) and batch.dtype == np.int64 and batch[4, 0] == 0  # rows repeat
    result = compare_latency(model, baseline, batch, batch_size=5, runs=4, rounds=2, warmup=0)
    assert set(model.shapes) == {(5, 3)} and len(baseline.shapes) == 4
    row = result.as_row()
    assert {"model_ms", "baseline_ms", "speedup", "speedup_p25", "warning"} <= set(row)


@pytest.mark.bad_input("constructor")
def test_bad_timing_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="runs and rounds must be >= 1"):
        compare_latency(lambda: None, lambda: None, runs=0)
    with pytest.raises(ValueError, match="pass inputs=<one batch>"):
        compare_latency(type("M", (), {"run": lambda self, x: x})(), lambda: None)
    with pytest.raises(ValueError, match="must have run\\(inputs\\) or be callable"):
        compare_latency(3, lambda: None)
