"""Caddy 2 (``reverse_proxy`` with ``transport fastcgi``) in front of the
application, end to end, over TCP and over a unix socket.

Caddy runs from the templates in docs/deploy/ (caddy-tcp.Caddyfile,
caddy-unix.Caddyfile), exactly as the docs show them.
"""

from __future__ import annotations

import os
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
from tests.integration.harness import http_client, running, serve_app_counted
from tests.integration.procs import free_port, require_binary

pytestmark = pytest.mark.integration

KiB = 1024


def caddy_env(tmp_path: Path) -> dict[str, str]:
    """Caddy writes its autosaved config and data under HOME / XDG dirs."""
    return {
        **os.environ,
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
    }


@asynccontextmanager
async def caddy(
    tmp_path: Path, template: str, **values: object
) -> AsyncIterator[httpx.AsyncClient]:
    """Run Caddy from a docs/deploy template; yield an HTTP client for it."""
    port = free_port()
    config = render(template, tmp_path, tmp=tmp_path, port=port, **values)
    argv = [require_binary("caddy"), "run", "--adapter", "caddyfile", "--config", str(config)]
    async with (
        running(argv, port=port, log_path=tmp_path / "caddy.out", env=caddy_env(tmp_path)),
        http_client(port) as client,
    ):
        yield client


async def test_caddy_tcp_get_post_and_a_connection_per_request(
    nursery: trio.Nursery, app: EchoApp, tmp_path: Path
) -> None:
    served = await serve_app_counted(nursery, app)
    body = random.Random(11).randbytes(512 * KiB)
    async with caddy(tmp_path, "caddy-tcp.Caddyfile", app_port=served.port) as client:
        hello = await client.get("/app/hello")
        params = await client.get("/app/params", params={"x": "y z"})
        echoed = await client.post("/app/echo", content=body)
        large = await client.get("/app/blob", params={"size": 3 * 1024 * KiB, "seed": 5})
        outside = await client.get("/elsewhere/hello")
    assert hello.status_code == 200
    assert hello.content == GREETING
    received = params.json()
    assert received["REQUEST_METHOD"] == "GET"
    assert received["QUERY_STRING"] == "x=y+z"
    assert received["REQUEST_URI"] == "/app/params?x=y+z"
    # Under "handle" Caddy sends the whole path as PATH_INFO.
    assert received["SCRIPT_NAME"] == ""
    assert received["PATH_INFO"] == "/app/params"
    assert echoed.status_code == 200
    assert echoed.content == body
    assert large.content == blob(3 * 1024 * KiB, 5)
    # Only /app/ is proxied; Caddy answers the rest itself (an empty 200).
    assert outside.status_code == 200
    assert outside.content == b""
    assert app.stats.requests == 4
    # Caddy never sets FCGI_KEEP_CONN: one FastCGI connection per request.
    assert served.connections == 4
    assert app.stats.connections_with_keep_conn == set()


async def test_caddy_unix_socket(nursery: trio.Nursery, app: EchoApp, tmp_path: Path) -> None:
    socket_path = tmp_path / "app.sock"
    await nursery.start(trio_fastcgi.serve_unix, app, socket_path)
    body = random.Random(12).randbytes(300 * KiB)
    async with caddy(tmp_path, "caddy-unix.Caddyfile", app_socket=socket_path) as client:
        hello = await client.get("/app/hello")
        echoed = await client.post("/app/echo", content=body)
        empty = await client.post("/app/echo", content=b"")
    assert hello.status_code == 200
    assert hello.content == GREETING
    assert echoed.status_code == 200
    assert echoed.content == body
    assert empty.status_code == 200
    assert empty.content == b""
    assert app.stats.requests == 3
