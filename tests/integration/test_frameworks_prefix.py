"""Flask, Starlette and FastAPI behind a real nginx, through ``trio-fastcgi``,
at the root of the site and mounted under a prefix.

The applications are the files docs/howto/flask.rst and
docs/howto/fastapi.rst show (tests/integration/apps/flaskapp.py,
starletteapp.py, fastapi_prefix_app.py), each run as ``trio-fastcgi
MODULE:app``. nginx runs from the docs' templates on a random (so
non-default) port: docs/deploy/nginx-tcp.conf for the root of the site, and
docs/howto/nginx-prefix.conf for the two ways to mount an application under
a prefix, where nginx splits the path (``fastcgi_split_path_info``) for
``/app`` and the command does (``--script-name /api``) for ``/api``. Each
check asks the framework for the absolute URLs it builds, which must carry
nginx's port and the prefix.

Flask's own checks at the root are in test_flask.py; the helpers here serve
both files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio

from tests.integration.configs import DEPLOY_DIR, render_text
from tests.integration.harness import IS_ROOT, REPO_ROOT, http_client, running
from tests.integration.procs import ManagedProcess, free_port, require_binary, wait_for_tcp

pytestmark = pytest.mark.integration

PREFIX_TEMPLATE = REPO_ROOT / "docs" / "howto" / "nginx-prefix.conf"
ROOT_TEMPLATE = DEPLOY_DIR / "nginx-tcp.conf"
FLASK = "tests.integration.apps.flaskapp:app"
STARLETTE = "tests.integration.apps.starletteapp:app"
FASTAPI = "tests.integration.apps.fastapi_prefix_app:app"
NAMES = {FLASK: "Flask", STARLETTE: "Starlette", FASTAPI: "FastAPI"}
HOWTO = REPO_ROOT / "docs" / "howto"
MiB = 1024 * 1024


@dataclass
class Site:
    """nginx in front of one or more applications: a client and nginx's port."""

    client: httpx.AsyncClient
    port: int
    apps: list[ManagedProcess]

    def url(self, path: str) -> str:
        """The absolute URL of *path* on this site, as a browser would see it."""
        return f"http://127.0.0.1:{self.port}{path}"


@asynccontextmanager
async def served(
    tmp_path: Path, app: str, port: int, *options: str
) -> AsyncIterator[ManagedProcess]:
    """``trio-fastcgi APP --bind 127.0.0.1:PORT OPTIONS``, stopped by its PID."""
    argv = [sys.executable, "-m", "trio_fastcgi", app, f"--bind=127.0.0.1:{port}", *options]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
        ),
    }
    process = ManagedProcess(argv, cwd=REPO_ROOT, env=env, log_path=tmp_path / f"app-{port}.log")
    try:
        try:
            await trio.to_thread.run_sync(
                lambda: wait_for_tcp(port, timeout=30, process=process.process)
            )
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{app} did not start: {exc}\n{process.log()}") from exc
        yield process
    finally:
        await trio.to_thread.run_sync(process.stop)


def write_config(directory: Path, template: Path, values: dict[str, str]) -> Path:
    """*template* rendered with *values* into *directory*."""
    config = directory / template.name
    config.write_text(render_text(template.read_text(), values))
    return config


@asynccontextmanager
async def behind_nginx(
    tmp_path: Path, template: Path, apps: dict[str, tuple[str, ...]]
) -> AsyncIterator[Site]:
    """Each of *apps* (placeholder -> ``MODULE:APP`` and options) served, and
    nginx from *template* in front of them."""
    port = free_port()
    values = {"tmp": str(tmp_path), "port": str(port)}
    async with AsyncExitStack() as stack:
        processes = []
        for placeholder, (app, *options) in apps.items():
            app_port = free_port()
            values[placeholder] = str(app_port)
            processes.append(
                await stack.enter_async_context(served(tmp_path, app, app_port, *options))
            )
        config = write_config(tmp_path, template, values)
        nginx = [require_binary("nginx"), "-c", str(config), "-e", str(tmp_path / "startup.log")]
        if IS_ROOT:
            nginx += ["-g", "user root;"]  # nobody cannot enter pytest's tmp_path
        await stack.enter_async_context(running(nginx, port=port, log_path=tmp_path / "nginx.out"))
        client = await stack.enter_async_context(http_client(port))
        yield Site(client, port, processes)


# -- the checks, each against an application mounted at *prefix* ("" for the root)


async def index_answers(site: Site, prefix: str, app: str) -> None:
    answer = await site.client.get(f"{prefix}/")
    assert answer.status_code == 200, answer.text
    assert answer.text == f"Hello from {NAMES[app]} over FastCGI!\n"


