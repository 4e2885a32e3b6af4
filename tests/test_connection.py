"""The sans-IO connection: bytes in, events out, events in, bytes out."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests import helpers
from trio_fastcgi import (
    NEED_DATA,
    AbortRequest,
    BeginRequest,
    ConnectionClosed,
    Data,
    EndRequest,
    Event,
    FastCGIConnection,
    GetValues,
    LocalProtocolError,
    Params,
    ProtocolError,
    ProtocolStatus,
    RemoteProtocolError,
    RequestRejected,
    RequestState,
    Role,
    Stderr,
    Stdin,
    Stdout,
    UnknownRecord,
    UnknownType,
)

ALL_ROLES = (Role.RESPONDER, Role.AUTHORIZER, Role.FILTER)


def drain(conn: FastCGIConnection, *chunks: bytes) -> list[Event]:
    events: list[Event] = []
    for chunk in chunks:
        conn.receive_data(chunk)
        while (event := conn.next_event()) is not NEED_DATA:
            events.append(event)
            if isinstance(event, ConnectionClosed):
                return events
    return events


def test_simple_responder_request() -> None:
    conn = FastCGIConnection()
    data = helpers.request_bytes(1, {"SCRIPT_NAME": "/x"}, stdin=b"body", keep_conn=False)
    assert drain(conn, data) == [
        BeginRequest(1, Role.RESPONDER, False),
        Params(1, ((b"SCRIPT_NAME", b"/x"),)),
        Stdin(1, b"body"),
        Stdin(1, b""),
    ]
    assert conn.request_state(1) is RequestState.DONE
    assert conn.active_request_ids == {1}
    out = conn.send(Stdout(1, b"Status: 200\r\n\r\nhi"))
    out += conn.send(EndRequest(1, 3))
    records, rest = helpers.parse_records(out)
    assert rest == b""
    assert [(r.type, r.content) for r in records] == [
        (helpers.STDOUT, b"Status: 200\r\n\r\nhi"),
        (helpers.STDOUT, b""),
        (helpers.END, bytes.fromhex("0000000300000000")),
    ]
    assert conn.should_close
    assert conn.active_request_ids == frozenset()


@given(data=st.data())
def test_any_split_gives_the_same_events(data: st.DataObject) -> None:
    stream = helpers.request_bytes(
        7, {"A": "b" * 200, "C": ""}, stdin=b"x" * 1000
    ) + helpers.record(helpers.GET_VALUES, 0, helpers.nv_pairs([(b"FCGI_MAX_REQS", b"")]))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    whole = drain(FastCGIConnection(), stream, b"")
    split = drain(FastCGIConnection(), *[p for p in pieces if p], b"")
    assert _merge_stdin(split) == _merge_stdin(whole)
    assert whole[-1] == ConnectionClosed()


def _merge_stdin(events: Iterable[Event]) -> list[Event]:
    # Record boundaries carry no meaning: compare stdin as one concatenation.
    merged: list[Event] = []
    for event in events:
        if isinstance(event, Stdin) and event.data and merged:
            last = merged[-1]
            if isinstance(last, Stdin) and last.data:
                merged[-1] = Stdin(last.request_id, last.data + event.data)
                continue
        merged.append(event)
    return merged


def test_byte_at_a_time() -> None:
    stream = helpers.request_bytes(1, {"K": "v"}, stdin=b"abc")
    conn = FastCGIConnection()
    events = drain(conn, *[stream[i : i + 1] for i in range(len(stream))])
    assert _merge_stdin(events) == [
        BeginRequest(1, Role.RESPONDER, True),
        Params(1, ((b"K", b"v"),)),
        Stdin(1, b"abc"),
        Stdin(1, b""),
    ]


def test_params_straddling_records_and_long_form_lengths() -> None:
    encoded = helpers.nv_pairs([(b"NAME", b"value" * 40), (b"X", b"")], long_form=True)
    stream = helpers.begin_record(2) + b"".join(
        helpers.record(helpers.PARAMS, 2, encoded[i : i + 3]) for i in range(0, len(encoded), 3)
    )
    stream += helpers.record(helpers.PARAMS, 2)
    events = drain(FastCGIConnection(), stream)
    assert events[-1] == Params(2, ((b"NAME", b"value" * 40), (b"X", b"")))


def test_params_keep_raw_bytes_and_duplicates() -> None:
    pairs = [(b"PATH_INFO", b"/\xff\xfe"), (b"HTTP_X", b"1"), (b"HTTP_X", b"2")]
    events = drain(FastCGIConnection(), helpers.begin_record(1) + helpers.params_records(1, pairs))
    assert events[-1] == Params(1, tuple(pairs))


def test_padding_is_skipped() -> None:
    stream = helpers.begin_record(1) + helpers.record(helpers.PARAMS, 1, padding=255)
    stream += helpers.record(helpers.STDIN, 1, b"x" * 65535, padding=255)
    events = drain(FastCGIConnection(), stream)
    assert events[-1] == Stdin(1, b"x" * 65535)


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (b"\x02\x01\x00\x01\x00\x08\x00\x00" + bytes(8), "unsupported FastCGI version 2"),
        (helpers.begin_record(1) + helpers.begin_record(1), "already active"),
        (helpers.record(helpers.BEGIN, 1, b"\x00\x01"), "2-byte body"),
        (
            # golang/go#11824: params declaring 50 + 50 bytes inside a 10-byte record.
            bytes.fromhex("0101000100080000 0001010000000000")
            + helpers.record(helpers.PARAMS, 1, b"\x32\x32" + b"x" * 8)
            + helpers.record(helpers.PARAMS, 1),
            "malformed FCGI_PARAMS",
        ),
        (
            helpers.begin_record(1)
            + helpers.record(helpers.PARAMS, 1, b"\xff\xff\xff\xff\x00")
            + helpers.record(helpers.PARAMS, 1),
            "malformed FCGI_PARAMS",
        ),
        (helpers.begin_record(1) + helpers.record(helpers.STDIN, 1, b"x"), "STDIN record"),
        (
            helpers.begin_record(1, helpers.FILTER)
            + helpers.params_records(1, {})
            + helpers.record(helpers.DATA, 1, b"d"),
            "DATA record",
        ),
        (
            helpers.request_bytes(1) + helpers.record(helpers.STDIN, 1, b"late"),
            "STDIN record",
        ),
        (helpers.record(helpers.GET_VALUES, 0, b"\x09"), "malformed FCGI_GET_VALUES"),
    ],
)
def test_bad_input_raises_remote_protocol_error(stream: bytes, message: str) -> None:
    conn = FastCGIConnection(roles=ALL_ROLES)
    with pytest.raises(RemoteProtocolError, match=message):
        drain(conn, stream)
    # The error is sticky.
    with pytest.raises(RemoteProtocolError, match=message):
        conn.next_event()
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(b"more")


def test_truncated_record_at_eof() -> None:
    conn = FastCGIConnection()
    with pytest.raises(RemoteProtocolError, match="middle of a record"):
        drain(conn, helpers.begin_record(1)[:11], b"")


def test_clean_eof_between_records() -> None:
    assert drain(FastCGIConnection(), helpers.begin_record(1), b"")[-1] == ConnectionClosed()


def test_params_limit() -> None:
    conn = FastCGIConnection(max_params_size=100)
    stream = helpers.begin_record(1) + helpers.record(helpers.PARAMS, 1, b"x" * 101)
    with pytest.raises(RemoteProtocolError, match="max_params_size"):
        drain(conn, stream)


def test_params_pair_count_limit() -> None:
    # 320 bytes of params allow 10 pairs (one per 32 bytes), whatever their size.
    pairs = [(b"a", b"")] * 10
    ok = helpers.begin_record(1) + helpers.params_records(1, pairs)
    assert drain(FastCGIConnection(max_params_size=320), ok)[-1] == Params(1, tuple(pairs))
    too_many = helpers.begin_record(1) + helpers.params_records(1, [*pairs, (b"b", b"")])
    with pytest.raises(RemoteProtocolError, match="more than 10 name-value pairs"):
        drain(FastCGIConnection(max_params_size=320), too_many)


def test_huge_declared_length_allocates_nothing() -> None:
    # 0x7fffffff declared: rejected by comparing with what is there.
    pairs = b"\xff\xff\xff\xff\xff\xff\xff\xff" + b"x" * 16
    stream = helpers.begin_record(1) + helpers.stream_records(helpers.PARAMS, 1, pairs)
    with pytest.raises(RemoteProtocolError, match="declares 2147483647"):
        drain(FastCGIConnection(), stream)


def test_protocol_error_is_abstract() -> None:
    with pytest.raises(TypeError):
        ProtocolError("x")
    assert issubclass(RemoteProtocolError, ProtocolError)
    assert issubclass(LocalProtocolError, ProtocolError)


# -- management records --------------------------------------------------------


def test_get_values_answers_only_known_names_in_order() -> None:
    conn = FastCGIConnection(max_conns=7, max_reqs=3, mpxs_conns=False)
    query = helpers.nv_pairs(
        [
            (b"FCGI_MPXS_CONNS", b""),
            (b"NOPE", b""),
            (b"FCGI_MAX_REQS", b""),
            (b"FCGI_MAX_CONNS", b""),
        ]
    )
    (event,) = drain(conn, helpers.record(helpers.GET_VALUES, 0, query))
    assert event == GetValues((b"FCGI_MPXS_CONNS", b"NOPE", b"FCGI_MAX_REQS", b"FCGI_MAX_CONNS"))
    assert isinstance(event, GetValues)
    (record,), _ = helpers.parse_records(conn.send(conn.get_values_result(event.names)))
    assert (record.type, record.request_id) == (helpers.GET_VALUES_RESULT, 0)
    assert record.content == helpers.nv_pairs(
        [(b"FCGI_MPXS_CONNS", b"0"), (b"FCGI_MAX_REQS", b"3"), (b"FCGI_MAX_CONNS", b"7")]
    )


@pytest.mark.parametrize(
    ("record_type", "request_id"),
    [
        (helpers.BEGIN, 0),  # request id 0 is never a request
        (helpers.PARAMS, 0),
        (helpers.END, 0),
        (0, 0),
        (12, 0),
        (255, 0),
        (helpers.GET_VALUES_RESULT, 0),  # app-to-server management type sent to us
        (helpers.STDOUT, 1),  # app-to-server type sent to us
        (99, 5),
    ],
)
def test_unknown_records_are_reported(record_type: int, request_id: int) -> None:
    conn = FastCGIConnection()
    content = b"\x00\x01\x00\x00\x00\x00\x00\x00"
    (event,) = drain(conn, helpers.record(record_type, request_id, content))
    assert event == UnknownRecord(record_type, request_id)
    out = conn.send(UnknownType(record_type))
    assert out == helpers.record(helpers.UNKNOWN_TYPE, 0, bytes([record_type]) + bytes(7))
    assert conn.active_request_ids == frozenset()


@pytest.mark.parametrize(
    "record_type", [helpers.GET_VALUES, helpers.GET_VALUES_RESULT, helpers.UNKNOWN_TYPE]
)
@pytest.mark.parametrize("active", [False, True])
def test_management_records_on_an_application_id_are_ignored(
    record_type: int, active: bool
) -> None:
    # Spec 3.3: management records carry the null id. Answering one on id 1
    # with UNKNOWN_TYPE would tell the web server we do not know GET_VALUES.
    conn = FastCGIConnection()
    if active:
        drain(conn, helpers.begin_record(1) + helpers.params_records(1, {}))
    content = helpers.nv_pairs([(b"FCGI_MAX_REQS", b"")])
    assert drain(conn, helpers.record(record_type, 1, content)) == []
    assert conn.active_request_ids == ({1} if active else frozenset())
    if active:
        assert conn.request_state(1) is RequestState.STDIN
    # The same GET_VALUES on the null id is still answered.
    assert drain(conn, helpers.record(helpers.GET_VALUES, 0, content)) == [
        GetValues((b"FCGI_MAX_REQS",))
    ]


# -- request lifecycle ------------------------------------------------------------


def test_records_for_inactive_ids_are_ignored() -> None:
    stream = (
        helpers.record(helpers.PARAMS, 9, b"\x01\x01ab")
        + helpers.record(helpers.STDIN, 9, b"x")
        + helpers.record(helpers.DATA, 9)
        + helpers.record(helpers.ABORT, 9)
    )
    assert drain(FastCGIConnection(), stream) == []


@pytest.mark.parametrize(
    ("options", "begins", "status"),
    [
        ({}, [(1, helpers.AUTHORIZER)], ProtocolStatus.UNKNOWN_ROLE),
        ({}, [(1, 77)], ProtocolStatus.UNKNOWN_ROLE),
        ({"mpxs_conns": False}, [(1, 1), (2, 1)], ProtocolStatus.CANT_MPX_CONN),
        ({"max_reqs": 2}, [(1, 1), (2, 1), (3, 1)], ProtocolStatus.OVERLOADED),
    ],
)
def test_rejected_begin(
    options: dict[str, object], begins: list[tuple[int, int]], status: ProtocolStatus
) -> None:
    conn = FastCGIConnection(**options)  # type: ignore[arg-type]
    stream = b"".join(helpers.begin_record(rid, role) for rid, role in begins)
    rid, role = begins[-1]
    # What follows a refused BEGIN is ignored, as are the records of its id.
    stream += helpers.params_records(rid, {"A": "b"}) + helpers.stream_records(
        helpers.STDIN, rid, b"x"
    )
    events = drain(conn, stream)
    assert events[-1] == RequestRejected(rid, status, role)
    assert rid not in conn.active_request_ids
    with pytest.raises(RemoteProtocolError, match="already active"):
        drain(FastCGIConnection(**options), stream + helpers.begin_record(rid))  # type: ignore[arg-type]
    assert conn.send(EndRequest(rid, 0, status)) == helpers.record(
        helpers.END, rid, bytes([0, 0, 0, 0, status, 0, 0, 0])
    )
    # Once answered, the id may begin again (with an acceptable role).
    if status is ProtocolStatus.UNKNOWN_ROLE:
        assert drain(conn, helpers.begin_record(rid)) == [BeginRequest(rid, Role.RESPONDER, True)]


def test_abort_mid_stdin_then_later_input_ignored() -> None:
    conn = FastCGIConnection()
    stream = (
        helpers.begin_record(1)
        + helpers.params_records(1, {})
        + helpers.record(helpers.STDIN, 1, b"a")
    )
    stream += helpers.record(helpers.ABORT, 1) + helpers.record(helpers.ABORT, 1)
    stream += helpers.stream_records(helpers.STDIN, 1, b"late")
    events = drain(conn, stream)
    assert events[-2:] == [Stdin(1, b"a"), AbortRequest(1)]
    assert conn.request_state(1) is RequestState.ABORTED
    records, _ = helpers.parse_records(conn.send(EndRequest(1)))
    assert [r.type for r in records] == [helpers.STDOUT, helpers.END]


def test_abort_before_params_complete_ends_without_output() -> None:
    conn = FastCGIConnection()
    events = drain(conn, helpers.begin_record(1) + helpers.record(helpers.ABORT, 1))
    assert events == [BeginRequest(1, Role.RESPONDER, True), AbortRequest(1)]
    with pytest.raises(LocalProtocolError, match="before its params"):
        conn.send(Stdout(1, b"x"))
    assert conn.send(EndRequest(1)) == helpers.record(helpers.END, 1, bytes(8))


def test_authorizer_reads_params_only_and_tolerates_empty_stdin() -> None:
    conn = FastCGIConnection(roles=ALL_ROLES)
    stream = helpers.begin_record(1, helpers.AUTHORIZER) + helpers.params_records(1, {"U": "x"})
    stream += helpers.record(helpers.STDIN, 1)  # lighttpd sends this; Apache does not
    events = drain(conn, stream)
    assert events == [BeginRequest(1, Role.AUTHORIZER, True), Params(1, ((b"U", b"x"),))]
    assert conn.request_state(1) is RequestState.DONE


def test_filter_reads_stdin_then_data() -> None:
    conn = FastCGIConnection(roles=ALL_ROLES)
    stream = helpers.request_bytes(1, {}, stdin=b"in", role=helpers.FILTER, data=b"file")
    assert drain(conn, stream)[2:] == [
        Stdin(1, b"in"),
        Stdin(1, b""),
        Data(1, b"file"),
        Data(1, b""),
    ]
    assert conn.request_state(1) is RequestState.DONE


def test_output_rules() -> None:
    conn = FastCGIConnection()
    drain(conn, helpers.begin_record(1))
    with pytest.raises(LocalProtocolError, match="before its params"):
        conn.send(Stdout(1, b"x"))
    drain(conn, helpers.params_records(1, {}))
    assert conn.send(Stdout(1, b"")) == helpers.record(helpers.STDOUT, 1)
    with pytest.raises(LocalProtocolError, match="closed"):
        conn.send(Stdout(1, b"again"))
    conn.send(Stderr(1, b"warn"))
    # END closes stderr (used) but not stdout again.
    records, _ = helpers.parse_records(conn.send(EndRequest(1)))
    assert [(r.type, r.content) for r in records] == [
        (helpers.STDERR, b""),
        (helpers.END, bytes(8)),
    ]
    with pytest.raises(LocalProtocolError, match="not active"):
        conn.send(Stdout(1, b"x"))
    with pytest.raises(LocalProtocolError, match="not active"):
        conn.send(EndRequest(1))
    with pytest.raises(LocalProtocolError, match="cannot send a Stdin: not an output event"):
        conn.send(Stdin(1, b"x"))  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="cannot send a bytes"):
        conn.send_parts(b"raw")  # type: ignore[arg-type]


def test_unused_stderr_sends_no_records() -> None:
    conn = FastCGIConnection()
    drain(conn, helpers.request_bytes(1))
    records, _ = helpers.parse_records(conn.send(EndRequest(1)))
    assert [r.type for r in records] == [helpers.STDOUT, helpers.END]


def test_keep_conn_is_per_request() -> None:
    conn = FastCGIConnection()
    drain(conn, helpers.request_bytes(1, keep_conn=True))
    conn.send(EndRequest(1))
    assert conn.keep_alive
    assert not conn.should_close
    drain(conn, helpers.request_bytes(1, keep_conn=False) + helpers.request_bytes(2))
    conn.send(EndRequest(1))
    assert not conn.keep_alive
    assert not conn.should_close  # request 2 still runs
    conn.send(EndRequest(2))
    assert conn.should_close


def test_receive_after_eof_is_local_error() -> None:
    conn = FastCGIConnection()
    conn.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"x")


# -- stateful: a multiplexing web server against the connection -------------------


class WebServerModel(RuleBasedStateMachine):
    """Drives the core like a web server that multiplexes, aborts, and asks for
    values, with the application ending requests in between."""

    def __init__(self) -> None:
        super().__init__()
        self.conn = FastCGIConnection(roles=ALL_ROLES, max_reqs=5)
        self.model: dict[int, str] = {}  # id -> "params" | "stdin" | "data" | "done" | "aborted"
        self.roles: dict[int, int] = {}
        self.params_done: set[int] = set()

    def feed(self, data: bytes) -> list[Event]:
        return drain(self.conn, data)

    @rule(rid=st.integers(1, 8), role=st.sampled_from([1, 2, 3]), keep=st.booleans())
    def begin(self, rid: int, role: int, keep: bool) -> None:
        assume(rid not in self.model)
        events = self.feed(helpers.begin_record(rid, role, keep))
        if len(self.model) >= 5:
            assert events == [RequestRejected(rid, ProtocolStatus.OVERLOADED, role)]
            self.conn.send(EndRequest(rid, 0, ProtocolStatus.OVERLOADED))
            return
        assert events == [BeginRequest(rid, Role(role), keep)]
        self.model[rid] = "params"
        self.roles[rid] = role

    @rule(
        data=st.data(),
        pairs=st.lists(st.tuples(st.binary(max_size=20), st.binary(max_size=200)), max_size=4),
    )
    def params(self, data: st.DataObject, pairs: list[tuple[bytes, bytes]]) -> None:
        waiting = sorted(r for r, s in self.model.items() if s == "params")
        assume(waiting)
        rid = data.draw(st.sampled_from(waiting))
        events = self.feed(helpers.params_records(rid, pairs))
        assert events == [Params(rid, tuple(pairs))]
        self.model[rid] = {1: "stdin", 2: "done", 3: "stdin"}[self.roles[rid]]
        self.params_done.add(rid)

    @rule(data=st.data(), chunk=st.binary(max_size=100))
    def stdin(self, data: st.DataObject, chunk: bytes) -> None:
        readers = sorted(r for r, s in self.model.items() if s in ("stdin", "data"))
        assume(readers)
        rid = data.draw(st.sampled_from(readers))
        rtype = helpers.STDIN if self.model[rid] == "stdin" else helpers.DATA
        events = self.feed(helpers.record(rtype, rid, chunk))
        event_type = Stdin if rtype == helpers.STDIN else Data
        assert events == [event_type(rid, chunk)]
        if not chunk:
            self.model[rid] = (
                "data" if (self.model[rid], self.roles[rid]) == ("stdin", 3) else "done"
            )

    @rule(data=st.data())
    def abort(self, data: st.DataObject) -> None:
        assume(self.model)
        rid = data.draw(st.sampled_from(sorted(self.model)))
        events = self.feed(helpers.record(helpers.ABORT, rid))
        assert events == ([] if self.model[rid] == "aborted" else [AbortRequest(rid)])
        self.model[rid] = "aborted"

    @precondition(lambda self: any(s not in ("params",) for s in self.model.values()))
    @rule(data=st.data(), output=st.binary(max_size=70_000), status=st.integers(0, 2**32 - 1))
    def end(self, data: st.DataObject, output: bytes, status: int) -> None:
        rid = data.draw(st.sampled_from(sorted(r for r, s in self.model.items() if s != "params")))
        out = b""
        if rid not in self.params_done:
            # Aborted before its params were complete: no output stream exists.
            with pytest.raises(LocalProtocolError):
                self.conn.send(Stdout(rid, b"x"))
            output = b""
        elif output:
            out += self.conn.send(Stdout(rid, output))
        out += self.conn.send(EndRequest(rid, status))
        records, rest = helpers.parse_records(out)
        assert rest == b""
        assert all(r.request_id == rid for r in records)
        assert b"".join(r.content for r in records if r.type == helpers.STDOUT) == output
        expected_tail = [helpers.STDOUT, helpers.END] if rid in self.params_done else [helpers.END]
        assert [r.type for r in records][-len(expected_tail) :] == expected_tail
        assert sum(r.type == helpers.END for r in records) == 1
        del self.model[rid]
        self.params_done.discard(rid)

    @rule(
        rid=st.integers(1, 8), rtype=st.sampled_from([helpers.PARAMS, helpers.STDIN, helpers.DATA])
    )
    def stray_record_for_inactive_id(self, rid: int, rtype: int) -> None:
        assume(rid not in self.model)
        assert self.feed(helpers.record(rtype, rid, b"stray")) == []

    @rule()
    def get_values(self) -> None:
        events = self.feed(
            helpers.record(helpers.GET_VALUES, 0, helpers.nv_pairs([(b"FCGI_MAX_REQS", b"")]))
        )
        assert events == [GetValues((b"FCGI_MAX_REQS",))]

    @invariant()
    def active_requests_match_model(self) -> None:
        assert self.conn.active_request_ids == set(self.model)


TestWebServerModel = WebServerModel.TestCase
