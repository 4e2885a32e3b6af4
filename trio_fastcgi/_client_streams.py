"""One client request in flight: what the client knows about it, its stdout as a
stream, the handle the caller holds (:class:`ActiveRequest`), and the
:class:`Response` it ends in."""

from __future__ import annotations

from typing import NoReturn, Protocol, final

import attrs
import trio

from ._buffer import ByteBuffer
from ._cgi_response import CGIResponse, parse_cgi_response
from ._client_errors import ResponseTooLarge, copy_error
from ._events import EndRequest
from ._wire import ProtocolStatus

__all__ = ["Aborter", "ActiveRequest", "ClientRequestState", "Response", "ResponseStream"]


@attrs.frozen
class Response:
    """The whole result of one FastCGI request.

    Attributes:
      request_id: the id the request had on its connection.
      stdout: ``FCGI_STDOUT`` (for a Responder, a CGI response: see
        :meth:`parse_cgi`).
      stderr: ``FCGI_STDERR``.
      app_status: the ``appStatus`` of ``FCGI_END_REQUEST`` (like an exit code).
      protocol_status: ``REQUEST_COMPLETE``, or why the application refused
        the request (``CANT_MPX_CONN``, ``OVERLOADED``, ``UNKNOWN_ROLE``).
    """

    request_id: int
    stdout: bytes
    stderr: bytes
    app_status: int
    protocol_status: ProtocolStatus

    def parse_cgi(self) -> CGIResponse:
        """:func:`parse_cgi_response` of :attr:`stdout`."""
        return parse_cgi_response(self.stdout)


@final
class ClientRequestState:
    """What the client knows about one request: shared by the reader task,
    the input feeder and the user's :class:`ActiveRequest`."""

    def __init__(self, request_id: int, stdout_buffer_size: int, max_stderr_size: int) -> None:
        self.request_id: int = request_id
        self.max_stderr_size: int = max_stderr_size
        #: Stdout received and not read yet; full, it stops the connection's reader.
        self.stdout: ByteBuffer = ByteBuffer(stdout_buffer_size)
        self.stderr: bytearray = bytearray()
        self.end: EndRequest | None = None
        self.error: BaseException | None = None
        #: The error was raised to the user at least once.
        self.error_seen: bool = False
        self.aborted: bool = False
        self.ended: trio.Event = trio.Event()
        self.input_scope: trio.CancelScope = trio.CancelScope()

    @property
    def finished(self) -> bool:
        """``FCGI_END_REQUEST`` arrived, or the request failed."""
        return self.end is not None or self.error is not None

    @property
    def abandoned(self) -> bool:
        """Nobody reads the output any more: it is dropped."""
        return self.stdout.discarding

    @property
    def buffered(self) -> int:
        """Stdout bytes received and not read yet."""
        return self.stdout.size

    def raise_error(self) -> NoReturn:
        """Raise (a copy of) the error the request failed with."""
        assert self.error is not None
        self.error_seen = True
        raise copy_error(self.error)

    def fail(self, error: BaseException) -> None:
        """The request failed (unless it had finished): wake everyone waiting."""
        if self.finished:
            return
        self.error = error
        self.input_scope.cancel()
        self.stdout.break_off()
        self.ended.set()

    def finish(self, end: EndRequest) -> None:
        """``FCGI_END_REQUEST`` arrived."""
        self.end = end
        if self.error is None:
            self.stdout.put_eof()
        self.input_scope.cancel()
        self.ended.set()

    def discard_output(self) -> None:
        """Drop buffered and later output: nobody will read it."""
        self.stdout.discard()

    async def feed_stdout(self, data: bytes) -> None:
        """Hand a stdout record's content (``b""``: the end) to the reader;
        wait while its buffer is full."""
        stdout = self.stdout
        if stdout.discarding or self.error is not None:
            return
        if not data:
            stdout.put_eof()
            return
        stdout.append(data)
        await stdout.wait_room_for()


