"""The sans-IO FastCGI connection: bytes in, events out; events in, bytes out.

No I/O and no trio here. Feed what the socket gave with :meth:`receive_data`,
pull events with :meth:`next_event` until it returns :data:`NEED_DATA`, and turn
output events into bytes with :meth:`send`. The caller writes those bytes in the
order :meth:`send` produced them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Final, final

from ._event_builders import _make_begin_request, _make_data, _make_params, _make_stdin
from ._events import (
    AbortRequest,
    BeginRequest,
    EndRequest,
    GetValues,
    GetValuesResult,
    InputEvent,
    OutputEvent,
    Params,
    RequestRejected,
    Stderr,
    Stdout,
    UnknownRecord,
    UnknownType,
)
from ._exceptions import LocalProtocolError, RemoteProtocolError
from ._record_protocol import RecordProtocol
from ._state import NEXT_STATES, STREAM_ACTIONS, Action, RequestState
from ._wire import (
    BEGIN_REQUEST_BODY,
    KEEP_CONN_FLAG,
    MAX_CONTENT_LEN,
    NULL_REQUEST_ID,
    UNKNOWN_TYPE_BODY,
    ProtocolStatus,
    RecordType,
    Role,
    WireError,
    decode_pairs,
    encode_end_request,
    encode_pairs,
    encode_record,
    encode_stream,
    stream_records,
)

DEFAULT_MAX_CONNS: Final = 1024
DEFAULT_MAX_REQS: Final = 100
#: nginx sends a few hundred bytes of params; long cookies and URLs make tens of
#: KiB. 128 KiB allows those and bounds what a request can make us buffer.
DEFAULT_MAX_PARAMS_SIZE: Final = 128 * 1024
#: Each decoded pair costs Python objects (a tuple, two bytes) far larger than
#: its two length bytes on the wire, so the params limit also caps the number
#: of pairs: one per PARAMS_PAIR_COST bytes of max_params_size (4,096 pairs for
#: the default; nginx sends a few dozen).
PARAMS_PAIR_COST: Final = 32

_REQUEST_RECORDS: Final = frozenset(
    {
        RecordType.BEGIN_REQUEST,
        RecordType.ABORT_REQUEST,
        RecordType.PARAMS,
        RecordType.STDIN,
        RecordType.DATA,
    }
)
_MANAGEMENT_RECORDS: Final = frozenset(
    {RecordType.GET_VALUES, RecordType.GET_VALUES_RESULT, RecordType.UNKNOWN_TYPE}
)
_STDERR_UNUSED, _STDERR_OPEN, _STDERR_CLOSED = 0, 1, 2
_EMPTY: Final = b""

# The hot path compares plain ints and module-level names: reading an enum
# member off its class costs ten times a global lookup.
_BEGIN_REQUEST: Final = int(RecordType.BEGIN_REQUEST)
_ABORT_REQUEST: Final = int(RecordType.ABORT_REQUEST)
_PARAMS: Final = int(RecordType.PARAMS)
_STDIN: Final = int(RecordType.STDIN)
_GET_VALUES: Final = int(RecordType.GET_VALUES)
_STDOUT: Final = int(RecordType.STDOUT)
_STDERR: Final = int(RecordType.STDERR)
_STREAM_RECORDS: Final = frozenset({_PARAMS, _STDIN, int(RecordType.DATA)})
_DELIVER: Final = Action.DELIVER
_IGNORE: Final = Action.IGNORE
_ABORTED: Final = RequestState.ABORTED
_READING_PARAMS: Final = RequestState.PARAMS
_ROLES_BY_NUMBER: Final = {int(role): role for role in Role}
_UNKNOWN_ROLE: Final = ProtocolStatus.UNKNOWN_ROLE
_CANT_MPX_CONN: Final = ProtocolStatus.CANT_MPX_CONN
_OVERLOADED: Final = ProtocolStatus.OVERLOADED


@final
class _Request:
    """What the connection knows about one active request."""

    __slots__ = (
        "keep_conn",
        "params",
        "params_complete",
        "params_size",
        "role",
        "state",
        "stderr",
        "stdout_open",
    )

    def __init__(self, role: Role, keep_conn: bool) -> None:
        self.role = role
        self.keep_conn = keep_conn
        self.state = _READING_PARAMS
        self.params: list[bytes] = []
        self.params_size = 0
        self.params_complete = False
        self.stdout_open = True
        self.stderr = _STDERR_UNUSED


@final
class FastCGIConnection(RecordProtocol[InputEvent]):
    """The application side of one FastCGI transport connection.

    Args:
      roles: roles whose requests are accepted; a ``FCGI_BEGIN_REQUEST`` for any
        other role gives :class:`RequestRejected` with ``FCGI_UNKNOWN_ROLE``.
      max_conns: reported as ``FCGI_MAX_CONNS`` to ``FCGI_GET_VALUES``.
      max_reqs: the most requests active at once on this connection; beyond it
        a new request is rejected with ``FCGI_OVERLOADED``. Reported as
        ``FCGI_MAX_REQS``.
      mpxs_conns: whether several requests may be active at once. If not, a
        second one is rejected with ``FCGI_CANT_MPX_CONN``.
      max_params_size: the most bytes of ``FCGI_PARAMS`` one request may send,
        and (divided by 32) the most name-value pairs; more is a
        :class:`RemoteProtocolError`.
    """

    __slots__ = (
        "_keep_alive",
        "_max_conns",
        "_max_params_pairs",
        "_max_params_size",
        "_max_reqs",
        "_mpxs_conns",
        "_rejected",
        "_requests",
        "_roles",
    )

    def __init__(
        self,
        *,
        roles: Collection[Role] = (Role.RESPONDER,),
        max_conns: int = DEFAULT_MAX_CONNS,
        max_reqs: int = DEFAULT_MAX_REQS,
        mpxs_conns: bool = True,
        max_params_size: int = DEFAULT_MAX_PARAMS_SIZE,
    ) -> None:
        if max_reqs < 1 or max_conns < 1 or max_params_size < 0:
            raise ValueError("max_reqs and max_conns must be >= 1, max_params_size >= 0")
        self._roles = roles if isinstance(roles, frozenset) else frozenset(roles)
        self._max_conns = max_conns
        self._max_reqs = max_reqs
        self._mpxs_conns = mpxs_conns
        self._max_params_size = max_params_size
        self._max_params_pairs = max(1, max_params_size // PARAMS_PAIR_COST)
        super().__init__()
        self._requests: dict[int, _Request] = {}
        # Ids refused at BEGIN_REQUEST whose END_REQUEST has not been sent yet
        # (a dict as an ordered set: an empty one is a third of an empty set's
        # size, and every idle connection has one).
        self._rejected: dict[int, None] = {}
        self._keep_alive = True

    # -- state ---------------------------------------------------------------

    @property
    def active_request_ids(self) -> frozenset[int]:
        """Ids of the requests that began and have not ended (rejected ones aside)."""
        return frozenset(self._requests)

    def request_state(self, request_id: int) -> RequestState | None:
        """The input state of an active request, or ``None`` if it is not active."""
        request = self._requests.get(request_id)
        return None if request is None else request.state

    @property
    def keep_alive(self) -> bool:
        """False once a request without ``FCGI_KEEP_CONN`` has ended."""
        return self._keep_alive

    @property
    def should_close(self) -> bool:
        """Whether the application should close the connection, because a request
        without ``FCGI_KEEP_CONN`` has ended and nothing else is pending."""
        return not self._keep_alive and not self._requests and not self._rejected

    @property
    def idle(self) -> bool:
        """True when no request is active and no refusal is waiting to be sent."""
        return not self._requests and not self._rejected

    @property
    def has_partial_record(self) -> bool:
        """True while part of a record has been received but not all of it."""
        return self._reader.has_partial_record

    # -- input ---------------------------------------------------------------

    def _handle_record(
        self, record_type: int, request_id: int, content: bytes
    ) -> InputEvent | None:
        request = self._requests.get(request_id)
        if request is not None and record_type in _STREAM_RECORDS:
            # The common case first: a stream record of an active request.
            state = request.state
            action = STREAM_ACTIONS[state, record_type, not content]
            if action is _DELIVER:
                if record_type == _PARAMS:
                    return self._params(request_id, request, content)
                if not content:
                    request.state = NEXT_STATES[request.role, state]
                if record_type == _STDIN:
                    return _make_stdin(request_id, content)
                return _make_data(request_id, content)
            if action is _IGNORE:
                return None
            raise RemoteProtocolError(
                f"{RecordType(record_type).name} record for request {request_id} "
                f"while {state.value} ({request.role.name})"
            )
        if request_id == NULL_REQUEST_ID:
            if record_type == _GET_VALUES:
                try:
                    pairs = decode_pairs(content)
                except WireError as exc:
                    raise RemoteProtocolError(f"malformed FCGI_GET_VALUES: {exc}") from None
                return GetValues(tuple(name for name, _ in pairs))
            return UnknownRecord(record_type, request_id)
        if record_type not in _REQUEST_RECORDS:
            if record_type in _MANAGEMENT_RECORDS:
                # Spec 3.3: a management record has the null id; one on an
                # application id belongs to no request and is ignored.
                # UNKNOWN_TYPE would tell the web server we do not know its type.
                return None
            return UnknownRecord(record_type, request_id)
        if record_type == _BEGIN_REQUEST:
            if request is not None or request_id in self._rejected:
                raise RemoteProtocolError(
                    f"FCGI_BEGIN_REQUEST for request {request_id}, which is already active"
                )
            return self._begin(request_id, content)
        if request is None:
            # Spec 3.3: records for inactive ids are ignored. They follow rejected
            # or aborted requests, and lighttpd's empty STDIN to Authorizers.
            return None
        # The only request record left: stream records were handled above.
        assert record_type == _ABORT_REQUEST
        if request.state is _ABORTED:
            return None
        request.state = _ABORTED
        request.params = []
        return AbortRequest(request_id)

    def _begin(self, request_id: int, content: bytes) -> BeginRequest | RequestRejected:
        if len(content) < BEGIN_REQUEST_BODY.size:
            raise RemoteProtocolError(
                f"FCGI_BEGIN_REQUEST for request {request_id} has a {len(content)}-byte "
                f"body (expected {BEGIN_REQUEST_BODY.size})"
            )
        role_number, flags = BEGIN_REQUEST_BODY.unpack_from(content)
        keep_conn = bool(flags & KEEP_CONN_FLAG)
        status: ProtocolStatus | None = None
        if role_number not in self._roles:
            status = _UNKNOWN_ROLE
        elif self._requests and not self._mpxs_conns:
            status = _CANT_MPX_CONN
        elif len(self._requests) >= self._max_reqs:
            status = _OVERLOADED
        if status is not None:
            self._rejected[request_id] = None
            if not keep_conn:
                self._keep_alive = False
            return RequestRejected(request_id, status, role_number)
        role = _ROLES_BY_NUMBER[role_number]
        self._requests[request_id] = _Request(role, keep_conn)
        return _make_begin_request(request_id, role, keep_conn)

    def _params(self, request_id: int, request: _Request, content: bytes) -> Params | None:
        if content:
            request.params_size += len(content)
            if request.params_size > self._max_params_size:
                raise RemoteProtocolError(
                    f"FCGI_PARAMS of request {request_id} exceed the limit of "
                    f"{self._max_params_size} bytes (max_params_size)"
                )
            request.params.append(content)
            return None
        chunks = request.params
        request.params = []
        whole = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        try:
            pairs = decode_pairs(whole, self._max_params_pairs)
        except WireError as exc:
            raise RemoteProtocolError(
                f"malformed FCGI_PARAMS for request {request_id}: {exc}"
            ) from None
        request.state = NEXT_STATES[request.role, _READING_PARAMS]
        request.params_complete = True
        return _make_params(request_id, tuple(pairs))

    # -- output --------------------------------------------------------------
    #
    # Every method below checks the event against the state and builds all of
    # its bytes before it changes any state: a send that raises leaves the
    # connection exactly as it was.

    def send(self, event: OutputEvent) -> bytes:
        """The bytes that carry *event* to the web server.

        :class:`LocalProtocolError` is the only exception it raises, and when it
        does the connection's state is unchanged: the event was not sent, and
        the same connection can send other events.

        Raises:
          LocalProtocolError: the event is not allowed now (output for a request
            that has ended or whose params are not complete yet, a stream after
            its end, a ``GetValuesResult`` too long for one record), or *event*
            is not an output event. (Output events reject bad field values
            when they are built, with the same exception.)
        """
        return b"".join(self.send_parts(event))

    def send_parts(self, event: OutputEvent) -> list[bytes | memoryview]:
        """Like :meth:`send`, as pieces to write in order (for a scatter-gather
        write): the data of ``Stdout`` and ``Stderr`` events is not copied."""
        if isinstance(event, Stdout):
            return self._send_stdout(event)
        if isinstance(event, Stderr):
            return self._send_stderr(event)
        if isinstance(event, EndRequest):
            return [self._send_end(event)]
        if isinstance(event, GetValuesResult):
            return [self._send_values(event)]
        if isinstance(event, UnknownType):
            body = UNKNOWN_TYPE_BODY.pack(event.record_type)
            return [encode_record(RecordType.UNKNOWN_TYPE, NULL_REQUEST_ID, body)]
        raise LocalProtocolError(
            f"cannot send a {type(event).__name__}: not an output event "
            "(Stdout, Stderr, EndRequest, GetValuesResult or UnknownType)"
        )

    def get_values_result(self, names: Iterable[bytes]) -> GetValuesResult:
        """The answer to ``FCGI_GET_VALUES``: the names asked that we know, in order."""
        values = {
            b"FCGI_MAX_CONNS": str(self._max_conns).encode(),
            b"FCGI_MAX_REQS": str(self._max_reqs).encode(),
            b"FCGI_MPXS_CONNS": b"1" if self._mpxs_conns else b"0",
        }
        return GetValuesResult(tuple((name, values[name]) for name in names if name in values))

    def _output_request(self, request_id: int, name: str) -> _Request:
        request = self._requests.get(request_id)
        if request is None:
            raise LocalProtocolError(f"{name} for request {request_id}, which is not active")
        if not request.params_complete:
            raise LocalProtocolError(f"{name} for request {request_id} before its params")
        return request

    def _send_stdout(self, event: Stdout) -> list[bytes | memoryview]:
        request = self._output_request(event.request_id, "FCGI_STDOUT")
        if not request.stdout_open:
            raise LocalProtocolError(f"FCGI_STDOUT of request {event.request_id} is closed")
        data = event.data
        parts = stream_records(_STDOUT, event.request_id, data)
        if not data:
            request.stdout_open = False
        return parts

    def _send_stderr(self, event: Stderr) -> list[bytes | memoryview]:
        request = self._output_request(event.request_id, "FCGI_STDERR")
        if request.stderr == _STDERR_CLOSED:
            raise LocalProtocolError(f"FCGI_STDERR of request {event.request_id} is closed")
        data = event.data
        parts = stream_records(_STDERR, event.request_id, data)
        request.stderr = _STDERR_OPEN if data else _STDERR_CLOSED
        return parts

    def _send_end(self, event: EndRequest) -> bytes:
        request_id = event.request_id
        if request_id in self._rejected:
            end = encode_end_request(request_id, event.app_status, event.protocol_status)
            del self._rejected[request_id]
            return end
        request = self._requests.get(request_id)
        if request is None:
            raise LocalProtocolError(
                f"FCGI_END_REQUEST for request {request_id}, which is not active"
            )
        end = encode_end_request(request_id, event.app_status, event.protocol_status)
        if request.params_complete and (request.stdout_open or request.stderr == _STDERR_OPEN):
            # End the output streams still open. A request that ended before its
            # params were complete (aborted early, or refused by the handler
            # layer) never started one.
            parts = []
            if request.stdout_open:
                parts.append(encode_stream(_STDOUT, request_id, _EMPTY))
            if request.stderr == _STDERR_OPEN:
                parts.append(encode_stream(_STDERR, request_id, _EMPTY))
            parts.append(end)
            end = b"".join(parts)
        del self._requests[request_id]
        if not request.keep_conn:
            self._keep_alive = False
        return end

    @staticmethod
    def _send_values(event: GetValuesResult) -> bytes:
        # Measured before encoding, so that a name longer than a length can
        # declare (2**31 - 1) never reaches encode_length.
        size = 0
        for name, value in event.values:
            size += len(name) + len(value) + (1 if len(name) < 0x80 else 4)
            size += 1 if len(value) < 0x80 else 4
        if size > MAX_CONTENT_LEN:
            raise LocalProtocolError(
                f"FCGI_GET_VALUES_RESULT of {size} bytes does not fit in one record "
                f"({MAX_CONTENT_LEN} bytes)"
            )
        return encode_record(
            RecordType.GET_VALUES_RESULT, NULL_REQUEST_ID, encode_pairs(event.values)
        )
