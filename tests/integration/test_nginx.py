"""nginx (ngx_http_fastcgi_module) in front of the application, end to end.

nginx is run from the templates in docs/deploy/ (nginx-tcp.conf,
nginx-unix.conf, nginx-keepalive.conf), exactly as the docs show them.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

import trio_fastcgi
from tests.integration.apps.echo import GREETING, EchoApp, blob
from tests.integration.configs import render
from tests.integration.harness import (
    IS_ROOT,
    http_client,
    running,
    serve_app_counted,
    serve_app_tcp,
)
from tests.integration.procs import free_port, require_binary

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


def nginx_argv(config: Path) -> list[str]:
    argv = [require_binary("nginx"), "-c", str(config), "-e", str(config.parent / "startup.log")]
    if IS_ROOT:
        # The templates leave nginx's worker user at its default; under root
        # that is "nobody", which cannot enter pytest's private tmp_path.
        argv += ["-g", "user root;"]
    return argv


@asynccontextmanager
async def nginx(
    tmp_path: Path, template: str, *, limits: httpx.Limits | None = None, **values: object
) -> AsyncIterator[httpx.AsyncClient]:
    """Run nginx from a docs/deploy template; yield an HTTP client for it."""
    port = free_port()
    config = render(template, tmp_path, tmp=tmp_path, port=port, **values)
    async with (
        running(nginx_argv(config), port=port, log_path=tmp_path / "nginx.out"),
        http_client(port, limits=limits or httpx.Limits()) as client,
    ):
        yield client


def client_port(client: httpx.AsyncClient) -> int:
    port = client.base_url.port
    assert port is not None
    return port


async def test_nginx_hello(nursery: trio.Nursery, app: EchoApp, tmp_path: Path) -> None:
    app_port = await serve_app_tcp(nursery, app)
    async with nginx(tmp_path, "nginx-tcp.conf", app_port=app_port) as client:
        response = await client.get("/hello")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.content == GREETING


async def test_nginx_post_1mib_echoed(nursery: trio.Nursery, app: EchoApp, tmp_path: Path) -> None:
    app_port = await serve_app_tcp(nursery, app)
    body = random.Random(1).randbytes(MiB)
    async with nginx(tmp_path, "nginx-tcp.conf", app_port=app_port) as client:
        response = await client.post("/echo", content=body)
    assert response.status_code == 200
    assert len(response.content) == MiB
    assert response.content == body


async def test_nginx_10mib_response_byte_exact(
    nursery: trio.Nursery, app: EchoApp, tmp_path: Path
) -> None:
    app_port = await serve_app_tcp(nursery, app)
    async with nginx(tmp_path, "nginx-tcp.conf", app_port=app_port) as client:
        response = await client.get("/blob", params={"size": 10 * MiB, "seed": 7})
    assert response.status_code == 200
    assert response.headers["content-length"] == str(10 * MiB)
    assert response.content == blob(10 * MiB, 7)


async def test_nginx_keepalive_reuses_one_connection(
    nursery: trio.Nursery, app: EchoApp, tmp_path: Path
) -> None:
    served = await serve_app_counted(nursery, app)
    async with nginx(tmp_path, "nginx-keepalive.conf", app_port=served.port) as client:
        for i in range(20):
            body = f"request {i}".encode()
            response = await client.post("/echo", content=body)
            assert response.content == body
    assert app.stats.requests == 20
    assert served.connections == 1
    assert app.stats.connections_with_keep_conn == {1}


async def test_nginx_without_keepalive_connects_per_request(
    nursery: trio.Nursery, app: EchoApp, tmp_path: Path
) -> None:
    served = await serve_app_counted(nursery, app)
    async with nginx(tmp_path, "nginx-tcp.conf", app_port=served.port) as client:
        for _ in range(20):
            response = await client.get("/hello")
            assert response.content == GREETING
    assert app.stats.requests == 20
    assert served.connections == 20
    assert app.stats.connections_with_keep_conn == set()


async def test_nginx_unix_socket_upstream(
    nursery: trio.Nursery, app: EchoApp, tmp_path: Path
) -> None:
    socket_path = tmp_path / "app.sock"
    await nursery.start(trio_fastcgi.serve_unix, app, socket_path)
    body = random.Random(2).randbytes(300_000)
    async with nginx(tmp_path, "nginx-unix.conf", app_socket=socket_path) as client:
        hello = await client.get("/hello")
        echoed = await client.post("/echo", content=body)
        params = await client.get("/params", params={"q": "1"})
    assert hello.content == GREETING
    assert echoed.content == body
    assert params.json()["QUERY_STRING"] == "q=1"
    assert params.json()["REQUEST_METHOD"] == "GET"


async def test_nginx_client_disconnect_cancels_handler(
    nursery: trio.Nursery, app: EchoApp, tmp_path: Path
) -> None:
    """nginx never sends FCGI_ABORT_REQUEST: when the HTTP client goes away it
    closes the FastCGI connection, which cancels the handler all the same."""
    served = await serve_app_counted(nursery, app)
    async with nginx(tmp_path, "nginx-keepalive.conf", app_port=served.port) as client:
        stream = await trio.open_tcp_stream("127.0.0.1", client_port(client))
        await stream.send_all(b"GET /sleep HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        with trio.fail_after(10):
            await app.stats.sleeping.wait()
        await stream.aclose()
        with trio.fail_after(10):
            await app.stats.cancelled.wait()
        after = await client.get("/hello")
    assert after.content == GREETING
    assert [cancellation.aborted for cancellation in app.stats.cancellations] == [False]
    # The connection of the cancelled request is gone; /hello needed a new one.
    assert served.connections == 2


LOAD_REQUESTS = 2000
LOAD_CONCURRENCY = 64
LOAD_MAX_BODY = 256 * 1024


async def test_nginx_heavy_load_every_byte_checked(
    nursery: trio.Nursery, app: EchoApp, tmp_path: Path
) -> None:
    """Thousands of echo requests at concurrency 64 with random body sizes over
    kept-alive connections: the load that desynchronised tokio-fastcgi's
    record stream before its 1.2.0. Every response must match byte for byte."""
    app_port = await serve_app_tcp(nursery, app)
    rng = random.Random(64)
    sizes = [rng.randrange(LOAD_MAX_BODY + 1) for _ in range(LOAD_REQUESTS)]
    pool = rng.randbytes(LOAD_MAX_BODY + LOAD_REQUESTS)
    bodies = [pool[i : i + size] for i, size in enumerate(sizes)]
    failures: list[str] = []
    work = iter(range(LOAD_REQUESTS))
    done = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal done
        for i in work:
            response = await client.post("/echo", content=bodies[i])
            if response.status_code != 200 or response.content != bodies[i]:
                failures.append(f"request {i}: {response.status_code}, {len(response.content)}")
            done += 1

    limits = httpx.Limits(
        max_connections=LOAD_CONCURRENCY, max_keepalive_connections=LOAD_CONCURRENCY
    )
    async with nginx(tmp_path, "nginx-keepalive.conf", app_port=app_port, limits=limits) as client:
        with trio.fail_after(120):
            async with trio.open_nursery() as workers:
                for _ in range(LOAD_CONCURRENCY):
                    workers.start_soon(worker, client)
    assert failures == []
    assert done == LOAD_REQUESTS
    assert app.stats.requests == LOAD_REQUESTS
