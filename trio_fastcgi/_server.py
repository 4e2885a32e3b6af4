"""The public ``serve_*`` entry points, shaped like :func:`trio.serve_tcp`."""

from __future__ import annotations

import errno
import functools
import inspect
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Final, TypeAlias, TypeVar, final

import trio

if sys.version_info >= (3, 11):
    from typing import Unpack
else:
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found,unused-ignore]
    from typing_extensions import Unpack

from ._alarm import AlarmClock
from ._config import Config, ServerOptions, parse_ip_address
from ._hibernation import Hibernation, hibernation_supported
from ._listeners import (
    FCGI_LISTENSOCK_FILENO,
    exposed_address,
    inherited_listener,
    open_unix_listener,
    protect_std_fds,
    remove_socket_file,
)
from ._served_connection import Handler, ServedConnection, request_spawner, timeout_policy
from ._transport import Acceptor, Transport, open_transport

LOGGER: Final = logging.getLogger("trio_fastcgi")

# accept(2) errors that mean "out of resources right now", not "broken": log and
# retry after a pause, as trio.serve_listeners does.
_ACCEPT_CAPACITY_ERRNOS: Final = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
)
_ACCEPT_RETRY_DELAY: Final = 0.1

#: Any listener of byte streams: TCP and unix socket listeners, SSL, or your own.
AnyListener: TypeAlias = trio.abc.Listener[trio.abc.Stream]
ListenerT = TypeVar("ListenerT", bound=AnyListener)


def check_handler(handler: object) -> None:
    """Raise :exc:`TypeError` if *handler* is surely not a native handler: not
    callable, or a plain ``def`` (calling it would give no awaitable).

    A sync wrapper around an ``async def`` (``functools.wraps`` sets
    ``__wrapped__``) passes, as do callables whose kind cannot be told.
    """
    if not callable(handler):
        raise TypeError(f"the handler {handler!r} is not callable")
    target: object = handler
    while isinstance(target, functools.partial):
        target = target.func
    if not (inspect.isfunction(target) or inspect.ismethod(target)):
        call = getattr(type(target), "__call__", None)  # noqa: B004
        if inspect.isclass(target) or not inspect.isfunction(call):
            return
        target = call
    if inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(inspect.unwrap(target)):
        return
    name = getattr(handler, "__qualname__", None) or repr(handler)
    raise TypeError(
        f"a native handler must be `async def`: {name} is a plain `def` "
        "(write `async def handler(request):` and await its I/O)"
    )


async def serve_connection(
    handler: Handler,
    stream: trio.abc.Stream,
    *,
    config: Config | None = None,
    **options: Unpack[ServerOptions],
) -> None:
    """Serve FastCGI on one open *stream* until the web server or the connection
    ends it. The stream is closed on return.

    Every exception from *handler* is handled (see :func:`serve_listeners`);
    the web server's misbehaviour is logged, never raised. Setting the
    ``shutdown_event`` option lets the requests in flight finish (within
    ``grace_period``), then closes the connection. Options come from *config*
    and keywords as in :func:`serve_listeners`.
    """
    check_handler(handler)
    config = Config.from_options(options, base=config)
    connection = ServedConnection(
        handler, open_transport(stream), config, spawn=request_spawner(handler)
    )
    if config.shutdown_event is None:
        await connection.run()
        return
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_shut_down_when_set, connection, config.shutdown_event, config)
        await connection.run()
        nursery.cancel_scope.cancel()


async def _shut_down_when_set(
    connection: ServedConnection, event: trio.Event, config: Config
) -> None:
    await event.wait()
    connection.begin_shutdown()
    await trio.sleep(config.grace_period)
    LOGGER.warning(
        "graceful shutdown: cancelling %s, still busy after %s s",
        connection.name,
        config.grace_period,
    )
    connection.cancel()


