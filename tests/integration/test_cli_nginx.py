"""The ``trio-fastcgi`` command behind a real nginx, end to end.

nginx runs from the docs/deploy templates; the application is the command
started as a subprocess serving the Flask and Starlette examples, with worker
processes. Also: a worker killed with SIGKILL is replaced while nginx keeps
getting answers, and a graceful stop under load never truncates a response.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from tests.integration.configs import render
from tests.integration.harness import IS_ROOT, REPO_ROOT, http_client, running
from tests.integration.procs import ManagedProcess, free_port, require_binary, wait_for_tcp

pytestmark = pytest.mark.integration


def nginx_argv(config: Path) -> list[str]:
    argv = [require_binary("nginx"), "-c", str(config), "-e", str(config.parent / "startup.log")]
    if IS_ROOT:
        # Under root nginx's default worker user cannot enter pytest's tmp_path.
        argv += ["-g", "user root;"]
    return argv


@asynccontextmanager
async def app_command(
    tmp_path: Path, app: str, *args: str
) -> AsyncIterator[tuple[ManagedProcess, int]]:
    """``trio-fastcgi APP`` on a free port, stopped (SIGTERM) at the end."""
    port = free_port()
    argv = [sys.executable, "-m", "trio_fastcgi", app, f"--bind=127.0.0.1:{port}", *args]
    process = ManagedProcess(argv, cwd=REPO_ROOT, log_path=tmp_path / "app.log")
    try:
        await trio.to_thread.run_sync(partial(wait_for_tcp, port, process=process.process))
        yield process, port
    finally:
        await trio.to_thread.run_sync(process.stop)


@asynccontextmanager
async def behind_nginx(
    tmp_path: Path, app: str, *args: str, template: str = "nginx-tcp.conf"
) -> AsyncIterator[tuple[ManagedProcess, httpx.AsyncClient]]:
    async with app_command(tmp_path, app, *args) as (process, app_port):
        port = free_port()
        config = render(template, tmp_path, tmp=tmp_path, port=port, app_port=app_port)
        async with (
            running(nginx_argv(config), port=port, log_path=tmp_path / "nginx.out"),
            http_client(port, limits=httpx.Limits(max_connections=100)) as client,
        ):
            yield process, client


def wait_for_log(process: ManagedProcess, pattern: str, count: int = 1) -> None:
    deadline = time.monotonic() + 30
    while len(re.findall(pattern, process.log())) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{pattern!r} x{count} not in the log:\n{process.log()}")
        time.sleep(0.05)


@pytest.mark.parametrize("template", ["nginx-tcp.conf", "nginx-keepalive.conf"])
async def test_cli_nginx_flask(tmp_path: Path, template: str) -> None:
    body = random.Random(4).randbytes(1024 * 1024)
    async with behind_nginx(
        tmp_path, "examples.flask_app:app", "--workers=2", template=template
    ) as (process, client):
        index = await client.get("/")
        echoed = await client.post("/echo", content=body)
        seen = await client.get("/headers?a=b", headers={"User-Agent": "nginx-test"})
        streamed = await client.get("/stream?n=50")
        failed = await client.get("/fail")
    assert index.text == "Hello from Flask over FastCGI!\n"
    assert echoed.status_code == 200
    assert echoed.content == body
    assert echoed.headers["x-length"] == str(len(body))
    assert json.loads(seen.content) == {
        "path": "/headers",
        "script_root": "",
        "args": {"a": "b"},
        "user_agent": "nginx-test",
        "scheme": "http",
    }
    assert streamed.text == "".join(f"line {i}\n" for i in range(50))
    assert failed.status_code == 500
    assert "this view fails on purpose" in process.log()  # logged with its traceback


@pytest.mark.parametrize("template", ["nginx-tcp.conf", "nginx-keepalive.conf"])
async def test_cli_nginx_starlette(tmp_path: Path, template: str) -> None:
    body = random.Random(5).randbytes(512 * 1024)
    async with behind_nginx(
        tmp_path, "examples.starlette_app:app", "--workers=2", template=template
    ) as (_, client):
        index = await client.get("/")
        echoed = await client.post("/echo", content=body)
        info = await client.get("/info?k=v")
        streamed = await client.get("/stream?n=20")
        failed = await client.get("/fail")
    assert index.text == "Hello from Starlette over FastCGI!\n"
    assert echoed.content == body
    assert info.json() == {
        "path": "/info",
        "root_path": "",
        "query": {"k": "v"},
        "user_agent": info.request.headers["user-agent"],
        "lifespan_started": True,
        "fastcgi_role": "responder",
    }
    assert streamed.text == "".join(f"line {i}\n" for i in range(20))
    assert failed.status_code == 500


async def test_cli_nginx_worker_killed_is_replaced(tmp_path: Path) -> None:
    async with behind_nginx(tmp_path, "examples.flask_app:app", "--workers=2") as (
        process,
        client,
    ):
        await trio.to_thread.run_sync(wait_for_log, process, r"is serving", 2)
        pids = [
            int(p) for p in re.findall(r"worker (\d+) \(generation 1\) is serving", process.log())
        ]
        os.kill(pids[0], signal.SIGKILL)
        await trio.to_thread.run_sync(wait_for_log, process, r"killed by SIGKILL; starting", 1)
        await trio.to_thread.run_sync(wait_for_log, process, r"is serving", 3)
        statuses = [(await client.get("/")).status_code for _ in range(30)]
    assert statuses == [200] * 30


async def test_cli_nginx_graceful_stop_under_load_truncates_nothing(tmp_path: Path) -> None:
    """Requests in flight when SIGTERM arrives finish; requests sent during the
    stop get a complete answer or nginx's 502 for a refused upstream; httpx
    raises on any truncated body, which fails the test."""
    in_flight = trio.Semaphore(0)
    early: list[tuple[int, bytes, float]] = []
    late: list[tuple[int, bytes]] = []

    async def ask_streaming(client: httpx.AsyncClient) -> None:
        body = b""
        async with client.stream("GET", "/stream?n=5&delay=0.2") as response:
            async for chunk in response.aiter_bytes():
                if not body:
                    in_flight.release()  # the first line is here: it is in flight
                    first = trio.current_time()
                body += chunk
        early.append((response.status_code, body, trio.current_time() - first))

    async def ask(client: httpx.AsyncClient) -> None:
        response = await client.get("/")
        late.append((response.status_code, response.content))

    async with behind_nginx(
        tmp_path, "examples.flask_app:app", "--workers=2", "--graceful-timeout=20"
    ) as (process, client):
        await trio.to_thread.run_sync(wait_for_log, process, r"is serving", 2)
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(ask_streaming, client)
            with trio.fail_after(30):
                for _ in range(20):
                    await in_flight.acquire()
            os.kill(process.pid, signal.SIGTERM)
            while process.process.poll() is None:
                nursery.start_soon(ask, client)
                await trio.sleep(0.05)  # pacing the late requests
        assert process.process.returncode == 0, process.log()
    assert [(status, body) for status, body, _ in early] == [
        (200, b"line 0\nline 1\nline 2\nline 3\nline 4\n")
    ] * 20
    # The rest of each early response came after the first line: it was
    # really in flight when the stop began.
    assert all(rest >= 0.5 for _, _, rest in early)
    assert late
    for status, body in late:
        assert (status, body) == (200, b"Hello from Flask over FastCGI!\n") or status == 502


def _combined_fields(line: str) -> tuple[str, ...]:
    """Client, request line, status, body bytes, referer and user agent of a
    combined-format log line."""
    match = re.match(r'(\S+) - \S+ \[[^]]+\] "([^"]*)" (\d+|-) (\d+|-) "([^"]*)" "([^"]*)"', line)
    assert match is not None, line
    return match.groups()


async def test_cli_nginx_access_log_agrees_with_nginx(tmp_path: Path) -> None:
    access_log = tmp_path / "app-access.log"
    body = random.Random(6).randbytes(100_000)
    async with behind_nginx(
        tmp_path, "examples.flask_app:app", "--workers=2", f"--access-log={access_log}"
    ) as (_, client):
        seen = await client.get(
            "/headers?a=b", headers={"User-Agent": "nginx-test", "Referer": "http://ref.example/"}
        )
        echoed = await client.post("/echo", content=body)
        failed = await client.get("/fail")
        missing = await client.get("/no/such/page")
    assert [seen.status_code, echoed.status_code, failed.status_code, missing.status_code] == [
        200, 200, 500, 404,
    ]  # fmt: skip
    ours = access_log.read_text().splitlines()
    theirs = (tmp_path / "nginx-access.log").read_text().splitlines()
    assert len(ours) == len(theirs) == 4, (ours, theirs)
    # Status, body size, request line, client, referer and user agent: what
    # the application logged is what nginx sent.
    assert [_combined_fields(line) for line in ours] == [
        _combined_fields(entry) for entry in theirs
    ]
    assert _combined_fields(ours[1])[2:4] == ("200", str(len(body)))
    for line in ours:
        assert re.search(r" request_id=1 duration=\d+\.\d{6}$", line), line
