"""``Distillation``: the dense model teaches its pruned, quantized or binarized self.

Knowledge distillation (Hinton et al., 2015) during compression: the loss becomes
``(1 − alpha) · task + alpha · T² · KL(softmax(teacher/T) ‖ softmax(student/T))``. The math
lives in :mod:`lightning_accel.distillation`; this callback decides when it runs, keeps the
teacher out of the student, and carries it through checkpoints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from lightning_accel.callbacks.base import (
    AccelCallback,
    check_end_epoch,
    check_epoch,
    check_number,
    example_input,
)
from lightning_accel.distillation import active
from lightning_accel.distillation.distiller import Distiller
from lightning_accel.distillation.losses import check_logits
from lightning_accel.distillation.teacher import (
    broadcast_module,
    check_layer_names,
    eval_forward,
    freeze,
    load_teacher_checkpoint,
    restore_snapshot,
    snapshot,
    snapshot_state,
)

_EXAMPLE = "Distillation(teacher='initial', temperature=4.0, alpha=0.5)"
_ONE_LINE = (
    "from lightning_accel.distillation import distill\n"
    "    ...\n"
    "    loss = distill(self, x, logits, loss)  # last line of training_step, before return"
)


class Distillation(AccelCallback):
    """Train the compressed model against a frozen teacher's soft targets.

    The teacher is never part of the student: it is held by this callback (not a submodule of
    the LightningModule), so pruning, QAT, binarization, export, ``state_dict`` and the size
    figures never see it. It runs in eval mode without gradients on the module's device.

    The loss enters through one line in ``training_step``: ``loss = distill(self, x, logits,
    loss)`` (:func:`lightning_accel.distillation.distill`); :class:`ClassificationModule` has
    it already. A module without it is refused at its first training step, before the
    optimizer steps.

    Args:
        teacher: ``"initial"``: a frozen copy of the model as it is at the start of
            ``start_epoch`` (when ``fit`` starts, for ``start_epoch=0``), before any
            compression callback changes it in that epoch; it is saved in checkpoints. An
            ``nn.Module`` returning ``(N, C)`` logits for the same inputs, or the path of a
            checkpoint of the same LightningModule (a trained dense model).
        temperature: Softmax temperature ``T > 0`` (Hinton et al. use 1-20; 4 is common).
        alpha: Weight of the distillation term, in [0, 1]; 0 is plain training.
        start_epoch: First epoch that distills.
        end_epoch: Epoch at whose start distillation stops; ``None``: until the end.
        features: Layers to match as well (FitNets): ``{"student layer": "teacher layer"}`` or
            a list of names present in both, e.g. ``["model.layer3"]``. Where widths differ
            (pruned channels), a learned 1×1 projection maps the student's to the teacher's;
            the projections belong to this callback (own Adam optimizer, lr 1e-3, saved in
            checkpoints) and are never exported.

    Logged every epoch that distills: ``distill/loss`` (combined), ``distill/task_loss`` and
    ``distill/agreement`` (student-teacher top-1 agreement on the training batches).

    Raises:
        ValueError: At construction, for an argument out of range or a teacher file that does
            not exist; in ``setup``, for a teacher checkpoint of another architecture or
            feature layers that match nothing; in ``on_train_start``, for outputs that are not
            ``(N, C)`` logits or a teacher with another number of classes.
        RuntimeError: At the first training step, if ``training_step`` does not call
            ``distill``.

    Example:
        >>> trainer = L.Trainer(  # doctest: +SKIP
        ...     callbacks=[GradualPruning(0.5), QuantizationAware(start_epoch=5), Distillation()]
        ... )
    """

    technique = "Distillation"

    def __init__(
        self,
        teacher: nn.Module | str | PathLike[str] = "initial",
        temperature: float = 4.0,
        alpha: float = 0.5,
        start_epoch: int = 0,
        end_epoch: int | None = None,
        features: Mapping[str, str] | Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.teacher_source = _check_teacher(teacher)
        self.temperature = check_number(temperature, "temperature", _EXAMPLE, 0, low_open=True)
        self.alpha = check_number(alpha, "alpha", _EXAMPLE, 0, 1)
        self.start_epoch = check_epoch(start_epoch, "start_epoch", "Distillation(start_epoch=2)")
        self.end_epoch = check_end_epoch(
            start_epoch, end_epoch, "Distillation(start_epoch=1, end_epoch=5)"
        )
        self.features = _check_features(features)
        self.teacher: nn.Module | None = None
        self.distiller: Distiller | None = None
        self._template: nn.Module | None = None  # the architecture of an "initial" teacher
        self._tracker = active.StepTracker()
        self._pending: dict[str, Any] = {}  # state from a checkpoint, applied at train start
        self._epoch = 0
        self._warned_missing = False

    @override
    def metric_names(self) -> tuple[str, ...]:
        return ("distill/loss", "distill/task_loss", "distill/agreement")

    def distills_in(self, epoch: int) -> bool:
        """Whether ``epoch`` (0-based) is inside ``start_epoch``..``end_epoch``."""
        return epoch >= self.start_epoch and (self.end_epoch is None or epoch < self.end_epoch)

    # ----------------------------------------------------------------- lifecycle
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        others = [c for c in trainer.callbacks if isinstance(c, Distillation) and c is not self]  # type: ignore[attr-defined]
        if others:
            raise ValueError(
                "A Trainer takes one Distillation callback; this one has "
                f"{len(others) + 1}. Keep one (features=... matches several layers)."
            )
        self.check_schedule_fits(trainer, "start_epoch", self.start_epoch)
        check_layer_names(pl_module, list(self.features), "student")
        # Compression callbacks change the model from on_train_epoch_start on, so a copy made
        # here, whatever the callbacks' order, is the model as fit starts.
        if self.teacher_source == "initial":
            self.teacher, self.distiller = None, None  # a new fit takes a new snapshot
            self._template = snapshot(pl_module)
            reference: nn.Module = self._template
        elif isinstance(self.teacher_source, nn.Module):
            reference = self.teacher_source
        else:
            self.teacher = load_teacher_checkpoint(pl_module, self.teacher_source)
            reference = self.teacher
        check_layer_names(reference, list(self.features.values()), "teacher")

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check_reached_within_max_steps(
            trainer, f"start_epoch={self.start_epoch}", self.start_epoch
        )
        self._check_outputs(trainer, pl_module)
        if isinstance(self.teacher_source, nn.Module):
            self.teacher = freeze(self.teacher_source)
        elif self.teacher_source == "initial" and self.teacher is None:
            assert self._template is not None  # made in setup
            resumed = trainer.ckpt_path is not None
            if "teacher" in self._pending:
                self.teacher = restore_snapshot(self._template, self._pending["teacher"])
            elif resumed and trainer.current_epoch >= self.start_epoch:
                rank_zero_warn(
                    "Distillation(teacher='initial'): the checkpoint holds no teacher, so the "
                    "model as restored from it becomes the teacher."
                )
                self.teacher = snapshot(pl_module)
            elif not resumed and self.start_epoch == 0:
                self.teacher = self._template
        if self.teacher is not None:
            self._use_teacher(pl_module)
        active.register(pl_module, self._tracker)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch = trainer.current_epoch
        on = self.distiller is not None and self.distills_in(self._epoch)
        active.set_active(pl_module, self.distiller if on else None)
        if self.distiller is not None:
            self.distiller.reset_stats()

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        self._tracker.called = False
        if self.distiller is not None and self.features and self.distills_in(self._epoch):
            self.distiller.attach(pl_module)

    @override
    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor
    ) -> None:
        if not self._tracker.called:
            raise RuntimeError(
                f"Distillation: {type(pl_module).__name__}.training_step did not call "
                "distill(...), so the teacher's loss cannot reach the student (a callback "
                "cannot change the loss training_step returns). Add one line:\n    "
                f"{_ONE_LINE}\nor use lightning_accel.ClassificationModule. Stopped before the "
                "optimizer step: the weights are unchanged."
            )
        super().on_before_backward(trainer, pl_module, loss)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        if self.distiller is not None and self.distills_in(self._epoch):
            self.distiller.step_projections()

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.distiller is not None:
            self.distiller.detach()  # copies and exports of the student must not carry hooks

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.distiller is not None:
            means = self.distiller.epoch_means()
            if means:
                self.log_metrics(pl_module, {f"distill/{k}": v for k, v in means.items()})
            if self.distiller.missing_features and not self._warned_missing:
                self._warned_missing = True
                rank_zero_warn(
                    f"Distillation: in {self.distiller.missing_features} batches a feature "
                    f"layer of {list(self.features)} did not run in forward (or was swapped "
                    "after its hook was placed); those batches used the logits term only."
                )
        if self.teacher is None and self._epoch + 1 >= self.start_epoch:
            # "initial" with start_epoch > 0: the model before the next epoch's compression.
            self.teacher = snapshot(pl_module)
            self._use_teacher(pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._release(pl_module)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        self._release(pl_module)

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        super().on_exception(trainer, pl_module, exception)
        self._release(pl_module)

    # ----------------------------------------------------------------- checkpoints
    @override
    def state_dict(self) -> dict[str, Any]:
        if self.teacher is None and self.distiller is None:
            return dict(self._pending)  # loaded, not applied yet
        state: dict[str, Any] = {}
        if self.teacher_source == "initial" and self.teacher is not None:
            state["teacher"] = snapshot_state(self.teacher)
        if self.distiller is not None and self.distiller.projections:
            state["projections"] = self.distiller.projection_state()
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict)

    # ----------------------------------------------------------------- helpers
    def _use_teacher(self, pl_module: pl.LightningModule) -> None:
        assert self.teacher is not None
        self.teacher.to(pl_module.device)
        broadcast_module(self.teacher)  # every DDP rank distills from rank 0's teacher
        if self.distiller is not None:
            self.distiller.close()
        self.distiller = Distiller(self.teacher, self.temperature, self.alpha, self.features)
        if "projections" in self._pending:
            self.distiller.load_projection_state(self._pending["projections"], pl_module.device)
        self._pending = {}  # on_train_epoch_start turns the distiller on in its epochs

    def _check_outputs(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Refuse outputs that are not logits, or a teacher scoring other classes.

        Raises:
            ValueError: Saying what the model returned and what is expected.
        """
        teacher = self.teacher or self._template or self.teacher_source
        assert isinstance(teacher, nn.Module)
        sample = example_input(trainer, pl_module)
        with eval_forward(pl_module) as student:
            student_out = check_logits(student(sample), f"{type(pl_module).__name__}.forward")
        teacher.to(sample.device)
        with eval_forward(teacher) as frozen:
            teacher_out = check_logits(frozen(sample), "the teacher")
        if teacher_out.shape[-1] != student_out.shape[-1]:
            raise ValueError(
                f"Distillation: the teacher scores {teacher_out.shape[-1]} classes but "
                f"{type(pl_module).__name__} {student_out.shape[-1]}. The teacher must be a "
                "classifier over the same classes (same num_classes), fed the same inputs."
            )

    def _release(self, pl_module: pl.LightningModule) -> None:
        active.unregister(pl_module)
        if self.distiller is not None:
            self.distiller.close()  # no hooks left on the student or a user's teacher


