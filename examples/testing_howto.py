"""Tests of handlers with trio_fastcgi.testing: the examples of the testing
how-to (docs/howto/testing.rst). They test examples/tutorial/app.py,
examples/authorizer.py and examples/text_filter.py, and run in this project's
test suite (tests/test_docs.py).

Needs pytest and pytest-trio, with ``trio_mode = true`` in the pytest
configuration (or ``@pytest.mark.trio`` on each test).
"""

from __future__ import annotations

import base64
import logging

import pytest
import trio
import trio.testing

import trio_fastcgi
import trio_fastcgi.client
from examples.authorizer import authorizer
from examples.text_filter import text_to_html
from examples.tutorial.app import app
from trio_fastcgi import ProtocolStatus, Role
from trio_fastcgi.testing import open_test_client


# -- start: basics
async def test_greeting() -> None:
    async with open_test_client(app) as client:
        response = await client.get("/", query={"name": "Trio"})
    assert response.status == 200
    assert response.header("Content-Type") == "text/plain; charset=utf-8"
    assert response.text == "Hello, Trio!\n"


async def test_upper() -> None:
    async with open_test_client(app) as client:
        response = await client.post("/upper", body="quiet", content_type="text/plain")
    assert response.body == b"QUIET"
    assert response.app_status == 0  # the FastCGI result is there too
    # -- end: basics


# -- start: failures
async def broken(request: trio_fastcgi.Request) -> None:
    raise KeyError("oops")


async def test_exceptions_reach_the_test() -> None:
    async with open_test_client(broken) as client:
        with pytest.raises(KeyError):
            await client.get("/")


async def test_exceptions_become_500() -> None:
    async with open_test_client(broken, raise_server_exceptions=False) as client:
        response = await client.get("/")
    assert response.status == 500
    assert response.app_status == 1
    # -- end: failures


# -- start: roles
def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def test_authorizer() -> None:
    async with open_test_client(authorizer, roles={Role.AUTHORIZER}) as client:
        allowed = await client.authorize("/private/", headers=basic("alice", "wonderland"))
        denied = await client.authorize("/private/", headers=basic("alice", "guess"))
    assert allowed.status == 200
    assert allowed.variables == {"AUTH_USER": "alice"}
    assert denied.status == 401
    assert denied.header("WWW-Authenticate") == 'Basic realm="example"'


async def test_filter() -> None:
    async with open_test_client(text_to_html, roles={Role.FILTER}) as client:
        response = await client.filter("/notes.txt", b"1 < 2\n", data_last_mod=0)
    assert response.header("Last-Modified") == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert response.text.endswith("<pre>1 &lt; 2\n</pre>\n")
    # -- end: roles


# -- start: abort
async def test_abort_cancels_the_countdown(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with (
        open_test_client(app) as client,
        client.open_request("GET", "/countdown") as request,
    ):
        head_and_first_line = b""
        while b"5...\n" not in head_and_first_line:
            head_and_first_line += await request.stdout.receive_some()
        await request.abort()  # what HAProxy sends when the client goes away
        end = await request.wait_ended()
    assert end.protocol_status is ProtocolStatus.REQUEST_COMPLETE
    assert "countdown cancelled: the client went away" in caplog.text
    # -- end: abort


# -- start: tcp
async def test_over_tcp(nursery: trio.Nursery) -> None:
    listeners = await nursery.start(trio_fastcgi.serve_tcp, app, 0)
    port = listeners[0].socket.getsockname()[1]
    async with trio_fastcgi.client.open_tcp_client("127.0.0.1", port) as client:
        response = await client.request({"REQUEST_METHOD": "GET", "REQUEST_URI": "/"})
    assert response.parse_cgi().body == b"Hello, world!\n"
    # -- end: tcp
