"""One FastCGI connection on Trio: a reader, a writer, a cancel scope per request.

Task tree of one connection::

    connection nursery   its cancel scope closes the whole connection
    ├── reader task      sole receiver on the transport; feeds the core
    ├── request task (N) one per request, handler inside request.cancel_scope
    └── writer task      only while output waits: sends the queue in order

A handler may run its requests in tasks of its own instead (see
:func:`request_spawner`: the ASGI adapter): the connection then stops them with
``request._cancel()`` and does not wait for them. Every request ends in
:meth:`ServedConnection._end_request`, once: when its handler returns, or
earlier if the handler ends it (``request._end_with()``, an ASGI response that
is complete while the application runs on).

All output goes through the connection's :class:`~._writer.Writer`, its one
sender: it turns each output event into whole records with the sans-IO core and
sends them from the task that wrote them when nothing is queued and the socket
takes them, or queues them for the writer task. Encoding and sending (or
queueing) happen with no checkpoint in between, so what the core knows always
matches what went on the wire. When the connection stops, the writer is closed:
every later send raises :class:`trio.BrokenResourceError` at once.

The connection's phase and every timeout rule live in :mod:`._lifecycle`; the
reader's receives wait until its deadline, kept by an :class:`~._alarm.Alarm`,
and nothing else runs under one.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Final, final

import trio

from ._alarm import AlarmClock
from ._cgi import format_cgi_head
from ._connection import FastCGIConnection
from ._event_builders import _make_end_request
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
from ._exceptions import EndRequestWith, RemoteProtocolError
from ._lifecycle import Expiry, Lifecycle, Phase, TimeoutPolicy
from ._request import Request
from ._transport import Transport, close_socket
from ._wire import ProtocolStatus, Role
from ._writer import Writer

if TYPE_CHECKING:
    from ._config import Config

LOGGER: Final = logging.getLogger("trio_fastcgi")

#: A handler: ``async def handler(request) -> int | None``; the int is the
#: appStatus of FCGI_END_REQUEST, None means 0.
Handler = Callable[[Request], Awaitable["int | None"]]

RECEIVE_SIZE: Final = 256 * 1024
#: Sent when a handler fails before writing anything, so the client gets a
#: clean 500 instead of the web server's "upstream closed prematurely" 502.
_ERROR_RESPONSE: Final = (
    format_cgi_head(500, [("Content-Type", "text/plain; charset=utf-8")])
    + b"Internal Server Error\n"
)
_MAX_APP_STATUS: Final = 0xFFFFFFFF
# Read on every request: a module-level name is ten times cheaper than a
# member read off its enum class.
_DRAINING: Final = Phase.DRAINING
_REQUEST_COMPLETE: Final = ProtocolStatus.REQUEST_COMPLETE
#: How to enable the roles a server may leave off, for the refusal warning.
_ROLE_OPTIONS: Final[dict[int, str]] = {
    Role.AUTHORIZER: "roles={Role.RESPONDER, Role.AUTHORIZER} (serve_*) or --roles "
    "responder,authorizer (the trio-fastcgi command)",
    Role.FILTER: "roles={Role.RESPONDER, Role.FILTER} (serve_*) or --roles "
    "responder,filter (the trio-fastcgi command)",
    Role.RESPONDER: "roles={Role.RESPONDER} (serve_*) or --roles responder "
    "(the trio-fastcgi command)",
}


#: A handler's ``spawn_request(run, request)`` (see request_spawner).
Spawn = Callable[[Callable[[Request], Awaitable[None]], Request], None]


def request_spawner(handler: object) -> Spawn | None:
    """*handler*'s ``spawn_request``, if it has one (and it is not None).

    A handler with one runs its requests in tasks of its own, not the
    connection's: the ASGI adapter, whose applications may run on after their
    response (background tasks) and after their connection closed.
    ``spawn_request(run, request)`` must start ``run(request)`` (the
    connection's own code around the handler) at once, in a task outside the
    connection's nursery. The connection does not wait for that task and
    cannot cancel it: it stops the request with ``request._cancel()``, so the
    handler sets ``request._cancel_hook`` or leaves the request's cancel scope
    to do it. A handler that wraps another passes its ``spawn_request`` on.
    """
    spawn: Spawn | None = getattr(handler, "spawn_request", None)
    return spawn


def timeout_policy(config: Config) -> TimeoutPolicy:
    """The timeouts that connections served with *config* follow."""
    return TimeoutPolicy(
        idle_timeout=config.idle_timeout,
        read_timeout=config.read_timeout,
        hibernate_after=config.hibernate_after,
    )


@final
class ServedConnection:
    """Serves FastCGI on one open stream until it closes.

    Its phase and timeout rules are a :class:`~trio_fastcgi._lifecycle.Lifecycle`;
    this class only carries them out.
    """

    __slots__ = (
        "_alarm",
        "_clock",
        "_config",
        "_conn",
        "_handler",
        "_life",
        "_now",
        "_number",
        "_nursery",
        "_pending",
        "_refusals",
        "_requests",
        "_spawn",
        "_transport",
        "_writer",
    )

    _ids = itertools.count(1)

    def __init__(
        self,
        handler: Handler,
        transport: Transport,
        config: Config,
        *,
        spawn: Spawn | None,
        policy: TimeoutPolicy | None = None,
        hibernates: bool = False,
        clock: AlarmClock | None = None,
    ) -> None:
        # *spawn* is request_spawner(handler), asked once per server by the
        # caller: a lookup that fails costs a new connection 1% of its time.
        self._number = next(self._ids)
        self._handler = handler
        self._spawn = spawn
        self._transport = transport
        transport.write_timeout = config.write_timeout
        self._config = config
        # trio's clock, read directly: trio.current_time() goes through three
        # more calls, and the reader asks for the time on every request.
        self._now = trio.lowlevel.current_clock().current_time
        self._life = Lifecycle(
            policy or timeout_policy(config),
            self._now(),
            hibernates=hibernates and transport.socket is not None,
        )
        # A server's connections share its clock; one served alone has its own,
        # whose task runs in the connection's nursery.
        self._clock = clock or AlarmClock()
        self._alarm = self._clock.alarm(self._life.deadline)
        self._conn = FastCGIConnection(
            roles=config.roles,
            max_conns=config.max_conns,
            max_reqs=config.max_reqs,
            mpxs_conns=config.mpxs_conns,
            max_params_size=config.max_params_size,
        )
        self._writer = Writer(
            self._conn,
            transport,
            name=self.name,
            should_close=self._should_close,
            half_close=self._half_close,
            half_close_nowait=self._half_close_nowait,
            fail=self.cancel,
        )
        # Requests whose handler runs, and ones that began but wait for params.
        self._requests: dict[int, Request] = {}
        self._pending: dict[int, BeginRequest] = {}
        self._nursery: trio.Nursery | None = None
        self._refusals = 0

    @property
    def name(self) -> str:
        """``conn-N``, how log lines name this connection."""
        return f"conn-{self._number}"

    def __repr__(self) -> str:
        return f"<ServedConnection {self.name} {self._life.phase.value}>"

    @property
    def phase(self) -> Phase:
        """Where the connection is in its life."""
        return self._life.phase

    async def run(self) -> bool:
        """Serve until the connection ends (False), or until it has been idle
        for ``hibernate_after`` seconds (True): then its tasks end and the
        connection stays open, to be run again when its socket is readable
        or its next deadline (:meth:`wake_deadline`) comes. Never raises for
        peer behaviour."""
        hibernating = wants_sleep = False
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = self._writer.nursery = nursery
                if self._clock.nursery is None:
                    self._clock.nursery = nursery  # the connection's own clock
                if self._life.phase is Phase.CLOSED:
                    self._stop_tasks()
                else:
                    self._writer.wake()  # woken from hibernation to close, say
                wants_sleep = await self._read_loop()
                # Nothing waits for input any more: a clock of the connection's
                # own ends its task now, so the nursery can close.
                self._alarm.stop()
                if wants_sleep:
                    # No request is left and the writer is idle: it serves again
                    # when the connection wakes.
                    nursery.cancel_scope.cancel()
                elif self._life.phase is not Phase.DRAINING:
                    # Only a drain that ran to the web server's EOF leaves
                    # nothing behind: the writer has half-closed, no request is left.
                    self._stop_tasks()
            hibernating = wants_sleep and self._life.phase is not Phase.CLOSED
        finally:
            self._alarm.stop()
            self._nursery = self._writer.nursery = None
            if not hibernating:
                self._life.close(self._now())
                # However the connection ended (cancelled from outside, too):
                # the requests left are in tasks of their handler's, which it
                # does not wait for. Stopped first, as in _stop_tasks; then
                # their reads and every send fail at once.
                self._cancel_requests()
                for request in self._requests.values():
                    request._close_input()
                self._writer.close()
                await self._transport.close()
                LOGGER.debug("%s: closed", self.name)
        if hibernating:
            LOGGER.debug("%s: idle; hibernating", self.name)
        return hibernating

    @property
    def socket(self) -> socket.socket | None:
        """The connection's socket, if it is driven directly."""
        return self._transport.socket

    def wake_deadline(self) -> float:
        """When a hibernating connection must run again to act on a timeout."""
        return self._life.wake_deadline()

    def stay_awake(self) -> None:
        """Never hibernate from now on (the server's watcher has stopped)."""
        self._life.hibernates = False

    def abandon(self) -> None:
        """Close a hibernating connection at once (its server is going away)."""
        self._life.close(self._now())
        sock = self._transport.socket
        if sock is not None:
            close_socket(sock)

    def cancel(self) -> None:
        """Cancel every request and close the connection now."""
        self._life.close(self._now())
        if self._nursery is not None:
            self._stop_tasks()

    def _stop_tasks(self) -> None:
        """Cancel the connection's tasks, and close the writer before any of
        them runs again: a request task that goes on (in a shielded scope,
        say) cannot queue output that will never be sent, its sends raise
        BrokenResourceError from now on. Cancelling first gives the tasks
        waiting for room in the output queue Cancelled, as everywhere else."""
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        self._cancel_requests()
        self._writer.close()

    def _cancel_requests(self) -> None:
        """Stop every request of the connection, also those in tasks of their
        handler's (request_spawner), which cancelling the nursery does not
        reach. Before the writer closes: a handler waiting for room in the
        output queue gets Cancelled, not BrokenResourceError."""
        for request in self._requests.values():
            request._cancel()

    def begin_shutdown(self) -> None:
        """Finish the requests in flight, then close. New requests that arrive
        meanwhile are still served.

        A connection that has not begun a request yet was accepted just now and
        its first request is on the way: it gets FIRST_REQUEST_WAIT seconds to
        arrive before the connection is closed, so that it is not refused.
        """
        life = self._life
        life.begin_shutdown(self._now())
        self._alarm.update()
        self._writer.wake()

    # -- reading -----------------------------------------------------------------
    #
    # Each receive waits at most until the lifecycle's deadline (its alarm
    # rings then), and nothing else the reader does (dispatching input, waiting
    # for room in a request's buffer or in the outbox) runs under a deadline,
    # so input that arrived is always dispatched. Whoever makes the deadline
    # earlier from another task tells the alarm (Alarm.update).

    async def _read_loop(self) -> bool:
        """Read until the connection is done (False) or may hibernate (True)."""
        transport = self._transport
        life = self._life
        alarm = self._alarm
        try:
            while True:
                # One scope from one timeout to the next, not one per wait
                # (a scope costs a tenth of a request): the alarm cancels it
                # only while a receive waits, so dispatching never runs in a
                # cancelled scope.
                with trio.CancelScope() as scope:
                    alarm.read_in(scope)
                    while True:
                        data = None
                        data = await transport.receive_some(RECEIVE_SIZE, alarm)
                        if alarm.rang:
                            break  # the alarm rang just as input came
                        if await self._received(data):
                            return False
                if data is not None:
                    # Input that came as the alarm rang is dispatched outside
                    # the cancelled scope, and the deadline is asked anew.
                    if await self._received(data):
                        return False
                    continue
                expiry = life.expire(self._now())
                if expiry is not Expiry.NOTHING:
                    stop = self._expired(expiry)
                    if stop is not None:
                        return stop
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            LOGGER.debug("%s: receive or queue failed (%r); peer is gone", self.name, exc)
            return False

    def _expired(self, expiry: Expiry) -> bool | None:
        """Act on a timeout: None to read on, False to close now, True to hibernate."""
        config = self._config
        match expiry:
            case Expiry.HIBERNATE:
                # The lifecycle knows nothing is in flight or partly here; only
                # output still leaving (a refusal, the last response) can stop it.
                if self._writer.idle:
                    return True
                self._life.postpone(self._now())  # output is still leaving
            case Expiry.IDLE_TIMEOUT:
                LOGGER.debug(
                    "%s: idle for idle_timeout (%s s); closing", self.name, config.idle_timeout
                )
                self._writer.wake()
            case Expiry.NO_FIRST_REQUEST:
                LOGGER.debug("%s: no request came after shutdown began; closing", self.name)
                self._writer.wake()
            case Expiry.READ_TIMEOUT:
                LOGGER.warning(
                    "%s: closing connection: a record or params took longer than "
                    "read_timeout (%s s)",
                    self.name,
                    config.read_timeout,
                )
                return False
            case Expiry.DRAIN_TIMEOUT:
                LOGGER.debug("%s: the web server did not close after our half-close", self.name)
                return False
        return None

    async def _received(self, data: bytes) -> bool:
        """Feed one chunk to the core and act on its events; True means stop."""
        life = self._life
        if life.phase is _DRAINING:
            return not data  # done at the web server's end of file
        conn = self._conn
        conn.receive_data(data)
        progressed = False
        requests = self._requests
        try:
            while (event := conn.next_event()) is not NEED_DATA:
                progressed = True
                # The events of every request first, without a coroutine each.
                if isinstance(event, Stdin):
                    request = requests.get(event.request_id)
                    if request is not None and not request._offer_stdin(event.data):
                        await request.stdin._feed(event.data)
                elif isinstance(event, Params):
                    self._start_request(event)
                elif isinstance(event, BeginRequest):
                    self._pending[event.request_id] = event
                    life.request_began()
                elif await self._dispatch(event):
                    return True
        except RemoteProtocolError as exc:
            LOGGER.warning("%s: closing connection: %s", self.name, exc)
            return True
        life.received(
            self._now(),
            partial=conn.has_partial_record or bool(self._pending),
            progressed=progressed,
        )
        return False

    async def _dispatch(self, event: InputEvent) -> bool:
        """Act on an input event other than BEGIN_REQUEST, PARAMS and STDIN
        (which :meth:`_received` handles); True means stop reading."""
        match event:
            case Data(request_id, data):
                request = self._requests.get(request_id)
                if request is not None and not request.data._offer(data):
                    await request.data._feed(data)
            case AbortRequest(request_id):
                await self._abort(request_id)
            case RequestRejected(request_id, protocol_status, role):
                # The first refusal is news; a flood of them must not flood the log.
                self._refusals += 1
                disabled = protocol_status is ProtocolStatus.UNKNOWN_ROLE and role in _ROLE_OPTIONS
                if disabled and self._refusals == 1:
                    LOGGER.warning(
                        "%s: refused request %d: the web server asked for the %s role, "
                        "which is not enabled; turn it on with %s",
                        self.name,
                        request_id,
                        Role(role).name.capitalize(),
                        _ROLE_OPTIONS[role],
                    )
                else:
                    LOGGER.log(
                        logging.INFO if self._refusals == 1 else logging.DEBUG,
                        "%s: refused request %d (role %d): %s",
                        self.name,
                        request_id,
                        role,
                        protocol_status.name,
                    )
                await self._writer.send(EndRequest(request_id, 0, protocol_status))
            case GetValues(names):
                await self._writer.send(self._conn.get_values_result(names))
            case UnknownRecord(record_type, request_id):
                LOGGER.debug(
                    "%s: unknown record type %d (request %d)", self.name, record_type, request_id
                )
                await self._writer.send(UnknownType(record_type))
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
        request = Request._create(
            request_id=event.request_id,
            role=begin.role,
            keep_conn=begin.keep_conn,
            raw_params=event.params,
            outbox=self._writer,
            input_buffer_size=self._config.input_buffer_size,
        )
        request._end = self._end_request
        self._requests[event.request_id] = request
        if self._spawn is not None:
            self._spawn(self._run_request, request)
        else:
            assert self._nursery is not None
            self._nursery.start_soon(self._run_request, request, name="trio_fastcgi.request")

    async def _abort(self, request_id: int) -> None:
        request = self._requests.get(request_id)
        if request is not None:
            LOGGER.debug("%s: request %d aborted by the web server", self.name, request_id)
            request._aborted = True
            request._cancel()
        elif self._pending.pop(request_id, None) is not None:
            # Aborted before its params were complete: the handler never ran.
            self._request_ended()
            await self._writer.send(EndRequest(request_id))

    # -- requests ----------------------------------------------------------------

    async def _run_request(self, request: Request) -> None:
        app_status = 0
        protocol_status = _REQUEST_COMPLETE
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
        except BaseException:
            if not request._finished:
                self._forget(request)
            raise
        await self._end_request(request, app_status, protocol_status)

    async def _end_request(
        self,
        request: Request,
        app_status: int,
        protocol_status: ProtocolStatus,
        output: Sequence[OutputEvent] = (),
    ) -> None:
        """End *request*, once: refuse its further output, and send *output*
        (its last stdout) and its END_REQUEST in one write. When its handler
        returns, or earlier (Request._end_with)."""
        if request._finished:
            return
        self._forget(request)
        self._request_ended()
        # Built without validation when the values are known good.
        end = (
            _make_end_request(request.request_id, app_status, protocol_status)
            if protocol_status is _REQUEST_COMPLETE
            else EndRequest(request.request_id, app_status, protocol_status)
        )
        # Not contextlib.suppress: a context manager per request costs more.
        try:
            if output:
                await self._writer.send_many([*output, end])
            else:
                await self._writer.send(end)
        except trio.BrokenResourceError:
            pass  # the connection is gone

    def _forget(self, request: Request) -> None:
        """*request* ends: it is no longer the connection's, and takes no more
        input or output. Once per request, before its END_REQUEST: until then
        no other request can have its id."""
        del self._requests[request.request_id]
        request._finish()

    def _app_status(self, result: object) -> int:
        if result is None:
            return 0
        if isinstance(result, int) and 0 <= result <= _MAX_APP_STATUS:
            return int(result)  # exactly an int (a bool or an IntEnum is one too)
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
        """Count a request as ended, before its END_REQUEST is queued: the
        writer, which may close once that is sent, then sees it ended."""
        life = self._life
        life.request_ended(self._now())
        if not life.in_flight:
            self._alarm.update()

    # -- writing -----------------------------------------------------------------

    def _should_close(self) -> bool:
        """Whether to half-close once the output queued now is sent."""
        conn = self._conn
        return conn.should_close or (conn.idle and self._life.closes_when_idle)

    def _half_close_nowait(self) -> bool:
        """:meth:`_half_close` if the transport can half-close without waiting
        (a socket can); False, having done nothing, if it cannot."""
        try:
            half_closed = self._transport.send_eof_nowait()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            half_closed = False
        if half_closed is None:
            return False
        self._life.half_closed(self._now())  # from now on input is discarded
        self._after_eof(half_closed)
        return True

    async def _half_close(self) -> None:
        """Send EOF, then let the reader drain until the peer closes too."""
        self._life.half_closed(self._now())  # from now on input is discarded
        try:
            half_closed = await self._transport.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            half_closed = False
        self._after_eof(half_closed)

    def _after_eof(self, half_closed: bool) -> None:
        """Drain until the web server closes too, or close now if the
        half-close failed (or the stream cannot do one)."""
        if half_closed:
            self._alarm.update()
        else:
            self.cancel()
