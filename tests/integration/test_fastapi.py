"""A real FastAPI application behind a real nginx, through ``trio-fastcgi``:
background tasks run after the response, which ends first, and the lifespan
runs around serving.

The application is tests/integration/apps/fastapiapp.py, served as
``trio-fastcgi tests.integration.apps.fastapiapp:app``, at the root and
mounted under ``/api`` (``--script-name /api``), with nginx from
docs/deploy/nginx-tcp.conf (a new FastCGI connection per request, which nginx
closes once it has the response). Each background task waits for a marker
file that the test creates only once it has read the whole response: if the
response ended only with the task, the test would wait forever (here: until
the client's timeout). The task then outlives the request by more than the
grace an aborted request gets, and writes its own marker.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio

from tests.integration.configs import DEPLOY_DIR, render_text
from tests.integration.harness import IS_ROOT, REPO_ROOT, http_client, running
from tests.integration.procs import ManagedProcess, free_port, require_binary, wait_for_tcp

pytestmark = pytest.mark.integration

APP = "tests.integration.apps.fastapiapp:app"
#: Seconds the test waits for a marker file the application writes.
MARKER_TIMEOUT = 30.0
#: The client gives up on a response after this long: a response held back
#: until its background task ends would never come, since the task waits for
#: the test.
RESPONSE_TIMEOUT = 15.0


@dataclass
class Site:
    client: httpx.AsyncClient
    app: ManagedProcess
    markers: Path


@asynccontextmanager
async def fastapi_site(tmp_path: Path, *options: str) -> AsyncIterator[Site]:
    """The application served by ``trio-fastcgi``, nginx in front of it."""
    markers = tmp_path / "markers"
    markers.mkdir()
    app_port, port = free_port(), free_port()
    argv = [sys.executable, "-m", "trio_fastcgi", APP, f"--bind=127.0.0.1:{app_port}", *options]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
        ),
        "FASTAPI_TEST_DIR": str(markers),
    }
    app = ManagedProcess(argv, cwd=REPO_ROOT, env=env, log_path=tmp_path / "app.log")
    try:
        try:
            await trio.to_thread.run_sync(
                lambda: wait_for_tcp(app_port, timeout=30, process=app.process)
            )
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{APP} did not start: {exc}\n{app.log()}") from exc
        config = tmp_path / "nginx-tcp.conf"
        template = (DEPLOY_DIR / "nginx-tcp.conf").read_text()
        values = {"tmp": str(tmp_path), "port": str(port), "app_port": str(app_port)}
        config.write_text(render_text(template, values))
        nginx = [require_binary("nginx"), "-c", str(config), "-e", str(tmp_path / "startup.log")]
        if IS_ROOT:
            nginx += ["-g", "user root;"]  # nobody cannot enter pytest's tmp_path
        async with (
            running(nginx, port=port, log_path=tmp_path / "nginx.out"),
            http_client(port) as client,
        ):
            client.timeout = httpx.Timeout(RESPONSE_TIMEOUT)
            yield Site(client, app, markers)
    finally:
        await trio.to_thread.run_sync(app.stop)


def marker_text(path: Path) -> str | None:
    """The text of the marker file *path*, or None if it is not there yet."""
    return path.read_text() if path.exists() else None


async def wait_for_marker(path: Path, app: ManagedProcess) -> str:
    """The text of *path* once the application wrote it."""
    with trio.move_on_after(MARKER_TIMEOUT):
        for _ in range(int(MARKER_TIMEOUT / 0.05) + 1):
            text = marker_text(path)
            if text is not None:
                return text
            await trio.sleep(0.05)
    raise AssertionError(f"{path.name} never appeared; application log:\n{app.log()}")


async def json_then_background(site: Site, prefix: str, name: str) -> None:
    answer = await site.client.get(f"{prefix}/json", params={"name": name})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-length"] == str(len(answer.content))
    pid = int((site.markers / "startup").read_text())
    assert answer.json() == {"name": name, "root_path": prefix, "pid": pid}
    # The whole response is here while the task still waits for the test.
    assert not (site.markers / f"{name}.done").exists()
    (site.markers / f"{name}.go").touch()
    assert await wait_for_marker(site.markers / f"{name}.done", site.app) == "async"


async def stream_then_background(site: Site, prefix: str, name: str) -> None:
    async with site.client.stream("GET", f"{prefix}/stream", params={"name": name}) as answer:
        assert answer.status_code == 200
        assert "content-length" not in answer.headers
        body = await answer.aread()
    assert body == b"".join(b"line %d\n" % number for number in range(100))
    assert not (site.markers / f"{name}.done").exists()
    (site.markers / f"{name}.go").touch()
    assert await wait_for_marker(site.markers / f"{name}.done", site.app) == "thread"


@pytest.mark.parametrize("prefix", ["", "/api"], ids=["root", "prefix"])
async def test_fastapi_background_tasks_after_the_response(tmp_path: Path, prefix: str) -> None:
    options = [f"--script-name={prefix}"] if prefix else []
    async with fastapi_site(tmp_path, *options) as site:
        # The socket listens before the lifespan startup is done (connections
        # wait in the backlog); the startup marker comes with it.
        await wait_for_marker(site.markers / "startup", site.app)
        await json_then_background(site, prefix, "json")
        await stream_then_background(site, prefix, "stream")
        # Both at once, each task waiting on its own marker.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(json_then_background, site, prefix, "json2")
            nursery.start_soon(stream_then_background, site, prefix, "stream2")
        assert not (site.markers / "shutdown").exists()
    assert (site.markers / "shutdown").read_text() == (site.markers / "startup").read_text()


async def test_fastapi_stop_cancels_a_stuck_background_task(tmp_path: Path) -> None:
    """A task still running when the server stops gets the grace, then is
    cancelled with a WARNING, and the lifespan shutdown still runs."""
    async with fastapi_site(tmp_path) as site:
        await wait_for_marker(site.markers / "startup", site.app)
        answer = await site.client.get("/json", params={"name": "stuck"})
        assert answer.json()["name"] == "stuck"
    # No stuck.go: the task waits until it is cancelled.
    assert not (site.markers / "stuck.done").exists()
    assert (site.markers / "shutdown").exists()
    log = site.app.log()
    assert "cancelling 1 ASGI application(s) still running after their response" in log, log
    assert site.app.process.returncode == 0, log
