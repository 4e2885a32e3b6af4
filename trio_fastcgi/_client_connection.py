"""The web-server side of a FastCGI connection, sans-IO: what a client needs.

:class:`FastCGIClientConnection` turns requests into bytes (``begin_request``,
``params``, ``stdin``, ``data``, ``abort_request``, ``get_values``) and bytes
from the application into events. The events are the same classes the
application side sends (:class:`~trio_fastcgi.Stdout`, :class:`~trio_fastcgi.Stderr`,
:class:`~trio_fastcgi.EndRequest`, :class:`~trio_fastcgi.GetValuesResult`,
:class:`~trio_fastcgi.UnknownType`), plus :class:`~trio_fastcgi.ConnectionClosed`.

No I/O and no trio here. Records are encoded with :mod:`trio_fastcgi._wire`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, final

from ._events import (
    ConnectionClosed,
    EndRequest,
    GetValuesResult,
    Stderr,
    Stdout,
    UnknownType,
)
from ._exceptions import LocalProtocolError, RemoteProtocolError
from ._record_protocol import RecordProtocol
from ._wire import (
    BEGIN_REQUEST_BODY,
    END_REQUEST_BODY,
    KEEP_CONN_FLAG,
    MAX_ALIGNED_CONTENT_LEN,
    NULL_REQUEST_ID,
    ProtocolStatus,
    RecordType,
    Role,
    WireError,
    decode_pairs,
    encode_length,
    encode_record,
    encode_stream,
)

MAX_REQUEST_ID: Final = 0xFFFF

ClientEvent = Stdout | Stderr | EndRequest | GetValuesResult | UnknownType | ConnectionClosed


class ServerProtocolError(RemoteProtocolError):
    """The FastCGI application this client talks to sent bytes that violate
    FastCGI 1.0. The connection cannot be used any more."""


@final
class _ClientRequest:
    __slots__ = ("aborted", "data_open", "role", "stderr_open", "stdin_open", "stdout_open")

    def __init__(self, role: Role) -> None:
        self.role = role
        self.stdin_open = role is not Role.AUTHORIZER
        self.data_open = role is Role.FILTER
        self.stdout_open = True
        self.stderr_open = True
        self.aborted = False


def encode_params(request_id: int, pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    """A whole ``FCGI_PARAMS`` stream, ending with its empty record.

    Pairs are packed into records without splitting a pair across two records
    unless the pair alone is longer than a record. The spec allows splitting
    anywhere, but some applications (php-fpm among them) decode each PARAMS
    record on its own, as nginx and HAProxy never split a pair.
    """
    records: list[bytes] = []
    chunk: list[bytes] = []
    size = 0
    for name, value in pairs:
        pair = b"".join((encode_length(len(name)), encode_length(len(value)), name, value))
        if size + len(pair) > MAX_ALIGNED_CONTENT_LEN and chunk:
            records.append(encode_record(RecordType.PARAMS, request_id, b"".join(chunk)))
            chunk.clear()
            size = 0
        if len(pair) > MAX_ALIGNED_CONTENT_LEN:
            records.append(encode_stream(RecordType.PARAMS, request_id, pair))
        else:
            chunk.append(pair)
            size += len(pair)
    if chunk:
        records.append(encode_record(RecordType.PARAMS, request_id, b"".join(chunk)))
    records.append(encode_record(RecordType.PARAMS, request_id))
    return b"".join(records)


@final
class FastCGIClientConnection(RecordProtocol[ClientEvent]):
    """The web-server (client) side of one FastCGI transport connection.

    Output methods return the bytes of whole records; write them in the order
    they were produced. Input: :meth:`receive_data` then :meth:`next_event`
    until it returns :data:`~trio_fastcgi.NEED_DATA`.

    A request is active from :meth:`begin_request` until its
    :class:`~trio_fastcgi.EndRequest` has come out of :meth:`next_event`.
    """

    _error_type = ServerProtocolError

    def __init__(self) -> None:
        self._requests: dict[int, _ClientRequest] = {}
        # Ids that ended after we aborted them. Some applications (Go's
        # net/http/fcgi) answer an abort with END_REQUEST at once and send another
        # one when the handler returns; late records for these ids are ignored
        # until the id is used again.
        self._aborted_ended: set[int] = set()
        super().__init__()
        self._last_was_values_result = False

    # -- state ---------------------------------------------------------------

    @property
    def active_request_ids(self) -> frozenset[int]:
        """Ids of the requests begun whose ``FCGI_END_REQUEST`` has not arrived."""
        return frozenset(self._requests)

    def _active(self, request_id: int, what: str) -> _ClientRequest:
        request = self._requests.get(request_id)
        if request is None:
            raise LocalProtocolError(f"{what} for request {request_id}, which is not active")
        return request

    # -- output --------------------------------------------------------------

    def begin_request(self, request_id: int, role: Role, *, keep_conn: bool) -> bytes:
        """``FCGI_BEGIN_REQUEST``: *request_id* becomes active."""
        if not 1 <= request_id <= MAX_REQUEST_ID:
            raise LocalProtocolError(f"request id {request_id} is outside 1..{MAX_REQUEST_ID}")
        if request_id in self._requests:
            raise LocalProtocolError(f"request {request_id} is already active")
        role = Role(role)
        self._requests[request_id] = _ClientRequest(role)
        self._aborted_ended.discard(request_id)
        flags = KEEP_CONN_FLAG if keep_conn else 0
        return encode_record(
            RecordType.BEGIN_REQUEST, request_id, BEGIN_REQUEST_BODY.pack(role, flags)
        )

    def forget_request(self, request_id: int) -> None:
        """Drop a request whose ``begin_request`` bytes were never written."""
        self._requests.pop(request_id, None)

    def params(self, request_id: int, pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
        """The whole ``FCGI_PARAMS`` stream of an active request."""
        self._active(request_id, "FCGI_PARAMS")
        return encode_params(request_id, pairs)

    def stdin(self, request_id: int, data: bytes) -> bytes:
        """A chunk of ``FCGI_STDIN`` (any size); ``b""`` ends the stream."""
        request = self._active(request_id, "FCGI_STDIN")
        if not request.stdin_open:
            raise LocalProtocolError(
                f"FCGI_STDIN of request {request_id} is closed"
                + (" (an Authorizer gets none)" if request.role is Role.AUTHORIZER else "")
            )
        if not data:
            request.stdin_open = False
        return encode_stream(RecordType.STDIN, request_id, data)

    def data(self, request_id: int, data: bytes) -> bytes:
        """A chunk of the Filter role's ``FCGI_DATA``; ``b""`` ends the stream.

        The spec wants all of stdin first.
        """
        request = self._active(request_id, "FCGI_DATA")
        if request.role is not Role.FILTER:
            raise LocalProtocolError(f"FCGI_DATA for request {request_id}, which is no Filter")
        if request.stdin_open:
            raise LocalProtocolError(f"FCGI_DATA of request {request_id} before the end of stdin")
        if not request.data_open:
            raise LocalProtocolError(f"FCGI_DATA of request {request_id} is closed")
        if not data:
            request.data_open = False
        return encode_stream(RecordType.DATA, request_id, data)

    def abort_request(self, request_id: int) -> bytes:
        """``FCGI_ABORT_REQUEST``. The request stays active until the
        application's ``FCGI_END_REQUEST`` arrives."""
        request = self._active(request_id, "FCGI_ABORT_REQUEST")
        request.aborted = True
        return encode_record(RecordType.ABORT_REQUEST, request_id)

    def get_values(self, names: Iterable[bytes]) -> bytes:
        """``FCGI_GET_VALUES`` asking about *names*."""
        content = b"".join(encode_length(len(name)) + encode_length(0) + name for name in names)
        if len(content) > MAX_ALIGNED_CONTENT_LEN:
            raise LocalProtocolError("FCGI_GET_VALUES names do not fit in one record")
        return encode_record(RecordType.GET_VALUES, NULL_REQUEST_ID, content)

    # -- input ---------------------------------------------------------------

    def _describe(self, error: WireError) -> str:
        hint = "; the peer may not speak FastCGI" if "version" in str(error) else ""
        return f"{error}{hint}"

    def _handle_record(
        self, record_type: int, request_id: int, content: bytes
    ) -> ClientEvent | None:
        after_values_result = self._last_was_values_result
        self._last_was_values_result = False
        name = _type_name(record_type)
        if request_id == NULL_REQUEST_ID:
            if record_type == RecordType.GET_VALUES_RESULT:
                try:
                    pairs = decode_pairs(content)
                except WireError as exc:
                    raise ServerProtocolError(f"malformed FCGI_GET_VALUES_RESULT: {exc}") from None
                if not pairs and after_values_result:
                    # Go's net/http/fcgi ends its GET_VALUES_RESULT like a stream,
                    # with an extra empty record: not a second answer.
                    return None
                self._last_was_values_result = True
                return GetValuesResult(tuple(pairs))
            if record_type == RecordType.UNKNOWN_TYPE:
                if not content:
                    raise ServerProtocolError("FCGI_UNKNOWN_TYPE record without a body")
                return UnknownType(content[0])
            raise ServerProtocolError(f"{name} record with the management request id 0")
        if record_type not in (RecordType.STDOUT, RecordType.STDERR, RecordType.END_REQUEST):
            raise ServerProtocolError(
                f"{name} record for request {request_id}: an application may only send "
                "FCGI_STDOUT, FCGI_STDERR and FCGI_END_REQUEST"
            )
        request = self._requests.get(request_id)
        if request is None:
            if request_id in self._aborted_ended:
                return None
            raise ServerProtocolError(
                f"{name} record for request {request_id}, which is not active"
            )
        if record_type == RecordType.END_REQUEST:
            return self._end_request(request_id, request, content)
        if record_type == RecordType.STDOUT:
            if not request.stdout_open:
                raise ServerProtocolError(
                    f"FCGI_STDOUT record for request {request_id} after the end of its stdout"
                )
            if not content:
                request.stdout_open = False
            return Stdout(request_id, content)
        if not request.stderr_open:
            raise ServerProtocolError(
                f"FCGI_STDERR record for request {request_id} after the end of its stderr"
            )
        if not content:
            request.stderr_open = False
        return Stderr(request_id, content)

    def _end_request(self, request_id: int, request: _ClientRequest, content: bytes) -> EndRequest:
        if len(content) < END_REQUEST_BODY.size:
            raise ServerProtocolError(
                f"FCGI_END_REQUEST for request {request_id} has a {len(content)}-byte body "
                f"(expected {END_REQUEST_BODY.size})"
            )
        app_status, status_number = END_REQUEST_BODY.unpack_from(content)
        try:
            protocol_status = ProtocolStatus(status_number)
        except ValueError:
            raise ServerProtocolError(
                f"FCGI_END_REQUEST for request {request_id} has unknown protocolStatus "
                f"{status_number}"
            ) from None
        del self._requests[request_id]
        if request.aborted:
            self._aborted_ended.add(request_id)
        return EndRequest(request_id, app_status, protocol_status)


def _type_name(record_type: int) -> str:
    try:
        return f"FCGI_{RecordType(record_type).name}"
    except ValueError:
        return f"unknown type {record_type}"


__all__ = ["ClientEvent", "FastCGIClientConnection", "ServerProtocolError", "encode_params"]
