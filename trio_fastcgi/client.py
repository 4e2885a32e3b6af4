"""A FastCGI client on Trio: talk to any FastCGI application (php-fpm, a Go
``net/http/fcgi`` server, a ``trio_fastcgi`` server) over TCP, a unix socket or
any :class:`trio.abc.Stream`.

One connection carries many requests at once (multiplexing), each under its
own request id; a reader task sorts what the application sends by id, and a
writer task is the only one that writes, so records never interleave::

    async with trio_fastcgi.client.open_tcp_client("127.0.0.1", 9000) as client:
        response = await client.request(
            {"REQUEST_METHOD": "GET", "SCRIPT_FILENAME": "/srv/www/index.php"}
        )
        print(response.app_status, response.parse_cgi().status)

        # Streamed: read stdout while it arrives, stdin from an async iterable.
        async with client.open_request(params, stdin=body_chunks()) as request:
            async for chunk in request.stdout:
                ...
            end = await request.wait_ended()

Applications that do not multiplex (php-fpm answers ``FCGI_MPXS_CONNS`` with
``0``; ask with :meth:`Client.get_values`) need ``max_concurrent=1``, which
makes concurrent callers wait their turn on the one connection.

Run as a program it works like libfcgi's ``cgi-fcgi``::

    python -m trio_fastcgi.client 127.0.0.1:9000 /srv/www/index.php?x=1
    python -m trio_fastcgi.client /run/php/php-fpm.sock --get-values

Errors: :class:`ServerProtocolError` when the application breaks the protocol,
:class:`trio.BrokenResourceError` when the connection fails or closes before a
request's ``FCGI_END_REQUEST``, :class:`trio.ClosedResourceError` after the
client was closed.
"""

# Re-exports only. The code lives in private modules: _cgi_response (reading a
# CGI response), _client_errors, _client_streams (one request in flight),
# _client (the connection and open_*), _client_cli (the command line).
import sys
from typing import TypeAlias

from . import _client
from ._cgi_response import CGIResponse as CGIResponse
from ._cgi_response import CGIResponseError as CGIResponseError
from ._cgi_response import parse_cgi_response as parse_cgi_response
from ._client import DEFAULT_MAX_STDERR_SIZE as DEFAULT_MAX_STDERR_SIZE
from ._client import DEFAULT_STDOUT_BUFFER_SIZE as DEFAULT_STDOUT_BUFFER_SIZE
from ._client import MAX_CONCURRENT_REQUESTS as MAX_CONCURRENT_REQUESTS
from ._client import Client as Client
from ._client import _unwrap as _unwrap  # for trio_fastcgi.testing
from ._client import open_client as open_client
from ._client import open_tcp_client as open_tcp_client
from ._client import open_unix_client as open_unix_client
from ._client_cli import EXIT_DATAERR as EXIT_DATAERR
from ._client_cli import EXIT_IOERR as EXIT_IOERR
from ._client_cli import EXIT_PROTOCOL as EXIT_PROTOCOL
from ._client_cli import EXIT_REFUSED as EXIT_REFUSED
from ._client_cli import EXIT_TIMEOUT as EXIT_TIMEOUT
from ._client_cli import EXIT_UNAVAILABLE as EXIT_UNAVAILABLE
from ._client_cli import main as main
from ._client_cli import parse_address as parse_address
from ._client_connection import ServerProtocolError as ServerProtocolError
from ._client_errors import ClientError as ClientError
from ._client_errors import GetValuesUnsupported as GetValuesUnsupported
from ._client_errors import ResponseTooLarge as ResponseTooLarge
from ._client_streams import ActiveRequest as ActiveRequest
from ._client_streams import Response as Response
from ._client_streams import ResponseStream as ResponseStream

__all__ = [
    "ActiveRequest",
    "CGIResponse",
    "CGIResponseError",
    "Client",
    "ClientError",
    "GetValuesUnsupported",
    "Response",
    "ResponseStream",
    "ResponseTooLarge",
    "ServerProtocolError",
    "main",
    "open_client",
    "open_tcp_client",
    "open_unix_client",
    "parse_address",
    "parse_cgi_response",
]

# Aliases of the aliases, so that their documentation (the comments) is here.
#: Params as a mapping, or ``(name, value)`` pairs (str or bytes; str is
#: encoded as UTF-8 with ``surrogateescape``). Pairs keep order and duplicates.
ParamsArg: TypeAlias = _client.ParamsArg
#: The request body, as bytes or an async iterable of byte chunks (streamed).
BodyArg: TypeAlias = _client.BodyArg


def _fixup_module_metadata() -> None:
    # Show trio_fastcgi.client.X, not trio_fastcgi._client.X, in reprs,
    # tracebacks and the docs.
    for name in __all__:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith("trio_fastcgi._"):
            obj.__module__ = "trio_fastcgi.client"


_fixup_module_metadata()
del _fixup_module_metadata

if __name__ == "__main__":
    sys.exit(main())