async def urls_carry_port_and_prefix(site: Site, prefix: str) -> None:
    """GET with a query string; the framework's ``request.url`` and
    ``url_for`` give absolute URLs with nginx's port and the prefix."""
    answer = await site.client.get(f"{prefix}/hello", params={"name": "Trio"})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "greeting": "Hello, Trio!",
        "url": site.url(f"{prefix}/hello?name=Trio"),
        "index_url": site.url(f"{prefix}/"),
        "hello_url": site.url(f"{prefix}/hello?name=Trio"),
    }


async def lines_stream(site: Site, prefix: str, count: int = 200_000) -> None:
    """About 2 MB of lines, streamed: no Content-Length, every line in order."""
    received = b""
    async with site.client.stream("GET", f"{prefix}/lines", params={"count": count}) as answer:
        assert answer.status_code == 200
        assert "content-length" not in answer.headers
        async for chunk in answer.aiter_bytes():
            received += chunk
    assert received == "".join(f"line {number}\n" for number in range(count)).encode()


async def json_items_posted(site: Site, prefix: str) -> None:
    """A JSON body of 2 MB reaches the application whole."""
    body = json.dumps({"items": [f"item {number:07d}" for number in range(150_000)]}).encode()
    assert len(body) > 2 * MiB
    answer = await site.client.post(
        f"{prefix}/items", content=body, headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"count": 150_000, "sha256": hashlib.sha256(body).hexdigest()}


async def not_found_inside_and_outside(site: Site, prefix: str, app: str) -> None:
    """A missing page under the prefix is the framework's 404; a path
    outside every prefix never reaches an application (nginx's 404)."""
    inside = await site.client.get(f"{prefix}/missing")
    assert inside.status_code == 404
    assert "nginx" not in inside.text
    if app == FASTAPI:
        assert inside.json() == {"detail": "Not Found"}
    else:
        assert "Not Found" in inside.text
    outside = await site.client.get("/hello")
    assert outside.status_code == 404
    assert "nginx" in outside.text


# -- Starlette and FastAPI at the root -------------------------------------------------


@pytest.mark.parametrize("app", [STARLETTE, FASTAPI], ids=["starlette", "fastapi"])
async def test_asgi_framework_behind_nginx(tmp_path: Path, app: str) -> None:
    async with behind_nginx(tmp_path, ROOT_TEMPLATE, {"app_port": (app,)}) as site:
        await index_answers(site, "", app)
        await urls_carry_port_and_prefix(site, "")
        await json_items_posted(site, "")
        await lines_stream(site, "")


# -- every framework under a prefix, both ways ---------------------------------------------


@pytest.mark.parametrize("app", [FLASK, STARLETTE, FASTAPI], ids=["flask", "starlette", "fastapi"])
async def test_framework_mounted_under_a_prefix(tmp_path: Path, app: str) -> None:
    """/app: nginx splits SCRIPT_NAME and PATH_INFO; /api: the command's
    ``--script-name /api`` does. The same application behaves the same."""
    apps = {"app_port_a": (app,), "app_port_b": (app, "--script-name=/api")}
    async with behind_nginx(tmp_path, PREFIX_TEMPLATE, apps) as site:
        for prefix in ("/app", "/api"):
            await index_answers(site, prefix, app)
            await urls_carry_port_and_prefix(site, prefix)
            await lines_stream(site, prefix, count=1000)
            await not_found_inside_and_outside(site, prefix, app)
            if app != FLASK:
                await json_items_posted(site, prefix)


async def test_fastapi_docs_under_a_prefix(tmp_path: Path) -> None:
    """FastAPI's interactive docs load the OpenAPI schema from under the
    prefix, whichever way the prefix is set."""
    apps = {"app_port_a": (FASTAPI,), "app_port_b": (FASTAPI, "--script-name=/api")}
    async with behind_nginx(tmp_path, PREFIX_TEMPLATE, apps) as site:
        for prefix in ("/app", "/api"):
            docs = await site.client.get(f"{prefix}/docs")
            assert docs.status_code == 200
            assert f"url: '{prefix}/openapi.json'" in docs.text, docs.text
            schema = await site.client.get(f"{prefix}/openapi.json")
            assert schema.status_code == 200
            assert "/items" in schema.json()["paths"]


def module_file(app: str) -> Path:
    """The source file of ``MODULE:APP``."""
    return REPO_ROOT / (app.partition(":")[0].replace(".", "/") + ".py")


@pytest.mark.parametrize(
    ("page", "apps"), [("flask.rst", [FLASK]), ("fastapi.rst", [FASTAPI, STARLETTE])]
)
def test_howto_pages_show_the_tested_files(page: str, apps: list[str]) -> None:
    """The how-to pages include the very files these tests serve and
    configure nginx with, so the pages cannot drift from what is tested."""
    included = {
        (HOWTO / path).resolve()
        for path in re.findall(r"^\.\. literalinclude:: (\S+)$", (HOWTO / page).read_text(), re.M)
    }
    assert included == {PREFIX_TEMPLATE, *(module_file(app) for app in apps)}
