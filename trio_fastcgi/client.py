"""A FastCGI client on Trio: talk to any FastCGI application (php-fpm, a Go
``net/http/fcgi`` server, a ``trio_fastcgi`` server) over TCP, a unix socket or
any :class:`trio.abc.Stream`.

One connection carries many requests at once (multiplexing), each under its
own request id; a reader task sorts what the application sends by id, and a
writer task is the only one that writes, so records never interleave::

    async with trio_fastcgi.client.open_tcp_client("127.0.0.1", 9000) as client:
        response = await client.request(
            {"REQUEST_METHOD": "GET", "SCRIPT_FILENAME": "/srv/www/index.php"}
        )
        print(response.app_status, response.parse_cgi().status)

        # Streamed: read stdout while it arrives, stdin from an async iterable.
        async with client.open_request(params, stdin=body_chunks()) as request:
            async for chunk in request.stdout:
                ...
            end = await request.wait_ended()

Applications that do not multiplex (php-fpm answers ``FCGI_MPXS_CONNS`` with
``0``; ask with :meth:`Client.get_values`) need ``max_concurrent=1``, which
makes concurrent callers wait their turn on the one connection.

Run as a program it works like libfcgi's ``cgi-fcgi``::

    python -m trio_fastcgi.client 127.0.0.1:9000 /srv/www/index.php?x=1
    python -m trio_fastcgi.client /run/php/php-fpm.sock --get-values

Errors: :class:`ServerProtocolError` when the application breaks the protocol,
:class:`trio.BrokenResourceError` when the connection fails or closes before a
request's ``FCGI_END_REQUEST``, :class:`trio.ClosedResourceError` after the
client was closed.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import os
import sys
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping, Sequence
from functools import partial
from types import TracebackType
from typing import Final, NoReturn, TypeAlias, final

import attrs
import trio

from ._client_protocol import ClientConnection, ServerProtocolError
from ._events import (
    NEED_DATA,
    ConnectionClosed,
    EndRequest,
    GetValuesResult,
    Stderr,
    Stdout,
    UnknownType,
)
from ._wire import MAX_ALIGNED_CONTENT_LEN, ProtocolStatus, RecordType, Role

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found,unused-ignore]

__all__ = [
    "ActiveRequest",
    "CGIResponse",
    "CGIResponseError",
    "Client",
    "ClientError",
    "GetValuesUnsupported",
    "Response",
    "ResponseStream",
    "ResponseTooLarge",
    "ServerProtocolError",
    "main",
    "open_client",
    "open_tcp_client",
    "open_unix_client",
    "parse_address",
    "parse_cgi_response",
]

#: Params as a mapping, or ``(name, value)`` pairs (str or bytes; str is
#: encoded as UTF-8 with ``surrogateescape``). Pairs keep order and duplicates.
ParamsArg: TypeAlias = (
    "Mapping[str, str] | Mapping[bytes, bytes] | Iterable[tuple[str | bytes, str | bytes]]"
)
#: The request body, as bytes or an async iterable of byte chunks (streamed).
BodyArg: TypeAlias = "bytes | bytearray | memoryview | AsyncIterable[bytes]"

ServerProtocolError.__module__ = "trio_fastcgi.client"

RECEIVE_SIZE: Final = 256 * 1024
#: Write-queue items (each one or more whole records) before senders wait.
SEND_QUEUE_SIZE: Final = 16
#: Stdin/data go to the writer in pieces of this size (four full records), so a
#: huge body does not sit in the queue at once.
INPUT_PIECE_SIZE: Final = 4 * MAX_ALIGNED_CONTENT_LEN
#: The writer gathers queued records into one send up to this many bytes.
COALESCE_LIMIT: Final = 256 * 1024
#: Unread stdout of one request kept before the reader stops reading the
#: connection (which pushes back on the application, and on every other
#: request of the connection: read what you stream).
DEFAULT_STDOUT_BUFFER_SIZE: Final = 256 * 1024
#: Stderr of one request kept; more fails the request with ResponseTooLarge.
DEFAULT_MAX_STDERR_SIZE: Final = 1024 * 1024
MAX_CONCURRENT_REQUESTS: Final = 0xFFFF


# -- errors ----------------------------------------------------------------------


class ClientError(Exception):
    """Base of this module's own errors (besides :class:`ServerProtocolError`
    and the trio errors it raises for connection problems)."""


class ResponseTooLarge(ClientError):
    """The response (stdout, or stderr) is larger than the limit asked for.
    The request has been aborted."""


class GetValuesUnsupported(ClientError):
    """The application answered ``FCGI_GET_VALUES`` with ``FCGI_UNKNOWN_TYPE``."""


class CGIResponseError(ValueError):
    """Stdout that is not a CGI response (headers, blank line, body)."""


def _copy_error(error: BaseException) -> BaseException:
    # Raise a fresh exception in each task: one object raised from several
    # tasks accumulates their tracebacks.
    try:
        fresh = type(error)(*error.args)
    except Exception:
        return error
    fresh.__cause__ = error
    return fresh


# -- results ---------------------------------------------------------------------


@attrs.frozen
class CGIResponse:
    """A CGI response, as :func:`parse_cgi_response` reads it from stdout.

    Attributes:
      status: from the ``Status:`` header; 302 if there is only a
        ``Location:``; else 200.
      headers: the other headers, in order, names as sent.
      body: what follows the blank line.
    """

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first header called *name* (case-insensitive), or *default*."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return default

    def header_values(self, name: str) -> list[str]:
        """Every value of the header *name* (case-insensitive), in order."""
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]


def parse_cgi_response(stdout: bytes) -> CGIResponse:
    """Split a CGI response into status, headers and body (RFC 3875 section 6).

    Lines may end in CRLF or LF; the head ends at the first empty line. Header
    bytes are decoded as latin-1. ``Status: 404 Not Found`` sets the status and
    is not kept in :attr:`CGIResponse.headers`.

    Raises:
      CGIResponseError: no blank line ends the head, a header line has no
        colon, or the Status header is not a 3-digit code.
    """
    lines: list[bytes] = []
    pos = 0
    while True:
        newline = stdout.find(b"\n", pos)
        if newline == -1:
            raise CGIResponseError(
                f"no blank line ends the CGI headers (stdout starts {stdout[:60]!r})"
            )
        raw_line = stdout[pos:newline]
        pos = newline + 1
        if raw_line.endswith(b"\r"):
            raw_line = raw_line[:-1]
        if not raw_line:
            break
        lines.append(raw_line)
    body = stdout[pos:]
    status: int | None = None
    location = False
    headers: list[tuple[str, str]] = []
    for raw_line in lines:
        line = raw_line.decode("latin-1")
        name, colon, value = line.partition(":")
        name = name.strip()
        if not colon or not name:
            raise CGIResponseError(f"CGI header line without a name and colon: {line!r}")
        value = value.strip()
        lowered = name.lower()
        if lowered == "status":
            code = value.split(None, 1)[0] if value else ""
            if len(code) != 3 or not code.isdigit() or code[0] == "0":
                raise CGIResponseError(f"bad CGI Status header: {line!r}")
            status = int(code)
            continue
        if lowered == "location":
            location = True
        headers.append((name, value))
    if status is None:
        status = 302 if location else 200
    return CGIResponse(status, headers, body)


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


# -- one request -----------------------------------------------------------------


@final
class _RequestState:
    """What the client knows about one request: shared by the reader task,
    the input feeder and the user's :class:`ActiveRequest`."""

    def __init__(self, request_id: int, stdout_buffer_size: int, max_stderr_size: int) -> None:
        self.request_id = request_id
        self.stdout_buffer_size = stdout_buffer_size
        self.max_stderr_size = max_stderr_size
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.stdout_eof = False
        self.stderr = bytearray()
        self.end: EndRequest | None = None
        self.error: BaseException | None = None
        self.error_seen = False  # raised to the user at least once
        self.abandoned = False  # nobody reads any more: drop output
        self.aborted = False
        self.readable = trio.lowlevel.ParkingLot()
        self.writable = trio.lowlevel.ParkingLot()
        self.ended = trio.Event()
        self.input_scope = trio.CancelScope()

    @property
    def finished(self) -> bool:
        return self.end is not None or self.error is not None

    def raise_error(self) -> NoReturn:
        assert self.error is not None
        self.error_seen = True
        raise _copy_error(self.error)

    def fail(self, error: BaseException) -> None:
        if self.finished:
            return
        self.error = error
        self.input_scope.cancel()
        self.readable.unpark_all()
        self.writable.unpark_all()
        self.ended.set()

    def finish(self, end: EndRequest) -> None:
        self.end = end
        if self.error is None:
            self.stdout_eof = True
        self.input_scope.cancel()
        self.readable.unpark_all()
        self.writable.unpark_all()
        self.ended.set()

    def discard_output(self) -> None:
        self.abandoned = True
        self.chunks.clear()
        self.buffered = 0
        self.readable.unpark_all()
        self.writable.unpark_all()

    async def feed_stdout(self, data: bytes) -> None:
        if self.abandoned or self.error is not None:
            return
        if not data:
            self.stdout_eof = True
            self.readable.unpark_all()
            return
        self.chunks.append(data)
        self.buffered += len(data)
        self.readable.unpark_all()
        while self.buffered > self.stdout_buffer_size and not self.abandoned and self.error is None:
            await self.writable.park()


