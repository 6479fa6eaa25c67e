"""Greedy least-importance-per-millisecond allocation (no timing, no Trainer)."""

from __future__ import annotations

import pytest
import torch

from lightning_accel.pruning.allocation import (
    MAX_STAGES,
    DropCorrection,
    allocate,
    correction,
    next_width,
    pulled_back_aim,
    schedule_target,
    stage_goal,
)


def _linear(per_channel_ms: dict[str, float], widths: dict[str, int]):
    """Savings linear in the channels removed, ``per_channel_ms`` per channel."""
    return lambda name, width: (widths[name] - width) * per_channel_ms[name]


def test_widths_stay_multiples_of_round_to_and_no_group_is_emptied() -> None:
    scores = {"a": torch.rand(64), "b": torch.rand(40), "c": torch.rand(12)}
    widths = {n: len(s) for n, s in scores.items()}
    savings = _linear({"a": 0.01, "b": 0.02, "c": 0.05}, widths)
    plan = allocate(scores, savings, current_ms=5.0, target_ms=0.0, round_to=8)  # unreachable
    assert plan.widths == {"a": 8, "b": 8, "c": 8}  # all at the minimum, none below
    assert not plan.reached
    assert all(w % 8 == 0 and w >= 8 for w in plan.widths.values())
    # 12 channels go to 8, the next multiple below, not to 4 or 0
    assert next_width(12, 8) == 8 and next_width(16, 8) == 8 and next_width(8, 8) == 0
    for name, removed in plan.removals.items():
        assert len(removed) == widths[name] - plan.widths[name]
        assert len(set(removed)) == len(removed)


def test_cuts_go_where_importance_per_ms_is_lowest() -> None:
    # "skewed" holds its importance in 8 channels: cutting its 24 others loses almost nothing;
    # "flat" loses log(32/24) of its importance per cut of 8; both save 0.1 ms per channel
    skewed = torch.cat([torch.full((24,), 0.01), torch.full((8,), 10.0)])
    scores = {"flat": torch.ones(32), "skewed": skewed}
    savings = _linear({"flat": 0.1, "skewed": 0.1}, {"flat": 32, "skewed": 32})
    plan = allocate(scores, savings, current_ms=10.0, target_ms=8.0, round_to=8)
    assert plan.widths == {"flat": 32, "skewed": 8}
    assert plan.reached and plan.predicted_ms == pytest.approx(7.6)
    # the same importance, ten times the time saved per channel: cut first
    scores = {"flat": torch.ones(32), "fast": torch.ones(32)}
    savings = _linear({"flat": 0.1, "fast": 1.0}, {"flat": 32, "fast": 32})
    plan = allocate(scores, savings, 40.0, 32.0, 8)
    assert plan.widths == {"flat": 32, "fast": 24}
    # ... unless its group holds the outputs of 20 layers (a residual stream)
    plan = allocate(scores, savings, 40.0, 39.2, 8, weights={"fast": 20.0})
    assert plan.widths == {"flat": 24, "fast": 32}


def test_the_last_channels_of_a_group_grow_dearer() -> None:
    # two alike groups share a large cut evenly instead of one being emptied
    scores = {"a": torch.ones(64), "b": torch.ones(64)}
    savings = _linear({"a": 0.1, "b": 0.1}, {"a": 64, "b": 64})
    plan = allocate(scores, savings, 20.0, 20.0 - 6.4, 8)
    assert plan.widths == {"a": 32, "b": 32}


def test_the_least_important_channels_of_a_group_are_the_ones_removed() -> None:
    scores = {"a": torch.tensor([9.0, 0.1, 8.0, 0.2, 7.0, 0.3, 6.0, 0.4] * 2)}
    plan = allocate(scores, lambda n, w: (16 - w) * 1.0, 16.0, 8.0, round_to=8)
    assert plan.widths == {"a": 8}
    assert plan.removals["a"] == [1, 3, 5, 7, 9, 11, 13, 15]
    assert plan.importance_lost == pytest.approx(2 * (0.1 + 0.2 + 0.3 + 0.4))


