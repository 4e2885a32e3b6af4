"""The output side of the sans-IO core: events are validated when built, and a
send that fails changes nothing.

The contract (docs/explanation/architecture.rst): :exc:`LocalProtocolError` is
the only exception output can cause. Bad field values are rejected when the
event is built; :meth:`FastCGIConnection.send` then checks the event against
the connection's state and builds every byte before it changes any state, so a
failed send leaves the connection exactly as it was.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import attrs
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from tests import helpers
from trio_fastcgi import (
    NEED_DATA,
    AbortRequest,
    BeginRequest,
    EndRequest,
    Event,
    FastCGIConnection,
    GetValues,
    GetValuesResult,
    LocalProtocolError,
    Params,
    ProtocolStatus,
    RequestRejected,
    RequestState,
    Role,
    Stderr,
    Stdin,
    Stdout,
    UnknownType,
)


def drain(conn: FastCGIConnection, data: bytes) -> list[Event]:
    conn.receive_data(data)
    events: list[Event] = []
    while (event := conn.next_event()) is not NEED_DATA:
        events.append(event)
    return events


def started(*rids: int, keep_conn: bool = True) -> FastCGIConnection:
    """A connection whose requests *rids* have their params (and stdin) complete."""
    conn = FastCGIConnection()
    for rid in rids:
        drain(conn, helpers.request_bytes(rid, keep_conn=keep_conn))
    return conn


def observable(conn: FastCGIConnection) -> tuple[object, ...]:
    """Everything the connection lets its user see."""
    return (
        conn.active_request_ids,
        tuple(conn.request_state(rid) for rid in range(10)),
        conn.keep_alive,
        conn.should_close,
        conn.idle,
    )


# -- validation when built ----------------------------------------------------------

BAD_REQUEST_IDS = [0, -1, 65536, 2**40, True, False, 1.0, "1", None]
BAD_DATA = ["text", bytearray(b"x"), memoryview(b"x"), None, 1, [b"x"]]


@pytest.mark.parametrize("event_type", [Stdout, Stderr])
@pytest.mark.parametrize("request_id", BAD_REQUEST_IDS)
def test_stream_event_rejects_bad_request_id(
    event_type: type[Stdout | Stderr], request_id: Any
) -> None:
    name = event_type.__name__
    with pytest.raises(
        LocalProtocolError, match=rf"^{name}\.request_id must be an int in 1\.\.65535"
    ):
        event_type(request_id, b"x")


@pytest.mark.parametrize("event_type", [Stdout, Stderr])
@pytest.mark.parametrize("data", BAD_DATA)
def test_stream_event_data_must_be_bytes(event_type: type[Stdout | Stderr], data: Any) -> None:
    with pytest.raises(LocalProtocolError, match=rf"^{event_type.__name__}\.data must be bytes"):
        event_type(1, data)


@pytest.mark.parametrize("request_id", [1, 2, 300, 65535])
def test_stream_event_accepts_every_request_id(request_id: int) -> None:
    assert Stdout(request_id, b"").request_id == request_id
    assert Stderr(request_id, b"x" * 70_000).data == b"x" * 70_000
    # What OutputStream.send_all builds from a bytearray or memoryview.
    assert Stdout(request_id, bytes(memoryview(b"copied"))).data == b"copied"


@pytest.mark.parametrize("request_id", BAD_REQUEST_IDS)
def test_end_request_rejects_bad_request_id(request_id: Any) -> None:
    with pytest.raises(LocalProtocolError, match=r"^EndRequest\.request_id must be"):
        EndRequest(request_id)


@pytest.mark.parametrize("app_status", [-1, 2**32, 2**40, True, 0.0, "0", None])
def test_end_request_rejects_bad_app_status(app_status: Any) -> None:
    with pytest.raises(
        LocalProtocolError, match=r"^EndRequest\.app_status must be an int in 0\.\.4294967295"
    ):
        EndRequest(1, app_status)


@pytest.mark.parametrize("protocol_status", [-1, 4, 256, True, "0", None, 1.0, Role.RESPONDER])
def test_end_request_rejects_bad_protocol_status(protocol_status: Any) -> None:
    with pytest.raises(
        LocalProtocolError, match=r"^EndRequest\.protocol_status must be a ProtocolStatus"
    ):
        EndRequest(1, 0, protocol_status)


def test_end_request_converts_an_int_protocol_status() -> None:
    event = EndRequest(1, 2**32 - 1, 2)
    assert event.protocol_status is ProtocolStatus.OVERLOADED
    assert event == EndRequest(1, 2**32 - 1, ProtocolStatus.OVERLOADED)
    assert EndRequest(65535).protocol_status is ProtocolStatus.REQUEST_COMPLETE


@pytest.mark.parametrize("record_type", [-1, 256, 300, True, None, 1.5])
def test_unknown_type_rejects_bad_record_type(record_type: Any) -> None:
    with pytest.raises(
        LocalProtocolError, match=r"^UnknownType\.record_type must be an int in 0\.\.255"
    ):
        UnknownType(record_type)


@pytest.mark.parametrize("record_type", [0, 12, 255])
def test_unknown_type_accepts_every_byte(record_type: int) -> None:
    assert UnknownType(record_type).record_type == record_type


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([(b"a", b"b")], "not"),  # a list
        (((b"a", "b"),), "item 0 is"),
        (((b"a", b"b"), ("a", b"b")), "item 1 is"),
        (((b"a", bytearray(b"b")),), "item 0 is"),
        (((b"a",),), "item 0 is"),
        (((b"a", b"b", b"c"),), "item 0 is"),
        (([b"a", b"b"],), "item 0 is"),
        ((b"ab",), "item 0 is"),
        (None, "not"),
    ],
)
def test_get_values_result_rejects_bad_values(values: Any, message: str) -> None:
    with pytest.raises(
        LocalProtocolError,
        match=rf"^GetValuesResult\.values must be a tuple of \(bytes, bytes\) tuples.*{message}",
    ):
        GetValuesResult(values)


def test_error_messages_shorten_long_values() -> None:
    with pytest.raises(LocalProtocolError) as info:
        Stdout(1, "x" * 100_000)  # type: ignore[arg-type]
    assert len(str(info.value)) < 100


# -- the former crashes ------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: EndRequest(1, app_status=2**40),  # was struct.error in send()
        lambda: UnknownType(300),  # was struct.error in send()
        lambda: Stdout(1, "text"),  # type: ignore[arg-type]  # was TypeError in send()
        lambda: Stderr(1, "text"),  # type: ignore[arg-type]
        lambda: GetValuesResult(((b"FCGI_MAX_REQS", "1"),)),  # type: ignore[arg-type]
    ],
)
def test_former_crashes_raise_local_protocol_error_when_built(
    build: Callable[[], Event],
) -> None:
    conn = started(1)
    before = observable(conn)
    with pytest.raises(LocalProtocolError):
        conn.send(build())  # type: ignore[arg-type]
    assert observable(conn) == before
    # The request is not forgotten: it ends as it would have.
    assert conn.send(EndRequest(1)) == started(1).send(EndRequest(1))


def test_sending_a_non_event_raises_local_protocol_error() -> None:
    conn = started(1)
    before = observable(conn)
    for thing in (Stdin(1, b"x"), BeginRequest(1, Role.RESPONDER, True), b"raw", None, 1):
        with pytest.raises(LocalProtocolError, match="not an output event"):
            conn.send(thing)  # type: ignore[arg-type]
        with pytest.raises(LocalProtocolError, match="not an output event"):
            conn.send_parts(thing)  # type: ignore[arg-type]
    assert observable(conn) == before


def test_get_values_result_too_long_for_a_record() -> None:
    conn = FastCGIConnection()
    # 65,535 bytes encoded fit: 4 + 4 length bytes, a name and a value.
    fits = GetValuesResult(((b"N" * 200, b"v" * (65535 - 208)),))
    (record,), rest = helpers.parse_records(conn.send(fits))
    assert (record.type, len(record.content), rest) == (helpers.GET_VALUES_RESULT, 65535, b"")
    for values in (
        ((b"N" * 200, b"v" * (65535 - 207)),),
        tuple((b"FCGI_MAX_REQS", b"1") for _ in range(5000)),
        ((b"N", b"v" * 2**31),),  # past what a name-value length can declare
    ):
        with pytest.raises(LocalProtocolError, match="does not fit in one record"):
            conn.send(GetValuesResult(values))
    assert conn.idle


def test_failed_end_request_leaves_the_request_active() -> None:
    conn = started(1, 2, keep_conn=False)
    before = observable(conn)
    with pytest.raises(LocalProtocolError, match="not active"):
        conn.send(EndRequest(3))
    assert observable(conn) == before
    assert conn.keep_alive
    # A bad EndRequest never reaches the connection.
    with pytest.raises(LocalProtocolError):
        conn.send(EndRequest(1, -1))
    assert observable(conn) == before
    assert conn.send(EndRequest(1)) == started(1).send(EndRequest(1))
    assert not conn.keep_alive


def test_end_request_builds_its_bytes_before_forgetting_the_request() -> None:
    # Even an event that slipped past validation (attrs validators switched off
    # globally) fails before the connection changes.
    conn = FastCGIConnection(max_reqs=1)
    drain(conn, helpers.request_bytes(1, keep_conn=False) + helpers.begin_record(2, keep_conn=True))
    before = observable(conn)
    with attrs.validators.disabled():
        unchecked = EndRequest(1, 2**40)
        unchecked_rejected = EndRequest(2, 2**40)
    for event in (unchecked, unchecked_rejected):
        with pytest.raises(struct.error):
            conn.send(event)
        assert observable(conn) == before
    assert conn.send(EndRequest(2, 0, ProtocolStatus.OVERLOADED)) == helpers.record(
        helpers.END, 2, bytes([0, 0, 0, 0, 2, 0, 0, 0])
    )
    assert conn.send(EndRequest(1)) == started(1).send(EndRequest(1))
    assert conn.should_close


def test_failed_stream_sends_leave_the_streams_as_they_were() -> None:
    conn = started(1)
    conn.send(Stdout(1, b""))
    conn.send(Stderr(1, b"warn"))
    conn.send(Stderr(1, b""))
    before = observable(conn)
    for event in (Stdout(1, b"again"), Stdout(1, b""), Stderr(1, b"again"), Stdout(2, b"x")):
        with pytest.raises(LocalProtocolError):
            conn.send(event)
        assert observable(conn) == before
    # Both streams are closed: END_REQUEST comes alone.
    assert conn.send(EndRequest(1)) == helpers.record(helpers.END, 1, bytes(8))


def test_output_before_params_changes_nothing() -> None:
    conn = FastCGIConnection()
    drain(conn, helpers.begin_record(1))
    before = observable(conn)
    for event in (Stdout(1, b"x"), Stdout(1, b""), Stderr(1, b"x")):
        with pytest.raises(LocalProtocolError, match="before its params"):
            conn.send(event)
        assert observable(conn) == before
    drain(conn, helpers.params_records(1, {}))
    fresh = FastCGIConnection()
    drain(fresh, helpers.begin_record(1) + helpers.params_records(1, {}))
    assert conn.send(Stdout(1, b"x")) == fresh.send(Stdout(1, b"x"))
    assert conn.send(EndRequest(1)) == fresh.send(EndRequest(1))


# -- stateful: random output against a model -------------------------------------------


@dataclass(frozen=True)
class Big:
    """Stands for ``b"o" * size`` in a rule's arguments (so that hypothesis
    does not print 70 KB of it)."""

    size: int


@dataclass(frozen=True)
class Live:
    """Stands for the *index*-th (modulo their number) id the web server began
    and the application has not ended yet, or 1 if there is none; index -1
    stands for the id the previous step used, so that several steps in a row
    work on one request."""

    index: int


def real(value: Any) -> Any:
    """*value* with every :class:`Big` in it made into its bytes."""
    if isinstance(value, Big):
        return b"o" * value.size
    if isinstance(value, tuple | list):
        return type(value)(real(item) for item in value)
    return value


# Each strategy draws a valid value about three times in four: invalid ones
# are rejected at once, and only valid ones reach the connection's state.

#: Ids the web server may begin; output also goes to 7 and 8, which never begin.
BEGIN_IDS = st.integers(1, 6)
REQUEST_IDS = st.one_of(
    st.just(Live(-1)),
    st.just(Live(-1)),
    st.builds(Live, st.integers(0, 5)),
    st.integers(1, 8),
    st.sampled_from([1, 65535]),
    st.sampled_from([0, -1, 65536, 2**40, True, 1.0, "1", None]),
)
PAYLOADS = st.one_of(
    st.binary(max_size=40),
    st.just(b""),
    st.builds(Big, st.integers(65_000, 70_000)),
    st.sampled_from(["text", "", bytearray(b"x"), memoryview(b"x"), None, 1]),
)
APP_STATUSES = st.one_of(
    st.integers(0, 2**32 - 1),
    st.sampled_from([0, 2**32 - 1]),
    st.integers(0, 255),
    st.sampled_from([-1, 2**32, 2**40, True, 0.0, None]),
)
PROTOCOL_STATUSES = st.one_of(
    st.sampled_from(list(ProtocolStatus)),
    st.integers(0, 3),
    st.integers(-1, 5),
    st.sampled_from([True, "0", None, 1.0, Role.FILTER]),
)
RECORD_TYPES = st.one_of(
    st.integers(0, 255), st.integers(0, 15), st.sampled_from([-1, 256, 300, True, None])
)
NAMES = st.one_of(
    st.binary(max_size=12),
    st.just(b"FCGI_MAX_REQS"),
    st.just(Big(33_000)),
    st.sampled_from(["text", bytearray(b"x"), None]),
)
PAIRS = st.one_of(
    st.tuples(NAMES, NAMES),
    st.tuples(NAMES, NAMES),
    st.just((Big(33_000), Big(33_000))),  # 66,010 bytes encoded: too long
    st.sampled_from([(b"a",), (b"a", b"b", b"c"), [b"a", b"b"], b"ab"]),
)
VALUES = st.one_of(
    st.lists(PAIRS, max_size=3).map(tuple),
    st.lists(PAIRS, max_size=3).map(tuple),
    st.lists(PAIRS, max_size=3).map(tuple),
    st.sampled_from([[(b"a", b"b")], None, b"ab"]),
)
NOT_EVENTS = st.sampled_from(
    [Stdin(1, b"x"), AbortRequest(1), BeginRequest(1, Role.RESPONDER, True), b"raw", None, 3]
)


def _id_ok(value: object) -> bool:
    return type(value) is int and 1 <= value <= 0xFFFF


def _pair_ok(pair: object) -> bool:
    return (
        type(pair) is tuple and len(pair) == 2 and type(pair[0]) is bytes and type(pair[1]) is bytes
    )


def _pairs_size(values: tuple[tuple[bytes, bytes], ...]) -> int:
    return len(helpers.nv_pairs(values))


@dataclass
class ModelRequest:
    """The connection's side of one request, as the model predicts it."""

    keep_conn: bool
    rejected: bool = False
    aborted: bool = False
    params_complete: bool = False
    stdin_done: bool = False
    stdout_open: bool = True
    stderr: str = "unused"  # "open" | "closed"