@final
class ResponseStream(trio.abc.ReceiveStream):
    """A request's ``FCGI_STDOUT`` as it arrives.

    :meth:`receive_some` returns ``b""`` at the end of stdout; ``async for
    chunk in stream`` works too. If the connection fails before the end, it
    raises the failure once the bytes received before it have been read.
    """

    def __init__(self, state: _RequestState) -> None:
        self._state = state
        self._busy = False
        self._closed = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        await trio.lowlevel.checkpoint()
        if self._busy:
            raise trio.BusyResourceError("another task is reading this stdout stream")
        state = self._state
        self._busy = True
        try:
            while (
                not self._closed
                and not state.chunks
                and not state.stdout_eof
                and state.error is None
            ):
                await state.readable.park()
            if self._closed:
                raise trio.ClosedResourceError("this stdout stream was closed")
            if state.chunks:
                chunk = state.chunks.popleft()
                if max_bytes is not None and len(chunk) > max_bytes:
                    state.chunks.appendleft(chunk[max_bytes:])
                    chunk = chunk[:max_bytes]
                state.buffered -= len(chunk)
                state.writable.unpark_all()
                return chunk
            if state.error is not None and not state.stdout_eof:
                state.raise_error()
            return b""
        finally:
            self._busy = False

    async def aclose(self) -> None:
        """Stop reading: stdout that is still to come is dropped."""
        self._closed = True
        self._state.discard_output()
        await trio.lowlevel.checkpoint()


