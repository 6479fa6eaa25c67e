"""Knowledge-distillation losses in plain torch (Hinton, Vinyals & Dean, 2015; FitNets, 2015).

The soft-target term follows Hinton et al., "Distilling the Knowledge in a Neural Network"
(arXiv:1503.02531): ``T² · KL(softmax(teacher / T) ‖ softmax(student / T))``, the ``T²``
keeping its gradients on the scale of the hard-label loss. Feature matching follows Romero et
al., "FitNets: Hints for Thin Deep Nets" (arXiv:1412.6550): the mean squared error between a
student feature map, projected to the teacher's width, and the teacher's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["check_logits", "combine_losses", "feature_loss", "kd_loss", "top1_agreement"]


def check_logits(output: object, who: str) -> Tensor:
    """Return ``output`` if it is a ``(N, C)`` floating-point tensor of class scores.

    Args:
        output: What the model returned.
        who: Whose output it is, for the message (e.g. ``"the student"``).

    Returns:
        ``output`` itself.

    Raises:
        ValueError: Saying what was returned and that a ``(N, C)`` float tensor is expected.
    """
    if isinstance(output, Tensor) and output.is_floating_point() and output.dim() == 2:
        return output
    got = (
        f"a {output.dtype} tensor of shape {tuple(output.shape)}"
        if isinstance(output, Tensor)
        else f"a {type(output).__name__}"
    )
    raise ValueError(
        f"Distillation needs logits from {who}: a (N, C) float tensor (batch, classes) before "
        f"softmax; got {got}. Return the class scores from forward (not a tuple, dict, "
        "probabilities' argmax or per-pixel maps), or pass them to distill(...) yourself."
    )


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Soft-target loss ``T² · KL(softmax(t / T) ‖ softmax(s / T))``, averaged over the batch.

    Args:
        student_logits: ``(N, C)`` student scores (gradients flow through them).
        teacher_logits: ``(N, C)`` teacher scores (treated as constants).
        temperature: ``T > 0``; higher values soften both distributions.

    Returns:
        A scalar tensor in float32 (nats), zero when the two agree exactly.

    Raises:
        ValueError: If the shapes differ.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"Student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ: the teacher must score the same classes."
        )
    log_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)
    kl = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def combine_losses(task_loss: Tensor, distill_loss: Tensor, alpha: float) -> Tensor:
    """``(1 − alpha) · task_loss + alpha · distill_loss``.

    Args:
        task_loss: The module's own loss (e.g. cross-entropy with the labels).
        distill_loss: The soft-target (plus feature) term.
        alpha: Weight of the distillation term, in [0, 1].

    Returns:
        A scalar tensor.
    """
    return (1.0 - alpha) * task_loss + alpha * distill_loss


def feature_loss(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """Mean squared error between a (projected) student feature and the teacher's.

    Args:
        student_feature: ``(N, C, ...)``, already projected to the teacher's width.
        teacher_feature: ``(N, C, ...)``, treated as a constant.

    Returns:
        A scalar float32 tensor.

    Raises:
        ValueError: If the shapes differ (after projection only the width may have differed).
    """
    if student_feature.shape != teacher_feature.shape:
        raise ValueError(
            f"Feature shapes differ: student {tuple(student_feature.shape)} vs teacher "
            f"{tuple(teacher_feature.shape)}. Only the channel count (dim 1) may differ, and "
            "the projection takes care of it: pair layers with the same spatial size."
        )
    return F.mse_loss(student_feature.float(), teacher_feature.detach().float())


def top1_agreement(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Fraction of the batch where student and teacher pick the same class (0-dim tensor)."""
    same = student_logits.detach().argmax(dim=-1) == teacher_logits.detach().argmax(dim=-1)
    return same.to(torch.float32).mean()
