"""CGI as FastCGI carries it: response heads, status lines, and the params a
web server sends for an HTTP request.

Pure functions with no I/O, shared by :class:`~trio_fastcgi.Request`, the WSGI
and ASGI adapters, the test client, the dev server and the client's command
line, so each of them writes a head and builds params the same way.
"""

from __future__ import annotations

import http
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Final, TypeAlias

from ._wire import Role

HeaderItems: TypeAlias = Iterable[tuple[str, str]] | Mapping[str, str]

#: ``Status:`` lines of the status codes :class:`http.HTTPStatus` knows, made once.
STATUS_LINES: Final[Mapping[int, str]] = {
    status.value: f"Status: {status.value} {status.phrase}" for status in http.HTTPStatus
}


def status_line(status: int) -> str:
    """The ``Status:`` line for *status*: with its reason phrase if it is known."""
    return STATUS_LINES.get(status) or f"Status: {status}"


def header_items(headers: HeaderItems) -> Iterable[tuple[str, str]]:
    """*headers* as (name, value) pairs: a mapping's items, or the pairs given."""
    # type() first: an isinstance() check against an ABC is slow, and a dict
    # or list is what nearly every caller passes.
    kind = type(headers)
    if kind is list or kind is tuple:
        return headers  # type: ignore[return-value]
    return headers.items() if isinstance(headers, Mapping) else headers


def format_cgi_head(status: int | str, headers: HeaderItems) -> bytes:
    """A CGI response head: a ``Status:`` line, headers, a blank line.

    *status* is a code (sent with its reason phrase if it is known) or a whole
    ``"NNN Reason"`` already checked by the caller, as WSGI gives it.

    Raises:
      TypeError: a header name or value is not a ``str``.
      ValueError: a header name is empty or holds ``:``, or a name or value
        holds CR or LF (it would split the head); :exc:`UnicodeEncodeError`
        if one is not latin-1.
    """
    if type(status) is int:
        lines = [STATUS_LINES.get(status) or f"Status: {status}"]
    else:
        lines = ["Status: " + status if isinstance(status, str) else status_line(status)]
    for name, value in header_items(headers):
        # A name or value that is not a str fails the first "in" with TypeError.
        if (
            ":" in name
            or "\n" in name
            or "\r" in name
            or "\n" in value
            or "\r" in value
            or not name
        ):
            raise ValueError(f"invalid header {name!r}: {value!r}")
        lines.append(name + ": " + value)
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")


def _text(value: str | bytes) -> bytes:
    # str as os.environ holds it: UTF-8, undecodable bytes kept as surrogates.
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def _field(value: str | bytes) -> bytes:
    # HTTP field text is latin-1 when it is given as str.
    return value if isinstance(value, bytes) else value.encode("latin-1")


