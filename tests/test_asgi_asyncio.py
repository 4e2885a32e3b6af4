"""Asyncio ASGI applications served from Trio through the asyncio bridge."""

from __future__ import annotations

import asyncio
import socket
import threading
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

import trio_fastcgi
from tests.helpers import (
    ABORT,
    STDIN,
    FakeWebServer,
    Response,
    begin_record,
    params_records,
    record,
)
from tests.test_asgi import GET, serve
from trio_fastcgi._asyncio_bridge import AsyncioApp
from trio_fastcgi._sender import QUEUE_LIMIT
from trio_fastcgi._workers import serve_worker
from trio_fastcgi.asgi import ASGIHandler, ClientDisconnected, mark_asyncio
from trio_fastcgi.client import open_tcp_client


async def test_asyncio_app_gathers_and_streams(nursery: trio.Nursery) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        asyncio.get_running_loop()  # raises on Trio
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await asyncio.gather(asyncio.sleep(0), asyncio.sleep(0))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"a", b"b", body):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"!"})

    web = await serve(nursery, ASGIHandler(mark_asyncio(app)))
    await web.send(begin_record(1) + params_records(1, GET) + record(STDIN, 1, b"xyz"))
    await web.send(record(STDIN, 1))
    with trio.fail_after(10):
        response = await web.read_response(1)
    assert response.body == b"abxyz!"


async def test_asyncio_abort_cancels_the_task(nursery: trio.Nursery) -> None:
    cancelled: list[BaseException] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError as exc:
            cancelled.append(exc)
            raise

    web = await serve(nursery, ASGIHandler(app, loop="asyncio"))
    await web.request(1, params=GET)
    await trio.testing.wait_all_tasks_blocked()
    await web.send(record(ABORT, 1))
    with trio.fail_after(10):
        response = await web.read_response(1)
    assert response.stdout == b""
    assert len(cancelled) == 1


async def test_asyncio_app_exception_is_500(nursery: trio.Nursery) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(0)
        raise ValueError("boom")

    web = await serve(nursery, ASGIHandler(app, loop="asyncio"))
    await web.request(1, params=GET)
    with trio.fail_after(10):
        response = await web.read_response(1)
    assert response.head.startswith(b"Status: 500")


async def test_django_asgi_is_detected_and_served(nursery: trio.Nursery) -> None:
    import sys
    import types

    import django
    from django.conf import settings

    urls = types.ModuleType("tests_django_urls")
    sys.modules["tests_django_urls"] = urls
    if not settings.configured:
        settings.configure(
            ROOT_URLCONF="tests_django_urls", ALLOWED_HOSTS=["*"], SECRET_KEY="x", DEBUG=False
        )
    django.setup()
    from django.core.asgi import get_asgi_application
    from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
    from django.urls import path

    def echo(request: HttpRequest) -> HttpResponse:
        return HttpResponse(b"got " + request.body)

    async def chunks() -> Any:
        for part in (b"one ", b"two"):
            await asyncio.sleep(0)
            yield part

    def stream(request: HttpRequest) -> StreamingHttpResponse:
        return StreamingHttpResponse(chunks())

    urls.urlpatterns = [path("echo", echo), path("stream", stream)]  # type: ignore[attr-defined]
    handler = ASGIHandler(get_asgi_application(), lifespan="off")
    assert type(handler.app).__name__ == "AsyncioApp"
    # The lifespan waits for Django's work after each response, then stops the loop.
    async with handler.lifespan():
        web = await serve(nursery, handler)
        post = {
            **GET,
            "REQUEST_METHOD": "POST",
            "REQUEST_URI": "/echo",
            "PATH_INFO": "/echo",
            "CONTENT_LENGTH": "3",
        }
        await web.request(1, params=post, stdin=b"abc")
        with trio.fail_after(20):
            response = await web.read_response(1)
        assert response.body == b"got abc"
        await web.request(2, params={**GET, "REQUEST_URI": "/stream", "PATH_INFO": "/stream"})
        with trio.fail_after(20):
            response = await web.read_response(2)
        assert response.body == b"one two"


def loop_thread(handler: ASGIHandler) -> threading.Thread | None:
    """The thread of the handler's asyncio loop (None if none runs)."""
    assert isinstance(handler.app, AsyncioApp)
    return handler.app.thread


