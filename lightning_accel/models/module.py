"""``ClassificationModule``: a LightningModule around any image classifier."""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_accel.checkpointing.structural_log import CompressionCheckpointMixin
from lightning_accel.distillation import distill
from lightning_accel.models import zoo
from lightning_accel.utilities.validation import check_int, check_number

OptimizerName = Literal["sgd", "adamw"]


class ClassificationModule(CompressionCheckpointMixin, pl.LightningModule):
    """Cross-entropy training and top-1 accuracy for any ``nn.Module`` classifier.

    Pass a zoo name (``model="resnet18"``) and the checkpoint rebuilds it by itself; pass a
    module and give it again to ``load_from_checkpoint(path, model=...)``. Checkpoints of
    pruned models load either way (see :class:`CompressionCheckpointMixin`).

    Args:
        model: A classifier, or a name from :data:`lightning_accel.models.zoo.MODELS`.
        num_classes: Classes (outputs of the classifier).
        in_channels: Image channels, used when ``model`` is a zoo name.
        lr: Peak learning rate.
        optimizer: ``"sgd"`` (momentum 0.9, Nesterov) or ``"adamw"``.
        weight_decay: Weight decay.
        cosine_epochs: If set, cosine-anneal the learning rate over this many epochs.
        input_size: Image height and width, used for ``example_input_array``.

    Raises:
        ValueError: If an argument has the wrong type or is out of range (the message names
            it), or ``model`` names no zoo model.

    Example:
        >>> module = ClassificationModule("small_cnn", num_classes=10, lr=0.05)
    """

    def __init__(
        self,
        model: nn.Module | str,
        num_classes: int = 10,
        in_channels: int = 1,
        lr: float = 0.05,
        optimizer: OptimizerName = "sgd",
        weight_decay: float = 5e-4,
        cosine_epochs: int | None = None,
        input_size: int = 28,
    ) -> None:
        super().__init__()
        _check_arguments(
            model, num_classes, in_channels, lr, optimizer, weight_decay, cosine_epochs, input_size
        )
        self.save_hyperparameters(ignore=["model"] if isinstance(model, nn.Module) else None)
        self.model = zoo.build(model, num_classes, in_channels) if isinstance(model, str) else model
        self.example_input_array = torch.zeros(1, in_channels, input_size, input_size)
        self.train_accuracy = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.val_accuracy = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_accuracy = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    @staticmethod
    def logged_metrics() -> tuple[str, ...]:
        """The metric names training and validation log."""
        return ("train/loss", "train/acc", "val/loss", "val/acc")

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.train_accuracy(logits, y)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", self.train_accuracy, on_step=False, on_epoch=True)
        # train/loss stays the cross-entropy; a Distillation callback adds its term here.
        return distill(self, x, logits, loss)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_accuracy, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.test_accuracy, "test")

    def _evaluate(
        self, batch: tuple[Tensor, Tensor], metric: MulticlassAccuracy, stage: str
    ) -> None:
        x, y = batch
        logits = self(x)
        metric(logits, y)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), sync_dist=True)
        self.log(f"{stage}/acc", metric, prog_bar=True)

    def configure_optimizers(self) -> Any:
        hp: Any = self.hparams
        if hp.optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(
                self.parameters(),
                lr=hp.lr,
                momentum=0.9,
                nesterov=True,
                weight_decay=hp.weight_decay,
            )
        else:
            opt = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if not hp.cosine_epochs:
            return opt
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=hp.cosine_epochs)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


def _check_arguments(
    model: object,
    num_classes: object,
    in_channels: object,
    lr: object,
    optimizer: object,
    weight_decay: object,
    cosine_epochs: object,
    input_size: object,
) -> None:
    """Refuse bad constructor arguments before anything is built or saved as a hyperparameter.

    Raises:
        ValueError: Naming the argument, the value and a valid call.
    """
    if not isinstance(model, (str, nn.Module)):
        raise ValueError(
            f"model must be a zoo name ({', '.join(sorted(zoo.MODELS))}) or an nn.Module; got "
            f"{type(model).__name__} {model!r:.80}. Example: ClassificationModule('small_cnn') "
            "or ClassificationModule(MyNet())"
        )
    if optimizer not in ("sgd", "adamw"):
        raise ValueError(
            f"optimizer must be 'sgd' or 'adamw'; got {optimizer!r}. "
            "Example: ClassificationModule('small_cnn', optimizer='adamw')"
        )
    for argument, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        check_int(value, argument, f"ClassificationModule('small_cnn', {argument}=3)")
    check_int(input_size, "input_size", "ClassificationModule('small_cnn', input_size=28)")
    check_int(
        cosine_epochs,
        "cosine_epochs",
        "ClassificationModule('small_cnn', cosine_epochs=10)",
        optional=True,
    )
    check_number(lr, "lr", "ClassificationModule('small_cnn', lr=0.05)", 0, low_open=True)
    check_number(
        weight_decay, "weight_decay", "ClassificationModule('small_cnn', weight_decay=5e-4)", 0
    )
