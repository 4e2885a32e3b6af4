"""Fuzz harness for the sans-IO core (:class:`trio_fastcgi.FastCGIConnection`).

One input (any bytes) is decoded into a *program*: a connection configuration
and a list of steps, each either wire bytes the web server sends or an output
event the application sends. An output step either picks a well-typed event
(:class:`Output`) or builds one from raw field values that are often out of
range or of the wrong type, or sends something that is not an output event at
all (:class:`RawOutput`). The program runs three times:

1. feeding each wire step as its own ``receive_data`` call,
2. feeding all wire bytes at once,
3. feeding them one byte at a time,

with every output step executed after the same number of input events in all
three runs (the core parses lazily, so that is the same moment for it). The
properties checked are the core's documented contract:

- nothing but :class:`trio_fastcgi.RemoteProtocolError` leaves
  ``receive_data``/``next_event``, and nothing but ``LocalProtocolError`` leaves
  building an output event or ``send``, whatever it is given;
- an output event is refused when built exactly when a field is invalid, and
  ``send`` fails exactly when the web server's view (below) says it must;
- a failed ``send`` changes no observable state (active ids, request states,
  ``keep_alive``, ``should_close``, ``idle``);
- the three runs give the same events, the same output bytes and the same error;
- events only name requests that are active, streams do not restart after their
  end, params never exceed ``max_params_size``, and a management record type on
  a request id is never reported;
- every output parses with the independent decoder in ``tests/helpers.py``,
  only names requests that the web server began and that have not ended, sends
  no stream record after a stream's end or for a refused request, ends each
  request once, and ends its stdout (and its stderr, if used) before
  ``FCGI_END_REQUEST`` once its params were complete.

The decoder is deliberately forgiving (a short input just ends the program), so
that every byte string is a valid program and libFuzzer's mutations stay useful.
Both the atheris target ``fuzz_core.py`` and ``tests/test_fuzz_regressions.py``
use :func:`run_core_case`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from tests.helpers import (
    END,
    GET_VALUES,
    GET_VALUES_RESULT,
    STDERR,
    STDOUT,
    UNKNOWN_TYPE,
    Record,
    nv_pairs,
    parse_records,
)
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
    GetValuesResult,
    LocalProtocolError,
    Params,
    ProtocolStatus,
    RemoteProtocolError,
    RequestRejected,
    Role,
    Stderr,
    Stdin,
    Stdout,
    UnknownRecord,
    UnknownType,
)

_PARAMS_LIMITS = (64, 1024, 128 * 1024)
_PROTOCOL_STATUSES = tuple(ProtocolStatus)
_MANAGEMENT_TYPES: Final = frozenset({GET_VALUES, GET_VALUES_RESULT, UNKNOWN_TYPE})


class Reader:
    """Reads a fuzz input front to back; past the end everything reads as 0."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def exhausted(self) -> bool:
        return self.pos >= len(self.data)

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        value = self.data[self.pos]
        self.pos += 1
        return value

    def take(self, n: int) -> bytes:
        chunk = self.data[self.pos : self.pos + n]
        self.pos += len(chunk)
        return chunk


@dataclass(frozen=True)
class CoreConfig:
    roles: frozenset[Role]
    mpxs_conns: bool
    max_reqs: int
    max_params_size: int

    def connection(self) -> FastCGIConnection:
        return FastCGIConnection(
            roles=self.roles,
            mpxs_conns=self.mpxs_conns,
            max_reqs=self.max_reqs,
            max_params_size=self.max_params_size,
        )


@dataclass(frozen=True)
class Wire:
    data: bytes


@dataclass(frozen=True)
class Output:
    """An output event for the *index*-th candidate request (mod their count)."""

    kind: int
    index: int
    size: int
    status: int


@dataclass(frozen=True)
class RawOutput:
    """An output event built from raw field values (see :func:`raw_event`):
    *kind* picks the event type (mod 6) and a variant (div 6)."""

    kind: int
    a: int
    b: int
    c: int


Step = Wire | Output | RawOutput


@dataclass
class Program:
    config: CoreConfig
    steps: list[Step] = field(default_factory=list)

    @property
    def wire(self) -> bytes:
        return b"".join(step.data for step in self.steps if isinstance(step, Wire))


def record_bytes(record_type: int, request_id: int, content: bytes, padding: int) -> bytes:
    return (
        struct.pack("!BBHHBx", 1, record_type, request_id, len(content), padding)
        + content
        + bytes(padding)
    )


