"""The connection's one sender: output goes out from the task that writes it,
unless it must wait, and then a writer task sends it in order.

Sending is serialized without a task switch in the common case. A request task
(or the reader, answering a management record) hands an output event to
:meth:`Writer.send`; the writer turns it into records with the sans-IO core and,
if nothing is queued, writes them to the socket at once with one non-blocking
send. Encoding and sending happen with no checkpoint in between, so the core's
state always matches what went on the wire, records are never interleaved, and
only one send runs at a time. Only when the kernel would block, or output is
already queued, are the records queued, and a writer task (started then, ended
when the queue is empty) sends them in order, gathering what is queued into one
write. A transport that cannot say whether a send would block (any stream but a
socket) always goes through the writer task.

The queue is bounded: while it holds :data:`QUEUE_LIMIT` bytes or more, senders
wait for room. When the writer fails or the connection stops,
:meth:`Writer.close` makes every later send raise
:class:`trio.BrokenResourceError` at once.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Final, final

import trio

from ._events import EndRequest
from ._exceptions import LocalProtocolError
from ._streams import Outbox
from ._transport import WriteTimeout

if TYPE_CHECKING:
    from ._connection import FastCGIConnection
    from ._events import OutputEvent
    from ._transport import Transport

LOGGER: Final = logging.getLogger("trio_fastcgi")

#: Queued bytes at which senders wait for the writer task to make room.
QUEUE_LIMIT: Final = 256 * 1024
#: The writer task gathers at most this many queued bytes into one write.
COALESCE_LIMIT: Final = 256 * 1024
#: Below this many bytes pieces are joined and sent with one send(2); above,
#: they go to one scatter-gather write instead of being copied.
GATHER_THRESHOLD: Final = 64 * 1024


@final
class Writer(Outbox):
    """Sends one connection's output, in the order it was given.

    Args:
      conn: the sans-IO core, which encodes every event.
      transport: where the records go.
      name: how log lines name the connection.
      should_close: asked after each END_REQUEST and when woken; True means
        half-close once everything queued is sent.
      half_close_nowait: half-closes at once if that needs no wait (True),
        else does nothing (False); tried first, from the writing task.
      half_close: awaited by the writer task to half-close otherwise.
      fail: called when a send fails (the peer is gone, or took nothing for
        write_timeout): it cancels the connection.
    """

    __slots__ = (
        "_closed",
        "_conn",
        "_fail",
        "_half_close",
        "_half_close_nowait",
        "_name",
        "_queue",
        "_queued",
        "_room",
        "_running",
        "_should_close",
        "_transport",
        "nursery",
    )

    def __init__(
        self,
        conn: FastCGIConnection,
        transport: Transport,
        *,
        name: str,
        should_close: Callable[[], bool],
        half_close: Callable[[], Coroutine[Any, Any, None]],
        half_close_nowait: Callable[[], bool],
        fail: Callable[[], None],
    ) -> None:
        self._conn = conn
        self._transport = transport
        self._name = name
        self._should_close = should_close
        self._half_close = half_close
        self._half_close_nowait = half_close_nowait
        self._fail = fail
        self._queue: deque[bytes | memoryview] = deque()
        self._queued = 0
        self._running = False
        self._closed = False
        self._room = trio.lowlevel.ParkingLot()
        #: Where the writer task starts; set while the connection's tasks run.
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
        """Refuse all output from now on; senders waiting for room are woken
        with BrokenResourceError. Whatever is queued is dropped."""
        self._closed = True
        self._queue.clear()
        self._queued = 0
        self._room.unpark_all()

    async def send(self, event: OutputEvent) -> None:
        """Send *event*'s records, or queue them if they must wait.

        A cancellation point; a schedule point only while the queue is full.

        Raises:
          trio.BrokenResourceError: the connection is gone.
        """
        await self._wait_for_room()
        await self._write(self._encode(event), event)

    async def send_many(self, events: Sequence[OutputEvent]) -> None:
        """Send several events' records in one write."""
        await self._wait_for_room()
        parts: list[bytes | memoryview] = []
        for event in events:
            parts += self._encode(event)
        await self._write(parts, events[-1])

    def wake(self) -> None:
        """Check now whether to half-close (the connection's phase changed).
        A hibernating connection checks when it runs again."""
        if (
            self.nursery is not None
            and not self._running
            and not self._closed
            and self._should_close()
        ):
            self._close_output()

    async def _wait_for_room(self) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            if self._closed:
                raise trio.BrokenResourceError("the connection to the web server is gone")
            if self._queued < QUEUE_LIMIT:
                return
            await self._room.park()

    def _encode(self, event: OutputEvent) -> list[bytes | memoryview]:
        try:
            return self._conn.send_parts(event)
        except LocalProtocolError as exc:
            # Output from a task outside the request, racing its end.
            LOGGER.debug("%s: dropped output: %s", self._name, exc)
            return []

    async def _write(self, parts: list[bytes | memoryview], last: OutputEvent) -> None:
        """Send *parts* now, as far as the socket takes them; queue the rest.
        A checkpoint only when the send fails."""
        if not parts:
            return
        if self._running:
            self._enqueue(parts)
            return
        size = 0
        for piece in parts:
            size += len(piece)
        if size < GATHER_THRESHOLD and len(parts) > 1:
            parts = [b"".join(parts)]
        try:
            self._transport.send_nowait(parts)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._failed(exc)
            # The connection is cancelled now: the sender gets Cancelled like
            # its other tasks, or, shielded, BrokenResourceError.
            await trio.lowlevel.checkpoint()
            raise trio.BrokenResourceError("the connection to the web server is gone") from exc
        if parts:
            self._enqueue(parts)
            self._start()
        elif type(last) is EndRequest and self._should_close():
            self._close_output()

    def _close_output(self) -> None:
        """Everything is sent: half-close, at once if the transport can."""
        if self._half_close_nowait():
            self._closed = True  # nothing may follow the half-close
        else:
            self._start()

    def _enqueue(self, parts: list[bytes | memoryview]) -> None:
        queue = self._queue
        for piece in parts:
            queue.append(piece)
            self._queued += len(piece)

    def _start(self) -> None:
        assert self.nursery is not None
        self._running = True
        self.nursery.start_soon(self._run, name="trio_fastcgi.writer")

    def _failed(self, exc: BaseException) -> None:
        if isinstance(exc, WriteTimeout):
            LOGGER.warning(
                "%s: closing connection: the web server took none of the output "
                "for write_timeout (%s s)",
                self._name,
                self._transport.write_timeout,
            )
        else:
            LOGGER.debug("%s: send failed (%r); peer is gone", self._name, exc)
        # Cancel first, so that senders waiting for room get Cancelled, as
        # the connection's other tasks do.
        self._fail()
        self.close()

    async def _run(self) -> None:
        """Send what is queued, in order; half-close if the connection should
        close once it is sent; end when there is nothing left."""
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
                if self._queued < QUEUE_LIMIT:
                    self._room.unpark_all()
            if not self._closed and self._should_close():
                self._closed = True  # nothing may follow the half-close
                await self._half_close()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._failed(exc)
        finally:
            self._running = False
