"""trio_fastcgi.testing: the in-memory test client, through the real connection code."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

import trio_fastcgi
from trio_fastcgi import Overloaded, ProtocolStatus, Request, Role
from trio_fastcgi.client import CGIResponseError
from trio_fastcgi.testing import open_test_client


# The example from the module docstring, verbatim.
async def hello(request: trio_fastcgi.Request) -> None:
    query = urllib.parse.parse_qs(request.params["QUERY_STRING"])
    await request.respond(f"hello {query.get('name', ['world'])[0]}")


async def test_hello() -> None:
    async with open_test_client(hello) as client:
        response = await client.get("/", query={"name": "trio"})
    assert response.status == 200
    assert response.text == "hello trio"
    assert response.header("content-type") == "text/plain; charset=utf-8"


async def show_params(request: Request) -> int:
    body = await request.stdin.receive_all()
    params = {k: v for k, v in request.params.items()}
    params["body"] = body.decode()
    await request.respond(json.dumps(params), content_type="application/json")
    return 0


async def test_testing_get_builds_cgi_params() -> None:
    async with open_test_client(show_params) as client:
        response = await client.get(
            "/app/items/caf%C3%A9?x=1",
            query=[("y", "a b")],
            headers={"Accept": "text/html", "X-Forwarded-For": "10.0.0.1"},
            script_name="/app",
        )
    params = response.json()
    assert params["REQUEST_METHOD"] == "GET"
    assert params["SCRIPT_NAME"] == "/app"
    assert params["PATH_INFO"] == "/items/caf\u00e9"
    assert params["QUERY_STRING"] == "x=1&y=a+b"
    assert params["REQUEST_URI"] == "/app/items/caf%C3%A9?x=1&y=a+b"
    assert params["HTTP_ACCEPT"] == "text/html"
    assert params["HTTP_X_FORWARDED_FOR"] == "10.0.0.1"
    assert params["HTTP_HOST"] == "testserver"
    assert (params["SERVER_NAME"], params["SERVER_PORT"]) == ("testserver", "80")
    assert params["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert params["GATEWAY_INTERFACE"] == "CGI/1.1"
    assert params["REMOTE_ADDR"] == "127.0.0.1"
    assert "CONTENT_LENGTH" not in params
    assert "HTTPS" not in params


async def test_testing_post_body_json_form() -> None:
    async with open_test_client(show_params, base_url="https://example.org:8443") as client:
        raw = await client.post("/p", body=b"abc", content_type="text/plain")
        as_json = await client.put("/j", json={"a": [1, 2]})
        form = await client.patch("/f", form={"q": "x y", "n": "1"})
        empty = await client.post("/e")
    params = raw.json()
    assert (params["REQUEST_METHOD"], params["body"]) == ("POST", "abc")
    assert (params["CONTENT_LENGTH"], params["CONTENT_TYPE"]) == ("3", "text/plain")
    assert (params["HTTPS"], params["SERVER_PORT"]) == ("on", "8443")
    assert params["HTTP_HOST"] == "example.org:8443"
    params = as_json.json()
    assert params["CONTENT_TYPE"] == "application/json"
    assert json.loads(params["body"]) == {"a": [1, 2]}
    params = form.json()
    assert params["CONTENT_TYPE"] == "application/x-www-form-urlencoded"
    assert urllib.parse.parse_qs(params["body"]) == {"q": ["x y"], "n": ["1"]}
    assert empty.json()["CONTENT_LENGTH"] == "0"


async def test_testing_streamed_body_has_no_content_length() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"one ", b"two ", b"three"):
            await trio.lowlevel.checkpoint()
            yield part

    async with open_test_client(show_params) as client:
        response = await client.post("/upload", body=chunks())
    params = response.json()
    assert params["body"] == "one two three"
    assert "CONTENT_LENGTH" not in params


async def test_testing_response_fields() -> None:
    async def handler(request: Request) -> int:
        await request.stderr.send_all(b"logged\n")
        await request.respond(b"gone", status=410, headers=[("X-A", "1"), ("X-A", "2")])
        return 9

    async with open_test_client(handler) as client:
        response = await client.delete("/thing")
    assert response.status == 410
    assert response.headers[:2] == [("X-A", "1"), ("X-A", "2")]
    assert response.body == b"gone"
    assert response.stderr == b"logged\n"
    assert response.app_status == 9
    assert response.protocol_status is ProtocolStatus.REQUEST_COMPLETE
    assert response.stdout.startswith(b"Status: 410 Gone\r\n")
    assert response.request_id == 1


async def test_testing_raises_server_exceptions() -> None:
    async def broken(request: Request) -> None:
        raise ZeroDivisionError("handler bug")

    async with open_test_client(broken) as client:
        with pytest.raises(ZeroDivisionError, match="handler bug"):
            await client.get("/")
    async with open_test_client(broken, raise_server_exceptions=False) as client:
        response = await client.get("/")
    assert (response.status, response.app_status) == (500, 1)


async def test_testing_refused_request_has_no_cgi_response() -> None:
    async def busy(request: Request) -> None:
        raise Overloaded()

    async with open_test_client(busy) as client:
        response = await client.get("/")
        refused = await client.authorize("/")  # the Authorizer role is not enabled
    assert response.protocol_status is ProtocolStatus.OVERLOADED
    assert (response.status, response.stdout) == (502, b"")
    assert refused.protocol_status is ProtocolStatus.UNKNOWN_ROLE


async def test_testing_authorizer() -> None:
    seen: list[dict[str, str]] = []

    async def authorizer(request: Request) -> None:
        seen.append(dict(request.params))
        if request.params.get("HTTP_AUTHORIZATION") == "Bearer ok":
            await request.authorize({"USER": "alice", "ROLE": "admin"})
        else:
            await request.respond("denied", status=401)

    async with open_test_client(authorizer, roles={Role.AUTHORIZER}) as client:
        allowed = await client.authorize("/private", headers={"Authorization": "Bearer ok"})
        denied = await client.authorize("/private")
    assert allowed.status == 200
    assert allowed.variables == {"USER": "alice", "ROLE": "admin"}
    assert (denied.status, denied.text, denied.variables) == (401, "denied", {})
    assert seen[0]["FCGI_ROLE"] == "AUTHORIZER"
    assert "CONTENT_LENGTH" not in seen[0]
    assert "PATH_INFO" not in seen[0]
    assert "SCRIPT_NAME" not in seen[0]


async def test_testing_filter() -> None:
    async def upper(request: Request) -> None:
        data = await request.data.receive_all()
        await request.respond(data.upper(), headers={"X-Mod": str(request.data_last_mod)})

    async with open_test_client(upper, roles={Role.FILTER}) as client:
        response = await client.filter("/doc.txt", b"some text", data_last_mod=1234)
    assert (response.body, response.header("x-mod")) == (b"SOME TEXT", "1234")


async def test_testing_streaming_and_abort(autojump_clock: trio.testing.MockClock) -> None:
    cancelled = trio.Event()

    async def ticker(request: Request) -> None:
        await request.stdout.send_all(b"Content-Type: text/plain\r\n\r\n")
        try:
            for n in range(1_000_000):
                await request.stdout.send_all(f"tick {n}\n".encode())
                await trio.sleep(1)
        finally:
            cancelled.set()

    async with open_test_client(ticker) as client:
        async with client.open_request("GET", "/ticks") as active:
            assert await active.stdout.receive_some() == b"Content-Type: text/plain\r\n\r\n"
            assert await active.stdout.receive_some() == b"tick 0\n"
            await active.abort()
            end = await active.wait_ended()
        assert end.protocol_status is ProtocolStatus.REQUEST_COMPLETE
        assert cancelled.is_set()


async def test_testing_concurrent_requests(autojump_clock: trio.testing.MockClock) -> None:
    gate = trio.Event()

    async def waits(request: Request) -> None:
        if request.params["PATH_INFO"] == "/open":
            gate.set()
        else:
            await gate.wait()
        await request.respond(request.params["PATH_INFO"])

    bodies: list[str] = []
    with trio.fail_after(10):  # a deadlock fails at once on the autojump clock
        async with open_test_client(waits) as client:

            async def fetch(path: str) -> None:
                bodies.append((await client.get(path)).text)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(fetch, "/wait")
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(fetch, "/open")  # runs while /wait is in flight
    assert sorted(bodies) == ["/open", "/wait"]


async def test_testing_without_multiplexing_sends_one_at_a_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def slow(request: Request) -> None:
        await trio.sleep(1)
        await request.respond(request.params["PATH_INFO"])

    results: list[tuple[ProtocolStatus, str]] = []
    async with open_test_client(slow, mpxs_conns=False) as client:

        async def fetch(path: str) -> None:
            response = await client.get(path)
            results.append((response.protocol_status, response.text))

        async with trio.open_nursery() as nursery:
            for path in ("/a", "/b", "/c"):
                nursery.start_soon(fetch, path)
    # Without the client keeping to one request, the server would refuse the
    # others with FCGI_CANT_MPX_CONN.
    assert sorted(results) == [(ProtocolStatus.REQUEST_COMPLETE, p) for p in ("/a", "/b", "/c")]


async def test_testing_raw_access_and_get_values() -> None:
    async with open_test_client(show_params, max_reqs=5) as client:
        raw = await client.raw_request({"ONLY": "this"}, b"x")
        values = await client.fastcgi.get_values(["FCGI_MAX_REQS"])
    params = json.loads(raw.parse_cgi().body)
    assert params == {"ONLY": "this", "body": "x"}
    assert values == {"FCGI_MAX_REQS": "5"}


async def test_testing_bad_arguments() -> None:
    async def raw_output(request: Request) -> None:
        await request.stdout.send_all(b"not a cgi response")

    async with open_test_client(raw_output) as client:
        with pytest.raises(ValueError, match="start with"):
            await client.get("relative")
        with pytest.raises(ValueError, match="script_name"):
            await client.get("/other", script_name="/app")
        with pytest.raises(TypeError, match="at most one"):
            await client.post("/", body=b"x", json={})
        with pytest.raises(CGIResponseError):
            await client.get("/")
    with pytest.raises(TypeError, match="unknown server option"):
        async with open_test_client(raw_output, no_such_option=1):  # type: ignore[call-arg]
            pass