def lifespan_app(seen: list[str]) -> Any:
    """An asyncio app whose lifespan startup puts an item in an asyncio.Queue
    (bound to the running loop once used) that each request takes and answers."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            assert (await receive())["type"] == "lifespan.startup"
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue[str] = asyncio.Queue()
            await queue.put("made at startup")
            scope["state"].update(loop=loop, queue=queue)
            await send({"type": "lifespan.startup.complete"})
            assert (await receive())["type"] == "lifespan.shutdown"
            seen.append(f"shutdown on the same loop: {asyncio.get_running_loop() is loop}")
            await send({"type": "lifespan.shutdown.complete"})
            return
        same = asyncio.get_running_loop() is scope["state"]["loop"]
        queue = scope["state"]["queue"]
        item = await queue.get()  # another loop: RuntimeError (bound to a different loop)
        await queue.put(item)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": f"{item}; same loop: {same}".encode()})

    return app


async def test_asyncio_lifespan_runs_on_the_loop_the_requests_use(nursery: trio.Nursery) -> None:
    seen: list[str] = []
    handler = ASGIHandler(lifespan_app(seen), loop="asyncio", lifespan="on")
    assert loop_thread(handler) is None
    async with handler.lifespan():
        thread = loop_thread(handler)
        assert thread is not None
        assert thread.is_alive()
        web = await serve(nursery, handler)
        for request_id in (1, 2):
            await web.request(request_id, params=GET)
            with trio.fail_after(10):
                response = await web.read_response(request_id)
            assert response.body == b"made at startup; same loop: True"
    assert seen == ["shutdown on the same loop: True"]
    # The loop's thread ended when the lifespan did.
    assert not thread.is_alive()
    assert loop_thread(handler) is None
    assert thread not in threading.enumerate()


async def test_asyncio_loop_thread_ends_with_lifespan_off(nursery: trio.Nursery) -> None:
    handler = ASGIHandler(lifespan_app([]), loop="asyncio", lifespan="off")
    async with handler.lifespan():
        web = await serve(nursery, handler)
        await web.request(1, params=GET)
        with trio.fail_after(10):
            response = await web.read_response(1)
        assert response.head.startswith(b"Status: 500")  # no startup: no state["queue"]
        thread = loop_thread(handler)
        assert thread is not None
        assert thread.is_alive()
    assert not thread.is_alive()


async def test_asyncio_loop_thread_gone_once_serve_worker_returns() -> None:
    """The command's worker: its lifespan ends after serving, and so does the loop."""
    seen: list[str] = []
    handler = ASGIHandler(lifespan_app(seen), loop="asyncio")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    threads: list[threading.Thread | None] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            partial(serve_worker, (handler, handler.lifespan()), [listener], {}, max_requests=1)
        )
        async with open_tcp_client("127.0.0.1", port) as client:
            with trio.fail_after(20):
                response = await client.request(GET)
        threads.append(loop_thread(handler))
        assert response.stdout.endswith(b"made at startup; same loop: True")
    # serve_worker returned (max_requests=1): the nursery is done.
    (thread,) = threads
    assert thread is not None
    assert not thread.is_alive()
    assert seen == ["shutdown on the same loop: True"]


