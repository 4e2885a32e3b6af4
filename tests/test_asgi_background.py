"""ASGI applications that go on after their response: the request ends with the
response, the application runs on (background tasks) until it returns or
shutdown cancels it."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import weakref
from typing import Any

import pytest
import trio
import trio.testing
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

import trio_fastcgi
from tests.helpers import ABORT, FakeWebServer, begin_record, params_records, record
from tests.test_asgi import GET, serve
from trio_fastcgi.asgi import ASGIHandler, mark_asyncio

Message = dict[str, Any]


def response_then(after: Any) -> Any:
    """An ASGI app that sends a whole response, then awaits ``after()``."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part ", "more_body": True})
        await send({"type": "http.response.body", "body": b"end"})
        await after()

    return app


async def test_request_ends_before_the_work_after_the_response(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    finished = trio.Event()

    async def after() -> None:
        await trio.sleep(60)
        finished.set()

    handler = ASGIHandler(response_then(after))
    web = await serve(nursery, handler)
    await web.request(1, params=GET)
    response = await web.read_response(1)
    assert (response.body, response.stdout_closed, response.app_status) == (b"part end", True, 0)
    assert not finished.is_set()
    assert handler.background_count == 1
    await finished.wait()  # the application still runs to its end
    await trio.testing.wait_all_tasks_blocked()
    assert handler.background_count == 0


async def test_connection_serves_the_next_request_while_the_first_app_runs_on(
    nursery: trio.Nursery,
) -> None:
    release = trio.Event()
    released: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        request_id = scope["extensions"]["fastcgi"]["request_id"]
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"%d" % request_id})
        await release.wait()
        released.append(request_id)

    web = await serve(nursery, ASGIHandler(app))
    with trio.fail_after(5):
        for rid in (1, 2, 3):
            await web.request(rid, params=GET)
            assert (await web.read_response(rid)).body == b"%d" % rid
    release.set()
    await trio.testing.wait_all_tasks_blocked()
    assert sorted(released) == [1, 2, 3]


async def test_receive_after_the_response_is_disconnect_at_once(nursery: trio.Nursery) -> None:
    received: list[Message] = []
    done = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        received.append(await receive())  # the (empty) body
        async with trio.open_nursery() as inner:

            async def listen() -> None:
                received.append(await receive())  # waits: the body is read

            inner.start_soon(listen)
            await trio.testing.wait_all_tasks_blocked()
            await send({"type": "http.response.start", "status": 204})
            await send({"type": "http.response.body"})
        received.append(await receive())
        done.set()

    web = await serve(nursery, ASGIHandler(app))
    await web.request(1, params=GET)
    with trio.fail_after(5):
        response = await web.read_response(1)
        await done.wait()
    assert response.head == b"Status: 204 No Content"
    assert received[1:] == [{"type": "http.disconnect"}] * 2


async def test_receive_waiting_for_the_body_wakes_when_the_response_is_complete(
    nursery: trio.Nursery,
) -> None:
    received: list[Message] = []
    done = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        async with trio.open_nursery() as inner:

            async def listen() -> None:
                received.append(await receive())  # no body sent yet

            inner.start_soon(listen)
            await trio.testing.wait_all_tasks_blocked()
            await send({"type": "http.response.start", "status": 200})
            await send({"type": "http.response.body", "body": b"early"})
        done.set()

    web = await serve(nursery, ASGIHandler(app))
    # The body is announced but never sent.
    await web.send(begin_record(1) + params_records(1, {**GET, "CONTENT_LENGTH": "10"}))
    with trio.fail_after(5):
        response = await web.read_response(1)
        await done.wait()
    assert response.body == b"early"
    assert received == [{"type": "http.disconnect"}]


