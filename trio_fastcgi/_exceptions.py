"""Exceptions: protocol errors of the core, and the ones a handler may raise."""

from __future__ import annotations

from ._wire import ProtocolStatus


class ProtocolError(Exception):
    """A FastCGI protocol violation. Abstract: see the two subclasses."""

    def __init__(self, msg: str) -> None:
        if type(self) is ProtocolError:
            raise TypeError("ProtocolError is abstract; raise a subclass")
        super().__init__(msg)


class LocalProtocolError(ProtocolError):
    """This side misused the connection, e.g. wrote to a request that has ended."""


class RemoteProtocolError(ProtocolError):
    """The web server sent bytes that violate FastCGI 1.0.

    This is the only exception that :meth:`FastCGIConnection.receive_data` and
    :meth:`FastCGIConnection.next_event` raise; once raised, every later call
    raises it again. The connection cannot be used any more and must be closed.
    """


class EndRequestWith(Exception):
    """Base of the exceptions a handler raises to end its request with a
    ``protocolStatus`` other than ``FCGI_REQUEST_COMPLETE``."""

    protocol_status: ProtocolStatus = ProtocolStatus.REQUEST_COMPLETE


class Overloaded(EndRequestWith):
    """Raise from a handler to end the request with ``FCGI_OVERLOADED``."""

    protocol_status = ProtocolStatus.OVERLOADED


class UnknownRole(EndRequestWith):
    """Raise from a handler to end the request with ``FCGI_UNKNOWN_ROLE``."""

    protocol_status = ProtocolStatus.UNKNOWN_ROLE


class InputError(Exception):
    """Request input (stdin or the Filter data stream) that cannot be used."""


class InputTooLarge(InputError):
    """The input is longer than the limit the handler asked for."""


class IncompleteInput(InputError):
    """The input ended before the length the web server announced
    (``CONTENT_LENGTH`` or ``FCGI_DATA_LENGTH``), or ran past it."""


class ClientDisconnected(OSError):
    """The web server aborted the request, or its connection is gone: nothing
    more can be read or written. The WSGI adapter raises it from the
    application's reads and writes, the ASGI adapter from ``send()``."""
