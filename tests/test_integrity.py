"""No byte is lost and no send hangs, whatever the timing: the connection
layer's timeouts apply to its waits only, and a connection that has gone makes
every later send fail at once."""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import socket
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import helpers
from tests.fuzz.connection_harness import count_tasks
from tests.helpers import FakeWebServer
from trio_fastcgi import Request, serve_connection, serve_listeners


def test_a_deadline_passing_as_stdin_arrives_loses_no_byte() -> None:
    # The reproduction of the lost-bytes bug: a chunk that must wait for room
    # in a full stdin buffer arrives in the tick the idle deadline passes.
    clock = trio.testing.MockClock()
    got: list[bytes] = []

    async def slow_reader(request: Request) -> None:
        await trio.sleep(1)
        got.append(await request.stdin.receive_all())
        await request.respond(b"%d" % len(got[0]))

    async def main() -> None:
        client, server = trio.testing.memory_stream_pair()
        web = FakeWebServer(client)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                functools.partial(
                    serve_connection, slow_reader, server, idle_timeout=10, input_buffer_size=16
                )
            )
            await web.send(
                helpers.begin_record(1)
                + helpers.params_records(1, {})
                + helpers.record(helpers.STDIN, 1, b"a" * 16)
            )
            await trio.testing.wait_all_tasks_blocked()
            await web.send(helpers.record(helpers.STDIN, 1, b"b" * 16))
            clock.jump(11)
            await trio.testing.wait_all_tasks_blocked()
            await web.send(helpers.record(helpers.STDIN, 1))
            clock.jump(1)
            response = await web.read_response(1)
            assert response.body == b"32"
            nursery.cancel_scope.cancel()

    trio.run(main, clock=clock)
    assert got == [b"a" * 16 + b"b" * 16]


async def test_sends_after_the_peer_reset_fail_at_once_even_when_shielded() -> None:
    # 100 sends from a shielded scope after the web server reset the
    # connection: each raises BrokenResourceError within 1 s, and the
    # connection leaves no task behind.
    outcomes: list[str] = []
    started = trio.Event()

    async def handler(request: Request) -> None:
        await request.stdout.send_all(b"Status: 200 OK\r\n\r\nsome")
        started.set()
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                for _ in range(100):
                    with trio.fail_after(1):
                        try:
                            await request.stdout.send_all(b"x" * 1000)
                        except trio.BrokenResourceError:
                            outcomes.append("broken")
                        else:
                            outcomes.append("sent")

    ours, theirs = socket.socketpair()
    tasks = count_tasks()
    async with trio.open_nursery() as nursery:
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
        nursery.start_soon(serve_connection, handler, stream)
        theirs.sendall(helpers.request_bytes(1))
        await started.wait()
        # A reset: SO_LINGER 0 makes close() send RST.
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        theirs.close()
    assert outcomes == ["broken"] * 100
    assert count_tasks() == tasks


async def test_sends_after_the_connection_closed_fail_at_once(nursery: trio.Nursery) -> None:
    # A task that outlives its request's connection (kept the stream) gets
    # ClosedResourceError for its request's own streams; a request still
    # running when the peer left gets BrokenResourceError, never a hang.
    results: list[str] = []
    running = trio.Event()
    done = trio.Event()

    async def handler(request: Request) -> None:
        running.set()
        with trio.CancelScope(shield=True):
            await done.wait()
            for _ in range(50):  # more than the outbox holds
                try:
                    await request.stdout.send_all(b"late")
                except trio.BrokenResourceError:
                    results.append("broken")

    client, server = trio.testing.memory_stream_pair()
    web = FakeWebServer(client)
    nursery.start_soon(serve_connection, handler, server)
    await web.request(1)
    await running.wait()
    await client.aclose()
    await trio.testing.wait_all_tasks_blocked()
    done.set()
    with trio.fail_after(1):
        while len(results) < 50:  # noqa: ASYNC110
            await trio.sleep(0.01)
    assert results == ["broken"] * 50


# -- a body trickled across every deadline ------------------------------------------------

