"""spawn-fcgi starting the ``trio-fastcgi`` command with its listening socket
on fd 0, on TCP and on a unix socket, behind nginx, end to end.

The scripts docs/deploy/spawn-fcgi-tcp.sh and spawn-fcgi-unix.sh run exactly
as the docs show them, in front of them nginx from nginx-tcp.conf and
nginx-unix.conf.
"""

from __future__ import annotations

import os
import random
import stat
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio

from tests.integration.apps.echo import GREETING
from tests.integration.configs import render, spawned_app_values
from tests.integration.procs import (
    ManagedProcess,
    free_port,
    require_binary,
    wait_for_tcp,
    wait_for_unix,
)
from tests.integration.test_nginx import nginx

pytestmark = pytest.mark.integration

KiB = 1024


@asynccontextmanager
async def spawned(tmp_path: Path, template: str, **values: object) -> AsyncIterator[ManagedProcess]:
    """Run a docs/deploy spawn-fcgi script until it serves; stop it by PID."""
    binary = require_binary("spawn-fcgi")
    script = render(template, tmp_path, **spawned_app_values(sys.executable), **values)
    env = {**os.environ, "PATH": os.pathsep.join([os.path.dirname(binary), os.environ["PATH"]])}
    process = ManagedProcess(["/bin/sh", str(script)], env=env, log_path=tmp_path / "app.log")
    try:
        if "app_port" in values:
            ready = partial(wait_for_tcp, int(str(values["app_port"])), process=process.process)
        else:
            ready = partial(wait_for_unix, str(values["app_socket"]))
        try:
            await trio.to_thread.run_sync(ready)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"spawn-fcgi did not start: {exc}\n{process.log()}") from exc
        yield process
    finally:
        await trio.to_thread.run_sync(process.stop)
    assert process.process.returncode == 0, process.log()


async def test_spawn_fcgi_tcp(tmp_path: Path) -> None:
    body = random.Random(41).randbytes(512 * KiB)
    app_port = free_port()
    async with (
        spawned(tmp_path, "spawn-fcgi-tcp.sh", app_port=app_port) as app,
        nginx(tmp_path, "nginx-tcp.conf", app_port=app_port) as client,
    ):
        whoami = await client.get("/whoami")
        hello = await client.get("/hello")
        echoed = await client.post("/echo", content=body)
    assert whoami.status_code == 200, whoami.text
    info = whoami.json()
    # spawn-fcgi -n execs the command in its own process, which serves there.
    assert info["pid"] == app.pid
    assert info["fd0_family"] == "AF_INET"
    assert hello.content == GREETING
    assert echoed.status_code == 200
    assert echoed.content == body


async def test_spawn_fcgi_unix(tmp_path: Path) -> None:
    body = random.Random(42).randbytes(512 * KiB)
    socket_path = tmp_path / "app.sock"
    async with (
        spawned(tmp_path, "spawn-fcgi-unix.sh", app_socket=socket_path) as app,
        nginx(tmp_path, "nginx-unix.conf", app_socket=socket_path) as client,
    ):
        mode = stat.S_IMODE(socket_path.stat().st_mode)
        whoami = await client.get("/whoami")
        hello = await client.get("/hello")
        echoed = await client.post("/echo", content=body)
    assert mode == 0o660
    assert whoami.status_code == 200, whoami.text
    info = whoami.json()
    assert info["pid"] == app.pid
    assert info["fd0_family"] == "AF_UNIX"
    assert hello.content == GREETING
    assert echoed.status_code == 200
    assert echoed.content == body
