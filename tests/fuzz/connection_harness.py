"""Harness for the whole Trio connection layer (``serve_connection``).

A *connection program* is what a web server does on one connection: send
bytes, wait, close. :func:`run_connection_program` plays it against
``serve_connection`` over an in-memory stream pair inside one ``trio.run`` with
an autojumping :class:`trio.testing.MockClock` (timeouts and sleeps take no wall
time), with a handler whose behaviour each request picks through its params:

``MODE=echo`` (default)  read the whole body, write a head and the body back in
                         ``S``-byte pieces
``MODE=stream``          write ``N`` chunks of ``S`` bytes, ``D`` tenths of a
                         second apart, without reading stdin; a line to
                         stderr after every other chunk
``MODE=sleep``           sleep ``D`` tenths of a second, then respond
``MODE=raise``           write ``W`` bytes, then raise ``RuntimeError``
``MODE=noread``          respond at once without reading stdin

The handler runs in the connection's request tasks, or (``Options.own_tasks``,
flag bit 32 of a fuzz input) in system tasks of its own, started through its
``spawn_request`` as the ASGI adapter's requests are: the connection then stops
them through their requests and does not wait for them.

Every run checks, whatever bytes were sent:

- no exception escapes ``serve_connection``, and it returns (within a virtual
  hour) once the peer has closed;
- every handler started has returned, and no task of the connection is left;
- nothing is logged at ERROR or above except "handler failed" for the handler's
  own exceptions (``MODE=raise``, bad input), and no traceback of any other type;
- the output parses with the independent decoder of ``tests/helpers.py``, holds
  only STDOUT, STDERR, END_REQUEST and management records, never more
  END_REQUESTs for an id than the peer sent BEGIN_REQUESTs for it, and never
  output for an id the peer did not begin;
- per request id, STDOUT and STDERR received are each a prefix of what its
  handlers wrote there (STDOUT plus the library's 500 page when a handler
  failed before writing), and all of it once every handler finished while the
  connection was still open.

The hypothesis test ``tests/test_hardening_stateful.py`` generates structured
programs and adds stronger checks; ``fuzz_connection.py`` feeds atheris input
through :func:`decode_program`; ``tests/test_fuzz_regressions.py`` replays the
corpus.
"""

from __future__ import annotations

import contextlib
import logging
import struct
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import trio
import trio.testing

from tests.fuzz.core_harness import Reader, structured_record
from tests.helpers import (
    BEGIN,
    END,
    GET_VALUES_RESULT,
    STDERR,
    STDOUT,
    UNKNOWN_TYPE,
    Record,
    nv_pairs,
    record,
)
from trio_fastcgi import InputError, Request, Role, serve_connection
from trio_fastcgi._served_connection import _ERROR_RESPONSE

#: Virtual seconds the peer waits after its last step before it closes, so that
#: every handler that can finish has finished (handlers sleep at most ~100 s).
SETTLE_TIME = 1000.0
#: serve_connection must return within this (virtual) time after the program.
RETURN_LIMIT = 3600.0

_MODES = (b"echo", b"stream", b"sleep", b"raise", b"noread")


@dataclass(frozen=True)
class Options:
    max_reqs: int = 100
    mpxs_conns: bool = True
    input_buffer_size: int = 256 * 1024
    max_params_size: int = 128 * 1024
    read_timeout: float | None = 60.0
    idle_timeout: float | None = None
    roles: frozenset[Role] = frozenset({Role.RESPONDER})
    lockstep: bool = False
    #: The handler runs its requests in tasks of its own, outside the
    #: connection (``spawn_request``, as the ASGI adapter does).
    own_tasks: bool = False


@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Close:
    """Close the connection abruptly (no END_REQUEST awaited)."""


Step = Send | Sleep | Close


@dataclass
class Program:
    options: Options = field(default_factory=Options)
    steps: list[Step] = field(default_factory=list)


@dataclass
class Response:
    stdout: bytes = b""
    stderr: bytes = b""
    ends: list[tuple[int, int]] = field(default_factory=list)  # (app, protocol status)