IDLE, READ, HIBERNATE, GRACE, FIRST_REQUEST_WAIT = 10.0, 5.0, 2.0, 20.0, 2.0
#: Delays around every deadline, and small ones.
#: Times are sums of float delays: compare them with this much slack.
EPSILON = 1e-9
DELAYS = st.sampled_from(
    [0.0, 0.0, 0.0, 0.001, 0.5, 1.0]
    + [d + e for d in (HIBERNATE, READ, IDLE, FIRST_REQUEST_WAIT + 0.5) for e in (-0.01, 0, 0.01)]
)


@dataclass
class Upload:
    body: bytes
    announce_length: bool
    record_sizes: list[int]
    cuts: list[int]  # where the request's bytes are split into sends
    delays: list[float]  # before each send
    gap_before: float  # before the request's first byte (idle time)

    def wire(self) -> tuple[bytes, list[tuple[int, int]], tuple[int, int]]:
        """The request's bytes, the span of each record, and the span of the
        params stream (from the last byte of BEGIN_REQUEST, when the request
        began, to the end of PARAMS)."""
        params = {"CONTENT_LENGTH": str(len(self.body))} if self.announce_length else {}
        spans: list[tuple[int, int]] = []
        out = b""

        def add(data: bytes) -> None:
            nonlocal out
            spans.append((len(out), len(out) + len(data)))
            out += data

        add(helpers.begin_record(1))
        params_start = len(out) - 1
        add(helpers.params_records(1, params))
        params_span = (params_start, len(out))
        body, sizes = self.body, list(self.record_sizes)
        while body:
            size = sizes.pop() if sizes else len(body)
            add(helpers.record(helpers.STDIN, 1, body[:size]))
            body = body[size:]
        add(helpers.record(helpers.STDIN, 1))
        return out, spans, params_span


@st.composite
def uploads(draw: st.DrawFn) -> Upload:
    body = draw(st.binary(max_size=300))
    upload = Upload(
        body=body,
        announce_length=draw(st.booleans()),
        record_sizes=draw(st.lists(st.integers(1, 120), max_size=8)),
        cuts=[],
        delays=[],
        gap_before=draw(DELAYS),
    )
    length = len(upload.wire()[0])
    upload.cuts = sorted(set(draw(st.lists(st.integers(1, length - 1), max_size=6))))
    upload.delays = draw(st.lists(DELAYS, min_size=len(upload.cuts), max_size=len(upload.cuts)))
    return upload


@dataclass
class Outcome:
    answered: bool
    sent_at: list[float]  # when each send of the request went
    ended_at: float  # END_REQUEST or the connection's end


def read_timeout_really_passed(upload: Upload, sent_at: Sequence[float]) -> bool:
    """Whether some record, or the params stream, took READ seconds or more
    from its first byte to its last (or never got its last), as the web
    server sent them."""
    _, spans, params_span = upload.wire()
    starts = [0, *upload.cuts]

    def sent(offset: int) -> float:
        """When the byte at *offset* was sent (inf if it never was)."""
        index = max(i for i, start in enumerate(starts) if start <= offset)
        return sent_at[index] if index < len(sent_at) else math.inf

    return any(
        sent(end - 1) - sent(start) >= READ - EPSILON for start, end in [*spans, params_span]
    )


def check(
    uploads_: list[Upload], outcomes: list[Outcome], shutdown_at: float | None, got: list[bytes]
) -> None:
    # Never a short body: whatever a handler read to its end is the whole body
    # (requests are sequential: the i-th body read is the i-th request's).
    assert got == [upload.body for upload in uploads_[: len(got)]]
    previous_end = 0.0
    idle_passed = False  # once, the connection was idle for idle_timeout
    for index, (upload, outcome) in enumerate(zip(uploads_, outcomes, strict=False)):
        first_byte = outcome.sent_at[0] if outcome.sent_at else math.inf
        # A request that comes just as the idle timeout passes is served, and
        # the connection closes after it.
        idle_passed = idle_passed or first_byte - previous_end >= IDLE - EPSILON
        if outcome.answered:
            previous_end = outcome.ended_at
            continue
        # No answer: only because a timeout really passed.
        reasons = [read_timeout_really_passed(upload, outcome.sent_at), idle_passed]
        if shutdown_at is not None:
            reasons += [
                index > 0 and shutdown_at <= first_byte,  # closes once idle
                index == 0 and first_byte >= shutdown_at + FIRST_REQUEST_WAIT - EPSILON,
                index == 0 and outcome.sent_at[-1] >= shutdown_at + FIRST_REQUEST_WAIT - EPSILON,
                outcome.ended_at >= shutdown_at + GRACE - EPSILON,  # the grace period ran out
            ]
        assert any(reasons), (index, upload, outcome, shutdown_at)
        return  # the connection is gone: later requests were never sent


