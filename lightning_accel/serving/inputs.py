"""Request bodies to model inputs, checked against the manifest: JSON arrays or an image file.

Everything here runs in the HTTP process, before a request is queued for the runtime: a bad
request is answered there with one 4xx message and never reaches a batch (LitServe fails a
whole batch when one of its requests fails to decode). Torch-free; images through Pillow.

Image policy: an image must already have the model's size and channel count (the manifest's
``preprocessing``); one that does not is *refused* (422) with the size and mode expected and
how to convert it, never resized or converted silently, since a model trained on centred 28x28
digits or clothes gives confident nonsense on a squashed photo.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from lightning_accel.export.manifest import ImagePreprocessing, Manifest

_orjson: Any
try:  # optional: a faster JSON parser; the standard library otherwise
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None

IMAGE_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG"}
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_MODES = {1: "L", 3: "RGB"}


class RequestError(Exception):
    """A request the server refuses: an HTTP status (4xx) and one message saying the fix."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class InputSpec:
    """What one request may hold, from the manifest and the server's limits.

    Attributes:
        sample_shape: Shape of one sample (the model input without its batch dimension).
        dtype: The model input's numpy dtype.
        max_samples: Most samples one request may hold.
        preprocessing: How an image file becomes a sample; ``None``: images are refused.
        fixed_batch: The model's fixed batch size, or ``None`` when it is dynamic.
    """

    sample_shape: tuple[int, ...]
    dtype: np.dtype
    max_samples: int
    preprocessing: ImagePreprocessing | None = None
    fixed_batch: int | None = None

    @classmethod
    def from_manifest(cls, manifest: Manifest, max_samples: int) -> InputSpec:
        """The spec of the manifest's (single) input.

        Raises:
            ValueError: If the input has a symbolic dimension besides the batch.
        """
        spec = manifest.inputs[0]
        if any(isinstance(d, str) for d in spec.shape[1:]):
            raise ValueError(
                f"input {spec.name!r} has symbolic dimensions besides the batch ({spec.shape}); "
                "serving needs a fixed sample shape: export with a fixed image size."
            )
        batch = spec.shape[0] if spec.shape else None
        return cls(
            sample_shape=tuple(int(d) for d in spec.shape[1:]),
            dtype=np.dtype(spec.dtype),
            max_samples=max_samples,
            preprocessing=manifest.preprocessing,
            fixed_batch=batch if isinstance(batch, int) else None,
        )


def decode_body(body: bytes, content_type: str, spec: InputSpec) -> np.ndarray:
    """The samples ``[n, *sample_shape]`` a request body holds, in the model's dtype.

    Args:
        body: The whole request body.
        content_type: Its ``Content-Type`` header (parameters ignored); ``image/png`` and
            ``image/jpeg`` are images, anything else is read as JSON unless its bytes are a
            PNG or JPEG.
        spec: What a request may hold.

    Raises:
        RequestError: 400 empty or malformed body; 415 not an image or images unsupported;
            413 too many samples; 422 wrong shape, dtype, size, channels, NaN or infinity.
    """
    if not body:
        raise RequestError(
            400,
            "empty body: send a JSON array of samples (Content-Type: application/json) or a "
            "PNG/JPEG image (Content-Type: image/png)",
        )
    kind = content_type.split(";")[0].strip().lower()
    if kind in IMAGE_TYPES or body.startswith((_PNG_MAGIC, _JPEG_MAGIC)):
        return decode_image(body, spec)
    if kind.startswith("image/"):
        raise RequestError(415, f"unsupported image type {kind!r}: send image/png or image/jpeg")
    return decode_json(body, spec)


def decode_json(body: bytes, spec: InputSpec) -> np.ndarray:
    """Samples from a JSON array: one sample, a list of samples, or ``{"inputs": ...}``.

    Raises:
        RequestError: As :func:`decode_body`.
    """
    try:
        value = _loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise RequestError(400, f"malformed JSON ({err}); send e.g. {_example(spec)}") from err
    if isinstance(value, dict):
        if set(value) != {"inputs"}:
            raise RequestError(
                422, f"a JSON object must hold only the key 'inputs'; got keys {sorted(value)}"
            )
        value = value["inputs"]
    if not isinstance(value, list):
        raise RequestError(422, f"expected a JSON array of numbers; send e.g. {_example(spec)}")
    try:
        array = np.asarray(value)
    except (ValueError, RecursionError) as err:  # ragged or too deep nesting
        raise RequestError(
            422,
            f"wrong shape: the nested arrays have uneven lengths or too many levels; a sample is "
            f"{_shape(spec)}",
        ) from err
    return check_samples(array, spec)


def _loads(body: bytes) -> Any:
    """``json.loads``, through ``orjson`` first where it is installed.

    ``orjson`` parses a 28x28 sample (16 KB of floats) several times faster than the standard
    library (measured: 170 us there, the largest step of a request in the HTTP process). What
    it refuses (``NaN``/``Infinity`` literals, nesting past 1,024 levels, bad UTF-8) goes to
    ``json.loads``, so such a body is answered as without ``orjson``: a NaN is still a 422
    about NaN, not a 400. One difference: ``orjson`` reads an integer past 64 bits as a float,
    so a float model takes ``10**30`` as ``1e30`` (the standard library's Python integer was
    refused as a non-number); past the model dtype's range it is a 422 either way.
    """
    if _orjson is not None:
        try:
            return _orjson.loads(body)
        except _orjson.JSONDecodeError:
            pass
    return json.loads(body)


