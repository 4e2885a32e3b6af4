"""Events: what the sans-IO core reports, and what it is asked to send.

Input events come out of :meth:`FastCGIConnection.next_event`; output events go
into :meth:`FastCGIConnection.send`. Stream events carry a chunk of bytes, and
an empty chunk ends the stream, exactly as an empty record does on the wire.

Output events check their fields when they are built and raise
:class:`~trio_fastcgi.LocalProtocolError` for a value the wire cannot carry, so
that :meth:`FastCGIConnection.send` never meets one. The checks compare exact
types (``type(x) is bytes``): a ``Stdout`` is built for every write a handler
makes, and one call per field is all they cost.
"""

from __future__ import annotations

import enum
import reprlib
from typing import Any, Final, Literal, NoReturn, TypeAlias

import attrs

from ._exceptions import LocalProtocolError
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
    :class:`UnknownType`.

    A management record type (``FCGI_GET_VALUES`` and the two answers to it)
    on a request id other than 0 is ignored instead (spec 3.3): answering
    would tell the web server we do not know ``FCGI_GET_VALUES``.
    """

    record_type: int
    request_id: int


@attrs.frozen(slots=True)
class ConnectionClosed(Event):
    """The web server closed the connection cleanly, between records."""


# -- sent to the web server ------------------------------------------------------
#
# attrs calls each validator as (instance, attribute, value) after every field
# is set. Bounds are literals (a global costs a lookup per call), and a message
# is only built when a check fails.


def _invalid(
    instance: Event, attribute: attrs.Attribute[Any], value: object, want: str
) -> NoReturn:
    raise LocalProtocolError(
        f"{type(instance).__name__}.{attribute.name} must be {want}, not {reprlib.repr(value)}"
    )


def _check_request_id(instance: Event, attribute: attrs.Attribute[Any], value: int) -> None:
    if type(value) is not int or not 0 < value <= 0xFFFF:
        _invalid(instance, attribute, value, "an int in 1..65535")


def _check_data(instance: Event, attribute: attrs.Attribute[Any], value: bytes) -> None:
    if type(value) is not bytes:
        _invalid(instance, attribute, value, "bytes")


def _check_app_status(instance: Event, attribute: attrs.Attribute[Any], value: int) -> None:
    if type(value) is not int or not 0 <= value <= 0xFFFFFFFF:
        _invalid(instance, attribute, value, "an int in 0..4294967295")


_PROTOCOL_STATUSES: Final = {status.value: status for status in ProtocolStatus}


def _to_protocol_status(value: ProtocolStatus | int) -> ProtocolStatus:
    """A :class:`ProtocolStatus`, or the int of one, as a ``ProtocolStatus``."""
    if type(value) is ProtocolStatus:
        return value
    if type(value) is int and value in _PROTOCOL_STATUSES:
        return _PROTOCOL_STATUSES[value]
    raise LocalProtocolError(
        f"EndRequest.protocol_status must be a ProtocolStatus "
        f"({', '.join(map(str, _PROTOCOL_STATUSES))}), not {reprlib.repr(value)}"
    )


def _check_record_type(instance: Event, attribute: attrs.Attribute[Any], value: int) -> None:
    if type(value) is not int or not 0 <= value <= 0xFF:
        _invalid(instance, attribute, value, "an int in 0..255")


def _check_values(
    instance: Event, attribute: attrs.Attribute[Any], value: tuple[tuple[bytes, bytes], ...]
) -> None:
    if type(value) is not tuple:
        _invalid(instance, attribute, value, "a tuple of (bytes, bytes) tuples")
    for index, pair in enumerate(value):
        if (
            type(pair) is not tuple
            or len(pair) != 2
            or type(pair[0]) is not bytes
            or type(pair[1]) is not bytes
        ):
            raise LocalProtocolError(
                f"{type(instance).__name__}.{attribute.name} must be a tuple of "
                f"(bytes, bytes) tuples, but item {index} is {reprlib.repr(pair)}"
            )


@attrs.frozen(slots=True)
class Stdout(Event):
    """A chunk of ``FCGI_STDOUT``; ``b""`` ends the stream.

    Raises:
      LocalProtocolError: *request_id* is not an int in 1..65535, or *data*
        is not ``bytes`` (a ``bytearray`` or ``memoryview`` must be copied
        with ``bytes()`` first: the event may be queued while the caller
        reuses its buffer).
    """

    request_id: int = attrs.field(validator=_check_request_id)
    data: bytes = attrs.field(validator=_check_data)


@attrs.frozen(slots=True)
class Stderr(Event):
    """A chunk of ``FCGI_STDERR``; ``b""`` ends the stream.

    Raises:
      LocalProtocolError: as for :class:`Stdout`.
    """

    request_id: int = attrs.field(validator=_check_request_id)
    data: bytes = attrs.field(validator=_check_data)


@attrs.frozen(slots=True)
class EndRequest(Event):
    """``FCGI_END_REQUEST``. Ends any output stream still open before it.

    Raises:
      LocalProtocolError: *request_id* is not an int in 1..65535,
        *app_status* not an int in 0..2**32-1, or *protocol_status* neither a
        :class:`ProtocolStatus` nor the int of one (which is converted).
    """

    request_id: int = attrs.field(validator=_check_request_id)
    app_status: int = attrs.field(default=0, validator=_check_app_status)
    protocol_status: ProtocolStatus = attrs.field(
        default=ProtocolStatus.REQUEST_COMPLETE, converter=_to_protocol_status
    )


@attrs.frozen(slots=True)
class GetValuesResult(Event):
    """``FCGI_GET_VALUES_RESULT`` with the given ``(name, value)`` pairs.

    Raises:
      LocalProtocolError: *values* is not a tuple of ``(bytes, bytes)`` tuples.
        (That they fit in one record, 65,535 bytes encoded, is checked by
        :meth:`FastCGIConnection.send`.)
    """

    values: tuple[tuple[bytes, bytes], ...] = attrs.field(validator=_check_values)


@attrs.frozen(slots=True)
class UnknownType(Event):
    """``FCGI_UNKNOWN_TYPE`` naming a record type we do not accept.

    Raises:
      LocalProtocolError: *record_type* is not an int in 0..255.
    """

    record_type: int = attrs.field(validator=_check_record_type)


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return self.name  # NEED_DATA, the name it is imported by


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
