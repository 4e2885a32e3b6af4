"""What the user sees when a request's params exceed ``max_params_size``:
the application closes the connection (and logs a WARNING naming the option),
so the browser gets the web server's own error page. docs/deploy/README.md
lists the status each server answers with; this test checks that list."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

from tests.integration.apps.echo import GREETING, EchoApp
from tests.integration.configs import DEPLOY_DIR
from tests.integration.harness import serve_app_tcp
from tests.integration.test_apache import apache
from tests.integration.test_lighttpd import lighttpd
from tests.integration.test_nginx import nginx

pytestmark = pytest.mark.integration

LIMIT = 4096
# One header bigger than the limit, but within every server's own header limit
# (nginx and lighttpd: 8 KiB, Apache: 8190 bytes).
BIG_HEADER = {"X-Big": "a" * 6000}


@asynccontextmanager
async def _lighttpd_client(tmp_path: Path, app_port: int) -> AsyncIterator[httpx.AsyncClient]:
    async with lighttpd(tmp_path, "lighttpd-responder.conf", app_port=app_port) as (client, _):
        yield client


def _server(name: str) -> Callable[[Path, int], AbstractAsyncContextManager[httpx.AsyncClient]]:
    if name == "nginx":
        return lambda tmp_path, port: nginx(tmp_path, "nginx-tcp.conf", app_port=port)
    if name == "Apache":
        return lambda tmp_path, port: apache(tmp_path, "apache-responder.conf", port)
    return _lighttpd_client


def documented_statuses() -> dict[str, int]:
    """The statuses docs/deploy/README.md gives, by server name."""
    readme = (DEPLOY_DIR / "README.md").read_text()
    section = readme[readme.index("## Params over `max_params_size`") :]
    return {name: int(status) for name, status in re.findall(r"^- (\w+): (\d{3})\b", section, re.M)}


def test_the_note_covers_each_tested_server() -> None:
    assert sorted(documented_statuses()) == ["Apache", "lighttpd", "nginx"]


@pytest.mark.parametrize("server", ["nginx", "Apache", "lighttpd"])
async def test_params_over_the_limit_get_the_documented_status(
    server: str,
    nursery: trio.Nursery,
    app: EchoApp,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app_port = await serve_app_tcp(nursery, app, max_params_size=LIMIT)
    path = "/hello" if server == "nginx" else "/app/hello"
    with caplog.at_level(logging.WARNING, logger="trio_fastcgi"):
        async with _server(server)(tmp_path, app_port) as client:
            small = await client.get(path)
            big = await client.get(path, headers=BIG_HEADER)
    assert small.status_code == 200
    assert small.content == GREETING
    assert big.status_code == documented_statuses()[server]
    assert f"exceed the limit of {LIMIT} bytes (max_params_size)" in caplog.text
