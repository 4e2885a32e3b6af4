"""Stateful test of the whole Trio connection layer, driven by hypothesis.

Hypothesis writes a *program* for the web server side of one connection: up to
ten requests (each id used once) whose records are interleaved at random, with
params and stdin split across records, aborts at random moments, requests left
incomplete, GET_VALUES, unknown record types, stray records for ids that were
never begun, sleeps, and sometimes garbage or an abrupt close. The byte stream
is then cut into random pieces. ``tests/fuzz/connection_harness.py`` plays it
against ``serve_connection`` (memory or lockstep stream pair, autojump clock)
with a handler that echoes, streams, sleeps, raises or ignores its body (in
the connection's tasks, or in tasks of its own as the ASGI adapter's run), and
checks the generic properties (nothing escapes, nothing leaks, no traceback
but the handler's own, output is whole records and exactly what each finished
handler wrote). Because each id is begun once, this test also checks:

- each request gets at most one END_REQUEST, and exactly one when it was
  complete (or aborted, or refused) and the web server kept the connection open;
- an echoed body is exactly the stdin that was sent;
- every GET_VALUES and unknown record type is answered exactly once.

The ``fuzz`` hypothesis profile (``HYPOTHESIS_PROFILE=fuzz``) runs 20,000
programs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.connection_harness import (
    Close,
    Options,
    Program,
    Send,
    Sleep,
    Step,
    run_connection_program,
)
from tests.helpers import ABORT, BEGIN, GET_VALUES, PARAMS, STDIN, nv_pairs, record

_VALUE_NAMES = (b"FCGI_MAX_CONNS", b"FCGI_MAX_REQS", b"FCGI_MPXS_CONNS", b"NOT_A_VALUE")


@dataclass(frozen=True)
class Req:
    """One request the web server sends, and how far it gets."""

    rid: int
    mode: bytes
    keep_conn: bool
    params: bytes
    stdin: bytes
    records: tuple[bytes, ...]
    #: How many of its records are sent (the rest never are).
    sent: int
    #: Index in *records* before which an ABORT_REQUEST goes, if any.
    abort_at: int | None
    #: CONTENT_LENGTH is absent or right (else the echo fails: IncompleteInput).
    length_ok: bool
    #: The handler cannot finish before stdin ends (an echo whose announced
    #: length is within receive_all's limit; a larger one fails at once).
    needs_stdin: bool

    @property
    def params_done(self) -> bool:
        return self.sent >= 1 + self.params_records

    @property
    def params_records(self) -> int:
        return sum(1 for r in self.records if r[1] == PARAMS)

    @property
    def complete(self) -> bool:
        return self.sent == len(self.records)

    @property
    def aborted(self) -> bool:
        return self.abort_at is not None and self.abort_at <= self.sent


def _split(draw: st.DrawFn, data: bytes, max_pieces: int) -> list[bytes]:
    if not data:
        return []
    cuts = sorted(
        set(draw(st.lists(st.integers(1, len(data)), max_size=max_pieces - 1))) | {len(data)}
    )
    pieces, start = [], 0
    for cut in cuts:
        pieces.append(data[start:cut])
        start = cut
    return pieces


@st.composite
def requests(draw: st.DrawFn, rid: int) -> Req:
    mode = draw(st.sampled_from([b"echo", b"echo", b"stream", b"sleep", b"raise", b"noread"]))
    stdin = draw(st.binary(max_size=3000) | st.just(b"z" * draw(st.integers(0, 70_000))))
    params = [
        (b"MODE", mode),
        (b"N", b"%d" % draw(st.integers(0, 5))),
        (b"S", b"%d" % draw(st.integers(1, 5000))),
        (b"D", b"%d" % draw(st.integers(0, 50))),
        (b"W", b"%d" % draw(st.sampled_from([0, 0, 10]))),
    ]
    # CONTENT_LENGTH: right, absent, or one a web server should never send.
    weird = [b"", "\u00b2".encode(), b"-1", b"1e3", b" 5", b"9" * 40, b"%d" % (len(stdin) + 1)]
    length = draw(st.sampled_from([b"%d" % len(stdin), None, *weird]))
    if length is not None:
        params.append((b"CONTENT_LENGTH", length))
    params += draw(
        st.lists(st.tuples(st.binary(max_size=200), st.binary(max_size=300)), max_size=3)
    )
    encoded = nv_pairs(params, long_form=draw(st.booleans()))
    keep_conn = draw(st.integers(0, 19)) > 0
    records = [record(BEGIN, rid, struct.pack("!HB5x", 1, int(keep_conn)))]
    records += [record(PARAMS, rid, p) for p in _split(draw, encoded, 4)] + [record(PARAMS, rid)]
    records += [
        record(STDIN, rid, p[i : i + 65535])
        for p in _split(draw, stdin, 4)
        for i in range(0, len(p), 65535)
    ] + [record(STDIN, rid)]
    sent = len(records) if draw(st.integers(0, 5)) else draw(st.integers(1, len(records)))
    abort_at = draw(st.integers(1, len(records))) if draw(st.integers(0, 4)) == 0 else None
    length_ok = length in (None, b"", b"%d" % len(stdin))
    needs_stdin = mode == b"echo" and length != b"9" * 40
    return Req(
        rid, mode, keep_conn, encoded, stdin, tuple(records), sent, abort_at, length_ok, needs_stdin
    )


@dataclass
class Plan:
    program: Program
    reqs: list[Req]
    get_values: int
    unknown_types: list[int]
    broken: bool  # garbage or an abrupt close: the connection may end early


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    options = Options(
        max_reqs=draw(st.sampled_from([1, 3, 100])),
        mpxs_conns=draw(st.integers(0, 9)) > 0,
        input_buffer_size=draw(st.sampled_from([16, 1024, 256 * 1024])),
        read_timeout=draw(st.sampled_from([None, 60.0])),
        idle_timeout=None,
        lockstep=draw(st.booleans()),
        own_tasks=draw(st.booleans()),
    )
    reqs = [draw(requests(rid)) for rid in range(1, draw(st.integers(1, 10)) + 1)]
    # Per-request record queues, merged in a random order.
    queues = []
    for req in reqs:
        queue = list(req.records[: req.sent])
        if req.abort_at is not None and req.abort_at <= req.sent:
            queue.insert(req.abort_at, record(ABORT, req.rid))
        queues.append(queue)
    extras: list[bytes] = []
    get_values = draw(st.integers(0, 2))
    for _ in range(get_values):
        names = draw(st.lists(st.sampled_from(_VALUE_NAMES), max_size=4))
        extras.append(record(GET_VALUES, 0, nv_pairs((name, b"") for name in names)))
    unknown_types = draw(st.lists(st.sampled_from([0, 12, 200]), max_size=2))
    extras += [record(t, 0, bytes(8)) for t in unknown_types]
    # Records for ids never begun must be ignored (spec 3.3).
    extras += [
        record(t, 300, b"stray") for t in draw(st.lists(st.sampled_from([2, 4, 5, 8]), max_size=3))
    ]
    queues += [[extra] for extra in extras]
    stream: list[bytes | float] = []
    while any(queues):
        queue = draw(st.sampled_from([q for q in queues if q]))
        stream.append(queue.pop(0))
        if draw(st.integers(0, 7)) == 0:
            stream.append(draw(st.integers(0, 30)) / 10)
    broken = False
    tail: list[Step] = []
    match draw(st.integers(0, 19)):
        case 0:
            broken = True
            stream.insert(draw(st.integers(0, len(stream))), b"\x02garbage")
        case 1:
            broken = True
            tail.append(Close())
        case 2:
            broken = True
            stream.append(record(STDIN, 1, b"truncated")[:11])
        case _:
            pass
    steps: list[Step] = []
    pending = b""
    for item in stream:
        if isinstance(item, float):
            steps += [Send(p) for p in _split(draw, pending, 4)]
            steps.append(Sleep(item))
            pending = b""
        else:
            pending += item
    steps += [Send(p) for p in _split(draw, pending, 6)]
    return Plan(Program(options, steps + tail), reqs, get_values, unknown_types, broken)


@given(plans())
def test_connection_random_programs_keep_every_promise(plan: Plan) -> None:
    outcome = run_connection_program(plan.program)
    open_to_end = not outcome.server_closed_first and not plan.broken
    for req in plan.reqs:
        response = outcome.responses.get(req.rid)
        ends = response.ends if response else []
        assert len(ends) <= 1, f"request {req.rid} ended {len(ends)} times"
        if not open_to_end:
            continue
        finished = req.params_done and (req.complete or not req.needs_stdin)
        if finished or req.aborted:
            assert len(ends) == 1, f"request {req.rid} ({req}) never got END_REQUEST"
        elif ends:
            # Incomplete, not aborted: only a refusal may end it.
            assert ends[0][1] != 0, f"incomplete request {req.rid} ended: {ends}"
        if (
            req.mode == b"echo"
            and req.length_ok
            and req.complete
            and not req.aborted
            and ends == [(0, 0)]
            and response is not None
        ):
            assert response.stdout == b"Status: 200 OK\r\n\r\n" + req.stdin
    if open_to_end:
        results = [rec for rec in outcome.management if rec.type == 10]
        unknown = [rec.content[0] for rec in outcome.management if rec.type == 11]
        assert len(results) == plan.get_values
        assert sorted(unknown) == sorted(plan.unknown_types)
