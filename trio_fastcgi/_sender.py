"""One ordered sender of bytes over a transport: a direct send when nothing is
queued, otherwise a bounded queue that a writer task, started on demand, sends
in order, gathering what is queued into one write.

Both ends of the protocol send through a :class:`Sender`: the server's
:class:`~trio_fastcgi._writer.Writer` (which adds the encoding of output events
and the half-close) and the client's :class:`~trio_fastcgi.client.Client`.

A piece handed over is sent at once, from the task that hands it over, with
one non-blocking send, if no writer task runs (nothing is queued). What the
kernel does not take is queued, and so is everything handed over while
anything is queued; a writer task, started then and ended when the queue is
empty, sends the queue in order. Handing over and sending happen with no
checkpoint in between, so pieces are never interleaved or reordered, and only
one send runs at a time. A transport that cannot say whether a send would
block (any stream but a socket) sends nothing directly: everything goes
through the writer task.

The queue is bounded: while it holds :data:`QUEUE_LIMIT` bytes or more,
senders wait for room. A send that fails calls the ``fail`` callback with the
error and closes the sender; once closed, every send raises
:class:`trio.BrokenResourceError` at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import trio

if TYPE_CHECKING:
    from ._transport import Transport

#: Queued bytes at which senders wait for the writer task to make room.
QUEUE_LIMIT: Final = 256 * 1024
#: The writer task gathers at most this many queued bytes into one write.
COALESCE_LIMIT: Final = 256 * 1024
#: Below this many bytes pieces are joined and sent with one send(2); above,
#: they go to one scatter-gather write instead of being copied.
GATHER_THRESHOLD: Final = 64 * 1024


def _ignore_failure(_exc: BaseException) -> None:
    """What a closed sender calls when a send fails: nothing."""


class Sender:
    """Sends bytes over *transport*, one piece after another, in order.

    Args:
      transport: where the bytes go.
      fail: called with the error when a send fails; the sender is closed
        right after it returns. A closed sender drops it.
      gone: the message of the BrokenResourceError that sends raise once the
        sender is closed.

    Set :attr:`nursery` before sending: the writer task starts there.
    """

    __slots__ = (
        "_closed",
        "_fail",
        "_gone",
        "_queue",
        "_queued",
        "_room",
        "_running",
        "_transport",
        "nursery",
    )

    def __init__(
        self,
        transport: Transport,
        *,
        fail: Callable[[BaseException], None],
        gone: str = "the connection is gone",
    ) -> None:
        self._transport = transport
        self._fail = fail
        self._gone = gone
        # Made when first needed and dropped when drained: most connections
        # never queue, and an idle one should hold little (a deque is 760 bytes).
        self._queue: deque[bytes | memoryview] | None = None
        self._queued = 0
        self._running = False
        self._closed = False
        self._room: trio.lowlevel.ParkingLot | None = None
        #: Where the writer task starts.
        self.nursery: trio.Nursery | None = None

    @property
    def idle(self) -> bool:
        """True when everything was sent and no writer task runs."""
        return not self._running

    @property
    def closed(self) -> bool:
        """True once sends fail with BrokenResourceError."""
        return self._closed

    def close(self) -> None:
        """Refuse all bytes from now on; senders waiting for room are woken
        with BrokenResourceError. Whatever is queued is dropped, and a send
        still running that fails is not reported."""
        self._closed = True
        # The callback is usually a bound method of the sender's owner, which
        # holds the sender: dropped, the owner and its sender are freed by
        # reference counting once closed, not left to the cycle collector.
        self._fail = _ignore_failure
        if self._queue is not None:
            self._queue.clear()
        self._queued = 0
        if self._room is not None:
            self._room.unpark_all()

    async def send_all(self, data: bytes) -> None:
        """Send *data* after everything handed over before, or queue it.

        A cancellation point (cancelled, nothing was sent); a schedule point
        only while the queue is full, or when the send fails.

        Raises:
          trio.BrokenResourceError: the sender is closed, or the send failed.
        """
        await self._wait_for_room()
        await self._write([data])

    async def send_made(self, make: Callable[[], bytes | None]) -> None:
        """As :meth:`send_all`, but the bytes are made by *make()* only once
        there is room, with no checkpoint between making and handing them
        over: for bytes that are right only while some state holds (a
        record for a request that may end meanwhile). None sends nothing."""
        await self._wait_for_room()
        data = make()
        if data is not None:
            await self._write([data])

    def send_soon(self, data: bytes) -> None:
        """Send *data* after everything handed over before, without waiting:
        for cleanup code, which must not block. It may go over the queue's
        bound. Dropped if the sender is closed (or the send fails, which is
        reported as for :meth:`send_all`). Not a checkpoint."""
        if self._closed or not data:
            return
        parts: list[bytes | memoryview] = [data]
        if not self._running:
            try:
                self._transport.send_nowait(parts)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self._failed(exc)
                return
            if not parts:
                return
            self._start()
        self._enqueue(parts)

    async def _wait_for_room(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            if self._closed:
                raise trio.BrokenResourceError(self._gone)
            if self._queued < QUEUE_LIMIT:
                return
            if self._room is None:
                self._room = trio.lowlevel.ParkingLot()
            await self._room.park()

    async def _write(self, parts: list[bytes | memoryview]) -> bool:
        """Send *parts* now, as far as the transport takes them; queue the
        rest. True if all of it was sent now. A checkpoint only when the send
        fails."""
        if not parts:
            return False
        if self._running:
            self._enqueue(parts)
            return False
        size = 0
        for piece in parts:
            size += len(piece)
        if size < GATHER_THRESHOLD and len(parts) > 1:
            parts = [b"".join(parts)]
        try:
            self._transport.send_nowait(parts)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._failed(exc)
            # The fail callback may have cancelled the sender (the server's
            # connection does): then it gets Cancelled like its other tasks,
            # or, shielded, BrokenResourceError.
            await trio.lowlevel.checkpoint()
            raise trio.BrokenResourceError(self._gone) from exc
        if parts:
            self._enqueue(parts)
            self._start()
            return False
        return True

    def _enqueue(self, parts: list[bytes | memoryview]) -> None:
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        for piece in parts:
            queue.append(piece)
            self._queued += len(piece)

    def _start(self) -> None:
        assert self.nursery is not None
        self._running = True
        self.nursery.start_soon(self._run, name="trio_fastcgi.writer")

    def _failed(self, exc: BaseException) -> None:
        # Report first: a fail callback that cancels makes senders waiting
        # for room get Cancelled, as the connection's other tasks do.
        self._fail(exc)
        self.close()

    async def _drained(self) -> None:
        """Called by the writer task once the queue is empty (a subclass's
        hook); errors it raises count as a failed send."""

    async def _run(self) -> None:
        """Send what is queued, in order; end when there is nothing left."""
        queue = self._queue
        transport = self._transport
        try:
            while queue:
                parts: list[bytes | memoryview] = []
                size = 0
                while queue and size < COALESCE_LIMIT:
                    piece = queue.popleft()
                    parts.append(piece)
                    size += len(piece)
                if size < GATHER_THRESHOLD and len(parts) > 1:
                    parts = [b"".join(parts)]
                await transport.send_parts(parts)
                self._queued -= size  # counted until sent: it is still held
                if self._queued < QUEUE_LIMIT and self._room is not None:
                    self._room.unpark_all()
            self._queue = None  # drained
            await self._drained()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._failed(exc)
        finally:
            self._running = False
