"""Serve a WSGI (PEP 3333) application over FastCGI.

``WSGIHandler(app)`` is a native handler: pass it to any ``serve_*`` function.
Each request runs the application in a worker thread (at most ``limiter``'s
tokens at once), so blocking application code never stalls the Trio loop. The
thread talks to the request through :func:`trio.from_thread.run`:

- ``wsgi.input`` is a blocking file object fed from the request's stdin, read
  chunk by chunk as the application asks (no buffering of the whole body);
- every chunk the application yields (or passes to ``write()``) is sent to the
  web server before the next one is asked for;
- ``wsgi.errors`` writes to the FastCGI stderr stream, which the web server
  logs.

If the web server aborts the request (``FCGI_ABORT_REQUEST`` or a closed
connection), the application's next read or write raises
:class:`ClientDisconnected` (an :class:`OSError`).

Authorizer role: enable it with ``roles={Role.AUTHORIZER, ...}``. The
application's response is the authorizer's answer as is: status 200 allows the
request and each ``Variable-NAME`` header becomes the param ``NAME`` of the
request the web server then serves; any other status denies and goes to the
client with its headers and body. ``environ["FCGI_ROLE"]`` tells the roles apart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator
from functools import partial
from types import TracebackType
from typing import Final, Protocol, TypeAlias, TypeVar, final

import trio

from ._exceptions import InputError
from ._request import Request

T = TypeVar("T")

__all__ = ["ClientDisconnected", "WSGIApp", "WSGIHandler", "build_environ"]

ExcInfo: TypeAlias = tuple[type[BaseException], BaseException, TracebackType]
OptExcInfo: TypeAlias = ExcInfo | tuple[None, None, None]
WriteCallable: TypeAlias = Callable[[bytes], object]


class StartResponse(Protocol):
    def __call__(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: OptExcInfo | None = ...,
        /,
    ) -> WriteCallable: ...


WSGIEnviron: TypeAlias = dict[str, object]
WSGIApp: TypeAlias = Callable[[WSGIEnviron, StartResponse], Iterable[bytes]]

#: Worker threads running WSGI applications at once, per handler (the
#: ``--threads`` option of the command).
DEFAULT_THREADS: Final = 40
#: Bytes asked from stdin at a time when the application reads without a size.
_READ_CHUNK: Final = 64 * 1024
_TRUE_VALUES: Final = frozenset({"on", "1", "yes", "true"})


class ClientDisconnected(OSError):
    """The web server aborted the request; nothing more can be read or written."""


def _split_path(environ: dict[str, str], script_name: str | None) -> tuple[str, str]:
    """SCRIPT_NAME and PATH_INFO for the application.

    - With *script_name* (the application's mount point, e.g. ``/app.fcgi``
      under mod_fcgid), the full path is split at it.
    - If the web server sent PATH_INFO, its split is kept.
    - Otherwise (nginx's stock ``fastcgi_params`` send the whole path as
      SCRIPT_NAME and no PATH_INFO) the whole path is PATH_INFO, mounted at "".
    """
    sent_script = environ.get("SCRIPT_NAME", "")
    sent_path = environ.get("PATH_INFO")
    if script_name is not None:
        root = script_name.rstrip("/")
        full = sent_script + (sent_path or "")
        if full == root or full.startswith(root + "/"):
            return root, full[len(root) :]
        return root, full
    if sent_path is not None:
        return sent_script, sent_path
    return "", sent_script


def build_environ(
    request: Request,
    *,
    script_name: str | None = None,
) -> dict[str, str]:
    """The CGI part of a WSGI environ for *request*: every param as a native
    string (latin-1 of the raw bytes, as PEP 3333 requires), with SCRIPT_NAME and
    PATH_INFO split (see the module docs) and the keys PEP 3333 requires
    present. The ``wsgi.*`` keys are added by :class:`WSGIHandler`."""
    environ = {
        name.decode("latin-1"): value.decode("latin-1") for name, value in request.raw_params
    }
    environ["SCRIPT_NAME"], environ["PATH_INFO"] = _split_path(environ, script_name)
    environ.setdefault("REQUEST_METHOD", "GET")
    environ.setdefault("QUERY_STRING", "")
    environ.setdefault("SERVER_NAME", "localhost")
    environ.setdefault("SERVER_PORT", "80")
    environ.setdefault("SERVER_PROTOCOL", "HTTP/1.0")
    # nginx sends CONTENT_LENGTH="" and CONTENT_TYPE="" without a body; PEP 3333
    # allows both absent, and int(environ.get("CONTENT_LENGTH", 0)) then works.
    for name in ("CONTENT_LENGTH", "CONTENT_TYPE"):
        if environ.get(name) == "":
            del environ[name]
    return environ


def _url_scheme(environ: dict[str, str]) -> str:
    if environ.get("HTTPS", "").lower() in _TRUE_VALUES:
        return "https"
    scheme = environ.get("REQUEST_SCHEME", "").lower()
    return scheme if scheme in ("http", "https") else "http"


@final
class _Bridge:
    """Runs coroutines of the request's Trio task from the application thread,
    turning the request's cancellation into :class:`ClientDisconnected`."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.disconnected = False

    def run(self, fn: Callable[[], Awaitable[T]]) -> T:
        if self.disconnected:
            raise ClientDisconnected("the web server aborted the request")
        try:
            return trio.from_thread.run(fn)
        except trio.Cancelled:
            self.disconnected = True
            raise ClientDisconnected("the web server aborted the request") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.disconnected = True
            raise ClientDisconnected(f"the connection is gone: {exc}") from None