async def test_send_after_the_response_raises(nursery: trio.Nursery) -> None:
    errors: list[BaseException] = []
    proceed = trio.Event()

    async def after_response() -> None:
        await proceed.wait()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await response_then(after_response)(scope, receive, send)
        for message in (
            {"type": "http.response.body", "body": b"more"},
            {"type": "http.response.start", "status": 200},
        ):
            try:
                await send(message)
            except RuntimeError as exc:
                errors.append(exc)

    web = await serve(nursery, ASGIHandler(app))
    await web.request(1, params=GET)
    with trio.fail_after(5):
        response = await web.read_response(1)
    proceed.set()
    await trio.testing.wait_all_tasks_blocked()
    assert response.body == b"part end"
    assert len(errors) == 2


async def test_failure_after_the_response_is_logged_at_error(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    go = trio.Event()

    async def after() -> None:
        await go.wait()
        raise ValueError("the background task broke")

    web = await serve(nursery, ASGIHandler(response_then(after)))
    await web.request(7, params=GET)
    with trio.fail_after(5):
        response = await web.read_response(7)
    assert (response.body, response.app_status) == (b"part end", 0)
    with caplog.at_level(logging.DEBUG, logger="trio_fastcgi"):
        go.set()
        await trio.testing.wait_all_tasks_blocked()
    [failure] = [r for r in caplog.records if r.exc_info is not None]
    assert failure.levelno == logging.ERROR
    assert failure.name == "trio_fastcgi.asgi"
    assert "request 7" in failure.getMessage()
    assert failure.exc_info is not None
    assert isinstance(failure.exc_info[1], ValueError)


async def test_abort_before_the_response_is_complete_still_cancels(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    cancelled = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"half", "more_body": True})
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    handler = ASGIHandler(app)
    web = await serve(nursery, handler)
    await web.request(1, params=GET)
    await trio.testing.wait_all_tasks_blocked()
    await web.send(record(ABORT, 1))
    response = await web.read_response(1)
    assert cancelled.is_set()
    assert response.body == b"half"
    assert handler.background_count == 0


async def test_lifespan_exit_waits_for_background_then_cancels_with_warning(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    outcomes: dict[int, str] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        request_id = scope["extensions"]["fastcgi"]["request_id"]
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"ok"})
        try:
            await trio.sleep(1 if request_id == 1 else 3600)
            outcomes[request_id] = "finished"
        except trio.Cancelled:
            outcomes[request_id] = "cancelled"
            raise

    handler = ASGIHandler(app, lifespan="off", background_grace=5)
    with caplog.at_level(logging.WARNING, logger="trio_fastcgi.asgi"):
        async with handler.lifespan(), trio.open_nursery() as nursery:
            client, server = trio.testing.memory_stream_pair()
            nursery.start_soon(trio_fastcgi.serve_connection, handler, server)
            web = FakeWebServer(client)
            for rid in (1, 2):
                await web.request(rid, params=GET)
                await web.read_response(rid)
            assert outcomes == {}
            nursery.cancel_scope.cancel()  # serving stops; the lifespan exits
            start = trio.current_time()
    assert outcomes == {1: "finished", 2: "cancelled"}
    assert trio.current_time() - start == pytest.approx(5)
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "cancelling 1 ASGI application(s)" in warning.getMessage()
    assert "request(s) 2" in warning.getMessage()
    assert handler.background_count == 0


async def test_lifespan_exit_without_background_work_is_immediate(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async def after() -> None:
        await trio.sleep(2)

    handler = ASGIHandler(response_then(after), lifespan="off", background_grace=30)
    with caplog.at_level(logging.WARNING, logger="trio_fastcgi.asgi"):
        async with handler.lifespan(), trio.open_nursery() as nursery:
            client, server = trio.testing.memory_stream_pair()
            nursery.start_soon(trio_fastcgi.serve_connection, handler, server)
            web = FakeWebServer(client)
            await web.request(1, params=GET)
            await web.read_response(1)
            start = trio.current_time()
            nursery.cancel_scope.cancel()
    # It waited for the one still running (2 s), not the whole grace.
    assert trio.current_time() - start == pytest.approx(2)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_background_grace_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="background_grace"):
        ASGIHandler(response_then(trio.lowlevel.checkpoint), background_grace=-1)