def structured_record(reader: Reader) -> bytes:
    """A well-framed record with fuzz-chosen type, id and content: most random
    bytes are not valid headers, and these let the fuzzer reach deep states."""
    record_type = 1 + reader.byte() % 11
    request_id = reader.byte() % 4
    padding = reader.byte() % 9
    if record_type == 1:  # BEGIN_REQUEST
        content = struct.pack("!HB5x", reader.byte() % 5, reader.byte() & 1)
    elif record_type in (4, 9):  # PARAMS, GET_VALUES: a few short pairs
        parts = []
        for _ in range(reader.byte() % 4):
            name = reader.take(reader.byte() % 24)
            value = reader.take(reader.byte() % 24)
            parts.append(bytes((len(name), len(value))) + name + value)
        content = b"".join(parts)
    else:
        content = reader.take(reader.byte())
    return record_bytes(record_type, request_id, content, padding)


def decode_program(data: bytes) -> Program:
    reader = Reader(data)
    flags = reader.byte()
    roles = frozenset(role for bit, role in zip((1, 2, 4), Role, strict=True) if flags & bit)
    config = CoreConfig(
        roles=roles or frozenset({Role.RESPONDER}),
        mpxs_conns=not flags & 8,
        max_reqs=1 + reader.byte() % 4,
        max_params_size=_PARAMS_LIMITS[reader.byte() % len(_PARAMS_LIMITS)],
    )
    program = Program(config)
    while not reader.exhausted:
        op_byte = reader.byte()
        op = op_byte % 4
        if op == 0:
            program.steps.append(Wire(reader.take(reader.byte())))
        elif op in (1, 2):
            program.steps.append(Wire(structured_record(reader)))
        elif op_byte < 0x80:
            program.steps.append(
                Output(reader.byte() % 7, reader.byte(), reader.byte(), reader.byte())
            )
        else:
            # The high bit of an output step's op byte (never set by the seeds,
            # which use 3) builds the event from raw fields instead.
            program.steps.append(
                RawOutput(reader.byte(), reader.byte(), reader.byte(), reader.byte())
            )
    return program


# -- running ------------------------------------------------------------------------


class PropertyViolation(AssertionError):
    """The core broke one of the properties this harness checks."""


@dataclass
class Trace:
    events: list[Event] = field(default_factory=list)
    outputs: list[bytes | str] = field(default_factory=list)
    error: str | None = None


_BAD_IDS: Final = (0, 65536, -1, True, "1", None)
_BAD_DATA: Final = ("text", bytearray(b"x"), memoryview(b"x"), None)
_NOT_EVENTS: Final = (Stdin(1, b"x"), AbortRequest(1), b"raw", None, 3)


