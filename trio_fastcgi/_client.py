"""The client's connection: :class:`Client` (request ids, the reader task, the
shared :class:`~trio_fastcgi._sender.Sender` for output, multiplexed requests
over one stream) and the ``open_*`` functions that make one."""

from __future__ import annotations

import contextlib
import heapq
import os
import sys
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from functools import partial
from types import TracebackType
from typing import Final, TypeAlias, final

import trio

from ._client_connection import FastCGIClientConnection, ServerProtocolError
from ._client_errors import GetValuesUnsupported, ResponseTooLarge, copy_error
from ._client_streams import ActiveRequest, ClientRequestState, Response
from ._events import (
    NEED_DATA,
    ConnectionClosed,
    EndRequest,
    GetValuesResult,
    Stderr,
    Stdout,
    UnknownType,
)
from ._sender import Sender
from ._transport import open_transport
from ._wire import MAX_ALIGNED_CONTENT_LEN, RecordType, Role

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found,unused-ignore]

__all__ = [
    "DEFAULT_MAX_STDERR_SIZE",
    "DEFAULT_STDOUT_BUFFER_SIZE",
    "MAX_CONCURRENT_REQUESTS",
    "BodyArg",
    "Client",
    "ParamsArg",
    "open_client",
    "open_tcp_client",
    "open_unix_client",
]

#: Params as a mapping, or ``(name, value)`` pairs (str or bytes; str is
#: encoded as UTF-8 with ``surrogateescape``). Pairs keep order and duplicates.
ParamsArg: TypeAlias = (
    Mapping[str, str] | Mapping[bytes, bytes] | Iterable[tuple[str | bytes, str | bytes]]
)
#: The request body, as bytes or an async iterable of byte chunks (streamed).
BodyArg: TypeAlias = bytes | bytearray | memoryview | AsyncIterable[bytes]