@final
class ActiveRequest:
    """A request in flight, from :meth:`Client.open_request`.

    Attributes:
      request_id: its id on the connection.
      stdout: the application's stdout as it arrives (:class:`ResponseStream`).
    """

    def __init__(self, client: Client, state: _RequestState) -> None:
        self._client = client
        self._state = state
        self.request_id = state.request_id
        self.stdout = ResponseStream(state)

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


# -- the connection --------------------------------------------------------------


def _encode(value: str | bytes) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"param names and values must be str or bytes, not {type(value).__name__}")


def _param_pairs(params: ParamsArg) -> list[tuple[bytes, bytes]]:
    items: Iterable[tuple[str | bytes, str | bytes]]
    items = params.items() if isinstance(params, Mapping) else params
    return [(_encode(name), _encode(value)) for name, value in items]


@final
class _ValuesWaiter:
    def __init__(self) -> None:
        self.done = trio.Event()
        self.values: dict[str, str] | None = None
        self.error: BaseException | None = None


@final
class Client:
    """One FastCGI connection, used as a web server uses it.

    Use it as ``async with Client(stream) as client:`` or get one from
    :func:`open_client`, :func:`open_tcp_client` or :func:`open_unix_client`;
    the stream is closed on exit. Its methods may be called from many tasks at
    once: requests are multiplexed over the connection (ids from 1, the lowest
    free one first, reused after ``FCGI_END_REQUEST``; the id of an aborted
    request only once no other is free).

    Attributes:
      stream: the underlying stream.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        max_concurrent: int | None = None,
        stdout_buffer_size: int = DEFAULT_STDOUT_BUFFER_SIZE,
    ) -> None:
        if max_concurrent is not None and not 1 <= max_concurrent <= MAX_CONCURRENT_REQUESTS:
            raise ValueError(f"max_concurrent must be in 1..{MAX_CONCURRENT_REQUESTS}")
        if stdout_buffer_size < 1:
            raise ValueError("stdout_buffer_size must be >= 1")
        self.stream = stream
        self._conn = ClientConnection()
        self._limit = max_concurrent or MAX_CONCURRENT_REQUESTS
        self._stdout_buffer_size = stdout_buffer_size
        self._requests: dict[int, _RequestState] = {}
        self._free_ids: list[int] = []
        # Ids of aborted requests are used again only when no other is left:
        # some applications (Go's net/http/fcgi) still send output and a
        # second FCGI_END_REQUEST for an id after answering its abort.
        self._quarantined: deque[int] = deque()
        self._next_id = 1
        self._id_waiters = trio.lowlevel.ParkingLot()
        self._send_channel, self._receive_channel = trio.open_memory_channel[bytes](SEND_QUEUE_SIZE)
        self._values_waiters: deque[_ValuesWaiter] = deque()
        self._error: BaseException | None = None
        self._closed = False
        self._last_request: int | None = None
        self._nursery: trio.Nursery | None = None
        self._task_scope = trio.CancelScope()
        self._running_cm: contextlib.AbstractAsyncContextManager[Client] | None = None

    def __repr__(self) -> str:
        return f"<trio_fastcgi.client.Client, {len(self._requests)} request(s) in flight>"

    async def __aenter__(self) -> Client:
        if self._running_cm is not None:
            raise RuntimeError("this Client was entered already")
        self._running_cm = _running(self)
        return await self._running_cm.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        assert self._running_cm is not None
        return await self._running_cm.__aexit__(exc_type, exc, traceback)

    @property
    def active_requests(self) -> int:
        """Requests in flight on this connection (ids in use)."""
        return len(self._requests)

    @property
    def is_usable(self) -> bool:
        """False once the client was closed, the connection failed or closed, or
        a request without ``keep_conn`` was sent."""
        return not self._closed and self._error is None and self._last_request is None

    def _check_usable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the FastCGI client is closed")
        if self._last_request is not None:
            raise trio.ClosedResourceError(
                f"request {self._last_request} was sent without keep_conn, so the "
                "application closes the connection after it; open a new one"
            )
        if self._error is not None:
            raise _copy_error(self._error)

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The reader and writer tasks, until :meth:`aclose`."""
        with self._task_scope:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._write_loop)
                nursery.start_soon(self._read_loop)
                task_status.started()

    # -- request ids ---------------------------------------------------------

    async def _allocate_id(self) -> int:
        await trio.lowlevel.checkpoint()
        while True:
            self._check_usable()
            if len(self._requests) < self._limit:
                if self._free_ids:
                    return heapq.heappop(self._free_ids)
                if self._next_id <= MAX_CONCURRENT_REQUESTS:
                    request_id = self._next_id
                    self._next_id += 1
                    return request_id
                return self._quarantined.popleft()
            await self._id_waiters.park()

    def _free_id(self, request_id: int) -> None:
        heapq.heappush(self._free_ids, request_id)
        self._id_waiters.unpark()

    # -- sending -------------------------------------------------------------

    async def _send(self, data: bytes) -> None:
        try:
            await self._send_channel.send(data)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self._check_usable()
            raise trio.ClosedResourceError("the FastCGI client is closed") from None

    def _send_soon(self, data: bytes) -> None:
        """Queue *data* without waiting (for cleanup code, which must not block)."""
        try:
            self._send_channel.send_nowait(data)
        except trio.WouldBlock:
            assert self._nursery is not None
            self._nursery.start_soon(self._send_quietly, data)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    async def _send_quietly(self, data: bytes) -> None:
        with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
            await self._send_channel.send(data)

    async def _write_loop(self) -> None:
        receiver = self._receive_channel
        parts: list[bytes] = []
        async for data in receiver:
            parts.append(data)
            size = len(data)
            while size < COALESCE_LIMIT:
                try:
                    more = receiver.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                parts.append(more)
                size += len(more)
            payload = parts[0] if len(parts) == 1 else b"".join(parts)
            parts.clear()
            try:
                await self.stream.send_all(payload)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                if not self._closed:
                    self._fail(
                        trio.BrokenResourceError(
                            f"sending to the FastCGI application failed: {exc!r}"
                        )
                    )
                return

    # -- receiving -----------------------------------------------------------

    async def _read_loop(self) -> None:
        conn = self._conn
        while True:
            try:
                data = await self.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                if not self._closed:
                    self._fail(
                        trio.BrokenResourceError(
                            f"receiving from the FastCGI application failed: {exc!r}"
                        )
                    )
                return
            try:
                conn.receive_data(data)
                while (event := conn.next_event()) is not NEED_DATA:
                    if isinstance(event, ConnectionClosed):
                        self._peer_closed()
                        return
                    await self._dispatch(event)
            except ServerProtocolError as exc:
                self._fail(exc)
                await trio.aclose_forcefully(self.stream)
                return

    async def _dispatch(
        self, event: Stdout | Stderr | EndRequest | GetValuesResult | UnknownType
    ) -> None:
        if isinstance(event, Stdout):
            await self._requests[event.request_id].feed_stdout(event.data)
        elif isinstance(event, Stderr):
            state = self._requests[event.request_id]
            if state.abandoned or state.error is not None:
                return
            if len(state.stderr) + len(event.data) > state.max_stderr_size:
                self._abort_nowait(state)
                state.fail(
                    ResponseTooLarge(
                        f"stderr of request {state.request_id} exceeds max_stderr_size "
                        f"({state.max_stderr_size} bytes); request aborted"
                    )
                )
                state.discard_output()
                return
            state.stderr += event.data
        elif isinstance(event, EndRequest):
            state = self._requests.pop(event.request_id)
            state.finish(event)
            if state.aborted:
                self._quarantined.append(event.request_id)
                self._id_waiters.unpark()
            else:
                self._free_id(event.request_id)
        elif isinstance(event, GetValuesResult):
            if self._values_waiters:
                waiter = self._values_waiters.popleft()
                waiter.values = {
                    name.decode("utf-8", "surrogateescape"): value.decode(
                        "utf-8", "surrogateescape"
                    )
                    for name, value in event.values
                }
                waiter.done.set()
        elif event.record_type == RecordType.GET_VALUES and self._values_waiters:
            waiter = self._values_waiters.popleft()
            waiter.error = GetValuesUnsupported(
                "the application answered FCGI_GET_VALUES with FCGI_UNKNOWN_TYPE"
            )
            waiter.done.set()

    def _peer_closed(self) -> None:
        active = sorted(self._requests)
        if active:
            ids = ", ".join(map(str, active))
            message = (
                "the FastCGI application closed the connection before "
                f"FCGI_END_REQUEST of request(s) {ids}"
            )
        else:
            message = "the FastCGI application closed the connection"
        self._fail(trio.BrokenResourceError(message))

    def _fail(self, error: BaseException) -> None:
        """The connection is unusable: fail everything waiting on it."""
        if self._error is None:
            self._error = error
        for state in list(self._requests.values()):
            state.fail(error)
        while self._values_waiters:
            waiter = self._values_waiters.popleft()
            waiter.error = error
            waiter.done.set()
        self._id_waiters.unpark_all()
        self._send_channel.close()

    # -- public API ----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def open_request(
        self,
        params: ParamsArg = (),
        stdin: BodyArg = b"",
        *,
        role: Role = Role.RESPONDER,
        data: BodyArg | None = None,
        keep_conn: bool = True,
        max_stderr_size: int = DEFAULT_MAX_STDERR_SIZE,
    ) -> AsyncIterator[ActiveRequest]:
        """Start a request; read its output while it arrives.

        Args:
          params: the request's ``FCGI_PARAMS``.
          stdin: the body: bytes, or an async iterable of chunks, sent as they
            come; the stream is ended after the last one. An Authorizer gets
            no stdin, so it must stay empty.
          role: :class:`~trio_fastcgi.Role` of the request.
          data: the Filter role's ``FCGI_DATA`` (the file), sent after stdin.
          keep_conn: ``FCGI_KEEP_CONN``. Without it the application closes
            the connection after this request, so no request may follow.
          max_stderr_size: more stderr than this fails the request with
            :class:`ResponseTooLarge` and aborts it.

        Stdin is sent by a background task, so stdout can be read meanwhile;
        an error from the *stdin* iterable fails the request and is raised
        when the block exits. Leaving the block before ``FCGI_END_REQUEST``
        aborts the request (``FCGI_ABORT_REQUEST``); its id stays in use until
        the application ends it. With ``max_concurrent`` requests in flight
        this waits for a free id.
        """
        role = Role(role)
        if role is Role.AUTHORIZER and not (isinstance(stdin, bytes) and not stdin):
            raise ValueError("an Authorizer request has no stdin")
        if role is not Role.FILTER and data is not None:
            raise ValueError("only a Filter request has a data stream")
        pairs = _param_pairs(params)
        request_id = await self._allocate_id()
        state = _RequestState(request_id, self._stdout_buffer_size, max_stderr_size)
        self._requests[request_id] = state
        head = self._conn.begin_request(request_id, role, keep_conn=keep_conn)
        head += self._conn.params(request_id, pairs)
        try:
            await self._send(head)
        except BaseException:
            # None of it went out: the id is free again.
            del self._requests[request_id]
            self._conn.forget_request(request_id)
            self._free_id(request_id)
            raise
        if not keep_conn:
            self._last_request = request_id
        if role is not Role.AUTHORIZER:
            assert self._nursery is not None
            try:
                self._nursery.start_soon(
                    self._feed_input, state, role, stdin, b"" if data is None else data
                )
            except RuntimeError:
                # The connection's tasks have ended (the application closed
                # it) between sending the head and starting the input.
                del self._requests[request_id]
                self._conn.forget_request(request_id)
                self._free_id(request_id)
                raise trio.BrokenResourceError(
                    "the FastCGI application closed the connection"
                ) from None
        try:
            yield ActiveRequest(self, state)
        finally:
            state.input_scope.cancel()
            if not state.finished:
                state.discard_output()
                self._abort_nowait(state)
        if (
            state.error is not None
            and not state.error_seen
            and not isinstance(
                state.error,
                (trio.BrokenResourceError, trio.ClosedResourceError, ServerProtocolError),
            )
        ):
            # The stdin iterable failed or stderr overflowed, and nothing told
            # the caller yet.
            state.raise_error()

    async def request(
        self,
        params: ParamsArg = (),
        stdin: BodyArg = b"",
        *,
        role: Role = Role.RESPONDER,
        data: BodyArg | None = None,
        keep_conn: bool = True,
        max_size: int | None = None,
        max_stderr_size: int = DEFAULT_MAX_STDERR_SIZE,
    ) -> Response:
        """Send a request and return its whole :class:`Response`.

        Arguments as for :meth:`open_request`; *max_size* limits stdout
        (:class:`ResponseTooLarge`). Cancelling the call aborts the request.
        """
        async with self.open_request(
            params,
            stdin,
            role=role,
            data=data,
            keep_conn=keep_conn,
            max_stderr_size=max_stderr_size,
        ) as active:
            return await active.receive_response(max_size=max_size)

    async def get_values(
        self, names: Iterable[str] = ("FCGI_MAX_CONNS", "FCGI_MAX_REQS", "FCGI_MPXS_CONNS")
    ) -> dict[str, str]:
        """Ask ``FCGI_GET_VALUES``; return the values the application knows.

        Raises:
          GetValuesUnsupported: it answered ``FCGI_UNKNOWN_TYPE``.
        """
        record = self._conn.get_values([_encode(name) for name in names])
        self._check_usable()
        waiter = _ValuesWaiter()
        self._values_waiters.append(waiter)
        try:
            await self._send(record)
        except BaseException:
            self._values_waiters.remove(waiter)
            raise
        # Cancelled from here on, the waiter stays queued and takes the answer
        # when it comes, which keeps answers matched to questions in order.
        await waiter.done.wait()
        if waiter.error is not None:
            raise _copy_error(waiter.error)
        assert waiter.values is not None
        return waiter.values

    async def aclose(self) -> None:
        """Close the connection. Requests in flight fail with
        :class:`trio.ClosedResourceError`."""
        if not self._closed:
            self._closed = True
            self._fail(trio.ClosedResourceError("the FastCGI client was closed"))
            self._task_scope.cancel()
        await trio.aclose_forcefully(self.stream)

    # -- internals -----------------------------------------------------------

    async def _feed_input(
        self, state: _RequestState, role: Role, stdin: BodyArg, data: BodyArg
    ) -> None:
        conn = self._conn
        request_id = state.request_id
        with state.input_scope:
            try:
                await self._feed_stream(state, stdin, partial(conn.stdin, request_id))
                if role is Role.FILTER:
                    await self._feed_stream(state, data, partial(conn.data, request_id))
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return  # the connection failed, and every request knows
            except Exception as exc:
                self._abort_nowait(state)
                state.fail(exc)

    async def _feed_stream(
        self, state: _RequestState, body: BodyArg, encode: Callable[[bytes], bytes]
    ) -> None:
        # state.finished is checked right before each encode: once the request
        # has ended, its id may belong to a new request.
        if isinstance(body, (bytes, bytearray, memoryview)):
            view = memoryview(body)
            for start in range(0, len(view), INPUT_PIECE_SIZE):
                if state.finished:
                    return
                await self._send(encode(bytes(view[start : start + INPUT_PIECE_SIZE])))
        else:
            async for chunk in body:
                if not isinstance(chunk, (bytes, bytearray, memoryview)):
                    raise TypeError(
                        f"a request body iterable must yield bytes, not {type(chunk).__name__}"
                    )
                if state.finished:
                    return
                if chunk:
                    await self._send(encode(bytes(chunk)))
        if not state.finished:
            await self._send(encode(b""))

    def _abort_record(self, state: _RequestState) -> bytes | None:
        if state.aborted or state.finished or self._error is not None:
            return None
        state.aborted = True
        return self._conn.abort_request(state.request_id)

    def _abort_nowait(self, state: _RequestState) -> None:
        record = self._abort_record(state)
        if record is not None:
            self._send_soon(record)

    async def _abort(self, state: _RequestState) -> None:
        record = self._abort_record(state)
        if record is None:
            await trio.lowlevel.checkpoint()
        else:
            await self._send(record)


