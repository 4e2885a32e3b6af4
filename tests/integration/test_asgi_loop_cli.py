"""``trio-fastcgi --asgi-loop`` with Django's ASGI application, as a user runs it.

The command serves the Django project of tests/integration/apps/djangoproject
in a process of its own; this test talks FastCGI to it with
``trio_fastcgi.client`` (nginx in front is test_django.py's part). With
``--asgi-loop auto`` Django runs on the asyncio loop and the process stops
cleanly on SIGTERM; with ``--asgi-loop trio`` the log says at start-up, and
again for the failing request, that the application needs asyncio.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.integration.apps.payload import stream_bytes
from tests.integration.harness import REPO_ROOT
from tests.integration.procs import ManagedProcess, free_port, wait_for_tcp
from tests.integration.test_django import PROJECT_DIR, django_env
from trio_fastcgi.client import open_tcp_client

pytestmark = pytest.mark.integration


def params(path: str, query: str = "") -> dict[str, str]:
    return {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "REQUEST_URI": f"{path}?{query}" if query else path,
        "QUERY_STRING": query,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80",
        "HTTP_HOST": "127.0.0.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "50000",
    }


def start(tmp_path: Path, loop: str) -> tuple[ManagedProcess, int]:
    (tmp_path / "data").mkdir()
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "trio_fastcgi",
        "project.asgi:application",
        f"--app-dir={PROJECT_DIR}",
        f"--bind=127.0.0.1:{port}",
        f"--asgi-loop={loop}",
    ]
    process = ManagedProcess(
        argv, cwd=REPO_ROOT, env=django_env(tmp_path / "data"), log_path=tmp_path / "app.log"
    )
    try:
        wait_for_tcp(port, timeout=30, process=process.process)
    except BaseException:
        process.stop()
        raise
    return process, port


def stop(process: ManagedProcess) -> int:
    """SIGTERM by PID; the exit status (None if it had to be killed)."""
    process.process.send_signal(signal.SIGTERM)
    try:
        return process.process.wait(20)
    except subprocess.TimeoutExpired:
        process.stop(timeout=1)
        raise AssertionError(f"no exit within 20 s of SIGTERM\n{process.log()}") from None


async def test_django_asgi_with_asgi_loop_auto(tmp_path: Path) -> None:
    process, port = await trio.to_thread.run_sync(start, tmp_path, "auto")
    try:
        size = 3 * 1024 * 1024 + 7
        async with open_tcp_client("127.0.0.1", port) as client:
            with trio.fail_after(30):
                index = await client.request(params("/"))
                streamed = await client.request(params("/stream", f"size={size}&seed=3"))
    finally:
        status = await trio.to_thread.run_sync(stop, process)
    log = process.log()
    assert index.parse_cgi().status == 200, log
    assert index.parse_cgi().body == b"Hello from Django over FastCGI!\n"
    body = streamed.parse_cgi().body
    expected = b"".join(stream_bytes(size, 3))
    assert (len(body), hashlib.sha256(body).digest()) == (
        len(expected),
        hashlib.sha256(expected).digest(),
    )
    # Stopped cleanly: the asyncio loop's thread ended with the lifespan.
    assert status == 0, log
    assert "Traceback" not in log, log
    assert "did not end" not in log, log


async def test_django_asgi_with_asgi_loop_trio_says_why(tmp_path: Path) -> None:
    process, port = await trio.to_thread.run_sync(start, tmp_path, "trio")
    try:
        async with open_tcp_client("127.0.0.1", port) as client:
            with trio.fail_after(30):  # an answer, not a hang
                answer = await client.request(params("/"))
    finally:
        status = await trio.to_thread.run_sync(stop, process)
    log = process.log()
    assert answer.parse_cgi().status == 500
    # Said when the worker loads the application, and again for the request.
    warned = log.find("needs an asyncio loop, but loop='trio' was chosen")
    failed = log.find("the ASGI application needs an asyncio loop")
    assert 0 <= warned < failed, log
    assert "--asgi-loop asyncio" in log, log
    assert status == 0, log
