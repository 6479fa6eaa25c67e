"""``QuantizationAware``: train against the int8 grid the target runtime will execute."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lightning_accel.backends import DEFAULT_BACKEND, BackendName, get_backend
from lightning_accel.backends.onnxruntime import u8s8_saturates
from lightning_accel.callbacks.base import (
    AccelCallback,
    check_bool,
    check_epoch,
    check_finite_weights,
    check_int,
    check_patterns,
    example_input,
    rebuild_optimizers,
)
from lightning_accel.checkpointing import record_structural_change
from lightning_accel.quantization.fake_quant import (
    OBSERVERS,
    ActivationQuantizer,
    Observer,
    WeightQuantizer,
)
from lightning_accel.quantization.layers import QUANT_LAYERS
from lightning_accel.quantization.multihead import decomposed_multihead_attention
from lightning_accel.quantization.prepare import (
    activation_quantizers,
    quantize_submodules,
    quantized_layers,
)
from lightning_accel.quantization.spec import QuantizationSpec, check_bits
from lightning_accel.quantization.window_attention import quantizable_window_attention
from lightning_accel.utilities.copying import detached_copy
from lightning_accel.utilities.layer_selection import (
    PRUNABLE_LAYERS,
    check_plain_weights,
    layers_in_call_order,
    match_patterns,
)
from lightning_accel.utilities.modules import ModelInput

_FLOAT_BITS = 32


class QuantizationAware(AccelCallback):
    """Quantization-aware training for ONNX Runtime or TensorRT int8 kernels.

    At the start of ``start_epoch`` the network is traced (torch.fx; several positional inputs
    trace as one placeholder each) and its conv, transposed conv and linear layers swapped for
    fake-quant versions: weights int8 per output channel, symmetric (axis 1 of a transposed
    conv's weight), activations per tensor, uint8 asymmetric for ONNX Runtime and int8
    symmetric for TensorRT. Activation quantizers sit where the runtime fuses Q/DQ into
    integer kernels (layer inputs, conv outputs after BatchNorm and ReLU, residual adds).
    ONNX Runtime's CPU kernels have no integer ``ConvTranspose``: it runs transposed convs in
    float between their Q/DQ (the export summary's int8-ops count says so); OpenVINO runs them
    as integer ``Deconvolution``. A BatchNorm after a conv trains folded
    into it. :func:`lightning_accel.export.to_onnx` then writes Q/DQ ONNX that ONNX Runtime
    runs as ``QLinearConv``/``QLinearAdd``/``QGemm``.

    Run structured pruning first: ``GradualPruning`` must reach its target before
    ``start_epoch`` (prune, then fine-tune the smaller model with QAT).

    Args:
        backend: A registered backend (``lightning_accel.backends.BACKENDS``), e.g.
            ``"onnxruntime"`` or ``"tensorrt"``: its Q/DQ flavour is what is trained.
        start_epoch: Epoch at whose start the layers are swapped.
        freeze_observers_epoch: From this epoch, activation ranges stop moving (learned scales
            start learning). ``None``: ranges track all of training, or, with
            ``learnable_scales``, only during ``start_epoch``.
        freeze_bn_epoch: From this epoch BatchNorms use their running statistics, the values
            export folds in. ``None``: never frozen during training.
        weight_bits: Default weight bit width (2 to 8).
        activation_bits: Activation bit width (2 to 8).
        layer_bits: Weight bits by glob pattern over layer names, e.g. ``{"model.layer4.*": 4}``.
            Runtimes execute 8 bits; lower widths are trained and stored exactly inside int8.
        ignore: Glob patterns of layers to keep in float.
        observer: ``"ema_minmax"`` or ``"percentile"`` (0.01% tails clipped).
        learnable_scales: Learn scales by gradient (LSQ) after the observers freeze.
        reduce_range: Keep weight integers in [-63, 63] (ONNX Runtime's ``reduce_range``,
            NNCF's ``overflow_fix`` for OpenVINO), so that the uint8 x int8 kernels of both CPU
            runtimes on x86 CPUs without VNNI cannot saturate
            (:func:`~lightning_accel.backends.onnxruntime.u8s8_saturates`). ``None``: on for a
            CPU backend (``"onnxruntime"``, ``"openvino"``) when the CPU training the model
            lacks VNNI (pass ``True`` when the model will be deployed on such a CPU), off
            otherwise (TensorRT's GPU kernels do not saturate).

    Example:
        >>> qat = QuantizationAware("onnxruntime", start_epoch=2, freeze_bn_epoch=4)
        >>> trainer = L.Trainer(max_epochs=6, callbacks=[qat])  # doctest: +SKIP
    """

    def __init__(
        self,
        backend: BackendName = DEFAULT_BACKEND,
        start_epoch: int = 0,
        freeze_observers_epoch: int | None = None,
        freeze_bn_epoch: int | None = None,
        weight_bits: int = 8,
        activation_bits: int = 8,
        layer_bits: Mapping[str, int] | None = None,
        ignore: Sequence[str] = (),
        observer: Observer = "ema_minmax",
        learnable_scales: bool = False,
        reduce_range: bool | None = None,
    ) -> None:
        super().__init__()
        get_backend(backend, "QuantizationAware(backend=...)")
        if observer not in OBSERVERS:
            raise ValueError(f"observer must be one of {OBSERVERS}; got {observer!r}")
        check_epoch(start_epoch, "start_epoch", "QuantizationAware(start_epoch=2)")
        for argument, epoch in (
            ("freeze_observers_epoch", freeze_observers_epoch),
            ("freeze_bn_epoch", freeze_bn_epoch),
        ):
            check_int(epoch, argument, f"QuantizationAware({argument}=4)", 0, optional=True)
            if epoch is not None and epoch < start_epoch:
                raise ValueError(
                    f"{argument}={epoch!r} comes before start_epoch={start_epoch}: there is "
                    "nothing to freeze before quantization starts. Use an epoch >= start_epoch, "
                    f"e.g. QuantizationAware(start_epoch={start_epoch}, "
                    f"{argument}={start_epoch + 2})"
                )
        self.backend = backend
        self.start_epoch = start_epoch
        self.freeze_observers_epoch = freeze_observers_epoch
        self.freeze_bn_epoch = freeze_bn_epoch
        self.weight_bits = check_bits(weight_bits, "weight_bits")
        self.activation_bits = check_bits(activation_bits, "activation_bits")
        if layer_bits is not None and not isinstance(layer_bits, Mapping):
            raise ValueError(
                f"layer_bits must map glob patterns to bit widths; got {layer_bits!r}. "
                "Example: QuantizationAware(layer_bits={'model.layer4.*': 4})"
            )
        self.layer_bits = {
            check_patterns(pattern, "layer_bits keys")[0]: check_bits(
                bits, f"layer_bits[{pattern!r}]"
            )
            for pattern, bits in (layer_bits or {}).items()
        }
        self.ignore = check_patterns(ignore, "ignore")
        self.observer = observer
        self.learnable_scales = check_bool(learnable_scales, "learnable_scales")
        if reduce_range is not None:
            check_bool(reduce_range, "reduce_range")
        self.reduce_range = reduce_range
        self.spec: QuantizationSpec | None = None

    changes_structure = True
    technique = "QuantizationAware"

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(backend=self.backend, start_epoch=self.start_epoch)

    @override
    def metric_names(self) -> tuple[str, ...]:
        return (
            "compress/weight_bits",
            "compress/quantized_layers",
            "compress/activation_range_median",
            "compress/activation_range_max",
        )

    # ----------------------------------------------------------------- lifecycle
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        self.check_schedule_fits(trainer, "start_epoch", self.start_epoch)
        for argument, epoch in self._freeze_epochs():
            self.check_schedule_fits(trainer, argument, epoch)
        self.check_starts_after_channel_pruning(trainer, self.start_epoch)
        self.warn_without_checkpoint_support(pl_module, "quantized")

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        start = self.start_epoch
        self.check_reached_within_max_steps(trainer, f"start_epoch={start}", start)
        for argument, epoch in self._freeze_epochs():
            self.check_reached_within_max_steps(trainer, f"{argument}={epoch}", epoch)
        if quantized_layers(pl_module):
            return  # resumed from a checkpoint of the quantized model
        # Several positional inputs (batches ((image, token_ids), label)) trace as one
        # placeholder each (#12).
        self.spec = self._plan(pl_module, example_input(trainer, pl_module, several=True))
        # Prepare a copy now, so a model that cannot be quantized fails before training.
        quantize_submodules(detached_copy(pl_module), self.spec)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if epoch < self.start_epoch:
            return
        if not quantized_layers(pl_module):
            assert self.spec is not None  # planned in on_train_start
            check_finite_weights(pl_module, self.technique)
            quantize_submodules(pl_module, self.spec)
            record_structural_change(pl_module, "quantization_aware", spec=self.spec.to_dict())
            rebuild_optimizers(trainer)
            rank_zero_info(
                f"QuantizationAware: {len(self.spec.weight_bits)} layers and "
                f"{len(activation_quantizers(pl_module))} activations now train on the "
                f"{self.backend} int8 grid."
            )
        set_training_phase(
            pl_module,
            observers_enabled=self._observers_enabled(epoch),
            bn_frozen=self.freeze_bn_epoch is not None and epoch >= self.freeze_bn_epoch,
        )

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.log_metrics(pl_module, quantization_metrics(pl_module))

    # ----------------------------------------------------------------- planning
    def planned_layers(self, pl_module: pl.LightningModule, sample: ModelInput) -> list[str]:
        """The layers this callback will quantize on ``pl_module`` (one input or a tuple)."""
        return list(self._plan(pl_module, sample).weight_bits)

    def _plan(self, pl_module: pl.LightningModule, sample: ModelInput) -> QuantizationSpec:
        """Which layers get how many bits; every pattern must match a layer.

        Planned on the model as QAT will trace it: each ``nn.MultiheadAttention`` rewritten
        with ``q_proj``/``k_proj``/``v_proj``/``out_proj`` linears, Swin window attention
        calling its ``qkv`` and ``proj`` (both restored afterwards).
        """
        with (
            decomposed_multihead_attention(pl_module),
            quantizable_window_attention(pl_module),
        ):
            return self._plan_layers(pl_module, sample)

    def _plan_layers(self, pl_module: pl.LightningModule, sample: ModelInput) -> QuantizationSpec:
        # Conv1d/2d/3d, ConvTranspose1d/2d/3d and Linear (PRUNABLE_LAYERS lists exactly these).
        order = layers_in_call_order(pl_module, sample, PRUNABLE_LAYERS)
        if not order:
            raise ValueError(
                f"{type(pl_module).__name__} calls no Conv1d/2d/3d, ConvTranspose1d/2d/3d or "
                "Linear layer, so QuantizationAware has nothing to quantize. Remove the "
                "callback or use a model with conv or linear layers."
            )
        ignored = match_patterns(order, self.ignore, "QuantizationAware(ignore=...)")
        selected = [name for name in order if name not in ignored]
        if not selected:
            raise ValueError(
                f"QuantizationAware(ignore={self.ignore}) leaves none of the {len(order)} "
                "conv/linear layers to quantize. Ignore fewer layers."
            )
        check_plain_weights(pl_module, selected, self.technique)
        bits = dict.fromkeys(selected, self.weight_bits)
        for pattern, width in self.layer_bits.items():
            for name in match_patterns(selected, [pattern], "QuantizationAware(layer_bits=...)"):
                bits[name] = width
        return QuantizationSpec(
            backend=self.backend,
            weight_bits=bits,
            activation_bits=self.activation_bits,
            observer=self.observer,
            learnable=self.learnable_scales,
            reduce_range=self._reduce_range(),
        )

    def _reduce_range(self) -> bool:
        if self.reduce_range is not None:
            return self.reduce_range
        if get_backend(self.backend).device != "cpu" or not u8s8_saturates():
            return False
        rank_zero_info(
            "QuantizationAware: this CPU lacks VNNI, where the CPU runtimes' uint8 x int8 kernels "
            "saturate int16 sums of 8-bit weights; weights train in [-63, 63] "
            "(reduce_range). Pass reduce_range=False to train the full int8 range."
        )
        return True

    def _freeze_epochs(self) -> list[tuple[str, int]]:
        freezes = (
            ("freeze_observers_epoch", self.freeze_observers_epoch),
            ("freeze_bn_epoch", self.freeze_bn_epoch),
        )
        return [(argument, epoch) for argument, epoch in freezes if epoch is not None]

    def _observers_enabled(self, epoch: int) -> bool:
        if self.freeze_observers_epoch is not None:
            return epoch < self.freeze_observers_epoch
        return not self.learnable_scales or epoch == self.start_epoch


def set_training_phase(model: torch.nn.Module, observers_enabled: bool, bn_frozen: bool) -> None:
    """Switch range observers and BatchNorm statistics of every quantized module.

    Args:
        model: The model holding fake-quant modules.
        observers_enabled: Whether activation and weight ranges keep tracking the data.
        bn_frozen: Whether folded BatchNorms use their running statistics.
    """
    for module in model.modules():
        if isinstance(module, (ActivationQuantizer, WeightQuantizer)):
            module.observer_enabled.fill_(observers_enabled)
        frozen = getattr(module, "bn_frozen", None) if isinstance(module, QUANT_LAYERS) else None
        if isinstance(frozen, torch.Tensor):
            frozen.fill_(bn_frozen)


def quantization_metrics(model: torch.nn.Module) -> dict[str, float]:
    """Mean weight bits (float layers count 32), quantized fraction and activation ranges."""
    weights = {n: m for n, m in model.named_modules() if isinstance(m, PRUNABLE_LAYERS)}
    quantized = quantized_layers(model)
    sizes = {name: layer.weight.numel() for name, layer in weights.items()}
    bits: dict[str, int] = {name: _FLOAT_BITS for name in weights}
    for name, layer in quantized.items():
        bits[name] = cast(WeightQuantizer, layer.weight_quantizer).bits
    total = sum(sizes.values()) or 1
    ranges = torch.tensor(
        [float(q.max_val - q.min_val) for q in activation_quantizers(model).values()] or [0.0]
    )
    return {
        "compress/weight_bits": sum(bits[n] * sizes[n] for n in weights) / total,
        "compress/quantized_layers": len(quantized) / max(len(weights), 1),
        "compress/activation_range_median": float(ranges.median()),
        "compress/activation_range_max": float(ranges.max()),
    }