def starlette_with_background(log: list[str], release: trio.Event, done: trio.Event) -> Starlette:
    async def task(name: str) -> None:
        log.append(f"{name} started")
        await release.wait()
        log.append(f"{name} finished")
        done.set()

    async def json_view(request: StarletteRequest) -> JSONResponse:
        return JSONResponse({"ok": True}, background=BackgroundTask(task, "json"))

    async def stream_view(request: StarletteRequest) -> StreamingResponse:
        async def chunks() -> Any:
            for part in (b"a", b"b", b"c"):
                yield part

        return StreamingResponse(chunks(), background=BackgroundTask(task, "stream"))

    return Starlette(routes=[Route("/json", json_view), Route("/stream", stream_view)])


@pytest.mark.parametrize(("path", "body"), [("/json", b'{"ok":true}'), ("/stream", b"abc")])
async def test_starlette_background_task_runs_after_the_response(
    nursery: trio.Nursery, path: str, body: bytes
) -> None:
    log: list[str] = []
    release = trio.Event()
    done = trio.Event()
    app = starlette_with_background(log, release, done)
    web = await serve(nursery, ASGIHandler(app, lifespan="off"))
    await web.request(1, params={**GET, "SCRIPT_NAME": path, "REQUEST_URI": path})
    with trio.fail_after(5):
        response = await web.read_response(1)
    assert (response.body, response.app_status) == (body, 0)
    name = path.strip("/")
    assert f"{name} finished" not in log
    release.set()
    with trio.fail_after(5):
        await done.wait()
    assert log == [f"{name} started", f"{name} finished"]


async def test_asyncio_app_runs_on_after_its_response(nursery: trio.Nursery) -> None:
    release = threading.Event()
    finished = threading.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        asyncio.get_running_loop()  # raises on Trio
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"sent"})
        await asyncio.to_thread(release.wait, 10)
        finished.set()

    web = await serve(nursery, ASGIHandler(mark_asyncio(app)))
    await web.request(1, params=GET)
    with trio.fail_after(10):
        response = await web.read_response(1)
    assert response.body == b"sent"
    assert not finished.is_set()
    release.set()
    assert await trio.to_thread.run_sync(finished.wait, 10)


# -- the application's task is its own: the connection stops it, never waits -------