@final
class _Server:
    def __init__(self, handler: Handler, config: Config) -> None:
        self._handler = handler
        self._spawn = request_spawner(handler)
        self._config = config
        self._connections: set[ServedConnection] = set()
        self._slots = trio.Semaphore(config.max_conns)
        self._all_closed = trio.Event()
        self._shutting_down = False
        self._policy = timeout_policy(config)
        self._hibernation: Hibernation | None = None
        self._clock: AlarmClock | None = None

    async def serve(
        self,
        listeners: Sequence[ListenerT],
        handler_nursery: trio.Nursery | None,
        task_status: trio.TaskStatus[list[ListenerT]],
    ) -> None:
        self._warn_if_exposed(listeners)
        async with trio.open_nursery() as own_nursery:
            connection_nursery = handler_nursery or own_nursery
            self._start_watchers(own_nursery, connection_nursery, handler_nursery)
            async with trio.open_nursery() as accept_nursery:
                for listener in listeners:
                    # A plain socket listener is accepted from directly; its
                    # duplicate socket is open before serve() reports started.
                    acceptor = None
                    if isinstance(listener, trio.SocketListener):
                        acceptor = Acceptor(listener)
                    accept_nursery.start_soon(
                        self._accept_loop, listener, acceptor, connection_nursery
                    )
                shutdown_event = self._config.shutdown_event
                if shutdown_event is not None:
                    accept_nursery.start_soon(
                        self._stop_accepting_on, shutdown_event, accept_nursery.cancel_scope
                    )
                task_status.started(list(listeners))
            # Only a graceful shutdown gets here: the listeners are closed.
            await self._drain()
            own_nursery.cancel_scope.cancel()  # only the hibernation watcher is left

    @trio.lowlevel.enable_ki_protection
    def _start_watchers(
        self,
        own_nursery: trio.Nursery,
        connection_nursery: trio.Nursery,
        handler_nursery: trio.Nursery | None,
    ) -> None:
        """Start the alarm clock and the hibernation watcher in *own_nursery*.
        Ctrl+C waits until both are started: the listeners are open already,
        and a KeyboardInterrupt inside ``start_soon`` would leave a coroutine
        made and never run (a RuntimeWarning at exit)."""
        # Rings the timeouts of every connection's receives; connections that
        # outlive the server (in handler_nursery) get a task there.
        self._clock = AlarmClock(connection_nursery)
        own_nursery.start_soon(self._clock.run, name="trio_fastcgi.alarm_clock")
        if self._config.hibernate_after is not None and hibernation_supported():
            self._hibernation = Hibernation(
                wake=partial(self._wake, connection_nursery),
                stopped=partial(self._watcher_stopped, handler_nursery),
            )
            own_nursery.start_soon(self._hibernation.watch, name="trio_fastcgi.hibernation")

    def _warn_if_exposed(self, listeners: Sequence[ListenerT]) -> None:
        """FastCGI has no authentication: say so when anyone may connect."""
        if self._config.web_server_addrs:
            return
        for listener in listeners:
            if not isinstance(listener, trio.SocketListener):
                continue
            sock = listener.socket
            address = exposed_address(sock.family, sock.getsockname())
            if address is not None:
                LOGGER.warning(
                    "serving FastCGI on %s, which other hosts can reach, to any peer: "
                    "FastCGI has no authentication, so anyone who can connect drives the "
                    "application. Listen on 127.0.0.1 or a unix socket, or set "
                    "web_server_addrs (FCGI_WEB_SERVER_ADDRS) to the web servers' addresses",
                    address,
                )

    async def _stop_accepting_on(self, event: trio.Event, accepting: trio.CancelScope) -> None:
        await event.wait()
        LOGGER.info(
            "graceful shutdown: no longer accepting; %d connection(s) open",
            len(self._connections),
        )
        self._shutting_down = True
        accepting.cancel()

    async def _drain(self) -> None:
        for connection in list(self._connections):
            connection.begin_shutdown()
        if self._hibernation is not None:
            self._hibernation.wake_all()
        with trio.move_on_after(self._config.grace_period):
            await self._wait_all_closed()
            return
        LOGGER.warning(
            "graceful shutdown: cancelling %d connection(s) still busy after %s s",
            len(self._connections),
            self._config.grace_period,
        )
        for connection in list(self._connections):
            connection.cancel()
        await self._wait_all_closed()

    async def _wait_all_closed(self) -> None:
        if self._connections:
            await self._all_closed.wait()

    async def _accept_loop(
        self, listener: AnyListener, acceptor: Acceptor | None, nursery: trio.Nursery
    ) -> None:
        async with listener:
            if acceptor is None:
                await self._accept_each(partial(self._accept_stream, listener), nursery)
                return
            try:
                await self._accept_each(acceptor.accept, nursery)
            finally:
                acceptor.close()

    @staticmethod
    async def _accept_stream(listener: AnyListener) -> Transport:
        return open_transport(await listener.accept())

    # Ctrl+C comes at a checkpoint of the main task, never in the middle of
    # this loop: between accepting a socket and starting its task it would
    # leave the socket unserved and the task's coroutine never awaited (trio's
    # start_soon is not protected itself).
    @trio.lowlevel.enable_ki_protection
    async def _accept_each(
        self, accept: Callable[[], Awaitable[Transport]], nursery: trio.Nursery
    ) -> None:
        slots = self._slots
        while True:
            try:
                slots.acquire_nowait()
            except trio.WouldBlock:
                LOGGER.warning(
                    "max_conns (%d) connections open; accepting again when one closes",
                    self._config.max_conns,
                )
                await slots.acquire()
            try:
                transport = await accept()
            except OSError as exc:
                slots.release()
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                LOGGER.error(
                    "accept failed: %s; retrying in %s s",
                    os.strerror(exc.errno or 0),
                    _ACCEPT_RETRY_DELAY,
                )
                await trio.sleep(_ACCEPT_RETRY_DELAY)
                continue
            except BaseException:
                slots.release()
                raise
            nursery.start_soon(self._serve_one, transport, name="trio_fastcgi.connection")

    def _peer_allowed(self, transport: Transport) -> bool:
        allowed = self._config.web_server_addrs
        if not allowed:
            return True
        sock = transport.socket
        if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return True
        try:
            address = transport.peer if transport.peer is not None else sock.getpeername()
            peer = parse_ip_address(address[0])  # type: ignore[index]
        except (OSError, ValueError):
            return False
        if peer in allowed:
            return True
        LOGGER.warning("refused connection from %s: not in FCGI_WEB_SERVER_ADDRS", peer)
        return False

    async def _serve_one(self, transport: Transport) -> None:
        if not self._peer_allowed(transport):
            self._slots.release()
            await transport.close()
            return
        connection = ServedConnection(
            self._handler,
            transport,
            self._config,
            spawn=self._spawn,
            policy=self._policy,
            hibernates=self._hibernation is not None,
            clock=self._clock,
        )
        self._connections.add(connection)
        if self._shutting_down:
            connection.begin_shutdown()
        await self._run(connection)

    def _wake(self, nursery: trio.Nursery, connection: ServedConnection) -> None:
        nursery.start_soon(self._run, connection, name="trio_fastcgi.connection")

    def _watcher_stopped(
        self, handler_nursery: trio.Nursery | None, connection: ServedConnection
    ) -> None:
        """The server was cancelled while *connection* hibernated. In the
        server's own nursery it closes with the rest; in the caller's
        handler_nursery it goes on serving there, awake from now on."""
        if handler_nursery is not None:
            connection.stay_awake()
            try:
                self._wake(handler_nursery, connection)
            except RuntimeError:
                pass  # that nursery is closed: nothing can serve it any more
            else:
                return
        connection.abandon()
        self._connection_closed(connection)

    async def _run(self, connection: ServedConnection) -> None:
        asleep = False
        try:
            while await connection.run():
                hibernation = self._hibernation
                asleep = hibernation is not None and hibernation.add(connection)
                if asleep:
                    return
                connection.stay_awake()  # the watcher has stopped
        except Exception:
            LOGGER.exception("%s: internal error; connection closed", connection.name)
        finally:
            if not asleep:
                self._connection_closed(connection)

    def _connection_closed(self, connection: ServedConnection) -> None:
        self._slots.release()
        self._connections.discard(connection)
        if not self._connections:
            self._all_closed.set()
            self._all_closed = trio.Event()


