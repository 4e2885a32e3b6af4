"""Serve an ASGI 3 application over FastCGI, on Trio.

``ASGIHandler(app)`` is a native handler: pass it to any ``serve_*`` function.
The application runs in the request's own Trio task, so it must be able to run
on Trio (anyio-based frameworks such as Starlette and FastAPI do, as does
Quart-Trio). Supported: the ``http`` scope (ASGI spec 2.4) and ``lifespan``.

- ``receive()`` streams the request body from stdin as ``http.request`` messages
  with ``more_body``; once the body is read it waits until the request ends and
  then returns ``http.disconnect``.
- ``http.response.start`` is held back and sent with the first body chunk; each
  ``http.response.body`` is sent as it comes (streaming).
- If the web server aborts the request (``FCGI_ABORT_REQUEST`` or a closed
  connection), ``receive()`` returns ``http.disconnect`` and ``send()`` raises
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

import contextlib
import http
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any, Final, Literal, TypeAlias, final

import trio

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found,unused-ignore]

from ._exceptions import InputError
from ._request import Request

__all__ = ["ASGIApp", "ASGIHandler", "ClientDisconnected", "LifespanFailure", "build_scope"]

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
_ASGI_VERSION: Final = {"version": "3.0", "spec_version": "2.4"}
_TRUE_VALUES: Final = frozenset({"on", "1", "yes", "true"})


class ClientDisconnected(OSError):
    """``send()`` after the web server aborted the request or the connection."""


class LifespanFailure(RuntimeError):
    """The application reported ``lifespan.startup.failed`` or
    ``lifespan.shutdown.failed``, or failed during lifespan with ``lifespan="on"``."""


def _http_version(protocol: str) -> str:
    version = protocol.partition("/")[2]
    if version in ("2", "2.0"):
        return "2"
    if version in ("3", "3.0"):
        return "3"
    return version if version in ("1.0", "1.1") else "1.1"


def _port(value: bytes) -> int | None:
    return int(value) if value.isdigit() and len(value) <= 5 else None


def _split(params: dict[bytes, bytes], script_name: str | None) -> tuple[bytes, bytes]:
    """Root path and full path, as bytes (same rules as the WSGI adapter)."""
    sent_script = params.get(b"SCRIPT_NAME", b"")
    sent_path = params.get(b"PATH_INFO")
    if script_name is not None:
        root = script_name.rstrip("/").encode("utf-8")
        return root, sent_script + (sent_path or b"")
    if sent_path is not None:
        return sent_script, sent_script + sent_path
    return b"", sent_script


def build_scope(request: Request, *, script_name: str | None = None) -> dict[str, Any]:
    """The ASGI ``http`` scope for *request* (without ``state``)."""
    params: dict[bytes, bytes] = dict(request.raw_params)
    headers: list[tuple[bytes, bytes]] = []
    for name, value in request.raw_params:
        if name.startswith(b"HTTP_"):
            headers.append((name[5:].replace(b"_", b"-").lower(), value))
        elif name in (b"CONTENT_TYPE", b"CONTENT_LENGTH") and value:
            headers.append((name.replace(b"_", b"-").lower(), value))
    root, path = _split(params, script_name)
    request_uri = params.get(b"REQUEST_URI")
    raw_path = request_uri.partition(b"?")[0] if request_uri else path
    if params.get(b"HTTPS", b"").decode("latin-1").lower() in _TRUE_VALUES:
        scheme = "https"
    else:
        scheme = "https" if params.get(b"REQUEST_SCHEME", b"").lower() == b"https" else "http"
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": dict(_ASGI_VERSION),
        "http_version": _http_version(params.get(b"SERVER_PROTOCOL", b"").decode("latin-1")),
        "method": params.get(b"REQUEST_METHOD", b"GET").decode("latin-1").upper(),
        "scheme": scheme,
        "path": path.decode("utf-8", "replace"),
        "raw_path": raw_path,
        "query_string": params.get(b"QUERY_STRING", b""),
        "root_path": root.decode("utf-8", "replace"),
        "headers": headers,
        "extensions": {
            "fastcgi": {
                "raw_params": request.raw_params,
                "role": request.role.name.lower(),
                "request_id": request.request_id,
            }
        },
    }
    remote_port = _port(params.get(b"REMOTE_PORT", b""))
    if b"REMOTE_ADDR" in params and remote_port is not None:
        scope["client"] = (params[b"REMOTE_ADDR"].decode("latin-1"), remote_port)
    server_host = params.get(b"SERVER_ADDR") or params.get(b"SERVER_NAME")
    server_port = _port(params.get(b"SERVER_PORT", b""))
    if server_host and server_port is not None:
        scope["server"] = (server_host.decode("latin-1"), server_port)
    return scope


def _cgi_head(status: int, headers: object) -> bytes:
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = ""
    lines = [f"Status: {status} {reason}".rstrip().encode("latin-1")]
    for item in headers:  # type: ignore[attr-defined]
        name, value = item
        name = bytes(name)
        value = bytes(value)
        if not name or b":" in name or any(c in name or c in value for c in (b"\r", b"\n")):
            raise ValueError(f"invalid header {name!r}: {value!r}")
        lines.append(name + b": " + value)
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


@final
class _Exchange:
    """receive() and send() of one request."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.disconnected = trio.Event()
        self.body_done = False
        self.response_done = False
        self.started = False
        self._head = b""

    async def receive(self) -> Message:
        if self.disconnected.is_set() or self.response_done:
            return {"type": "http.disconnect"}
        if not self.body_done:
            chunk = await self._receive_chunk()
            if chunk is None:
                # Disconnected, or the body was cut short: the client is gone.
                self.body_done = True
                return {"type": "http.disconnect"}
            if chunk:
                return {"type": "http.request", "body": chunk, "more_body": True}
            self.body_done = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.disconnected.wait()
        return {"type": "http.disconnect"}

    async def _receive_chunk(self) -> bytes | None:
        """The next stdin chunk, or None once the request is disconnected or
        the body turned out incomplete."""
        result: bytes | None = None
        async with trio.open_nursery() as nursery:

            async def read() -> None:
                nonlocal result
                # Cut short (IncompleteInput): result stays None.
                with contextlib.suppress(InputError):
                    result = await self.request.stdin.receive_some()
                nursery.cancel_scope.cancel()

            async def watch() -> None:
                await self.disconnected.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(read)
            nursery.start_soon(watch)
        return result

    async def send(self, message: Message) -> None:
        if self.disconnected.is_set():
            raise ClientDisconnected("the web server aborted the request")
        kind = message["type"]
        stdout = self.request.stdout
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("http.response.start sent twice")
            status = message["status"]
            if type(status) is not int or not 100 <= status <= 999:
                raise ValueError(f"bad ASGI status {status!r}")
            self._head = _cgi_head(status, message.get("headers", ()))
            self.started = True
        elif kind == "http.response.body":
            if not self.started:
                raise RuntimeError("http.response.body before http.response.start")
            if self.response_done:
                raise RuntimeError("http.response.body after the response was complete")
            body = bytes(message.get("body", b""))
            more = bool(message.get("more_body", False))
            data, self._head = self._head + body, b""
            try:
                if data:
                    await stdout.send_all(data)
                if not more:
                    self.response_done = True
                    await stdout.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                self.disconnected.set()
                raise ClientDisconnected(f"the connection is gone: {exc}") from None
        else:
            raise ValueError(f"unexpected ASGI message type {kind!r} in an http scope")


