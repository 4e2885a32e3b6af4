"""trio-fastcgi: serve FastCGI (Responder, Authorizer, Filter) from Trio programs.

The protocol core is sans-IO (:class:`FastCGIConnection` and its events); the
``serve_*`` functions run it on Trio, one reader and one writer task per
connection and a cancel scope per request.
"""

import contextlib

from ._config import Config as Config
from ._config import ServerOptions as ServerOptions
from ._connection import FastCGIConnection as FastCGIConnection
from ._events import NEED_DATA as NEED_DATA
from ._events import AbortRequest as AbortRequest
from ._events import BeginRequest as BeginRequest
from ._events import ConnectionClosed as ConnectionClosed
from ._events import Data as Data
from ._events import EndRequest as EndRequest
from ._events import Event as Event
from ._events import GetValues as GetValues
from ._events import GetValuesResult as GetValuesResult
from ._events import Params as Params
from ._events import RequestRejected as RequestRejected
from ._events import Stderr as Stderr
from ._events import Stdin as Stdin
from ._events import Stdout as Stdout
from ._events import UnknownRecord as UnknownRecord
from ._events import UnknownType as UnknownType
from ._exceptions import ClientDisconnected as ClientDisconnected
from ._exceptions import EndRequestWith as EndRequestWith
from ._exceptions import IncompleteInput as IncompleteInput
from ._exceptions import InputError as InputError
from ._exceptions import InputTooLarge as InputTooLarge
from ._exceptions import LocalProtocolError as LocalProtocolError
from ._exceptions import Overloaded as Overloaded
from ._exceptions import ProtocolError as ProtocolError
from ._exceptions import RemoteProtocolError as RemoteProtocolError
from ._exceptions import UnknownRole as UnknownRole
from ._request import Request as Request
from ._served_connection import Handler as Handler
from ._server import serve_connection as serve_connection
from ._server import serve_inherited as serve_inherited
from ._server import serve_listeners as serve_listeners
from ._server import serve_tcp as serve_tcp
from ._server import serve_unix as serve_unix
from ._state import RequestState as RequestState
from ._streams import InputStream as InputStream
from ._streams import OutputStream as OutputStream
from ._version import __version__ as __version__
from ._wire import ProtocolStatus as ProtocolStatus
from ._wire import RecordType as RecordType
from ._wire import Role as Role


def _fixup_module_metadata() -> None:
    # Show trio_fastcgi.X, not trio_fastcgi._module.X, in reprs, tracebacks, docs.
    for name, obj in list(globals().items()):
        if not name.startswith("_") and getattr(obj, "__module__", "").startswith("trio_fastcgi._"):
            with contextlib.suppress(AttributeError, TypeError):
                obj.__module__ = "trio_fastcgi"


_fixup_module_metadata()
del _fixup_module_metadata

# Web servers spawn FastCGI applications with fds 1 and 2 closed. Put /dev/null
# there now, before trio.run() opens its epoll and wakeup fds, which would
# otherwise take fds 1 and 2 and be hit by any stray write to stdout/stderr.
from ._listeners import protect_std_fds as _protect_std_fds  # noqa: E402

_protect_std_fds()