def _check_teacher(teacher: object) -> nn.Module | str | Path:
    if isinstance(teacher, nn.Module) or teacher == "initial":
        return teacher  # type: ignore[return-value]
    if isinstance(teacher, (str, PathLike)):
        path = Path(teacher)
        if not path.is_file():
            raise ValueError(
                f"Distillation(teacher={str(teacher)!r}): no such file. Pass 'initial' (a frozen "
                "copy of the model as fit starts), an nn.Module, or the path of a checkpoint of "
                "the dense model, e.g. Distillation(teacher='runs/dense/last.ckpt')."
            )
        return path
    raise ValueError(
        f"teacher must be 'initial', an nn.Module or a checkpoint path; got "
        f"{type(teacher).__name__} {teacher!r:.60}. Example: {_EXAMPLE}"
    )


def _check_features(features: object) -> dict[str, str]:
    if features is None:
        return {}
    if isinstance(features, Mapping):
        pairs = dict(features)
    elif isinstance(features, Sequence) and not isinstance(features, str):
        pairs = {name: name for name in features}
    else:
        pairs = {"": ""}  # refused below
    if not pairs or not all(
        isinstance(k, str) and k and isinstance(v, str) and v for k, v in pairs.items()
    ):
        raise ValueError(
            "features must map student layer names to teacher layer names, or list names "
            f"both share; got {features!r:.80}. Example: Distillation(features="
            "{'model.layer3': 'model.layer3'}) or Distillation(features=['model.layer3'])"
        )
    return pairs