def _unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception inside the one-exception group that a context manager's
    own nursery wraps around its body's error, so that ``async with
    open_client(...)`` raises the body's errors as they were raised."""
    exceptions: tuple[BaseException, ...] = group.exceptions
    return exceptions[0] if len(exceptions) == 1 else group


@contextlib.asynccontextmanager
async def _running(client: Client) -> AsyncIterator[Client]:
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(client._run)
            try:
                yield client
            finally:
                await client.aclose()
    except BaseExceptionGroup as group:
        raise _unwrap(group) from None


@contextlib.asynccontextmanager
async def open_client(
    stream: trio.abc.Stream,
    *,
    max_concurrent: int | None = None,
    stdout_buffer_size: int = DEFAULT_STDOUT_BUFFER_SIZE,
) -> AsyncIterator[Client]:
    """A :class:`Client` on an open *stream*; the stream is closed on exit.
    Same as ``async with Client(stream, ...) as client``.

    Args:
      max_concurrent: the most requests in flight at once; more wait for an
        id. Use 1 for applications that do not multiplex (php-fpm answers
        ``FCGI_MPXS_CONNS`` ``0``: see :meth:`Client.get_values`).
      stdout_buffer_size: unread stdout bytes kept per streamed request.
    """
    client = Client(stream, max_concurrent=max_concurrent, stdout_buffer_size=stdout_buffer_size)
    async with _running(client):
        yield client


