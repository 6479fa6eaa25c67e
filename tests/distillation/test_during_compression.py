"""The teacher's term acts in every step of the pruning and QAT epochs, as the formula says.

The benchmark's question "did distillation reach the compressed student?" made checkable: the
loss each step returns is ``(1 − alpha)·CE + alpha·T²·KL`` against the dense model's eval-mode
logits on the very batch the student saw, in every epoch of prune → QAT.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from lightning_accel import Distillation, GradualPruning, QuantizationAware
from lightning_accel.distillation import Distiller, kd_loss
from lightning_accel.quantization import quantized_layers
from tests.conftest import quiet_trainer, small_module


def test_every_prune_and_qat_step_distills_from_the_dense_model_in_eval_mode(
    digits, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    module = small_module()
    dense = small_module()
    dense.load_state_dict(module.state_dict())
    dense.eval()
    calls: list[dict[str, object]] = []
    combine = Distiller.combine

    def spy(self: Distiller, inputs: Tensor, logits: Tensor, task_loss: Tensor) -> Tensor:
        total = combine(self, inputs, logits, task_loss)
        calls.append(
            {
                "inputs": inputs.clone(),
                "logits": logits.detach().clone(),
                "task": task_loss.detach().clone(),
                "total": total.detach().clone(),
                "teacher_training": any(m.training for m in self.teacher.modules()),
                "quantized": bool(quantized_layers(module)),
                "params": sum(p.numel() for p in module.model.parameters()),
            }
        )
        return total

    monkeypatch.setattr(Distiller, "combine", spy)
    callbacks = [
        GradualPruning(0.5, end_epoch=1),
        QuantizationAware(start_epoch=2),
        Distillation(temperature=3.0, alpha=0.6),
    ]
    quiet_trainer(max_epochs=3, limit_train_batches=2, callbacks=callbacks).fit(
        module, datamodule=digits
    )
    assert len(calls) == 6  # every step of the 3 epochs
    dense_params = sum(p.numel() for p in dense.model.parameters())
    assert [c["params"] < dense_params for c in calls] == [False] * 2 + [True] * 4
    assert [c["quantized"] for c in calls] == [False] * 4 + [True] * 2
    for call in calls:
        assert call["teacher_training"] is False
        x = call["inputs"]
        with torch.no_grad():
            teacher = dense(x)  # the dense model, eval mode, same batch
        expected = 0.4 * call["task"] + 0.6 * kd_loss(call["logits"], teacher, 3.0)
        torch.testing.assert_close(call["total"], expected)
    # pruned and quantized, the student differs from its teacher: the soft term is not zero
    late = calls[-1]
    with torch.no_grad():
        assert float(kd_loss(late["logits"], dense(late["inputs"]), 3.0)) > 1e-4