def _is_int(value: object, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _is_pairs(values: object) -> bool:
    return type(values) is tuple and all(
        type(pair) is tuple and len(pair) == 2 and type(pair[0]) is bytes and type(pair[1]) is bytes
        for pair in values
    )


def raw_event(
    step: RawOutput, candidates: Sequence[int]
) -> tuple[type | None, tuple[Any, ...], bool]:
    """The event type, the arguments to build it with and whether the
    arguments are valid (by the spec's ranges, written apart from the events'
    validators). A type of None means: send the one argument as it is."""
    kind, variant = step.kind % 6, step.kind // 6
    b, c = step.b, step.c
    if kind == 5:
        return None, (_NOT_EVENTS[b % len(_NOT_EVENTS)],), False
    if kind == 4:
        record_type = (b, b, b, b, b, b, 256 + b, (True, None, -1)[b % 3])[variant % 8]
        return UnknownType, (record_type,), _is_int(record_type, 0, 255)
    if kind == 3:
        values: Any
        if variant % 8 < 4:
            values = ((bytes([b]) * (c % 40), bytes([c]) * (b % 40)),) * (variant % 4)
        elif variant % 8 == 4:
            # 65,534, 65,535 and 65,536 bytes encoded: the last does not fit.
            values = ((b"N" * 200, b"V" * (65326 + b % 3)),)
        else:
            values = ([(b"a", b"b")], ((b"a", "text"),), ((b"a",),), (b"ab",))[(variant + c) % 4]
        return GetValuesResult, (values,), _is_pairs(values)
    pick = step.a % 16
    if pick < 9:
        request_id: object = candidates[pick % len(candidates)]
    else:
        request_id = (65535, *_BAD_IDS)[pick - 9]
    id_ok = _is_int(request_id, 1, 0xFFFF)
    if kind in (0, 1):
        data: object
        if variant % 8 == 0:
            data = b""
        elif variant % 8 < 4:
            data = bytes([c]) * (b * (1 + variant // 8))
        else:
            data = _BAD_DATA[variant % 4]
        return (Stdout, Stderr)[kind], (request_id, data), id_ok and type(data) is bytes
    app_status = (*(((b * 0x01010101) ^ c,) * 5), 2**32 + b, -1 - b, True)[variant % 8]
    protocol_status = (
        c % 4,
        c % 4,
        c % 4,
        c % 4,
        _PROTOCOL_STATUSES[(c >> 3) % 4],
        4 + (c >> 3),
        True,
        None,
    )[c % 8]
    valid = (
        id_ok
        and _is_int(app_status, 0, 0xFFFFFFFF)
        and (type(protocol_status) is ProtocolStatus or _is_int(protocol_status, 0, 3))
    )
    return EndRequest, (request_id, app_status, protocol_status), valid


def _observable(conn: FastCGIConnection) -> tuple[object, ...]:
    active = conn.active_request_ids
    return (
        active,
        {rid: conn.request_state(rid) for rid in active},
        conn.keep_alive,
        conn.should_close,
        conn.idle,
        conn.has_partial_record,
    )


@dataclass
class _Streams:
    """The output streams of one live request, as the web server saw them."""

    stdout_used: bool = False
    stdout_ended: bool = False
    stderr_used: bool = False
    stderr_ended: bool = False


class _Model:
    """What the web server side knows, to check events and output against."""

    def __init__(self, config: CoreConfig) -> None:
        self.config = config
        self.live: set[int] = set()  # begun (accepted or refused), not ended
        self.accepted: set[int] = set()  # live and not refused
        self.streams: dict[int, _Streams] = {}  # for each live id
        self.stream_done: dict[tuple[int, str], bool] = {}
        self.params_seen: set[int] = set()
        self.last_get_values: tuple[bytes, ...] = ()
        self.last_unknown: int | None = None
        self.closed = False

    def check_event(self, conn: FastCGIConnection, event: Event) -> None:
        if self.closed:
            raise PropertyViolation(f"{event!r} after ConnectionClosed")
        active = conn.active_request_ids
        match event:
            case BeginRequest(request_id, role, _):
                if request_id == 0 or request_id in self.live:
                    raise PropertyViolation(f"BeginRequest for id {request_id} that is live")
                if role not in self.config.roles or request_id not in active:
                    raise PropertyViolation(f"{event!r} accepted wrongly")
                if len(active) > self.config.max_reqs:
                    raise PropertyViolation(f"{len(active)} active > max_reqs")
                if not self.config.mpxs_conns and len(active) > 1:
                    raise PropertyViolation("two active requests without mpxs_conns")
                self._begin(request_id)
                self.accepted.add(request_id)
                for stream in ("stdin", "data"):
                    self.stream_done.pop((request_id, stream), None)
                self.params_seen.discard(request_id)
            case RequestRejected(request_id, _, _):
                if request_id == 0 or request_id in self.live or request_id in active:
                    raise PropertyViolation(f"{event!r} for a live id")
                self._begin(request_id)
            case Params(request_id, params):
                self._need_active(active, request_id, event)
                if request_id in self.params_seen:
                    raise PropertyViolation(f"second Params for request {request_id}")
                size = sum(len(name) + len(value) for name, value in params)
                if size > self.config.max_params_size:
                    raise PropertyViolation(f"params of {size} bytes passed the limit")
                self.params_seen.add(request_id)
            case Stdin(request_id, data) | Data(request_id, data):
                self._need_active(active, request_id, event)
                if request_id not in self.params_seen:
                    raise PropertyViolation(f"{event!r} before Params")
                key = (request_id, "stdin" if isinstance(event, Stdin) else "data")
                if self.stream_done.get(key):
                    raise PropertyViolation(f"{event!r} after the end of its stream")
                if not data:
                    self.stream_done[key] = True
            case AbortRequest(request_id):
                self._need_active(active, request_id, event)
            case GetValues(names):
                self.last_get_values = names
            case UnknownRecord(record_type, request_id):
                if request_id and record_type in _MANAGEMENT_TYPES:
                    raise PropertyViolation(f"{event!r}: a management type on a request id")
                self.last_unknown = record_type
            case ConnectionClosed():
                self.closed = True
            case _:
                raise PropertyViolation(f"unexpected event {event!r}")

    def _begin(self, request_id: int) -> None:
        self.live.add(request_id)
        self.streams[request_id] = _Streams()

    @staticmethod
    def _need_active(active: frozenset[int], request_id: int, event: Event) -> None:
        if request_id not in active:
            raise PropertyViolation(f"{event!r} for a request that is not active")

    def check_state(self, conn: FastCGIConnection) -> None:
        """The connection's state agrees with what the web server saw."""
        if conn.active_request_ids != self.accepted:
            raise PropertyViolation(
                f"active ids {sorted(conn.active_request_ids)} != {sorted(self.accepted)}"
            )
        if conn.idle != (not self.live):
            raise PropertyViolation(f"idle is {conn.idle} with {sorted(self.live)} live")

    def allows(self, event: object) -> bool:
        """Whether ``send(event)`` must succeed now."""
        match event:
            case Stdout(request_id, _):
                streams = self.streams.get(request_id)
                return (
                    request_id in self.accepted
                    and request_id in self.params_seen
                    and streams is not None
                    and not streams.stdout_ended
                )
            case Stderr(request_id, _):
                streams = self.streams.get(request_id)
                return (
                    request_id in self.accepted
                    and request_id in self.params_seen
                    and streams is not None
                    and not streams.stderr_ended
                )
            case EndRequest(request_id, _, _):
                return request_id in self.live
            case GetValuesResult(values):
                return len(nv_pairs(values)) <= 0xFFFF
            case UnknownType():
                return True
        return False

    def check_output(self, event: object, data: bytes) -> None:
        records, rest = parse_records(data)
        if rest:
            raise PropertyViolation(f"send() returned a partial record: {rest!r}")
        self._check_records_match(event, records)
        for rec in records:
            if rec.type in (GET_VALUES_RESULT, UNKNOWN_TYPE):
                if rec.request_id != 0:
                    raise PropertyViolation(f"management record with id {rec.request_id}")
                continue
            if rec.type not in (STDOUT, STDERR, END):
                raise PropertyViolation(f"record type {rec.type} sent by the application")
            rid = rec.request_id
            if rid not in self.live:
                raise PropertyViolation(f"output for request {rid}, which is not live")
            streams = self.streams[rid]
            if rec.type in (STDOUT, STDERR):
                name = "STDOUT" if rec.type == STDOUT else "STDERR"
                if rid not in self.accepted or rid not in self.params_seen:
                    raise PropertyViolation(f"{name} for request {rid} before its params")
                if rec.type == STDOUT:
                    if streams.stdout_ended:
                        raise PropertyViolation(f"STDOUT for request {rid} after its end")
                    streams.stdout_used = True
                    streams.stdout_ended = not rec.content
                else:
                    if streams.stderr_ended:
                        raise PropertyViolation(f"STDERR for request {rid} after its end")
                    streams.stderr_used = True
                    streams.stderr_ended = not rec.content
                continue
            if len(rec.content) != 8:
                raise PropertyViolation("END_REQUEST body is not 8 bytes")
            if rid in self.accepted and rid in self.params_seen and not streams.stdout_ended:
                raise PropertyViolation(f"END_REQUEST for request {rid} before its stdout ended")
            if streams.stderr_used and not streams.stderr_ended:
                raise PropertyViolation(f"END_REQUEST for request {rid} before its stderr ended")
            self.live.discard(rid)
            self.accepted.discard(rid)
            del self.streams[rid]

    @staticmethod
    def _check_records_match(event: object, records: list[Record]) -> None:
        """The records are the ones *event* stands for."""
        types = [rec.type for rec in records]
        match event:
            case Stdout(request_id, data) | Stderr(request_id, data):
                record_type = STDOUT if isinstance(event, Stdout) else STDERR
                ok = (
                    types == [record_type] * len(records)
                    and all(rec.request_id == request_id for rec in records)
                    and b"".join(rec.content for rec in records) == data
                    and (len(records) == 1 if not data else all(rec.content for rec in records))
                )
            case EndRequest(request_id, app_status, protocol_status):
                ok = (
                    types[-1:] == [END]
                    and END not in types[:-1]
                    and all(rec.request_id == request_id for rec in records)
                    and all(not rec.content for rec in records[:-1])
                    and records[-1].content == struct.pack("!LB3x", app_status, protocol_status)
                )
            case GetValuesResult(values):
                ok = types == [GET_VALUES_RESULT] and records[0].content == nv_pairs(values)
            case UnknownType(record_type):
                ok = types == [UNKNOWN_TYPE] and records[0].content == bytes(
                    [record_type, 0, 0, 0, 0, 0, 0, 0]
                )
            case _:
                ok = False
        if not ok:
            raise PropertyViolation(f"send({event!r}) gave {records!r}")

    def candidates(self, index: int) -> list[int]:
        return sorted(self.live) or [1 + index % 3]

    def output_event(self, conn: FastCGIConnection, step: Output) -> Event:
        candidates = self.candidates(step.index)
        if step.kind == 6:
            candidates.append(1 + step.index % 5)  # maybe not live: LocalProtocolError
        request_id = candidates[step.index % len(candidates)]
        payload = bytes([step.status]) * (step.size * 301)  # up to 76 KiB: >1 record
        match step.kind:
            case 0:
                return Stdout(request_id, payload)
            case 1:
                return Stdout(request_id, b"")
            case 2:
                return Stderr(request_id, payload[: step.size])
            case 3:
                return Stderr(request_id, b"")
            case 4 | 6:
                status = _PROTOCOL_STATUSES[step.status % len(_PROTOCOL_STATUSES)]
                return EndRequest(request_id, step.size * 0x01010101, status)
            case _:
                if step.status & 1 or self.last_unknown is None:
                    return conn.get_values_result(self.last_get_values)
                return UnknownType(self.last_unknown)


_REFUSED: Final = object()


class _Runner:
    """One run of a program against a fresh connection."""

    def __init__(self, program: Program) -> None:
        self.conn = program.config.connection()
        self.model = _Model(program.config)
        self.trace = Trace()
        self.finished = False

    def send(self, step: Output | RawOutput) -> None:
        if isinstance(step, Output):
            event: object = self.model.output_event(self.conn, step)
        else:
            event = self.build(step)
            if event is _REFUSED:
                return
        allowed = self.model.allows(event)
        before = _observable(self.conn)
        try:
            data = self.conn.send(event)  # type: ignore[arg-type]
        except LocalProtocolError as exc:
            if allowed:
                raise PropertyViolation(f"send({event!r}) failed: {exc}") from exc
            if _observable(self.conn) != before:
                raise PropertyViolation(
                    f"failed send({event!r}) changed the state: {before} -> "
                    f"{_observable(self.conn)}"
                ) from exc
            self.trace.outputs.append(f"LocalProtocolError: {exc}")
            return
        if not allowed:
            raise PropertyViolation(f"send({event!r}) succeeded")
        self.model.check_output(event, data)
        self.model.check_state(self.conn)
        self.trace.outputs.append(data)

    def build(self, step: RawOutput) -> object:
        """The event *step* stands for, or _REFUSED if building it failed (as
        it must exactly when a field is invalid)."""
        event_type, args, valid = raw_event(step, self.model.candidates(step.a))
        if event_type is None:
            return args[0]
        try:
            event = event_type(*args)
        except LocalProtocolError as exc:
            if valid:
                raise PropertyViolation(f"{event_type.__name__} refused {args!r}: {exc}") from exc
            self.trace.outputs.append(f"refused: {exc}")
            return _REFUSED
        if not valid:
            raise PropertyViolation(f"{event_type.__name__} built from {args!r}")
        return event

    def feed(
        self, data: bytes, schedule: dict[int, list[Output | RawOutput]] | None = None
    ) -> None:
        """Feed *data* and pull events until NEED_DATA; with a *schedule*, run
        the outputs due after each event."""
        if self.finished:
            return
        try:
            self.conn.receive_data(data)
            while (event := self.conn.next_event()) is not NEED_DATA:
                self.model.check_event(self.conn, event)
                self.model.check_state(self.conn)
                self.trace.events.append(event)
                if isinstance(event, ConnectionClosed):
                    self.finished = True
                    return
                if schedule is not None:
                    for step in schedule.pop(len(self.trace.events), ()):
                        self.send(step)
        except RemoteProtocolError as exc:
            self.trace.error = str(exc)
            self.finished = True


_AFTER_END = -1


def _run_stepwise(program: Program) -> tuple[Trace, dict[int, list[Output | RawOutput]]]:
    """Feed each wire step as it comes; note after how many events each output ran."""
    runner = _Runner(program)
    schedule: dict[int, list[Output | RawOutput]] = {}
    for step in program.steps:
        if isinstance(step, Output | RawOutput):
            # After the connection failed, an output runs after everything.
            when = _AFTER_END if runner.finished else len(runner.trace.events)
            schedule.setdefault(when, []).append(step)
            runner.send(step)
        elif step.data:
            runner.feed(step.data)
    runner.feed(b"")
    return runner.trace, schedule


def _run_split(
    program: Program, schedule: dict[int, list[Output | RawOutput]], chunks: Sequence[bytes]
) -> Trace:
    """Feed all input as *chunks*, running each output after the same number of
    events as in the step-by-step run."""
    runner = _Runner(program)
    pending = {count: list(steps) for count, steps in schedule.items()}
    for step in pending.pop(0, ()):
        runner.send(step)
    for chunk in chunks:
        if chunk:
            runner.feed(chunk, pending)
    runner.feed(b"", pending)
    for step in pending.pop(_AFTER_END, ()):
        runner.send(step)
    if pending:
        raise PropertyViolation(f"no event #{min(pending)} when the input is split differently")
    return runner.trace


def run_core_case(data: bytes) -> Trace:
    """Run one fuzz input; raise :class:`PropertyViolation` (or let the
    unexpected exception escape) if the core breaks a property."""
    program = decode_program(data)
    trace, schedule = _run_stepwise(program)
    wire = program.wire
    splits = {
        "whole": [wire],
        "bytewise": [wire[i : i + 1] for i in range(len(wire))],
    }
    for name, chunks in splits.items():
        other = _run_split(program, schedule, chunks)
        for what in ("events", "outputs", "error"):
            if getattr(other, what) != getattr(trace, what):
                raise PropertyViolation(
                    f"{what} differ when the input is fed {name}: "
                    f"{getattr(other, what)!r} != {getattr(trace, what)!r}"
                )
    return trace


# -- building inputs (seed corpus, regression cases) --------------------------------


def encode_config(
    roles: Sequence[Role] = (Role.RESPONDER,),
    *,
    mpxs_conns: bool = True,
    max_reqs: int = 4,
    max_params_size: int = 128 * 1024,
) -> bytes:
    flags = sum(1 << (role - 1) for role in roles) | (0 if mpxs_conns else 8)
    return bytes((flags, max_reqs - 1, _PARAMS_LIMITS.index(max_params_size)))


def raw(data: bytes) -> bytes:
    """A wire step of raw bytes (split into pieces of at most 255)."""
    return b"".join(
        bytes((0, len(data[i : i + 255]))) + data[i : i + 255] for i in range(0, len(data), 255)
    ) or bytes((0, 0))


def rec(record_type: int, request_id: int, content: bytes = b"", padding: int = 0) -> bytes:
    """A structured record step; PARAMS/GET_VALUES content is ``name=value`` pairs
    separated by ``&`` (each at most 23 bytes)."""
    head = bytes((1, record_type - 1, request_id, padding))
    if record_type == 1:
        role, flags = struct.unpack("!HB5x", content)
        return head + bytes((role, flags))
    if record_type in (4, 9):
        pairs = [pair.split(b"=", 1) for pair in content.split(b"&")] if content else []
        body = bytes((len(pairs),))
        for name, value in pairs:
            body += bytes((len(name),)) + name + bytes((len(value),)) + value
        return head + body
    return head + bytes((len(content),)) + content


def out(kind: int, index: int = 0, size: int = 1, status: int = 0) -> bytes:
    """An output step: 0 Stdout, 1 end stdout, 2 Stderr, 3 end stderr,
    4 EndRequest, 5 GetValuesResult/UnknownType, 6 EndRequest maybe inactive."""
    return bytes((3, kind, index, size, status))


def raw_out(kind: int, a: int = 0, b: int = 0, c: int = 0) -> bytes:
    """A raw output step (see :func:`raw_event`): *kind* mod 6 is 0 Stdout,
    1 Stderr, 2 EndRequest, 3 GetValuesResult, 4 UnknownType, 5 not an event;
    *kind* div 6 picks a variant of the fields (often an invalid one)."""
    return bytes((0x83, kind, a, b, c))
