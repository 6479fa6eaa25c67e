"""Dynamic batching that does not delay a lone request: LitServe's batched loop, other collation.

LitServe 0.2's ``BatchedLoop`` collects a batch with ``collate_requests``: it waits until
``batch_timeout`` has passed since it *started* looking, whether or not a request is in hand
(at concurrency 1, every request waits for it), polling the queue every millisecond; with
``batch_timeout=0`` it spins on ``get_nowait`` and keeps a core busy while idle.

:class:`GreedyBatchedLoop` is LitServe's ``BatchedLoop`` (its ``run_batched_loop``: decode,
``batch``, one ``predict``, ``unbatch``, encode, errors per request) with one method replaced,
``get_batch_requests``: block until a first request arrives, then take what is already queued
(at most ``max_batch_size``), waiting for more only while ``batch_timeout`` since that first
request has not passed. Under load, requests queue while the runtime runs, so batches form by
themselves; alone, a request goes straight to the runtime. Plugged in through LitServe's own
hook, ``LitAPI(loop=...)``.
"""

from __future__ import annotations

import time
from queue import Empty, Queue
from typing import Any

from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError
from litserve.loops.simple_loops import BatchedLoop
from litserve.utils import LitAPIStatus, LoopResponseType

_IDLE_WAIT_S = 1.0  # how long one blocking get waits before the loop looks again


class GreedyBatchedLoop(BatchedLoop):  # type: ignore[misc]
    """LitServe's batched loop, collecting what is queued instead of waiting out a timer."""

    def get_batch_requests(
        self, lit_api: Any, request_queue: Queue, transport: Any
    ) -> tuple[list, list]:
        """Up to ``lit_api.max_batch_size`` queued requests, the first waited for.

        Args:
            lit_api: The served LitAPI (its ``max_batch_size`` and ``batch_timeout``).
            request_queue: LitServe's request queue from the HTTP process.
            transport: LitServe's response transport (unused here; LitServe's signature).

        Returns:
            ``(payloads, timed_out)``: ``(response_queue_id, uid, payload)`` per request to
            serve, ``(response_queue_id, uid)`` per request that waited past LitServe's
            request timeout (answered 504 by the loop). Both empty after an idle second.

        Raises:
            _StopLoopError: LitServe's stop sentinel was queued (shutdown).
        """
        payloads: list = []
        timed_out: list = []
        deadline = None
        apply_timeout = lit_api.request_timeout not in (-1, False, None)
        while len(payloads) + len(timed_out) < lit_api.max_batch_size:
            try:
                if deadline is None:
                    item = request_queue.get(timeout=_IDLE_WAIT_S)
                    deadline = time.monotonic() + lit_api.batch_timeout
                else:
                    remaining = deadline - time.monotonic()
                    item = (
                        request_queue.get(timeout=remaining)
                        if remaining > 0
                        else request_queue.get_nowait()
                    )
            except Empty:
                break
            if item == _SENTINEL_VALUE:
                raise _StopLoopError()
            response_queue_id, uid, timestamp, x_enc = item
            self.put_response(
                transport=transport,
                response_queue_id=response_queue_id,
                uid=uid,
                response_data=(),
                status=LitAPIStatus.START,
                response_type=LoopResponseType.REGULAR,
            )
            if apply_timeout and time.monotonic() - timestamp > lit_api.request_timeout:
                timed_out.append((response_queue_id, uid))
            else:
                payloads.append((response_queue_id, uid, x_enc))
        return payloads, timed_out
