"""Export to ONNX with the dynamo exporter, leaving the model as it was found."""

from __future__ import annotations

import errno
import inspect
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_accel.binarization.convert import convert_binary_layers, has_binary_layers
from lightning_accel.export.inputs import ModelInput, as_tuple, describe
from lightning_accel.quantization.convert import convert_to_qdq, has_fake_quant
from lightning_accel.utilities.copying import detached_copy

DEFAULT_OPSET = 18
_PROTOBUF_LIMIT = 2 * 1024**3  # ONNX files above this must keep weights in external data


def to_onnx(
    model: nn.Module,
    example_input: ModelInput,
    path: str | os.PathLike,
    dynamic_batch: bool = True,
    opset: int = DEFAULT_OPSET,
    binary_as_int8: bool = True,
) -> Path:
    """Export ``model`` to a self-contained ONNX file with the dynamo exporter.

    The model is exported from an eval-mode copy on the CPU, so its training mode, device and
    parameters are untouched. The file (and its external data, for models near 2 GB) is
    written into a temporary folder beside ``path`` and renamed into place at the end: an
    interrupted or failed export never leaves a half-written file at ``path`` and never
    replaces a complete one there.

    Args:
        model: The module to export.
        example_input: One input batch (any batch size) of the shape the model expects, or a
            tuple of them for a model with several positional inputs (e.g. a float image
            ``[N, C, H, W]`` and int64 token ids ``[N, T]``), each with its own dtype. The graph
            input is named ``input`` for one tensor; with several, the inputs are named after
            the parameters of ``model.forward`` (``input_<i>`` where it has none), in order,
            all sharing one dynamic batch dimension.
        path: Where to write the ``.onnx`` file; parent folders are created.
        dynamic_batch: Export the batch dimension as dynamic.
        opset: ONNX opset version.
        binary_as_int8: Export fully binarized layers as int8 Q/DQ, which ONNX Runtime runs as
            ``QLinearConv`` (no runtime has 1-bit kernels); ``False`` keeps them float (exact).

    Returns:
        The path written.

    Raises:
        ValueError: If the model rejects ``example_input``, or ``path`` is a directory or
            lies in a folder that cannot be created or written.
        RuntimeError: If the exporter cannot trace the model, or writing the file fails (a
            full disk): the message says which, naming the layer or the path.

    Example:
        >>> to_onnx(model, torch.randn(1, 1, 28, 28), "model.onnx")  # doctest: +SKIP
    """
    path = _writable_target(Path(path))
    exportable = detached_copy(model).cpu().eval()
    if has_fake_quant(exportable):
        exportable = convert_to_qdq(exportable)  # Q/DQ nodes the runtime fuses into int8 kernels
    if has_binary_layers(exportable):
        exportable = convert_binary_layers(exportable, int8=binary_as_int8)
    samples = tuple(_traced_sample(t, dynamic_batch) for t in as_tuple(example_input))
    try:
        with torch.no_grad():
            exportable(*samples)
    except Exception as err:
        raise ValueError(
            f"The model rejects an input of shape {describe(samples)}: {err}. "
            "Pass an example input shaped like one training batch."
        ) from err
    dynamic_shapes = _batch_dynamic_shapes(exportable, samples) if dynamic_batch else None
    # Everything is written into a temporary folder beside the target and renamed into place:
    # an interrupted or failed export never replaces a complete file with an incomplete one.
    staging = Path(_make_staging_dir(path))
    try:
        try:
            with warnings.catch_warnings(), _module_stack(exportable) as stack:
                warnings.simplefilter("ignore")
                program = torch.onnx.export(
                    exportable,
                    samples,
                    dynamo=True,
                    input_names=input_names(model, len(samples)),
                    output_names=["output"],
                    dynamic_shapes=dynamic_shapes,
                    opset_version=opset,
                    verbose=False,
                )
            if program is None:
                raise RuntimeError("torch.onnx.export returned no ONNX program")
        except Exception as err:
            where = (
                f" in layer {stack[-1]!r} ({type(exportable.get_submodule(stack[-1])).__name__})"
                if stack and stack[-1]
                else ""
            )
            raise RuntimeError(
                f"ONNX export of {type(model).__name__} failed{where}: {_root_cause(err)}. Make "
                "the forward pass traceable by torch.export (no Python control flow on tensor "
                "values)."
            ) from err
        # Too big for one protobuf: weights go to "<name>.data" beside the graph.
        external = _weight_bytes(exportable) > 0.9 * _PROTOBUF_LIMIT
        try:
            program.save(staging / path.name, external_data=external)
            _move_into_place(staging, path)
        except OSError as err:
            raise _write_error(path, err) from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _batch_dynamic_shapes(model: nn.Module, samples: tuple[Tensor, ...]) -> Any:
    """One dynamic batch dimension for every input, laid out as ``model.forward`` takes them.

    torch.export matches ``dynamic_shapes`` to the forward's parameters: a ``forward(self,
    *inputs)`` (a wrapper passing its inputs on) takes all of them in one parameter, which
    needs a tuple of per-input entries there, not one entry per input.
    """
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        signature = inspect.signature(model.forward)
        bound = signature.bind(*samples)
    except (TypeError, ValueError):
        return tuple({0: batch} for _ in samples)
    shapes: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        if signature.parameters[name].kind is inspect.Parameter.VAR_POSITIONAL:
            shapes[name] = tuple({0: batch} for _ in value)
        else:
            shapes[name] = {0: batch}
    return shapes


