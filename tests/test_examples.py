"""The examples do what their docstrings say."""

from __future__ import annotations

import json

import trio

from examples import hello, rest_api
from tests.helpers import FakeWebServer
from trio_fastcgi import serve_connection


async def test_hello(nursery: trio.Nursery) -> None:
    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(serve_connection, hello.handler, server)
    web = FakeWebServer(client)
    await web.request(1, params={"REQUEST_URI": "/greet?x=1"})
    response = await web.read_response(1)
    assert response.body == b"Hello from trio-fastcgi! You asked for /greet?x=1\n"
    assert response.head.startswith(b"Status: 200 OK")


async def test_rest_api(nursery: trio.Nursery) -> None:
    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(serve_connection, rest_api.make_handler(), server)
    web = FakeWebServer(client)

    async def call(method: str, path: str, body: bytes = b"") -> tuple[bytes, object]:
        params = {"REQUEST_METHOD": method, "PATH_INFO": path, "CONTENT_LENGTH": str(len(body))}
        await web.request(1, params=params, stdin=body)
        response = await web.read_response(1)
        status = response.head.split(b"\r\n")[0]
        return status, json.loads(response.body) if response.body else None

    assert await call("GET", "/todos") == (b"Status: 200 OK", [])
    status, item = await call("POST", "/todos", b'{"title": "write tests"}')
    assert status == b"Status: 201 Created"
    assert item == {"id": 1, "title": "write tests", "done": False}
    assert await call("GET", "/todos/1") == (b"Status: 200 OK", item)
    assert (await call("POST", "/todos", b"{not json"))[0] == b"Status: 400 Bad Request"
    assert (await call("POST", "/todos", b'{"title": 3}'))[0] == b"Status: 400 Bad Request"
    assert (await call("PUT", "/todos"))[0] == b"Status: 405 Method Not Allowed"
    assert await call("DELETE", "/todos/1") == (b"Status: 204 No Content", None)
    assert (await call("GET", "/todos/1"))[0] == b"Status: 404 Not Found"
    assert (await call("GET", "/elsewhere"))[0] == b"Status: 404 Not Found"
