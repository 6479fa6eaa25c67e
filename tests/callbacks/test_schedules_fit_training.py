"""A schedule that the Trainer's limits cut short is refused before training, model untouched.

``max_epochs`` is checked in ``setup``; ``max_steps`` (which needs the batches per epoch) in
``on_train_start``, still before any batch runs or any layer changes.
"""

from __future__ import annotations

import pytest

from lightning_accel import Binarize, GradualPruning, LatencyMonitor, QuantizationAware
from tests.conftest import quiet_trainer, refused_before_training, small_module


@pytest.mark.parametrize(
    ("callback", "message"),
    [
        (
            GradualPruning(0.5, end_epoch=4),
            r"GradualPruning schedule cannot finish: end_epoch=4 needs training batch 88 .*"
            r"max_steps=30 stops training before. Raise max_steps to >= 89",
        ),
        (
            QuantizationAware(start_epoch=3),
            r"QuantizationAware schedule cannot finish: start_epoch=3 needs training batch 66",
        ),
        (Binarize(start_epoch=1, end_epoch=4), r"Binarize schedule cannot finish: end_epoch=4"),
        (
            QuantizationAware(start_epoch=0, freeze_bn_epoch=4),
            r"QuantizationAware schedule cannot finish: freeze_bn_epoch=4 needs training batch 88",
        ),
        (
            LatencyMonitor(every_n_epochs=2),
            r"LatencyMonitor schedule cannot finish: every_n_epochs=2 \(a first measurement\) "
            r"needs training batch 43 counted from the start \(batch 21 of epoch 1",
        ),
    ],
    ids=["pruning", "quantization", "binarization", "freeze", "latency"],
)
@pytest.mark.bad_input("schedule")
def test_max_steps_that_cuts_a_schedule_short_is_refused(digits, tmp_path, callback, message):
    module = small_module()
    trainer = quiet_trainer(tmp_path, max_epochs=6, max_steps=30, callbacks=[callback])
    with refused_before_training(trainer, module, message):
        trainer.fit(module, datamodule=digits)


def test_gradient_accumulation_counts_optimizer_steps(digits, tmp_path) -> None:
    # 22 batches per epoch, 2 per optimizer step: epoch 2 starts at optimizer step 23.
    trainer = quiet_trainer(
        tmp_path,
        max_epochs=3,
        max_steps=23,
        accumulate_grad_batches=2,
        callbacks=[GradualPruning(0.5, end_epoch=2)],
    )
    trainer.fit(small_module(), datamodule=digits)
    assert trainer.callbacks[0].applied_sparsity == pytest.approx(0.5)


@pytest.mark.bad_input("schedule")
def test_latency_monitor_that_never_measures_is_refused(digits, tmp_path) -> None:
    trainer = quiet_trainer(tmp_path, max_epochs=3, callbacks=[LatencyMonitor(every_n_epochs=5)])
    with pytest.raises(ValueError, match=r"every_n_epochs=5\) never measures: .*max_epochs=3"):
        trainer.fit(small_module(), datamodule=digits)
