"""The distillation math against hand computations, without a Trainer."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_accel.distillation import (
    Distiller,
    check_logits,
    combine_losses,
    distill,
    feature_loss,
    kd_loss,
    make_projection,
    top1_agreement,
)
from lightning_accel.distillation.teacher import eval_forward, freeze
from tests.test_layout import PACKAGE, _imports, _modules


def _hand_kd(student: list[list[float]], teacher: list[list[float]], t: float) -> float:
    """T² · mean over rows of Σ p_t (log p_t − log p_s), written out in Python floats."""
    total = 0.0
    for s_row, t_row in zip(student, teacher, strict=True):
        zs = sum(math.exp(v / t) for v in s_row)
        zt = sum(math.exp(v / t) for v in t_row)
        for s_v, t_v in zip(s_row, t_row, strict=True):
            p_t, p_s = math.exp(t_v / t) / zt, math.exp(s_v / t) / zs
            total += p_t * (math.log(p_t) - math.log(p_s))
    return t * t * total / len(student)


@pytest.mark.parametrize("temperature", [1.0, 4.0, 10.0])
def test_kd_loss_matches_the_hand_computation(temperature: float) -> None:
    student = [[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]]
    teacher = [[2.0, 0.0, -1.0], [0.5, 2.5, 0.0]]
    got = kd_loss(torch.tensor(student), torch.tensor(teacher), temperature)
    assert float(got) == pytest.approx(_hand_kd(student, teacher, temperature), rel=1e-5)


def test_kd_gradient_is_t_times_the_probability_gap() -> None:
    # d/ds [T² KL(p_t || p_s)] = T (p_s − p_t) / N  (Hinton et al., section 2.1)
    t = 4.0
    student = torch.randn(5, 7, requires_grad=True)
    teacher = torch.randn(5, 7)
    kd_loss(student, teacher, t).backward()
    expected = t * (torch.softmax(student / t, -1) - torch.softmax(teacher / t, -1)) / 5
    torch.testing.assert_close(student.grad, expected.detach())


def test_kd_is_zero_when_student_equals_teacher_and_teacher_gets_no_gradient() -> None:
    logits = torch.randn(3, 4)
    teacher = logits.clone().requires_grad_(True)
    loss = kd_loss(logits.clone().requires_grad_(True), teacher, 2.0)
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert teacher.grad is None


def test_combination_and_agreement() -> None:
    task, soft = torch.tensor(2.0), torch.tensor(6.0)
    assert float(combine_losses(task, soft, 0.25)) == pytest.approx(0.75 * 2 + 0.25 * 6)
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [3.0, 1.0]])
    teacher = torch.tensor([[2.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert float(top1_agreement(student, teacher)) == 0.5


@pytest.mark.parametrize(
    ("output", "got"),
    [
        ((torch.zeros(2, 3),), "a tuple"),
        (torch.zeros(2, 3, dtype=torch.long), "a torch.int64 tensor of shape \\(2, 3\\)"),
        (torch.zeros(2, 3, 4, 4), "a torch.float32 tensor of shape \\(2, 3, 4, 4\\)"),
        ({"logits": torch.zeros(2, 3)}, "a dict"),
    ],
)
@pytest.mark.bad_input("data")
def test_outputs_that_are_not_logits_are_refused_with_what_is_expected(output, got) -> None:
    with pytest.raises(ValueError, match=rf"a \(N, C\) float tensor .*; got {got}"):
        check_logits(output, "the student")


def test_feature_loss_refuses_other_spatial_sizes() -> None:
    assert float(feature_loss(torch.ones(2, 3, 4, 4), torch.zeros(2, 3, 4, 4))) == 1.0
    with pytest.raises(ValueError, match="Only the channel count"):
        feature_loss(torch.ones(2, 3, 4, 4), torch.zeros(2, 3, 2, 2))


def _net(width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(width, 3),
    )  # fmt: skip


def test_distiller_projects_narrower_student_features_and_trains_the_projection() -> None:
    teacher, student = freeze(_net(8)), _net(4)
    distiller = Distiller(teacher, temperature=2.0, alpha=0.5, features={"0": "0"})
    distiller.attach(student)
    x = torch.randn(6, 1, 5, 5)
    logits = student(x)
    task = nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0, 1, 2]))
    total = distiller.combine(x, logits, task)
    assert isinstance(distiller.projections["0"], nn.Conv2d)
    assert distiller.projections["0"].weight.shape == (8, 4, 1, 1)  # student 4 -> teacher 8
    before = distiller.projections["0"].weight.detach().clone()
    total.backward()
    distiller.step_projections()
    assert not torch.equal(before, distiller.projections["0"].weight)
    assert all(p.grad is None for p in teacher.parameters())
    # the logits-only part is what kd_loss gives; the feature term makes the total larger
    kd = kd_loss(logits, teacher(x), 2.0)
    assert float(total.detach()) > float(combine_losses(task, kd, 0.5).detach())
    means = distiller.epoch_means()
    assert means["task_loss"] == pytest.approx(float(task))
    # the projection survives its checkpoint state
    state = distiller.projection_state()
    twin = Distiller(teacher, 2.0, 0.5, {"0": "0"})
    twin.load_projection_state(state, torch.device("cpu"))
    torch.testing.assert_close(twin.projections["0"].weight, distiller.projections["0"].weight)
    twin.close()
    distiller.close()
    assert not student[0]._forward_hooks and not teacher[0]._forward_hooks


def test_distill_without_a_callback_returns_the_task_loss_itself() -> None:
    task = torch.tensor(1.5)
    assert distill(nn.Linear(2, 2), torch.zeros(1, 2), torch.zeros(1, 2), task) is task


def test_eval_forward_gives_each_submodule_its_mode_back() -> None:
    net = _net(4)
    net[0].eval()  # e.g. a layer a callback froze
    with eval_forward(net) as frozen:
        assert not frozen.training
    assert net.training and not net[0].training and net[1].training


def test_make_projection_refuses_other_ranks() -> None:
    assert isinstance(make_projection(3, 5, 2), nn.Linear)
    with pytest.raises(ValueError, match="\\(N, C, H, W\\) and \\(N, C\\)"):
        make_projection(3, 5, 3)


def test_the_distillation_math_imports_no_lightning() -> None:
    modules = _modules()
    offenders = [
        f"{name} imports {imported}"
        for name, path in modules.items()
        if name.startswith("lightning_accel.distillation")
        for imported in _imports(path, modules)
        if imported.split(".")[0] in ("lightning", "pytorch_lightning")
        or imported.startswith("lightning_accel.callbacks")
    ]
    assert (PACKAGE / "distillation" / "losses.py").is_file()
    assert not offenders, offenders