def request_params(
    method: str | bytes,
    uri: str | bytes,
    *,
    headers: Iterable[tuple[str | bytes, str | bytes]] = (),
    body_length: int | None = None,
    server: tuple[str, int],
    server_name: str | bytes | None = None,
    client: tuple[str, int | None] | None = None,
    script_name: str | bytes | None = "",
    scheme: str = "http",
    protocol: str | bytes = "HTTP/1.1",
    software: str,
    role: Role = Role.RESPONDER,
    drop_unsafe_headers: bool = False,
) -> dict[bytes, bytes]:
    """The CGI params a web server sends for an HTTP request, in the order
    nginx's stock ``fastcgi_params`` sends them.

    Args:
      method: ``REQUEST_METHOD``, as given (not upper-cased).
      uri: the request target as sent: the percent-encoded path and an
        optional ``?query``. It is ``REQUEST_URI``; the path before ``?`` is
        ``DOCUMENT_URI``, the rest ``QUERY_STRING``.
      headers: the request's header fields. ``Content-Type`` and
        ``Content-Length`` become ``CONTENT_TYPE``/``CONTENT_LENGTH`` (the last
        one given wins); any other ``Name-X`` becomes ``HTTP_NAME_X``, repeats
        joined with ``", "``.
      body_length: ``CONTENT_LENGTH`` unless a Content-Length header gives it.
      server: ``SERVER_ADDR`` and ``SERVER_PORT``.
      server_name: ``SERVER_NAME``; default the Host header without its port,
        else the server's address.
      client: ``REMOTE_ADDR`` and ``REMOTE_PORT`` (left out if None).
      script_name: where the application is mounted: ``SCRIPT_NAME``, with
        ``PATH_INFO`` the percent-decoded path after it (the whole path for
        ``""``, as nginx's stock params send it). None makes the whole
        (encoded) path ``SCRIPT_NAME``, with no ``PATH_INFO``, as a CGI
        script's URL is.
      scheme: ``REQUEST_SCHEME``; ``"https"`` adds ``HTTPS=on``.
      protocol: ``SERVER_PROTOCOL``.
      software: ``SERVER_SOFTWARE``.
      role: the FastCGI role. For an Authorizer, ``CONTENT_LENGTH``,
        ``PATH_INFO`` and ``SCRIPT_NAME`` are left out (as the spec says) and
        ``FCGI_ROLE=AUTHORIZER`` is added (as Apache does).
      drop_unsafe_headers: leave out headers whose name holds ``_`` (it would
        collide with ``-``) and ``Proxy`` (the httpoxy hole), as nginx does.

    str values are encoded as UTF-8 (with ``surrogateescape``), header fields
    as latin-1; bytes are sent as they are.

    Raises:
      ValueError: the path is not under *script_name*.
    """
    target = _text(uri)
    path, _, query = target.partition(b"?")
    decoded_path = urllib.parse.unquote_to_bytes(path)
    params: dict[bytes, bytes] = {
        b"GATEWAY_INTERFACE": b"CGI/1.1",
        b"SERVER_SOFTWARE": _text(software),
        b"SERVER_PROTOCOL": _text(protocol),
        b"REQUEST_SCHEME": _text(scheme),
        b"REQUEST_METHOD": _text(method),
        b"REQUEST_URI": target,
        b"DOCUMENT_URI": path,
    }
    if script_name is None:
        params[b"SCRIPT_NAME"] = path
    else:
        script = _text(script_name)
        mount = script.rstrip(b"/")
        if script and not (decoded_path == script or decoded_path.startswith(mount + b"/")):
            raise ValueError(
                f"path {path.decode('latin-1')!r} is not under script_name {script_name!r}"
            )
        params[b"SCRIPT_NAME"] = script
        params[b"PATH_INFO"] = decoded_path[len(mount) :] if script else decoded_path
    params[b"QUERY_STRING"] = query
    params[b"SERVER_ADDR"] = server[0].encode()
    params[b"SERVER_PORT"] = str(server[1]).encode()
    params[b"SERVER_NAME"] = b""  # its place in the order; set below
    if client is not None:
        params[b"REMOTE_ADDR"] = client[0].encode()
        if client[1] is not None:
            params[b"REMOTE_PORT"] = str(client[1]).encode()
    if scheme == "https":
        params[b"HTTPS"] = b"on"
    if body_length is not None:
        params[b"CONTENT_LENGTH"] = str(body_length).encode()
    for name, value in headers:
        field_name = _field(name).strip()
        if drop_unsafe_headers and (b"_" in field_name or field_name.lower() == b"proxy"):
            continue
        key = field_name.upper().replace(b"-", b"_")
        if key not in (b"CONTENT_TYPE", b"CONTENT_LENGTH"):
            key = b"HTTP_" + key
            if key in params:
                params[key] += b", " + _field(value)
                continue
        params[key] = _field(value)
    if server_name is None:
        host = params.get(b"HTTP_HOST", b"")
        # Host without the port; an IPv6 literal keeps its brackets.
        host = host[: host.find(b"]") + 1] if host.startswith(b"[") else host.partition(b":")[0]
        params[b"SERVER_NAME"] = host or params[b"SERVER_ADDR"]
    else:
        params[b"SERVER_NAME"] = _text(server_name)
    if role == Role.AUTHORIZER:
        for key in (b"CONTENT_LENGTH", b"PATH_INFO", b"SCRIPT_NAME"):
            params.pop(key, None)
        params[b"FCGI_ROLE"] = b"AUTHORIZER"
    return params
