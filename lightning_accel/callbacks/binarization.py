"""``Binarize``: train 1-bit weights and activations, progressively, during ``fit``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lightning_accel.binarization.functions import ESTIMATORS, SCALINGS, Estimator, Scaling
from lightning_accel.binarization.layers import (
    BINARY_LAYERS,
    binarize_submodules,
    binary_layer_names,
    set_progress,
)
from lightning_accel.callbacks.base import (
    AccelCallback,
    check_bool,
    check_end_epoch,
    check_epoch,
    check_patterns,
    example_input,
    rebuild_optimizers,
)
from lightning_accel.checkpointing import record_structural_change
from lightning_accel.utilities.copying import detached_copy
from lightning_accel.utilities.layer_selection import PRUNABLE_LAYERS, select_layers
from lightning_accel.utilities.modules import ModelInput

_EXAMPLE = "Binarize(start_epoch=1, end_epoch=4)"


class Binarize(AccelCallback):
    """Binarize weights (α·sign(W), XNOR-Net) and activations (sign, straight-through) in ``fit``.

    From ``start_epoch`` the selected conv/linear layers compute with a blend of their real and
    binary forms, ``(1 - p)·real + p·binary`` for weights and inputs, with ``p`` rising
    linearly per training batch from 0 at ``start_epoch`` to 1 at ``end_epoch`` (progressive
    binarization); with ``end_epoch=None`` ``p`` is 1 at once. Latent real weights keep training
    throughout. The first layer and the classifier stay real by default, as in XNOR-Net and
    Bi-Real Net; BatchNorm and residual shortcuts are never binarized.

    No runtime has 1-bit kernels: the export runs binarized layers on int8 kernels (exactly
    representable), and :func:`lightning_accel.binarization.save_packed` stores 1 bit per weight.

    Args:
        weights: Binarize weights.
        activations: Binarize the layers' inputs.
        scaling: Weight scale α: ``"channel"`` (mean |W| per output channel), ``"tensor"``, or
            ``None`` (α = 1).
        ste: Gradient of sign: ``"clipped"`` (identity on [-1, 1]) or ``"approx_sign"``
            (Bi-Real Net's 2 - 2|x|).
        start_epoch: Epoch whose first batch starts binarizing.
        end_epoch: Epoch whose first batch is fully binary; ``None``: switch at ``start_epoch``.
        ignore: Glob patterns of layers to keep real, besides the first and last.
        keep_first_and_last: Keep the first layer and the classifier real.

    Example:
        >>> binarize = Binarize(scaling="channel", ste="approx_sign", start_epoch=1, end_epoch=4)
        >>> trainer = L.Trainer(max_epochs=8, callbacks=[binarize])  # doctest: +SKIP
    """

    def __init__(
        self,
        weights: bool = True,
        activations: bool = True,
        scaling: Scaling = "channel",
        ste: Estimator = "clipped",
        start_epoch: int = 0,
        end_epoch: int | None = None,
        ignore: Sequence[str] = (),
        keep_first_and_last: bool = True,
    ) -> None:
        if scaling not in SCALINGS:
            raise ValueError(
                f"scaling must be one of {SCALINGS}; got {scaling!r}. "
                "Example: Binarize(scaling='channel')"
            )
        if ste not in ESTIMATORS:
            raise ValueError(
                f"ste must be one of {ESTIMATORS}; got {ste!r}. Example: Binarize(ste='clipped')"
            )
        check_bool(weights, "weights")
        check_bool(activations, "activations")
        check_bool(keep_first_and_last, "keep_first_and_last")
        if not (weights or activations):
            raise ValueError("Binarize needs weights=True or activations=True (or both).")
        super().__init__()
        check_epoch(start_epoch, "start_epoch", _EXAMPLE)
        check_end_epoch(start_epoch, end_epoch, _EXAMPLE)
        self.weights = weights
        self.activations = activations
        self.scaling = scaling
        self.ste = ste
        self.start_epoch = start_epoch
        self.end_epoch = end_epoch
        self.ignore = check_patterns(ignore, "ignore")
        self.keep_first_and_last = keep_first_and_last
        self.progress = 0.0
        self._layers: list[str] = []
        self._steps_per_epoch = 1

    changes_structure = True
    technique = "Binarize"

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(weights=self.weights, activations=self.activations)

    @override
    def metric_names(self) -> tuple[str, ...]:
        return ("compress/binary_layers", "compress/binarization")

    # ----------------------------------------------------------------- lifecycle
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        if self.end_epoch is not None:
            self.check_schedule_fits(trainer, "end_epoch", self.end_epoch)
        else:
            self.check_schedule_fits(trainer, "start_epoch", self.start_epoch)
        self.check_starts_after_channel_pruning(trainer, self.start_epoch)
        self.warn_without_checkpoint_support(pl_module, "binarized")

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        last, argument = (
            (self.end_epoch, "end_epoch")
            if self.end_epoch is not None
            else (self.start_epoch, "start_epoch")
        )
        self.check_reached_within_max_steps(trainer, f"{argument}={last}", last)
        self._steps_per_epoch = max(int(trainer.num_training_batches), 1)
        binary = binary_layer_names(pl_module)
        if binary:  # resumed from a checkpoint of the binarized model
            self._layers = binary
            return
        sample = example_input(trainer, pl_module, several=True)  # a tuple: several inputs
        self._layers = self._select(pl_module, sample)
        self._check_no_overlap_with_quantization(trainer, pl_module, sample)
        # On a copy first, so a model that cannot be binarized fails before training.
        binarize_submodules(detached_copy(pl_module), self._layers, self._settings())

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        epoch = trainer.current_epoch
        if epoch < self.start_epoch:
            return
        if not binary_layer_names(pl_module):
            binarize_submodules(pl_module, self._layers, self._settings())
            record_structural_change(
                pl_module, "binarization", layers=self._layers, **self._settings()
            )
            rebuild_optimizers(trainer)
            rank_zero_info(f"Binarize: {len(self._layers)} layers now train binarized.")
        self.progress = self._progress_at(epoch * self._steps_per_epoch + batch_idx)
        set_progress(pl_module, self.progress)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        weighted = [m for m in pl_module.modules() if isinstance(m, PRUNABLE_LAYERS)]
        binary = [m for m in weighted if isinstance(m, BINARY_LAYERS)]
        metrics = {
            "compress/binary_layers": len(binary) / max(len(weighted), 1),
            "compress/binarization": self.progress,
        }
        self.log_metrics(pl_module, metrics)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rank_zero_info(
            f"Binarize: {len(self._layers)} layers at binarization {self.progress:.2f}. No "
            "runtime has 1-bit kernels: ONNX Runtime runs them as int8 (QLinearConv), and "
            "save_packed() stores 1 bit per weight."
        )

    # ----------------------------------------------------------------- helpers
    def _settings(self) -> dict[str, Any]:
        return {
            "weights": self.weights,
            "activations": self.activations,
            "scaling": self.scaling,
            "estimator": self.ste,
        }

    def _progress_at(self, step: int) -> float:
        if self.end_epoch is None:
            return 1.0
        start, end = (
            self.start_epoch * self._steps_per_epoch,
            self.end_epoch * self._steps_per_epoch,
        )
        return min(max((step - start) / max(end - start, 1), 0.0), 1.0)

    def _select(self, pl_module: pl.LightningModule, sample: ModelInput) -> list[str]:
        # Conv1d/2d/3d, ConvTranspose1d/2d/3d and Linear.
        layers = select_layers(
            pl_module, sample, self.ignore, self.keep_first_and_last, "Binarize", PRUNABLE_LAYERS
        )
        not_plain = [n for n in layers if type(pl_module.get_submodule(n)) not in _PLAIN]
        if not_plain:
            raise ValueError(
                f"Binarize cannot act on {not_plain[:3]}: they are not plain conv/linear layers "
                "(binarization and QAT cannot act on the same layer). Leave them out with "
                "ignore=[...] here or in QuantizationAware."
            )
        return layers

    def _check_no_overlap_with_quantization(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, sample: ModelInput
    ) -> None:
        from lightning_accel.callbacks.quantization import QuantizationAware

        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            if not isinstance(callback, QuantizationAware):
                continue
            both = sorted(set(self._layers) & set(callback.planned_layers(pl_module, sample)))
            if both:
                raise ValueError(
                    f"Binarize and QuantizationAware both act on {len(both)} layers (e.g. "
                    f"{both[:3]}). A layer is either binarized or quantized: pass those layers "
                    "in one callback's ignore=[...]."
                )


_PLAIN = (
    torch.nn.Conv1d,
    torch.nn.Conv2d,
    torch.nn.Conv3d,
    torch.nn.Linear,
    torch.nn.ConvTranspose1d,
    torch.nn.ConvTranspose2d,
    torch.nn.ConvTranspose3d,
)
