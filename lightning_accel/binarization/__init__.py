"""Binarization: 1-bit weights and activations, int8 export and packed 1-bit storage."""

from lightning_accel.binarization.convert import convert_binary_layers, has_binary_layers
from lightning_accel.binarization.layers import (
    BINARY_LAYERS,
    binarize_layer,
    binarize_submodules,
    binary_layer_names,
    set_progress,
)
from lightning_accel.binarization.packing import PackedSize, load_packed, save_packed

__all__ = [
    "BINARY_LAYERS",
    "PackedSize",
    "binarize_layer",
    "binarize_submodules",
    "binary_layer_names",
    "set_progress",
    "convert_binary_layers",
    "has_binary_layers",
    "load_packed",
    "save_packed",
]
