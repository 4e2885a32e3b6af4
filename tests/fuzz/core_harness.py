"""Fuzz harness for the sans-IO core (:class:`trio_fastcgi.FastCGIConnection`).

One input (any bytes) is decoded into a *program*: a connection configuration
and a list of steps, each either wire bytes the web server sends or an output
event the application sends. The program runs three times:

1. feeding each wire step as its own ``receive_data`` call,
2. feeding all wire bytes at once,
3. feeding them one byte at a time,

with every output step executed after the same number of input events in all
three runs (the core parses lazily, so that is the same moment for it). The
properties checked are the core's documented contract:

- nothing but :class:`trio_fastcgi.RemoteProtocolError` leaves
  ``receive_data``/``next_event``, and nothing but ``LocalProtocolError`` leaves
  ``send`` for a well-typed event;
- the three runs give the same events, the same output bytes and the same error;
- events only name requests that are active, streams do not restart after their
  end, params never exceed ``max_params_size``;
- every output parses with the independent decoder in ``tests/helpers.py`` and
  only names requests that the web server began and that have not ended.

The decoder is deliberately forgiving (a short input just ends the program), so
that every byte string is a valid program and libFuzzer's mutations stay useful.
Both the atheris target ``fuzz_core.py`` and ``tests/test_fuzz_regressions.py``
use :func:`run_core_case`.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from tests.helpers import END, GET_VALUES_RESULT, STDERR, STDOUT, UNKNOWN_TYPE, parse_records
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


Step = Wire | Output


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
        op = reader.byte() % 4
        if op == 0:
            program.steps.append(Wire(reader.take(reader.byte())))
        elif op in (1, 2):
            program.steps.append(Wire(structured_record(reader)))
        else:
            program.steps.append(
                Output(reader.byte() % 7, reader.byte(), reader.byte(), reader.byte())
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


class _Model:
    """What the web server side knows, to check events and output against."""

    def __init__(self, config: CoreConfig) -> None:
        self.config = config
        self.live: set[int] = set()  # begun (accepted or refused), not ended
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
                self.live.add(request_id)
                for stream in ("stdin", "data"):
                    self.stream_done.pop((request_id, stream), None)
                self.params_seen.discard(request_id)
            case RequestRejected(request_id, _, _):
                if request_id == 0 or request_id in self.live or request_id in active:
                    raise PropertyViolation(f"{event!r} for a live id")
                self.live.add(request_id)
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
            case UnknownRecord(record_type, _):
                self.last_unknown = record_type
            case ConnectionClosed():
                self.closed = True
            case _:
                raise PropertyViolation(f"unexpected event {event!r}")

    @staticmethod
    def _need_active(active: frozenset[int], request_id: int, event: Event) -> None:
        if request_id not in active:
            raise PropertyViolation(f"{event!r} for a request that is not active")

    def check_output(self, data: bytes) -> None:
        records, rest = parse_records(data)
        if rest:
            raise PropertyViolation(f"send() returned a partial record: {rest!r}")
        for rec in records:
            if rec.type in (GET_VALUES_RESULT, UNKNOWN_TYPE):
                if rec.request_id != 0:
                    raise PropertyViolation(f"management record with id {rec.request_id}")
                continue
            if rec.type not in (STDOUT, STDERR, END):
                raise PropertyViolation(f"record type {rec.type} sent by the application")
            if rec.request_id not in self.live:
                raise PropertyViolation(f"output for request {rec.request_id}, which is not live")
            if rec.type == END:
                if len(rec.content) != 8:
                    raise PropertyViolation("END_REQUEST body is not 8 bytes")
                self.live.discard(rec.request_id)

    def output_event(self, conn: FastCGIConnection, step: Output) -> Event:
        candidates = sorted(self.live) or [1 + step.index % 3]
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


class _Runner:
    """One run of a program against a fresh connection."""

    def __init__(self, program: Program) -> None:
        self.conn = program.config.connection()
        self.model = _Model(program.config)
        self.trace = Trace()
        self.finished = False

    def send(self, step: Output) -> None:
        event = self.model.output_event(self.conn, step)
        try:
            data = self.conn.send(event)  # type: ignore[arg-type]
        except LocalProtocolError as exc:
            self.trace.outputs.append(f"LocalProtocolError: {exc}")
            return
        self.model.check_output(data)
        self.trace.outputs.append(data)

    def feed(self, data: bytes, schedule: dict[int, list[Output]] | None = None) -> None:
        """Feed *data* and pull events until NEED_DATA; with a *schedule*, run
        the outputs due after each event."""
        if self.finished:
            return
        try:
            self.conn.receive_data(data)
            while (event := self.conn.next_event()) is not NEED_DATA:
                self.model.check_event(self.conn, event)
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


def _run_stepwise(program: Program) -> tuple[Trace, dict[int, list[Output]]]:
    """Feed each wire step as it comes; note after how many events each output ran."""
    runner = _Runner(program)
    schedule: dict[int, list[Output]] = {}
    for step in program.steps:
        if isinstance(step, Output):
            # After the connection failed, an output runs after everything.
            when = _AFTER_END if runner.finished else len(runner.trace.events)
            schedule.setdefault(when, []).append(step)
            runner.send(step)
        elif step.data:
            runner.feed(step.data)
    runner.feed(b"")
    return runner.trace, schedule


def _run_split(
    program: Program, schedule: dict[int, list[Output]], chunks: Sequence[bytes]
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
