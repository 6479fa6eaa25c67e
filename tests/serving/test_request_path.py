"""The request path's parts without a running server: the queued payload, the batch collation
and the pipe queues LitServe is given."""

from __future__ import annotations

import asyncio
import json
import pickle
import queue
import threading
import time
from pathlib import Path

import litserve as ls
import numpy as np
import pytest
from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError

from lightning_accel.serving import serve
from lightning_accel.serving.api import Samples
from lightning_accel.serving.batching import GreedyBatchedLoop
from lightning_accel.serving.inputs import InputSpec, RequestError, decode_json
from lightning_accel.serving.queues import PipeTransport, RequestQueue


def test_samples_print_their_shape_not_their_values_and_pickle_whole() -> None:
    array = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    samples = Samples(array)
    # LitServe formats every payload into a debug message; numpy's repr took milliseconds.
    assert f"{samples}" == "Samples(shape=(2, 1, 28, 28), dtype=float32)"
    started = time.perf_counter()
    for _ in range(1000):
        f"{samples}"
    assert time.perf_counter() - started < 0.1  # numpy's repr: ~2-4 ms each, seconds in all
    copy = pickle.loads(pickle.dumps(samples))
    np.testing.assert_array_equal(copy.array, array)


class _API(ls.LitAPI):
    def predict(self, x):  # pragma: no cover - only the collation is exercised
        return x


def _collate(requests: queue.Queue, max_batch_size: int = 4, batch_timeout: float = 0.0):
    api = _API(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
    api.request_timeout = 30
    return GreedyBatchedLoop().get_batch_requests(api, requests, transport=None)


def _request(uid: str, at: float | None = None) -> tuple:
    return (0, uid, time.monotonic() if at is None else at, Samples(np.zeros((1, 2))))


def test_a_lone_request_is_not_held_back_for_a_batch() -> None:
    requests: queue.Queue = queue.Queue()
    requests.put(_request("a"))
    started = time.monotonic()
    payloads, timed_out = _collate(requests, batch_timeout=0.0)
    assert time.monotonic() - started < 0.05
    assert [uid for _, uid, _ in payloads] == ["a"] and timed_out == []


def test_queued_requests_form_batches_of_at_most_max_batch_size_in_order() -> None:
    requests: queue.Queue = queue.Queue()
    for uid in "abcdef":
        requests.put(_request(uid))
    first, _ = _collate(requests, max_batch_size=4)
    second, _ = _collate(requests, max_batch_size=4)
    assert [uid for _, uid, _ in first] == list("abcd")
    assert [uid for _, uid, _ in second] == list("ef")


def test_a_batch_timeout_waits_for_more_after_the_first_request() -> None:
    requests: queue.Queue = queue.Queue()
    requests.put(_request("a"))
    late = threading.Timer(0.05, requests.put, args=(_request("b"),))
    late.start()
    payloads, _ = _collate(requests, batch_timeout=0.5)
    late.join()
    assert [uid for _, uid, _ in payloads] == ["a", "b"]


def test_stale_requests_are_timed_out_and_the_sentinel_stops_the_loop() -> None:
    requests: queue.Queue = queue.Queue()
    requests.put(_request("old", at=time.monotonic() - 60))
    requests.put(_request("new"))
    payloads, timed_out = _collate(requests)
    assert [uid for _, uid, _ in payloads] == ["new"] and timed_out == [(0, "old")]
    requests.put(_SENTINEL_VALUE)
    with pytest.raises(_StopLoopError):
        _collate(requests)


def test_litserve_gets_pipes_not_manager_proxies(digits_export: Path) -> None:
    server = serve(digits_export, threads=1, max_batch_size=4)
    manager = server.litserver._init_manager(1)
    try:
        (requests,) = server.litserver.litapi_request_queues.values()
        assert isinstance(requests, RequestQueue)
        # One sample goes straight into the pipe; 64 (over PIPE_BUF) through the feeder thread.
        big = (0, "big", time.monotonic(), Samples(np.ones((64, 1, 8, 8), np.float32)))
        requests.put(_request("small"))
        requests.put(big)
        got = {requests.get(timeout=5)[1]: None for _ in range(2)}
        assert set(got) == {"small", "big"}

        transport = server.litserver._transport
        assert isinstance(transport, PipeTransport)
        answers = [("a", ({"x": 1}, "ok")), ("b", (None, "error"))]
        for answer in answers:
            transport.send(answer, consumer_id=0)

        async def receive() -> list:
            return [await transport.areceive(0) for _ in answers]

        assert asyncio.run(receive()) == answers
        with pytest.raises(TimeoutError):  # LitServe's contract for a short timeout
            asyncio.run(transport.areceive(0, timeout=0.05))
    finally:
        manager.shutdown()


def test_json_bodies_parse_alike_whichever_parser_is_installed() -> None:
    spec = InputSpec((2, 2), np.dtype("float32"), max_samples=4)
    body = json.dumps([[[0.1, -2.5e-3], [3, 4]], [[5, 6], [7, 8.25]]]).encode()
    np.testing.assert_array_equal(
        decode_json(body, spec), np.asarray(json.loads(body), dtype=np.float32)
    )
    # orjson refuses NaN literals: the standard library decides, as without orjson.
    with pytest.raises(RequestError, match="NaN or infinite") as nan:
        decode_json(b"[[NaN, 1], [2, 3]]", spec)
    assert nan.value.status == 422
    # An integer past float32's range: a float to orjson, a Python int to json; 422 either way.
    with pytest.raises(RequestError) as huge:
        decode_json(b"[[1" + b"0" * 40 + b", 1], [2, 3]]", spec)
    assert huge.value.status == 422
    with pytest.raises(RequestError, match="malformed JSON") as bad:
        decode_json(b"[[1, 2], [3", spec)
    assert bad.value.status == 400
