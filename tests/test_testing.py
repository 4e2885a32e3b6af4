"""trio_fastcgi.testing: the in-memory test client, through the real connection code."""

from __future__ import annotations

import inspect
import json
import textwrap
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

import trio_fastcgi
from trio_fastcgi import Overloaded, ProtocolStatus, Request, Role
from trio_fastcgi.client import CGIResponse, CGIResponseError
from trio_fastcgi.testing import make_request, open_test_client


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


# -- make_request: a Request without a connection ------------------------------------


def _docstring_example(function: object) -> str:
    """The code block of *function*'s docstring (after a line ending in ``::``)."""
    doc = inspect.getdoc(function)
    assert doc is not None
    lines = doc.splitlines()
    start = next(i for i, line in enumerate(lines) if line.endswith("::")) + 1
    block: list[str] = []
    for line in lines[start:]:
        if line and not line.startswith(" "):
            break
        block.append(line)
    return textwrap.dedent("\n".join(block))


async def test_make_request_docstring_example_passes() -> None:
    namespace: dict[str, Any] = {}
    exec(compile(_docstring_example(make_request), "make_request example", "exec"), namespace)
    tests = [name for name in namespace if name.startswith("test_")]
    assert tests == ["test_shout"]
    await namespace["test_shout"]()


async def test_make_request_mapping_params_are_encoded_like_os_environ() -> None:
    request, _ = make_request({"PATH_INFO": "/caf\u00e9", "X_RAW": "\udcff"})
    assert request.raw_params == ((b"PATH_INFO", b"/caf\xc3\xa9"), (b"X_RAW", b"\xff"))
    assert request.params["PATH_INFO"] == "/caf\u00e9"
    assert (request.request_id, request.role, request.keep_conn) == (1, Role.RESPONDER, True)


async def test_make_request_raw_params_kept_in_order_with_duplicates() -> None:
    pairs = [(b"HTTP_ACCEPT", b"a"), (b"X", b"1"), (b"HTTP_ACCEPT", b"b")]
    request, _ = make_request(iter(pairs), request_id=7, keep_conn=False)
    assert request.raw_params == tuple(pairs)
    assert request.params["HTTP_ACCEPT"] == "b"
    assert (request.request_id, request.keep_conn) == (7, False)


async def test_make_request_body_is_stdin_and_stdin_is_ended() -> None:
    request, _ = make_request({"CONTENT_LENGTH": "5"}, body=b"hello", input_buffer_size=1)
    assert request.content_length == 5
    assert request.stdin.at_eof
    assert await request.stdin.receive_all() == b"hello"
    empty, _ = make_request()
    assert await empty.stdin.receive_some() == b""


async def test_make_request_body_of_another_length_is_incomplete_input() -> None:
    request, _ = make_request({"CONTENT_LENGTH": "10"}, body=b"short")
    with pytest.raises(trio_fastcgi.IncompleteInput, match="after 5 bytes, but 10"):
        await request.stdin.receive_all()


async def test_make_request_filter_has_body_and_data() -> None:
    request, _ = make_request({"FCGI_DATA_LENGTH": "4"}, body=b"in", data=b"file", role=Role.FILTER)
    assert request.data_length == 4
    assert await request.stdin.receive_all() == b"in"
    assert await request.data.receive_all() == b"file"


async def test_make_request_authorizer_and_responder_streams_are_empty() -> None:
    authorizer, _ = make_request(role=Role.AUTHORIZER)
    assert await authorizer.stdin.receive_some() == b""
    assert await authorizer.data.receive_some() == b""
    responder, _ = make_request(body=b"x")
    assert await responder.data.receive_some() == b""


async def test_make_request_output_records_stdout_and_stderr() -> None:
    request, output = make_request()
    await request.stdout.send_all(b"Status: 201 Created\r\n")
    await request.stderr.send_all(bytearray(b"warn"))
    assert (output.stdout_ended, output.stderr_ended) == (False, False)
    await request.stdout.send_all(memoryview(b"\r\nbody"))
    await request.stderr.aclose()
    assert output.stdout == b"Status: 201 Created\r\n\r\nbody"
    assert output.stderr == b"warn"
    assert (output.stdout_ended, output.stderr_ended) == (False, True)
    await request.stdout.aclose()
    assert output.stdout_ended
    assert output.response() == CGIResponse(201, [], b"body")
    assert output.events == [
        trio_fastcgi.Stdout(1, b"Status: 201 Created\r\n"),
        trio_fastcgi.Stderr(1, b"warn"),
        trio_fastcgi.Stdout(1, b"\r\nbody"),
        trio_fastcgi.Stderr(1, b""),
        trio_fastcgi.Stdout(1, b""),
    ]


async def test_make_request_output_of_respond_and_authorize() -> None:
    request, output = make_request(request_id=9)
    await request.respond("caf\u00e9", status=404)
    assert output.events == [
        trio_fastcgi.Stdout(
            9,
            b"Status: 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\n\r\ncaf\xc3\xa9",
        ),
        trio_fastcgi.Stdout(9, b""),
    ]
    with pytest.raises(trio.ClosedResourceError):
        await request.stdout.send_all(b"more")
    authorizer, allowed = make_request(role=Role.AUTHORIZER)
    await authorizer.authorize({"USER": "ann"})
    assert allowed.response() == CGIResponse(200, [("Variable-USER", "ann")], b"")


async def test_make_request_output_sends_are_checkpoints() -> None:
    request, _ = make_request()
    with trio.testing.assert_checkpoints():
        await request.stdout.send_all(b"x")
    with trio.testing.assert_checkpoints():
        await request.respond()


def test_make_request_output_response_of_non_cgi_stdout_raises() -> None:
    _, output = make_request()
    output.events.append(trio_fastcgi.Stdout(1, b"no blank line"))
    with pytest.raises(CGIResponseError):
        output.response()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"params": {"A": b"bytes"}}, TypeError, "must map str to str"),
        ({"params": [("A", "B")]}, TypeError, r"must be \(bytes, bytes\) pairs"),
        ({"params": [(b"A",)]}, TypeError, r"must be \(bytes, bytes\) pairs"),
        ({"body": "text"}, TypeError, "body and data must be bytes"),
        ({"request_id": 0}, ValueError, "1..65535"),
        ({"request_id": 65536}, ValueError, "1..65535"),
        ({"role": Role.AUTHORIZER, "body": b"x"}, ValueError, "has no stdin"),
        ({"data": b"x"}, ValueError, "only a Filter"),
        ({"role": 9}, ValueError, "9 is not a valid Role"),
        ({"input_buffer_size": 0}, ValueError, "input_buffer_size"),
    ],
)
def test_make_request_bad_arguments(
    kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        make_request(**kwargs)
