"""Asyncio ASGI applications served from Trio through the asyncio bridge."""

from __future__ import annotations

import asyncio
from typing import Any

import trio
import trio.testing

from tests.helpers import ABORT, STDIN, begin_record, params_records, record
from tests.test_asgi import GET, serve
from trio_fastcgi.asgi import ASGIHandler, mark_asyncio


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