@contextlib.asynccontextmanager
async def open_tcp_client(
    host: str | bytes,
    port: int,
    *,
    max_concurrent: int | None = None,
    stdout_buffer_size: int = DEFAULT_STDOUT_BUFFER_SIZE,
) -> AsyncIterator[Client]:
    """Connect to a FastCGI application on TCP *host*:*port*.

    Raises:
      OSError: the connection failed (e.g. :class:`ConnectionRefusedError`).
    """
    stream = await trio.open_tcp_stream(host, port)
    async with open_client(
        stream, max_concurrent=max_concurrent, stdout_buffer_size=stdout_buffer_size
    ) as client:
        yield client


@contextlib.asynccontextmanager
async def open_unix_client(
    path: str | os.PathLike[str],
    *,
    max_concurrent: int | None = None,
    stdout_buffer_size: int = DEFAULT_STDOUT_BUFFER_SIZE,
) -> AsyncIterator[Client]:
    """Connect to a FastCGI application on the unix socket *path*.

    Raises:
      OSError: the connection failed (e.g. :class:`FileNotFoundError`).
    """
    stream = await trio.open_unix_socket(os.fspath(path))
    async with open_client(
        stream, max_concurrent=max_concurrent, stdout_buffer_size=stdout_buffer_size
    ) as client:
        yield client


