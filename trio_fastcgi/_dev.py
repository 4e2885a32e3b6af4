"""``trio-fastcgi dev MODULE:APP``: see an application work with no web server.

FOR DEVELOPMENT ONLY. One Trio run holds both halves:

- the application, served over FastCGI by :func:`trio_fastcgi.serve_tcp` on an
  ephemeral loopback port, exactly as in production;
- a small HTTP/1.1 front end on h11 that plays the web server: for each HTTP
  request it builds the CGI params nginx would send, streams the body to the
  application as FCGI_STDIN through :mod:`trio_fastcgi.client`, and streams the
  CGI response back with proper HTTP framing (Content-Length if the
  application gave one, else chunked), keeping connections alive. If the
  application cannot be reached or breaks the protocol, the client gets a
  502 Bad Gateway.

It is deliberately simple (no TLS, no static files, no buffering limits tuned
for the Internet): in production put nginx, Apache or another web server in
front of ``trio-fastcgi MODULE:APP``.
"""

from __future__ import annotations

import argparse
import contextlib
import http
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from functools import partial
from typing import Final, final

import h11
import trio

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found,unused-ignore]

from ._app import AppOptions, CLIError, add_app_arguments, add_logging_options, configure_logging
from ._cgi import request_params
from ._listeners import ListenError, listen_error
from ._server import serve_tcp
from ._version import __version__
from ._workers import LoadedApp
from .client import (
    CGIResponse,
    CGIResponseError,
    Client,
    ServerProtocolError,
    open_tcp_client,
    parse_cgi_response,
)

LOGGER: Final = logging.getLogger("trio_fastcgi.dev")

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8000
#: An idle keep-alive HTTP connection is closed after this many seconds.
KEEP_ALIVE_TIMEOUT: Final = 75.0
#: Largest CGI response head accepted from the application.
MAX_HEAD_SIZE: Final = 64 * 1024
_RECEIVE_SIZE: Final = 64 * 1024
#: Not passed on to the client: they describe the hop, not the response.
_HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
BANNER: Final = (
    "\n"
    "  trio-fastcgi dev: a DEVELOPMENT server. Do not use it in production.\n"
    "  In production run `trio-fastcgi MODULE:APP` behind nginx, Apache, lighttpd,\n"
    "  Caddy or HAProxy.\n"
)


class _ClientGone(Exception):
    """The HTTP client closed the connection or sent something unusable."""


def cgi_params(
    request: h11.Request,
    *,
    server: tuple[str, int],
    client: tuple[str, int] | None,
) -> list[tuple[bytes, bytes]]:
    """The CGI params for *request*, as nginx's stock ``fastcgi_params`` would
    send them (PATH_INFO holds the whole path, SCRIPT_NAME is empty)."""
    return list(
        request_params(
            bytes(request.method),
            bytes(request.target),
            headers=request.headers,
            server=server,
            client=client,
            protocol=b"HTTP/" + bytes(request.http_version),
            software=f"trio-fastcgi-dev/{__version__}",
            drop_unsafe_headers=True,
        ).items()
    )


def _split_head(buffer: bytes) -> tuple[bytes, bytes] | None:
    """(head including the blank line, rest) once *buffer* holds a whole head."""
    ends = [i for i in (buffer.find(b"\r\n\r\n"), buffer.find(b"\n\n")) if i >= 0]
    if not ends:
        return None
    end = min(ends)
    size = 4 if buffer.startswith(b"\r\n\r\n", end) else 2
    return buffer[: end + size], buffer[end + size :]


