"""Faults: peers that vanish at every point of a request, abort storms, and
handlers that misbehave around cancellation, closing and shutdown.

Each test states the defined behaviour it checks; docs/reliability.md collects
them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import socket
import struct
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from tests import helpers
from tests.fuzz.connection_harness import count_tasks
from tests.helpers import FakeWebServer
from trio_fastcgi import ProtocolStatus, Request, serve_connection, serve_tcp

# -- helpers ------------------------------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Log lines that carry a traceback, and any at ERROR or above."""
    return [
        f"{r.levelname} {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.ERROR or r.exc_info
    ]


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll *condition* for up to 10 s: the server closes a connection's socket
    when its tasks have unwound, with no event to wait for from outside."""
    with trio.fail_after(10):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.01)


class Handlers:
    """Handlers for the fault tests, with a record of how each request ended."""

    def __init__(self) -> None:
        self.started: dict[int, trio.Event] = {}
        self.outcomes: dict[int, str] = {}
        self.running = 0

    def started_event(self, key: int) -> trio.Event:
        return self.started.setdefault(key, trio.Event())

    async def __call__(self, request: Request) -> None:
        key = int(request.params.get("KEY", "0"))
        self.running += 1
        try:
            await self._serve(request, key)
            self.outcomes[key] = "finished"
        except trio.Cancelled:
            self.outcomes[key] = "cancelled"
            raise
        finally:
            self.running -= 1

    async def _serve(self, request: Request, key: int) -> None:
        mode = request.params.get("MODE", "echo")
        if mode == "stream":  # endless output, a chunk of S bytes every 10 ms
            self.started_event(key).set()
            chunk = b"x" * int(request.params.get("S", "65536"))
            while True:
                await request.stdout.send_all(chunk)
                await trio.sleep(0.01)
        if mode == "hold":  # everything written, then wait before returning
            await request.stdout.send_all(b"Status: 200 OK\r\n\r\nheld")
            await request.stdout.aclose()
            self.started_event(key).set()
            await trio.sleep_forever()
        self.started_event(key).set()
        body = await request.stdin.receive_all()
        await request.respond(body)


def begin_and_params(rid: int, **params: str) -> bytes:
    return helpers.begin_record(rid) + helpers.params_records(rid, params)


# -- peer disconnects at every point of a request --------------------------------------


async def _stage_params(web: FakeWebServer, handlers: Handlers, key: int) -> None:
    await web.send(helpers.begin_record(1) + helpers.record(helpers.PARAMS, 1, b"\x03\x01KEY"))


async def _stage_stdin(web: FakeWebServer, handlers: Handlers, key: int) -> None:
    await web.send(begin_and_params(1, KEY=str(key)) + helpers.record(helpers.STDIN, 1, b"part"))
    await handlers.started_event(key).wait()


async def _stage_mid_stdout(web: FakeWebServer, handlers: Handlers, key: int) -> None:
    await web.send(begin_and_params(1, KEY=str(key), MODE="stream") + helpers.record(5, 1))
    await handlers.started_event(key).wait()
    data = await web.stream.receive_some(1000)
    assert data  # part of the first record: we close in the middle of it


async def _stage_before_end(web: FakeWebServer, handlers: Handlers, key: int) -> None:
    await web.send(begin_and_params(1, KEY=str(key), MODE="hold") + helpers.record(5, 1))
    await handlers.started_event(key).wait()


async def _stage_mid_record(web: FakeWebServer, handlers: Handlers, key: int) -> None:
    await web.send(helpers.begin_record(1)[:5])


STAGES: dict[str, Callable[[FakeWebServer, Handlers, int], Awaitable[None]]] = {
    "mid-record": _stage_mid_record,
    "during-params": _stage_params,
    "during-stdin": _stage_stdin,
    "mid-stdout": _stage_mid_stdout,
    "before-end-request": _stage_before_end,
}


async def _connect(port: int) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", port)


@pytest.mark.parametrize("reset", [False, True], ids=["close", "reset"])
@pytest.mark.parametrize("stage", list(STAGES))
async def test_faults_peer_disconnect_at_every_point(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, stage: str, reset: bool
) -> None:
    handlers = Handlers()
    listeners = await nursery.start(
        functools.partial(serve_tcp, handlers, 0, host="127.0.0.1", read_timeout=None)
    )
    port = listeners[0].socket.getsockname()[1]

    # A bystander connection with a request in flight the whole time.
    bystander = FakeWebServer(await _connect(port))
    await bystander.send(begin_and_params(1, KEY="1000") + helpers.record(5, 1, b"before-"))
    await handlers.started_event(1000).wait()
    await trio.testing.wait_all_tasks_blocked()
    fds, tasks = open_fds(), count_tasks()

    for key in range(3):  # repeated, so a leak per disconnect would add up
        stream = await _connect(port)
        web = FakeWebServer(stream)
        await STAGES[stage](web, handlers, key)
        if reset:  # RST instead of FIN
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await stream.aclose()

    await wait_until(lambda: open_fds() == fds and count_tasks() == tasks)
    assert handlers.running == 1  # only the bystander's
    if stage in ("mid-stdout", "before-end-request", "during-stdin"):
        assert handlers.outcomes == {0: "cancelled", 1: "cancelled", 2: "cancelled"}
    else:
        assert handlers.outcomes == {}  # never reached the handler
    await bystander.send(helpers.record(5, 1, b"after") + helpers.record(5, 1))
    response = await bystander.read_response(1)
    assert response.body == b"before-after"
    assert tracebacks(caplog) == []
    await bystander.stream.aclose()


async def test_faults_peer_disconnect_with_many_multiplexed_requests(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    # 50 requests in every state on one connection, then the peer vanishes:
    # every handler is cancelled, quietly.
    handlers = Handlers()
    listeners = await nursery.start(
        functools.partial(serve_tcp, handlers, 0, host="127.0.0.1", read_timeout=None)
    )
    port = listeners[0].socket.getsockname()[1]
    fds, tasks = open_fds(), count_tasks()
    stream = await _connect(port)
    web = FakeWebServer(stream)
    out = b""
    for rid in range(1, 51):
        mode = ("stream", "hold", "echo")[rid % 3]
        out += begin_and_params(rid, KEY=str(rid), MODE=mode)
        if mode != "echo":
            out += helpers.record(5, rid)
    out += helpers.begin_record(51)  # one still waiting for params
    await web.send(out)

    async def drain() -> None:  # read what the handlers write, as nginx would
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while await stream.receive_some(65536):
                pass

    async with trio.open_nursery() as reading:
        reading.start_soon(drain)
        for rid in range(1, 51):
            await handlers.started_event(rid).wait()
        reading.cancel_scope.cancel()
    await stream.aclose()
    await wait_until(lambda: open_fds() == fds and count_tasks() == tasks)
    assert list(handlers.outcomes.values()) == ["cancelled"] * 50
    assert tracebacks(caplog) == []


# -- FCGI_ABORT_REQUEST storm -------------------------------------------------------


async def test_faults_abort_storm(autojump_clock: trio.testing.MockClock) -> None:
    # 1,000 requests on 10 multiplexed connections, each aborted at a random
    # moment: before its params end, while its handler waits for stdin, while
    # it streams output, while it holds a finished response, or after it
    # finished (a late abort, which must be ignored). Each request gets exactly
    # one END_REQUEST, every handler still running is cancelled, nothing leaks.
    rng = random.Random(20261125)
    handlers = Handlers()
    ends: dict[tuple[int, int], list[tuple[int, int]]] = {}
    expected: dict[int, str | None] = {}  # handler outcome per key; None: no handler
    tasks = count_tasks()

    async def web_server(conn: int) -> None:
        client, server = trio.testing.memory_stream_pair()
        web = FakeWebServer(client)

        async def one_request(rid: int) -> None:
            await trio.sleep(rng.random() * 5)
            key = conn * 10_000 + rid
            when = rng.choice(["pending", "running", "running", "running", "late"])
            if when == "pending":
                expected[key] = None
                await web.send(helpers.begin_record(rid))
                await trio.sleep(rng.random())
            else:
                mode = "echo" if when == "late" else rng.choice(["stream", "echo", "hold"])
                params = {"KEY": str(key), "MODE": mode, "S": "1000"}
                await web.send(begin_and_params(rid, **params))
                if mode != "echo":
                    await web.send(helpers.record(5, rid))
                await handlers.started_event(key).wait()
                await trio.sleep(rng.random())
                if when == "late":
                    expected[key] = "finished"
                    await web.send(helpers.record(5, rid))
                    await trio.sleep(1)
                else:
                    expected[key] = "cancelled"  # none of these can finish alone
            await web.send(helpers.record(helpers.ABORT, rid))

        async def reader() -> None:
            while sum(1 for c, _ in ends if c == conn) < 100:
                if not await web._read_more():
                    break
                for rid, response in list(web.responses.items()):
                    if response.app_status is not None:
                        status = (response.app_status, response.protocol_status or 0)
                        ends.setdefault((conn, rid), []).append(status)
                        del web.responses[rid]

        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                functools.partial(serve_connection, handlers, server, read_timeout=None)
            )
            async with trio.open_nursery() as requests:
                requests.start_soon(reader)
                for rid in range(1, 101):
                    requests.start_soon(one_request, rid)
            await client.aclose()

    async with trio.open_nursery() as nursery:
        for conn in range(10):
            nursery.start_soon(web_server, conn)

    assert len(ends) == 1000
    assert all(v == [(0, ProtocolStatus.REQUEST_COMPLETE)] for v in ends.values())
    assert handlers.running == 0
    assert handlers.outcomes == {k: v for k, v in expected.items() if v is not None}
    assert list(expected.values()).count("cancelled") > 500
    assert count_tasks() == tasks


# -- handlers that misbehave --------------------------------------------------------


def serve(nursery: trio.Nursery, handler: Callable[[Request], Awaitable[None]]) -> FakeWebServer:
    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(functools.partial(serve_connection, handler, server))
    return FakeWebServer(client)


async def test_faults_handler_raises_inside_async_with_stdout(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    # ``async with request.stdout:`` closes stdout (its empty record goes out),
    # then the exception is logged; appStatus 1, and no 500 is added because
    # the response was already ended.
    async def handler(request: Request) -> None:
        async with request.stdout:
            await request.stdout.send_all(b"Status: 200 OK\r\n\r\npartial")
            raise ValueError("boom")

    web = serve(nursery, handler)
    await web.request(1)
    response = await web.read_response(1)
    assert response.stdout == b"Status: 200 OK\r\n\r\npartial"
    assert response.stdout_closed
    assert response.app_status == 1
    [failure] = [r for r in caplog.records if r.exc_info]
    assert isinstance(failure.exc_info[1], ValueError)  # type: ignore[index]


async def test_faults_aclose_when_cancelled_by_abort(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    # A handler whose ``finally: await request.stdout.aclose()`` runs after an
    # abort gets Cancelled from aclose (it is a checkpoint); the library still
    # ends stdout and sends exactly one END_REQUEST, and logs nothing.
    entered = trio.Event()
    raised: list[BaseException] = []

    async def handler(request: Request) -> None:
        try:
            await request.stdout.send_all(b"Status: 200 OK\r\n\r\n")
            entered.set()
            await trio.sleep_forever()
        finally:
            try:
                await request.stdout.aclose()
            except BaseException as exc:
                raised.append(exc)
                raise

    web = serve(nursery, handler)
    await web.request(1)
    await entered.wait()
    await web.send(helpers.record(helpers.ABORT, 1))
    response = await web.read_response(1)
    assert response.app_status == 0
    assert response.stdout_closed
    assert [r.type for r in response.records] == [helpers.STDOUT, helpers.STDOUT, helpers.END]
    assert len(raised) == 1
    assert isinstance(raised[0], trio.Cancelled)
    assert tracebacks(caplog) == []


async def test_faults_shielded_write_after_abort_is_delivered(nursery: trio.Nursery) -> None:
    # A handler may finish a write under a shield after its request was
    # aborted: the request stays active until its END_REQUEST, so the output
    # goes out, before that END_REQUEST.
    entered = trio.Event()

    async def handler(request: Request) -> None:
        try:
            entered.set()
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await request.stdout.send_all(b"Status: 499 Aborted\r\n\r\n")

    web = serve(nursery, handler)
    await web.request(1)
    await entered.wait()
    await web.send(helpers.record(helpers.ABORT, 1))
    response = await web.read_response(1)
    assert response.stdout == b"Status: 499 Aborted\r\n\r\n"
    assert [r.type for r in response.records] == [helpers.STDOUT, helpers.STDOUT, helpers.END]


async def test_faults_write_after_request_ended_raises_closed(nursery: trio.Nursery) -> None:
    # A task that outlives its request (here: started in an outer nursery)
    # gets ClosedResourceError from the request's streams; nothing reaches the
    # wire after END_REQUEST.
    outcome: list[BaseException] = []
    kept: list[Request] = []
    done = trio.Event()

    async def late_writer() -> None:
        request = kept[0]
        for stream in (request.stdout, request.stderr):
            try:
                await stream.send_all(b"late")
            except trio.ClosedResourceError as exc:
                outcome.append(exc)
        done.set()

    async def handler(request: Request) -> None:
        kept.append(request)
        await request.respond(b"on time")
        nursery.start_soon(late_writer)

    web = serve(nursery, handler)
    await web.request(1)
    response = await web.read_response(1)
    await done.wait()
    assert response.body == b"on time"
    assert len(outcome) == 2
    await web.request(2)  # the connection is fine
    assert (await web.read_response(2)).body == b"on time"
    assert all(r.request_id != 1 for r in web.all_records[len(response.records) :])


async def test_faults_handler_that_blocks_shutdown_is_cancelled_after_grace_period(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Graceful shutdown waits grace_period for a handler that never returns,
    # then cancels it and serve_tcp returns; the log says so.
    shutdown = trio.Event()
    entered = trio.Event()
    outcome: list[str] = []

    async def stubborn(request: Request) -> None:
        entered.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            outcome.append("cancelled")
            raise

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(
                serve_tcp,
                stubborn,
                0,
                host="127.0.0.1",
                shutdown_event=shutdown,
                grace_period=0.2,
            )
        )
        port = listeners[0].socket.getsockname()[1]
        stream = await _connect(port)
        web = FakeWebServer(stream)
        await web.request(1)
        await entered.wait()
        started = trio.current_time()
        shutdown.set()
    # serve_tcp returned: the nursery could exit.
    assert trio.current_time() - started >= 0.2
    assert outcome == ["cancelled"]
    assert "cancelling 1 connection(s) still busy after 0.2 s" in caplog.text
    assert tracebacks(caplog) == []
    await web.read_eof()
    # The connection was closed with nothing sent for the request: no stdout
    # (the handler wrote none), and no END_REQUEST, which would tell the web
    # server the request completed.
    assert web.eof
    assert web.all_records == []
    assert web.responses == {}
    await stream.aclose()


async def test_faults_handler_finishing_within_grace_period_is_not_cut(
    caplog: pytest.LogCaptureFixture,
) -> None:
    shutdown = trio.Event()
    entered = trio.Event()

    async def slowish(request: Request) -> None:
        entered.set()
        await trio.sleep(0.1)
        await request.respond(b"finished")

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(
                serve_tcp, slowish, 0, host="127.0.0.1", shutdown_event=shutdown, grace_period=30
            )
        )
        port = listeners[0].socket.getsockname()[1]
        stream = await _connect(port)
        web = FakeWebServer(stream)
        await web.request(1)
        await entered.wait()
        shutdown.set()
        response = await web.read_response(1)
        await stream.aclose()
    assert response.body == b"finished"
    assert tracebacks(caplog) == []


async def test_faults_serve_connection_honours_shutdown_event(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    # serve_connection takes the same options as serve_tcp. Setting
    # shutdown_event should let the request in flight finish, then close the
    # connection, as it does for connections of serve_tcp.
    shutdown = trio.Event()
    entered = trio.Event()

    async def slow(request: Request) -> None:
        entered.set()
        await trio.sleep(1)
        await request.respond(b"finished")

    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(
        functools.partial(
            serve_connection, slow, server, shutdown_event=shutdown, idle_timeout=None
        )
    )
    web = FakeWebServer(client)
    await web.request(1)
    await entered.wait()
    shutdown.set()
    assert (await web.read_response(1)).body == b"finished"
    with trio.move_on_after(60):
        await web.read_eof()
    assert web.eof, "the connection stayed open after shutdown_event was set"


async def test_faults_graceful_shutdown_closes_idle_connections_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 100 idle keep-alive connections do not hold a graceful shutdown open:
    # each is closed (the peer sees EOF) and serve_tcp returns without waiting
    # for the grace period (no "still busy" warning).
    shutdown = trio.Event()
    webs: list[FakeWebServer] = []

    async def hello(request: Request) -> None:
        await request.respond(b"hello")

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(
                serve_tcp, hello, 0, host="127.0.0.1", shutdown_event=shutdown, grace_period=30
            )
        )
        port = listeners[0].socket.getsockname()[1]
        for _ in range(100):
            web = FakeWebServer(await _connect(port))
            await web.request(1)
            await web.read_response(1)
            webs.append(web)
        shutdown.set()

        async def close_on_eof(web: FakeWebServer) -> None:  # as nginx does
            await web.read_eof()
            await web.stream.aclose()

        for web in webs:
            nursery.start_soon(close_on_eof, web)
    assert all(web.eof for web in webs)
    assert "still busy" not in caplog.text
    assert tracebacks(caplog) == []
