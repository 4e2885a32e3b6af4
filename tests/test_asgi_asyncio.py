"""Asyncio ASGI applications served from Trio through the asyncio bridge."""

from __future__ import annotations

import asyncio
import socket
import threading
from functools import partial
from typing import Any

import trio
import trio.testing

from tests.helpers import ABORT, STDIN, begin_record, params_records, record
from tests.test_asgi import GET, serve
from trio_fastcgi._asyncio_bridge import AsyncioApp
from trio_fastcgi._workers import serve_worker
from trio_fastcgi.asgi import ASGIHandler, mark_asyncio
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
