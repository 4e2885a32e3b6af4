"""The access log of the ``trio-fastcgi`` command: one line per request.

Lines go to the ``trio_fastcgi.access`` logger at INFO, in the "combined"
format of Apache and nginx with two fields added at the end (an example is in
docs/reference/cli.rst): the client (``REMOTE_ADDR``), ``-`` (no identd), the user
(``REMOTE_USER``), when the request reached the application, the request line
(``REQUEST_METHOD``, ``REQUEST_URI``, ``SERVER_PROTOCOL``), the status, the
bytes of the response body, ``Referer`` and ``User-Agent``, the FastCGI
request id, and the seconds the handler took. A field that is not known is
``-``. As nginx does, ``"``, ``\\``, control characters and bytes above 0x7e
are written as ``\\xHH``, so one line is always one request.

The status and the body size come from what the handler wrote to stdout: the
status is its CGI head's ``Status:`` (200 without one; 302 for a ``Location:``
with an absolute URL), read from the first write, which holds the whole head
for responses made by :meth:`Request.respond` and the WSGI and ASGI adapters.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Final, final

from ._exceptions import EndRequestWith
from ._served_connection import request_spawner
from ._workers import Abandoning

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ._request import Request
    from ._served_connection import Handler, Spawn

ACCESS_LOGGER: Final = logging.getLogger("trio_fastcgi.access")

_MONTHS: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
                  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")  # fmt: skip
_PLAIN: Final = frozenset(range(0x20, 0x7F)) - {ord('"'), ord("\\")}


def escape(value: str) -> str:
    """*value* (decoded with ``surrogateescape``, as :attr:`Request.params`
    are) with ``"``, ``\\``, control and non-ASCII bytes as ``\\xHH``."""
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return value
    raw = value.encode("utf-8", "surrogateescape")
    return "".join(chr(byte) if byte in _PLAIN else f"\\x{byte:02X}" for byte in raw)


def _field(value: str | None) -> str:
    return escape(value) if value else "-"


def format_time(when: datetime) -> str:
    """``03/Dec/2026:06:17:49 +0000``, whatever the locale."""
    offset = when.strftime("%z") or "+0000"
    return f"{when.day:02d}/{_MONTHS[when.month - 1]}/{when:%Y:%H:%M:%S} {offset}"


def format_access_line(
    params: Mapping[str, str],
    *,
    status: int | None,
    body_bytes: int | None,
    request_id: int,
    when: datetime,
    duration: float,
) -> str:
    """One access-log line for a request with these CGI *params*."""
    uri = params.get("REQUEST_URI")
    if not uri:
        uri = params.get("SCRIPT_NAME", "") + params.get("PATH_INFO", "")
        if params.get("QUERY_STRING"):
            uri += "?" + params["QUERY_STRING"]
    method = params.get("REQUEST_METHOD") or "-"
    protocol = params.get("SERVER_PROTOCOL") or "-"
    request_line = f"{escape(method)} {escape(uri) or '-'} {escape(protocol)}"
    return (
        f"{_field(params.get('REMOTE_ADDR'))} - {_field(params.get('REMOTE_USER'))} "
        f'[{format_time(when)}] "{request_line}" '
        f"{'-' if status is None else status} {'-' if body_bytes is None else body_bytes} "
        f'"{_field(params.get("HTTP_REFERER"))}" "{_field(params.get("HTTP_USER_AGENT"))}" '
        f"request_id={request_id} duration={duration:.6f}"
    )


def response_summary(first_chunk: bytes, bytes_sent: int) -> tuple[int | None, int | None]:
    """(status, body bytes) of a CGI response whose stdout began with
    *first_chunk* and had *bytes_sent* bytes in all; None where that chunk does
    not tell (it ends inside the head)."""
    status: int | None = None
    has_status = False
    redirect = False
    position = 0
    while True:
        end = first_chunk.find(b"\n", position)
        if end < 0:
            # The head goes on past this chunk: only a Status: seen so far is known.
            return status, None
        line = first_chunk[position:end].rstrip(b"\r")
        position = end + 1
        if not line:
            break
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"status" and not has_status:
            has_status = True
            code = value.strip()[:3]
            status = int(code) if code.isdigit() else None  # the web server refuses it
        elif name == b"location":
            redirect = b"://" in value
    if not has_status:
        status = 302 if redirect else 200
    return status, bytes_sent - position


@final
class AccessLogHandler:
    """A native handler that calls *handler* and then logs the request to
    :data:`ACCESS_LOGGER`. It passes :meth:`abandon` on, so a WSGI
    application's stuck threads are still abandoned on a stop."""

    def __init__(self, handler: Handler, logger: logging.Logger = ACCESS_LOGGER) -> None:
        self.handler = handler
        self.logger = logger
        #: The wrapped handler's, passed on: its requests still run in its
        #: own tasks (the ASGI adapter's).
        self.spawn_request: Spawn | None = request_spawner(handler)

    async def __call__(self, request: Request) -> int | None:
        """Serve *request* with the wrapped handler, then log it: once the
        handler returns, or when the request ends if that is earlier (an ASGI
        response is complete while its application runs on)."""
        if not self.logger.isEnabledFor(logging.INFO):
            return await self.handler(request)
        when = datetime.now(timezone.utc).astimezone()
        started = time.perf_counter()

        def log(failed: bool) -> None:
            if request._on_end is not None:  # not logged yet
                request._on_end = None
                self._log(request, when, time.perf_counter() - started, failed)

        request._on_end = lambda: log(False)
        failed = False
        try:
            return await self.handler(request)
        except Exception as exc:
            failed = not isinstance(exc, EndRequestWith)
            raise
        finally:
            log(failed)

    def _log(self, request: Request, when: datetime, duration: float, failed: bool) -> None:
        stdout = request.stdout
        status: int | None
        if stdout.bytes_sent:
            status, body_bytes = response_summary(stdout._first_chunk, stdout.bytes_sent)
        elif failed:
            status, body_bytes = 500, None  # the server sends its plain 500
        else:
            status, body_bytes = None, 0
        line = format_access_line(
            request.params,
            status=status,
            body_bytes=body_bytes,
            request_id=request.request_id,
            when=when,
            duration=duration,
        )
        self.logger.info("%s", line)

    def abandon(self) -> list[Request]:
        """What the wrapped handler's ``abandon()`` gives up on, if it has one."""
        if isinstance(self.handler, Abandoning):
            return self.handler.abandon()
        return []
