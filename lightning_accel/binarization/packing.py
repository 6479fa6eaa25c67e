"""A packed 1-bit format: binarized weights as bits (8 per byte) plus their scales.

The file holds, for each fully binarized weight, ``sign(W) >= 0`` packed with ``np.packbits``
and α (per channel or per tensor); every other tensor of the state dict (BatchNorm, real-valued
first and last layers, buffers) stays as it is. Loading rebuilds the weights as α·sign(W),
which is all a binarized layer computes with: outputs are identical.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lightning_accel.binarization.functions import hard_sign, weight_scale
from lightning_accel.binarization.layers import BINARY_LAYERS, BINARY_TRANSPOSED
from lightning_accel.utilities.files import atomic_write

FORMAT = "lightning-accel-packed-binary/1"


@dataclass(frozen=True)
class PackedSize:
    """Bytes of the binarized weights as fp32 and packed, and of the whole file.

    Attributes:
        binary_fp32_bytes: The binarized layers' weights stored as fp32.
        binary_packed_bytes: The same weights as bits plus their scales.
        file_bytes: The packed file.
        fp32_file_bytes: The plain fp32 state dict, serialized the same way.
    """

    binary_fp32_bytes: int
    binary_packed_bytes: int
    file_bytes: int
    fp32_file_bytes: int

    @property
    def binary_ratio(self) -> float:
        """fp32 ÷ packed size of the binarized weights (about 32)."""
        return self.binary_fp32_bytes / max(self.binary_packed_bytes, 1)

    @property
    def file_ratio(self) -> float:
        """fp32 ÷ packed size of the whole model file."""
        return self.fp32_file_bytes / max(self.file_bytes, 1)


def save_packed(model: nn.Module, path: str | os.PathLike) -> PackedSize:
    """Write ``model``'s state with fully binarized weights packed 8 per byte.

    Raises:
        ValueError: If the model has no fully binarized layer (nothing to pack).
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    packed: dict[str, dict[str, Any]] = {}
    for name, layer in model.named_modules():
        if isinstance(layer, BINARY_LAYERS) and layer.binary_weights and float(layer.progress) >= 1:
            weight = layer.weight.detach().cpu()
            bits = np.packbits((hard_sign(weight) > 0).numpy().reshape(-1))
            axis = 1 if isinstance(layer, BINARY_TRANSPOSED) else 0  # the output channels
            packed[f"{name}.weight"] = {
                "bits": torch.from_numpy(bits),
                "scale": weight_scale(weight.transpose(0, axis), layer.scaling).reshape(-1).clone(),
                "shape": list(weight.shape),
                "axis": axis,
            }
            del state[f"{name}.weight"]
    if not packed:
        raise ValueError(
            "save_packed found no fully binarized weight in this model: train it with "
            "Binarize(weights=True) until the schedule ends (progress 1), then save."
        )
    data = _serialize({"format": FORMAT, "packed": packed, "state": state})
    atomic_write(Path(path), data)
    fp32 = sum(int(np.prod(p["shape"])) * 4 for p in packed.values())
    bits_bytes = sum(p["bits"].numel() + p["scale"].numel() * 4 for p in packed.values())
    return PackedSize(fp32, bits_bytes, len(data), len(_serialize(model.state_dict())))


