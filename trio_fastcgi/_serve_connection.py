"""One FastCGI connection on Trio: a reader, a writer, a cancel scope per request.

Task tree of one connection::

    connection nursery   its cancel scope closes the whole connection
    ├── writer task      sole sender on the transport; drains the outbox
    ├── reader task      sole receiver on the transport; feeds the core
    └── request task (N) one per request, handler inside request.cancel_scope

Request tasks never touch the socket: they put output events on the outbox (a
bounded memory channel), and the writer turns each into whole records with the
sans-IO core and coalesces everything queued into one ``send_all``. Because the
core's per-request state is only changed by the writer, in outbox order, what it
knows always matches what went on the wire.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import logging
import math
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, final

import trio

from ._connection import FastCGIConnection
from ._events import (
    NEED_DATA,
    AbortRequest,
    BeginRequest,
    ConnectionClosed,
    Data,
    EndRequest,
    GetValues,
    InputEvent,
    OutputEvent,
    Params,
    RequestRejected,
    Stdin,
    UnknownRecord,
    UnknownType,
)
from ._exceptions import EndRequestWith, LocalProtocolError, RemoteProtocolError
from ._request import Request, format_cgi_head
from ._streams import InputStream, queue_output
from ._transport import Transport, WriteTimeout, close_socket
from ._wire import ProtocolStatus

if TYPE_CHECKING:
    from ._config import Config

LOGGER: Final = logging.getLogger("trio_fastcgi")

#: A handler: ``async def handler(request) -> int | None``; the int is the
#: appStatus of FCGI_END_REQUEST, None means 0.
Handler = Callable[[Request], Awaitable["int | None"]]

RECEIVE_SIZE: Final = 256 * 1024
#: Output events queued per connection before request tasks wait for the writer.
OUTBOX_SIZE: Final = 32
#: The writer stops gathering queued records into one send at this many bytes.
COALESCE_LIMIT: Final = 256 * 1024
#: Below this many bytes the writer joins what it gathered and sends it; above,
#: it hands the pieces to one scatter-gather write instead of copying them.
GATHER_THRESHOLD: Final = 64 * 1024
#: After our half-close, how long we read and discard what the web server still
#: sends before closing: closing with unread input makes the kernel send RST,
#: and the web server may then drop the response it has not read yet.
DRAIN_TIMEOUT: Final = 5.0
#: On graceful shutdown, how long a connection that has not begun a request yet
#: (accepted just before the shutdown) waits for its first one before closing.
FIRST_REQUEST_WAIT: Final = 2.0
#: Sent when a handler fails before writing anything, so the client gets a
#: clean 500 instead of the web server's "upstream closed prematurely" 502.
_ERROR_RESPONSE: Final = (
    format_cgi_head(500, [("Content-Type", "text/plain; charset=utf-8")])
    + b"Internal Server Error\n"
)
_MAX_APP_STATUS: Final = 0xFFFFFFFF


class _After(enum.Enum):
    """What the reader does once its deadline has passed."""

    CONTINUE = "continue"
    CLOSE = "close"
    HIBERNATE = "hibernate"


@final
class ServedConnection:
    """Serves FastCGI on one open stream until it closes."""

    __slots__ = (
        "_begun_any",
        "_cancelled",
        "_carried",
        "_closing",
        "_config",
        "_conn",
        "_drain_deadline",
        "_handler",
        "_hibernate_after",
        "_idle_closing",
        "_idle_since",
        "_mid_input_since",
        "_number",
        "_nursery",
        "_outbox",
        "_outbox_receiver",
        "_pending",
        "_reader_scope",
        "_refusals",
        "_requests",
        "_shutdown_at",
        "_shutting_down",
        "_transport",
        "_writer_done",
    )

    _ids = itertools.count(1)

    def __init__(
        self,
        handler: Handler,
        transport: Transport,
        config: Config,
        *,
        hibernate_after: float | None = None,
    ) -> None:
        self._number = next(self._ids)
        self._hibernate_after = hibernate_after if transport.socket is not None else None
        self._handler = handler
        self._transport = transport
        transport.write_timeout = config.write_timeout
        self._config = config
        self._conn = FastCGIConnection(
            roles=config.roles,
            max_conns=config.max_conns,
            max_reqs=config.max_reqs,
            mpxs_conns=config.mpxs_conns,
            max_params_size=config.max_params_size,
        )
        # The outbox (self._outbox, self._outbox_receiver) exists while the
        # connection runs: run() makes it, hibernation drops it.
        # Requests whose handler runs, and ones that began but wait for params.
        self._requests: dict[int, Request] = {}
        self._pending: dict[int, BeginRequest] = {}
        self._nursery: trio.Nursery | None = None
        self._cancelled = False
        self._writer_done = False
        self._shutting_down = False
        self._shutdown_at = math.inf
        self._begun_any = False
        self._refusals = 0
        self._idle_closing = False
        self._closing = False  # the writer has half-closed; the reader drains
        self._drain_deadline = math.inf
        self._reader_scope: trio.CancelScope | None = None
        self._carried: bytes | None = None
        self._idle_since = trio.current_time()
        self._mid_input_since: float | None = None

    @property
    def name(self) -> str:
        """``conn-N``, how log lines name this connection."""
        return f"conn-{self._number}"

    def __repr__(self) -> str:
        return f"<ServedConnection {self.name}>"

    async def run(self) -> bool:
        """Serve until the connection ends (False), or until it has been idle
        for ``hibernate_after`` seconds (True): then its tasks end and the
        connection stays open, to be run again when its socket is readable
        or its next deadline (:meth:`wake_deadline`) comes. Never raises for
        peer behaviour."""
        hibernating = wants_sleep = False
        try:
            async with trio.open_nursery() as nursery:
                self._outbox, self._outbox_receiver = trio.open_memory_channel[OutputEvent | None](
                    OUTBOX_SIZE
                )
                self._nursery = nursery
                self._writer_done = False
                if self._cancelled:
                    nursery.cancel_scope.cancel()
                nursery.start_soon(self._write_loop, name="trio_fastcgi.writer")
                wants_sleep = await self._read_loop()
                if not self._writer_done or self._requests:
                    nursery.cancel_scope.cancel()
            hibernating = wants_sleep and not self._cancelled
        finally:
            self._nursery = None
            if not hibernating:
                for request in self._requests.values():
                    request._close_input()
                await self._transport.close()
                LOGGER.debug("%s: closed", self.name)
        if hibernating:
            del self._outbox, self._outbox_receiver  # empty, and made anew by run()
            LOGGER.debug("%s: idle; hibernating", self.name)
        return hibernating

    @property
    def socket(self) -> socket.socket | None:
        """The connection's socket, if it is driven directly."""
        return self._transport.socket

    def wake_deadline(self) -> float:
        """When a hibernating connection must run again to act on a timeout."""
        return self._timeout_deadline()

    def abandon(self) -> None:
        """Close a hibernating connection at once (its server is going away)."""
        sock = self._transport.socket
        if sock is not None:
            close_socket(sock)

    def cancel(self) -> None:
        """Cancel every request and close the connection now."""
        self._cancelled = True
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def begin_shutdown(self) -> None:
        """Finish the requests in flight, then close. New requests that arrive
        meanwhile are still served.

        A connection that has not begun a request yet was accepted just now and
        its first request is on the way: it gets FIRST_REQUEST_WAIT seconds to
        arrive before the connection is closed, so that it is not refused.
        """
        self._shutting_down = True
        self._shutdown_at = trio.current_time()
        self._update_reader_deadline()
        self._wake_writer()

    # -- reading -----------------------------------------------------------------
    #
    # The reader runs inside one cancel scope whose deadline is the earliest
    # timeout that may apply (idle, read, drain, shutdown). Opening a scope per
    # receive would cost more than the receive itself, so the deadline is lazy:
    # it is not moved when a request begins or ends, and when it passes the
    # reader checks what actually timed out, if anything, and carries on in a
    # fresh scope. The reader's own waits that are not reads (a full stdin
    # buffer, a full outbox) lift the deadline while they last.

    def _deadline(self) -> float:
        deadline = self._timeout_deadline()
        if self._hibernate_after is not None and not self._shutting_down:
            # Lazy like the rest: checked by _deadline_passed when it comes.
            deadline = min(deadline, self._idle_since + self._hibernate_after)
        return deadline

    def _timeout_deadline(self) -> float:
        config = self._config
        if self._closing:
            return self._drain_deadline
        if self._idle_closing:
            return math.inf  # waiting for the writer to flush and half-close
        if self._mid_input_since is not None and config.read_timeout is not None:
            return self._mid_input_since + config.read_timeout
        deadline = (
            math.inf if config.idle_timeout is None else self._idle_since + config.idle_timeout
        )
        if self._shutting_down and not self._begun_any:
            deadline = min(deadline, self._shutdown_at + FIRST_REQUEST_WAIT)
        return deadline

    def _update_reader_deadline(self) -> None:
        if self._reader_scope is not None:
            self._reader_scope.deadline = self._deadline()

    async def _read_loop(self) -> bool:
        """Read until the connection is done (False) or may hibernate (True)."""
        while True:
            with trio.CancelScope(deadline=self._deadline()) as scope:
                self._reader_scope = scope
                if await self._read_until_deadline(scope):
                    return False
            self._reader_scope = None
            if self._carried is not None:
                continue
            after = self._deadline_passed()
            if after is not _After.CONTINUE:
                return after is _After.HIBERNATE

    async def _read_until_deadline(self, scope: trio.CancelScope) -> bool:
        """Receive and dispatch until the connection is done (True) or the
        deadline passed (False, or Cancelled while receiving)."""
        transport = self._transport
        while True:
            data = self._carried
            if data is None:
                try:
                    data = await transport.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    LOGGER.debug("%s: receive failed (%r); peer is gone", self.name, exc)
                    return True
                if scope.cancel_called:
                    # The deadline passed just as data came: it is handled in a
                    # fresh scope, where waiting for room cannot be cancelled.
                    self._carried = data
                    return False
            else:
                self._carried = None
            if await self._received(data):
                return True

    def _deadline_passed(self) -> _After:
        """The reader's deadline passed: act on whatever timed out."""
        config = self._config
        if self._closing:
            return _After.CLOSE  # the peer did not close within DRAIN_TIMEOUT
        now = trio.current_time()
        mid_input_since = self._mid_input_since
        if (
            mid_input_since is not None
            and config.read_timeout is not None
            and now >= mid_input_since + config.read_timeout
        ):
            LOGGER.warning(
                "%s: closing connection: a record or params took longer than read_timeout (%s s)",
                self.name,
                config.read_timeout,
            )
            return _After.CLOSE
        if self._requests or self._pending:
            self._idle_since = now  # busy, not idle: re-arm a full period
        elif self._idle_closing:
            pass
        elif now >= self._timeout_deadline():
            if self._shutting_down and not self._begun_any:
                LOGGER.debug("%s: no request came after shutdown began; closing", self.name)
            else:
                LOGGER.debug(
                    "%s: idle for idle_timeout (%s s); closing", self.name, config.idle_timeout
                )
            self._idle_closing = True
            self._wake_writer()
        elif self._may_hibernate(now):
            return _After.HIBERNATE
        return _After.CONTINUE

    def _may_hibernate(self, now: float) -> bool:
        after = self._hibernate_after
        return (
            after is not None
            and now >= self._idle_since + after
            and not self._shutting_down
            and self._mid_input_since is None
            and not self._conn.has_partial_record
            and self._conn.idle
            and self._writer_is_waiting()
        )

    def _writer_is_waiting(self) -> bool:
        """True if the writer has sent everything and waits for more."""
        statistics = self._outbox_receiver.statistics()
        return statistics.current_buffer_used == 0 and statistics.tasks_waiting_receive == 1

    async def _received(self, data: bytes) -> bool:
        """Feed one chunk to the core and act on its events; True means stop."""
        if self._closing:
            return not data  # draining: done at end of file
        conn = self._conn
        self._idle_since = trio.current_time()
        conn.receive_data(data)
        progressed = False
        try:
            while (event := conn.next_event()) is not NEED_DATA:
                progressed = True
                if await self._dispatch(event):
                    return True
        except RemoteProtocolError as exc:
            LOGGER.warning("%s: closing connection: %s", self.name, exc)
            return True
        # read_timeout runs while a record (or a request's params) is partly
        # here, from the last time one was completed.
        if conn.has_partial_record or self._pending:
            if progressed or self._mid_input_since is None:
                self._mid_input_since = trio.current_time()
                self._update_reader_deadline()
        else:
            self._mid_input_since = None  # the deadline may stay early: it is lazy
        return False

    async def _feed(self, stream: InputStream, data: bytes) -> None:
        """Pass input to a request's stream; a full buffer lifts the deadline."""
        if not stream._offer(data):
            await self._without_deadline(stream._feed(data))

    async def _put(self, event: OutputEvent) -> None:
        """Queue output from the reader; a full outbox lifts the deadline."""
        try:
            self._outbox.send_nowait(event)
        except trio.WouldBlock:
            await self._without_deadline(self._outbox.send(event))

    async def _without_deadline(self, wait: Awaitable[None]) -> None:
        scope = self._reader_scope
        assert scope is not None
        scope.deadline = math.inf
        try:
            await wait
        finally:
            scope.deadline = self._deadline()

    async def _dispatch(self, event: InputEvent) -> bool:
        """Act on one input event; True means stop reading."""
        match event:
            case Stdin(request_id, data):
                request = self._requests.get(request_id)
                if request is not None:
                    await self._feed(request.stdin, data)
            case Params():
                self._start_request(event)
            case BeginRequest(request_id):
                self._pending[request_id] = event
                self._begun_any = True
            case Data(request_id, data):
                request = self._requests.get(request_id)
                if request is not None:
                    await self._feed(request.data, data)
            case AbortRequest(request_id):
                await self._abort(request_id)
            case RequestRejected(request_id, protocol_status, role):
                # The first refusal is news; a flood of them must not flood the log.
                self._refusals += 1
                LOGGER.log(
                    logging.INFO if self._refusals == 1 else logging.DEBUG,
                    "%s: refused request %d (role %d): %s",
                    self.name,
                    request_id,
                    role,
                    protocol_status.name,
                )
                await self._put(EndRequest(request_id, 0, protocol_status))
            case GetValues(names):
                await self._put(self._conn.get_values_result(names))
            case UnknownRecord(record_type, request_id):
                LOGGER.debug(
                    "%s: unknown record type %d (request %d)", self.name, record_type, request_id
                )
                await self._put(UnknownType(record_type))
            case ConnectionClosed():
                if self._requests or self._pending:
                    LOGGER.debug(
                        "%s: peer closed the connection; cancelling %d request(s)",
                        self.name,
                        len(self._requests) + len(self._pending),
                    )
                return True
        return False

    def _start_request(self, event: Params) -> None:
        begin = self._pending.pop(event.request_id)
        request = Request(
            request_id=event.request_id,
            role=begin.role,
            keep_conn=begin.keep_conn,
            raw_params=event.params,
            outbox=self._outbox,
            input_buffer_size=self._config.input_buffer_size,
        )
        self._requests[event.request_id] = request
        assert self._nursery is not None
        self._nursery.start_soon(self._run_request, request, name="trio_fastcgi.request")

    async def _abort(self, request_id: int) -> None:
        request = self._requests.get(request_id)
        if request is not None:
            LOGGER.debug("%s: request %d aborted by the web server", self.name, request_id)
            request._aborted = True
            request.cancel_scope.cancel()
        elif self._pending.pop(request_id, None) is not None:
            # Aborted before its params were complete: the handler never ran.
            await self._put(EndRequest(request_id))
            self._request_ended()

    # -- requests ----------------------------------------------------------------

    async def _run_request(self, request: Request) -> None:
        app_status = 0
        protocol_status = ProtocolStatus.REQUEST_COMPLETE
        try:
            with request.cancel_scope:
                try:
                    result = await self._handler(request)
                except EndRequestWith as exc:
                    protocol_status = exc.protocol_status
                except Exception:
                    LOGGER.exception(
                        "%s: handler failed on request %d", self.name, request.request_id
                    )
                    app_status = 1
                    await self._send_error_response(request)
                else:
                    app_status = self._app_status(result)
        finally:
            del self._requests[request.request_id]
            request._finish()
        await queue_output(
            self._outbox, EndRequest(request.request_id, app_status, protocol_status)
        )
        self._request_ended()

    def _app_status(self, result: object) -> int:
        if result is None:
            return 0
        if isinstance(result, int) and 0 <= result <= _MAX_APP_STATUS:
            return result
        LOGGER.error(
            "%s: handler returned %r; expected None or an int in 0..2**32-1", self.name, result
        )
        return 1

    async def _send_error_response(self, request: Request) -> None:
        stdout = request.stdout
        if stdout._sent_data or stdout.closed:
            return
        with contextlib.suppress(trio.BrokenResourceError, trio.BusyResourceError):
            await stdout.send_all(_ERROR_RESPONSE)

    def _request_ended(self) -> None:
        if not self._requests and not self._pending:
            self._idle_since = trio.current_time()
        if self._shutting_down:
            self._wake_writer()

    # -- writing -----------------------------------------------------------------

    def _wake_writer(self) -> None:
        if self._nursery is None:
            return  # not running: the writer checks for closing when it starts
        try:
            self._outbox.send_nowait(None)
        except trio.WouldBlock:
            pass  # the writer is busy and checks for closing after this batch
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    def _should_close(self) -> bool:
        conn = self._conn
        if conn.should_close:
            return True
        if not conn.idle or self._requests or self._pending:
            return False
        return self._idle_closing or (self._shutting_down and self._begun_any)

    async def _write_loop(self) -> None:
        try:
            await self._write_until_closing()
        finally:
            self._writer_done = True

    async def _write_until_closing(self) -> None:
        conn = self._conn
        receiver = self._outbox_receiver
        transport = self._transport
        parts: list[bytes | memoryview] = []
        while not self._should_close():
            item = await receiver.receive()
            size = 0
            while True:
                if item is not None:
                    try:
                        pieces = conn.send_parts(item)
                    except LocalProtocolError as exc:
                        # Output from a task outside the request, racing its end.
                        LOGGER.debug("%s: dropped output: %s", self.name, exc)
                    else:
                        parts += pieces
                        for piece in pieces:
                            size += len(piece)
                if size >= COALESCE_LIMIT:
                    break
                try:
                    item = receiver.receive_nowait()
                except trio.WouldBlock:
                    break
            if not parts:
                continue
            try:
                if size < GATHER_THRESHOLD:
                    payload = b"".join(parts)
                    parts.clear()
                    await transport.send_all(payload)
                else:
                    # Large output goes out without being copied into one buffer.
                    await transport.send_parts(parts)
            except WriteTimeout:
                LOGGER.warning(
                    "%s: closing connection: the web server took none of the output "
                    "for write_timeout (%s s)",
                    self.name,
                    self._config.write_timeout,
                )
                self.cancel()
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                LOGGER.debug("%s: send failed (%r); peer is gone", self.name, exc)
                self.cancel()
                return
        await self._half_close()

    async def _half_close(self) -> None:
        """Send EOF, then let the reader drain until the peer closes too."""
        self._closing = True
        try:
            half_closed = await self._transport.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            half_closed = False
        if not half_closed:
            self.cancel()
            return
        self._drain_deadline = trio.current_time() + DRAIN_TIMEOUT
        self._update_reader_deadline()
