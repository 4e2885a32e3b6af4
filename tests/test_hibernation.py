"""Idle connections of a server give up their tasks and come back on demand."""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Callable

import trio

from tests.fuzz.connection_harness import count_tasks
from tests.helpers import FakeWebServer
from trio_fastcgi import Request, serve_tcp
from trio_fastcgi._config import Config
from trio_fastcgi._hibernation import Hibernation
from trio_fastcgi._serve_connection import ServedConnection
from trio_fastcgi._transport import SocketTransport

#: Short enough for tests to wait out, long next to a loopback round trip.
HIBERNATE_AFTER = 0.05


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll *condition* for up to 10 s: hibernation happens on a timer, with no
    event to wait for from outside."""
    with trio.fail_after(10):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.01)


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
    nursery: trio.Nursery,
) -> None:
    port = await start(nursery)
    tasks = count_tasks()
    web = await connect(port)
    await web.request(1, stdin=b"first")
    assert (await web.read_response(1)).body == b"first"
    # The connection's reader; a writer task runs only while output waits.
    assert count_tasks() == tasks + 1
    await wait_until(lambda: count_tasks() == tasks)  # gone: hibernating
    # The same connection serves the next request, several times over.
    for round_ in range(3):
        body = f"round {round_}".encode()
        await web.request(1, stdin=body)
        assert (await web.read_response(1)).body == body
        await wait_until(lambda: count_tasks() == tasks)
    await web.stream.aclose()


async def test_hibernation_peer_closing_frees_the_connection_and_its_slot(
    nursery: trio.Nursery,
) -> None:
    port = await start(nursery, max_conns=1)
    fds, tasks = open_fds(), count_tasks()
    first = await connect(port)
    await first.request(1, stdin=b"one")
    await first.read_response(1)
    await wait_until(lambda: count_tasks() == tasks)
    await first.stream.aclose()
    await wait_until(lambda: open_fds() == fds)
    # max_conns=1: the next connection is served only if the slot came back.
    second = await connect(port)
    await second.request(1, stdin=b"two")
    assert (await second.read_response(1)).body == b"two"
    await second.stream.aclose()


async def test_hibernation_idle_timeout_still_closes(nursery: trio.Nursery) -> None:
    port = await start(nursery, idle_timeout=0.5)
    web = await connect(port)
    await web.request(1)
    await web.read_response(1)
    ended = trio.current_time()
    await web.read_eof()
    assert 0.45 < trio.current_time() - ended < 5
    await web.stream.aclose()


async def test_hibernation_graceful_shutdown_closes_hibernating_connections() -> None:
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        port = await start(nursery, shutdown_event=shutdown, grace_period=30)
        tasks = count_tasks()
        web = await connect(port)
        await web.request(1)
        await web.read_response(1)
        await wait_until(lambda: count_tasks() == tasks)
        started = trio.current_time()
        shutdown.set()
        await web.read_eof()
        await web.stream.aclose()
    assert trio.current_time() - started < 5  # no waiting for the grace period


async def test_hibernation_cancelled_server_closes_hibernating_connections() -> None:
    fds = open_fds()
    async with trio.open_nursery() as nursery:
        port = await start(nursery)
        tasks = count_tasks()
        web = await connect(port)
        await web.request(1)
        await web.read_response(1)
        await wait_until(lambda: count_tasks() == tasks)
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
    connection = ServedConnection(echo, SocketTransport(ours), Config(), hibernates=True)
    assert not hibernation.add(connection)
    assert stopped == []
    assert ours.fileno() != -1
    ours.close()
    theirs.close()


async def test_hibernation_option_none_never_hibernates(nursery: trio.Nursery) -> None:
    listeners = await nursery.start(
        functools.partial(serve_tcp, echo, 0, host="127.0.0.1", hibernate_after=None)
    )
    tasks = count_tasks()
    web = await connect(int(listeners[0].socket.getsockname()[1]))
    await web.request(1, stdin=b"x")
    await web.read_response(1)
    await trio.sleep(HIBERNATE_AFTER * 6)
    assert count_tasks() == tasks + 1  # the reader is still there
    await web.stream.aclose()


async def test_hibernation_handler_nursery_connections_outlive_a_cancelled_server() -> None:
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
                await wait_until(lambda: count_tasks() == tasks)  # hibernating
                awake = await connect(port)
                await awake.request(1, stdin=b"b")
                await awake.read_response(1)
                server_scope.cancel()
        # Both served again, long after hibernate_after, on the same connections.
        for _ in range(2):
            await trio.sleep(HIBERNATE_AFTER * 4)
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