def load_packed(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Load a packed file into ``model`` (binarized the same way) and return it.

    The model is checked against the file before anything loads; on error it is unchanged.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is truncated or not a packed file (a field missing or of the
            wrong type), or belongs to another architecture (names or shapes differ).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No packed model at {path}. Write one with save_packed().")
    try:
        content = torch.load(io.BytesIO(path.read_bytes()), weights_only=True)
    except Exception as err:
        raise ValueError(
            f"{path} is truncated or not a packed model ({type(err).__name__}). Write it "
            "again with save_packed()."
        ) from err
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file; write one with save_packed().")
    state, packed = _check_content(content, path)
    for key, entry in packed.items():
        state[key] = _unpack(key, entry, path)
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    mismatched = [k for k in own.keys() & state.keys() if own[k].shape != state[k].shape]
    if missing or unexpected or mismatched:
        detail = (missing or unexpected or mismatched)[:3]
        raise ValueError(
            f"{path} was saved from another architecture: {len(missing)} tensors missing, "
            f"{len(unexpected)} unexpected, {len(mismatched)} of other shapes (e.g. {detail}). "
            "Load it into the model it was saved from, binarized the same way (apply "
            "restore_compression with the training checkpoint first)."
        )
    model.load_state_dict(state)
    return model


def _not_packed(path: Path, what: str) -> ValueError:
    return ValueError(f"{path} is not a packed model: {what}. Write it again with save_packed().")


def _check_content(
    content: dict[str, Any], path: Path
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    """The file's plain tensors and packed entries, every field checked before any is used.

    Raises:
        ValueError: ``"<path> is not a packed model: <what>"`` for a missing or mistyped field.
    """
    for field, kind in (("state", dict), ("packed", dict)):
        if field not in content:
            raise _not_packed(path, f"the {field!r} field is missing")
        if not isinstance(content[field], kind):
            raise _not_packed(
                path, f"{field!r} is of type {type(content[field]).__name__}, not a {kind.__name__}"
            )
    state: dict[str, torch.Tensor] = dict(content["state"])
    for key, value in state.items():
        if not isinstance(key, str):
            raise _not_packed(path, f"state has a key {key!r} that is not a string")
        if not isinstance(value, torch.Tensor):
            raise _not_packed(
                path, f"state entry {key!r} is of type {type(value).__name__}, not a tensor"
            )
    packed: dict[str, dict[str, Any]] = content["packed"]
    for key, entry in packed.items():
        if not isinstance(key, str):
            raise _not_packed(path, f"packed has a key {key!r} that is not a string")
        if not isinstance(entry, dict):
            raise _not_packed(
                path, f"packed entry {key!r} is of type {type(entry).__name__}, not a dict"
            )
        missing = [name for name in ("bits", "scale", "shape") if name not in entry]
        if missing:
            raise _not_packed(path, f"packed entry {key!r} lacks {', '.join(missing)}")
        for name in ("bits", "scale"):
            if not isinstance(entry[name], torch.Tensor):
                raise _not_packed(
                    path, f"{key}.{name} is of type {type(entry[name]).__name__}, not a tensor"
                )
        if entry["bits"].dtype != torch.uint8:
            raise _not_packed(path, f"{key}.bits holds {entry['bits'].dtype}, not torch.uint8")
        shape = entry["shape"]
        if (
            not isinstance(shape, (list, tuple))
            or not shape
            or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape)
        ):
            raise _not_packed(path, f"{key}.shape is {shape!r}, not a list of positive integers")
        axis = entry.get("axis", 0)
        if axis not in (0, 1) or axis >= len(shape):
            raise _not_packed(path, f"{key}.axis is {axis!r}, not 0 or 1 (the output channels)")
        if entry["scale"].numel() not in (1, shape[axis]):
            raise _not_packed(
                path,
                f"{key}.scale holds {entry['scale'].numel()} values, not 1 or {shape[axis]} "
                "(one per tensor or per output channel)",
            )
    return state, packed


def _unpack(key: str, entry: dict[str, Any], path: Path) -> torch.Tensor:
    shape = [int(d) for d in entry["shape"]]
    count = int(np.prod(shape))
    bits = entry["bits"].numpy()
    if bits.size != (count + 7) // 8:
        raise ValueError(
            f"{path} is truncated: {key} holds {bits.size} bytes of bits, not "
            f"{(count + 7) // 8}. Write it again with save_packed()."
        )
    signs = np.unpackbits(bits.reshape(-1))[:count].astype(np.float32) * 2 - 1
    scale_shape = [1] * len(shape)
    scale_shape[int(entry.get("axis", 0))] = -1  # the output channels: 1 for transposed convs
    scale = entry["scale"].float().reshape(scale_shape)
    return torch.from_numpy(signs).reshape(shape) * scale


def _serialize(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()