@final
class WSGIInput:
    """``wsgi.input``: a blocking, read-only file over the request's stdin.

    Reads ask the Trio side for at most what is needed, so the body streams in
    with the FastCGI flow control; ``read()`` with no size reads to the end.
    """

    def __init__(self, bridge: _Bridge) -> None:
        self._bridge = bridge
        self._buffer = b""
        self._eof = False

    def _fill(self, size: int) -> bool:
        """Receive one more chunk of at most *size* bytes; False at the end."""
        if self._eof:
            return False
        stdin = self._bridge.request.stdin
        try:
            chunk = self._bridge.run(partial(stdin.receive_some, size))
        except InputError as exc:
            # The body was cut short: that is an I/O error for the reader.
            self._eof = True
            raise OSError(f"request body incomplete: {exc}") from exc
        if not chunk:
            self._eof = True
            return False
        self._buffer += chunk
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            parts = [self._buffer]
            self._buffer = b""
            while self._fill(_READ_CHUNK):
                parts.append(self._buffer)  # just the new chunk: the buffer was empty
                self._buffer = b""
            return b"".join(parts)
        # Like a buffered file: size bytes, fewer only at the end of the body.
        while len(self._buffer) < size and self._fill(size - len(self._buffer)):
            pass
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def readline(self, size: int | None = -1) -> bytes:
        limit = -1 if size is None else size
        if limit == 0:
            return b""
        while True:
            end = self._buffer.find(b"\n") + 1
            if end == 0 and 0 <= limit <= len(self._buffer):
                end = limit
            if end == 0 and self._fill(_READ_CHUNK):
                continue
            if end == 0:
                end = len(self._buffer)
            if 0 <= limit < end:
                end = limit
            line, self._buffer = self._buffer[:end], self._buffer[end:]
            return line

    def readlines(self, hint: int = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


@final
class WSGIErrors:
    """``wsgi.errors``: text written here goes to the FastCGI stderr stream."""

    def __init__(self, bridge: _Bridge) -> None:
        self._bridge = bridge

    def write(self, text: str) -> int:
        if text and not self._bridge.disconnected:
            data = text.encode("utf-8", "replace")
            self._bridge.run(partial(self._bridge.request.stderr.send_all, data))
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pass


def _cgi_head(status: str, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"Status: {status}"]
    for name, value in headers:
        lines.append(f"{name}: {value}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")


def _check_status_and_headers(status: object, headers: object) -> None:
    if type(status) is not str:
        raise TypeError(f"WSGI status must be a str, not {type(status).__name__}")
    code = status.split(" ", 1)[0]
    if len(code) != 3 or not code.isdigit() or "\r" in status or "\n" in status:
        raise ValueError(f"bad WSGI status {status!r}: expected like '200 OK'")
    if type(headers) is not list:
        raise TypeError(f"WSGI headers must be a list, not {type(headers).__name__}")
    for item in headers:
        if type(item) is not tuple or len(item) != 2:
            raise TypeError(f"WSGI header {item!r} is not a (name, value) tuple")
        name, value = item
        if type(name) is not str or type(value) is not str:
            raise TypeError(f"WSGI header {item!r} must be native strings")
        if not name or ":" in name or any(c in name or c in value for c in "\r\n"):
            raise ValueError(f"invalid WSGI header {item!r}")
        name.encode("latin-1")
        value.encode("latin-1")


@final
class _Response:
    """start_response, write() and the streaming of the body, in the app thread."""

    def __init__(self, bridge: _Bridge) -> None:
        self._bridge = bridge
        self._status: str | None = None
        self._headers: list[tuple[str, str]] = []
        self.head_sent = False

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: OptExcInfo | None = None,
    ) -> WriteCallable:
        if exc_info is not None and exc_info[1] is not None:
            try:
                if self.head_sent:
                    # Too late to change the response: PEP 3333 says re-raise.
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # no reference cycle through the traceback
        elif self._status is not None:
            raise AssertionError("start_response called twice without exc_info")
        _check_status_and_headers(status, headers)
        self._status = status
        self._headers = list(headers)
        return self.write

    def write(self, data: bytes) -> None:
        if type(data) is not bytes:
            raise TypeError(f"WSGI body chunks must be bytes, not {type(data).__name__}")
        if self._status is None:
            raise AssertionError("write() before start_response()")
        if not self.head_sent:
            self.head_sent = True
            data = _cgi_head(self._status, self._headers) + data
        elif not data:
            return
        self._bridge.run(partial(self._bridge.request.stdout.send_all, data))

    def finish(self) -> None:
        if self._status is None:
            raise RuntimeError("the WSGI application returned without calling start_response()")
        if not self.head_sent:
            self.write(b"")


