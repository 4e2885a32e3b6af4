"""The input half shared by both sans-IO sides: bytes in, records, events out."""

from __future__ import annotations

from typing import Generic, TypeVar

from ._events import NEED_DATA, ConnectionClosed, NeedData
from ._exceptions import LocalProtocolError, RemoteProtocolError
from ._wire import RecordReader, WireError

EventT = TypeVar("EventT")


class RecordProtocol(Generic[EventT]):
    """Feeds received bytes through a :class:`RecordReader` and turns each
    record into at most one event with :meth:`_handle_record`.

    The peer's protocol errors are sticky: once :meth:`next_event` raised one,
    every later call raises it again. Subclasses name the error class they
    raise (``_error_type``) and how a record becomes an event.
    """

    __slots__ = ("_error", "_reader")

    _error_type: type[RemoteProtocolError] = RemoteProtocolError

    def __init__(self) -> None:
        self._reader = RecordReader()
        self._error: RemoteProtocolError | None = None

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes received from the peer; ``b""`` means end of file."""
        if self._error is not None:
            raise self._error
        try:
            self._reader.feed(data)
        except ValueError:
            raise LocalProtocolError("receive_data() after end of file") from None

    def next_event(self) -> EventT | ConnectionClosed | NeedData:
        """The next event, or :data:`~trio_fastcgi.NEED_DATA` if more bytes are
        needed first. Only the peer's protocol error (``_error_type``) escapes."""
        if self._error is not None:
            raise self._error
        reader = self._reader
        try:
            while True:
                try:
                    record = reader.next_record()
                except WireError as wire_error:
                    # Not also named exc: one name for two exception types in
                    # one function is one variable to a compiled (mypyc) build.
                    raise self._error_type(self._describe(wire_error)) from None
                if record is None:
                    return ConnectionClosed() if reader.eof else NEED_DATA
                # Unpacked: a call with *record costs more than one with three names.
                record_type, request_id, content = record
                event = self._handle_record(record_type, request_id, content)
                if event is not None:
                    return event
        except RemoteProtocolError as exc:
            self._error = exc
            raise

    def _describe(self, error: WireError) -> str:
        return str(error)

    def _handle_record(self, record_type: int, request_id: int, content: bytes) -> EventT | None:
        raise NotImplementedError