def test_a_correction_below_one_makes_the_plan_cut_more() -> None:
    scores = {"a": torch.ones(64)}
    savings = _linear({"a": 0.1}, {"a": 64})
    trusting = allocate(scores, savings, 10.0, 8.0, 8)
    corrected = allocate(scores, savings, 10.0, 8.0, 8, scale=0.5)
    assert trusting.widths["a"] == 40 and corrected.widths["a"] == 24


def test_schedule_target_and_correction() -> None:
    assert schedule_target(10.0, 4.0, 0.0) == 10.0
    assert schedule_target(10.0, 4.0, 0.5) == 7.0
    assert schedule_target(10.0, 4.0, 2.0) == 4.0
    # predicted a 2 ms drop, measured 1 ms: savings were overestimated by 2x
    assert correction(10.0, 8.0, 9.0) == pytest.approx(0.5)
    assert correction(10.0, 10.0, 9.0) == 1.0  # no predicted drop: nothing to learn
    assert correction(10.0, 9.9, 5.0) == 2.0  # clamped


@pytest.mark.bad_input("constructor")
def test_round_to_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="round_to must be >= 1"):
        allocate({"a": torch.ones(8)}, lambda n, w: 0.0, 1.0, 0.5, 0)


def test_the_final_step_approaches_the_budget_from_above_in_measured_stages() -> None:
    # A runtime whose measured saving exceeds the planned one by a share growing with the cut
    # (at batch 1, a model whose weights come to fit in cache speeds up disproportionately)
    def measured_after(current: float, aim: float) -> float:
        cut = current - aim
        return current - cut * (1.0 + cut / current)

    goal = 3.0
    assert measured_after(10.0, goal) < 0.5 * goal  # one shot: far below the budget
    current, stages = 10.0, 0
    while stages < MAX_STAGES and (aim := stage_goal(current, goal, final=True)) > goal:
        assert goal < aim < current
        current = measured_after(current, aim)
        stages += 1
    assert current > goal  # every stage stopped above the budget
    assert goal * 0.98 <= measured_after(current, goal) <= goal  # the last cut lands within 2%
    # an intermediate step of the schedule goes straight to its goal below a 30% gap
    assert stage_goal(3.5, 3.0) == 3.0 and stage_goal(3.5, 3.0, final=True) < 3.5
    assert stage_goal(3.1, 3.0, final=True) == 3.0  # within 5%: the goal itself


def test_the_correction_accumulates_over_stages_so_a_noisy_small_stage_does_not_swing_it() -> None:
    # the runtime saves 1.3x what the model predicts; stage 2 is small and its reading is off by
    # 0.1 ms (the timing spread), which alone would say 0.5x
    drop = DropCorrection(10.0)
    assert drop.update(10.0, 7.0, 6.1) == pytest.approx(1.3)  # 3 ms predicted, 3.9 measured
    before, predicted = 6.1, 6.1 - 0.2 * 1.3  # 0.2 ms of the model, scaled by 1.3
    noisy = before - 0.5 * (before - predicted)  # measured: half the planned drop
    assert correction(before, predicted, noisy) * 1.3 == pytest.approx(0.65)  # per stage
    assert drop.update(before, predicted, noisy) == pytest.approx((10.0 - noisy) / 3.2)
    assert 1.2 < drop.scale < 1.3  # accumulated: still about the runtime's 1.3x
    assert DropCorrection(1.0).update(1.0, 0.9, 0.0) == 4.0  # clamped


def test_an_overshooting_planned_cut_moves_the_aim_up_but_stays_below_the_current_latency() -> None:
    # planned for 1.0 ms, the copy ran at 0.8 ms: aim 0.2 ms higher
    assert pulled_back_aim(1.0, 1.0, 0.8, 2.0) == pytest.approx(1.2)
    # a jump (0.2 ms measured): at most halfway back to the current 2.0 ms, so a cut remains
    assert pulled_back_aim(1.0, 1.0, 0.2, 2.0) == pytest.approx(1.5)
    assert pulled_back_aim(1.5, 1.0, 0.9, 2.0) == pytest.approx(1.6)  # a second pull, from 1.5