# -- command line ----------------------------------------------------------------

_PROG: Final = "python -m trio_fastcgi.client"
_EPILOG: Final = """\
ADDRESS is HOST:PORT, [IPV6]:PORT, or the path of a unix socket (anything
with a "/" in it, or unix:PATH). PATH (default /) may carry a ?query; it
gives SCRIPT_FILENAME, SCRIPT_NAME, DOCUMENT_URI, REQUEST_URI and
QUERY_STRING. The usual CGI params are filled in (REQUEST_METHOD,
SERVER_PROTOCOL, GATEWAY_INTERFACE, SERVER_NAME/PORT, REMOTE_ADDR,
CONTENT_LENGTH of the body); --env values replace them, -p replaces both.

The application's stdout is written to stdout as it arrives (CGI headers
included, unless --body-only), its stderr to stderr.

exit status: the application's appStatus (0 if it succeeded; values above 255
give 255), or: 2 bad usage, 65 --body-only and stdout is no CGI response,
69 cannot connect, 74 connection lost before the end of the request,
75 request refused (FCGI_OVERLOADED, FCGI_CANT_MPX_CONN, FCGI_UNKNOWN_ROLE),
76 FastCGI protocol violation by the application, 124 --timeout passed.
"""
EXIT_DATAERR: Final = 65
EXIT_UNAVAILABLE: Final = 69
EXIT_IOERR: Final = 74
EXIT_REFUSED: Final = 75
EXIT_PROTOCOL: Final = 76
EXIT_TIMEOUT: Final = 124
_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})


