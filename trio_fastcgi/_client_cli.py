"""The ``python -m trio_fastcgi.client`` command: one request, like libfcgi's
``cgi-fcgi``, with the response written to standard output."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Final

import trio

from ._cgi import request_params
from ._cgi_response import CGIResponseError
from ._client import open_client
from ._client_connection import ServerProtocolError
from ._client_errors import GetValuesUnsupported
from ._wire import ProtocolStatus, Role

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup  # type: ignore[import-not-found,unused-ignore]

__all__ = [
    "EXIT_DATAERR",
    "EXIT_IOERR",
    "EXIT_PROTOCOL",
    "EXIT_REFUSED",
    "EXIT_TIMEOUT",
    "EXIT_UNAVAILABLE",
    "main",
    "parse_address",
]

_PROG: Final = "python -m trio_fastcgi.client"
_EPILOG: Final = """\
ADDRESS is HOST:PORT, [IPV6]:PORT, or the path of a unix socket (anything
with a "/" in it, or unix:PATH). PATH (default /) may carry a ?query; it
gives SCRIPT_FILENAME, SCRIPT_NAME, DOCUMENT_URI, REQUEST_URI and
QUERY_STRING. The usual CGI params are filled in (REQUEST_METHOD,
SERVER_PROTOCOL, GATEWAY_INTERFACE, SERVER_NAME/PORT, REMOTE_ADDR,
CONTENT_LENGTH of the body); --env values replace them, -p replaces both.

The application's stdout is written to stdout as it arrives (CGI headers
included, unless --body-only), its stderr to stderr.

