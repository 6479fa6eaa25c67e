"""Knowledge distillation in plain torch: losses, teachers and the one-line ``distill`` hook.

The ``Distillation`` callback (``lightning_accel.callbacks.distillation``) decides when;
this package holds the math and never imports Lightning.
"""

from lightning_accel.distillation.active import distill
from lightning_accel.distillation.distiller import Distiller, make_projection
from lightning_accel.distillation.losses import (
    check_logits,
    combine_losses,
    feature_loss,
    kd_loss,
    top1_agreement,
)

__all__ = [
    "Distiller",
    "check_logits",
    "combine_losses",
    "distill",
    "feature_loss",
    "kd_loss",
    "make_projection",
    "top1_agreement",
]