def parse_address(text: str) -> tuple[str, int] | str:
    """``HOST:PORT`` / ``[IPV6]:PORT`` -> (host, port); a socket path -> str.

    Raises:
      ValueError: neither form.
    """
    if text.startswith("unix:"):
        return text[5:]
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep or not host:
            raise ValueError(f"bad address {text!r}: expected [IPV6]:PORT")
    elif "/" in text:
        return text
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(
                f"bad address {text!r}: expected HOST:PORT, [IPV6]:PORT or a unix socket path"
            )
        host = host or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad port in address {text!r}")
    return host, int(port)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="Send one FastCGI request (like libfcgi's cgi-fcgi) and print the response.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("address", metavar="ADDRESS", help="where the application listens")
    parser.add_argument("path", metavar="PATH", nargs="?", help="the script path, with ?query")
    parser.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a FastCGI param (repeatable)",
    )
    parser.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="an HTTP request header, sent as HTTP_NAME (Content-Type as CONTENT_TYPE)",
    )
    parser.add_argument("--env", action="store_true", help="send the environment as params")
    parser.add_argument("-X", "--method", help="REQUEST_METHOD (default GET, or POST with a body)")
    body = parser.add_mutually_exclusive_group()
    body.add_argument(
        "--stdin",
        action="store_true",
        help="send standard input as the body (the default for -X POST/PUT/PATCH)",
    )
    body.add_argument("-d", "--data", metavar="TEXT", help="send TEXT as the body")
    parser.add_argument(
        "--role",
        choices=[role.name.lower() for role in Role],
        default="responder",
        help="the FastCGI role (default responder)",
    )
    parser.add_argument(
        "--filter-data",
        metavar="FILE",
        help="Filter role: the file sent as FCGI_DATA (sets FCGI_DATA_LENGTH/LAST_MOD)",
    )
    parser.add_argument(
        "--get-values",
        nargs="*",
        metavar="NAME",
        help="ask FCGI_GET_VALUES (default: the three standard names) and print NAME=VALUE lines",
    )
    parser.add_argument(
        "--body-only",
        action="store_true",
        help="parse the CGI response and print only its body",
    )
    parser.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="give up after SECONDS (exit 124)"
    )
    return parser


def _cli_params(
    args: argparse.Namespace, body: bytes | None, environ: Mapping[str, str]
) -> list[tuple[str, str]]:
    path = args.path or "/"
    script, _, query = path.partition("?")
    method = (args.method or ("POST" if body is not None else "GET")).upper()
    params: dict[str, str] = {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_SOFTWARE": "trio-fastcgi-client",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "localhost",
        "SERVER_ADDR": "127.0.0.1",
        "SERVER_PORT": "80",
        "REMOTE_ADDR": "127.0.0.1",
        "REQUEST_SCHEME": "http",
        "REQUEST_METHOD": method,
        "REQUEST_URI": path,
        "DOCUMENT_URI": script,
        "SCRIPT_NAME": script,
        "QUERY_STRING": query,
    }
    if args.path:
        params["SCRIPT_FILENAME"] = script
    if body is not None:
        params["CONTENT_LENGTH"] = str(len(body))
    role = Role[args.role.upper()]
    if role is Role.AUTHORIZER:
        for name in ("CONTENT_LENGTH", "SCRIPT_NAME"):
            params.pop(name, None)
    if args.env:
        params.update(environ)
    for header in args.header:
        name, colon, value = header.partition(":")
        if not colon or not name.strip():
            raise ValueError(f"bad header {header!r}: expected 'NAME: VALUE'")
        key = name.strip().upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        params[key] = value.strip()
    for item in args.param:
        name, equals, value = item.partition("=")
        if not equals or not name:
            raise ValueError(f"bad param {item!r}: expected NAME=VALUE")
        params[name] = value
    return list(params.items())