class Aborter(Protocol):
    """What an :class:`ActiveRequest` needs of its client: sending
    ``FCGI_ABORT_REQUEST``."""

    async def _abort(self, state: ClientRequestState) -> None: ...

    def _abort_nowait(self, state: ClientRequestState) -> None: ...


@final
class ResponseStream(trio.abc.ReceiveStream):
    """A request's ``FCGI_STDOUT`` as it arrives.

    :meth:`receive_some` returns ``b""`` at the end of stdout; ``async for
    chunk in stream`` works too. If the connection fails before the end, it
    raises the failure once the bytes received before it have been read.
    """

    def __init__(self, state: ClientRequestState) -> None:
        self._state = state
        self._busy = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        await trio.lowlevel.checkpoint()
        if self._busy:
            raise trio.BusyResourceError("another task is reading this stdout stream")
        state = self._state
        stdout = state.stdout
        self._busy = True
        try:
            await stdout.wait_readable()
            if stdout.closed:
                raise trio.ClosedResourceError("this stdout stream was closed")
            if stdout.size:
                return stdout.take(max_bytes)
            if state.error is not None and not stdout.at_eof:
                state.raise_error()
            return b""
        finally:
            self._busy = False

    async def aclose(self) -> None:
        """Stop reading: stdout that is still to come is dropped."""
        self._state.stdout.close()
        await trio.lowlevel.checkpoint()


@final
class ActiveRequest:
    """A request in flight, from :meth:`Client.open_request`.

    Attributes:
      request_id: its id on the connection.
      stdout: the application's stdout as it arrives (:class:`ResponseStream`).
    """

    def __init__(self, client: Aborter, state: ClientRequestState) -> None:
        self._client = client
        self._state = state
        self.request_id: int = state.request_id
        self.stdout: ResponseStream = ResponseStream(state)

    def __repr__(self) -> str:
        return f"<ActiveRequest {self.request_id}{' ended' if self.ended else ''}>"

    @property
    def stderr(self) -> bytes:
        """``FCGI_STDERR`` received so far."""
        return bytes(self._state.stderr)

    @property
    def ended(self) -> bool:
        """True once ``FCGI_END_REQUEST`` arrived (or the request failed)."""
        return self._state.finished

    @property
    def aborted(self) -> bool:
        """True once ``FCGI_ABORT_REQUEST`` was sent for this request."""
        return self._state.aborted

    async def wait_ended(self) -> EndRequest:
        """Wait for ``FCGI_END_REQUEST`` and return it (``app_status``,
        ``protocol_status``).

        Read :attr:`stdout` to its end first (or close it): stdout is kept
        for you, and once the buffer is full the connection stops reading
        until you read.

        Raises:
          trio.BrokenResourceError: the connection failed or closed first.
          ServerProtocolError: the application broke the protocol.
        """
        state = self._state
        await state.ended.wait()
        if state.error is not None:
            state.raise_error()
        assert state.end is not None
        return state.end

    async def abort(self) -> None:
        """Send ``FCGI_ABORT_REQUEST``. The application still answers with
        ``FCGI_END_REQUEST`` (see :meth:`wait_ended`); a trio_fastcgi server
        cancels the handler. Does nothing if the request has ended."""
        await self._client._abort(self._state)

    async def receive_response(self, *, max_size: int | None = None) -> Response:
        """Read the rest of stdout, wait for the end, and return it all.

        :attr:`Response.stdout` holds what was not read from :attr:`stdout`
        before.

        Raises:
          ResponseTooLarge: more than *max_size* bytes of stdout (the request
            is aborted).
        """
        chunks: list[bytes | bytearray] = []
        size = 0
        async for chunk in self.stdout:
            size += len(chunk)
            if max_size is not None and size > max_size:
                await self.stdout.aclose()
                self._client._abort_nowait(self._state)
                raise ResponseTooLarge(f"stdout exceeds max_size ({max_size} bytes)")
            chunks.append(chunk)
        end = await self.wait_ended()
        return Response(
            self.request_id, b"".join(chunks), self.stderr, end.app_status, end.protocol_status
        )
