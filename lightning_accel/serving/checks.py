"""What is refused before a server starts: each a :class:`ServeError` (CLI exit code 2)."""

from __future__ import annotations

import errno
import os
import socket

from lightning_accel.backends import get_backend
from lightning_accel.export.manifest import REEXPORT_HINT, Manifest, read_manifest

# LitServe binds only these and ports from 1024 (LitServer.run).
HOSTS = ("127.0.0.1", "0.0.0.0", "::")
MIN_PORT, MAX_PORT = 1024, 65535


class ServeError(Exception):
    """The server cannot start as asked; the message says what is wrong and the fix."""


def check_backend(backend: str) -> None:
    """Refuse a backend that is not registered or cannot run here.

    Raises:
        ServeError: Naming the registered backends, or what is missing.
    """
    try:
        runtime = get_backend(backend, "--backend")
    except ValueError as err:
        raise ServeError(
            str(err).replace("backend='onnxruntime'", "--backend onnxruntime")
        ) from err
    problem = runtime.problem()
    if problem:
        raise ServeError(f"backend {backend!r} cannot run here: {problem}")


def check_export(
    export_dir: str | os.PathLike, backend: str, allow_unverified: bool = False
) -> Manifest:
    """The export folder's manifest, if the model was verified on ``backend``.

    Args:
        export_dir: The folder ``ExportOnFitEnd`` or ``lightning-accel export`` wrote.
        backend: The backend to serve on.
        allow_unverified: Serve a backend the export did not verify (never one that failed).

    Raises:
        ServeError: A missing folder, model or manifest (older exports: the re-export command),
            a malformed manifest, a failed verification, or (unless ``allow_unverified``) a
            backend the export did not verify.
    """
    try:
        manifest = read_manifest(export_dir)
    except (FileNotFoundError, ValueError) as err:
        raise ServeError(str(err)) from err
    entry = manifest.backends.get(backend) or {}
    status = entry.get("verification", "not exported")
    hint = REEXPORT_HINT.format(dirpath=manifest.dirpath)
    if status in ("failed", "error"):
        raise ServeError(
            f"{manifest.dirpath}: the export's verification on {backend} {status} "
            f"({entry.get('detail') or 'see summary.json'}); a model whose runtime outputs "
            f"disagree with PyTorch is not served. Fix the model or the export, then re-export. "
            + hint.removeprefix("Re-export it with a version that writes manifest.json: ")
        )
    if status != "passed" and not allow_unverified:
        verified = sorted(
            n for n, e in manifest.backends.items() if e.get("verification") == "passed"
        )
        raise ServeError(
            f"{manifest.dirpath}: the export did not verify {backend} ({status}); verified: "
            f"{verified or 'none'}. Serve a verified backend, re-export with --backend {backend}, "
            "or pass --allow-unverified."
        )
    return manifest


def check_settings(
    host: str,
    port: int,
    max_batch_size: int,
    batch_timeout_ms: float,
    workers: int,
    threads: int | None,
    max_body_bytes: int,
    max_samples: int,
    top_k: int,
) -> None:
    """Refuse settings out of range, naming the setting, its value and what is allowed.

    Args:
        host: Address to bind, one of :data:`HOSTS`.
        port: TCP port in [1024, 65535].
        max_batch_size: Requests per runtime call, in [1, 4096].
        batch_timeout_ms: Milliseconds a batch waits, in [0, 10000].
        workers: Runtime worker processes, in [1, 64].
        threads: Runtime threads per worker, ``None`` or in [1, 1024].
        max_body_bytes: Largest request body, in [64, 2**31].
        max_samples: Most samples per request, in [1, 4096].
        top_k: Classes per answer, at least 1.

    Raises:
        ServeError: For the first setting out of range.
    """
    if host not in HOSTS:
        raise ServeError(f"--host must be one of {list(HOSTS)} (LitServe's); got {host!r}")
    integers = {
        "--port": (port, MIN_PORT, MAX_PORT),
        "--max-batch-size": (max_batch_size, 1, 4096),
        "--workers": (workers, 1, 64),
        "--threads": (threads, 1, 1024),
        "max_body_bytes": (max_body_bytes, 64, 2**31),
        "max_samples": (max_samples, 1, 4096),
        "top_k": (top_k, 1, 100_000),
    }
    for name, (value, low, high) in integers.items():
        if value is None and name == "--threads":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ServeError(f"{name} must be an integer in [{low}, {high}]; got {value!r}")
    if not isinstance(batch_timeout_ms, (int, float)) or not 0 <= batch_timeout_ms <= 10_000:
        raise ServeError(f"--batch-timeout-ms must be in [0, 10000]; got {batch_timeout_ms!r}")


def check_port(host: str, port: int) -> None:
    """Refuse a port another process listens on (bound the way uvicorn binds it).

    Raises:
        ServeError: Naming the port and how to pick another.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            reason = "in use" if err.errno == errno.EADDRINUSE else (err.strerror or str(err))
            raise ServeError(
                f"port {port} on {host} is {reason}: stop the process listening there or pass "
                f"another --port, e.g. --port {port + 1}"
            ) from err


__all__ = [
    "HOSTS",
    "ServeError",
    "check_backend",
    "check_export",
    "check_port",
    "check_settings",
]