def ignoring_disconnect(events: list[str]) -> Any:
    """An app that reads the disconnect, records it with the time, and goes on
    until it is cancelled."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()  # the (empty) body
        events.append(f"{(await receive())['type']} at {trio.current_time():g}")
        try:
            await trio.sleep_forever()
        finally:
            events.append(f"cancelled at {trio.current_time():g}")

    return app


async def test_connection_closed_tells_the_app_and_cancels_it_after_the_grace(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    events: list[str] = []
    client, server = trio.testing.memory_stream_pair()
    served = trio.Event()

    async def serve_then_mark() -> None:
        await trio_fastcgi.serve_connection(ASGIHandler(ignoring_disconnect(events)), server)
        events.append(f"connection done at {trio.current_time():g}")
        served.set()

    nursery.start_soon(serve_then_mark)
    await FakeWebServer(client).request(1, params=GET)
    await trio.testing.wait_all_tasks_blocked()
    await client.aclose()  # the web server gives up on the request
    await served.wait()
    await trio.sleep(5)
    # The connection ends at once; the application, told, gets its grace.
    assert "connection done at 0" in events
    events.remove("connection done at 0")
    assert events == ["http.disconnect at 0", "cancelled at 1"]


async def test_cancelled_serving_tells_the_app_and_cancels_it_after_the_grace(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """The application's task is outside the serving's cancel scope: cancelling
    the server reaches it through its request, as an abort does."""
    events: list[str] = []
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as inner:
        inner.start_soon(
            trio_fastcgi.serve_connection, ASGIHandler(ignoring_disconnect(events)), server
        )
        await FakeWebServer(client).request(1, params=GET)
        await trio.testing.wait_all_tasks_blocked()
        inner.cancel_scope.cancel()
    assert trio.current_time() == 0
    await trio.sleep(5)
    assert events == ["http.disconnect at 0", "cancelled at 1"]


async def test_same_request_id_while_the_first_app_runs_on(nursery: trio.Nursery) -> None:
    """nginx reuses request id 1 once END_REQUEST came: the next request with
    that id is served, aborted and ended on its own while the first request's
    application still runs."""
    release = trio.Event()
    events: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        name = scope["path"]
        await send({"type": "http.response.start", "status": 200})
        if name == "/first":
            await send({"type": "http.response.body", "body": b"first"})
            await release.wait()
            events.append("first returned")
        else:
            await receive()  # the body
            events.append(f"second got {(await receive())['type']}")

    web = await serve(nursery, ASGIHandler(app))
    with trio.fail_after(5):
        await web.request(1, params={**GET, "SCRIPT_NAME": "/first"})
        assert (await web.read_response(1)).body == b"first"
        await web.request(1, params={**GET, "SCRIPT_NAME": "/second"})
        await trio.testing.wait_all_tasks_blocked()
        await web.send(record(ABORT, 1))  # the second request's, not the first's
        second = await web.read_response(1)
        release.set()
        await trio.testing.wait_all_tasks_blocked()
    assert (second.stdout, second.protocol_status) == (b"", 0)
    assert events == ["second got http.disconnect", "first returned"]
    assert web.responses == {}  # nothing more came for either


async def test_access_log_line_comes_with_the_response_not_the_background_work(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    from trio_fastcgi._access_log import AccessLogHandler

    release = trio.Event()
    handler = AccessLogHandler(ASGIHandler(response_then(release.wait)))
    assert handler.spawn_request is not None  # the adapter's own tasks, passed on
    web = await serve(nursery, handler)
    with caplog.at_level(logging.INFO, logger="trio_fastcgi.access"):
        await web.request(1, params=GET)
        with trio.fail_after(5):
            await web.read_response(1)
        [line] = [r.getMessage() for r in caplog.records if r.name == "trio_fastcgi.access"]
        assert '"GET - HTTP/1.1" 200 8 ' in line
        release.set()
        await trio.testing.wait_all_tasks_blocked()
    assert len([r for r in caplog.records if r.name == "trio_fastcgi.access"]) == 1


@pytest.mark.parametrize("access_log", [False, True], ids=["asgi", "asgi-access-log"])
@pytest.mark.parametrize("native", [False, True], ids=["adapter", "native"])
async def test_a_served_request_is_freed_without_the_garbage_collector(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture, access_log: bool, native: bool
) -> None:
    """No reference cycle keeps a request (and its buffers) after it ended:
    with 32 connections of 1 MiB responses, such cycles added 15 MiB of peak
    RSS until the collector ran."""
    from trio_fastcgi._access_log import AccessLogHandler

    refs: list[weakref.ref[trio_fastcgi.Request]] = []

    async def hello(request: trio_fastcgi.Request) -> None:
        await request.respond(b"hello")

    inner: Any = hello if native else ASGIHandler(response_then(trio.lowlevel.checkpoint))

    class Recording:
        spawn_request = getattr(inner, "spawn_request", None)

        async def __call__(self, request: trio_fastcgi.Request) -> None:
            refs.append(weakref.ref(request))
            await inner(request)

    handler: Any = AccessLogHandler(Recording()) if access_log else Recording()
    caplog.set_level(logging.INFO, logger="trio_fastcgi.access")
    gc.collect()
    gc.disable()
    try:
        web = await serve(nursery, handler)
        for request_id in (1, 2, 3):
            await web.request(request_id, params=GET)
            await web.read_response(request_id)
        await trio.testing.wait_all_tasks_blocked()
        assert [ref() for ref in refs] == [None, None, None]
    finally:
        gc.enable()
