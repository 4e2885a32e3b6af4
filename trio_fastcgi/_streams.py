"""A request's byte streams: stdin/data in, stdout/stderr out.

Input is fed by the connection's reader task into a bounded buffer; the handler
drains it. Output never touches the socket: each ``send_all`` becomes one output
event handed to the connection's :class:`Outbox`, its single sender.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, NoReturn, Protocol, final

import trio

from ._buffer import ByteBuffer
from ._event_builders import _make_stderr, _make_stdout
from ._events import Stderr, Stdout
from ._exceptions import IncompleteInput, InputTooLarge
from ._util import NoPublicConstructor

if TYPE_CHECKING:
    from ._events import OutputEvent

DEFAULT_MAX_BODY_SIZE: Final = 16 * 1024 * 1024


class Outbox(Protocol):
    """Where a connection's output events go, in order (its writer).

    A protocol, so that the connection's writer (compiled, in a mypyc build)
    need not inherit from it; a class that does inherits :meth:`send_many`."""

    __slots__ = ()

    async def send(self, event: OutputEvent) -> None:
        """Send (or queue) *event*; :class:`trio.BrokenResourceError` if the
        connection is gone."""

    async def send_many(self, events: Sequence[OutputEvent]) -> None:
        """Send several events, in order (in one write, where it can)."""
        for event in events:
            await self.send(event)


@final
class InputStream(trio.abc.ReceiveStream, metaclass=NoPublicConstructor):
    """A request's ``FCGI_STDIN`` or ``FCGI_DATA`` stream.

    :meth:`receive_some` returns ``b""`` once the web server has ended the
    stream; ``async for chunk in stream`` works too. If the web server announced
    a length (``CONTENT_LENGTH``, ``FCGI_DATA_LENGTH``) and the stream ends at a
    different one, :meth:`receive_some` raises :class:`IncompleteInput` instead
    of returning ``b""``: the body was cut short and must not be trusted.
    """

    #: Bytes the web server announced for this stream, if it did.
    expected_length: int | None
    _name: str
    _buffer_size: int
    _buffer: ByteBuffer
    _received: int
    _busy: bool

    @classmethod
    def _create(cls, name: str, *, buffer_size: int, expected_length: int | None) -> InputStream:
        self = object.__new__(cls)
        self._name = name
        self._buffer_size = buffer_size
        self.expected_length = expected_length
        self._buffer = ByteBuffer(buffer_size)
        self._received = 0
        self._busy = False
        return self

    @property
    def received(self) -> int:
        """Bytes of this stream received from the web server so far."""
        return self._received

    @property
    def at_eof(self) -> bool:
        """True once the web server has ended the stream."""
        return self._buffer.at_eof

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Wait for and return some input, at most *max_bytes*; ``b""`` at the end."""
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        return await self._receive(max_bytes, bulk=False)

    async def _receive(self, max_bytes: int | None, *, bulk: bool) -> bytes:
        """:meth:`receive_some`; with *bulk*, wait until the stream ended or the
        buffer is full before taking anything (:meth:`receive_all`)."""
        if self._busy:
            raise trio.BusyResourceError(f"another task is already reading {self._name}")
        self._busy = True
        try:
            buffer = self._buffer
            if buffer.closed:
                await self._raise_closed()
            if buffer.full_or_ended if bulk else (buffer.size or buffer.at_eof):
                await trio.lowlevel.checkpoint()
            else:
                await (buffer.wait_full_or_ended() if bulk else buffer.wait_readable())
                if buffer.closed:
                    await self._raise_closed()
            return self._take(max_bytes)
        finally:
            self._busy = False

    async def _raise_closed(self) -> NoReturn:
        """Raise ClosedResourceError, or Cancelled if the reader is cancelled:
        a request whose connection ended while it was not running (one in a
        task of its handler's, see request_spawner) is cancelled, not failed."""
        await trio.lowlevel.checkpoint_if_cancelled()
        raise trio.ClosedResourceError(f"{self._name} was closed")

    def _take(self, max_bytes: int | None) -> bytes:
        data = self._buffer.take(max_bytes, coalesce=True)
        if not data:
            expected = self.expected_length
            if expected is not None and expected != self._received:
                raise IncompleteInput(
                    f"{self._name} ended after {self._received} bytes, "
                    f"but {expected} were announced"
                )
        return data

    async def receive_all(self, max_size: int = DEFAULT_MAX_BODY_SIZE) -> bytes:
        """Read the whole stream and return it.

        Raises:
          InputTooLarge: the stream is (or announced to be) longer than
            *max_size*; nothing more is read.
          IncompleteInput: it ended short of its announced length.
        """
        expected = self.expected_length
        if expected is not None and expected > max_size:
            raise InputTooLarge(
                f"{self._name} announces {expected} bytes, more than the {max_size} allowed"
            )
        parts: list[bytes] = []
        size = 0
        # One wake-up per buffer-full, not one per record that arrives.
        while chunk := await self._receive(None, bulk=True):
            size += len(chunk)
            if size > max_size:
                raise InputTooLarge(f"{self._name} is longer than the {max_size} bytes allowed")
            parts.append(chunk)
        return b"".join(parts)

    async def aclose(self) -> None:
        """Stop reading: buffered and later input is discarded."""
        self._close()
        await trio.lowlevel.checkpoint()

    def _close(self) -> None:
        self._buffer.close()

    # -- the connection's side ---------------------------------------------------

    def _discard(self) -> None:
        """Drop buffered input and any that still arrives (the handler is done)."""
        self._buffer.discard()

    def _feed_eof(self) -> None:
        self._buffer.put_eof()

    def _offer(self, data: bytes) -> bool:
        """Take a chunk (``b""`` ends the stream) if the buffer has room, or if
        input is being discarded; False means wait with :meth:`_feed`."""
        if not data:
            self._buffer.put_eof()
            return True
        buffer = self._buffer
        if not buffer.discarding:
            if not buffer.room_for(len(data)):
                return False
            buffer.append(data)
        self._received += len(data)
        return True

    async def _feed(self, data: bytes) -> None:
        """Add a chunk; wait while the buffer is full (backpressure)."""
        while not self._offer(data):
            await self._buffer.wait_room_for(len(data))


