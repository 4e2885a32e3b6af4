"""lighttpd (mod_fastcgi) with the application, end to end: as a Responder, as
an Authorizer guarding static files, and started by lighttpd itself
("bin-path", listening socket on fd 0).

lighttpd runs from the templates in docs/deploy/ (lighttpd-responder.conf,
lighttpd-authorizer.conf, lighttpd-bin-path.conf), exactly as the docs show.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

from tests.integration.apps import spawned_app
from tests.integration.apps.echo import GREETING, PASSWORD, TOKEN, USER, EchoApp
from tests.integration.configs import render
from tests.integration.harness import REPO_ROOT, http_client, running, serve_app_tcp
from tests.integration.procs import ManagedProcess, free_port, require_binary, wait_until_gone
from trio_fastcgi import Role

pytestmark = pytest.mark.integration


@asynccontextmanager
async def lighttpd(
    tmp_path: Path, template: str, **values: object
) -> AsyncIterator[tuple[httpx.AsyncClient, ManagedProcess]]:
    """Run lighttpd from a docs/deploy template; yield an HTTP client for it."""
    port = free_port()
    docroot = tmp_path / "htdocs"
    docroot.mkdir(exist_ok=True)
    config = render(template, tmp_path, tmp=tmp_path, port=port, docroot=docroot, **values)
    argv = [require_binary("lighttpd"), "-D", "-f", str(config)]
    async with (
        running(argv, port=port, log_path=tmp_path / "lighttpd.out") as process,
        http_client(port) as client,
    ):
        yield client, process


async def test_lighttpd_responder(nursery: trio.Nursery, app: EchoApp, tmp_path: Path) -> None:
    app_port = await serve_app_tcp(nursery, app)
    body = random.Random(4).randbytes(400_000)
    async with lighttpd(tmp_path, "lighttpd-responder.conf", app_port=app_port) as (client, _):
        hello = await client.get("/app/hello")
        echoed = await client.post("/app/echo", content=body)
        params = await client.get("/app/params", params={"a": "b"})
    assert hello.status_code == 200
    assert hello.content == GREETING
    assert echoed.status_code == 200
    assert echoed.content == body
    assert params.json()["QUERY_STRING"] == "a=b"
    assert app.stats.roles == [Role.RESPONDER] * 3


async def test_lighttpd_authorizer_guards_static_files(
    nursery: trio.Nursery, app: EchoApp, tmp_path: Path
) -> None:
    app_port = await serve_app_tcp(nursery, app, roles={Role.AUTHORIZER})
    files = tmp_path / "htdocs" / "files"
    files.mkdir(parents=True)
    (files / "secret.txt").write_bytes(b"the secret file\n")
    (files / "token.shtml").write_text('token=<!--#echo var="AUTH_TOKEN" -->\n')
    async with lighttpd(tmp_path, "lighttpd-authorizer.conf", app_port=app_port) as (client, _):
        anonymous = await client.get("/files/secret.txt")
        wrong = await client.get("/files/secret.txt", auth=(USER, "wrong"))
        allowed = await client.get("/files/secret.txt", auth=(USER, PASSWORD))
        token = await client.get("/files/token.shtml", auth=(USER, PASSWORD))
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == 'Basic realm="trio-fastcgi"'
    assert wrong.status_code == 403
    assert wrong.content == b"forbidden\n"
    assert allowed.status_code == 200
    assert allowed.content == b"the secret file\n"
    # Variable-AUTH_TOKEN from the Authorizer's 200 became the request's
    # environment variable AUTH_TOKEN, which the SSI page prints.
    assert token.status_code == 200
    assert token.content == f"token={TOKEN}\n".encode()
    assert app.stats.roles == [Role.AUTHORIZER] * 4
    # lighttpd sends no FCGI_ROLE param (Apache does); the role is in BEGIN_REQUEST.
    assert "CONTENT_LENGTH" not in app.stats.authorizer_params[0]


async def test_lighttpd_bin_path_spawns_app_on_fd0(tmp_path: Path) -> None:
    pythonpath = os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    body = random.Random(5).randbytes(200_000)
    async with lighttpd(
        tmp_path,
        "lighttpd-bin-path.conf",
        python=sys.executable,
        app_script=spawned_app.__file__,
        pythonpath=pythonpath,
    ) as (client, lighttpd_process):
        whoami = await client.get("/spawned/whoami")
        hello = await client.get("/spawned/hello")
        echoed = await client.post("/spawned/echo", content=body)
    assert whoami.status_code == 200, whoami.text
    info = whoami.json()
    assert info["ppid"] == lighttpd_process.pid
    assert info["pid"] != os.getpid()
    assert info["fd0_family"] == "AF_UNIX"
    assert hello.content == GREETING
    assert echoed.content == body
    # lighttpd stops the program it started when it shuts down (polled: a
    # process's exit has no event we could wait on here).
    await wait_until_gone(info["pid"], "the application lighttpd spawned, after lighttpd stopped,")
