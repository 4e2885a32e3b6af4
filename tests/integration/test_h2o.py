"""H2O in front of the application, end to end: ``fastcgi.connect`` to the
application on TCP with kept-alive connections, and ``fastcgi.spawn`` starting
the ``trio-fastcgi`` command itself with a listening socket on fd 0.

H2O runs from the templates in docs/deploy/ (h2o-connect.conf,
h2o-spawn.conf), exactly as the docs show them.
"""

from __future__ import annotations

import random
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

from tests.integration.apps.echo import GREETING, EchoApp
from tests.integration.configs import render, spawned_app_values
from tests.integration.harness import IS_ROOT, http_client, running, serve_app_counted
from tests.integration.procs import ManagedProcess, free_port, require_binary, wait_until_gone

pytestmark = pytest.mark.integration

KiB = 1024


@asynccontextmanager
async def h2o(
    tmp_path: Path, template: str, **values: object
) -> AsyncIterator[tuple[httpx.AsyncClient, ManagedProcess]]:
    """Run H2O from a docs/deploy template; yield an HTTP client for it."""
    port = free_port()
    config = render(template, tmp_path, tmp=tmp_path, port=port, **values)
    if IS_ROOT:
        # Started as root, H2O would run as nobody, who cannot enter pytest's
        # tmp_path nor run this interpreter (as nginx's "user root" in its tests).
        config.write_text(config.read_text() + "user: root\n")
    argv = [require_binary("h2o"), "-c", str(config)]
    async with (
        running(argv, port=port, log_path=tmp_path / "h2o.out") as process,
        http_client(port) as client,
    ):
        yield client, process


async def test_h2o_connect_get_post_and_kept_connection(
    nursery: trio.Nursery, app: EchoApp, tmp_path: Path
) -> None:
    served = await serve_app_counted(nursery, app)
    body = random.Random(21).randbytes(512 * KiB)
    async with h2o(tmp_path, "h2o-connect.conf", app_port=served.port) as (client, _):
        hello = await client.get("/app/hello")
        params = await client.get("/app/params", params={"q": "1"})
        echoed = await client.post("/app/echo", content=body)
        for i in range(10):
            small = f"request {i}".encode()
            assert (await client.post("/app/echo", content=small)).content == small
    assert hello.status_code == 200
    assert hello.content == GREETING
    received = params.json()
    assert received["REQUEST_URI"] == "/app/params?q=1"
    assert received["SERVER_SOFTWARE"].startswith("h2o/")
    assert received["PATH_INFO"] == "/app/params"
    assert echoed.status_code == 200
    assert echoed.content == body
    assert app.stats.requests == 13
    # fastcgi.timeout.keepalive: H2O sets FCGI_KEEP_CONN and sends one
    # request after another over the connection it keeps.
    assert served.connections == 1
    assert app.stats.connections_with_keep_conn == {1}


async def test_h2o_spawn_runs_the_command_on_fd0(tmp_path: Path) -> None:
    body = random.Random(22).randbytes(512 * KiB)
    values = spawned_app_values(sys.executable)
    async with h2o(tmp_path, "h2o-spawn.conf", **values) as (client, h2o_process):
        whoami = await client.get("/app/whoami")
        hello = await client.get("/app/hello")
        echoed = await client.post("/app/echo", content=body)
        again = await client.get("/app/whoami")
        assert whoami.status_code == 200, whoami.text
        info = whoami.json()
        grandparent = _parent_of(info["ppid"])
    assert info["fd0_family"] == "AF_UNIX"
    # H2O runs the command under its kill-on-close helper; the application
    # serves in that process (no trio-fastcgi supervisor in between), and one
    # process serves every request.
    assert grandparent == h2o_process.pid
    assert again.json()["pid"] == info["pid"]
    assert hello.content == GREETING
    assert echoed.status_code == 200
    assert echoed.content == body
    # Stopping H2O stops the program it started (polled: a process's exit has
    # no event we could wait on here).
    await wait_until_gone(info["pid"], "the application H2O spawned, after H2O stopped,")


def _parent_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid in /proc/{pid}/status")