def run_program(uploads_: list[Upload], shutdown_step: int | None, hibernation: bool) -> None:
    got: list[bytes] = []
    outcomes: list[Outcome] = []
    shutdown = trio.Event()
    shutdown_at: list[float] = []

    async def handler(request: Request) -> None:
        chunks = []
        async for chunk in request.stdin:
            chunks.append(chunk)
            await trio.sleep(0.3)  # slower than the web server: the buffer fills
        body = b"".join(chunks)
        got.append(body)
        await request.respond(hashlib.sha256(body).hexdigest())

    async def web_server(path: str) -> None:
        stream = await trio.open_unix_socket(path)
        web = FakeWebServer(stream)
        step = 0
        for upload in uploads_:
            data, _, _ = upload.wire()
            starts = [0, *upload.cuts]
            ends = [*upload.cuts, len(data)]
            outcome = Outcome(answered=False, sent_at=[], ended_at=math.inf)
            outcomes.append(outcome)
            try:
                for index, (start, end) in enumerate(zip(starts, ends, strict=True)):
                    await trio.sleep(upload.gap_before if index == 0 else upload.delays[index - 1])
                    if step == shutdown_step:
                        shutdown_at.append(trio.current_time())
                        shutdown.set()
                    step += 1
                    outcome.sent_at.append(trio.current_time())
                    await web.send(data[start:end])
                response = await web.read_response(1)
            except (trio.BrokenResourceError, AssertionError) as exc:
                if isinstance(exc, AssertionError) and "EOF before" not in str(exc):
                    raise
                outcome.ended_at = trio.current_time()
                break
            outcome.ended_at = trio.current_time()
            assert response.body == hashlib.sha256(upload.body).hexdigest().encode()
            outcome.answered = True
        if shutdown_step is not None and not shutdown.is_set():
            shutdown_at.append(trio.current_time())
            shutdown.set()
        await stream.aclose()

    async def main() -> None:
        # Virtual time: a program that deadlocks fails here, it does not hang.
        with trio.fail_after(3600), tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "s")
            # Bound with the stdlib: trio binds unix paths in a thread, and the
            # autojumping clock does not wait for threads.
            listening = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listening.bind(path)
            listening.listen()
            sock = trio.socket.from_stdlib_socket(listening)
            serve = functools.partial(
                serve_listeners,
                handler,
                [trio.SocketListener(sock)],
                idle_timeout=IDLE,
                read_timeout=READ,
                grace_period=GRACE,
                input_buffer_size=16,
                hibernate_after=HIBERNATE if hibernation else None,
                shutdown_event=shutdown if shutdown_step is not None else None,
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(serve)
                await web_server(path)
                if shutdown_step is None:
                    nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    check(uploads_, outcomes, shutdown_at[0] if shutdown_at else None, got)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    programs=st.lists(uploads(), min_size=1, max_size=3),
    shutdown_step=st.none() | st.integers(0, 12),
    hibernation=st.booleans(),
)
def test_a_body_trickled_across_every_deadline_arrives_whole_or_not_at_all(
    programs: list[Upload], shutdown_step: int | None, hibernation: bool
) -> None:
    # Records of random sizes, cut into sends at random points, sent at
    # random times around idle_timeout, read_timeout, hibernation and a
    # graceful shutdown, to a handler that reads slower than they come: each
    # request's body reaches its handler whole and is answered, or the
    # connection is closed without an answer because a timeout really passed.
    logging.getLogger("trio_fastcgi").setLevel(logging.CRITICAL)
    try:
        run_program(programs, shutdown_step, hibernation)
    finally:
        logging.getLogger("trio_fastcgi").setLevel(logging.NOTSET)