async def serve_listeners(
    handler: Handler,
    listeners: Sequence[ListenerT],
    *,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[list[ListenerT]] = trio.TASK_STATUS_IGNORED,
    config: Config | None = None,
    **options: Unpack[ServerOptions],
) -> None:
    """Serve FastCGI on already-open *listeners* until cancelled or shut down.

    ``await nursery.start(serve_listeners, handler, listeners)`` returns the
    listeners once they are all being served. Each connection is served in
    *handler_nursery* (default: an internal one), as in
    :func:`trio.serve_listeners`.

    Each request calls ``await handler(request)``. Its return value (an int, or
    None for 0) is the appStatus of ``FCGI_END_REQUEST``. Raising
    :class:`Overloaded` or :class:`UnknownRole` ends the request with that
    protocolStatus. Any other exception is logged with its traceback to the
    ``trio_fastcgi`` logger and ends the request with appStatus 1 (and, if the
    handler wrote nothing yet, a plain 500 response); the connection and its
    other requests carry on. A *handler* that is a plain ``def`` raises
    :exc:`TypeError` at once, before anything is served.

    Cancelling this function closes the listeners and, without
    *handler_nursery*, cancels every connection and request at once. With a
    *handler_nursery*, the connections already accepted go on serving in it
    (idle ones included: they stop hibernating) until that nursery is
    cancelled or the web server closes them. Setting the ``shutdown_event``
    option instead stops gracefully (see :class:`Config`), after which this
    function returns.

    The server's options (every ``serve_*`` function takes the same) are the
    fields of a :class:`Config`: give one as *config*, or the options as
    keywords (``max_reqs=10``), or both, and then each keyword option replaces
    that field of *config*. An unknown or invalid option raises
    :exc:`TypeError` or :exc:`ValueError` before anything is served.
    """
    check_handler(handler)
    config = Config.from_options(options, base=config)
    protect_std_fds()
    server = _Server(handler, config)
    try:
        await server.serve(listeners, handler_nursery, task_status)
    except BaseExceptionGroup as group:
        # Ctrl+C reaches the caller as itself, so `except KeyboardInterrupt:`
        # around trio.run works, not inside the nurseries' exception group.
        interrupt = _only_keyboard_interrupts(group)
        if interrupt is None:
            raise
        raise interrupt from None


