"""``LatencyBudgetPruning``: prune channels until the model meets a latency measured on its runtime.

The user states a budget (milliseconds, or a speedup over the dense model); the callback
decides per channel group how many channels to keep so the exported model meets it on the
runtime that will serve it (any backend of the registry), losing as little importance per
millisecond saved as it can. See ``docs/latency_budget.md``.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_accel.backends import DEFAULT_BACKEND, BackendName, CompiledModel, get_backend
from lightning_accel.callbacks.base import (
    AccelCallback,
    check_bool,
    check_end_epoch,
    check_epoch,
    check_finite_weights,
    check_int,
    check_number,
    check_patterns,
    example_input,
    rebuild_optimizers,
)
from lightning_accel.checkpointing import record_structural_change
from lightning_accel.pruning.allocation import (
    CUT_CHECKS,
    CUT_SLACK,
    MAX_STAGES,
    Allocation,
    DropCorrection,
    allocate,
    pulled_back_aim,
    schedule_target,
    stage_goal,
)
from lightning_accel.pruning.channels import out_channels
from lightning_accel.pruning.criteria import (
    Criterion,
    check_criterion,
    has_gradients,
    needs_gradients,
)
from lightning_accel.pruning.latency_model import (
    ChannelGroup,
    LatencyModel,
    Probe,
    build_latency_model,
    channel_groups,
    dependency_graph,
    group_scores,
    prune_groups,
    round_ratio,
    thinned_copy,
)
from lightning_accel.pruning.schedules import SCHEDULES, ScheduleName, StepSchedule
from lightning_accel.tracking.wandb_logging import wandb_run
from lightning_accel.utilities.layer_selection import protected_modules, select_layers

_EXAMPLE = "LatencyBudgetPruning(target_speedup=2.0, end_epoch=4)"


# A final latency further below the budget than this (or twice the measured spread) is warned
# about: the plan overshot, and pruned channels do not come back.
OVERSHOOT_FLOOR = 0.2
# Fresh runtime sessions of the dense file and of the final model timed for the final figure.
CONFIRM_SESSIONS = 2


class LatencyBudgetPruning(AccelCallback):
    """Structured pruning that reaches a latency budget measured on the target runtime.

    At train start the dense model is exported and timed on ``backend`` at ``batch_size`` with
    ``threads``; so is the smallest model the budget allows (every group at ``round_to``
    channels), which bounds what is reachable. At each pruning step (once per epoch from
    ``start_epoch``, reaching the budget at the first batch of ``end_epoch``, following
    ``schedule``) the callback

    1. measures a latency model of the model as it is now (each channel group thinned alone to
       a few widths, exported and timed as a whole model; see
       :mod:`~lightning_accel.pruning.latency_model`),
    2. allocates cuts greedily, least importance lost per millisecond saved
       (:func:`~lightning_accel.pruning.allocation.allocate`, NetAdapt / HALP), to the latency
       the schedule asks for at this step, scaled by the error measured at the previous step,
    3. removes those channels (torch-pruning), rebuilds the optimizer, records the change in
       the structural log (checkpoints replay it),
    4. exports the real model with ``to_onnx`` and times it on the backend in rounds
       alternating with the dense model (closed loop).

    At ``end_epoch`` it repeats steps 2-4 up to ``max_corrections`` times until the measured
    latency is within budget. Within budget means ``measured <= target * (1 + tol)``, where
    ``tol`` is the measured spread: half the interquartile range, over the timing rounds, of
    the per-round ratio dense/model (speedup target) or of the per-round model medians
    (millisecond target), relative to its median; it is stated in the final message. A speedup
    target is judged on that per-round ratio (dense and model alternate in every round), so
    CPU contention cancels: ``measured = dense at train start / measured speedup``.

    **The final figure is a confirmation, not the measurement that stopped the loop.** The loop
    stops at the first measurement inside the budget, so that one leans fast (a noisy figure
    selected for being low), and two runtime sessions of one file can time ~10% apart on a
    shared CPU. Once a measurement is inside the budget, the model is exported again and timed
    in ``CONFIRM_SESSIONS`` fresh sessions against as many fresh sessions of the dense file;
    the speedup is the median per-round ratio over every dense/model session pair and the
    tolerance half their IQR, so it includes the session-to-session part. A confirmation
    outside the budget sends the loop back to cutting (within ``max_corrections``); the final
    message, ``last`` and the logged metrics carry the confirmation.

    Args:
        target_latency_ms: Budget in milliseconds per batch of ``batch_size``.
        target_speedup: Budget as a speedup over the dense model (> 1); exactly one target.
        backend: A registered backend (``lightning_accel.backends.BACKENDS``).
        batch_size: Batch size the budget is for.
        threads: CPU threads of the runtime; default: all cores.
        start_epoch: First epoch that prunes.
        end_epoch: Epoch at whose first batch the budget is met; default ``max_epochs - 1``.
        schedule: How the latency falls from dense to budget: ``"cubic"``, ``"linear"``,
            ``"constant"`` (one shot).
        ignore: Glob patterns of layers whose output channels stay.
        round_to: Widths stay multiples of this; every group keeps at least this many.
        criterion: Channel importance (``"l1"``, ``"l2"``, ``"taylor"`` or a callable).
        keep_first_and_last: Keep the first layer's outputs and the classifier.
        update_every_n_steps: Batches between pruning steps; ``None``: once per epoch.
        widths_per_group: Widths each group is timed at when the latency model is measured.
        max_corrections: Extra measure-and-cut rounds at ``end_epoch`` if the budget is missed.
        timing_rounds: Alternating timing rounds per measurement.

    Logged per epoch: ``latency/<backend>/target_ms``, ``measured_ms``, ``predicted_ms``,
    ``dense_ms`` (measured in the same rounds) and ``speedup``; per-layer widths as
    ``compress/width/<layer>`` (a plain dict for any logger) or a W&B table
    ``compress/widths`` with a ``WandbLogger``.

    Raises:
        ValueError: At construction for arguments out of range, both or neither target, or a
            speedup <= 1; in ``setup`` (or at train start if the module has no
            ``example_input_array``), for a budget at or above the dense latency, a budget below
            the smallest reachable latency, or a model with no prunable channel group. The
            model is untouched.
        RuntimeError: In ``setup``, if the backend cannot run here.

    Example:
        >>> pruning = LatencyBudgetPruning(target_speedup=2.0, end_epoch=4)
        >>> trainer = L.Trainer(max_epochs=6, callbacks=[pruning])  # doctest: +SKIP
    """

    changes_structure = True
    technique = "LatencyBudgetPruning"

    def __init__(
        self,
        target_latency_ms: float | None = None,
        target_speedup: float | None = None,
        backend: BackendName = DEFAULT_BACKEND,
        batch_size: int = 1,
        threads: int | None = None,
        start_epoch: int = 0,
        end_epoch: int | None = None,
        schedule: ScheduleName = "cubic",
        ignore: Sequence[str] = (),
        round_to: int = 8,
        criterion: Criterion = "l2",
        keep_first_and_last: bool = True,
        update_every_n_steps: int | None = None,
        widths_per_group: int = 3,
        max_corrections: int = 3,
        timing_rounds: int = 5,
    ) -> None:
        super().__init__()
        if (target_latency_ms is None) == (target_speedup is None):
            raise ValueError(
                "LatencyBudgetPruning needs exactly one target: target_latency_ms (ms per batch) "
                f"or target_speedup (x over the dense model); got target_latency_ms="
                f"{target_latency_ms!r}, target_speedup={target_speedup!r}. Example: {_EXAMPLE}"
            )
        if target_latency_ms is not None:
            check_number(target_latency_ms, "target_latency_ms", _EXAMPLE, 0.0, low_open=True)
        if target_speedup is not None:
            check_number(target_speedup, "target_speedup", _EXAMPLE, 1.0, low_open=True)
        self.backend = get_backend(backend, "LatencyBudgetPruning(backend=...)").name
        check_int(batch_size, "batch_size", _EXAMPLE)
        check_int(threads, "threads", _EXAMPLE, optional=True)
        check_epoch(start_epoch, "start_epoch", _EXAMPLE)
        check_end_epoch(start_epoch, end_epoch, _EXAMPLE)
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}; got {schedule!r}")
        check_int(round_to, "round_to", "LatencyBudgetPruning(target_speedup=2, round_to=8)")
        check_criterion(criterion)
        check_bool(keep_first_and_last, "keep_first_and_last")
        check_int(update_every_n_steps, "update_every_n_steps", _EXAMPLE, optional=True)
        check_int(widths_per_group, "widths_per_group", _EXAMPLE)
        check_int(max_corrections, "max_corrections", _EXAMPLE, minimum=0)
        check_int(timing_rounds, "timing_rounds", _EXAMPLE)
        self.target_latency_ms = None if target_latency_ms is None else float(target_latency_ms)
        self.target_speedup = None if target_speedup is None else float(target_speedup)
        self.batch_size = batch_size
        self.threads = threads
        self.start_epoch = start_epoch
        self.end_epoch = end_epoch
        self.schedule = schedule
        self.ignore = check_patterns(ignore, "ignore")
        self.round_to = round_to
        self.criterion = criterion
        self.keep_first_and_last = keep_first_and_last
        self.update_every_n_steps = update_every_n_steps
        self.widths_per_group = widths_per_group
        self.max_corrections = max_corrections
        self.timing_rounds = timing_rounds

        self.target_ms: float | None = None  # the budget in ms (a speedup: dense / speedup)
        self.dense_ms: float | None = None  # measured at train start
        self.floor_ms: float | None = None  # measured: every group at round_to channels
        self.tolerance: float = 0.0  # relative, from the measured spread
        self.progress = 0.0  # schedule progress applied so far
        self.scale = 1.0  # measured / predicted drop since the latency model was measured
        self._drop: DropCorrection | None = None
        self.last: dict[str, float] = {}  # last measurement: measured_ms, dense_ms, predicted_ms
        self.widths: dict[str, int] = {}
        self.history: list[dict[str, Any]] = []
        self._layers: list[str] = []
        self._protected: list[str] = []  # modules other than layers that `ignore` names
        self._example: Tensor | None = None
        self._probe: Probe | None = None
        self._dense: CompiledModel | None = None
        self._dense_path: Path | None = None  # the dense ONNX file, for fresh sessions
        self._fresh_dense: list[CompiledModel] = []  # its sessions for the confirmations
        self._model: LatencyModel | None = None  # the latest latency model (rank zero)
        self._step_schedule: StepSchedule | None = None
        self._pending = False
        self._checked = False
        self._warned = False  # the "cannot be reached" warning was given
        self.closest: float | None = None  # lowest latency measured with every group at minimum

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(backend=self.backend, batch_size=self.batch_size)

    @property
    def _key(self) -> str:
        return f"latency/{self.backend}"

    @override
    def metric_names(self) -> tuple[str, ...]:
        k = self._key
        return (
            f"{k}/target_ms",
            f"{k}/measured_ms",
            f"{k}/predicted_ms",
            f"{k}/dense_ms",
            f"{k}/speedup",
        )

    @override
    def logged_metrics(self) -> tuple[str, ...]:
        """:meth:`metric_names` plus ``compress/width/<layer>`` per selected layer.

        The width names are known once the layers are selected (train start); logged straight
        to the loggers (a W&B table under ``compress/widths`` with a ``WandbLogger``).
        """
        widths = tuple(f"compress/width/{name}" for name in self._layers)
        return self.metric_names() + widths

    def resolved_end_epoch(self, max_epochs: int | None) -> int:
        """``end_epoch``, or ``max(max_epochs - 1, start_epoch + 1)``.

        Raises:
            ValueError: If neither ``end_epoch`` nor ``max_epochs`` is set.
        """
        if self.end_epoch is not None:
            return self.end_epoch
        if max_epochs is None or max_epochs < 0:
            raise ValueError(
                f"LatencyBudgetPruning needs end_epoch without max_epochs. Example: {_EXAMPLE}"
            )
        return max(max_epochs - 1, self.start_epoch + 1)

    @override
    def rewires_channels_until(self, trainer: pl.Trainer) -> int | None:
        return self.resolved_end_epoch(trainer.max_epochs)

    # ----------------------------------------------------------------- lifecycle
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        problem = get_backend(self.backend).problem()
        if problem:
            raise RuntimeError(
                f"LatencyBudgetPruning(backend={self.backend!r}) cannot run here: {problem}. "
                f"Use backend={DEFAULT_BACKEND!r} or install the runtime. The model was not "
                "changed."
            )
        self.end_epoch = self.resolved_end_epoch(trainer.max_epochs)
        self.check_schedule_fits(trainer, "end_epoch", self.end_epoch)
        self.warn_without_checkpoint_support(pl_module, "pruned")
        sample = pl_module.example_input_array
        if isinstance(sample, Tensor):  # else checked at train start, from a training batch
            self._example = sample[:1].to(pl_module.device)
            self._start(trainer, pl_module)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self.end_epoch is not None
        self.check_reached_within_max_steps(trainer, f"end_epoch={self.end_epoch}", self.end_epoch)
        self._example = example_input(trainer, pl_module)
        if not self._checked and self.progress > 0 and self.dense_ms is not None:
            # Resumed without example_input_array: the model is already pruned, so the dense
            # figures come from the checkpoint and later steps are timed without a dense twin.
            self._layers = select_layers(
                pl_module, self._example, self.ignore, self.keep_first_and_last, self.technique
            )
            self._protected = protected_modules(pl_module, self.ignore, self.technique)
            self._probe = Probe(
                self.backend, self._example.cpu(), self.batch_size, self.threads, self.timing_rounds
            )
            self._checked = True
        if not self._checked:
            self._start(trainer, pl_module)
        steps = trainer.num_training_batches
        if not math.isfinite(steps):
            raise ValueError("LatencyBudgetPruning needs a train dataloader with a length.")
        self._step_schedule = StepSchedule(
            start_epoch=self.start_epoch,
            end_epoch=self.end_epoch,
            steps_per_epoch=int(steps),
            every_n_steps=self.update_every_n_steps,
            initial=0.0,
            final=1.0,
            name=self.schedule,
        )
        self.widths = self._layer_widths(pl_module)

    def _start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Measure the dense and the smallest model; refuse budgets out of reach (model untouched).

        Raises:
            ValueError: No prunable group, a budget at or above the dense latency, or below the
                smallest reachable one.
        """
        assert self._example is not None
        self._layers = select_layers(
            pl_module, self._example, self.ignore, self.keep_first_and_last, self.technique
        )
        # attention blocks, norms, blocks named in ignore: kept whole (#12)
        self._protected = protected_modules(pl_module, self.ignore, self.technique)
        groups = channel_groups(
            pl_module, self._example, self._layers, self.round_to, protect=self._protected
        )
        if not groups:
            raise ValueError(
                f"LatencyBudgetPruning found no prunable channel group: every torch-pruning group "
                f"of the selected layers {self._layers[:4]} is coupled to a kept layer or has at "
                f"most round_to={self.round_to} channels. Lower round_to, drop ignore patterns or "
                "pass keep_first_and_last=False. The model was not changed."
            )
        result: Any = None
        if trainer.is_global_zero:
            result = self._measure_bounds(pl_module, groups)
        dense_ms, floor_ms, tolerance = trainer.strategy.broadcast(result, src=0)
        self.dense_ms, self.floor_ms, self.tolerance = dense_ms, floor_ms, tolerance
        target = self.target_latency_ms or dense_ms / (self.target_speedup or 1.0)
        self._checked = True
        # A resumed run's last measurement replaces this one when its state loads.
        self.last = {"measured_ms": dense_ms, "dense_ms": dense_ms, "predicted_ms": dense_ms}
        self.target_ms = target
        if self.target_latency_ms is not None and target >= dense_ms:
            raise ValueError(
                f"LatencyBudgetPruning(target_latency_ms={target:g}): the dense model already "
                f"runs in {dense_ms:.4g} ms (measured on {self.backend}, batch {self.batch_size}), "
                f"so there is nothing to prune for. Set target_latency_ms below {dense_ms:.4g}. "
                "The model was not changed."
            )
        if target < floor_ms * (1.0 - tolerance):
            raise ValueError(
                f"LatencyBudgetPruning cannot reach {target:.4g} ms on {self.backend} (batch "
                f"{self.batch_size}): with every channel group cut to round_to={self.round_to} "
                f"channels the model still runs in {floor_ms:.4g} ms (measured; dense "
                f"{dense_ms:.4g} ms), the closest reachable latency, a speedup of at most "
                f"{dense_ms / floor_ms:.2f}x. Raise the budget to >= {floor_ms:.4g} ms (or "
                f"target_speedup <= {dense_ms / floor_ms:.2f}). The model was not changed."
            )
        rank_zero_info(
            f"LatencyBudgetPruning: dense {dense_ms:.4g} ms, budget {target:.4g} ms, smallest "
            f"reachable {floor_ms:.4g} ms on {self.backend} (batch {self.batch_size}); "
            f"tolerance {tolerance:.1%} from the measured spread; {len(groups)} channel groups."
        )

    def _measure_bounds(
        self, pl_module: pl.LightningModule, groups: list[ChannelGroup]
    ) -> tuple[float, float, float]:
        assert self._example is not None
        self._close()
        self._probe = Probe(
            self.backend, self._example.cpu(), self.batch_size, self.threads, self.timing_rounds
        )
        self._probe.folder = Path(tempfile.mkdtemp(prefix="latency-budget-"))
        try:
            smallest = thinned_copy(
                pl_module, self._example, {g.name: self.round_to for g in groups}
            )
            floor = self._probe.compile(smallest)
        except Exception as err:
            raise ValueError(
                f"LatencyBudgetPruning would break {type(pl_module).__name__}: cutting a copy to "
                f"round_to={self.round_to} channels per group fails ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}). Leave the layers involved out "
                "with ignore=[...]. The model was not changed."
            ) from err
        self._dense_path = self._probe.export(pl_module, exact=True)
        self._dense = self._probe.session(self._dense_path)
        dense_runs, floor_runs = self._probe.time_rounds([self._dense, floor])
        dense_ms = _median(dense_runs)
        speedup, spread = round_ratio(dense_runs, floor_runs)
        if self.target_speedup is None:
            spread = _spread(dense_runs)
        return dense_ms, dense_ms / speedup, spread

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        assert self._step_schedule is not None
        progress = self._step_schedule.due(
            trainer.current_epoch, batch_idx, self.progress, self._pending
        )
        if progress is None:
            return
        if needs_gradients(self.criterion) and not has_gradients(
            [pl_module.get_submodule(n).weight for n in self._layers]  # type: ignore[misc]
        ):
            self._pending = True  # rank by the gradients of this batch, one batch later
            return
        self._pending = False
        assert self.dense_ms is not None and self.target_ms is not None
        goal = schedule_target(self.dense_ms, self.target_ms, progress)
        final = progress >= 1.0 - 1e-9
        stages = 0
        # Removed channels cannot return, so the goal is approached from above: a large cut
        # in stages, each measured and correcting the next (see stage_goal).
        while stages < MAX_STAGES:
            aim = stage_goal(self._budget_frame(self.last), goal, final)
            if aim <= goal:
                break
            self._step(trainer, pl_module, progress, refresh=stages == 0, aim_ms=aim)
            stages += 1
        self._step(trainer, pl_module, progress, refresh=stages == 0)
        if final:
            self._finish(trainer, pl_module)
            self._report_final()

    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """At ``end_epoch``: correct until a confirmation puts the model within budget.

        A correction reuses the latency model of this step, re-anchored at the measured
        latency and scaled by the error just measured (no new profile). The last figure is
        always a confirmation (:meth:`_confirm`), taken after the last cut.
        """
        corrections = 0
        while True:
            if self._within_budget():
                self._confirm_last(trainer, pl_module)
                if self._within_budget():
                    return
            if corrections >= self.max_corrections:
                break
            self._step(trainer, pl_module, 1.0, refresh=False)
            corrections += 1
        if "sessions" not in self.last:
            self._confirm_last(trainer, pl_module)

    def _confirm_last(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Replace ``last`` with a confirmation timed on rank zero (every rank gets it)."""
        measured: Any = self._confirm(pl_module) if trainer.is_global_zero else None
        measured = trainer.strategy.broadcast(measured, src=0)
        measured["predicted_ms"] = self.last.get("predicted_ms", measured["measured_ms"])
        self.last = measured
        assert self.target_ms is not None
        self._record(trainer, self.target_ms, measured)

    def _record(self, trainer: pl.Trainer, goal_ms: float, measured: dict[str, float]) -> None:
        """Append one measurement, with its goal and the widths it was taken at, to history."""
        self.history.append(
            {
                "epoch": trainer.current_epoch,
                "goal_ms": goal_ms,
                **measured,
                "widths": dict(self.widths),
            }
        )

    # ----------------------------------------------------------------- one step
    def _step(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        progress: float,
        refresh: bool = True,
        aim_ms: float | None = None,
    ) -> None:
        """Plan on rank zero, apply on every rank, measure on rank zero (closed loop).

        Args:
            trainer: The Trainer.
            pl_module: The module, changed in place.
            progress: Schedule progress in [0, 1]: sets the step's latency goal.
            refresh: Measure a new latency model (else reuse the last one).
            aim_ms: Latency to cut to in this stage (above the step's goal); default: the goal.
        """
        assert (
            self._example is not None and self.dense_ms is not None and self.target_ms is not None
        )
        check_finite_weights(pl_module, self.technique)
        before = self._budget_frame(self.last)
        goal = schedule_target(self.dense_ms, self.target_ms, progress)
        goal = goal if aim_ms is None else max(goal, aim_ms)
        graph = dependency_graph(pl_module, self._example)
        plan: Any = None
        if trainer.is_global_zero:
            plan = self._plan(pl_module, graph, before, goal, refresh)
        removals, predicted, reached, refreshed = trainer.strategy.broadcast(plan, src=0)
        if refreshed or self._drop is None:  # a new latency model: its own error from here on
            self._drop = DropCorrection(before, scale=self.scale)
        history = prune_groups(pl_module, graph, removals)
        if history:
            record_structural_change(
                pl_module, "channel_pruning", input_shape=list(self._example.shape), history=history
            )
            rebuild_optimizers(trainer)
        measured: Any = None
        if trainer.is_global_zero:
            measured = self._measure(pl_module) if history else dict(self.last)
        measured = trainer.strategy.broadcast(measured, src=0)
        measured["predicted_ms"] = predicted
        after = self._budget_frame(measured)
        if history:
            self.scale = self._drop.update(before, predicted, after)
        self.last = measured
        self.progress = max(self.progress, progress)
        self.widths = self._layer_widths(pl_module)
        self._record(trainer, goal, measured)
        if not reached:
            self._note_unreachable(goal, predicted, after)

    def _note_unreachable(self, goal: float, predicted: float, measured: float) -> None:
        """Warn once that ``goal`` is out of reach; keep the closest latency for the final message.

        Args:
            goal: The latency the step aimed at, in ms.
            predicted: The allocator's closest prediction (every group at its minimum), in ms.
            measured: The latency measured after the step, in ms (budget frame).
        """
        self.closest = measured if self.closest is None else min(self.closest, measured)
        if self._warned:  # once: the final message repeats the closest latency
            return
        self._warned = True
        rank_zero_warn(
            f"LatencyBudgetPruning: the latency model predicts that {goal:.4g} ms cannot be "
            f"reached without cutting groups below round_to={self.round_to} channels; closest "
            f"reachable: {predicted:.4g} ms predicted, {measured:.4g} ms measured. The final "
            "message gives the closest latency reached."
        )

    def _plan(
        self,
        pl_module: pl.LightningModule,
        graph: Any,
        before: float,
        goal: float,
        refresh: bool = True,
    ) -> tuple[dict[str, list[int]], float, bool, bool]:
        assert self._example is not None and self._probe is not None
        groups = channel_groups(
            pl_module, self._example, self._layers, self.round_to, graph, self._protected
        )
        if not groups:
            return {}, before, False, False
        stale = self._model is None or set(self._model.curves) != {g.name for g in groups}
        if refresh or stale:
            self._model = self._latency_model(pl_module, groups)
        model = self._model
        assert model is not None
        names = [g.name for g in groups]
        scores = group_scores(
            pl_module, graph, self._layers, names, self.criterion, self._protected
        )

        def saving(name: str, width: int) -> float:  # in the measured (shipped) frame
            return model.saving(name, width) * before / model.base_ms

        weights = {g.name: float(len(g.layers)) for g in groups}

        def plan_for(aim: float) -> Allocation:
            return allocate(scores, saving, before, aim, self.round_to, self.scale, weights)

        allocation = plan_for(goal)
        reached = allocation.reached
        if any(allocation.removals.values()):
            allocation = self._checked_cut(pl_module, allocation, plan_for, before, goal)
        return allocation.removals, allocation.predicted_ms, reached, refresh or stale

    def _checked_cut(
        self,
        pl_module: pl.LightningModule,
        plan: Allocation,
        plan_for: Callable[[float], Allocation],
        before: float,
        goal: float,
    ) -> Allocation:
        """Time a planned cut on a thinned copy first; pull an overshoot back (NetAdapt-style).

        Up to ``CUT_CHECKS`` plans are timed against the model as it is (probes' exporter, in
        alternating rounds); the first one landing no lower than ``CUT_SLACK`` below ``goal``
        is returned, else the last (the least cut). See :func:`pulled_back_aim`.
        """
        assert self._example is not None and self._probe is not None
        current = self._probe.compile(pl_module)
        aim = goal
        for check in range(CUT_CHECKS):
            candidate = self._probe.compile(thinned_copy(pl_module, self._example, plan.widths))
            now_runs, cut_runs = self._probe.time_rounds([current, candidate])
            landed = before / round_ratio(now_runs, cut_runs)[0]
            if landed >= goal * (1.0 - CUT_SLACK) or check == CUT_CHECKS - 1:
                return plan
            aim = pulled_back_aim(aim, goal, landed, before)
            pulled = plan_for(aim)
            if pulled.widths == plan.widths or not any(pulled.removals.values()):
                return plan  # no smaller cut to take: the least cut found
            plan = pulled
        return plan

    def _latency_model(
        self, pl_module: pl.LightningModule, groups: list[ChannelGroup]
    ) -> LatencyModel:
        assert self._example is not None and self._probe is not None
        return build_latency_model(
            pl_module, self._example, groups, self._probe, self.round_to, self.widths_per_group
        )

    def _measure(self, pl_module: pl.LightningModule) -> dict[str, float]:
        """Export the model as shipped (``to_onnx``) and time it alternating with the dense one."""
        assert self._probe is not None and self.dense_ms is not None
        model = self._probe.compile(pl_module, exact=True)
        if self._dense is None:
            (model_runs,) = self._probe.time_rounds([model])
            measured = _median(model_runs)
            return {
                "measured_ms": measured,
                "dense_ms": self.dense_ms,
                "speedup": self.dense_ms / measured,
                "spread": _spread(model_runs),
            }
        dense_runs, model_runs = self._probe.time_rounds([self._dense, model])
        speedup, spread = round_ratio(dense_runs, model_runs)
        return {
            "measured_ms": _median(model_runs),
            "dense_ms": _median(dense_runs),
            "speedup": speedup,
            "spread": spread if self.target_speedup else _spread(model_runs),
        }

    def _confirm(self, pl_module: pl.LightningModule) -> dict[str, float]:
        """The model timed in fresh sessions against fresh dense sessions (see the class doc).

        Returns:
            ``measured_ms``, ``dense_ms`` (medians over every session's runs), ``speedup`` (the
            median per-round ratio over every dense/model session pair), ``spread`` (half
            their IQR relative to the median; millisecond target: of the model sessions'
            per-round medians) and ``sessions``.
        """
        assert self._probe is not None and self.dense_ms is not None
        path = self._probe.export(pl_module, exact=True)
        models = [self._probe.session(path) for _ in range(CONFIRM_SESSIONS)]
        dense_path = self._dense_path  # None when resumed without a dense twin: ms only
        if dense_path is not None and not self._fresh_dense:  # compiled once, after the loop
            self._fresh_dense = [self._probe.session(dense_path) for _ in range(CONFIRM_SESSIONS)]
        dense = self._fresh_dense
        runs = self._probe.time_rounds(dense + models)
        dense_runs, model_runs = runs[: len(dense)], runs[len(dense) :]
        model_rounds = [r for m in model_runs for r in m]  # every model session's rounds
        measured, spread = _median(model_rounds), _spread(model_rounds)
        if not dense:
            dense_ms, speedup = self.dense_ms, self.dense_ms / measured
        else:  # the rounds of every dense/model session pair, side by side
            pairs = [(d[i], m[i]) for d in dense_runs for m in model_runs for i in range(len(d))]
            speedup, ratio_spread = round_ratio([d for d, _ in pairs], [m for _, m in pairs])
            dense_ms = _median([r for d in dense_runs for r in d])
            spread = ratio_spread if self.target_speedup else spread
        return {
            "measured_ms": measured,
            "dense_ms": dense_ms,
            "speedup": speedup,
            "spread": spread,
            "sessions": float(len(models)),
        }

    def _sessions_note(self) -> str:
        sessions = int(self.last.get("sessions", 0))
        return f", confirmed in {sessions} fresh sessions of each" if sessions else ""

    def _budget_frame(self, measurement: dict[str, float]) -> float:
        """The measured latency the budget is judged on, in ms.

        Raw for a millisecond target; for a speedup target, corrected for contention:
        ``dense at start * model / dense now`` (both timed in the same rounds).
        """
        assert self.dense_ms is not None
        if self.target_speedup is None or "speedup" not in measurement:
            return measurement["measured_ms"]
        return self.dense_ms / measurement["speedup"]

    def _within_budget(self) -> bool:
        assert self.target_ms is not None
        tolerance = self.last.get("spread", self.tolerance)
        return self._budget_frame(self.last) <= self.target_ms * (1.0 + tolerance)

    def _report_final(self) -> None:
        assert self.target_ms is not None
        frame = self._budget_frame(self.last)
        speedup = self.last.get("speedup", self.last["dense_ms"] / self.last["measured_ms"])
        tolerance = self.last.get("spread", self.tolerance)
        if tolerance > 0.1:
            rank_zero_warn(
                f"LatencyBudgetPruning: timing on {self.backend} is unstable (the per-round "
                f"spread is {tolerance:.0%}): other processes share the CPU. Judge the result on "
                "an idle machine, with threads= fixed."
            )
        if self._within_budget():
            rank_zero_info(
                f"LatencyBudgetPruning: budget met on {self.backend}: {frame:.4g} ms measured vs "
                f"{self.target_ms:.4g} ms budget (tolerance {tolerance:.1%}, the measured spread; "
                f"measured {frame / self.target_ms - 1.0:+.1%} from it); {speedup:.2f}x the dense "
                f"model in the same timing rounds{self._sessions_note()}."
            )
            if frame < self.target_ms * (1.0 - max(2.0 * tolerance, OVERSHOOT_FLOOR)):
                # Channels cannot come back: a cut past the budget costs accuracy for nothing.
                asked = self.dense_ms / self.target_ms if self.dense_ms else float("nan")
                rank_zero_warn(
                    f"LatencyBudgetPruning: pruned past the budget on {self.backend}: "
                    f"{frame:.4g} ms for a {self.target_ms:.4g} ms budget "
                    f"({frame / self.target_ms - 1.0:+.0%}), {speedup:.2f}x the dense model where "
                    f"{asked:.2f}x was asked, giving up more accuracy than the budget needed. "
                    f"The latency model's predictions were off (timing spread {tolerance:.0%}): "
                    "time on an idle machine with threads= fixed, or prune over more steps "
                    "(a gradual schedule corrects after each)."
                )
        else:
            why = (
                f"every channel group reached round_to={self.round_to} channels, and the closest "
                f"latency reachable was {self.closest:.4g} ms measured"
                if self._warned and self.closest is not None
                else f"after {self.max_corrections} corrections"
            )
            rank_zero_warn(
                f"LatencyBudgetPruning: budget NOT met on {self.backend}: {frame:.4g} ms measured "
                f"vs {self.target_ms:.4g} ms budget (tolerance {tolerance:.1%}); {why}; "
                f"{speedup:.2f}x the dense model. Raise the budget or lower round_to."
            )

    # ----------------------------------------------------------------- logging, state
    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.target_ms is None or not self.last:
            return
        k = self._key
        self.log_metrics(
            pl_module,
            {
                f"{k}/target_ms": float(self.target_ms),
                f"{k}/measured_ms": float(self.last["measured_ms"]),
                f"{k}/predicted_ms": float(self.last.get("predicted_ms", self.last["measured_ms"])),
                f"{k}/dense_ms": float(self.last["dense_ms"]),
                f"{k}/speedup": float(
                    self.last.get("speedup", self.last["dense_ms"] / self.last["measured_ms"])
                ),
            },
        )
        plain = {f"compress/width/{name}": float(w) for name, w in self.widths.items()}
        self.metrics.update(plain)
        if not trainer.is_global_zero:
            return
        from lightning.pytorch.loggers import WandbLogger

        run = wandb_run(trainer)
        for logger in trainer.loggers:
            if run is not None and isinstance(logger, WandbLogger):
                import wandb

                rows = [[trainer.current_epoch, n, w] for n, w in self.widths.items()]
                table = wandb.Table(columns=["epoch", "layer", "width"], data=rows)
                run.log({"compress/widths": table})
            else:
                logger.log_metrics(plain, step=trainer.global_step)

    def _layer_widths(self, pl_module: pl.LightningModule) -> dict[str, int]:
        return {name: out_channels(pl_module.get_submodule(name)) for name in self._layers}

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        self._close()

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        super().on_exception(trainer, pl_module, exception)
        self._close()

    def _close(self) -> None:
        self._dense, self._dense_path, self._fresh_dense = None, None, []
        if self._probe is not None:
            self._probe.close()
            self._probe = None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "progress": self.progress,
            "scale": self.scale,
            "target_ms": self.target_ms,
            "dense_ms": self.dense_ms,
            "floor_ms": self.floor_ms,
            "tolerance": self.tolerance,
            "last": dict(self.last),
            "history": list(self.history),
            "end_epoch": self.end_epoch,
            "closest": self.closest,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.progress = float(state_dict.get("progress", 0.0))
        self.scale = float(state_dict.get("scale", 1.0))
        self.last = dict(state_dict.get("last", {})) or self.last
        if not self._checked:  # measured in setup otherwise; kept for a resume without one
            self.dense_ms = state_dict.get("dense_ms")
            self.floor_ms = state_dict.get("floor_ms")
            self.tolerance = float(state_dict.get("tolerance", 0.0))
            self.target_ms = state_dict.get("target_ms")
        self.history = list(state_dict.get("history", []))
        self.end_epoch = state_dict.get("end_epoch", self.end_epoch)
        self.closest = state_dict.get("closest", self.closest)


def _median(runs: list[list[float]]) -> float:
    """Median of all runs of all rounds, in ms."""
    return float(np.median([t for r in runs for t in r]))


def _spread(runs: list[list[float]]) -> float:
    """Half the interquartile range of the per-round medians, relative to their median."""
    p25, median, p75 = np.percentile([np.median(r) for r in runs], [25, 50, 75])
    return float((p75 - p25) / 2.0 / median)


def callback_from_flags(
    latency_budget_ms: float | None = None, target_speedup: float | None = None, **options: Any
) -> LatencyBudgetPruning | None:
    """The callback ``lightning-accel fit --latency-budget-ms / --target-speedup`` adds.

    Args:
        latency_budget_ms: ``--latency-budget-ms``: budget in ms at ``options['batch_size']``.
        target_speedup: ``--target-speedup``: budget as a speedup over the dense model.
        **options: Other :class:`LatencyBudgetPruning` arguments (backend, epochs, round_to).

    Returns:
        ``None`` when neither flag is given.

    Raises:
        ValueError: If both flags are given, or a value is out of range.
    """
    if latency_budget_ms is None and target_speedup is None:
        return None
    return LatencyBudgetPruning(
        target_latency_ms=latency_budget_ms, target_speedup=target_speedup, **options
    )


__all__ = ["LatencyBudgetPruning", "callback_from_flags"]