def _describe_os_error(exc: OSError) -> str:
    # trio.open_tcp_stream raises "all attempts ... failed" from a group of the
    # real errors; name the real reason when there is one.
    cause = exc.__cause__
    while isinstance(cause, BaseExceptionGroup) and len(cause.exceptions) == 1:
        cause = cause.exceptions[0]
    for error in (cause, exc):
        if isinstance(error, OSError) and error.errno:
            return os.strerror(error.errno)
    return str(exc)


def _error(message: str) -> None:
    print(f"{_PROG}: {message}", file=sys.stderr)


async def _open_stream(address: tuple[str, int] | str) -> trio.abc.Stream:
    if isinstance(address, str):
        return await trio.open_unix_socket(address)
    return await trio.open_tcp_stream(*address)


async def _cli(
    args: argparse.Namespace,
    address: tuple[str, int] | str,
    params: list[tuple[str, str]],
    body: bytes | None,
    data: bytes | None,
) -> int:
    if isinstance(address, str):
        label = address
    else:
        host, port = address
        label = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        stream = await _open_stream(address)
    except OSError as exc:
        _error(f"cannot connect to {label}: {_describe_os_error(exc)}")
        return EXIT_UNAVAILABLE
    out = sys.stdout.buffer
    try:
        async with open_client(stream) as client:
            if args.get_values is not None:
                names = args.get_values or ["FCGI_MAX_CONNS", "FCGI_MAX_REQS", "FCGI_MPXS_CONNS"]
                for name, value in (await client.get_values(names)).items():
                    out.write(f"{name}={value}\n".encode("utf-8", "surrogateescape"))
                out.flush()
                return 0
            role = Role[args.role.upper()]
            async with client.open_request(
                params, body or b"", role=role, data=data, keep_conn=False
            ) as request:
                if args.body_only:
                    response = await request.receive_response()
                else:
                    async for chunk in request.stdout:
                        out.write(chunk)
                        out.flush()
                    response = await request.receive_response()
                sys.stderr.buffer.write(response.stderr)
                sys.stderr.buffer.flush()
    except ServerProtocolError as exc:
        _error(f"protocol error from {label}: {exc}")
        return EXIT_PROTOCOL
    except GetValuesUnsupported as exc:
        _error(f"{label}: {exc}")
        return EXIT_PROTOCOL
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        _error(f"connection to {label} lost: {exc}")
        return EXIT_IOERR
    if response.protocol_status is not ProtocolStatus.REQUEST_COMPLETE:
        _error(f"{label} refused the request: FCGI_{response.protocol_status.name}")
        return EXIT_REFUSED
    if args.body_only:
        try:
            cgi = response.parse_cgi()
        except CGIResponseError as exc:
            _error(f"--body-only: {exc}")
            return EXIT_DATAERR
        out.write(cgi.body)
        out.flush()
    return min(response.app_status, 255)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``python -m trio_fastcgi.client`` command; returns the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        address = parse_address(args.address)
    except ValueError as exc:
        parser.error(str(exc))
    role = Role[args.role.upper()]
    if role is Role.AUTHORIZER and (args.stdin or args.data is not None):
        parser.error("an Authorizer request has no body")
    if role is not Role.FILTER and args.filter_data is not None:
        parser.error("--filter-data needs --role filter")
    body: bytes | None = None
    if args.data is not None:
        body = args.data.encode("utf-8", "surrogateescape")
    elif args.stdin or (args.method or "").upper() in _BODY_METHODS:
        body = sys.stdin.buffer.read()
    data: bytes | None = None
    environ = dict(os.environ)
    if args.filter_data is not None:
        try:
            with open(args.filter_data, "rb") as file:
                data = file.read()
                mtime = os.fstat(file.fileno()).st_mtime
        except OSError as exc:
            parser.error(f"--filter-data: {exc}")
        environ_extra = {"FCGI_DATA_LENGTH": str(len(data)), "FCGI_DATA_LAST_MOD": str(int(mtime))}
        args.param[:0] = [f"{name}={value}" for name, value in environ_extra.items()]
    try:
        params = _cli_params(args, body, environ)
    except ValueError as exc:
        parser.error(str(exc))

    async def run() -> int:
        if args.timeout is None:
            return await _cli(args, address, params, body, data)
        with trio.move_on_after(args.timeout):
            return await _cli(args, address, params, body, data)
        _error(f"no complete response within {args.timeout} s")
        return EXIT_TIMEOUT

    try:
        return trio.run(run)
    except BrokenPipeError:
        # Our stdout was closed early (e.g. piped into head): not an error of
        # the application. Point stdout at /dev/null so exiting does not fail.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
