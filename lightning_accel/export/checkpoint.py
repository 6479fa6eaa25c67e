"""Export a saved checkpoint and time it against its uncompressed architecture.

The job behind ``lightning-accel export``: rebuild the module (compression replayed), export to
ONNX, compile, verify against PyTorch and time it next to the baseline.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from lightning_accel.backends import BACKENDS
from lightning_accel.checkpointing.structural_log import compression_history
from lightning_accel.data.fashion_mnist import FashionMNISTDataModule
from lightning_accel.export.compare import (
    Comparison,
    ComparisonSettings,
    export_and_compare,
)
from lightning_accel.export.folder import ExportFolder

DEFAULT_MODULE = "lightning_accel.ClassificationModule"


def import_module_class(dotted: str) -> type[pl.LightningModule]:
    """The LightningModule class named ``package.module.Class``.

    Nothing is called before the name is checked to be a LightningModule subclass: a function
    or any other object is refused.

    Raises:
        ValueError: If it cannot be imported or is not a LightningModule subclass.
    """
    from lightning_accel.recipes.typecheck import import_class

    fix = f"Pass the full dotted path of its class, e.g. --module {DEFAULT_MODULE}."
    try:
        return import_class(dotted, pl.LightningModule, "lightning.pytorch.LightningModule")
    except ImportError as err:
        raise ValueError(f"Cannot import the module class {dotted!r} ({err}). {fix}") from err
    except ValueError as err:
        raise ValueError(f"{dotted!r} is not a LightningModule class: {err}. {fix}") from err


def check_output_dir(dirpath: Path) -> None:
    """Refuse an output folder that is a file or cannot be created, before any work.

    Raises:
        ValueError: Naming the path and the fix.
    """
    existing = next((p for p in (dirpath, *dirpath.parents) if p.exists()), None)
    if existing is None:
        return
    if not existing.is_dir():
        what = "is an existing file" if existing == dirpath else f"is inside the file {existing}"
        raise ValueError(
            f"--output-dir {dirpath} {what}, not a folder. Pass a folder path (it is created "
            "if missing), e.g. --output-dir export"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"--output-dir {dirpath}: {existing} is not writable. Pass a folder you can write to."
        )


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's contents, loaded with ``weights_only=True``.

    Raises:
        FileNotFoundError: If there is no file at ``path``.
        ValueError: If the file is not a Lightning checkpoint, or a section of it is malformed
            (the message names the file and the section).
    """
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}. Pass the path of a .ckpt file.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"{path} is not a readable PyTorch checkpoint ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). Pass a .ckpt file written by "
            "Trainer.save_checkpoint or ModelCheckpoint."
        ) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(
            f"{path} holds no 'state_dict': it is not a Lightning checkpoint. Pass a .ckpt file "
            "written by Trainer.save_checkpoint or ModelCheckpoint."
        )
    hparams = checkpoint.get("hyper_parameters")
    if hparams is not None and not isinstance(hparams, Mapping):
        raise ValueError(
            f"{path}: checkpoint['hyper_parameters'] must be a mapping of argument names to "
            f"values; got {type(hparams).__name__}. Re-save the checkpoint with "
            "Trainer.save_checkpoint from a module that calls self.save_hyperparameters()."
        )
    try:
        compression_history(checkpoint)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    return checkpoint


def load_with_baseline(
    path: Path, module_class: type[pl.LightningModule], checkpoint: dict[str, Any] | None = None
) -> tuple[pl.LightningModule, pl.LightningModule]:
    """The trained module and a fresh one of the uncompressed architecture (for latency only).

    Compression recorded in the checkpoint (pruned channels, masks) is replayed on load by
    :class:`~lightning_accel.CompressionCheckpointMixin`.

    Args:
        path: The ``.ckpt`` file; the trained module is always loaded from it.
        module_class: The LightningModule class the checkpoint was saved from.
        checkpoint: The file's contents if already read (see :func:`read_checkpoint`), for
            the hyperparameters; ``None``: read ``path``.

    Returns:
        ``(trained, baseline)``, both on the CPU in eval mode; the baseline has fresh weights.

    Raises:
        FileNotFoundError: If ``checkpoint`` is ``None`` and there is no file at ``path``.
        ValueError: If the file is not a Lightning checkpoint, or the module class cannot be
            rebuilt from its hyperparameters.
    """
    checkpoint = checkpoint if checkpoint is not None else read_checkpoint(path)
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    name = module_class.__name__
    try:
        baseline = module_class(**hparams)
    except TypeError as err:
        raise ValueError(
            f"{name} cannot be rebuilt from the hyperparameters saved in {path} "
            f"({err}). If it wraps your own nn.Module, export from Python: "
            f"{name}.load_from_checkpoint(path, model=YourNet()), then "
            "lightning_accel.export.to_onnx(...)."
        ) from err
    except ValueError as err:
        raise ValueError(
            f"{path}: a hyperparameter in checkpoint['hyper_parameters'] is invalid, so {name} "
            f"cannot be rebuilt: {err}"
        ) from err
    try:
        trained = module_class.load_from_checkpoint(path, map_location="cpu")
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    return trained.cpu().eval(), baseline.cpu().eval()


