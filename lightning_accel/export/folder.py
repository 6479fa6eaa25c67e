"""An export folder owned by one run: locked while it runs, earlier runs' files set aside.

``ExportOnFitEnd`` writes ``last.ckpt``, ONNX files, compiled artifacts and ``summary.json``
into one folder. Two runs must never mix their files there: a run holds a lock on the folder
(``filelock``) from ``setup`` to ``teardown``; files an earlier run left are moved to
``earlier/<run id>/`` (nothing is deleted); the checkpoint is saved under a temporary name,
checked whole, then renamed, so nothing claims a checkpoint is safe that is not.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
import zipfile
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from lightning_accel.export.compare import json_ready
from lightning_accel.export.manifest import MANIFEST_NAME, write_manifest
from lightning_accel.utilities.files import atomic_write

LOCK_NAME = ".lightning_accel.lock"
EARLIER = "earlier"
STAGED_CHECKPOINT = ".last.ckpt.partial"
# What an export leaves in its folder, besides the files its summary lists.
EXPORT_FILES = (
    "last.ckpt",
    "model.onnx",
    "model.onnx.data",
    "baseline.onnx",
    "baseline.onnx.data",
    "summary.json",
    MANIFEST_NAME,
)


class ExportFolder:
    """The folder one export run owns.

    Args:
        dirpath: The export folder (created by the caller).
        owner: Who asks, for messages, e.g. ``"ExportOnFitEnd(dirpath='export')"``.
        artifact_folders: Names of sub-folders a run writes (one per backend).
    """

    def __init__(self, dirpath: Path, owner: str, artifact_folders: Sequence[str]) -> None:
        self.dirpath = Path(dirpath)
        self.owner = owner
        self.artifact_folders = tuple(artifact_folders)
        self.run: dict[str, str] = {}
        self._lock: FileLock | None = None
        self._earlier: dict[str, tuple[int, int] | None] = {}

    def take(self) -> None:
        """Lock the folder for this run and note the earlier run's files it holds.

        Raises:
            ValueError: If another run holds the folder's lock.
        """
        self.release()
        lock = FileLock(self.dirpath / LOCK_NAME, timeout=0, thread_local=False)
        try:
            lock.acquire()
        except Timeout as err:
            raise ValueError(
                f"{self.owner}: another run is exporting into this folder now (it holds "
                f"{self.dirpath / LOCK_NAME}). Two runs in one folder would overwrite each "
                "other's checkpoint and verify one model against the other's ONNX file. Pass "
                f"another dirpath, e.g. dirpath='{self.dirpath}-2', or wait until the other run "
                "ends."
            ) from err
        self._lock = lock
        started = datetime.now(timezone.utc)
        self.run = {
            "id": f"{started:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}",
            "started": started.isoformat(timespec="seconds"),
        }
        # Noted now, moved at fit end: a resumed fit may still read the earlier last.ckpt.
        self._earlier = earlier_run_entries(
            self.dirpath, EXPORT_FILES, self.artifact_folders, skip=(EARLIER,)
        )

    def release(self) -> None:
        """Release the folder's lock (idempotent)."""
        if self._lock is not None and self._lock.is_locked:
            self._lock.release()
        self._lock = None

    def set_aside_earlier_run(self) -> tuple[str | None, str | None]:
        """Move the earlier run's files (noted by :meth:`take`) to ``earlier/<id>/``.

        Returns:
            ``(problem, moved)``: why they could not be moved, or ``None``; and a line saying
            where they went, or ``None`` if there was nothing to move.
        """
        names = [
            name
            for name, signature in self._earlier.items()
            if os.path.lexists(self.dirpath / name)
            and (signature is None or file_signature(self.dirpath / name) == signature)
        ]
        if not names:
            return None, None
        destination = free_path(self.dirpath / EARLIER, earlier_run_id(self.dirpath, names))
        try:
            set_aside(self.dirpath, names, destination)
        except OSError as err:
            return (
                f"the earlier run's files in {self.dirpath} ({', '.join(names)}) could not be "
                f"moved to {destination} ({err.strerror or err})"
            ), None
        return None, (
            f"{self.dirpath} held an earlier run's export files ({', '.join(names)}); moved them "
            f"to {destination} so that they are not taken for this run's. Nothing was deleted."
        )

    def write_summary(
        self, summary: dict[str, Any], written: Sequence[Path], data: object = None
    ) -> dict[str, Any]:
        """Write ``manifest.json``, then ``summary.json`` with this run's section first.

        Both are written atomically; the summary is strict JSON. A manifest that cannot be
        written (an unreadable ONNX file) is noted in the summary's ``notes``; the export stands.

        Args:
            summary: The export's results.
            written: Files and folders the run wrote; those that exist are listed with sizes.
            data: The data module (class or instance) the model learned from, for the
                manifest's preprocessing and class names (see ``export/manifest.py``).

        Returns:
            What was written: ``{"run": {id, started, finished, files}, **summary}`` with every
            non-finite number as ``None``.
        """
        try:
            manifest = write_manifest(self.dirpath, {"run": self.run, **summary}, data)
            written = [*written, manifest]
        except (OSError, ValueError) as err:
            notes = list(summary.get("notes") or [])
            summary = {**summary, "notes": [*notes, f"{MANIFEST_NAME} not written: {err}"]}
        run = {
            **self.run,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "files": describe_files(self.dirpath, [p for p in written if p.exists()]),
        }
        final: dict[str, Any] = json_ready({"run": run, **summary})
        text = json.dumps(final, indent=2, allow_nan=False, default=str)
        atomic_write(self.dirpath / "summary.json", text)
        return final

    def keep_staged(self, staged: Path) -> Path | None:
        """Where a complete staged checkpoint now is (renamed to ``unsaved-<id>.ckpt``).

        A later run discards the staged (temporary) name, so a complete copy is renamed first.
        Returns ``None`` when the staged file is not a complete checkpoint.
        """
        if checkpoint_problem(staged) is not None:
            return None
        keep = self.dirpath / f"unsaved-{self.run.get('id', 'run')}.ckpt"
        try:
            os.replace(staged, keep)
        except OSError:
            return staged
        return keep

    def unsaved_message(self, kept: Path | None, problem: str, saved: Sequence[str]) -> str:
        """The error when ``last.ckpt`` could not be written: where the model still is.

        Args:
            kept: A complete checkpoint kept under another name, or ``None``.
            problem: Why ``last.ckpt`` could not be written.
            saved: Checkpoints other callbacks (``ModelCheckpoint``) wrote during training.
        """
        checkpoint = self.dirpath / "last.ckpt"
        lines = [
            f"{self.owner} could not write the checkpoint {checkpoint}: {problem}. The trained "
            "model is NOT saved there and nothing was exported."
        ]
        if kept is not None:
            lines.append(f"A complete checkpoint was written to {kept}: load it from there.")
        lines.append(
            "The trained model is still in memory (trainer.lightning_module): save it now with "
            "trainer.save_checkpoint('<a writable folder>/last.ckpt')."
        )
        if saved:
            lines.append(f"Checkpoints ModelCheckpoint wrote during training: {', '.join(saved)}.")
        caller = self.owner.split("(")[0]
        lines.append(
            f"Then make {self.dirpath} writable, or pass {caller}(dirpath=...) a folder you can "
            "write to."
        )
        return "\n".join(lines)


