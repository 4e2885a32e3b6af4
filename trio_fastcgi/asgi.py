"""Serve an ASGI 3 application over FastCGI, on Trio.

``ASGIHandler(app)`` is a native handler: pass it to any ``serve_*`` function.
The application runs in the request's own Trio task (one the adapter starts
for each request, outside the connection: :meth:`ASGIHandler.spawn_request`;
a handler that calls the adapter itself runs it in its own task), so it must
be able to run on Trio (anyio-based frameworks such as Starlette and FastAPI
do, as does Quart-Trio). An application that needs asyncio (Django's ASGIHandler,
asgiref-based code, anything calling ``asyncio.get_running_loop()``) runs on
one asyncio loop in a thread of its own instead: ``loop="auto"`` picks that for
Django and for apps marked with :func:`mark_asyncio`; ``loop="asyncio"`` forces
it (the symptom of the wrong choice: ``trio.run received unrecognized yield
message``, which the adapter follows with a line that says so). There the
lifespan runs on the same loop as the requests, and the loop's thread stops
when :meth:`ASGIHandler.lifespan` exits (or else with the Trio run).
Supported: the ``http`` scope (ASGI spec 2.4) and ``lifespan``.

- ``receive()`` streams the request body from stdin as ``http.request`` messages
  with ``more_body``; once the body is read it waits until the request ends and
  then returns ``http.disconnect``.
- ``http.response.start`` is held back and sent with the first body chunk; each
  ``http.response.body`` is sent as it comes (streaming).
- The FastCGI request ends (end of stdout, ``FCGI_END_REQUEST``) as soon as the
  response is complete (``more_body: False``), not when the application
  returns: work after the response (Starlette's and FastAPI's background
  tasks) runs on without holding the request. From then on ``receive()``
  returns ``http.disconnect`` at once, and another ``http.response.*`` message
  raises :class:`RuntimeError` (it would be an application bug, as uvicorn
  treats it). An exception the application raises then is logged at ERROR
  with the request id (the request ended with appStatus 0). Such
  applications are bounded only by shutdown: when :meth:`ASGIHandler.lifespan`
  exits they get ``background_grace`` seconds more, then are cancelled with a
  WARNING.
- If the web server aborts the request (``FCGI_ABORT_REQUEST`` or a closed
  connection), or serving is cancelled, ``receive()`` returns
  ``http.disconnect`` and ``send()`` raises
  :class:`ClientDisconnected`; the application then has
  :data:`DISCONNECT_GRACE` seconds to return before it is cancelled.
- ``scope["extensions"]["fastcgi"]`` holds the raw params (``raw_params``, the
  ordered ``(bytes, bytes)`` pairs), the ``role`` and the ``request_id``.

Lifespan: ``async with handler.lifespan():`` runs the application's startup
before the block and its shutdown after it (the ``trio-fastcgi`` command does
this around serving). ``lifespan="auto"`` (the default) carries on without
lifespan if the application does not support it; ``"on"`` makes that an error,
``"off"`` skips it.

Authorizer role: enable it with ``roles={Role.AUTHORIZER, ...}``. The response
is the authorizer's answer as is: status 200 allows the request and each
``Variable-NAME`` header becomes the param ``NAME`` of the request the web server
then serves; any other status denies and goes to the client with its headers
and body. ``scope["extensions"]["fastcgi"]["role"]`` tells the roles apart.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any, Final, Literal, TypeAlias, final

import trio

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found,unused-ignore]

from ._cgi import STATUS_LINES
from ._exceptions import ClientDisconnected as ClientDisconnected
from ._exceptions import InputError
from ._request import Request
from ._wire import Role

__all__ = [
    "ASGIApp",
    "ASGIHandler",
    "ClientDisconnected",
    "LifespanFailure",
    "build_scope",
    "mark_asyncio",
]

LOGGER: Final = logging.getLogger("trio_fastcgi.asgi")

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Seconds an application gets to return after it was told ``http.disconnect``
#: because the web server aborted the request; then it is cancelled.
DISCONNECT_GRACE: Final = 1.0
#: Seconds the application's lifespan shutdown may take.
LIFESPAN_SHUTDOWN_TIMEOUT: Final = 30.0
#: Seconds applications still running after their response (background tasks)
#: get once serving has stopped, before they are cancelled. Below the
#: supervisor's kill margin, so a worker ends them itself.
DEFAULT_BACKGROUND_GRACE: Final = 3.0
_ASGI_VERSION: Final = {"version": "3.0", "spec_version": "2.4"}
_TRUE_VALUES: Final = frozenset({"on", "1", "yes", "true"})


class LifespanFailure(RuntimeError):
    """The application reported ``lifespan.startup.failed`` or
    ``lifespan.shutdown.failed``, or failed during lifespan with ``lifespan="on"``."""


def _http_version(protocol: bytes) -> str:
    version = protocol.partition(b"/")[2]
    if version in (b"1.1", b"1.0"):
        return version.decode("ascii")
    if version in (b"2", b"2.0"):
        return "2"
    if version in (b"3", b"3.0"):
        return "3"
    return "1.1"


#: ``http_version`` of the ``SERVER_PROTOCOL`` values web servers send.
_HTTP_VERSIONS: Final = {
    protocol: _http_version(protocol)
    for protocol in (b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/2", b"HTTP/3.0", b"HTTP/3")
}
#: The ``method`` of the common ``REQUEST_METHOD`` values, decoded once.
_METHODS: Final = {
    method.encode("ascii"): method
    for method in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE")
}
_ROLE_NAMES: Final = {role: role.name.lower() for role in Role}


def _port(value: bytes) -> int | None:
    return int(value) if value.isdigit() and len(value) <= 5 else None


#: The params build_scope reads besides headers, each with its slot in the
#: values it collects, in the order it unpacks them.
_SLOTS: Final = (
    b"SCRIPT_NAME",
    b"PATH_INFO",
    b"REQUEST_URI",
    b"HTTPS",
    b"REQUEST_SCHEME",
    b"REQUEST_METHOD",
    b"SERVER_PROTOCOL",
    b"QUERY_STRING",
    b"REMOTE_ADDR",
    b"REMOTE_PORT",
    b"SERVER_ADDR",
    b"SERVER_NAME",
    b"SERVER_PORT",
)
#: What build_scope does with each param name seen so far, worked out once:
#: the ASGI header name (``HTTP_USER_AGENT`` -> ``user-agent``), the slot of
#: a param it reads (an int), or ``b""`` for neither. Bounded, since the names
#: come from clients.
_HEADER_NAMES: Final[dict[bytes, bytes | int]] = {
    b"CONTENT_TYPE": b"content-type",
    b"CONTENT_LENGTH": b"content-length",
    **{name: slot for slot, name in enumerate(_SLOTS)},
}
_HEADER_NAMES_MAX: Final = 1024
#: Headers left out when empty (nginx sends both, empty, without a body).
_OMIT_EMPTY: Final = frozenset({b"CONTENT_TYPE", b"CONTENT_LENGTH"})
#: Headers a CGI param of their own carries (``CONTENT_TYPE``, ``CONTENT_LENGTH``).
#: Every name in _OMIT_EMPTY is the param of one of them.
_CGI_HEADERS: Final = frozenset({b"content-type", b"content-length"})


def _header_name(param: bytes) -> bytes:
    name = param[5:].replace(b"_", b"-").lower() if param.startswith(b"HTTP_") else b""
    if len(_HEADER_NAMES) < _HEADER_NAMES_MAX:
        _HEADER_NAMES[param] = name
    return name


def build_scope(request: Request, *, script_name: str | None = None) -> dict[str, Any]:
    """The ASGI ``http`` scope for *request* (without ``state``)."""
    raw_params = request.raw_params
    # One pass over the params: headers in order, and the last value of each
    # param in _SLOTS.
    values: list[bytes | None] = [None] * len(_SLOTS)
    headers: list[tuple[bytes, bytes]] = []
    params: dict[bytes, bytes] | None = None
    kinds = _HEADER_NAMES.get
    for name, value in raw_params:
        kind = kinds(name)
        if kind is None:
            kind = _header_name(name)
        if isinstance(kind, int):
            values[kind] = value
        elif kind:
            if kind in _CGI_HEADERS:
                # nginx sends CONTENT_TYPE and CONTENT_LENGTH empty without a
                # body, and HTTP_CONTENT_TYPE besides CONTENT_TYPE: one header,
                # or Django joins the two into "a,a" and reads no form.
                if not value and name in _OMIT_EMPTY:
                    continue
                if params is None:
                    params = dict(raw_params)
                if name[5:] in params:
                    continue
            headers.append((kind, value))
    (
        sent_script,
        sent_path,
        request_uri,
        https,
        request_scheme,
        method,
        protocol,
        query_string,
        remote_addr,
        remote_port,
        server_addr,
        server_name,
        server_port,
    ) = values
    # Root path and full path, as bytes (same rules as the WSGI adapter).
    if sent_script is None:
        sent_script = b""
    if script_name is not None:
        root = script_name.rstrip("/").encode("utf-8")
        path = sent_script + sent_path if sent_path else sent_script
    elif sent_path is not None:
        root, path = sent_script, sent_script + sent_path
    else:
        root, path = b"", sent_script
    if https and https.decode("latin-1").lower() in _TRUE_VALUES:
        scheme = "https"
    else:
        scheme = "https" if request_scheme and request_scheme.lower() == b"https" else "http"
    if method is None:
        method = b""
    if protocol is None:
        protocol = b""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": _HTTP_VERSIONS.get(protocol) or _http_version(protocol),
        "method": _METHODS.get(method) or (method.decode("latin-1").upper() or "GET"),
        "scheme": scheme,
        "path": path.decode("utf-8", "replace"),
        "raw_path": request_uri.partition(b"?")[0] if request_uri else path,
        "query_string": query_string or b"",
        "root_path": root.decode("utf-8", "replace") if root else "",
        "headers": headers,
        "extensions": {
            "fastcgi": {
                "raw_params": raw_params,
                "role": _ROLE_NAMES[request.role],
                "request_id": request.request_id,
            }
        },
    }
    if remote_addr is not None:
        client_port = _port(remote_port or b"")
        if client_port is not None:
            scope["client"] = (remote_addr.decode("latin-1"), client_port)
    server_host = server_addr or server_name
    if server_host:
        port = _port(server_port or b"")
        if port is not None:
            scope["server"] = (server_host.decode("latin-1"), port)
    return scope


#: The ``Status:`` line of each status code :class:`http.HTTPStatus` knows, as bytes.
_STATUS_LINES: Final = {status: line.encode("latin-1") for status, line in STATUS_LINES.items()}


def _cgi_head(status: int, headers: Iterable[Any]) -> bytes:
    """The CGI head for an ASGI status and its byte-string header pairs: what
    :func:`~trio_fastcgi._cgi.format_cgi_head` writes for their latin-1 text,
    with the same checks, done on the bytes."""
    lines = [_STATUS_LINES.get(status) or b"Status: %d" % status]
    for name, value in headers:
        if type(name) is not bytes:
            name = bytes(name)
        if type(value) is not bytes:
            value = bytes(value)
        # A byte given as an int is found with no buffer to take: ":" is 58,
        # LF 10, CR 13.
        if 58 in name or 10 in name or 13 in name or 10 in value or 13 in value or not name:
            raise ValueError(
                f"invalid header {name.decode('latin-1')!r}: {value.decode('latin-1')!r}"
            )
        lines.append(name + b": " + value)
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


_DISCONNECT: Final = "http.disconnect"


@final
class _Exchange:
    """One call of the application for one request: its receive() and send()."""

    # Class-level defaults: a request pays only for the flags it changes.
    disconnected: bool = False
    body_done: bool = False
    response_done: bool = False
    started: bool = False
    #: Set once the application returned, or failed.
    finished: bool = False
    _head: bytes = b""
    _disconnect_event: trio.Event | None = None
    _reading: trio.CancelScope | None = None
    #: Made when something waits for the application to return (wait_done()).
    _done: trio.Event | None = None

    def __init__(self, handler: ASGIHandler, request: Request) -> None:
        self.handler = handler
        self.request = request
        self.request_id = request.request_id

    def abort(self) -> None:
        """The request's _cancel_hook: the web server gave up on it (an abort
        or a closed connection). Tell the application, and cancel it if it has
        not returned within DISCONNECT_GRACE seconds."""
        self.disconnect()
        scope = self.request.cancel_scope
        scope.deadline = min(scope.deadline, trio.current_time() + DISCONNECT_GRACE)

    def cancel(self) -> None:
        """Cancel the application now (it runs in its request's cancel scope)."""
        self.request.cancel_scope.cancel()

    def returned(self) -> None:
        """The application has returned, or failed."""
        self.finished = True
        if self.response_done:
            self.handler._background.discard(self)
        if self._done is not None:
            self._done.set()

    async def wait_done(self) -> None:
        """Wait until the application has returned."""
        if self.finished:
            await trio.lowlevel.checkpoint()
            return
        if self._done is None:
            self._done = trio.Event()
        await self._done.wait()

    def disconnect(self) -> None:
        """The web server gave up on the request: wake a waiting receive()."""
        self.disconnected = True
        self.wake_receive()

    def wake_receive(self) -> None:
        """Make a waiting receive() return ``http.disconnect``."""
        if self._reading is not None:
            self._reading.cancel()
        if self._disconnect_event is not None:
            self._disconnect_event.set()

    async def receive(self) -> Message:
        if self.disconnected or self.response_done:
            await trio.lowlevel.checkpoint()
            return {"type": _DISCONNECT}
        if not self.body_done:
            return await self._receive_body()
        # The body was read: wait until the request ends.
        if self._disconnect_event is None:
            self._disconnect_event = trio.Event()
        await self._disconnect_event.wait()
        return {"type": _DISCONNECT}

    async def _receive_body(self) -> Message:
        stdin = self.request.stdin
        # Once the web server ended stdin, one read takes all that is buffered.
        ended = stdin.at_eof
        chunk: bytes | None = None
        try:
            if ended:
                chunk = await stdin.receive_some()
            else:
                # disconnect() cancels this scope: the read stops at once.
                with trio.CancelScope() as self._reading:
                    chunk = await stdin.receive_some()
                self._reading = None
        except (InputError, trio.ClosedResourceError):
            pass  # cut short, or the connection is gone: chunk stays None
        if chunk is None or self.disconnected:
            # Disconnected, or the body was cut short: the client is gone.
            self.body_done = True
            return {"type": _DISCONNECT}
        if not chunk:
            self.body_done = True
            return {"type": "http.request", "body": b"", "more_body": False}
        expected = stdin.expected_length
        if ended and (expected is None or expected == stdin.received):
            self.body_done = True  # that was all of it
            return {"type": "http.request", "body": chunk, "more_body": False}
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(self, message: Message) -> None:
        if self.disconnected:
            raise ClientDisconnected("the web server aborted the request")
        kind = message["type"]
        if kind == "http.response.body":
            if not self.started:
                raise RuntimeError("http.response.body before http.response.start")
            if self.response_done:
                raise RuntimeError("http.response.body after the response was complete")
            body = message.get("body", b"")
            if type(body) is not bytes:
                body = bytes(body)
            if self._head:
                data = self._head + body
                self._head = b""
            else:
                data = body
            if not message.get("more_body", False):
                await self._send_last(data)
                return
            try:
                if data:
                    await self.request.stdout.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self.disconnect()
                raise ClientDisconnected(f"the connection is gone: {exc}") from None
        elif kind == "http.response.start":
            if self.started:
                raise RuntimeError("http.response.start sent twice")
            status = message["status"]
            if type(status) is not int or not 100 <= status <= 999:
                raise ValueError(f"bad ASGI status {status!r}")
            self._head = _cgi_head(status, message.get("headers", ()))
            self.started = True
        else:
            raise ValueError(f"unexpected ASGI message type {kind!r} in an http scope")

    async def _send_last(self, last: bytes) -> None:
        """The response is complete: send its last block, the end of stdout
        and END_REQUEST in one write, while the application may go on."""
        self.response_done = True
        self.handler._background.add(self)
        self.wake_receive()
        try:
            await self.request._end_with(last)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.disconnect()  # the connection is gone


_NEEDS_ASYNCIO: Final = (
    "the ASGI application needs an asyncio loop (it awaited an asyncio object on Trio): "
    "serve it with loop='asyncio' (trio-fastcgi --asgi-loop asyncio), or mark it with "
    "mark_asyncio(app) for loop='auto'"
)


def _needs_asyncio_error(exc: BaseException) -> bool:
    """Whether *exc* is what asyncio code raises when run on Trio."""
    text = str(exc)
    return (isinstance(exc, TypeError) and "unrecognized yield message" in text) or (
        isinstance(exc, RuntimeError) and "no running event loop" in text
    )


def mark_asyncio(app: ASGIApp) -> ASGIApp:
    """Mark *app* as needing asyncio, for ``loop="auto"``; returns *app*."""
    app.trio_fastcgi_loop = "asyncio"  # type: ignore[attr-defined]
    return app


@final
class ASGIHandler:
    """A native handler that serves the ASGI 3 application *app*.

    Args:
      app: the ASGI 3 callable ``async def app(scope, receive, send)``.
      script_name: the path the application is mounted at (``root_path``),
        overriding how the web server split SCRIPT_NAME and PATH_INFO.
      lifespan: ``"auto"``, ``"on"`` or ``"off"`` (see the module docs).
      loop: ``"asyncio"`` runs the application on an asyncio loop in a thread;
        ``"auto"`` (the default) does so for Django's ASGIHandler and apps
        marked with :func:`mark_asyncio`, else it runs on Trio.
      background_grace: seconds that applications still running after their
        response was sent (background tasks) get when :meth:`lifespan` exits,
        before they are cancelled.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        script_name: str | None = None,
        lifespan: Literal["auto", "on", "off"] = "auto",
        loop: Literal["trio", "asyncio", "auto"] = "auto",
        background_grace: float = DEFAULT_BACKGROUND_GRACE,
    ) -> None:
        from ._asyncio_bridge import AsyncioApp, needs_asyncio

        #: The asyncio bridge, when the application runs on asyncio.
        self._asyncio: AsyncioApp | None = None
        if loop == "asyncio" or (loop == "auto" and needs_asyncio(app)):
            app = self._asyncio = AsyncioApp(app)
        elif loop == "trio" and needs_asyncio(app):
            LOGGER.warning(
                "%s needs an asyncio loop, but loop='trio' was chosen: its requests will "
                "fail; use loop='auto' or 'asyncio' (trio-fastcgi --asgi-loop auto)",
                f"{type(app).__module__}.{type(app).__qualname__}",
            )
        self.app = app
        self.script_name = script_name
        self.lifespan_mode = lifespan
        #: Shared with the lifespan scope; each request gets a shallow copy.
        self.state: dict[str, Any] = {}
        if background_grace < 0:
            raise ValueError(f"background_grace must be >= 0, not {background_grace!r}")
        self.background_grace = background_grace
        #: Applications whose response is complete and that still run.
        self._background: set[_Exchange] = set()

    @property
    def background_count(self) -> int:
        """How many applications still run after their response was complete."""
        return len(self._background)

    def spawn_request(self, run: Callable[[Request], Awaitable[None]], request: Request) -> None:
        """Start ``run(request)`` in a task of the adapter's own: the server
        calls this for each request, so that the application may outlive its
        request and its connection (background tasks). Its task is a system
        task with the context of the caller, outside every connection's cancel
        scope; the request stops it through its _cancel_hook."""
        trio.lowlevel.spawn_system_task(
            run, request, name="trio_fastcgi.asgi request", context=contextvars.copy_context()
        )

    async def __call__(self, request: Request) -> None:
        scope = build_scope(request, script_name=self.script_name)
        scope["state"] = dict(self.state)
        exchange = _Exchange(self, request)
        # An abort, or the connection's end, tells the application and gives
        # it DISCONNECT_GRACE seconds before its request's scope cancels it.
        request._cancel_hook = exchange.abort
        try:
            await self.app(scope, exchange.receive, exchange.send)
        except trio.Cancelled:
            raise
        except BaseException as exc:
            if exchange.response_done:
                # Its request is over: nobody else can report it.
                LOGGER.error(
                    "request %d: the ASGI application failed after its response was complete",
                    request.request_id,
                    exc_info=exc,
                )
                return
            if exchange.disconnected and isinstance(exc, OSError):
                return
            if self._asyncio is None and _needs_asyncio_error(exc):
                raise RuntimeError(_NEEDS_ASYNCIO) from exc
            raise
        finally:
            # The hook refers to the exchange, which refers to the request:
            # without this the cycle would keep both, and the request's
            # buffers, until the garbage collector runs.
            request._cancel_hook = None
            exchange.returned()
        if exchange.disconnected:
            return  # the client is gone: what was sent of the response is all
        if not exchange.started:
            raise RuntimeError("the ASGI application returned without sending a response")
        if not exchange.response_done:
            LOGGER.error(
                "request %d: the ASGI application returned before finishing its response body",
                request.request_id,
            )
            await request.stdout.aclose()

    async def wait_background(self) -> None:
        """Wait up to ``background_grace`` seconds for the applications still
        running after their response, then cancel the rest (a WARNING names
        them) and wait for them to end. :meth:`lifespan` does this on exit."""
        try:
            with trio.move_on_after(self.background_grace):
                while self._background:
                    await next(iter(self._background)).wait_done()
        finally:
            left = sorted(self._background, key=lambda run: run.request_id)
            if left:
                LOGGER.warning(
                    "cancelling %d ASGI application(s) still running after their response "
                    "(background tasks), %g s after serving stopped: request(s) %s",
                    len(left),
                    self.background_grace,
                    ", ".join(str(run.request_id) for run in left),
                )
                with trio.CancelScope(shield=True):
                    for run in left:
                        run.cancel()
                    for run in left:
                        await run.wait_done()

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Run the application's lifespan startup, yield, then its shutdown.

        Before the shutdown, applications still running after their response
        are waited for, then cancelled (:meth:`wait_background`). For an
        application on asyncio, startup and shutdown run on its loop, and the
        loop's thread is stopped on exit."""
        try:
            async with self._app_lifespan():
                try:
                    yield
                finally:
                    await self.wait_background()
        finally:
            if self._asyncio is not None:
                await self._asyncio.aclose()

    @asynccontextmanager
    async def _app_lifespan(self) -> AsyncIterator[None]:
        if self.lifespan_mode == "off":
            yield
            return
        to_app, app_inbox = trio.open_memory_channel[Message](2)
        app_outbox, from_app = trio.open_memory_channel[Message](2)
        scope = {"type": "lifespan", "asgi": dict(_ASGI_VERSION), "state": self.state}
        failure: list[BaseException] = []

        # The application's lifespan task outlives cancellation of the block
        # (Ctrl+C, a test's teardown) so that it still gets its shutdown.
        app_scope = trio.CancelScope(shield=True)

        async def run() -> None:
            with app_scope:
                async with app_outbox:
                    try:
                        await self.app(scope, app_inbox.receive, app_outbox.send)
                    except Exception as exc:
                        failure.append(exc)

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run)
                try:
                    await to_app.send({"type": "lifespan.startup"})
                    reply = await self._lifespan_reply(from_app, failure, "startup")
                    if reply is None:
                        # The application does not do lifespan ("auto"): serve anyway.
                        yield
                        return
                    try:
                        yield
                    finally:
                        with trio.CancelScope(shield=True):
                            with trio.fail_after(LIFESPAN_SHUTDOWN_TIMEOUT):
                                await to_app.send({"type": "lifespan.shutdown"})
                                await self._lifespan_reply(from_app, failure, "shutdown")
                finally:
                    app_scope.cancel()
        except BaseExceptionGroup as group:
            # Raise what went wrong, not the nursery's group around it.
            exc: BaseException = group
            while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
                exc = exc.exceptions[0]
            if exc is group:
                raise
            raise exc from None

    async def _lifespan_reply(
        self,
        from_app: trio.MemoryReceiveChannel[Message],
        failure: list[BaseException],
        phase: str,
    ) -> Message | None:
        try:
            reply = await from_app.receive()
        except trio.EndOfChannel:
            if self.lifespan_mode == "on" or phase == "shutdown":
                raise LifespanFailure(f"the ASGI application ended during lifespan {phase}") from (
                    failure[0] if failure else None
                )
            LOGGER.info(
                "the ASGI application does not support lifespan (%r); continuing without",
                failure[0] if failure else "it returned",
            )
            return None
        if reply.get("type") == f"lifespan.{phase}.complete":
            return reply
        raise LifespanFailure(f"lifespan {phase} failed: {reply.get('message', '')}")