RECEIVE_SIZE: Final = 256 * 1024
#: Stdin/data go to the sender in pieces of this size (four full records), so a
#: huge body does not sit in the queue at once.
INPUT_PIECE_SIZE: Final = 4 * MAX_ALIGNED_CONTENT_LEN
#: Unread stdout of one request kept before the reader stops reading the
#: connection (which pushes back on the application, and on every other
#: request of the connection: read what you stream).
DEFAULT_STDOUT_BUFFER_SIZE: Final = 256 * 1024
#: Stderr of one request kept; more fails the request with ResponseTooLarge.
DEFAULT_MAX_STDERR_SIZE: Final = 1024 * 1024
MAX_CONCURRENT_REQUESTS: Final = 0xFFFF


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

    Output goes out from the task that sends it when nothing is queued and
    the stream is a plain :class:`trio.SocketStream` (the client drives its
    socket through a duplicate of the file descriptor, so the stream itself
    stays as it was); otherwise, or when the socket is full, a writer task
    sends it in order.

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
        # The stream stays the caller's: a socket is driven through a duplicate.
        self._transport = open_transport(stream, borrow=True)
        self._conn = FastCGIClientConnection()
        self._limit = max_concurrent or MAX_CONCURRENT_REQUESTS
        self._stdout_buffer_size = stdout_buffer_size
        self._requests: dict[int, ClientRequestState] = {}
        self._free_ids: list[int] = []
        # Ids of aborted requests are used again only when no other is left:
        # some applications (Go's net/http/fcgi) still send output and a
        # second FCGI_END_REQUEST for an id after answering its abort.
        self._quarantined: deque[int] = deque()
        self._next_id = 1
        self._id_waiters = trio.lowlevel.ParkingLot()
        self._sender = Sender(self._transport, fail=self._send_failed)
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
            raise copy_error(self._error)

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The reader task, and the sender's writer task when output waits,
        until :meth:`aclose`."""
        with self._task_scope:
            async with trio.open_nursery() as nursery:
                self._nursery = self._sender.nursery = nursery
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

    async def _send(self, data: bytes | Callable[[], bytes | None]) -> None:
        """Send *data*, or the bytes that *data()* makes once the sender has
        room (None: nothing to send)."""
        try:
            if isinstance(data, bytes):
                await self._sender.send_all(data)
            else:
                await self._sender.send_made(data)
        except trio.BrokenResourceError:
            self._check_usable()
            raise trio.ClosedResourceError("the FastCGI client is closed") from None

    def _send_soon(self, data: bytes) -> None:
        """Send *data* without waiting (for cleanup code, which must not block)."""
        self._sender.send_soon(data)

    def _send_failed(self, exc: BaseException) -> None:
        if not self._closed:
            self._fail(
                trio.BrokenResourceError(f"sending to the FastCGI application failed: {exc!r}")
            )

    # -- receiving -----------------------------------------------------------

    async def _read_loop(self) -> None:
        conn = self._conn
        while True:
            try:
                data = await self._transport.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                if not self._closed:
                    self._fail(
                        trio.BrokenResourceError(
                            f"receiving from the FastCGI application failed: {exc!r}"
                        )
                    )
                return
            assert data is not None  # no deadline
            try:
                conn.receive_data(data)
                while (event := conn.next_event()) is not NEED_DATA:
                    if isinstance(event, ConnectionClosed):
                        self._peer_closed()
                        return
                    await self._dispatch(event)
            except ServerProtocolError as exc:
                self._fail(exc)
                await self._close_transport()
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
        self._sender.close()

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
        state = ClientRequestState(request_id, self._stdout_buffer_size, max_stderr_size)
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
            raise copy_error(waiter.error)
        assert waiter.values is not None
        return waiter.values

    async def aclose(self) -> None:
        """Close the connection. Requests in flight fail with
        :class:`trio.ClosedResourceError`."""
        if not self._closed:
            self._closed = True
            self._fail(trio.ClosedResourceError("the FastCGI client was closed"))
            self._task_scope.cancel()
        await self._close_transport()

    async def _close_transport(self) -> None:
        transport = self._transport
        await transport.close()
        if transport.socket is not None:
            # The duplicate is closed; now the stream itself.
            await trio.aclose_forcefully(self.stream)

    # -- internals -----------------------------------------------------------

    async def _feed_input(
        self, state: ClientRequestState, role: Role, stdin: BodyArg, data: BodyArg
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
        self, state: ClientRequestState, body: BodyArg, encode: Callable[[bytes], bytes]
    ) -> None:
        # Each record is made only once the sender has room, and not at all if
        # the request has ended by then: while a send waited, the application
        # may have ended the request (answered without reading its stdin, say)
        # and its id gone to a new request, which must not get this input.
        def record(piece: bytes) -> Callable[[], bytes | None]:
            return lambda: None if state.finished else encode(piece)

        if isinstance(body, (bytes, bytearray, memoryview)):
            view = memoryview(body)
            for start in range(0, len(view), INPUT_PIECE_SIZE):
                if state.finished:
                    return
                await self._send(record(bytes(view[start : start + INPUT_PIECE_SIZE])))
        else:
            async for chunk in body:
                if not isinstance(chunk, (bytes, bytearray, memoryview)):
                    raise TypeError(
                        f"a request body iterable must yield bytes, not {type(chunk).__name__}"
                    )
                if state.finished:
                    return
                if chunk:
                    await self._send(record(bytes(chunk)))
        await self._send(record(b""))

    def _abort_record(self, state: ClientRequestState) -> bytes | None:
        if state.aborted or state.finished or self._error is not None:
            return None
        state.aborted = True
        return self._conn.abort_request(state.request_id)

    def _abort_nowait(self, state: ClientRequestState) -> None:
        record = self._abort_record(state)
        if record is not None:
            self._send_soon(record)

    async def _abort(self, state: ClientRequestState) -> None:
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
