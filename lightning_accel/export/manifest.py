"""``manifest.json``: what a server needs to know about an exported model, beside the model.

An export folder holds ``model.onnx`` and ``summary.json`` (figures for people). The manifest is
for programs: the model's inputs (names, shapes with a symbolic batch dimension, dtypes, read
from the ONNX file), the preprocessing the data module applied to raw images, the class names,
and each backend's artifacts with their verification status. ``lightning-accel serve`` reads
only this file and the model, so this module is free of torch (``onnx`` is imported only to
write a manifest).

A data module describes itself with two optional class attributes (the protocol read by
:func:`describe_data`)::

    class MyData(L.LightningDataModule):
        preprocessing = ImagePreprocessing(image_size=(28, 28), channels=1, mean=(0.286,),
                                           std=(0.353,))
        class_names = ("T-shirt/top", "Trouser", ...)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lightning_accel.utilities.files import atomic_write

MANIFEST_NAME = "manifest.json"
FORMAT = "lightning-accel-manifest"
VERSION = 1
REEXPORT_HINT = (
    "Re-export it with a version that writes manifest.json: `lightning-accel export "
    "<the run's last.ckpt> --output-dir {dirpath}` (or fit again with ExportOnFitEnd)."
)


@dataclass(frozen=True)
class ImagePreprocessing:
    """How raw images became the model's input: ``x = (pixel / pixel_max - mean[c]) / std[c]``.

    Attributes:
        image_size: ``(height, width)`` in pixels the model takes.
        channels: 1 (grayscale, Pillow mode ``"L"``) or 3 (``"RGB"``), channels first.
        mean: Per-channel mean subtracted after scaling pixels to [0, 1].
        std: Per-channel standard deviation divided by after that.
        pixel_max: The raw pixel value that maps to 1.0; 255 for 8-bit image files.
    """

    image_size: tuple[int, int]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pixel_max: float = 255.0

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3; got {self.channels!r}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(
                f"mean and std need one value per channel ({self.channels}); got mean="
                f"{self.mean}, std={self.std}"
            )
        if any(not (isinstance(s, (int, float)) and s > 0) for s in self.std):
            raise ValueError(f"std values must be > 0; got {self.std}")

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "image_size": list(self.image_size),
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> ImagePreprocessing:
        """Read back :meth:`as_dict`.

        Raises:
            ValueError: If a field is missing or of the wrong type.
        """
        try:
            height, width = (int(v) for v in value["image_size"])
            return cls(
                image_size=(height, width),
                channels=int(value["channels"]),
                mean=tuple(float(v) for v in value["mean"]),
                std=tuple(float(v) for v in value["std"]),
                pixel_max=float(value.get("pixel_max", 255.0)),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"preprocessing in {MANIFEST_NAME} is malformed ({err})") from err


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, shape (a symbolic dimension by name), numpy dtype."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class Manifest:
    """A manifest read back (see :func:`read_manifest`).

    Attributes:
        dirpath: The export folder.
        model: The ONNX file, relative to ``dirpath``.
        inputs: The graph's inputs (a classifier has one, batch first).
        outputs: The graph's outputs.
        preprocessing: How raw images were turned into inputs, or ``None`` if unknown.
        class_names: One name per output class, or ``None`` if unknown.
        backends: Per backend: ``{"verification": "passed" | "failed" | "error" | "not run",
            "detail": str | None, "artifacts": {kind: relative path}}``.
    """

    dirpath: Path
    model: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    preprocessing: ImagePreprocessing | None
    class_names: tuple[str, ...] | None
    backends: Mapping[str, Mapping[str, Any]]

    @property
    def model_path(self) -> Path:
        return self.dirpath / self.model


def describe_data(data: object) -> dict[str, Any]:
    """The preprocessing and class names a data module (class or instance) declares.

    Args:
        data: A data module with optional ``preprocessing`` (:class:`ImagePreprocessing`) and
            ``class_names`` attributes, or ``None``.

    Returns:
        ``{"data": class name | None, "preprocessing": dict | None, "class_names": list | None}``.
    """
    preprocessing = getattr(data, "preprocessing", None)
    names = getattr(data, "class_names", None)
    return {
        "data": None if data is None else getattr(data, "__name__", type(data).__name__),
        "preprocessing": (
            preprocessing.as_dict() if isinstance(preprocessing, ImagePreprocessing) else None
        ),
        "class_names": [str(n) for n in names] if isinstance(names, Sequence) else None,
    }


def onnx_signature(onnx_path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of an ONNX graph (weights excluded), read without its weights.

    Raises:
        ValueError: If the file cannot be read as an ONNX model.
    """
    import onnx
    from onnx import helper

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError, OSError, ...
        raise ValueError(f"{onnx_path} is not a readable ONNX model ({err})") from err
    weights = {init.name for init in model.graph.initializer}

    def spec(value: Any) -> TensorSpec:
        tensor = value.type.tensor_type
        dims = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in tensor.shape.dim
        )
        dtype = str(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
        return TensorSpec(value.name, dims, dtype)

    inputs = [spec(v) for v in model.graph.input if v.name not in weights]
    return inputs, [spec(v) for v in model.graph.output]


def backend_status(entry: Mapping[str, Any], dirpath: Path) -> dict[str, Any]:
    """One backend's verification status and artifacts (relative paths) from the summary."""
    artifacts = {}
    for kind, path in (entry.get("artifacts") or {}).items():
        try:
            artifacts[kind] = Path(path).resolve().relative_to(dirpath.resolve()).as_posix()
        except ValueError:
            artifacts[kind] = str(path)
    if "error" in entry:
        return {"verification": "error", "detail": str(entry["error"]), "artifacts": artifacts}
    check = entry.get("verification")
    if not isinstance(check, Mapping):
        return {"verification": "not run", "detail": None, "artifacts": artifacts}
    passed = bool(check.get("passed"))
    return {
        "verification": "passed" if passed else "failed",
        "detail": None if passed else check.get("problem"),
        "artifacts": artifacts,
    }


def write_manifest(
    dirpath: Path, summary: Mapping[str, Any], data: object = None, model: str = "model.onnx"
) -> Path:
    """Write ``dirpath/manifest.json`` for the export whose results are ``summary``.

    Args:
        dirpath: The export folder holding ``model``.
        summary: The export's summary (its ``backends`` section gives the verification).
        data: The data module (class or instance) the model was trained on, or ``None``.
        model: The ONNX file, relative to ``dirpath``.

    Returns:
        The manifest's path.

    Raises:
        ValueError: If the ONNX file cannot be read.
        OSError: If the file cannot be written.
    """
    inputs, outputs = onnx_signature(dirpath / model)
    backends = summary.get("backends") or {}
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "run": (summary.get("run") or {}).get("id"),
        "model": model,
        "inputs": [spec.as_dict() for spec in inputs],
        "outputs": [spec.as_dict() for spec in outputs],
        **describe_data(data),
        "backends": {name: backend_status(entry, dirpath) for name, entry in backends.items()},
    }
    return atomic_write(dirpath / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")


def read_manifest(dirpath: str | os.PathLike) -> Manifest:
    """Read ``dirpath/manifest.json``.

    Raises:
        FileNotFoundError: If the folder or its model is missing, or it holds no manifest (an
            export from before manifests: the message gives the re-export command).
        ValueError: If the manifest is malformed or describes no input.
    """
    folder = Path(dirpath)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"export folder {folder} does not exist. Pass the folder ExportOnFitEnd or "
            "`lightning-accel export --output-dir` wrote (it holds model.onnx and manifest.json)."
        )
    path = folder / MANIFEST_NAME
    if not path.is_file():
        older = " (it holds summary.json: an export from before manifests)" * (
            (folder / "summary.json").is_file()
        )
        raise FileNotFoundError(
            f"{folder} has no {MANIFEST_NAME}{older}; serving needs it for the input shape, "
            f"dtype, preprocessing and verification status. " + REEXPORT_HINT.format(dirpath=folder)
        )
    try:
        raw = json.loads(path.read_text())
        if raw.get("format") != FORMAT:
            raise ValueError(f"format is {raw.get('format')!r}, not {FORMAT!r}")
        inputs = tuple(_spec(v) for v in raw["inputs"])
        outputs = tuple(_spec(v) for v in raw["outputs"])
        names = raw.get("class_names")
        manifest = Manifest(
            dirpath=folder,
            model=str(raw["model"]),
            inputs=inputs,
            outputs=outputs,
            preprocessing=(
                ImagePreprocessing.from_dict(raw["preprocessing"])
                if raw.get("preprocessing")
                else None
            ),
            class_names=tuple(str(n) for n in names) if isinstance(names, list) else None,
            backends=dict(raw.get("backends") or {}),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(
            f"{path} is malformed ({err}). " + REEXPORT_HINT.format(dirpath=folder)
        ) from err
    if len(manifest.inputs) != 1:
        raise ValueError(
            f"{path}: serving takes models with one input; this one has "
            f"{[spec.name for spec in manifest.inputs]}"
        )
    if not manifest.model_path.is_file():
        raise FileNotFoundError(
            f"{manifest.model_path} (named by {path}) is missing. "
            + REEXPORT_HINT.format(dirpath=folder)
        )
    return manifest


def _spec(value: Mapping[str, Any]) -> TensorSpec:
    shape = tuple(d if isinstance(d, str) else int(d) for d in value["shape"])
    if any(isinstance(d, int) and d < 1 for d in shape):
        raise ValueError(f"bad shape {value['shape']}")
    return TensorSpec(str(value["name"]), shape, str(value["dtype"]))
