import pytest

from lightning_accel.pruning.schedules import (
    StepSchedule,
    cubic_sparsity,
    get_schedule,
    linear_sparsity,
)


@pytest.mark.parametrize("progress", [0.0, 0.1, 0.37, 0.5, 0.9, 1.0])
def test_cubic_matches_zhu_gupta_formula(progress: float) -> None:
    s_i, s_f, t0, n, dt = 0.1, 0.8, 3, 10, 5
    t = t0 + progress * n * dt
    expected = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3  # eq. 1 of the paper
    assert cubic_sparsity(progress, s_i, s_f) == pytest.approx(expected)


def test_cubic_prunes_fast_early_and_reaches_target_exactly() -> None:
    assert cubic_sparsity(0.0, 0.0, 0.8) == 0.0
    assert cubic_sparsity(1.0, 0.0, 0.8) == 0.8
    assert cubic_sparsity(0.5, 0.0, 0.8) > linear_sparsity(0.5, 0.0, 0.8)
    assert cubic_sparsity(1.5, 0.0, 0.8) == 0.8  # clamped after the end


def test_step_schedule_places_updates_and_reaches_target_at_end_epoch() -> None:
    schedule = StepSchedule(
        start_epoch=1, end_epoch=3, steps_per_epoch=10, every_n_steps=5, initial=0.0, final=0.5
    )
    updates = [step for step in range(50) if schedule.is_update_step(step)]
    assert updates == [10, 15, 20, 25, 30]
    assert schedule.sparsity_at(9) == 0.0
    assert schedule.sparsity_at(30) == 0.5
    values = [schedule.sparsity_at(s) for s in updates]
    assert values == sorted(values)


def test_step_schedule_defaults_to_once_per_epoch() -> None:
    schedule = StepSchedule(0, 2, steps_per_epoch=7, every_n_steps=None, initial=0.0, final=0.5)
    assert [s for s in range(30) if schedule.is_update_step(s)] == [0, 7, 14]


def test_due_dispatches_update_batches_past_what_was_applied() -> None:
    # the dispatch GradualPruning and LatencyBudgetPruning share in on_train_batch_start
    schedule = StepSchedule(1, 3, steps_per_epoch=10, every_n_steps=5, initial=0.0, final=0.5)
    assert schedule.due(0, 0, applied=0.0) is None  # before start_epoch
    assert schedule.due(1, 0, applied=0.0) is None  # schedule value 0: nothing to apply
    assert schedule.due(1, 3, applied=0.0) is None  # not an update batch
    value = schedule.due(1, 5, applied=0.0)
    assert value == schedule.sparsity_at(15) and value > 0.0
    assert schedule.due(1, 5, applied=value) is None  # already applied
    assert schedule.due(1, 6, applied=0.0, pending=True) == schedule.sparsity_at(16)  # deferred
    assert schedule.due(3, 0, applied=0.0) == 0.5  # reaches the final value at end_epoch
    assert schedule.due(3, 5, applied=0.0) is None  # after the schedule


@pytest.mark.bad_input("constructor")
def test_unknown_schedule_lists_valid_names() -> None:
    with pytest.raises(
        ValueError, match=r"schedule must be one of \['constant', 'cubic', 'linear'\]"
    ):
        get_schedule("exponential")
