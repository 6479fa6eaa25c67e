"""Prometheus metrics for the server, through ``prometheus_client`` (LitServe has none built in).

LitServe answers HTTP in one process and runs the model in others, so the metrics use
``prometheus_client``'s multiprocess mode: each process writes its samples under
``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` sums them. The variable must be set before
``prometheus_client`` is first imported in a process, which :func:`use_metrics_dir` does (the
worker processes inherit it); ``prometheus_client`` is therefore imported inside functions only.

Metrics:

- ``lightning_accel_requests_total{code}``: ``POST /predict`` requests answered, by status;
- ``lightning_accel_request_errors_total{code}``: those answered with a 4xx or 5xx;
- ``lightning_accel_request_latency_seconds``: arrival to last byte of the answer, per request;
- ``lightning_accel_batch_size``: samples per runtime call (the dynamic batch);
- ``lightning_accel_batch_requests``: requests per runtime call;
- ``lightning_accel_runtime_seconds``: time inside the runtime per call.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def use_metrics_dir(path: str) -> bool:
    """Point ``prometheus_client`` of this process and its children at ``path``.

    Returns:
        ``False`` if ``prometheus_client`` was already imported in single-process mode here (an
        embedding application's own metrics): the runtime worker's metrics then stay unseen.
    """
    import sys

    os.environ[MULTIPROC_ENV] = path
    values = sys.modules.get("prometheus_client.values")
    return values is None or values.ValueClass.__name__ != "MutexValue"


@dataclass
class _Metrics:
    requests: Any
    errors: Any
    latency: Any
    batch_size: Any
    batch_requests: Any
    runtime: Any


_METRICS: _Metrics | None = None


def metrics() -> _Metrics:
    """This process's metric objects, created on first use (after :func:`use_metrics_dir`)."""
    global _METRICS
    if _METRICS is None:
        from prometheus_client import Counter, Histogram

        _METRICS = _Metrics(
            requests=Counter(
                "lightning_accel_requests", "POST /predict requests answered", ["code"]
            ),
            errors=Counter(
                "lightning_accel_request_errors", "POST /predict answered 4xx/5xx", ["code"]
            ),
            latency=Histogram(
                "lightning_accel_request_latency_seconds",
                "POST /predict, arrival to the answer's last byte",
                buckets=LATENCY_BUCKETS,
            ),
            batch_size=Histogram(
                "lightning_accel_batch_size", "samples per runtime call", buckets=BATCH_BUCKETS
            ),
            batch_requests=Histogram(
                "lightning_accel_batch_requests", "requests per runtime call", buckets=BATCH_BUCKETS
            ),
            runtime=Histogram(
                "lightning_accel_runtime_seconds",
                "time inside the runtime per call",
                buckets=LATENCY_BUCKETS,
            ),
        )
    return _METRICS


def exposition() -> tuple[bytes, str]:
    """The metrics of all the server's processes in Prometheus' text format, and its type."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI middleware counting and timing ``POST`` requests to ``path``.

    Args:
        app: The wrapped application.
        path: The route measured, e.g. ``"/predict"``.
    """

    def __init__(self, app: ASGIApp, path: str = "/predict") -> None:
        self.app = app
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                record(status, time.perf_counter() - started)

        try:
            await self.app(scope, receive, send_and_record)
        except Exception:
            record(500, time.perf_counter() - started)
            raise


def record(status: int, seconds: float) -> None:
    """Count one answered request and its latency."""
    m = metrics()
    m.requests.labels(code=str(status)).inc()
    if status >= 400:
        m.errors.labels(code=str(status)).inc()
    m.latency.observe(seconds)
