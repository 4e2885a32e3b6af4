"""Idle connections of a server give up their tasks and come back on demand.

Hibernation watches real sockets, so these tests use loopback TCP; but every
delay is Trio's clock, a :class:`~trio.testing.MockClock` that jumps to the
next deadline once every task has waited :data:`IO_CUSHION` of real time (time
for loopback bytes to arrive): ``hibernate_after``, ``idle_timeout`` and
``grace_period`` pass in no wall time, and a test states exactly when a
connection sleeps.
"""

from __future__ import annotations

import functools
import os
import socket

import pytest
import trio
import trio.testing

from tests.fuzz.connection_harness import count_tasks
from tests.helpers import FakeWebServer
from trio_fastcgi import Request, serve_tcp
from trio_fastcgi._config import Config
from trio_fastcgi._hibernation import Hibernation
from trio_fastcgi._served_connection import ServedConnection
from trio_fastcgi._transport import SocketTransport

#: Seconds on the mock clock.
HIBERNATE_AFTER = 2.0
#: Real seconds every task must have been blocked before the clock jumps:
#: bytes in flight on loopback arrive well within it.
IO_CUSHION = 0.05


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """The clock of each test that asks for it (pytest-trio runs a test on a
    clock among its arguments)."""
    return trio.testing.MockClock(autojump_threshold=IO_CUSHION)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def idle_past(seconds: float) -> None:
    """Let *seconds* pass on the clock, then every task settle."""
    await trio.sleep(seconds)
    await trio.testing.wait_all_tasks_blocked()


async def echo(request: Request) -> None:
    body = await request.stdin.receive_all()
    await request.respond(body)


async def start(nursery: trio.Nursery, **options: object) -> int:
    listeners = await nursery.start(
        functools.partial(
            serve_tcp,
            echo,
            0,
            host="127.0.0.1",
            hibernate_after=HIBERNATE_AFTER,
            **options,  # type: ignore[arg-type]
        )
    )
    return int(listeners[0].socket.getsockname()[1])


async def connect(port: int) -> FakeWebServer:
    return FakeWebServer(await trio.open_tcp_stream("127.0.0.1", port))


async def test_hibernation_idle_connection_gives_up_its_tasks_and_serves_again(
    nursery: trio.Nursery, clock: trio.testing.MockClock
) -> None:
    port = await start(nursery)
    tasks = count_tasks()
    web = await connect(port)
    await web.request(1, stdin=b"first")
    assert (await web.read_response(1)).body == b"first"
    # The connection's reader; a writer task runs only while output waits.
    assert count_tasks() == tasks + 1
    await idle_past(HIBERNATE_AFTER / 2)
    assert count_tasks() == tasks + 1  # not idle long enough yet
    await idle_past(HIBERNATE_AFTER / 2)
    assert count_tasks() == tasks  # gone: hibernating
    # The same connection serves the next request, several times over.
    for round_ in range(3):
        body = f"round {round_}".encode()
        await web.request(1, stdin=body)
        assert (await web.read_response(1)).body == body
        assert count_tasks() == tasks + 1  # woken
        await idle_past(HIBERNATE_AFTER)
        assert count_tasks() == tasks
    await web.stream.aclose()


async def test_hibernation_peer_closing_frees_the_connection_and_its_slot(
    nursery: trio.Nursery, clock: trio.testing.MockClock
) -> None:
    port = await start(nursery, max_conns=1)
    fds, tasks = open_fds(), count_tasks()
    first = await connect(port)
    await first.request(1, stdin=b"one")
    await first.read_response(1)
    await idle_past(HIBERNATE_AFTER)
    assert count_tasks() == tasks
    # The web server ends its side; the server closes the connection (our EOF).
    await first.stream.send_eof()  # type: ignore[attr-defined]
    await first.read_eof()
    await first.stream.aclose()
    assert open_fds() == fds
    # max_conns=1: the next connection is served only if the slot came back
    # (else the clock jumps to fail_after's deadline).
    with trio.fail_after(HIBERNATE_AFTER):
        second = await connect(port)
        await second.request(1, stdin=b"two")
        assert (await second.read_response(1)).body == b"two"
    await second.stream.aclose()