def verification_inputs(
    example: Tensor, data_dir: str | None = None, batches: int = 4, batch_size: int = 64
) -> tuple[list[Tensor], str]:
    """Inputs to verify on, and what they are.

    Real Fashion-MNIST test images when the model takes 1×28×28 inputs and the data is
    installed; otherwise seeded random inputs.

    Args:
        example: An input batch ``[N, *input_shape]``; only ``input_shape`` is used.
        data_dir: Folder with the Fashion-MNIST IDX files; ``None``: the
            ``LIGHTNING_ACCEL_FASHION_MNIST`` variable, then Debian's folder.
        batches: Number of batches, at least 1.
        batch_size: Inputs per batch, at least 1.

    Returns:
        ``(batches, source)``: tensors ``[batch_size, *input_shape]`` and a description,
        ``"fashion-mnist test"`` or ``"random normal"``.
    """
    if tuple(example.shape[1:]) == (1, 28, 28):
        from lightning_accel.data.fashion_mnist import load_split

        try:
            images, _ = load_split("test", data_dir)
        except FileNotFoundError:
            pass
        else:
            return list(images[: batches * batch_size].split(batch_size)), "fashion-mnist test"
    generator = torch.Generator().manual_seed(0)
    shape = (batch_size, *example.shape[1:])
    return [torch.randn(shape, generator=generator) for _ in range(batches)], "random normal"


def export_checkpoint(
    checkpoint: str | Path,
    dirpath: str | Path,
    settings: ComparisonSettings,
    module_class: str = DEFAULT_MODULE,
    data_dir: str | None = None,
    progress: Callable[[str], None] = print,
) -> Comparison:
    """Export a checkpoint for each backend, verify it and time it against its baseline.

    Writes ``model.onnx``, ``baseline.onnx``, compiled artifacts and ``summary.json`` under
    ``dirpath``. The baseline is the same architecture before compression, freshly initialized:
    it stands in for the dense model's latency, not its accuracy, so it is built only when
    ``settings.benchmark`` is on.

    Args:
        checkpoint: The ``.ckpt`` file written by Lightning.
        dirpath: Output folder; created if missing.
        settings: Backends, batch sizes, verification tolerance and timing.
        module_class: Dotted path of the LightningModule class, ``package.module.Class``.
        data_dir: Fashion-MNIST folder for verification inputs (see :func:`verification_inputs`).
        progress: Called with a short line before each long step.

    Returns:
        The comparison; its ``summary`` also names the checkpoint and the verification inputs.

    Raises:
        FileNotFoundError: If the checkpoint does not exist.
        ValueError: If ``dirpath`` is a file or not writable, ``module_class`` cannot be imported
            or is not a LightningModule subclass, the file is not a Lightning checkpoint, its
            model cannot be rebuilt, or the module sets no ``example_input_array``.
    """
    path, out = Path(checkpoint), Path(dirpath)
    check_output_dir(out)
    cls = import_module_class(module_class)
    contents = read_checkpoint(path)
    progress(f"loading {path}")
    trained, uncompressed = load_with_baseline(path, cls, contents)
    example = trained.example_input_array
    if not isinstance(example, Tensor):
        raise ValueError(
            f"{cls.__name__} sets no example_input_array, so the input shape is unknown. Set "
            "self.example_input_array in its __init__."
        )
    batches, source = verification_inputs(example, data_dir)
    out.mkdir(parents=True, exist_ok=True)
    # The folder is this run's while it runs (a fit's ExportOnFitEnd may share it): locked, and
    # an earlier run's files moved to earlier/<id>/ rather than left beside the new ones.
    folder = ExportFolder(out, f"lightning-accel export --output-dir {out}", tuple(BACKENDS))
    folder.take()
    try:
        problem, moved = folder.set_aside_earlier_run()
        if problem:
            raise ValueError(f"{problem}; pass another --output-dir")
        if moved:
            progress(moved)
        outcome = export_and_compare(
            trained, uncompressed if settings.benchmark else None, batches, out, settings, progress
        )
        outcome.summary = folder.write_summary(
            {
                "checkpoint": str(path),
                "verification_inputs": source,
                "baseline_kind": "uncompressed architecture, fresh weights (latency only)",
                **outcome.summary,
            },
            outcome.files,
            data=FashionMNISTDataModule if source == "fashion-mnist test" else None,  # manifest
        )
    finally:
        folder.release()
    return outcome