@final
class OutputStream(trio.abc.SendStream, metaclass=NoPublicConstructor):
    """A request's ``FCGI_STDOUT`` or ``FCGI_STDERR`` stream.

    Each :meth:`send_all` goes whole to the connection's single sender, which
    splits it into records of at most 65,528 bytes; output of concurrent
    requests can never interleave inside a record. :meth:`aclose` ends the
    stream; the request's end closes it too if the handler did not.

    :meth:`send_all` returns once the data is sent or queued, not necessarily
    written; it waits (and yields to other tasks) only while the connection's
    output queue is full.
    """

    # Class-level defaults: a request that writes nothing pays nothing for them.
    _bytes_sent: int = 0
    #: The first non-empty chunk written (the access log reads the status there).
    _first_chunk: bytes = b""
    #: What writing to the closed stream says (``respond()`` sets its own).
    _closed_reason: str = "the output stream is closed"

    _request_id: int
    _make_event: Callable[[int, bytes], Stdout | Stderr]
    _outbox: Outbox
    _closed: bool
    _busy: bool
    _sent_data: bool

    @classmethod
    def _create(
        cls, request_id: int, event_type: type[Stdout | Stderr], outbox: Outbox
    ) -> OutputStream:
        self = object.__new__(cls)
        self._request_id = request_id
        self._make_event = _make_stdout if event_type is Stdout else _make_stderr
        self._outbox = outbox
        self._closed = False
        self._busy = False
        self._sent_data = False
        return self

    @property
    def closed(self) -> bool:
        """True once the stream was closed, or its request ended."""
        return self._closed

    @property
    def bytes_sent(self) -> int:
        """Bytes written to this stream so far (for stdout, the CGI head included)."""
        return self._bytes_sent

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send *data* to the web server; waits while the output queue is full.

        Raises:
          trio.ClosedResourceError: the stream was closed or its request ended.
          trio.BrokenResourceError: the connection to the web server is gone.
        """
        if self._busy:
            raise trio.BusyResourceError("another task is already writing this stream")
        if self._closed:
            raise trio.ClosedResourceError(self._closed_reason)
        if not data:
            await trio.lowlevel.checkpoint()
            return
        self._busy = True
        try:
            chunk = data if type(data) is bytes else bytes(data)
            if not self._sent_data:
                self._first_chunk = chunk
            self._sent_data = True
            self._bytes_sent += len(chunk)
            await self._outbox.send(self._make_event(self._request_id, chunk))
        finally:
            self._busy = False

    async def _send_last(self, data: bytes) -> None:
        """Send *data* and end the stream, in one write."""
        events = self._last_events(data)
        self._busy = True
        try:
            await self._outbox.send_many(events)
        finally:
            self._busy = False

    def _last_events(self, data: bytes) -> list[OutputEvent]:
        """End the stream: the events that send *data* and its end, for the
        caller to send at once (nothing else may be written to it now)."""
        if self._busy:
            raise trio.BusyResourceError("another task is already writing this stream")
        if self._closed:
            raise trio.ClosedResourceError(self._closed_reason)
        self._closed = True
        make, request_id = self._make_event, self._request_id
        last = make(request_id, b"")
        if not data:
            return [last]
        if not self._sent_data:
            self._first_chunk = data
        self._sent_data = True
        self._bytes_sent += len(data)
        return [make(request_id, data), last]

    async def wait_send_all_might_not_block(self) -> None:
        """Returns at once: the output queue gives no finer readiness signal."""
        if self._closed:
            raise trio.ClosedResourceError(self._closed_reason)
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        """End the stream (sends its empty record). Closing twice is harmless."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        # If the connection is gone there is nothing left to end.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self._outbox.send(self._make_event(self._request_id, b""))