@final
class ASGIHandler:
    """A native handler that serves the ASGI 3 application *app*.

    Args:
      app: the ASGI 3 callable ``async def app(scope, receive, send)``.
      script_name: the path the application is mounted at (``root_path``),
        overriding how the web server split SCRIPT_NAME and PATH_INFO.
      lifespan: ``"auto"``, ``"on"`` or ``"off"`` (see the module docs).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        script_name: str | None = None,
        lifespan: Literal["auto", "on", "off"] = "auto",
    ) -> None:
        self.app = app
        self.script_name = script_name
        self.lifespan_mode = lifespan
        #: Shared with the lifespan scope; each request gets a shallow copy.
        self.state: dict[str, Any] = {}

    async def __call__(self, request: Request) -> None:
        scope = build_scope(request, script_name=self.script_name)
        scope["state"] = dict(self.state)
        exchange = _Exchange(request)
        failure: BaseException | None = None
        app_scope = trio.CancelScope(shield=True)
        app_done = trio.Event()

        async def run_app() -> None:
            nonlocal failure
            try:
                with app_scope:
                    await self.app(scope, exchange.receive, exchange.send)
            except Exception as exc:
                failure = exc
            finally:
                app_done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_app)
            try:
                await app_done.wait()
            except trio.Cancelled:
                # Aborted by the web server, or the connection closed: tell the
                # application, give it a moment, then stop it.
                exchange.disconnected.set()
                with trio.CancelScope(shield=True):
                    with trio.move_on_after(DISCONNECT_GRACE):
                        await app_done.wait()
                    app_scope.cancel()
                raise
        if failure is not None:
            if exchange.disconnected.is_set() and isinstance(failure, OSError):
                return
            raise failure
        if not exchange.started:
            raise RuntimeError("the ASGI application returned without sending a response")
        if not exchange.response_done:
            LOGGER.error(
                "request %d: the ASGI application returned before finishing its response body",
                request.request_id,
            )
            await request.stdout.aclose()

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Run the application's lifespan startup, yield, then its shutdown."""
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