def test_asyncio_loop_thread_ends_with_the_trio_run() -> None:
    """Without lifespan (serve_* called directly), the loop stops when the
    Trio run ends: no thread is left behind."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(0)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"hi"})

    handler = ASGIHandler(app, loop="asyncio")
    threads: list[threading.Thread | None] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            web = await serve(nursery, handler)
            await web.request(1, params=GET)
            with trio.fail_after(10):
                assert (await web.read_response(1)).body == b"hi"
            threads.append(loop_thread(handler))
            nursery.cancel_scope.cancel()

    trio.run(main)
    (thread,) = threads
    assert thread is not None
    assert not thread.is_alive()
    assert loop_thread(handler) is None


async def tasks_left(loop: asyncio.AbstractEventLoop) -> int:
    """How many tasks the asyncio loop has besides the one asking."""

    async def count() -> int:
        return len(asyncio.all_tasks()) - 1

    return await trio.to_thread.run_sync(
        lambda: asyncio.run_coroutine_threadsafe(count(), loop).result(10)
    )


POST = {**GET, "REQUEST_METHOD": "POST", "CONTENT_LENGTH": "1000"}


@pytest.mark.parametrize("how", ["abort", "close"])
async def test_asyncio_app_waiting_for_the_body_gets_disconnect(
    nursery: trio.Nursery, how: str
) -> None:
    """The web server gives up while the app awaits the rest of the body:
    receive() returns http.disconnect and the app ends by itself."""
    messages: list[str] = []
    loops: list[asyncio.AbstractEventLoop] = []
    received, returned = trio.Event(), trio.Event()
    token = trio.lowlevel.current_trio_token()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        loops.append(asyncio.get_running_loop())
        try:
            while True:
                message = await receive()
                messages.append(message["type"])
                token.run_sync_soon(received.set)
                if message["type"] == "http.disconnect":
                    return
        finally:
            token.run_sync_soon(returned.set)

    client, server = trio.testing.memory_stream_pair()
    connection_done = trio.Event()

    async def run_connection() -> None:
        try:
            await trio_fastcgi.serve_connection(ASGIHandler(app, loop="asyncio"), server)
        finally:
            connection_done.set()

    nursery.start_soon(run_connection)
    web = FakeWebServer(client)
    await web.send(begin_record(1) + params_records(1, POST) + record(STDIN, 1, b"x" * 10))
    with trio.fail_after(10):
        await received.wait()
    assert messages == ["http.request"]  # the first chunk; the app waits for more
    if how == "abort":
        await web.send(record(ABORT, 1))
        with trio.fail_after(10):
            response = await web.read_response(1)
        assert response.stdout == b""
    else:
        await client.aclose()
        with trio.fail_after(10):
            await connection_done.wait()
    with trio.fail_after(10):
        await returned.wait()
    assert messages == ["http.request", "http.disconnect"]
    assert await tasks_left(loops[0]) == 0


async def test_asyncio_app_ignoring_disconnect_is_cancelled(nursery: trio.Nursery) -> None:
    """An app that goes on after http.disconnect is cancelled after the grace."""
    events: list[str] = []
    loops: list[asyncio.AbstractEventLoop] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        loops.append(asyncio.get_running_loop())
        while (await receive())["type"] != "http.disconnect":
            pass
        events.append("disconnect")
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    web = await serve(nursery, ASGIHandler(app, loop="asyncio"))
    await web.send(begin_record(1) + params_records(1, POST) + record(STDIN, 1, b"x"))
    await trio.testing.wait_all_tasks_blocked()
    await web.send(record(ABORT, 1))
    with trio.fail_after(20):
        response = await web.read_response(1)
    assert response.stdout == b""
    assert events == ["disconnect", "cancelled"]
    assert await tasks_left(loops[0]) == 0


@pytest.mark.parametrize("how", ["abort", "close"])
async def test_asyncio_app_streaming_when_the_request_goes(nursery: trio.Nursery, how: str) -> None:
    """The web server gives up while the app streams its body: send() raises
    ClientDisconnected in the asyncio task, which ends; nothing is left."""
    outcome: list[str] = []
    loops: list[asyncio.AbstractEventLoop] = []
    started = trio.Event()
    returned = trio.Event()
    token = trio.lowlevel.current_trio_token()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        loops.append(asyncio.get_running_loop())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for n in range(100_000):
                await send({"type": "http.response.body", "body": b"x" * 4096, "more_body": True})
                if n == 10:
                    token.run_sync_soon(started.set)
            outcome.append("sent it all")
        except ClientDisconnected:
            outcome.append("ClientDisconnected")
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        finally:
            token.run_sync_soon(returned.set)

    client, server = trio.testing.lockstep_stream_pair()
    nursery.start_soon(trio_fastcgi.serve_connection, ASGIHandler(app, loop="asyncio"), server)
    web = FakeWebServer(client)
    await web.request(1, params=GET)
    reader = trio.CancelScope()

    async def read() -> None:
        with reader:
            await web.read_eof()

    async with trio.open_nursery() as reading:
        reading.start_soon(read)  # until stopped below
        with trio.fail_after(10):
            await started.wait()
        if how == "abort":
            await web.send(record(ABORT, 1))
        else:
            reader.cancel()
            await client.aclose()
        with trio.fail_after(10):
            await returned.wait()
        reader.cancel()
    assert outcome in (["ClientDisconnected"], ["cancelled"])
    assert await tasks_left(loops[0]) == 0


async def test_asyncio_streaming_to_a_slow_reader_is_bounded(nursery: trio.Nursery) -> None:
    """An asyncio app streaming to a reader that reads slowly: at no point has
    the app been told more was sent than the output queue and one record in
    flight can hold; the hand-off between the loops buffers nothing."""
    chunk, chunks = 64 * 1024, 200
    sent = [0]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(chunks):
            await send({"type": "http.response.body", "body": b"y" * chunk, "more_body": True})
            sent[0] += chunk
        await send({"type": "http.response.body", "body": b""})

    client, server = trio.testing.lockstep_stream_pair()
    nursery.start_soon(trio_fastcgi.serve_connection, ASGIHandler(app, loop="asyncio"), server)
    web = FakeWebServer(client)
    await web.request(1, params=GET)
    # Queued by the writer, the batch it writes, one more chunk on each side.
    bound = 2 * QUEUE_LIMIT + 4 * chunk
    most_ahead = 0
    with trio.fail_after(60):
        while web.responses.get(1, Response()).app_status is None:
            await trio.sleep(0.002)  # time for an unbounded sender to run ahead
            assert await web._read_more()
            received = len(web.responses[1].stdout)
            most_ahead = max(most_ahead, sent[0] - received)
            assert sent[0] - received <= bound
    assert len(web.responses[1].body) == chunk * chunks
    assert most_ahead > 0  # the app did run ahead of the reader, within the bound
