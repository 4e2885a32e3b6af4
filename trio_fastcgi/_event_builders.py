"""Events the library builds itself, without attrs' ``__init__``.

attrs' frozen ``__init__`` sets each field through ``object.__setattr__``, and
runs the validators meant for events that users build. The core builds an
input event for nearly every record, and every request's output and its
END_REQUEST are built from values already checked, so these set the slots
directly: the same objects (equal, hashable, still frozen). Compiled with the
core in the compiled build (see ``_compiled``), they cost the core no call
into interpreted code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, TypeVar

from ._events import (
    BeginRequest,
    Data,
    EndRequest,
    Event,
    Params,
    Stderr,
    Stdin,
    Stdout,
)
from ._wire import ProtocolStatus, Role

_new: Final = object.__new__
_E = TypeVar("_E", bound="Event")


def _slot_setter(cls: type[Event], name: str) -> Callable[[Event, object], None]:
    setter: Callable[[Event, object], None] = cls.__dict__[name].__set__
    return setter


_set_begin_request_id: Final = _slot_setter(BeginRequest, "request_id")
_set_begin_role: Final = _slot_setter(BeginRequest, "role")
_set_begin_keep_conn: Final = _slot_setter(BeginRequest, "keep_conn")


def _make_begin_request(request_id: int, role: Role, keep_conn: bool) -> BeginRequest:
    """``BeginRequest(request_id, role, keep_conn)``, built for the core."""
    event = _new(BeginRequest)
    _set_begin_request_id(event, request_id)
    _set_begin_role(event, role)
    _set_begin_keep_conn(event, keep_conn)
    return event


def _request_event_builder(cls: type[_E], field: str) -> Callable[[int, Any], _E]:
    """A builder of ``cls(request_id, value)`` events (*field* holds the
    value) that sets their two slots directly."""
    set_request_id = _slot_setter(cls, "request_id")
    set_field = _slot_setter(cls, field)

    def build(request_id: int, value: Any) -> _E:
        event = _new(cls)
        set_request_id(event, request_id)
        set_field(event, value)
        return event

    return build


_make_params: Final[Callable[[int, tuple[tuple[bytes, bytes], ...]], Params]] = (
    _request_event_builder(Params, "params")
)
_make_stdin: Final[Callable[[int, bytes], Stdin]] = _request_event_builder(Stdin, "data")
_make_data: Final[Callable[[int, bytes], Data]] = _request_event_builder(Data, "data")


# The output events the library itself builds (a request's stdout and stderr
# from bytes it made, its END_REQUEST from a status it checked) are valid by
# construction: they skip the validators, which are for events users build.
#: ``Stdout(request_id, data)`` and ``Stderr(request_id, data)`` for a valid
#: id and data that is exactly ``bytes``.
_make_stdout: Final[Callable[[int, bytes], Stdout]] = _request_event_builder(Stdout, "data")
_make_stderr: Final[Callable[[int, bytes], Stderr]] = _request_event_builder(Stderr, "data")
_set_end_request_id: Final = _slot_setter(EndRequest, "request_id")
_set_end_app_status: Final = _slot_setter(EndRequest, "app_status")
_set_end_protocol_status: Final = _slot_setter(EndRequest, "protocol_status")


def _make_end_request(
    request_id: int, app_status: int, protocol_status: ProtocolStatus
) -> EndRequest:
    """``EndRequest(...)`` for a valid id and app status, and a ProtocolStatus."""
    event = _new(EndRequest)
    _set_end_request_id(event, request_id)
    _set_end_app_status(event, app_status)
    _set_end_protocol_status(event, protocol_status)
    return event
