"""``GradualPruning``: prune during ``fit`` on a schedule (Zhu & Gupta, 2017)."""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from typing_extensions import override

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
    layer_modules,
    rebuild_optimizers,
)
from lightning_accel.checkpointing import record_structural_change
from lightning_accel.pruning.channels import (
    check_structured_support,
    input_specs,
    out_channels,
    prune_channels,
    ratios_to_widths,
)
from lightning_accel.pruning.criteria import (
    Criterion,
    check_criterion,
    has_gradients,
    needs_gradients,
    weight_scores,
)
from lightning_accel.pruning.masks import (
    apply_masks,
    magnitude_masks,
    n_m_mask,
    weight_owners,
    weight_sparsity,
)
from lightning_accel.pruning.plan import channel_sparsity, rehearse
from lightning_accel.pruning.schedules import SCHEDULES, ScheduleName, StepSchedule
from lightning_accel.pruning.transaction import (
    StepPlan,
    check_step,
    layer_widths,
    output_shapes_of,
    pruning_step,
)
from lightning_accel.utilities.layer_selection import (
    PRUNABLE_LAYERS,
    WEIGHTED_LAYERS,
    protected_modules,
    select_layers,
)
from lightning_accel.utilities.model_stats import model_stats
from lightning_accel.utilities.modules import ModelInput

PruningMode = Literal["structured", "unstructured", "2:4"]
PruningScope = Literal["global", "layer"]
_MODES = ("structured", "unstructured", "2:4")
_SCOPES = ("global", "layer")
_EXAMPLE = "GradualPruning(0.5, start_epoch=1, end_epoch=5)"
_EXAMPLE_INITIAL = "GradualPruning(0.8, initial_sparsity=0.1)"