def _only_keyboard_interrupts(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The first KeyboardInterrupt in *group* if that is all it holds."""
    interrupts, rest = group.split(KeyboardInterrupt)
    if interrupts is None or rest is not None:
        return None
    found: BaseException = interrupts
    while isinstance(found, BaseExceptionGroup):
        found = found.exceptions[0]
    return found


async def serve_tcp(
    handler: Handler,
    port: int,
    *,
    host: str | bytes | None = None,
    backlog: int | None = None,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    config: Config | None = None,
    **options: Unpack[ServerOptions],
) -> None:
    """Serve FastCGI on TCP *port* (0 picks a free one) until cancelled.

    Like :func:`trio.serve_tcp`: *host* None listens on every address, and
    ``await nursery.start(serve_tcp, handler, 0)`` returns the listeners, so
    ``listeners[0].socket.getsockname()`` gives the port. Options and error
    handling as in :func:`serve_listeners`.

    FastCGI has no authentication: whoever can connect can drive the
    application as the web server would. Pass ``host="127.0.0.1"`` (or use a
    unix socket) unless the web server is on another host, and then set
    ``web_server_addrs``; serving a non-loopback address without it logs a
    WARNING.
    """
    check_handler(handler)
    config = Config.from_options(options, base=config)  # fail before binding
    listeners = await trio.open_tcp_listeners(port, host=host, backlog=backlog)
    await serve_listeners(
        handler, listeners, handler_nursery=handler_nursery, task_status=task_status, config=config
    )


async def serve_unix(
    handler: Handler,
    path: str | os.PathLike[str],
    *,
    mode: int | None = 0o660,
    backlog: int | None = None,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    config: Config | None = None,
    **options: Unpack[ServerOptions],
) -> None:
    """Serve FastCGI on a unix socket at *path* until cancelled.

    A stale socket file is replaced, but a live socket or any other file is an
    error. *mode* sets the file's permission bits (the web server's user needs
    write access; None keeps the umask's). The file is removed on exit.
    Options and error handling as in :func:`serve_listeners`.
    """
    check_handler(handler)
    config = Config.from_options(options, base=config)
    listener = await open_unix_listener(path, mode=mode, backlog=backlog)
    inode = os.stat(path).st_ino
    try:
        await serve_listeners(
            handler,
            [listener],
            handler_nursery=handler_nursery,
            task_status=task_status,
            config=config,
        )
    finally:
        remove_socket_file(path, inode)


async def serve_inherited(
    handler: Handler,
    fd: int = FCGI_LISTENSOCK_FILENO,
    *,
    handler_nursery: trio.Nursery | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    config: Config | None = None,
    **options: Unpack[ServerOptions],
) -> None:
    """Serve FastCGI on the listening socket (TCP or unix) inherited on *fd*.

    This is how lighttpd's ``bin-path``, Apache's mod_fcgid and spawn-fcgi start
    an application: the listening socket is fd 0 (``FCGI_LISTENSOCK_FILENO``).
    Options and error handling as in :func:`serve_listeners`.
    """
    check_handler(handler)
    config = Config.from_options(options, base=config)
    listener = inherited_listener(fd)
    await serve_listeners(
        handler, [listener], handler_nursery=handler_nursery, task_status=task_status, config=config
    )
