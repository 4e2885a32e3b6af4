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