def describe_files(root: Path, paths: Iterable[Path]) -> list[dict[str, Any]]:
    """The regular files among ``paths`` (folders walked), relative to ``root``, with sizes.

    Args:
        root: The folder the listed paths are made relative to.
        paths: Files or folders inside ``root``; missing ones are skipped.

    Returns:
        ``[{"path": "model.onnx", "bytes": 1234}, ...]`` sorted by path, each file once.
    """
    found: dict[str, int] = {}
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if file.is_file():
                found[file.relative_to(root).as_posix()] = file.stat().st_size
    return [{"path": name, "bytes": size} for name, size in sorted(found.items())]


def set_aside(root: Path, names: Iterable[str], destination: Path) -> list[str]:
    """Move the entries ``names`` of ``root`` that exist into ``destination``; delete nothing.

    Args:
        root: The folder holding the entries.
        names: Top-level entry names inside ``root`` (files or folders).
        destination: The folder they move to; created, and must not exist yet.

    Returns:
        The names moved, in order.

    Raises:
        FileExistsError: If ``destination`` already exists (nothing would be overwritten).
        OSError: If a move fails; entries moved before it stay in ``destination``.
    """
    present = [name for name in dict.fromkeys(names) if os.path.lexists(root / name)]
    if not present:
        return []
    destination.mkdir(parents=True, exist_ok=False)
    for name in present:
        shutil.move(str(root / name), str(destination / name))
    return present