async def test_hibernation_idle_timeout_still_closes(
    nursery: trio.Nursery, clock: trio.testing.MockClock
) -> None:
    idle_timeout = 10 * HIBERNATE_AFTER
    port = await start(nursery, idle_timeout=idle_timeout)
    tasks = count_tasks()
    web = await connect(port)
    sent = trio.current_time()
    await web.request(1)
    await web.read_response(1)
    answered = trio.current_time()
    await idle_past(HIBERNATE_AFTER)
    assert count_tasks() == tasks  # hibernating
    await web.read_eof()
    # Closed idle_timeout after it went idle, which is between the two.
    assert trio.current_time() - sent >= idle_timeout
    assert trio.current_time() - answered <= idle_timeout
    await web.stream.aclose()


async def test_hibernation_graceful_shutdown_closes_hibernating_connections(
    clock: trio.testing.MockClock,
) -> None:
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        port = await start(nursery, shutdown_event=shutdown, grace_period=30)
        tasks = count_tasks()
        web = await connect(port)
        await web.request(1)
        await web.read_response(1)
        await idle_past(HIBERNATE_AFTER)
        assert count_tasks() == tasks
        started = trio.current_time()
        shutdown.set()
        await web.read_eof()
        await web.stream.aclose()
    assert trio.current_time() - started < 30  # no waiting for the grace period


async def test_hibernation_cancelled_server_closes_hibernating_connections(
    clock: trio.testing.MockClock,
) -> None:
    fds = open_fds()
    async with trio.open_nursery() as nursery:
        port = await start(nursery)
        tasks = count_tasks()
        web = await connect(port)
        await web.request(1)
        await web.read_response(1)
        await idle_past(HIBERNATE_AFTER)
        assert count_tasks() == tasks
        nursery.cancel_scope.cancel()
    await web.read_eof()
    await web.stream.aclose()
    assert open_fds() == fds


async def test_hibernation_a_stopped_watcher_takes_no_connection() -> None:
    # A connection that decides to hibernate just as its server is cancelled
    # is told so (and stays open for its server to decide), not handed to a
    # watcher that is gone.
    stopped: list[ServedConnection] = []
    hibernation = Hibernation(wake=lambda c: None, stopped=stopped.append)
    with trio.CancelScope() as scope:
        scope.cancel()
        await hibernation.watch()
    ours, theirs = socket.socketpair()
    connection = ServedConnection(
        echo, SocketTransport(ours), Config(), spawn=None, hibernates=True
    )
    assert not hibernation.add(connection)
    assert stopped == []
    assert ours.fileno() != -1
    ours.close()
    theirs.close()


async def test_hibernation_option_none_never_hibernates(
    nursery: trio.Nursery, clock: trio.testing.MockClock
) -> None:
    listeners = await nursery.start(
        functools.partial(serve_tcp, echo, 0, host="127.0.0.1", hibernate_after=None)
    )
    tasks = count_tasks()
    web = await connect(int(listeners[0].socket.getsockname()[1]))
    await web.request(1, stdin=b"x")
    await web.read_response(1)
    await idle_past(100 * HIBERNATE_AFTER)  # well within the idle timeout
    assert count_tasks() == tasks + 1  # the reader is still there
    await web.stream.aclose()


async def test_hibernation_handler_nursery_connections_outlive_a_cancelled_server(
    clock: trio.testing.MockClock,
) -> None:
    # With handler_nursery, cancelling serve_tcp stops accepting only: the
    # connections it accepted go on serving in the caller's nursery, the
    # hibernating one woken and the awake one no longer hibernating.
    async with trio.open_nursery() as handlers:
        with trio.CancelScope() as server_scope:
            async with trio.open_nursery() as server_nursery:
                port = await start(server_nursery, handler_nursery=handlers)
                tasks = count_tasks()
                asleep = await connect(port)
                await asleep.request(1, stdin=b"a")
                await asleep.read_response(1)
                await idle_past(HIBERNATE_AFTER)
                assert count_tasks() == tasks  # hibernating
                awake = await connect(port)
                await awake.request(1, stdin=b"b")
                await awake.read_response(1)
                server_scope.cancel()
        # Both served again, long after hibernate_after, on the same connections.
        for _ in range(2):
            await idle_past(HIBERNATE_AFTER * 4)
            for web, body in ((asleep, b"again a"), (awake, b"again b")):
                await web.request(1, stdin=body)
                assert (await web.read_response(1)).body == body
        with trio.fail_after(5):
            for web in (asleep, awake):
                await web.stream.send_eof()  # type: ignore[attr-defined]
                await web.read_eof()
                await web.stream.aclose()
    # The handler nursery exited by itself: the connections closed when their
    # web server closed them.
