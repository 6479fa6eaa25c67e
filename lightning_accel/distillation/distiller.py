"""``Distiller``: a frozen teacher, optional feature projections and the per-step loss.

Plain torch, usable without a Trainer: the ``Distillation`` callback decides when it runs and
logs what it measured; :func:`lightning_accel.distillation.distill` is the one line a
``training_step`` calls to get the combined loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightning_accel.distillation.losses import (
    check_logits,
    combine_losses,
    feature_loss,
    kd_loss,
    top1_agreement,
)

PROJECTION_LR = 1e-3  # Adam, for the 1x1 projections of feature matching


class Distiller:
    """Adds a teacher's soft targets (and optionally its features) to a student's loss.

    Loss: ``(1 − alpha) · task + alpha · (T² · KL(softmax(t/T) ‖ softmax(s/T)) + F)`` where
    ``F`` is the mean, over the feature pairs, of the MSE between the student feature
    (through a learned 1×1 projection where the widths differ) and the teacher feature.

    Args:
        teacher: The teacher, frozen by the caller (see :func:`~.teacher.freeze`).
        temperature: Softmax temperature ``T > 0``.
        alpha: Weight of the distillation term, in [0, 1].
        features: ``{student layer: teacher layer}`` to match, names as ``named_modules()``
            gives them on the student (the LightningModule) and the teacher.
    """

    def __init__(
        self,
        teacher: nn.Module,
        temperature: float,
        alpha: float,
        features: Mapping[str, str] | None = None,
    ) -> None:
        self.teacher = teacher
        self.temperature = temperature
        self.alpha = alpha
        self.features = dict(features or {})
        self.projections: dict[str, nn.Module] = {}
        self.projection_optimizer: torch.optim.Optimizer | None = None
        self.missing_features = 0  # batches whose student features were not seen
        self._student_features: dict[str, Tensor] = {}
        self._teacher_features: dict[str, Tensor] = {}
        self._student_hooks: dict[str, tuple[nn.Module, RemovableHandle]] = {}
        self._teacher_hooks = [
            teacher.get_submodule(t).register_forward_hook(self._keep(self._teacher_features, s))
            for s, t in self.features.items()
        ]
        self.reset_stats()

    # ----------------------------------------------------------------- statistics
    def reset_stats(self) -> None:
        """Start a new epoch of loss and agreement sums."""
        self.sums = {"loss": 0.0, "task_loss": 0.0, "agreement": 0.0}
        self.batches = 0

    def epoch_means(self) -> dict[str, float]:
        """Means over the batches since :meth:`reset_stats` (empty if there were none)."""
        if not self.batches:
            return {}
        return {name: total / self.batches for name, total in self.sums.items()}

    # ----------------------------------------------------------------- student features
    def attach(self, student: nn.Module) -> None:
        """Hook the student's feature layers (again, if a callback swapped them)."""
        for name in self.features:
            layer = student.get_submodule(name)
            held = self._student_hooks.get(name)
            if held is not None and held[0] is layer:
                continue
            if held is not None:
                held[1].remove()
            hook = layer.register_forward_hook(self._keep(self._student_features, name))
            self._student_hooks[name] = (layer, hook)

    def detach(self) -> None:
        """Remove the student hooks (exports and copies of the student must not carry them)."""
        for _, hook in self._student_hooks.values():
            hook.remove()
        self._student_hooks = {}
        self._student_features.clear()

    def close(self) -> None:
        """Remove every hook this distiller placed."""
        self.detach()
        for hook in self._teacher_hooks:
            hook.remove()
        self._teacher_hooks = []

    @staticmethod
    def _keep(store: dict[str, Tensor], key: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if isinstance(output, Tensor):
                store[key] = output

        return hook

    # ----------------------------------------------------------------- the loss
    def teacher_logits(self, inputs: Any) -> Tensor:
        """The teacher's logits for ``inputs``, without gradients.

        Raises:
            ValueError: If the teacher does not return a ``(N, C)`` float tensor.
        """
        with torch.no_grad():
            output = self.teacher(inputs)
        return check_logits(output, "the teacher")

    def combine(self, inputs: Any, logits: Tensor, task_loss: Tensor) -> Tensor:
        """The combined loss for one batch; records loss, task loss and agreement.

        Args:
            inputs: The batch inputs the student saw (what ``forward`` took).
            logits: ``(N, C)`` student logits for ``inputs``.
            task_loss: The student's own loss (scalar).

        Returns:
            ``(1 − alpha) · task_loss + alpha · (kd + features)``, a scalar.

        Raises:
            ValueError: If the logits are not ``(N, C)`` floats or differ in shape from the
                teacher's.
        """
        check_logits(logits, "the student")
        teacher = self.teacher_logits(inputs)
        if teacher.shape != logits.shape:
            raise ValueError(
                f"The teacher returns {tuple(teacher.shape)} logits but the student "
                f"{tuple(logits.shape)}: both must score the same {logits.shape[-1]} classes."
            )
        soft = kd_loss(logits, teacher, self.temperature)
        if self.features:
            soft = soft + self._feature_term()
        total = combine_losses(task_loss, soft, self.alpha)
        self.sums["loss"] += float(total.detach())
        self.sums["task_loss"] += float(task_loss.detach())
        self.sums["agreement"] += float(top1_agreement(logits, teacher))
        self.batches += 1
        return total

    def _feature_term(self) -> Tensor:
        terms = []
        for name in self.features:
            student = self._student_features.pop(name, None)
            teacher = self._teacher_features.pop(name, None)
            if student is None or teacher is None:
                self.missing_features += 1
                continue
            projected = self._project(name, student, int(teacher.shape[1]))
            terms.append(feature_loss(projected, teacher))
        if not terms:
            return torch.zeros(())
        return torch.stack(terms).mean()

    def _project(self, name: str, feature: Tensor, teacher_width: int) -> Tensor:
        if feature.shape[1] == teacher_width:
            return feature
        projection = self.projections.get(name)
        if projection is None or _in_width(projection) != feature.shape[1]:
            # New, or the student's width changed (structured pruning): a fresh projection.
            projection = make_projection(feature.shape[1], teacher_width, feature.dim())
            self.projections[name] = projection.to(feature.device)
            self.projection_optimizer = None
        if self.projection_optimizer is None:
            parameters = [p for m in self.projections.values() for p in m.parameters()]
            self.projection_optimizer = torch.optim.Adam(parameters, lr=PROJECTION_LR)
        return self.projections[name](feature)

    def step_projections(self) -> None:
        """One optimizer step of the feature projections (call once per student step)."""
        if self.projection_optimizer is not None:
            self.projection_optimizer.step()
            self.projection_optimizer.zero_grad(set_to_none=True)

    # ----------------------------------------------------------------- checkpoints
    def projection_state(self) -> dict[str, Any]:
        """The projections' weights and optimizer state (plain tensors and values)."""
        return {
            "projections": {
                name: {
                    "shape": [_in_width(m), _out_width(m), 4 if isinstance(m, nn.Conv2d) else 2],
                    "state_dict": {k: v.detach().cpu() for k, v in m.state_dict().items()},
                }
                for name, m in self.projections.items()
            },
            "optimizer": (
                self.projection_optimizer.state_dict() if self.projection_optimizer else None
            ),
        }

    def load_projection_state(self, state: Mapping[str, Any], device: torch.device) -> None:
        """Rebuild the projections and their optimizer from :meth:`projection_state`."""
        self.projections = {}
        for name, saved in state.get("projections", {}).items():
            in_width, out_width, ndim = saved["shape"]
            projection = make_projection(in_width, out_width, ndim)
            projection.load_state_dict(saved["state_dict"])
            self.projections[name] = projection.to(device)
        self.projection_optimizer = None
        if self.projections:
            parameters = [p for m in self.projections.values() for p in m.parameters()]
            self.projection_optimizer = torch.optim.Adam(parameters, lr=PROJECTION_LR)
            if state.get("optimizer"):
                self.projection_optimizer.load_state_dict(state["optimizer"])


def make_projection(in_width: int, out_width: int, ndim: int) -> nn.Module:
    """A learned projection from ``in_width`` to ``out_width`` channels.

    Initialized the same way every time (a fixed seed), so a resumed run and every DDP rank
    build the same one.

    Args:
        in_width: Student channels (dim 1).
        out_width: Teacher channels.
        ndim: Dimensions of the feature: 4 (``(N, C, H, W)``: a 1×1 conv) or 2 (a linear map).

    Raises:
        ValueError: For other feature ranks.
    """
    projection: nn.Module
    if ndim == 4:
        projection = nn.Conv2d(in_width, out_width, kernel_size=1, bias=False)
    elif ndim == 2:
        projection = nn.Linear(in_width, out_width, bias=False)
    else:
        raise ValueError(
            f"Feature matching supports (N, C, H, W) and (N, C) features; got {ndim} dimensions. "
            "Pick conv or linear layers in features=..."
        )
    generator = torch.Generator().manual_seed(in_width * 100_003 + out_width)
    with torch.no_grad():
        nn.init.kaiming_uniform_(projection.weight, a=5**0.5, generator=generator)  # type: ignore[arg-type]
    return projection


def _in_width(module: nn.Module) -> int:
    return int(module.weight.shape[1])  # type: ignore[union-attr,index]


def _out_width(module: nn.Module) -> int:
    return int(module.weight.shape[0])  # type: ignore[union-attr,index]