def file_signature(path: Path) -> tuple[int, int] | None:
    """Identity of a file (inode, modification time): any rewrite changes it; folders: None."""
    if path.is_dir():
        return None
    info = path.stat()
    return (info.st_ino, info.st_mtime_ns)


def free_path(parent: Path, name: str) -> Path:
    """``parent/name``, or ``parent/name-2``, ``-3``, ...: the first that does not exist."""
    candidate, suffix = parent / name, 1
    while os.path.lexists(candidate):
        suffix += 1
        candidate = parent / f"{name}-{suffix}"
    return candidate


def remove_stale(path: Path) -> None:
    """Remove a file or folder a killed process left under a temporary name; ignore failures.

    A failure to remove it shows up in the write that follows, which says so.
    """
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif os.path.lexists(path):
            path.unlink()
    except OSError:
        pass


def checkpoint_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete checkpoint, or ``None``.

    Lightning swallows some write errors (a read-only folder), so a saved checkpoint is checked
    before anything claims it is safe: it must exist and be a whole zip archive (the format of
    ``torch.save``; a zip's index sits at its end, so a truncated file fails the check).
    """
    if not os.path.lexists(path):
        return "nothing was written (the folder may be read-only or the disk full)"
    if path.is_dir():
        if any(path.iterdir()):
            return None  # a sharded checkpoint (DeepSpeed, FSDP) is a folder
        return "the save left an empty folder"
    if not zipfile.is_zipfile(path):
        return f"the file written ({path.stat().st_size} bytes) is incomplete or not a checkpoint"
    return None


def publish_checkpoint(staged: Path, checkpoint: Path) -> str | None:
    """Rename a complete ``staged`` checkpoint onto ``checkpoint`` (atomic); else say why not.

    Returns:
        ``None`` once ``checkpoint`` holds the complete file; otherwise what went wrong
        (``checkpoint`` is then unchanged).
    """
    problem = checkpoint_problem(staged)
    if problem is not None:
        return problem
    try:
        os.replace(staged, checkpoint)
    except OSError as err:
        return f"the complete file could not be renamed onto it ({err.strerror or err})"
    return None


def read_summary(dirpath: Path) -> dict[str, Any]:
    """``dirpath/summary.json`` as a dict; ``{}`` if it is missing, unreadable or not an object."""
    try:
        summary = json.loads((dirpath / "summary.json").read_text())
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def earlier_run_entries(
    dirpath: Path, files: Sequence[str], folders: Sequence[str], skip: Sequence[str] = ()
) -> dict[str, tuple[int, int] | None]:
    """The top-level entries of ``dirpath`` an earlier run wrote, with their signatures.

    Args:
        dirpath: The run folder.
        files: Names of files a run writes there (taken when they are files).
        folders: Names of folders a run writes there (taken when they are folders).
        skip: Names never taken (besides hidden ones: locks, partial files).

    Returns:
        ``{name: file_signature}`` for the known names present and every top-level entry the
        earlier ``summary.json`` lists under ``run.files``.
    """
    names = [n for n in files if (dirpath / n).is_file()]
    names += [n for n in folders if (dirpath / n).is_dir()]
    run = read_summary(dirpath).get("run")
    listed = run.get("files") if isinstance(run, dict) else None
    for entry in listed if isinstance(listed, list) else []:
        path = entry.get("path") if isinstance(entry, dict) else None
        top = Path(path).parts[0] if isinstance(path, str) and path else ""
        if top and top not in (*skip, "..", "/") and not top.startswith("."):
            names.append(top)
    return {
        name: file_signature(dirpath / name)
        for name in dict.fromkeys(names)
        if os.path.lexists(dirpath / name)
    }


def earlier_run_id(dirpath: Path, names: Sequence[str]) -> str:
    """The run id the earlier ``summary.json`` states, else its newest file's time (UTC)."""
    run = read_summary(dirpath).get("run")
    run_id = run.get("id") if isinstance(run, dict) else None
    if isinstance(run_id, str) and re.fullmatch(r"[\w.-]{1,80}", run_id):
        return run_id
    newest = max((dirpath / name).stat().st_mtime for name in names)
    return f"{datetime.fromtimestamp(newest, timezone.utc):%Y%m%dT%H%M%SZ}"
