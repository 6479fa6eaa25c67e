"""``Binarize``: train 1-bit weights and activations, progressively, during ``fit``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lightning_accel.binarization.functions import ESTIMATORS, SCALINGS
from lightning_accel.binarization.layers import BINARY_LAYERS, binarize_layer
from lightning_accel.callbacks._surgery_support import (
    check_pruning_finishes_before,
    example_input,
    rebuild_optimizers,
    warn_without_checkpoint_support,
)
from lightning_accel.layers import WEIGHTED_LAYERS, select_layers
from lightning_accel.surgery import record_surgery, save_surgery
from lightning_accel.utilities.copying import detached_copy
from lightning_accel.utilities.modules import set_submodule


class Binarize(Callback):
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
        scaling: str | None = "channel",
        ste: str = "clipped",
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
        if not (weights or activations):
            raise ValueError("Binarize needs weights=True or activations=True (or both).")
        if isinstance(start_epoch, bool) or not isinstance(start_epoch, int) or start_epoch < 0:
            raise ValueError(f"start_epoch must be an integer >= 0; got {start_epoch!r}")
        if end_epoch is not None and (not isinstance(end_epoch, int) or end_epoch <= start_epoch):
            raise ValueError(
                f"end_epoch must be after start_epoch; got start_epoch={start_epoch}, "
                f"end_epoch={end_epoch}. Example: Binarize(start_epoch=1, end_epoch=4)"
            )
        self.weights = weights
        self.activations = activations
        self.scaling = scaling
        self.ste = ste
        self.start_epoch = start_epoch
        self.end_epoch = end_epoch
        self.ignore = [ignore] if isinstance(ignore, str) else list(ignore)
        self.keep_first_and_last = keep_first_and_last
        self.progress = 0.0
        self._layers: list[str] = []
        self._steps_per_epoch = 1

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(weights=self.weights, activations=self.activations)

    def logged_metrics(self) -> tuple[str, ...]:
        """The metric names this callback logs every epoch."""
        return ("compress/binary_layers", "compress/binarization")

    # ----------------------------------------------------------------- lifecycle
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        max_epochs = trainer.max_epochs
        last = self.end_epoch if self.end_epoch is not None else self.start_epoch
        if max_epochs is not None and max_epochs >= 0 and last >= max_epochs:
            raise ValueError(
                f"The binarization schedule cannot finish: it is fully binary at the start of "
                f"epoch {last}, but training stops after max_epochs={max_epochs} (epochs "
                f"0..{max_epochs - 1}). Set end_epoch <= {max_epochs - 1} (and start_epoch "
                f"below it) or max_epochs >= {last + 1}."
            )
        check_pruning_finishes_before(trainer, self.start_epoch, "Binarize")
        warn_without_checkpoint_support(pl_module, "binarized")

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._steps_per_epoch = max(int(trainer.num_training_batches), 1)
        binary = _binary_layer_names(pl_module)
        if binary:  # resumed from a checkpoint of the binarized model
            self._layers = binary
            return
        sample = example_input(trainer, pl_module)
        self._layers = self._select(pl_module, sample)
        self._check_no_overlap_with_quantization(trainer, pl_module, sample)
        _swap(detached_copy(pl_module), self._layers, self._settings())  # fails before training

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        epoch = trainer.current_epoch
        if epoch < self.start_epoch:
            return
        if not _binary_layer_names(pl_module):
            _swap(pl_module, self._layers, self._settings())
            record_surgery(pl_module, "binarization", layers=self._layers, **self._settings())
            rebuild_optimizers(trainer)
            rank_zero_info(f"Binarize: {len(self._layers)} layers now train binarized.")
        self.progress = self._progress_at(epoch * self._steps_per_epoch + batch_idx)
        set_progress(pl_module, self.progress)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        weighted = [m for m in pl_module.modules() if isinstance(m, WEIGHTED_LAYERS)]
        binary = [m for m in weighted if isinstance(m, BINARY_LAYERS)]
        metrics = {
            "compress/binary_layers": len(binary) / max(len(weighted), 1),
            "compress/binarization": self.progress,
        }
        for name, value in metrics.items():
            pl_module.log(name, value, on_step=False, on_epoch=True, sync_dist=False)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rank_zero_info(
            f"Binarize: {len(self._layers)} layers at binarization {self.progress:.2f}. No "
            "runtime has 1-bit kernels: ONNX Runtime runs them as int8 (QLinearConv), and "
            "save_packed() stores 1 bit per weight."
        )

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        save_surgery(pl_module, checkpoint)

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

    def _select(self, pl_module: pl.LightningModule, sample: torch.Tensor) -> list[str]:
        layers = select_layers(pl_module, sample, self.ignore, self.keep_first_and_last, "Binarize")
        not_plain = [n for n in layers if type(pl_module.get_submodule(n)) not in _PLAIN]
        if not_plain:
            raise ValueError(
                f"Binarize cannot act on {not_plain[:3]}: they are not plain conv/linear layers "
                "(binarization and QAT cannot act on the same layer). Leave them out with "
                "ignore=[...] here or in QuantizationAware."
            )
        return layers

    def _check_no_overlap_with_quantization(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, sample: torch.Tensor
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


_PLAIN = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)


def _binary_layer_names(model: torch.nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, BINARY_LAYERS)]


def _swap(model: torch.nn.Module, layers: list[str], settings: dict[str, Any]) -> None:
    """Replace each named layer by its binary form (all built first, then swapped)."""
    new = {
        name: binarize_layer(
            model.get_submodule(name),
            settings["weights"],
            settings["activations"],
            settings["scaling"],
            settings["estimator"],
        )
        for name in layers
    }
    for name, layer in new.items():
        set_submodule(model, name, layer)


def set_progress(model: torch.nn.Module, progress: float) -> None:
    """Set the real-to-binary blend of every binary layer."""
    for module in model.modules():
        if isinstance(module, BINARY_LAYERS):
            module.progress.fill_(progress)
