"""``serve``: an export folder behind LitServe, and ``ModelServer.run``, which listens.

Endpoints: ``POST /predict`` (JSON arrays or a PNG/JPEG file; top-k classes), ``GET /health``
(200 once every runtime worker has loaded the model, else 503: readiness), ``GET /`` (liveness),
``GET /info`` (the model and server settings), ``GET /metrics`` (Prometheus).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning_accel.serving.checks import (
    ServeError,
    check_backend,
    check_export,
    check_port,
    check_settings,
)
from lightning_accel.serving.inputs import InputSpec, describe
from lightning_accel.serving.metrics import MetricsMiddleware, exposition, use_metrics_dir

DEFAULT_MAX_BATCH_SIZE = 16
DEFAULT_BATCH_TIMEOUT_MS = 0.0
DEFAULT_MAX_BODY_BYTES = 4 * 2**20
DEFAULT_MAX_SAMPLES = 256
DEFAULT_TOP_K = 5


class ModelServer:
    """A LitServe server for one export folder, built but not yet listening.

    Attributes:
        litserver: The ``litserve.LitServer`` (its FastAPI app is ``litserver.app``).
        manifest: The export's manifest.
        host: Address :meth:`run` binds.
        port: Port :meth:`run` binds.
        settings: What the server was built with (also served at ``/info``).
    """

    def __init__(
        self,
        litserver: Any,
        manifest: Any,
        host: str,
        port: int,
        metrics_dir: str,
        settings: dict[str, Any],
    ) -> None:
        self.litserver = litserver
        self.manifest = manifest
        self.host = host
        self.port = port
        self.settings = settings
        self._metrics_dir = metrics_dir

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def run(self, log_level: str = "warning") -> None:
        """Listen until SIGTERM or Ctrl-C, then shut down gracefully (blocks).

        SIGTERM is handled like Ctrl-C: LitServe stops its HTTP servers (in-flight requests
        finish, up to 30 s) and its runtime workers, then this returns.

        Raises:
            ServeError: If the port is in use.
        """
        check_port(self.host, self.port)
        previous = signal.signal(signal.SIGTERM, _stop_on_sigterm(os.getpid()))
        try:
            self.litserver.run(
                host=self.host,
                port=self.port,
                num_api_servers=1,
                generate_client_file=False,
                log_level=log_level,
            )
        except KeyboardInterrupt:  # a signal between LitServe's own handlers
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
            shutil.rmtree(self._metrics_dir, ignore_errors=True)


def serve(
    export_dir: str | os.PathLike,
    backend: str = "onnxruntime",
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    batch_timeout_ms: float = DEFAULT_BATCH_TIMEOUT_MS,
    workers: int = 1,
    threads: int | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_samples: int = DEFAULT_MAX_SAMPLES,
    top_k: int = DEFAULT_TOP_K,
    allow_unverified: bool = False,
) -> ModelServer:
    """Build a server for an export folder; :meth:`ModelServer.run` starts it.

    Args:
        export_dir: The folder ``ExportOnFitEnd`` or ``lightning-accel export`` wrote (with
            ``manifest.json``), e.g. mounted at ``/models`` in the container.
        backend: A registered backend (``lightning_accel.backends``), e.g. ``"onnxruntime"``.
        host: ``"127.0.0.1"`` (default), ``"0.0.0.0"`` or ``"::"``.
        port: TCP port in [1024, 65535].
        max_batch_size: Most requests one runtime call serves; 1 turns batching off.
        batch_timeout_ms: Milliseconds a batch waits to fill after its first request
            (LitServe's ``batch_timeout``); 0 (default): a batch is what queued while the
            runtime was busy, and a lone request is never delayed.
        workers: Runtime worker processes (LitServe's ``workers_per_device`` on the CPU).
        threads: Runtime intra-op threads per worker; default: the cores shared among workers.
        max_body_bytes: Largest request body; larger ones get 413 before they are read whole.
        max_samples: Most samples one request may hold (413 beyond).
        top_k: Classes returned per sample, most probable first.
        allow_unverified: Serve a backend the export did not verify (never one that failed).

    Returns:
        The server, not yet listening.

    Raises:
        ServeError: An unknown or unavailable backend, a missing folder or manifest, a failed
            (or absent) verification, or a setting out of range; the message names the fix.

    Example:
        >>> server = serve("export", port=8000)  # doctest: +SKIP
        >>> server.run()  # doctest: +SKIP
    """
    check_settings(
        host,
        port,
        max_batch_size,
        batch_timeout_ms,
        workers,
        threads,
        max_body_bytes,
        max_samples,
        top_k,
    )
    check_backend(backend)
    manifest = check_export(export_dir, backend, allow_unverified)
    try:
        spec = InputSpec.from_manifest(manifest, max_samples)
    except ValueError as err:
        raise ServeError(f"{manifest.dirpath}: {err}") from err
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // workers)

    metrics_dir = tempfile.mkdtemp(prefix="lightning-accel-metrics-")
    use_metrics_dir(metrics_dir)  # before any metric exists here or in a worker
    from lightning_accel.serving.api import STATE_KEY, ClassifierAPI, RequestLimits
    from lightning_accel.serving.queues import PipeQueueLitServer

    api = ClassifierAPI(
        manifest,
        backend,
        threads,
        top_k,
        max_batch_size=max_batch_size,
        batch_timeout=batch_timeout_ms / 1000,
    )
    settings = {
        "export_dir": str(Path(export_dir)),
        "backend": backend,
        "max_batch_size": max_batch_size,
        "batch_timeout_ms": batch_timeout_ms,
        "workers": workers,
        "threads": threads,
        "max_body_bytes": max_body_bytes,
        "top_k": top_k,
        "input": describe(spec),
        "class_names": list(manifest.class_names or []) or None,
    }
    litserver = PipeQueueLitServer(
        api,
        accelerator="cpu",
        workers_per_device=workers,
        middlewares=[(MetricsMiddleware, {"path": "/predict"})],
        model_metadata=settings,
    )
    setattr(litserver.app.state, STATE_KEY, RequestLimits(spec, max_body_bytes))
    litserver.app.add_api_route("/metrics", _metrics_endpoint, methods=["GET"])
    return ModelServer(litserver, manifest, host, port, metrics_dir, settings)


def _stop_on_sigterm(main_pid: int) -> Callable[[int, Any], None]:
    """A SIGTERM handler: Ctrl-C's graceful path in this process, the default in its forks.

    LitServe forks its HTTP server from this process; uvicorn there stops gracefully on
    SIGTERM, then re-raises it to the handler it inherited, which must then just terminate.
    """

    def handler(signum: int, frame: Any) -> None:
        del frame
        if os.getpid() != main_pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt

    return handler


async def _metrics_endpoint() -> Any:
    from starlette.responses import Response

    body, content_type = exposition()
    return Response(body, media_type=content_type)
