"""Real data sets that are installed or bundled, never downloaded at run time."""

from lightning_accel.data.digits import DigitsDataModule
from lightning_accel.data.fashion_mnist import FashionMNISTDataModule

__all__ = ["DigitsDataModule", "FashionMNISTDataModule"]