@dataclass
class Outcome:
    """What happened; the generic properties have been checked already."""

    responses: dict[int, Response]
    management: list[Record]
    handlers_started: Counter[int]
    handler_writes: dict[int, bytes]
    handler_errors: dict[int, bytes]
    server_closed_first: bool
    #: Ids whose handlers had all returned when the peer closed (empty if the
    #: server closed first): their output must have arrived whole.
    done_before_close: frozenset[int]
    log: list[logging.LogRecord]


class PropertyViolation(AssertionError):
    """The connection layer broke a property checked here."""


# -- the handler ----------------------------------------------------------------


def _int_param(request: Request, name: str, default: int, limit: int) -> int:
    value = request.params.get(name, "")
    return min(int(value), limit) if value.isdigit() else default


def payload(request_id: int, index: int, size: int) -> bytes:
    """Recognisable bytes: a mix-up between requests or chunks shows in a diff."""
    unit = f"<{request_id}:{index}>".encode()
    return (unit * (size // len(unit) + 1))[:size]


class EchoHandler:
    """The handler every connection program runs; records what it wrote."""

    def __init__(self, *, own_tasks: bool = False) -> None:
        #: Passed to the connection: None, or where it starts each request.
        self.spawn_request = self._spawn if own_tasks else None
        self.started: Counter[int] = Counter()
        self.running = 0
        self.running_ids: Counter[int] = Counter()
        self.writes: dict[int, bytearray] = {}
        self.errors: dict[int, bytearray] = {}  # what went to stderr

    async def _write(self, request: Request, data: bytes) -> None:
        await request.stdout.send_all(data)
        # send_all returned: the chunk is queued and will go out in order.
        self.writes.setdefault(request.request_id, bytearray()).extend(data)

    async def _log(self, request: Request, data: bytes) -> None:
        await request.stderr.send_all(data)
        self.errors.setdefault(request.request_id, bytearray()).extend(data)

    async def __call__(self, request: Request) -> int:
        rid = request.request_id
        self.started[rid] += 1
        self.running += 1
        self.running_ids[rid] += 1
        self.writes.setdefault(rid, bytearray())
        try:
            return await self._serve(request)
        except (Exception, trio.Cancelled) as exc:
            if (
                isinstance(exc, Exception)
                and not request.stdout.closed
                and not request.stdout._sent_data
                and not request.cancel_scope.cancel_called
            ):
                # The library answers a handler that failed silently with a 500
                # (unless the request was aborted: nobody waits for it then).
                self.writes[rid].extend(_ERROR_RESPONSE)
            raise
        finally:
            self.running -= 1
            self.running_ids[rid] -= 1

    def _spawn(self, run: Callable[[Request], Awaitable[None]], request: Request) -> None:
        trio.lowlevel.spawn_system_task(run, request, name="echo handler request")

    def finished_ids(self) -> frozenset[int]:
        """Ids all of whose handlers have returned."""
        return frozenset(rid for rid in self.started if not self.running_ids[rid])

    async def _serve(self, request: Request) -> int:
        rid = request.request_id
        mode = request.params.get("MODE", "echo")
        size = _int_param(request, "S", 100, 200_000)
        delay = _int_param(request, "D", 1, 1000) / 10
        if mode == "stream":
            await self._write(request, b"Status: 200 OK\r\n\r\n")
            for index in range(_int_param(request, "N", 3, 50)):
                await self._write(request, payload(rid, index, size))
                if index % 2:
                    await self._log(request, b"chunk %d of request %d\n" % (index, rid))
                await trio.sleep(delay)
            return 0
        if mode == "sleep":
            await trio.sleep(delay)
            await self._write(request, b"Status: 200 OK\r\n\r\nslept")
            return 0
        if mode == "raise":
            written = _int_param(request, "W", 0, 10_000)
            if written:
                await self._write(request, payload(rid, 0, written))
            raise RuntimeError(f"handler of request {rid} fails on purpose")
        if mode == "noread":
            await self._write(request, b"Status: 204 No Content\r\n\r\n")
            return 0
        body = await request.stdin.receive_all(max_size=4 * 1024 * 1024)
        await self._write(request, b"Status: 200 OK\r\n\r\n")
        for start in range(0, len(body), max(size, 1)):
            await self._write(request, body[start : start + max(size, 1)])
        return 0


# -- running --------------------------------------------------------------------


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def count_tasks() -> int:
    """Tasks in this trio run, found from the root task."""

    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(child) for n in task.child_nurseries for child in n.child_tasks)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return walk(root)


def parse_stream(data: bytes) -> list[Record]:
    """Records of *data* as far as they are well framed (a peer's garbage stops it)."""
    records = []
    pos = 0
    while len(data) - pos >= 8:
        version, rtype, rid, length, padding = struct.unpack_from("!BBHHBx", data, pos)
        if version != 1 or len(data) - pos < 8 + length + padding:
            break
        records.append(Record(rtype, rid, data[pos + 8 : pos + 8 + length], padding))
        pos += 8 + length + padding
    return records


async def _play(program: Program, handler: EchoHandler) -> tuple[bytes, bool, frozenset[int]]:
    options = program.options
    client: trio.abc.HalfCloseableStream
    server: trio.abc.HalfCloseableStream
    if options.lockstep:
        client, server = trio.testing.lockstep_stream_pair()
    else:
        client, server = trio.testing.memory_stream_pair()
    received = bytearray()
    state = {"client_closed": False, "server_eof_first": False}
    done: list[frozenset[int]] = [frozenset()]

    async def serve() -> None:
        await serve_connection(
            handler,
            server,
            max_reqs=options.max_reqs,
            mpxs_conns=options.mpxs_conns,
            input_buffer_size=options.input_buffer_size,
            max_params_size=options.max_params_size,
            read_timeout=options.read_timeout,
            idle_timeout=options.idle_timeout,
            roles=options.roles,
        )

    async def read_all() -> None:
        try:
            while data := await client.receive_some(65536):
                received.extend(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        if not state["client_closed"]:
            state["server_eof_first"] = True

    async def peer() -> None:
        try:
            for step in program.steps:
                if isinstance(step, Send):
                    await client.send_all(step.data)
                elif isinstance(step, Sleep):
                    await trio.sleep(step.seconds)
                else:
                    # Abrupt: output queued but not yet written may be lost.
                    state["client_closed"] = True
                    await client.aclose()
                    return
            await trio.sleep(SETTLE_TIME)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the server closed on us
        done[0] = handler.finished_ids()
        state["client_closed"] = True
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await client.send_eof()

    tasks_before = count_tasks()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_all)
        nursery.start_soon(peer)
        with trio.move_on_after(SETTLE_TIME + RETURN_LIMIT + _total_sleep(program)) as scope:
            await serve()
        if scope.cancelled_caught:
            raise PropertyViolation("serve_connection did not return after the peer closed")
        # The server side is closed: the peer's tasks end on their own.
        with trio.move_on_after(RETURN_LIMIT) as scope:
            await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    if handler.running:
        raise PropertyViolation(f"{handler.running} handler(s) still running")
    if count_tasks() != tasks_before:
        raise PropertyViolation(f"tasks leaked: {count_tasks()} != {tasks_before}")
    return bytes(received), state["server_eof_first"], done[0]


def _total_sleep(program: Program) -> float:
    return sum(step.seconds for step in program.steps if isinstance(step, Sleep))


def run_connection_program(program: Program) -> Outcome:
    handler = EchoHandler(own_tasks=program.options.own_tasks)
    log_handler = _ListHandler()
    logger = logging.getLogger("trio_fastcgi")
    old_level = logger.level
    logger.addHandler(log_handler)
    logger.setLevel(logging.DEBUG)
    try:
        output, server_first, done = trio.run(
            _play, program, handler, clock=trio.testing.MockClock(autojump_threshold=0)
        )
    finally:
        logger.removeHandler(log_handler)
        logger.setLevel(old_level)
    outcome = Outcome(
        responses={},
        management=[],
        handlers_started=handler.started,
        handler_writes={rid: bytes(data) for rid, data in handler.writes.items()},
        handler_errors={rid: bytes(data) for rid, data in handler.errors.items()},
        server_closed_first=server_first,
        done_before_close=frozenset() if server_first else done,
        log=log_handler.records,
    )
    _check(program, output, outcome)
    return outcome


def _check(program: Program, output: bytes, outcome: Outcome) -> None:
    for entry in outcome.log:
        if entry.levelno >= logging.ERROR:
            failed = "handler failed on request" in entry.getMessage()
            exc = entry.exc_info[1] if entry.exc_info else None
            if not failed or not isinstance(exc, RuntimeError | InputError):
                raise PropertyViolation(f"unexpected log record: {entry.getMessage()} {exc!r}")
        elif entry.exc_info:
            raise PropertyViolation(f"traceback logged: {entry.getMessage()}")
    records = parse_stream(output)
    framed = sum(8 + len(r.content) + r.padding for r in records)
    if framed != len(output):
        raise PropertyViolation(f"output is not whole records: {output[framed:][:64]!r}")
    sent = b"".join(step.data for step in program.steps if isinstance(step, Send))
    begins = Counter(r.request_id for r in parse_stream(sent) if r.type == BEGIN)
    for rid, count in outcome.handlers_started.items():
        if count > begins[rid]:
            raise PropertyViolation(f"{count} handlers for request {rid}, {begins[rid]} BEGINs")
    for rec in records:
        if rec.type in (GET_VALUES_RESULT, UNKNOWN_TYPE):
            if rec.request_id != 0:
                raise PropertyViolation(f"management record with request id {rec.request_id}")
            outcome.management.append(rec)
            continue
        if rec.type not in (STDOUT, STDERR, END):
            raise PropertyViolation(f"the application sent record type {rec.type}")
        if not begins[rec.request_id]:
            raise PropertyViolation(f"output for request {rec.request_id}, never begun")
        response = outcome.responses.setdefault(rec.request_id, Response())
        if rec.type == STDOUT:
            response.stdout += rec.content
        elif rec.type == STDERR:
            response.stderr += rec.content
        else:
            app_status, protocol_status = struct.unpack("!IB3x", rec.content)
            response.ends.append((app_status, protocol_status))
            if len(response.ends) > begins[rec.request_id]:
                raise PropertyViolation(f"more END_REQUESTs than BEGINs for {rec.request_id}")
    for rid, written in outcome.handler_writes.items():
        got = outcome.responses.get(rid, Response()).stdout
        if not written.startswith(got):
            raise PropertyViolation(
                f"stdout of request {rid} is not what its handler wrote: "
                f"{got[:200]!r} vs {written[:200]!r}"
            )
        if rid in outcome.done_before_close and got != written:
            raise PropertyViolation(
                f"stdout of request {rid} lost data: {len(got)} of {len(written)} bytes"
            )
    for rid, response in outcome.responses.items():
        logged = outcome.handler_errors.get(rid, b"")
        if not logged.startswith(response.stderr) or (
            rid in outcome.done_before_close and response.stderr != logged
        ):
            raise PropertyViolation(
                f"stderr of request {rid} is not what its handler wrote: "
                f"{response.stderr[:200]!r} vs {logged[:200]!r}"
            )
        if response.stdout and rid not in outcome.handler_writes:
            raise PropertyViolation(f"stdout for request {rid} that no handler wrote")


# -- fuzz input -> program ------------------------------------------------------------


def decode_program(data: bytes) -> Program:
    reader = Reader(data)
    flags = reader.byte()
    roles = frozenset(role for bit, role in zip((1, 2, 4), Role, strict=True) if flags & bit)
    timeouts = reader.byte()
    options = Options(
        max_reqs=1 + reader.byte() % 4,
        mpxs_conns=not flags & 8,
        input_buffer_size=(16, 1024, 256 * 1024)[reader.byte() % 3],
        max_params_size=(64, 1024, 128 * 1024)[reader.byte() % 3],
        read_timeout=(None, 5.0, 60.0)[timeouts % 3],
        idle_timeout=(None, 30.0, 2000.0)[timeouts // 3 % 3],
        roles=roles or frozenset({Role.RESPONDER}),
        lockstep=bool(flags & 16),
        own_tasks=bool(flags & 32),
    )
    program = Program(options)
    while not reader.exhausted:
        op = reader.byte() % 8
        if op < 2:
            program.steps.append(Send(reader.take(reader.byte())))
        elif op < 6:
            program.steps.append(Send(structured_record(reader)))
        elif op == 6 or not reader.byte() & 1:
            program.steps.append(Sleep(reader.byte() / 10))
        else:
            program.steps.append(Close())
            break
    return program


def encode_options(options: Options) -> bytes:
    flags = sum(1 << (role - 1) for role in options.roles)
    flags |= (0 if options.mpxs_conns else 8) | (16 if options.lockstep else 0)
    flags |= 32 if options.own_tasks else 0
    timeouts = (None, 5.0, 60.0).index(options.read_timeout) + 3 * (None, 30.0, 2000.0).index(
        options.idle_timeout
    )
    return bytes(
        (
            flags,
            timeouts,
            options.max_reqs - 1,
            (16, 1024, 256 * 1024).index(options.input_buffer_size),
            (64, 1024, 128 * 1024).index(options.max_params_size),
        )
    )


def send_raw(data: bytes) -> bytes:
    return b"".join(
        bytes((0, len(data[i : i + 255]))) + data[i : i + 255] for i in range(0, len(data), 255)
    )


def sleep_step(tenths: int) -> bytes:
    return bytes((6, tenths))


def close_step() -> bytes:
    return bytes((7, 1))


def request_records(
    rid: int, params: Sequence[tuple[bytes, bytes]], stdin: bytes = b"", keep: bool = True
) -> bytes:
    out = record(BEGIN, rid, struct.pack("!HB5x", 1, int(keep)))
    out += record(4, rid, nv_pairs(params)) + record(4, rid)
    if stdin:
        out += record(5, rid, stdin)
    return out + record(5, rid)


def seeds() -> dict[str, bytes]:
    default = encode_options(Options(read_timeout=60.0, idle_timeout=None))
    tight = encode_options(
        Options(
            max_reqs=2,
            input_buffer_size=16,
            max_params_size=1024,
            read_timeout=5.0,
            idle_timeout=30.0,
            lockstep=True,
        )
    )
    own_tasks = encode_options(Options(read_timeout=60.0, idle_timeout=None, own_tasks=True))
    modes = b""
    for rid, mode in enumerate(_MODES, start=1):
        params = [(b"MODE", mode), (b"N", b"3"), (b"S", b"7"), (b"D", b"5"), (b"W", b"3")]
        modes += send_raw(request_records(rid, params, b"body-%d" % rid))
    abort = (
        send_raw(request_records(1, [(b"MODE", b"stream"), (b"D", b"20")]))
        + sleep_step(15)
        + send_raw(record(2, 1))
        + send_raw(record(1, 2, struct.pack("!HB5x", 1, 1)))
        + send_raw(record(2, 2))
    )
    close = send_raw(request_records(1, [(b"MODE", b"stream"), (b"D", b"20")])) + close_step()
    get_values = send_raw(
        record(9, 0, nv_pairs([(b"FCGI_MAX_REQS", b""), (b"FCGI_MPXS_CONNS", b"")]))
        + record(12, 0, bytes(8))
    )
    partial = send_raw(request_records(1, [(b"MODE", b"echo")])[:30]) + sleep_step(100)
    no_keep = send_raw(request_records(1, [], b"x", keep=False) + request_records(2, [], b"y"))
    return {
        "modes": default + modes,
        "modes-tight": tight + modes,
        "abort": default + abort,
        "close": default + close,
        "get-values": default + get_values,
        "partial-record": tight + partial,
        "no-keep-conn": default + no_keep,
        "modes-own-tasks": own_tasks + modes,
        "abort-own-tasks": own_tasks + abort,
        "close-own-tasks": own_tasks + close,
    }
