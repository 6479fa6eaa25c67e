"""The LitServe API: requests checked in the HTTP process, one runtime call per batch.

``decode_request``'s argument is a FastAPI dependency (:func:`request_samples`), so LitServe's
endpoint reads and checks the body in the HTTP process: a bad request is answered 4xx there and
never joins a batch. The runtime worker receives arrays ``[n, *sample_shape]``, concatenates a
batch of them into ONE runtime call, and hands each request its own rows back, in order.

This module does not use ``from __future__ import annotations``: LitServe and FastAPI read the
``decode_request`` annotation as an object.
"""

import json
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import litserve as ls
import numpy as np
from fastapi import Depends, HTTPException, Request, Response

from lightning_accel.backends import get_backend
from lightning_accel.export.manifest import Manifest
from lightning_accel.serving.batching import GreedyBatchedLoop
from lightning_accel.serving.body import read_body
from lightning_accel.serving.inputs import InputSpec, RequestError, decode_body
from lightning_accel.serving.metrics import metrics

STATE_KEY = "lightning_accel_limits"


class Samples:
    """Checked samples on their way from the HTTP process to the runtime worker.

    A plain wrapper around the array ``[n, *sample_shape]`` whose ``repr`` does not print the
    values: LitServe's request handler formats every payload into a debug message
    (``logger.debug(f"Handling request: {request}")``, built even when debug logging is off),
    and numpy's repr of one 28x28 sample took 2-4.5 ms of each request, more than the hop to
    the worker and back.

    Attributes:
        array: The samples, in the model's dtype.
    """

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __repr__(self) -> str:
        return f"Samples(shape={self.array.shape}, dtype={self.array.dtype})"

    __str__ = __repr__

    def __getstate__(self) -> np.ndarray:
        return self.array

    def __setstate__(self, array: np.ndarray) -> None:
        self.array = array


class RequestLimits:
    """What the HTTP process checks a request against (kept on ``app.state``).

    Args:
        spec: The input a request may hold.
        max_body_bytes: Largest body read.
    """

    def __init__(self, spec: InputSpec, max_body_bytes: int) -> None:
        self.spec = spec
        self.max_body_bytes = max_body_bytes


async def request_samples(request: Request) -> Samples:
    """The checked samples of a ``POST /predict`` body (a FastAPI dependency).

    Raises:
        HTTPException: The 4xx of :func:`~lightning_accel.serving.inputs.decode_body` or the
            body limit, with its one message as ``detail``.
    """
    limits: RequestLimits = getattr(request.app.state, STATE_KEY)
    try:
        body = await read_body(request, limits.max_body_bytes)
        return Samples(decode_body(body, request.headers.get("content-type", ""), limits.spec))
    except RequestError as err:
        raise HTTPException(err.status, err.message) from None


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable: the row maximum is subtracted first)."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def top_k(probabilities: np.ndarray, k: int, names: tuple[str, ...] | None) -> list[list[dict]]:
    """The ``k`` most probable classes of each row, most probable first.

    Args:
        probabilities: ``[n, classes]``, each row summing to 1.
        k: Classes kept per row (at most all of them).
        names: Class names by index, or ``None``.

    Returns:
        Per row: ``[{"class": index, "label": name or None, "probability": p}, ...]``.
    """
    k = min(k, probabilities.shape[1])
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [
        [
            {
                "class": int(c),
                "label": names[c] if names is not None and c < len(names) else None,
                "probability": float(row[c]),
            }
            for c in indices
        ]
        for row, indices in zip(probabilities, order, strict=True)
    ]


class ClassifierAPI(ls.LitAPI):
    """Serve an exported classifier on a registered backend.

    Args:
        manifest: The export's manifest.
        backend: A registered backend name (``lightning_accel.backends``).
        threads: Runtime intra-op threads per worker; ``None``: the backend's default.
        k: Classes returned per sample.
        max_batch_size: Most requests one runtime call serves (1: no batching).
        batch_timeout: Seconds a batch waits to fill after its first request (0: it takes what
            is queued; see :mod:`~lightning_accel.serving.batching`).
    """

    def __init__(
        self,
        manifest: Manifest,
        backend: str,
        threads: int | None,
        k: int,
        max_batch_size: int,
        batch_timeout: float,
    ) -> None:
        super().__init__(
            max_batch_size=max_batch_size,
            batch_timeout=batch_timeout,
            loop=GreedyBatchedLoop() if max_batch_size > 1 else "auto",
        )
        self.manifest = manifest
        self.backend = backend
        self.threads = threads
        self.k = k
        self._model: Any = None

    def setup(self, device: str) -> None:
        """Compile the model for the backend (in the worker process) and run it once."""
        del device  # CPU runtimes; the backend decides
        with tempfile.TemporaryDirectory(prefix="lightning-accel-serve-") as workdir:
            # The compiled session lives in memory; its on-disk artifacts are not needed again.
            self._model = get_backend(self.backend).compile(
                self.manifest.model_path, Path(workdir), threads=self.threads
            )
        spec = self.manifest.inputs[0]
        sample = tuple(int(d) for d in spec.shape[1:])
        self._model.run(np.zeros((1, *sample), dtype=np.dtype(spec.dtype)))  # warm-up

    def decode_request(  # type: ignore[override]
        self, request: Annotated[Samples, Depends(request_samples)]
    ) -> np.ndarray:
        return request.array  # checked in the HTTP process (request_samples)

    def batch(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return inputs  # concatenated in predict, which needs the row counts

    def predict(self, x: np.ndarray | list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
        """Probabilities for each request's samples, from ONE runtime call per batch."""
        requests = x if isinstance(x, list) else [x]
        stacked = requests[0] if len(requests) == 1 else np.concatenate(requests)
        started = time.perf_counter()
        logits = self._model.run(stacked)
        m = metrics()
        m.runtime.observe(time.perf_counter() - started)
        m.batch_size.observe(len(stacked))
        m.batch_requests.observe(len(requests))
        probabilities = softmax(np.asarray(logits).reshape(len(stacked), -1))
        if not isinstance(x, list):
            return probabilities
        ends = np.cumsum([len(r) for r in requests])[:-1]
        return np.split(probabilities, ends)

    def unbatch(self, output: list[np.ndarray]) -> list[np.ndarray]:
        return output

    def encode_response(self, output: np.ndarray) -> Response:
        """The answer's JSON body, encoded here in the runtime worker.

        A ``Response`` passes through FastAPI as it is; a ``dict`` would be validated and
        serialized in the HTTP process (a response model inferred from the annotation), whose
        one event loop is what every request shares. Probabilities are finite (softmax of
        finite logits); a model that gives NaN fails here, answered 500.
        """
        answer = {"predictions": top_k(output, self.k, self.manifest.class_names)}
        body = json.dumps(answer, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        return Response(body.encode(), media_type="application/json")
