"""The server connection's output: FastCGI output events become records, sent
by a :class:`~trio_fastcgi._sender.Sender`, and the connection half-closes
after its last ``FCGI_END_REQUEST``.

A request task (or the reader, answering a management record) hands an output
event to :meth:`Writer.send`; the writer turns it into records with the
sans-IO core and hands them to the sender it is built on, with no checkpoint in
between, so the core's state always matches what went on the wire. The sender
writes them at once if nothing is queued, or queues them for its writer task,
bounded by :data:`~trio_fastcgi._sender.QUEUE_LIMIT`; when a send fails or the
connection stops, :meth:`Writer.close` makes every later send raise
:class:`trio.BrokenResourceError` at once.

Once everything is sent and the connection should close, the writer
half-closes: at once from the writing task if the transport can, otherwise
from the writer task.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Final, final

from ._events import EndRequest
from ._exceptions import LocalProtocolError
from ._sender import Sender
from ._transport import WriteTimeout

if TYPE_CHECKING:
    from ._connection import FastCGIConnection
    from ._events import OutputEvent
    from ._transport import Transport

LOGGER: Final = logging.getLogger("trio_fastcgi")


# What a closed writer has instead of its connection's callbacks: a closed
# writer sends nothing, so it never half-closes nor fails again.
def _false() -> bool:
    return False


async def _nothing_to_close() -> None:
    pass


def _nothing_to_fail() -> None:
    pass


@final
class Writer(Sender):
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
        "_conn",
        "_fail_connection",
        "_half_close",
        "_half_close_nowait",
        "_name",
        "_should_close",
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
        super().__init__(
            transport, fail=self._report_failure, gone="the connection to the web server is gone"
        )
        self._conn = conn
        self._name = name
        self._should_close = should_close
        self._half_close = half_close
        self._half_close_nowait = half_close_nowait
        self._fail_connection = fail

    def close(self) -> None:
        """As :meth:`Sender.close`; the connection's callbacks are dropped
        too (they refer back to it: a closed connection and its writer are
        freed by reference counting, not left to the cycle collector)."""
        super().close()
        self._should_close = _false
        self._half_close_nowait = _false
        self._half_close = _nothing_to_close
        self._fail_connection = _nothing_to_fail

    async def send(self, event: OutputEvent) -> None:
        """Send *event*'s records, or queue them if they must wait.

        A cancellation point; a schedule point only while the queue is full.

        Raises:
          trio.BrokenResourceError: the connection is gone.
        """
        await self._wait_for_room()
        if (
            await self._write(self._encode(event))
            and type(event) is EndRequest
            and self._should_close()
        ):
            self._close_output()

    async def send_many(self, events: Sequence[OutputEvent]) -> None:
        """Send several events' records in one write."""
        await self._wait_for_room()
        parts: list[bytes | memoryview] = []
        for event in events:
            parts += self._encode(event)
        if await self._write(parts) and type(events[-1]) is EndRequest and self._should_close():
            self._close_output()

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

    def _encode(self, event: OutputEvent) -> list[bytes | memoryview]:
        try:
            return self._conn.send_parts(event)
        except LocalProtocolError as exc:
            # Output from a task outside the request, racing its end.
            LOGGER.debug("%s: dropped output: %s", self._name, exc)
            return []

    def _close_output(self) -> None:
        """Everything is sent: half-close, at once if the transport can."""
        if self._half_close_nowait():
            self._closed = True  # nothing may follow the half-close
        else:
            self._start()

    async def _drained(self) -> None:
        """The writer task sent everything: half-close if the connection
        should close."""
        if not self._closed and self._should_close():
            self._closed = True  # nothing may follow the half-close
            await self._half_close()

    def _report_failure(self, exc: BaseException) -> None:
        if isinstance(exc, WriteTimeout):
            LOGGER.warning(
                "%s: closing connection: the web server took none of the output "
                "for write_timeout (%s s)",
                self._name,
                self._transport.write_timeout,
            )
        else:
            LOGGER.debug("%s: send failed (%r); peer is gone", self._name, exc)
        # Cancels the connection: senders waiting for room get Cancelled, as
        # its other tasks do.
        self._fail_connection()