@final
class WSGIHandler:
    """A native handler that serves the WSGI application *app*.

    Args:
      app: the WSGI callable.
      limiter: bounds the worker threads running applications at once; a new
        ``trio.CapacityLimiter(DEFAULT_THREADS)`` by default.
      script_name: the path the application is mounted at, overriding how the
        web server split SCRIPT_NAME and PATH_INFO (``/app.fcgi`` for
        ``https://host/app.fcgi/page`` under mod_fcgid).
      multiprocess: the value of ``wsgi.multiprocess`` (true under ``--workers``).
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        limiter: trio.CapacityLimiter | None = None,
        script_name: str | None = None,
        multiprocess: bool = False,
    ) -> None:
        self.app = app
        self.limiter = limiter if limiter is not None else trio.CapacityLimiter(DEFAULT_THREADS)
        self.script_name = script_name
        self.multiprocess = multiprocess

    async def __call__(self, request: Request) -> None:
        bridge = _Bridge(request)
        cgi_environ = build_environ(request, script_name=self.script_name)
        environ: dict[str, object] = dict(cgi_environ)
        environ.update(
            {
                "wsgi.version": (1, 0),
                "wsgi.url_scheme": _url_scheme(cgi_environ),
                "wsgi.input": WSGIInput(bridge),
                "wsgi.errors": WSGIErrors(bridge),
                "wsgi.multithread": True,
                "wsgi.multiprocess": self.multiprocess,
                "wsgi.run_once": False,
                # reads return b"" at the end of the body, even without
                # CONTENT_LENGTH (chunked uploads through nginx)
                "wsgi.input_terminated": True,
                "trio_fastcgi.request": request,
            }
        )
        try:
            await trio.to_thread.run_sync(self._run_app, environ, bridge, limiter=self.limiter)
        except Exception:
            if not bridge.disconnected:
                raise
            # The web server gave up on the request: not the application's
            # failure. Raises Cancelled if this request was aborted.
            await trio.lowlevel.checkpoint()
            return
        await request.stdout.aclose()

    def _run_app(self, environ: dict[str, object], bridge: _Bridge) -> None:
        response = _Response(bridge)
        result = self.app(environ, response.start_response)
        try:
            for chunk in result:
                if chunk:
                    response.write(chunk)
            response.finish()
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