class GradualPruning(AccelCallback):
    """Prune a model gradually while it trains.

    Sparsity follows ``schedule`` from ``initial_sparsity`` at the first batch of
    ``start_epoch`` to ``target_sparsity`` at the first batch of ``end_epoch``, updated every
    ``update_every_n_steps`` batches (once per epoch by default); the remaining epochs
    fine-tune at the target.

    Modes:
        ``"structured"``: removes whole channels through torch-pruning's dependency graph;
        ``target_sparsity`` is the fraction of channels removed from each prunable layer. The
        model really shrinks and runs faster on any runtime.
        ``"unstructured"``: zeroes the smallest-magnitude weights (a fraction
        ``target_sparsity`` of the prunable weights). Shapes stay, so dense ONNX Runtime and
        TensorRT kernels are no faster; it buys compressed size.
        ``"2:4"``: zeroes 2 of every 4 consecutive input weights, the pattern of TensorRT's
        sparse tensor-core kernels; ``target_sparsity`` must be 0.5 and the pattern is applied
        at ``start_epoch``.

    Args:
        target_sparsity: Final sparsity, in [0, 1).
        mode: ``"structured"``, ``"unstructured"`` or ``"2:4"``.
        schedule: ``"cubic"`` (Zhu & Gupta), ``"linear"`` or ``"constant"`` (one shot).
        start_epoch: First epoch that prunes.
        end_epoch: Epoch at whose start the target is reached; defaults to ``max_epochs - 1``.
        update_every_n_steps: Training batches between pruning updates; ``None``: once per epoch.
        ignore: Glob patterns of layer names to leave dense, e.g. ``["model.layer4.*"]``.
        scope: ``"layer"`` prunes each layer by the same fraction; ``"global"`` ranks weights or
            channels across layers. Defaults to ``"layer"`` for structured, ``"global"`` otherwise.
        initial_sparsity: Sparsity at ``start_epoch``.
        keep_first_and_last: Keep the first layer and the classifier dense.
        round_to: Structured only: keep channel counts a multiple of this.
        criterion: How channels (structured) or weights are ranked: ``"l2"`` or ``"l1"``
            magnitude, ``"taylor"`` (|weight x gradient|, from the batch before each step), or
            a callable scoring a torch-pruning group (structured only). See
            :mod:`lightning_accel.pruning.criteria`.

    Logged every epoch: ``compress/sparsity`` (the schedule's sparsity applied so far),
    ``compress/params_kept`` and ``compress/macs_kept`` (measured, as fractions of the model at
    train start) and, unstructured, ``compress/weight_sparsity`` (measured zeros).

    Raises:
        ValueError: At construction, for any argument out of range (the message names it);
            in ``setup``, for a schedule that cannot finish within ``max_epochs``.

    Example:
        >>> pruning = GradualPruning(0.5, mode="structured", end_epoch=4)
        >>> trainer = L.Trainer(max_epochs=6, callbacks=[pruning])  # doctest: +SKIP
    """

    def __init__(
        self,
        target_sparsity: float,
        mode: PruningMode = "structured",
        schedule: ScheduleName = "cubic",
        start_epoch: int = 0,
        end_epoch: int | None = None,
        update_every_n_steps: int | None = None,
        ignore: Sequence[str] = (),
        scope: PruningScope | None = None,
        initial_sparsity: float = 0.0,
        keep_first_and_last: bool = True,
        round_to: int | None = None,
        criterion: Criterion = "l2",
    ) -> None:
        super().__init__()
        _validate(target_sparsity, mode, schedule, start_epoch, end_epoch, update_every_n_steps)
        check_criterion(criterion)
        if mode != "structured" and not isinstance(criterion, str):
            raise ValueError(
                f"A callable criterion scores torch-pruning groups, so it needs "
                f"mode='structured'; got mode={mode!r}. Use criterion='l1', 'l2' or 'taylor'."
            )
        if scope is not None and scope not in _SCOPES:
            raise ValueError(f"scope must be one of {_SCOPES}; got {scope!r}")
        check_number(initial_sparsity, "initial_sparsity", _EXAMPLE_INITIAL, 0.0, target_sparsity)
        check_int(round_to, "round_to", "GradualPruning(0.5, round_to=8)", optional=True)
        if round_to is not None and mode != "structured":
            raise ValueError(
                f"round_to keeps channel counts a multiple of a number, so it applies to "
                f"mode='structured' only; got mode={mode!r} with round_to={round_to}. Drop it."
            )
        if mode == "2:4" and scope is not None:
            raise ValueError(
                "mode='2:4' keeps 2 of every 4 weights in each group, so it has no scope; got "
                f"scope={scope!r}. Drop it."
            )
        ignore = check_patterns(ignore, "ignore")
        check_bool(keep_first_and_last, "keep_first_and_last")
        self.target_sparsity = float(target_sparsity)
        self.mode = mode
        self.schedule = schedule
        self.start_epoch = start_epoch
        self.end_epoch = end_epoch
        self.update_every_n_steps = update_every_n_steps
        self.ignore = list(ignore)
        self.scope: PruningScope = scope or ("layer" if mode == "structured" else "global")
        self.initial_sparsity = float(initial_sparsity)
        self.keep_first_and_last = keep_first_and_last
        self.round_to = round_to
        self.criterion = criterion

        self.applied_sparsity = 0.0
        self._pending_update = False
        self._initial_widths: dict[str, int] = {}
        self._layers: list[str] = []
        self._protected: list[str] = []  # modules other than layers that `ignore` names
        self._masks: dict[str, Tensor] = {}
        self._example: ModelInput | None = None
        self._step_schedule: StepSchedule | None = None
        self._dense_stats: tuple[int, int] | None = None  # params, MACs at train start
        self._gradients: dict[str, Tensor] = {}  # for a gradient criterion, kept in checkpoints
        self._module: weakref.ref[pl.LightningModule] | None = None

    changes_structure = True
    technique = "GradualPruning"

    @property
    @override
    def state_key(self) -> str:
        # Keyed by mode only: a run resumed with another target still finds its initial widths.
        return self._generate_state_key(mode=self.mode)

    def resolved_end_epoch(self, max_epochs: int | None) -> int:
        """``end_epoch``, or its default ``max(max_epochs - 1, start_epoch + 1)``.

        Raises:
            ValueError: If neither ``end_epoch`` nor ``max_epochs`` is set.
        """
        if self.end_epoch is not None:
            return self.end_epoch
        if max_epochs is None or max_epochs < 0:
            raise ValueError(
                "GradualPruning needs end_epoch when the Trainer has no max_epochs. "
                "Example: GradualPruning(0.5, end_epoch=8)"
            )
        return max(max_epochs - 1, self.start_epoch + 1)

    @override
    def rewires_channels_until(self, trainer: pl.Trainer) -> int | None:
        if self.mode != "structured":
            return None
        return self.resolved_end_epoch(trainer.max_epochs)

    # ----------------------------------------------------------------- lifecycle
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        self.end_epoch = self.resolved_end_epoch(trainer.max_epochs)
        self.check_schedule_fits(trainer, "end_epoch", self.end_epoch)
        if self.mode == "structured":
            self.warn_without_checkpoint_support(pl_module, "pruned")

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self.end_epoch is not None  # resolved in setup
        self.check_reached_within_max_steps(trainer, f"end_epoch={self.end_epoch}", self.end_epoch)
        self._example = example_input(trainer, pl_module, several=True)
        self._module = weakref.ref(pl_module)
        for name, parameter in pl_module.named_parameters():
            if name in self._gradients:  # resumed: the gradients the criterion would have seen
                parameter.grad = self._gradients[name].to(parameter.device)
        self._gradients = {}
        # Attention blocks, norms, modules with raw parameters, blocks: kept whole (#12).
        self._protected = protected_modules(pl_module, self.ignore, self.technique)
        layers = select_layers(
            pl_module,
            self._example,
            self.ignore,
            self.keep_first_and_last,
            "GradualPruning",
            kinds=WEIGHTED_LAYERS if self.mode == "2:4" else PRUNABLE_LAYERS,
            keep_last=self.mode == "structured",  # the output width never changes
        )
        if self._dense_stats is None:  # else restored from a checkpoint, mid-schedule
            dense = model_stats(pl_module, self._example)
            self._dense_stats = (dense.params, dense.macs)
        if self.mode == "structured":
            check_structured_support(pl_module, layers, self.scope == "global")
            if not self._initial_widths:  # else restored from a checkpoint, mid-schedule
                modules = layer_modules(pl_module, layers)
                self._initial_widths = {name: out_channels(m) for name, m in modules.items()}
                self._rehearse(pl_module, layers)
        if self.mode == "2:4":
            layers = self._layers_fitting_2_4(pl_module, layers)
        self._layers = layers
        steps = trainer.num_training_batches
        if not math.isfinite(steps):
            raise ValueError(
                "GradualPruning needs a train dataloader with a length, to place its schedule."
            )
        assert self.end_epoch is not None  # set in setup
        self._step_schedule = StepSchedule(
            start_epoch=self.start_epoch,
            end_epoch=self.end_epoch,
            steps_per_epoch=int(steps),
            every_n_steps=self.update_every_n_steps,
            initial=self.initial_sparsity,
            final=self.target_sparsity,
            name="constant" if self.mode == "2:4" else self.schedule,
        )
        if self.mode != "structured" and self.applied_sparsity > 0:
            # Resumed: the saved weights already carry the zeros; recover the masks from them.
            modules = layer_modules(pl_module, self._layers)
            self._masks = {name: module.weight != 0 for name, module in modules.items()}

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        assert self._step_schedule is not None
        sparsity = self._step_schedule.due(
            trainer.current_epoch, batch_idx, self.applied_sparsity, self._pending_update
        )
        if sparsity is None:
            return
        if needs_gradients(self.criterion) and not self._layers_have_gradients(pl_module):
            # No backward pass yet (first batch of fit or of a resumed run): prune one batch
            # later, when the gradients of this batch are there.
            self._pending_update = True
            return
        self._pending_update = False
        self._prune_to(trainer, pl_module, sparsity)

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self._masks:
            # The optimizer step moved pruned weights off zero; put them back.
            apply_masks(layer_modules(pl_module, list(self._masks)), self._masks)

    @override
    def metric_names(self) -> tuple[str, ...]:
        names = ("compress/sparsity", "compress/params_kept", "compress/macs_kept")
        return names if self.mode == "structured" else (*names, "compress/weight_sparsity")

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert self._example is not None
        stats = model_stats(pl_module, self._example)
        params, macs = self._dense_stats or (stats.params, stats.macs)
        metrics = {
            "compress/sparsity": self.measured_sparsity(pl_module),
            "compress/params_kept": (stats.nonzero_params / params) if params else 1.0,
            "compress/macs_kept": (stats.macs / macs) if macs else 1.0,
        }
        if self.mode != "structured" and self._layers:
            metrics["compress/weight_sparsity"] = weight_sparsity(
                layer_modules(pl_module, self._layers)
            )
        self.log_metrics(pl_module, metrics)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.mode == "structured":
            note = "channels removed: the model is smaller and faster on every runtime"
            odd = self._widths_off_multiples_of_8(pl_module)
            if odd:
                rank_zero_warn(
                    f"GradualPruning: {len(odd)} pruned layers have channel counts that are not "
                    f"multiples of 8 (e.g. {odd[0]}). ONNX Runtime's vectorized CPU kernels run "
                    "such widths slowly: measured here, MobileNetV2 pruned 30% ran 0.47x the "
                    "dense speed, and 1.85x with round_to=8. Pass round_to=8."
                )
        else:
            note = (
                "weights zeroed but shapes kept: dense ONNX Runtime/TensorRT kernels are no "
                "faster; the gain is compressed size"
                + (" and TensorRT's 2:4 sparse kernels" if self.mode == "2:4" else "")
            )
        rank_zero_info(
            f"GradualPruning({self.mode}): measured sparsity "
            f"{self.measured_sparsity(pl_module):.3f} (target {self.target_sparsity:.3f}); "
            f"{note}."
        )

    def measured_sparsity(self, pl_module: pl.LightningModule) -> float:
        """Sparsity measured on the model: channels removed (structured) or zero weights.

        Structured: the fraction of the prunable layers' initial output channels removed.
        Unstructured and 2:4: the fraction of zeros over the selected layers' distinct weights.
        """
        if not self._layers:
            return 0.0
        if self.mode == "structured":
            return channel_sparsity(pl_module, self._initial_widths)
        return weight_sparsity(layer_modules(pl_module, self._layers))

    def _rehearse(self, pl_module: pl.LightningModule, layers: list[str]) -> None:
        """Prune a copy to the target before training; warn about layers the graph holds back.

        Raises:
            ValueError: If the pruned copy fails or changes its outputs (model untouched).
        """
        example = self._example
        assert example is not None
        # Gradient criteria have no gradients yet; which channels go does not change shapes.
        criterion = "l2" if needs_gradients(self.criterion) else self.criterion

        def prune(model: Any) -> None:
            prune_channels(
                model,
                example,
                layers,
                self._channel_ratios(model, self.target_sparsity),
                global_scope=self.scope == "global",
                round_to=self.round_to,
                criterion=criterion,
                protect=self._protected,
            )

        widths, shapes = layer_widths(pl_module), output_shapes_of(pl_module, example)
        trial = rehearse(pl_module, example, prune, self.technique)
        problem, short = check_step(
            trial, example, self._plan(self.target_sparsity), widths, shapes
        )
        if problem is not None:
            raise ValueError(
                f"GradualPruning(mode='structured') would break {type(pl_module).__name__}: "
                f"after pruning a copy to the target, layer {problem.layer!r} {problem.what}. "
                f"Fix: {problem.fix}. The model was not changed."
            )
        if short:
            reached = channel_sparsity(trial, self._initial_widths)
            rank_zero_warn(
                f"GradualPruning: {len(short)} layer(s) cannot reach the planned width, because "
                "torch-pruning's dependency graph couples their channels to a layer that keeps "
                f"its width (e.g. a 1-channel gate, an ignored layer or the classifier): "
                f"{'; '.join(short[:5])}. The model will reach sparsity {reached:.3f}, not "
                f"{self.target_sparsity:.3f}; compress/sparsity reports what is measured."
            )

    def _plan(self, sparsity: float) -> StepPlan:
        return StepPlan(
            layers=self._layers or list(self._initial_widths),
            initial_widths=self._initial_widths,
            sparsity=sparsity,
            round_to=self.round_to,
            per_layer=self.scope == "layer",
        )

    def _widths_off_multiples_of_8(self, pl_module: pl.LightningModule) -> list[str]:
        if self.round_to is not None or not self.applied_sparsity:
            return []
        widths = {n: out_channels(m) for n, m in layer_modules(pl_module, self._layers).items()}
        return [f"{n}: {w}" for n, w in widths.items() if w % 8 and w != self._initial_widths[n]]

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "applied_sparsity": self.applied_sparsity,
            "end_epoch": self.end_epoch,
            "initial_widths": dict(self._initial_widths),
            "target_sparsity": self.target_sparsity,
            "dense_stats": list(self._dense_stats) if self._dense_stats else None,
            "pending_update": self._pending_update,
            # A gradient criterion ranks by the last batch's gradients; a checkpoint keeps them so
            # that a resumed run prunes exactly as the uninterrupted one (costs one model size).
            "gradients": self._current_gradients(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.applied_sparsity = float(state_dict.get("applied_sparsity", 0.0))
        saved_target = state_dict.get("target_sparsity", self.target_sparsity)
        if saved_target != self.target_sparsity:
            rank_zero_warn(
                f"GradualPruning: resumed a run that targeted sparsity {saved_target} with "
                f"target {self.target_sparsity}; pruning continues to {self.target_sparsity} of "
                "the original widths."
            )
        if self.applied_sparsity > self.target_sparsity + 1e-9:
            raise ValueError(
                f"GradualPruning(target_sparsity={self.target_sparsity}) cannot resume a run "
                f"that has already pruned to {self.applied_sparsity:.3f}: pruned channels cannot "
                f"come back. Resume with target_sparsity >= {self.applied_sparsity:.3f}."
            )
        self.end_epoch = state_dict.get("end_epoch", self.end_epoch)
        self._initial_widths = dict(state_dict.get("initial_widths", {}))
        dense = state_dict.get("dense_stats")
        self._dense_stats = (int(dense[0]), int(dense[1])) if dense else None
        self._pending_update = bool(state_dict.get("pending_update", False))
        self._gradients = dict(state_dict.get("gradients", {}))

    # ----------------------------------------------------------------- pruning
    def _prune_to(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, sparsity: float
    ) -> None:
        assert self._example is not None
        check_finite_weights(pl_module, self.technique)
        if self.mode == "structured":
            example = self._example
            ratios = self._channel_ratios(pl_module, sparsity)
            history, short = pruning_step(
                pl_module,
                example,
                self._plan(sparsity),
                lambda: prune_channels(
                    pl_module,
                    example,
                    self._layers,
                    ratios,
                    global_scope=self.scope == "global",
                    round_to=self.round_to,
                    criterion=self.criterion,
                    protect=self._protected,
                ),
                self.technique,
            )
            if short:
                rank_zero_info(
                    f"GradualPruning: measured widths held back by coupled layers: "
                    f"{'; '.join(short[:5])}."
                )
            record_structural_change(
                pl_module, "channel_pruning", history=history, **_inputs(example)
            )
            rebuild_optimizers(trainer)
        else:
            modules = layer_modules(pl_module, self._layers)
            owners = weight_owners(modules)  # a shared weight is ranked once, masked alike
            scores = {
                name: weight_scores(mod.weight, self.criterion)
                for name, mod in modules.items()
                if owners[name] == name
            }
            if self.mode == "2:4":
                masks = {name: n_m_mask(score) for name, score in scores.items()}
            else:
                masks = magnitude_masks(scores, sparsity, self.scope)
            self._masks = {name: masks[owners[name]] for name in modules}
            apply_masks(modules, self._masks)
        self.applied_sparsity = sparsity

    def _current_gradients(self) -> dict[str, Tensor]:
        module = self._module() if self._module is not None else None
        if module is None:
            return dict(self._gradients)  # loaded, not yet handed to a module
        if not needs_gradients(self.criterion):
            return {}
        if self.applied_sparsity >= self.target_sparsity:
            return {}  # no pruning step left to rank
        return {
            name: p.grad.detach().cpu().clone()
            for name, p in module.named_parameters()
            if p.grad is not None
        }

    def _layers_have_gradients(self, pl_module: pl.LightningModule) -> bool:
        return has_gradients([m.weight for m in layer_modules(pl_module, self._layers).values()])

    def _channel_ratios(
        self, pl_module: pl.LightningModule, sparsity: float
    ) -> float | dict[str, float]:
        """Ratios of current channels to remove so widths reach (1 - sparsity) of the initial."""
        if self.scope == "layer":
            return ratios_to_widths(pl_module, self._initial_widths, sparsity)
        # Global ranking takes one ratio; measuring the current total corrects earlier rounding.
        initial = sum(self._initial_widths.values())
        current = sum(out_channels(pl_module.get_submodule(n)) for n in self._initial_widths)
        return max(0.0, 1.0 - (1.0 - sparsity) * initial / current)

    def _layers_fitting_2_4(self, pl_module: pl.LightningModule, layers: list[str]) -> list[str]:
        modules = layer_modules(pl_module, layers)
        fitting = [name for name, mod in modules.items() if mod.weight.shape[1] % 4 == 0]
        skipped = sorted(set(layers) - set(fitting))
        if skipped:
            rank_zero_info(
                f"GradualPruning(2:4): input dim not a multiple of 4, kept dense: {skipped}"
            )
        if not fitting:
            raise ValueError(
                "GradualPruning(mode='2:4') found no layer whose input dimension is a multiple "
                "of 4. Use mode='unstructured' for this model."
            )
        return fitting


def _inputs(example: ModelInput) -> dict[str, Any]:
    """How the structural log records the example input (a plain float tensor: its shape)."""
    if isinstance(example, Tensor) and example.is_floating_point():
        return {"input_shape": list(example.shape)}
    return {"inputs": input_specs(example)}


def _validate(
    target_sparsity: float,
    mode: str,
    schedule: str,
    start_epoch: int,
    end_epoch: int | None,
    update_every_n_steps: int | None,
) -> None:
    if (
        isinstance(target_sparsity, bool)
        or not isinstance(target_sparsity, (int, float))
        or not 0.0 <= target_sparsity < 1.0  # also refuses NaN
    ):
        raise ValueError(
            f"target_sparsity must be in [0, 1); got {target_sparsity!r}. "
            "Example: GradualPruning(target_sparsity=0.5)"
        )
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}; got {mode!r}")
    if schedule not in SCHEDULES:
        raise ValueError(
            f"schedule must be one of {sorted(SCHEDULES)}; got {schedule!r}. "
            "Example: GradualPruning(0.5, schedule='cubic')"
        )
    if mode == "2:4" and target_sparsity != 0.5:
        raise ValueError(
            f"mode='2:4' zeroes exactly half the weights, so target_sparsity must be 0.5; got "
            f"{target_sparsity}. Example: GradualPruning(0.5, mode='2:4')"
        )
    check_epoch(start_epoch, "start_epoch", _EXAMPLE)
    check_end_epoch(start_epoch, end_epoch, _EXAMPLE)
    if update_every_n_steps is not None and (
        isinstance(update_every_n_steps, bool)
        or not isinstance(update_every_n_steps, int)
        or update_every_n_steps < 1
    ):
        raise ValueError(
            f"update_every_n_steps must be a positive integer or None (once per epoch); got "
            f"{update_every_n_steps!r}"
        )