@final
class _HTTPConnection:
    """One HTTP client connection, and the FastCGI connection behind it."""

    def __init__(self, stream: trio.SocketStream, app_port: int) -> None:
        self.stream = stream
        self.app_port = app_port
        self.conn = h11.Connection(h11.SERVER)
        self.fastcgi: Client | None = None
        #: Set when the connection cannot carry another request.
        self.closing = False
        sockname = stream.socket.getsockname()
        self.server = (str(sockname[0]), int(sockname[1]))
        try:
            peer = stream.socket.getpeername()
            self.client: tuple[str, int] | None = (str(peer[0]), int(peer[1]))
        except OSError:
            self.client = None

    async def send(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data:
            await self.stream.send_all(data)

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            with trio.move_on_after(KEEP_ALIVE_TIMEOUT) as scope:
                data = await self.stream.receive_some(_RECEIVE_SIZE)
            if scope.cancelled_caught:
                raise _ClientGone("timed out waiting for the client")
            self.conn.receive_data(data)

    async def run(self, exits: AsyncExitStack) -> None:
        while True:
            try:
                event = await self.next_event()
            except h11.RemoteProtocolError as exc:
                await self.error_response(exc.error_status_hint, f"Bad request: {exc}\n")
                return
            if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return
            if not isinstance(event, h11.Request):
                return
            await self.handle(event, exits)
            if (
                self.closing
                or self.conn.our_state is not h11.DONE
                or self.conn.their_state is not h11.DONE
            ):
                return
            self.conn.start_next_cycle()

    async def error_response(self, status: int, text: str) -> None:
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = text.encode()
        headers = [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ]
        try:
            reason = http.HTTPStatus(status).phrase
            await self.send(h11.Response(status_code=status, headers=headers, reason=reason))
            await self.send(h11.Data(data=body))
            await self.send(h11.EndOfMessage())
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
            pass

    async def body(self) -> AsyncIterator[bytes]:
        if self.conn.they_are_waiting_for_100_continue:
            await self.send(h11.InformationalResponse(status_code=100, headers=[]))
        while True:
            try:
                event = await self.next_event()
            except h11.RemoteProtocolError as exc:
                raise _ClientGone(f"bad request body: {exc}") from exc
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            else:
                raise _ClientGone("the client went away during the request body")

    async def _fastcgi_client(self, exits: AsyncExitStack) -> Client:
        if self.fastcgi is None or not self.fastcgi.is_usable:
            self.fastcgi = await exits.enter_async_context(
                open_tcp_client("127.0.0.1", self.app_port)
            )
        return self.fastcgi

    async def handle(self, request: h11.Request, exits: AsyncExitStack) -> None:
        method = bytes(request.method)
        label = f"{method.decode('latin-1')} {bytes(request.target).decode('latin-1')}"
        params = cgi_params(request, server=self.server, client=self.client)
        status = 502
        head_sent = False
        try:
            client = await self._fastcgi_client(exits)
            async with client.open_request(params, stdin=self.body()) as active:
                buffer = b""
                split = None
                async for chunk in active.stdout:
                    buffer += chunk
                    split = _split_head(buffer)
                    if split is not None:
                        break
                    if len(buffer) > MAX_HEAD_SIZE:
                        raise CGIResponseError("the CGI response head is too large")
                if split is None:
                    raise CGIResponseError("the application sent no CGI response head")
                head, rest = split
                response = parse_cgi_response(head)
                status = response.status
                await self.send(self._response_head(response))
                head_sent = True
                send_body = method != b"HEAD"
                if rest and send_body:
                    await self.send(h11.Data(data=rest))
                async for chunk in active.stdout:
                    if send_body:
                        await self.send(h11.Data(data=bytes(chunk)))
                await active.wait_ended()
            await self.send(h11.EndOfMessage())
        except (_ClientGone, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            if head_sent or isinstance(exc, _ClientGone):
                LOGGER.info("%s: connection lost: %s", label, exc)
                self.closing = True
                return
            await self._bad_gateway(label, exc)
            return
        except (OSError, ServerProtocolError, CGIResponseError, h11.LocalProtocolError) as exc:
            if head_sent:
                LOGGER.warning("%s: response cut short: %s", label, exc)
                self.closing = True
                return
            await self._bad_gateway(label, exc)
            return
        LOGGER.info('"%s HTTP/%s" %d', label, bytes(request.http_version).decode(), status)

    async def _bad_gateway(self, label: str, exc: BaseException) -> None:
        LOGGER.error("%s: 502 Bad Gateway: %s", label, exc)
        self.fastcgi = None
        await self.error_response(502, f"Bad Gateway: the application failed ({exc})\n")

    def _response_head(self, response: CGIResponse) -> h11.Response:
        if not 200 <= response.status <= 999:
            raise CGIResponseError(f"status {response.status} is not a final response")
        headers = [
            (name, value) for name, value in response.headers if name.lower() not in _HOP_BY_HOP
        ]
        if not any(name.lower() == "server" for name, _ in headers):
            headers.append(("Server", f"trio-fastcgi-dev/{__version__}"))
        try:
            reason = http.HTTPStatus(response.status).phrase
        except ValueError:
            reason = ""
        return h11.Response(status_code=response.status, headers=headers, reason=reason)


async def _serve_http_connection(app_port: int, stream: trio.SocketStream) -> None:
    connection = _HTTPConnection(stream, app_port)
    try:
        async with AsyncExitStack() as exits:
            await connection.run(exits)
    except (_ClientGone, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        LOGGER.debug("HTTP connection closed: %s", exc)
    finally:
        await trio.aclose_forcefully(stream)


async def serve_dev(
    loaded: LoadedApp,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the loaded application over HTTP on *host*:*port* until cancelled.

    ``await nursery.start(serve_dev, loaded, port=0)`` returns the HTTP
    listeners once both halves are up.
    """
    handler, lifespan = loaded
    async with (
        lifespan if lifespan is not None else contextlib.nullcontext(),
        trio.open_nursery() as nursery,
    ):
        fastcgi_listeners = await nursery.start(
            partial(serve_tcp, handler, 0, host="127.0.0.1", web_server_addrs=["127.0.0.1"])
        )
        app_port = int(fastcgi_listeners[0].socket.getsockname()[1])
        shown = f"[{host}]" if ":" in host else host
        try:
            http_listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            error = listen_error(f"http://{shown}:{port}/", exc)
            if error is None:
                raise
            raise error from exc
        http_port = http_listeners[0].socket.getsockname()[1]
        LOGGER.info("application served over FastCGI on 127.0.0.1:%d", app_port)
        LOGGER.warning("development server: open http://%s:%d/ (Ctrl+C stops)", shown, http_port)
        await nursery.start(
            trio.serve_listeners, partial(_serve_http_connection, app_port), http_listeners
        )
        task_status.started(http_listeners)


async def _serve_until_interrupted(loaded: LoadedApp, *, host: str, port: int) -> None:
    """:func:`serve_dev` until Ctrl+C. Once serving, SIGINT cancels the server
    rather than raising KeyboardInterrupt wherever the program happens to be
    (inside an ``AsyncExitStack`` entering a nursery, that corrupts Trio's
    task tree)."""
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(serve_dev, loaded, host=host, port=port))
            async for _ in signals:
                LOGGER.info("stopped")  # Ctrl+C: what the banner says to do
                nursery.cancel_scope.cancel()
                break


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-fastcgi dev",
        description=(
            "DEVELOPMENT ONLY: serve MODULE:APP over plain HTTP, through a built-in "
            "HTTP-to-FastCGI front end, so you can open it in a browser with no web "
            "server installed. The application is served over FastCGI on a loopback "
            "port just as in production. For production use `trio-fastcgi MODULE:APP` "
            "behind a real web server."
        ),
    )
    add_app_arguments(parser)
    group = parser.add_argument_group("HTTP")
    group.add_argument("--host", default=DEFAULT_HOST, help="HTTP address (default 127.0.0.1)")
    group.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="HTTP port (default 8000; 0 picks one)"
    )
    group = parser.add_argument_group("reloading")
    group.add_argument(
        "--reload",
        action="store_true",
        help=(
            "restart the server, importing the application afresh in a new process, "
            "when a .py file changes under --app-dir or a --reload-dir "
            "(needs watchfiles: pip install 'trio-fastcgi[reload]')"
        ),
    )
    group.add_argument(
        "--reload-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="also watch DIR with --reload; repeat for several",
    )
    add_logging_options(parser.add_argument_group("logging"))
    return parser


def main(argv: Sequence[str], *, reloaded: bool = False) -> int:
    """``trio-fastcgi dev``: the exit status. *reloaded* is set in the process
    that ``--reload`` starts, which serves and leaves the watching to its parent."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.reload and not reloaded:
        return _reload(list(argv), args, parser)
    try:
        access_log = configure_logging(
            args.log_level, config_file=args.log_config, access_log=args.access_log
        )
        app = AppOptions.from_args(args, access_log=access_log)
    except CLIError as exc:
        parser.exit(2, f"trio-fastcgi dev: error: {exc}\n")
    sys.stderr.write(BANNER + "\n")
    try:
        loaded = app.load()
    except CLIError as exc:
        parser.exit(2, f"trio-fastcgi dev: error: {exc}\n")
    try:
        trio.run(partial(_serve_until_interrupted, loaded, host=args.host, port=args.port))
    except BaseException as exc:  # sorted below; anything else is raised again
        leaves = _leaves(exc)
        if all(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
            LOGGER.info("stopped")  # Ctrl+C: what the banner says to do
            return 0
        failed = next((leaf for leaf in leaves if isinstance(leaf, ListenError)), None)
        if failed is None:
            raise
        parser.exit(1, f"trio-fastcgi dev: error: {failed}\n")
    return 0


def _serve_reloaded(argv: list[str]) -> None:
    """The target of each process ``--reload`` starts (by reference: it is
    started with multiprocessing's spawn, so it imports everything afresh)."""
    # The reloader stops this process with SIGINT, even if the shell that
    # started the reloader in the background left SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main(argv, reloaded=True))


class _QuietStop(logging.Filter):
    """Drops the WARNINGs watchfiles logs on an ordinary stop: the signal it
    got, and "process already dead, exit code: 0" when Ctrl+C, which the
    terminal sends to both processes, stopped the server first."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith("process already dead"):
            return record.args != (0,)
        return not message.startswith(("KeyboardInterrupt caught", "received signal"))


def _reload(argv: list[str], args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run the dev server in a child process, and start a new one whenever a
    watched ``.py`` file changes, until SIGINT or SIGTERM."""
    try:
        import watchfiles
    except ImportError:
        parser.exit(
            2,
            "trio-fastcgi dev: error: --reload needs the watchfiles package: "
            "pip install 'trio-fastcgi[reload]' (or pip install watchfiles)\n",
        )
    try:
        configure_logging(args.log_level, config_file=args.log_config)
    except CLIError as exc:
        parser.exit(2, f"trio-fastcgi dev: error: {exc}\n")
    directories = [os.path.abspath(d) for d in [args.app_dir, *args.reload_dir]]
    for directory in directories:
        if not os.path.isdir(directory):
            parser.exit(2, f"trio-fastcgi dev: error: cannot watch {directory}: not a directory\n")
    logging.getLogger("watchfiles.main").addFilter(_QuietStop())
    LOGGER.info("reloading on changes to .py files in %s", ", ".join(directories))

    def restarting(changes: set[tuple[watchfiles.Change, str]]) -> None:
        names = sorted({os.path.relpath(path) for _, path in changes})
        LOGGER.warning("changed: %s; restarting", ", ".join(names))

    # run_process stops the server it started on the way out, also when
    # SIGTERM (which it turns into KeyboardInterrupt) comes during a restart.
    with contextlib.suppress(KeyboardInterrupt):
        watchfiles.run_process(
            *directories,
            target=_serve_reloaded,
            args=(argv,),
            target_type="function",
            callback=restarting,
            watch_filter=watchfiles.PythonFilter(),
        )
    LOGGER.info("stopped")
    return 0


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside *exc*, with exception groups flattened."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]