def _traced_sample(sample: Tensor, dynamic_batch: bool) -> Tensor:
    sample = sample.detach().cpu()
    if dynamic_batch and sample.shape[0] < 2:
        # torch.export specializes batch size 1, so trace with 2 to keep the dimension dynamic.
        sample = sample.expand(2, *sample.shape[1:]).contiguous()
    return sample


def input_names(model: nn.Module, count: int) -> list[str]:
    """ONNX input names: ``input`` for one; the forward's parameter names for several.

    Args:
        model: The module exported (its ``forward`` signature names the inputs).
        count: How many positional inputs it is called with.
    """
    if count == 1:
        return ["input"]
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        parameters = []
    positional = [
        p.name
        for p in parameters
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "output"
    ]
    if len(positional) >= count and len(set(positional[:count])) == count:
        return positional[:count]
    return [f"input_{i}" for i in range(count)]


def _writable_target(path: Path) -> Path:
    """``path`` if an ONNX file can be written there (its folder created); else a clear error.

    Raises:
        ValueError: If ``path`` is a folder, or its folder cannot be created or written.
    """
    if path.is_dir():
        raise ValueError(
            f"Cannot write the ONNX file to {path}: it is a directory. Pass a file path, "
            f"e.g. {path / 'model.onnx'}."
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"Cannot write the ONNX file to {path}: its folder {path.parent} cannot be created "
            f"({err.strerror or err}). Pass a path in a writable folder."
        ) from err
    return path


def _make_staging_dir(path: Path) -> str:
    try:
        return tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    except OSError as err:
        raise ValueError(
            f"Cannot write the ONNX file to {path}: its folder {path.parent} is not writable "
            f"({err.strerror or err}). Pass a path in a writable folder."
        ) from err


def _move_into_place(staging: Path, path: Path) -> None:
    """Rename the staged graph (and its external data, first) onto ``path`` and its siblings."""
    graph = staging / path.name
    if not graph.is_file():
        raise OSError(errno.EIO, "the exporter wrote no file", str(graph))
    staged = sorted(staging.iterdir(), key=lambda p: p == graph)  # the graph goes last
    for file in staged:
        os.replace(file, path.parent / file.name)
    stale_data = path.with_name(f"{path.name}.data")
    if stale_data.name not in {file.name for file in staged} and stale_data.is_file():
        # Weights of the graph just replaced: left beside it they would pass for its data.
        stale_data.unlink()


def _write_error(path: Path, err: OSError) -> RuntimeError:
    reason = err.strerror or str(err)
    return RuntimeError(
        f"Could not write the ONNX file {path}: {reason} (a write error, not a tracing problem; "
        "any earlier file there is unchanged). Free disk space or pass a path on a writable "
        "disk."
    )


@contextmanager
def _module_stack(model: nn.Module) -> Iterator[list[str]]:
    """Track which submodules the tracer is inside, to name the layer an export failed in."""
    stack: list[str] = []
    handles = []
    for name, module in model.named_modules():

        def enter(mod: nn.Module, args: Any, name: str = name) -> None:
            if not name:
                stack.clear()  # the exporter may retry from the top with another strategy
            stack.append(name)

        def leave(mod: nn.Module, args: Any, out: Any, name: str = name) -> None:
            if stack and stack[-1] == name:
                stack.pop()

        handles += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    try:
        yield stack
    finally:
        for handle in handles:
            handle.remove()


def _weight_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def _root_cause(err: BaseException) -> str:
    """First line of the innermost exception: the exporter's own report runs to pages."""
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__  # type: ignore[assignment]
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else ''}"[:400]
