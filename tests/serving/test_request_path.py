"""The request path's parts without a running server: the queued payload, the batch collation
and the pipe queues LitServe is given."""

from __future__ import annotations

import multiprocessing.queues
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


def test_litserve_gets_pipe_queues_not_manager_proxies(digits_export: Path) -> None:
    server = serve(digits_export, threads=1, max_batch_size=4)
    manager = server.litserver._init_manager(1)
    try:
        request_queues = list(server.litserver.litapi_request_queues.values())
        response_queues = server.litserver._transport._queues
        assert request_queues and response_queues
        for q in request_queues + response_queues:
            assert isinstance(q, multiprocessing.queues.Queue)
        request_queues[0].put(_request("a"))
        assert request_queues[0].get(timeout=5)[1] == "a"
    finally:
        manager.shutdown()