exit status: the application's appStatus (0 if it succeeded; values above 255
give 255), or: 2 bad usage, 65 --body-only and stdout is no CGI response,
69 cannot connect, 74 connection lost before the end of the request,
75 request refused (FCGI_OVERLOADED, FCGI_CANT_MPX_CONN, FCGI_UNKNOWN_ROLE),
76 FastCGI protocol violation by the application, 124 --timeout passed.
"""
EXIT_DATAERR: Final = 65
EXIT_UNAVAILABLE: Final = 69
EXIT_IOERR: Final = 74
EXIT_REFUSED: Final = 75
EXIT_PROTOCOL: Final = 76
EXIT_TIMEOUT: Final = 124
_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})


def parse_address(text: str) -> tuple[str, int] | str:
    """``HOST:PORT`` / ``[IPV6]:PORT`` -> (host, port); a socket path -> str.

    Raises:
      ValueError: neither form.
    """
    if text.startswith("unix:"):
        return text[5:]
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep or not host:
            raise ValueError(f"bad address {text!r}: expected [IPV6]:PORT")
    elif "/" in text:
        return text
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(
                f"bad address {text!r}: expected HOST:PORT, [IPV6]:PORT or a unix socket path"
            )
        host = host or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad port in address {text!r}")
    return host, int(port)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="Send one FastCGI request (like libfcgi's cgi-fcgi) and print the response.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("address", metavar="ADDRESS", help="where the application listens")
    parser.add_argument("path", metavar="PATH", nargs="?", help="the script path, with ?query")
    parser.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a FastCGI param (repeatable)",
    )
    parser.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="an HTTP request header, sent as HTTP_NAME (Content-Type as CONTENT_TYPE)",
    )
    parser.add_argument("--env", action="store_true", help="send the environment as params")
    parser.add_argument("-X", "--method", help="REQUEST_METHOD (default GET, or POST with a body)")
    body = parser.add_mutually_exclusive_group()
    body.add_argument(
        "--stdin",
        action="store_true",
        help="send standard input as the body (the default for -X POST/PUT/PATCH)",
    )
    body.add_argument("-d", "--data", metavar="TEXT", help="send TEXT as the body")
    parser.add_argument(
        "--role",
        choices=[role.name.lower() for role in Role],
        default="responder",
        help="the FastCGI role (default responder)",
    )
    parser.add_argument(
        "--filter-data",
        metavar="FILE",
        help="Filter role: the file sent as FCGI_DATA (sets FCGI_DATA_LENGTH/LAST_MOD)",
    )
    parser.add_argument(
        "--get-values",
        nargs="*",
        metavar="NAME",
        help="ask FCGI_GET_VALUES (default: the three standard names) and print NAME=VALUE lines",
    )
    parser.add_argument(
        "--body-only",
        action="store_true",
        help="parse the CGI response and print only its body",
    )
    parser.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="give up after SECONDS (exit 124)"
    )
    return parser


def _cli_params(
    args: argparse.Namespace, body: bytes | None, environ: Mapping[str, str]
) -> list[tuple[bytes, bytes]]:
    path = args.path or "/"
    script = path.partition("?")[0]
    method = (args.method or ("POST" if body is not None else "GET")).upper()
    headers: list[tuple[bytes, bytes]] = []
    for header in args.header:
        name, colon, value = header.partition(":")
        if not colon or not name.strip():
            raise ValueError(f"bad header {header!r}: expected 'NAME: VALUE'")
        headers.append((_encode(name.strip()), _encode(value.strip())))
    params = request_params(
        method,
        path,
        headers=headers,
        body_length=None if body is None else len(body),
        server=("127.0.0.1", 80),
        server_name="localhost",
        client=("127.0.0.1", None),
        script_name=None,
        software="trio-fastcgi-client",
        role=Role[args.role.upper()],
    )
    if args.path:
        params[b"SCRIPT_FILENAME"] = _encode(script)
    if args.env:
        params.update((_encode(name), _encode(value)) for name, value in environ.items())
    for item in args.param:
        name, equals, value = item.partition("=")
        if not equals or not name:
            raise ValueError(f"bad param {item!r}: expected NAME=VALUE")
        params[_encode(name)] = _encode(value)
    return list(params.items())


def _encode(text: str) -> bytes:
    # Command-line and environment text back to the bytes it was given as.
    return text.encode("utf-8", "surrogateescape")


def _describe_os_error(exc: OSError) -> str:
    # trio.open_tcp_stream raises "all attempts ... failed" from a group of the
    # real errors; name the real reason when there is one.
    cause = exc.__cause__
    while isinstance(cause, BaseExceptionGroup) and len(cause.exceptions) == 1:
        cause = cause.exceptions[0]
    for error in (cause, exc):
        if isinstance(error, OSError) and error.errno:
            return os.strerror(error.errno)
    return str(exc)


def _error(message: str) -> None:
    print(f"{_PROG}: {message}", file=sys.stderr)


async def _open_stream(address: tuple[str, int] | str) -> trio.abc.Stream:
    if isinstance(address, str):
        return await trio.open_unix_socket(address)
    return await trio.open_tcp_stream(*address)


async def _cli(
    args: argparse.Namespace,
    address: tuple[str, int] | str,
    params: list[tuple[bytes, bytes]],
    body: bytes | None,
    data: bytes | None,
) -> int:
    if isinstance(address, str):
        label = address
    else:
        host, port = address
        label = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        stream = await _open_stream(address)
    except OSError as exc:
        _error(f"cannot connect to {label}: {_describe_os_error(exc)}")
        return EXIT_UNAVAILABLE
    out = sys.stdout.buffer
    try:
        async with open_client(stream) as client:
            if args.get_values is not None:
                names = args.get_values or ["FCGI_MAX_CONNS", "FCGI_MAX_REQS", "FCGI_MPXS_CONNS"]
                for name, value in (await client.get_values(names)).items():
                    out.write(f"{name}={value}\n".encode("utf-8", "surrogateescape"))
                out.flush()
                return 0
            role = Role[args.role.upper()]
            async with client.open_request(
                params, body or b"", role=role, data=data, keep_conn=False
            ) as request:
                if args.body_only:
                    response = await request.receive_response()
                else:
                    async for chunk in request.stdout:
                        out.write(chunk)
                        out.flush()
                    response = await request.receive_response()
                sys.stderr.buffer.write(response.stderr)
                sys.stderr.buffer.flush()
    except ServerProtocolError as exc:
        _error(f"protocol error from {label}: {exc}")
        return EXIT_PROTOCOL
    except GetValuesUnsupported as exc:
        _error(f"{label}: {exc}")
        return EXIT_PROTOCOL
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        _error(f"connection to {label} lost: {exc}")
        return EXIT_IOERR
    if response.protocol_status is not ProtocolStatus.REQUEST_COMPLETE:
        _error(f"{label} refused the request: FCGI_{response.protocol_status.name}")
        return EXIT_REFUSED
    if args.body_only:
        try:
            cgi = response.parse_cgi()
        except CGIResponseError as exc:
            _error(f"--body-only: {exc}")
            return EXIT_DATAERR
        out.write(cgi.body)
        out.flush()
    return min(response.app_status, 255)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``python -m trio_fastcgi.client`` command; returns the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        address = parse_address(args.address)
    except ValueError as exc:
        parser.error(str(exc))
    role = Role[args.role.upper()]
    if role is Role.AUTHORIZER and (args.stdin or args.data is not None):
        parser.error("an Authorizer request has no body")
    if role is not Role.FILTER and args.filter_data is not None:
        parser.error("--filter-data needs --role filter")
    body: bytes | None = None
    if args.data is not None:
        body = args.data.encode("utf-8", "surrogateescape")
    elif args.stdin or (args.method or "").upper() in _BODY_METHODS:
        body = sys.stdin.buffer.read()
    data: bytes | None = None
    environ = dict(os.environ)
    if args.filter_data is not None:
        try:
            with open(args.filter_data, "rb") as file:
                data = file.read()
                mtime = os.fstat(file.fileno()).st_mtime
        except OSError as exc:
            parser.error(f"--filter-data: {exc}")
        environ_extra = {"FCGI_DATA_LENGTH": str(len(data)), "FCGI_DATA_LAST_MOD": str(int(mtime))}
        args.param[:0] = [f"{name}={value}" for name, value in environ_extra.items()]
    try:
        params = _cli_params(args, body, environ)
    except ValueError as exc:
        parser.error(str(exc))

    async def run() -> int:
        if args.timeout is None:
            return await _cli(args, address, params, body, data)
        with trio.move_on_after(args.timeout):
            return await _cli(args, address, params, body, data)
        _error(f"no complete response within {args.timeout} s")
        return EXIT_TIMEOUT

    try:
        return trio.run(run)
    except BrokenPipeError:
        # Our stdout was closed early (e.g. piped into head): not an error of
        # the application. Point stdout at /dev/null so exiting does not fail.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
