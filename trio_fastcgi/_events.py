"""Events: what the sans-IO core reports, and what it is asked to send.

Input events come out of :meth:`FastCGIConnection.next_event`; output events go
into :meth:`FastCGIConnection.send`. Stream events carry a chunk of bytes, and
an empty chunk ends the stream, exactly as an empty record does on the wire.
"""

from __future__ import annotations

import enum
from typing import Final, Literal, TypeAlias

import attrs

from ._wire import ProtocolStatus, Role


class Event:
    """Base class of every event. Events are immutable values."""

    __slots__ = ()


# -- received from the web server ------------------------------------------------


@attrs.frozen(slots=True)
class BeginRequest(Event):
    """``FCGI_BEGIN_REQUEST`` for a new request that the connection accepted."""

    request_id: int
    role: Role
    keep_conn: bool


@attrs.frozen(slots=True)
class RequestRejected(Event):
    """A ``FCGI_BEGIN_REQUEST`` that the connection refused by its settings.

    The id is already inactive: answer with ``EndRequest(request_id,
    protocol_status=protocol_status)``. Later records for it are ignored.
    """

    request_id: int
    protocol_status: ProtocolStatus
    role: int


@attrs.frozen(slots=True)
class Params(Event):
    """The complete ``FCGI_PARAMS`` stream, as raw ``(name, value)`` pairs in order."""

    request_id: int
    params: tuple[tuple[bytes, bytes], ...]


@attrs.frozen(slots=True)
class Stdin(Event):
    """A chunk of ``FCGI_STDIN``; ``b""`` marks its end."""

    request_id: int
    data: bytes


@attrs.frozen(slots=True)
class Data(Event):
    """A chunk of the Filter role's ``FCGI_DATA`` stream; ``b""`` marks its end."""

    request_id: int
    data: bytes


@attrs.frozen(slots=True)
class AbortRequest(Event):
    """``FCGI_ABORT_REQUEST``: the web server gave up on an active request.

    The request stays active until the application sends its ``EndRequest``.
    """

    request_id: int


@attrs.frozen(slots=True)
class GetValues(Event):
    """``FCGI_GET_VALUES``: the names the web server asks about."""

    names: tuple[bytes, ...]


@attrs.frozen(slots=True)
class UnknownRecord(Event):
    """A record type this application does not accept; answer with
    :class:`UnknownType`."""

    record_type: int
    request_id: int


@attrs.frozen(slots=True)
class ConnectionClosed(Event):
    """The web server closed the connection cleanly, between records."""


# -- sent to the web server ------------------------------------------------------


@attrs.frozen(slots=True)
class Stdout(Event):
    """A chunk of ``FCGI_STDOUT``; ``b""`` ends the stream."""

    request_id: int
    data: bytes


@attrs.frozen(slots=True)
class Stderr(Event):
    """A chunk of ``FCGI_STDERR``; ``b""`` ends the stream."""

    request_id: int
    data: bytes


@attrs.frozen(slots=True)
class EndRequest(Event):
    """``FCGI_END_REQUEST``. Ends any output stream still open before it."""

    request_id: int
    app_status: int = 0
    protocol_status: ProtocolStatus = ProtocolStatus.REQUEST_COMPLETE


@attrs.frozen(slots=True)
class GetValuesResult(Event):
    """``FCGI_GET_VALUES_RESULT`` with the given ``(name, value)`` pairs."""

    values: tuple[tuple[bytes, bytes], ...]


@attrs.frozen(slots=True)
class UnknownType(Event):
    """``FCGI_UNKNOWN_TYPE`` naming a record type we do not accept."""

    record_type: int


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"


#: Returned by :meth:`FastCGIConnection.next_event` when it needs more bytes.
NEED_DATA: Final = _Sentinel.NEED_DATA
NeedData = Literal[_Sentinel.NEED_DATA]

InputEvent: TypeAlias = (
    BeginRequest
    | RequestRejected
    | Params
    | Stdin
    | Data
    | AbortRequest
    | GetValues
    | UnknownRecord
    | ConnectionClosed
)
OutputEvent: TypeAlias = Stdout | Stderr | EndRequest | GetValuesResult | UnknownType