def check_samples(array: np.ndarray, spec: InputSpec) -> np.ndarray:
    """``array`` as a batch ``[n, *sample_shape]`` in the model's dtype, checked.

    Raises:
        RequestError: 422 wrong dtype, shape or a non-finite value; 413 too many samples.
    """
    integer = np.issubdtype(spec.dtype, np.integer)
    allowed = "iu" if integer else "iuf"
    if array.dtype.kind not in allowed:
        what = {"b": "booleans", "U": "strings", "O": "mixed or null values"}.get(
            array.dtype.kind, f"{array.dtype} values"
        )
        wanted = "integers" if integer else "numbers"
        raise RequestError(422, f"wrong dtype: got {what}; the model takes {wanted} ({spec.dtype})")
    shape = tuple(array.shape)
    if shape == spec.sample_shape:
        array = array[np.newaxis]
    elif shape[1:] != spec.sample_shape or not shape or shape[0] == 0:
        raise RequestError(
            422,
            f"wrong shape {list(shape)}: send one sample {_shape(spec)} or a list of samples "
            f"[n, {', '.join(map(str, spec.sample_shape))}]",
        )
    if len(array) > spec.max_samples:
        raise RequestError(
            413,
            f"too many samples: {len(array)} in one request, at most {spec.max_samples}; split "
            "it into several requests",
        )
    if spec.fixed_batch is not None and len(array) != spec.fixed_batch:
        raise RequestError(
            422, f"this model was exported with a fixed batch of {spec.fixed_batch} samples"
        )
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise RequestError(422, "NaN or infinite values in the input; send finite numbers")
    if integer:
        info = np.iinfo(spec.dtype)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise RequestError(422, f"integers out of range for {spec.dtype}")
    elif array.size and np.abs(array).max() > np.finfo(spec.dtype).max:
        raise RequestError(422, f"values overflow {spec.dtype}; send finite numbers")
    return np.ascontiguousarray(array, dtype=spec.dtype)


def decode_image(body: bytes, spec: InputSpec) -> np.ndarray:
    """One sample ``[1, C, H, W]`` from a PNG or JPEG file, preprocessed per the manifest.

    Raises:
        RequestError: 415 not a PNG/JPEG or no preprocessing known; 422 wrong size or mode.
    """
    prep = spec.preprocessing
    if prep is None:
        raise RequestError(
            415,
            "this export's manifest.json has no image preprocessing (the data module declared "
            "none), so images cannot be turned into inputs: send JSON arrays",
        )
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(body))
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise RequestError(415, "the body is not a readable PNG or JPEG image") from err
    if image.format not in IMAGE_TYPES.values():
        raise RequestError(415, f"unsupported image format {image.format}: send PNG or JPEG")
    height, width = prep.image_size
    mode = _MODES[prep.channels]
    if image.size != (width, height) or image.mode != mode:
        raise RequestError(
            422,
            f"wrong image: got {image.size[0]}x{image.size[1]} mode {image.mode}, this model "
            f"takes {width}x{height} mode {mode} (refused, not resized: convert it first, e.g. "
            f"Image.open(f).convert('{mode}').resize(({width}, {height})))",
        )
    try:
        pixels = np.asarray(image, dtype=np.float32)  # decodes; truncated files fail here
    except (OSError, ValueError) as err:
        raise RequestError(415, f"the image could not be decoded ({err})") from err
    pixels = pixels.reshape(height, width, prep.channels).transpose(2, 0, 1) / prep.pixel_max
    mean = np.asarray(prep.mean, np.float32).reshape(-1, 1, 1)
    std = np.asarray(prep.std, np.float32).reshape(-1, 1, 1)
    sample = ((pixels - mean) / std)[np.newaxis]
    if sample.shape[1:] != spec.sample_shape:
        raise RequestError(
            415,
            f"the manifest's preprocessing gives {list(sample.shape[1:])}, the model takes "
            f"{_shape(spec)}: send JSON arrays",
        )
    return np.ascontiguousarray(sample, dtype=spec.dtype)


def _shape(spec: InputSpec) -> str:
    return str(list(spec.sample_shape))


def _example(spec: InputSpec) -> str:
    count = math.prod(spec.sample_shape)
    if len(spec.sample_shape) <= 1 and count <= 4:
        return json.dumps(np.zeros(spec.sample_shape).tolist())
    return f"a nested list of shape {_shape(spec)} ({count} numbers)"


def describe(spec: InputSpec) -> dict[str, Any]:
    """What the server accepts, for its ``/info`` model metadata."""
    return {
        "sample_shape": list(spec.sample_shape),
        "dtype": str(spec.dtype),
        "max_samples": spec.max_samples,
        "images": None if spec.preprocessing is None else spec.preprocessing.as_dict(),
    }
