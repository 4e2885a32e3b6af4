"""libfcgi's ``cgi-fcgi`` bridge (Debian's libfcgi-bin) against the application:
a FastCGI client no one here wrote, which sends its CGI environment as params
and its stdin as the body, and prints the CGI response."""

from __future__ import annotations

import json
import os
import random

import pytest
import trio

from tests.integration.apps.echo import GREETING, EchoApp
from tests.integration.harness import serve_app_tcp
from tests.integration.procs import require_binary

pytestmark = pytest.mark.integration


async def cgi_fcgi(
    app_port: int, path: str, *, method: str = "GET", query: str = "", body: bytes = b""
) -> tuple[bytes, bytes]:
    """Run one request through ``cgi-fcgi -bind``; return (head, body)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "GATEWAY_INTERFACE": "CGI/1.1",
        "REQUEST_METHOD": method,
        "REQUEST_URI": f"{path}?{query}" if query else path,
        "SCRIPT_NAME": path,
        "QUERY_STRING": query,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_LENGTH": str(len(body)),
    }
    argv = [require_binary("cgi-fcgi"), "-bind", "-connect", f"127.0.0.1:{app_port}"]
    with trio.fail_after(30):
        result = await trio.run_process(
            argv, stdin=body, capture_stdout=True, capture_stderr=True, env=env, check=False
        )
    assert result.returncode == 0, result.stderr
    head, _, payload = result.stdout.partition(b"\r\n\r\n")
    return head, payload


async def test_cgi_fcgi_get(nursery: trio.Nursery, app: EchoApp) -> None:
    app_port = await serve_app_tcp(nursery, app)
    head, body = await cgi_fcgi(app_port, "/hello")
    assert head.split(b"\r\n")[0] == b"Status: 200 OK"
    assert b"Content-Type: text/plain; charset=utf-8" in head.split(b"\r\n")
    assert body == GREETING


async def test_cgi_fcgi_params_from_environment(nursery: trio.Nursery, app: EchoApp) -> None:
    app_port = await serve_app_tcp(nursery, app)
    _, body = await cgi_fcgi(app_port, "/params", query="a=1&b=two")
    params = json.loads(body)
    assert params["QUERY_STRING"] == "a=1&b=two"
    assert params["REQUEST_METHOD"] == "GET"
    assert params["GATEWAY_INTERFACE"] == "CGI/1.1"


async def test_cgi_fcgi_post_body(nursery: trio.Nursery, app: EchoApp) -> None:
    app_port = await serve_app_tcp(nursery, app)
    payload = random.Random(6).randbytes(200_000)
    head, body = await cgi_fcgi(app_port, "/echo", method="POST", body=payload)
    assert head.split(b"\r\n")[0] == b"Status: 200 OK"
    assert body == payload
