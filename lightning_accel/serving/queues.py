"""LitServe with pipes between its HTTP process and its runtime workers, read by the event loop.

LitServe 0.2 passes requests to the runtime workers, and answers back, through
``multiprocessing.Manager`` queues: every ``put`` and ``get`` is a round trip to the manager
process, and the HTTP process's ``put`` blocks its event loop meanwhile. Measured here at
concurrency 1 (ResNet-18, 2 cores): the request's ``put`` 0.48 ms p50 (3.3 ms p90), the
worker's answer ``put`` 0.43 ms. :class:`PipeQueueLitServer` overrides one LitServe method,
``_init_manager``, to replace them:

- requests: :class:`RequestQueue`, a ``multiprocessing.Queue`` (a pipe) whose ``put`` writes a
  request of up to ``PIPE_BUF`` bytes (one 28x28 sample: 3.3 KB) straight into the pipe when
  the pipe has room for it, and otherwise hands it to the queue's feeder thread as
  ``multiprocessing.Queue`` always does, so a full pipe never blocks the event loop. The
  feeder thread costs a thread wake-up per request at concurrency 1, and under load it waits
  for the GIL that the busy event loop holds (up to the 5 ms switch interval);
- answers: :class:`PipeTransport`, a pipe per HTTP process that the worker writes to directly
  and the HTTP process's event loop reads when it is readable (``loop.add_reader``).
  LitServe's own transport waits for each answer in a thread of the event loop's default
  executor (``asyncio.to_thread(queue.get)``), a thread hand-off and a wake-up of the loop per
  answer, behind ``multiprocessing.Queue``'s feeder thread in the worker.

Everything else is LitServe's own: its loops, its worker start-up, shutdown and monitoring. The
manager still runs, for the readiness table and the shutdown event LitServe keeps in it.

``fast_queue=True`` (LitServe's ZeroMQ transport) would replace only the answer queue, and in
LitServe 0.2.19 it does not even do that: ``LitServer.__init__`` builds
``TransportConfig(transport_config=...)``, a misspelt field pydantic drops, so the transport
stays ``"mp"`` whatever ``fast_queue`` says.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import multiprocessing.queues
import select
from collections import deque
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import Any

import litserve as ls
from litserve.transport.base import MessageTransport
from litserve.transport.process_transport import MPQueueTransport

_PIPE_BUF = getattr(select, "PIPE_BUF", 512)  # a pipe write this size is atomic (POSIX)
_WAIT_S = 1.0  # longest one receive waits before it returns None (LitServe's loop looks again)


class PipeTransport(MessageTransport):  # type: ignore[misc]
    """Answers from the runtime workers to the HTTP processes: one pipe per HTTP process.

    A worker pickles an answer and writes it to the pipe of the HTTP process that holds the
    request (under that pipe's lock: several workers may write to one pipe; a message up to
    16 KiB is one ``write``). The HTTP process's event loop waits for the pipe to be readable
    (``loop.add_reader``, no thread), then reads every answer already there.

    Args:
        pipes: Per HTTP process (LitServe's ``consumer_id``): ``(reader, writer, write_lock)``,
            from the ``spawn`` context so that the spawned workers inherit them.
    """

    def __init__(self, pipes: list[tuple[Connection, Connection, Any]]) -> None:
        self._pipes = pipes
        self._closed = False
        self._pending: dict[int, deque] = {}

    @classmethod
    def create(cls, consumers: int) -> PipeTransport:
        """A transport with one pipe per consumer (HTTP process)."""
        ctx = mp.get_context("spawn")
        pipes = []
        for _ in range(consumers):
            reader, writer = ctx.Pipe(duplex=False)
            pipes.append((reader, writer, ctx.Lock()))
        return cls(pipes)

    def send(self, item: Any, consumer_id: int) -> None:
        """Write ``item`` to consumer ``consumer_id``'s pipe (blocks only while it is full)."""
        _, writer, lock = self._pipes[consumer_id]
        data = ForkingPickler.dumps(item)
        with lock:
            writer.send_bytes(data)

    async def areceive(
        self, consumer_id: int, timeout: float | None = None, block: bool = True
    ) -> Any:
        """The next answer for ``consumer_id``, or ``None`` after a second without one.

        LitServe's contract (as :class:`MPQueueTransport`): a ``timeout`` of at most one second
        that passes raises ``TimeoutError``; otherwise ``None`` comes back and the caller asks
        again.
        """
        del block
        if self._closed:
            raise asyncio.CancelledError("Transport closed")
        pending = self._pending.setdefault(consumer_id, deque())
        if pending:
            return pending.popleft()
        reader = self._pipes[consumer_id][0]
        if not reader.poll():
            wait = _WAIT_S if timeout is None else min(timeout, _WAIT_S)
            if not await _readable(reader, wait):
                if timeout is not None and timeout <= _WAIT_S:
                    raise TimeoutError
                return None
        while reader.poll():  # everything already written: one wake-up for a whole batch
            pending.append(ForkingPickler.loads(reader.recv_bytes()))
        return pending.popleft()

    def close(self, send_sentinel: bool = True) -> None:
        """Stop receiving; with ``send_sentinel``, wake each reader with a ``None``."""
        self._closed = True
        if send_sentinel:
            for _, writer, lock in self._pipes:
                if lock.acquire(timeout=0.1):
                    try:
                        if not writer.closed:
                            writer.send_bytes(ForkingPickler.dumps(None))
                    except OSError:
                        pass
                    finally:
                        lock.release()

    def __reduce__(self) -> tuple:
        return (PipeTransport, (self._pipes,))


async def _readable(reader: Connection, seconds: float) -> bool:
    """Wait until ``reader`` has data (``True``) or ``seconds`` pass (``False``)."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    fd = reader.fileno()

    def wake() -> None:
        if not ready.done():
            ready.set_result(True)

    def give_up() -> None:
        if not ready.done():
            ready.set_result(False)

    loop.add_reader(fd, wake)
    timer = loop.call_later(seconds, give_up)
    try:
        return bool(await ready)
    finally:
        timer.cancel()
        loop.remove_reader(fd)


class RequestQueue(multiprocessing.queues.Queue):  # type: ignore[type-arg]
    """A ``multiprocessing.Queue`` whose small items skip the feeder thread when they can.

    ``put`` pickles the item; if it fits one atomic pipe write (``PIPE_BUF``, 4 KiB on Linux),
    nobody else is writing, and the pipe has room (``select``), it is written at once from the
    calling thread, which never blocks. Anything else goes through the feeder thread as in
    ``multiprocessing.Queue``. Items may then arrive out of ``put`` order (a small one written
    directly while larger ones wait in the feeder); LitServe routes each answer by its id.

    Args:
        ctx: The multiprocessing context (as ``multiprocessing.Queue``).
    """

    def __init__(self, *, ctx: Any) -> None:
        super().__init__(ctx=ctx)

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        """Queue ``obj``: straight into the pipe when small and free, else as ``Queue.put``.

        Args:
            obj: Any picklable object.
            block: As ``multiprocessing.Queue.put``.
            timeout: Seconds to wait when blocking (``None``: no limit).
        """
        queue: Any = self  # multiprocessing.Queue's own (private) pipe, locks and semaphore
        if queue._closed or queue._wlock is None:  # closed: Queue raises; Windows: no lock
            super().put(obj, block, timeout)
            return
        data = bytes(ForkingPickler.dumps(obj))
        if len(data) + 4 <= _PIPE_BUF and queue._wlock.acquire(block=False):
            try:
                # the semaphore counts items as Queue.put does (Queue.get releases it)
                if _writable(queue._writer) and queue._sem.acquire(block=False):
                    queue._writer.send_bytes(data)  # header + data in one write: atomic
                    return
            finally:
                queue._wlock.release()
        super().put(obj, block, timeout)


def _writable(writer: Connection) -> bool:
    """Whether a write of up to ``PIPE_BUF`` bytes to the pipe would not block."""
    return bool(select.select([], [writer.fileno()], [], 0)[1])


class PipeQueueLitServer(ls.LitServer):  # type: ignore[misc]
    """A ``litserve.LitServer`` whose request queues and answer transport are pipes.

    The pipes come from the ``spawn`` context (LitServe spawns its runtime workers and forks
    its HTTP servers; both inherit them). Written against LitServe 0.2.19 (the ``Dockerfile`` pins
    ``>=0.2.19,<0.3``); where LitServe did not build its manager-queue transport, its own
    queues are kept.
    """

    def _init_manager(self, num_api_servers: int) -> Any:
        manager = super()._init_manager(num_api_servers)
        if not isinstance(getattr(self, "_transport", None), MPQueueTransport):
            return manager  # a ZeroMQ transport, or a LitServe whose internals moved: as it is
        ctx = mp.get_context("spawn")
        for path in self.litapi_request_queues:
            self.litapi_request_queues[path] = RequestQueue(ctx=ctx)
        self._transport = PipeTransport.create(num_api_servers)
        return manager