@dataclass
class WireRequest:
    """The web server's side: what the output bytes said about one request."""

    rejected: bool
    stdout: bytes = b""
    stdout_records: int = 0
    stdout_ended: bool = False
    stderr_records: int = 0
    stderr_ended: bool = False
    expected_stdout: bytes = b""
    ends: list[tuple[int, int]] = field(default_factory=list)


class OutputModel(RuleBasedStateMachine):
    """A web server starts requests through receive_data; the application sends
    random output events, many of them invalid or for ids that are not active.

    Checked at every step: building an event raises LocalProtocolError exactly
    when a field is invalid, and nothing else; ``send`` raises only
    LocalProtocolError, exactly when the model says the event is not allowed,
    and then changes no observable state; the bytes of a send are whole
    records that carry the event, with no stream record after its stream's end
    or the request's END_REQUEST, one END_REQUEST per ended request, and the
    open streams ended before it; the connection's state matches the model.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conn = FastCGIConnection(max_reqs=4)
        self.requests: dict[int, ModelRequest] = {}
        self.keep_alive = True
        self.wire: dict[int, WireRequest] = {}
        self.output = b""
        self.ended = 0
        self.previous_id: Any = 1

    # -- input ---------------------------------------------------------------

    @initialize(
        requests=st.lists(
            st.tuples(BEGIN_IDS, st.booleans()), min_size=1, max_size=4, unique_by=lambda r: r[0]
        )
    )
    def start_requests(self, requests: list[tuple[int, bool]]) -> None:
        """Begin some requests and complete their params, so that output is
        allowed from the first step."""
        for rid, keep_conn in requests:
            events = drain(
                self.conn,
                helpers.begin_record(rid, keep_conn=keep_conn) + helpers.params_records(rid, {}),
            )
            assert events == [BeginRequest(rid, Role.RESPONDER, keep_conn), Params(rid, ())]
            self.requests[rid] = ModelRequest(keep_conn, params_complete=True)
            self.wire[rid] = WireRequest(rejected=False)

    @rule(
        rid=BEGIN_IDS,
        keep=st.integers(0, 4),
        role=st.sampled_from([1, 1, 1, 2]),
        with_params=st.booleans(),
    )
    def begin(self, rid: int, keep: int, role: int, with_params: bool) -> None:
        if rid in self.requests:
            return
        keep_conn = keep > 0
        events = drain(self.conn, helpers.begin_record(rid, role, keep_conn))
        accepted = sum(not r.rejected for r in self.requests.values())
        if role != 1 or accepted >= 4:
            status = ProtocolStatus.UNKNOWN_ROLE if role != 1 else ProtocolStatus.OVERLOADED
            assert events == [RequestRejected(rid, status, role)]
            self.requests[rid] = ModelRequest(keep_conn, rejected=True)
            if not keep_conn:
                self.keep_alive = False
        else:
            assert events == [BeginRequest(rid, Role.RESPONDER, keep_conn)]
            self.requests[rid] = ModelRequest(keep_conn)
        self.wire[rid] = WireRequest(rejected=self.requests[rid].rejected)
        self.previous_id = rid
        if with_params and not self.requests[rid].rejected:
            assert drain(self.conn, helpers.params_records(rid, {})) == [Params(rid, ())]
            self.requests[rid].params_complete = True
        else:
            # No output before the params (nor for a refused request).
            for event in (Stdout(rid, b""), Stderr(rid, b"early")):
                assert self._send(event, False) is None

    def _accepted(self, test: Callable[[ModelRequest], bool]) -> list[int]:
        return sorted(
            rid for rid, r in self.requests.items() if not r.rejected and not r.aborted and test(r)
        )

    @precondition(lambda self: self._accepted(lambda r: not r.params_complete))
    @rule(data=st.data())
    def params(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(self._accepted(lambda r: not r.params_complete)))
        events = drain(self.conn, helpers.params_records(rid, {"A": "b"}))
        assert events == [Params(rid, ((b"A", b"b"),))]
        self.requests[rid].params_complete = True
        self.previous_id = rid

    @precondition(lambda self: self._accepted(lambda r: r.params_complete and not r.stdin_done))
    @rule(data=st.data())
    def stdin(self, data: st.DataObject) -> None:
        candidates = self._accepted(lambda r: r.params_complete and not r.stdin_done)
        rid = data.draw(st.sampled_from(candidates))
        assert drain(self.conn, helpers.record(helpers.STDIN, rid)) == [Stdin(rid, b"")]
        self.requests[rid].stdin_done = True
        self.previous_id = rid

    @precondition(lambda self: self._accepted(lambda r: True))
    @rule(data=st.data())
    def abort(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(self._accepted(lambda r: True)))
        assert drain(self.conn, helpers.record(helpers.ABORT, rid)) == [AbortRequest(rid)]
        self.requests[rid].aborted = True
        self.previous_id = rid

    @rule(rid=st.integers(0, 8))
    def get_values(self, rid: int) -> None:
        query = helpers.record(helpers.GET_VALUES, rid, helpers.nv_pairs([(b"FCGI_MAX_REQS", b"")]))
        # On a request id, a management record is ignored (spec 3.3).
        expected = [GetValues((b"FCGI_MAX_REQS",))] if rid == 0 else []
        assert drain(self.conn, query) == expected

    # -- output --------------------------------------------------------------

    # The stream rules come twice (stdout, stderr) and the management events
    # share one rule, so that most steps are output that touches the state.

    @rule(rid=REQUEST_IDS, data=PAYLOADS)
    def send_stdout(self, rid: Any, data: Any) -> None:
        self._send_stream(Stdout, rid, data)

    @rule(rid=REQUEST_IDS, data=PAYLOADS)
    def send_stderr(self, rid: Any, data: Any) -> None:
        self._send_stream(Stderr, rid, data)

    def _send_stream(self, kind: type[Stdout | Stderr], rid: Any, data: Any) -> None:
        rid, data = self._live(rid), real(data)
        event = self._build(kind, (rid, data), _id_ok(rid) and type(data) is bytes)
        if event is None:
            return
        request = self.requests.get(rid)
        ok = (
            request is not None
            and not request.rejected
            and request.params_complete
            and (request.stdout_open if kind is Stdout else request.stderr != "closed")
        )
        records = self._send(event, ok)
        if records is None:
            return
        assert request is not None
        assert all(
            r.type == (helpers.STDOUT if kind is Stdout else helpers.STDERR) for r in records
        )
        assert all(r.request_id == rid for r in records)
        assert b"".join(r.content for r in records) == data
        if kind is Stdout:
            self.wire[rid].expected_stdout += data
            if not data:
                request.stdout_open = False
        else:
            request.stderr = "open" if data else "closed"

    @rule(
        rid=REQUEST_IDS,
        app_status=APP_STATUSES,
        protocol_status=PROTOCOL_STATUSES,
        defaults=st.booleans(),
    )
    def send_end(self, rid: Any, app_status: Any, protocol_status: Any, defaults: bool) -> None:
        rid = self._live(rid)
        if defaults:
            args: tuple[Any, ...] = (rid,)
            valid = _id_ok(rid)
        else:
            args = (rid, app_status, protocol_status)
            valid = (
                _id_ok(rid)
                and type(app_status) is int
                and 0 <= app_status <= 0xFFFFFFFF
                and (
                    type(protocol_status) is ProtocolStatus
                    or (type(protocol_status) is int and 0 <= protocol_status <= 3)
                )
            )
        event = self._build(EndRequest, args, valid)
        if event is None:
            return
        request = self.requests.get(rid)
        records = self._send(event, request is not None)
        if records is None:
            return
        assert request is not None
        # END_REQUEST ends the output streams still open, and only those.
        expected_types = [helpers.END]
        if request.params_complete and request.stderr == "open":
            expected_types.insert(0, helpers.STDERR)
        if request.params_complete and request.stdout_open:
            expected_types.insert(0, helpers.STDOUT)
        assert [r.type for r in records] == expected_types
        assert all(not r.content for r in records[:-1])
        ends = records[-1:]
        assert all(r.request_id == rid for r in records)
        expected_status = (0, 0) if defaults else (app_status, int(protocol_status))
        assert struct.unpack(">IB3x", ends[0].content) == expected_status
        wire = self.wire[rid]
        assert wire.stdout == wire.expected_stdout
        del self.requests[rid], self.wire[rid]
        self.ended += 1
        if not request.keep_conn:
            self.keep_alive = False

    @rule(which=st.integers(0, 2), data=st.data())
    def send_other(self, which: int, data: st.DataObject) -> None:
        if which == 0:
            self._send_values(data.draw(VALUES, label="values"))
        elif which == 1:
            self._send_unknown_type(data.draw(RECORD_TYPES, label="record_type"))
        else:
            thing = data.draw(NOT_EVENTS, label="not an event")
            assert self._send(thing, False) is None

    def _send_values(self, values: Any) -> None:
        values = real(values)
        valid = type(values) is tuple and all(_pair_ok(pair) for pair in values)
        event = self._build(GetValuesResult, (values,), valid)
        if event is None:
            return
        records = self._send(event, _pairs_size(values) <= 65535)
        if records is not None:
            (record,) = records
            assert record.content == helpers.nv_pairs(values)

    def _send_unknown_type(self, record_type: Any) -> None:
        valid = type(record_type) is int and 0 <= record_type <= 255
        event = self._build(UnknownType, (record_type,), valid)
        if event is not None:
            records = self._send(event, True)
            assert records is not None
            (record,) = records
            assert record.content == bytes([record_type]) + bytes(7)

    # -- helpers -------------------------------------------------------------

    def _live(self, rid: Any) -> Any:
        if isinstance(rid, Live):
            live = sorted(self.requests)
            if rid.index == -1:
                rid = self.previous_id
            else:
                rid = live[rid.index % len(live)] if live else 1
        self.previous_id = rid
        return rid

    @staticmethod
    def _build(event_type: type[Any], args: tuple[Any, ...], valid: bool) -> Any:
        """Build an event; only LocalProtocolError may escape, exactly when the
        arguments are invalid."""
        error: LocalProtocolError | None = None
        try:
            event = event_type(*args)
        except LocalProtocolError as exc:
            error, event = exc, None
        if valid:
            assert error is None, f"{event_type.__name__}{args!r} rejected: {error}"
        else:
            assert error is not None, f"{event_type.__name__}{args!r} accepted"
            assert str(error).startswith(event_type.__name__ + ".")
        return event

    def _send(self, event: Any, ok: bool) -> list[helpers.Record] | None:
        """Send; check that it fails exactly when the model says, that a failure
        changes nothing, and that the bytes are whole records that fit the
        web server's view. Returns the records sent, or None."""
        before = observable(self.conn)
        error: LocalProtocolError | None = None
        try:
            data = self.conn.send(event)
        except LocalProtocolError as exc:
            error = exc
        if error is not None:
            assert not ok, f"send({event!r}) failed: {error}"
            assert observable(self.conn) == before
            return None
        assert ok, f"send({event!r}) succeeded"
        records, rest = helpers.parse_records(data)
        assert rest == b""
        assert records
        for record in records:
            self._see(record)
        self.output += data
        return records

    def _see(self, record: helpers.Record) -> None:
        """One record as the web server reads it."""
        if record.type in (helpers.GET_VALUES_RESULT, helpers.UNKNOWN_TYPE):
            assert record.request_id == 0
            return
        assert record.type in (helpers.STDOUT, helpers.STDERR, helpers.END), record
        wire = self.wire.get(record.request_id)
        assert wire is not None, f"{record} for a request that is not live"
        assert not wire.ends, f"{record} after END_REQUEST"
        if record.type == helpers.STDOUT:
            assert not wire.rejected, record
            assert not wire.stdout_ended, record
            wire.stdout_records += 1
            wire.stdout += record.content
            wire.stdout_ended = not record.content
        elif record.type == helpers.STDERR:
            assert not wire.rejected, record
            assert not wire.stderr_ended, record
            wire.stderr_records += 1
            wire.stderr_ended = not record.content
        else:
            assert len(record.content) == 8
            # A stream that was used is ended before END_REQUEST.
            assert wire.stdout_ended or not wire.stdout_records
            assert wire.stderr_ended or not wire.stderr_records
            wire.ends.append(struct.unpack(">IB3x", record.content))

    # -- invariants ----------------------------------------------------------

    @invariant()
    def state_matches_model(self) -> None:
        conn = self.conn
        accepted = {rid for rid, r in self.requests.items() if not r.rejected}
        assert conn.active_request_ids == accepted
        for rid in range(10):
            request = self.requests.get(rid)
            state = conn.request_state(rid)
            if request is None or request.rejected:
                assert state is None
            elif request.aborted:
                assert state is RequestState.ABORTED
            elif not request.params_complete:
                assert state is RequestState.PARAMS
            else:
                assert state is (RequestState.DONE if request.stdin_done else RequestState.STDIN)
        assert conn.keep_alive == self.keep_alive
        assert conn.idle == (not self.requests)
        assert conn.should_close == (not self.keep_alive and not self.requests)

    def teardown(self) -> None:
        # The whole output, read at once, is the records each send returned.
        records, rest = helpers.parse_records(self.output)
        assert rest == b""
        assert sum(r.type == helpers.END for r in records) == self.ended


TestOutputModel = OutputModel.TestCase
