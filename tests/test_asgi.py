"""The ASGI adapter: scope, streamed body both ways, disconnect, lifespan."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

import trio_fastcgi
from examples.starlette_app import app as starlette_app
from tests.helpers import (
    ABORT,
    AUTHORIZER,
    STDIN,
    STDOUT,
    FakeWebServer,
    begin_record,
    params_records,
    record,
)
from tests.serving import serve as serve  # also used by test_asgi_asyncio, test_asgi_background
from trio_fastcgi import Config, Request, Role, testing
from trio_fastcgi._served_connection import ServedConnection, request_spawner
from trio_fastcgi._transport import SocketTransport
from trio_fastcgi.asgi import ASGIHandler, ClientDisconnected, LifespanFailure, build_scope

Message = dict[str, Any]
GET = {"REQUEST_METHOD": "GET", "SERVER_PROTOCOL": "HTTP/1.1", "SERVER_NAME": "example.org"}


def make_request(raw_params: list[tuple[bytes, bytes]]) -> Request:
    request, _ = testing.make_request(raw_params, request_id=3, input_buffer_size=1024)
    return request


async def test_build_scope_from_nginx_params() -> None:
    request = make_request(
        [
            (b"REQUEST_METHOD", b"post"),
            (b"SERVER_PROTOCOL", b"HTTP/2.0"),
            (b"SCRIPT_NAME", b"/caf\xc3\xa9/x"),
            (b"REQUEST_URI", b"/caf%C3%A9/x?q=1"),
            (b"QUERY_STRING", b"q=1"),
            (b"HTTPS", b"on"),
            (b"REMOTE_ADDR", b"10.0.0.1"),
            (b"REMOTE_PORT", b"5555"),
            (b"SERVER_ADDR", b"10.0.0.2"),
            (b"SERVER_PORT", b"443"),
            (b"CONTENT_TYPE", b"text/plain"),
            (b"CONTENT_LENGTH", b""),
            (b"HTTP_X_FORWARDED_FOR", b"1.2.3.4"),
            (b"HTTP_ACCEPT", b"a"),
            (b"HTTP_ACCEPT", b"b"),
        ]
    )
    scope = build_scope(request)
    assert scope["type"] == "http"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.4"}
    assert scope["http_version"] == "2"
    assert scope["method"] == "POST"
    assert scope["scheme"] == "https"
    assert scope["path"] == "/caf\u00e9/x"
    assert scope["root_path"] == ""
    assert scope["raw_path"] == b"/caf%C3%A9/x"
    assert scope["query_string"] == b"q=1"
    assert scope["client"] == ("10.0.0.1", 5555)
    assert scope["server"] == ("10.0.0.2", 443)
    assert scope["headers"] == [
        (b"content-type", b"text/plain"),
        (b"x-forwarded-for", b"1.2.3.4"),
        (b"accept", b"a"),
        (b"accept", b"b"),
    ]
    fastcgi = scope["extensions"]["fastcgi"]
    assert fastcgi["raw_params"] == request.raw_params
    assert (fastcgi["role"], fastcgi["request_id"]) == ("responder", 3)


async def test_build_scope_gives_content_type_and_length_once() -> None:
    # nginx passes the request's headers as HTTP_* too, HTTP_CONTENT_TYPE and
    # HTTP_CONTENT_LENGTH included: Django joins repeated headers ("a,a") and
    # then reads no form, so each is one header, from its CGI param.
    request = make_request(
        [
            (b"CONTENT_TYPE", b"application/x-www-form-urlencoded"),
            (b"CONTENT_LENGTH", b"7"),
            (b"HTTP_CONTENT_TYPE", b"application/x-www-form-urlencoded"),
            (b"HTTP_CONTENT_LENGTH", b"7"),
            (b"HTTP_HOST", b"127.0.0.1:8080"),
        ]
    )
    assert build_scope(request)["headers"] == [
        (b"content-type", b"application/x-www-form-urlencoded"),
        (b"content-length", b"7"),
        (b"host", b"127.0.0.1:8080"),
    ]
    # A web server that sends only the HTTP_ form still gets its header through.
    alone = make_request([(b"HTTP_CONTENT_TYPE", b"text/plain")])
    assert build_scope(alone)["headers"] == [(b"content-type", b"text/plain")]
    # The HTTP_ form is left out whichever comes first.
    first = make_request([(b"HTTP_CONTENT_TYPE", b"a/b"), (b"CONTENT_TYPE", b"a/b")])
    assert build_scope(first)["headers"] == [(b"content-type", b"a/b")]


async def test_build_scope_takes_the_last_of_a_repeated_param() -> None:
    request = make_request(
        [
            (b"REQUEST_METHOD", b"GET"),
            (b"PATH_INFO", b"/first"),
            (b"SERVER_NAME", b"one.example"),
            (b"SERVER_PORT", b"80"),
            (b"HTTP_X_A", b"1"),
            (b"REQUEST_METHOD", b"post"),
            (b"PATH_INFO", b"/second"),
            (b"SERVER_PORT", b"8080"),
            (b"HTTP_X_A", b"2"),
        ]
    )
    scope = build_scope(request)
    assert scope["method"] == "POST"
    assert scope["path"] == "/second"
    assert scope["server"] == ("one.example", 8080)
    assert scope["headers"] == [(b"x-a", b"1"), (b"x-a", b"2")]  # headers keep every one


@pytest.mark.parametrize(
    ("protocol", "version"),
    [
        (b"HTTP/1.0", "1.0"),
        (b"HTTP/2.0", "2"),
        (b"HTTP/3", "3"),
        (b"SPDY/3.0", "3"),
        (b"HTTP/0.9", "1.1"),
        (b"", "1.1"),
    ],
)
async def test_build_scope_http_version(protocol: bytes, version: str) -> None:
    assert build_scope(make_request([(b"SERVER_PROTOCOL", protocol)]))["http_version"] == version


async def test_build_scope_method_is_upper_case_and_get_by_default() -> None:
    assert build_scope(make_request([(b"REQUEST_METHOD", b"propfind")]))["method"] == "PROPFIND"
    assert build_scope(make_request([(b"REQUEST_METHOD", b"")]))["method"] == "GET"
    assert build_scope(make_request([]))["method"] == "GET"


@pytest.mark.parametrize(
    ("script_name", "path_info", "override", "root", "path"),
    [
        ("/users/7", None, None, "", "/users/7"),
        ("/app.fcgi", "/users/7", None, "/app.fcgi", "/app.fcgi/users/7"),
        ("/app.fcgi/users/7", None, "/app.fcgi", "/app.fcgi", "/app.fcgi/users/7"),
    ],
)
async def test_build_scope_root_path_and_path(
    script_name: str, path_info: str | None, override: str | None, root: str, path: str
) -> None:
    params = [(b"SCRIPT_NAME", script_name.encode())]
    if path_info is not None:
        params.append((b"PATH_INFO", path_info.encode()))
    scope = build_scope(make_request(params), script_name=override)
    assert (scope["root_path"], scope["path"]) == (root, path)


async def test_asgi_body_streamed_with_more_body(nursery: trio.Nursery) -> None:
    received: list[Message] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            received.append(message)
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"1")]})
        await send({"type": "http.response.body", "body": b"got it"})

    web = await serve(nursery, ASGIHandler(app))
    await web.send(begin_record(1) + params_records(1, GET))
    await web.send(record(STDIN, 1, b"abc"))
    await trio.testing.wait_all_tasks_blocked()
    await web.send(record(STDIN, 1, b"def") + record(STDIN, 1))
    response = await web.read_response(1)
    assert response.head == b"Status: 200 OK\r\nx-a: 1"
    assert response.body == b"got it"
    assert received[0] == {"type": "http.request", "body": b"abc", "more_body": True}
    assert received[-1] == {"type": "http.request", "body": b"", "more_body": False}
    assert b"".join(m["body"] for m in received) == b"abcdef"


async def test_asgi_response_streams_each_body_message(nursery: trio.Nursery) -> None:
    proceed = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        await proceed.wait()  # only set once the web server saw "first"
        await send({"type": "http.response.body", "body": b"second", "more_body": False})

    web = await serve(nursery, ASGIHandler(app))
    await web.request(1, params=GET)
    with trio.fail_after(5):
        while 1 not in web.responses or b"first" not in web.responses[1].stdout:
            await web._read_more()
    proceed.set()
    response = await web.read_response(1)
    assert response.body == b"firstsecond"
    assert [r.content for r in response.records if r.type == STDOUT][-1] == b""


async def test_asgi_abort_sends_http_disconnect(nursery: trio.Nursery) -> None:
    messages: list[Message] = []
    sent_after: list[BaseException] = []
    finished = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        messages.append(await receive())  # the (empty) body
        messages.append(await receive())  # waits until the request ends
        try:
            await send({"type": "http.response.start", "status": 200})
        except ClientDisconnected as exc:
            sent_after.append(exc)
        finished.set()

    web = await serve(nursery, ASGIHandler(app))
    await web.request(1, params=GET)
    await trio.testing.wait_all_tasks_blocked()
    await web.send(record(ABORT, 1))
    with trio.fail_after(5):
        response = await web.read_response(1)
    assert finished.is_set()
    assert messages[1] == {"type": "http.disconnect"}
    assert len(sent_after) == 1
    assert response.stdout == b""


async def test_asgi_abort_cancels_app_that_ignores_disconnect(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    cancelled = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    web = await serve(nursery, ASGIHandler(app))
    await web.request(1, params=GET)
    await trio.testing.wait_all_tasks_blocked()
    start = trio.current_time()
    await web.send(record(ABORT, 1))
    response = await web.read_response(1)
    assert cancelled.is_set()
    assert response.protocol_status == 0
    assert trio.current_time() - start == pytest.approx(1.0)  # DISCONNECT_GRACE


async def test_asgi_receive_after_response_is_disconnect(nursery: trio.Nursery) -> None:
    after: list[Message] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204})
        await send({"type": "http.response.body"})
        after.append(await receive())

    web = await serve(nursery, ASGIHandler(app))
    await web.request(1, params=GET)
    response = await web.read_response(1)
    assert response.head == b"Status: 204 No Content"
    assert after == [{"type": "http.disconnect"}]


@pytest.mark.parametrize(
    "messages",
    [
        [],  # no response at all
        [{"type": "http.response.body", "body": b"x"}],  # body before start
        [{"type": "http.response.start", "status": 2000}],
        [{"type": "http.response.start", "status": 200, "headers": [(b"a\nb", b"c")]}],
        [{"type": "websocket.accept"}],
    ],
)
async def test_asgi_bad_response_is_500(nursery: trio.Nursery, messages: list[Message]) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        for message in messages:
            await send(message)

    web = await serve(nursery, ASGIHandler(app))
    await web.request(1, params=GET)
    response = await web.read_response(1)
    assert response.head.startswith(b"Status: 500")
    assert response.app_status == 1


async def test_asgi_unfinished_body_is_ended(nursery: trio.Nursery) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"partial", "more_body": True})

    web = await serve(nursery, ASGIHandler(app))
    await web.request(1, params=GET)
    response = await web.read_response(1)
    assert response.body == b"partial"
    assert response.stdout_closed


# -- Starlette ----------------------------------------------------------------------


async def test_asgi_starlette_echo_and_info(nursery: trio.Nursery) -> None:
    handler = ASGIHandler(starlette_app)
    async with handler.lifespan():
        web = await serve(nursery, handler)
        body = b"x" * 200_000
        params = {
            "REQUEST_METHOD": "POST",
            "SCRIPT_NAME": "/echo",
            "CONTENT_LENGTH": str(len(body)),
            "SERVER_NAME": "localhost",
            "SERVER_PORT": "80",
        }
        await web.request(1, params=params, stdin=body)
        echoed = await web.read_response(1)
        assert echoed.body == body
        assert b"x-length: 200000" in echoed.head
        await web.request(2, params={**GET, "SCRIPT_NAME": "/info", "QUERY_STRING": "k=v"})
        info = json.loads((await web.read_response(2)).body)
    assert info == {
        "path": "/info",
        "root_path": "",
        "query": {"k": "v"},
        "user_agent": "",
        "lifespan_started": True,
        "fastcgi_role": "responder",
    }


async def test_asgi_starlette_streaming_response(nursery: trio.Nursery) -> None:
    web = await serve(nursery, ASGIHandler(starlette_app, lifespan="off"))
    await web.request(1, params={**GET, "SCRIPT_NAME": "/stream", "QUERY_STRING": "n=3"})
    response = await web.read_response(1)
    assert response.body == b"line 0\nline 1\nline 2\n"
    assert len([r for r in response.records if r.type == STDOUT and r.content]) >= 3


async def test_asgi_starlette_error_is_500(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    web = await serve(nursery, ASGIHandler(starlette_app, lifespan="off"))
    await web.request(1, params={**GET, "SCRIPT_NAME": "/fail"})
    response = await web.read_response(1)
    assert response.head.startswith(b"Status: 500")
    # Starlette sends its 500, which ends the request, then raises: logged.
    assert response.app_status == 0
    await trio.testing.wait_all_tasks_blocked()
    assert "failed after its response was complete" in caplog.text


async def test_asgi_starlette_mounted_under_script_name(nursery: trio.Nursery) -> None:
    async def where(request: StarletteRequest) -> Response:
        return PlainTextResponse(f"{request.scope['root_path']}|{request.url.path}")

    app = Starlette(routes=[Route("/where", where)])
    web = await serve(nursery, ASGIHandler(app, script_name="/app.fcgi", lifespan="off"))
    await web.request(1, params={**GET, "SCRIPT_NAME": "/app.fcgi", "PATH_INFO": "/where"})
    response = await web.read_response(1)
    assert response.body == b"/app.fcgi|/app.fcgi/where"


# -- lifespan -----------------------------------------------------------------------


async def test_asgi_lifespan_startup_and_shutdown() -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, object]]:
        events.append("startup")
        yield {"db": "connected"}
        events.append("shutdown")

    handler = ASGIHandler(Starlette(lifespan=lifespan))
    async with handler.lifespan():
        assert events == ["startup"]
        assert handler.state == {"db": "connected"}
    assert events == ["startup", "shutdown"]


async def test_asgi_lifespan_unsupported_is_skipped_in_auto_mode() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http", "lifespan not supported"

    async with ASGIHandler(app).lifespan():
        pass
    with pytest.raises(LifespanFailure):
        async with ASGIHandler(app, lifespan="on").lifespan():
            pass


async def test_asgi_lifespan_startup_failed_raises() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})

    with pytest.raises(LifespanFailure, match="no database"):
        async with ASGIHandler(app).lifespan():
            pass


async def test_asgi_authorizer_variables_pass_through(nursery: trio.Nursery) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        role = scope["extensions"]["fastcgi"]["role"]
        headers = dict(scope["headers"])
        if role == "authorizer" and headers.get(b"authorization") == b"Bearer good":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"Variable-REMOTE_USER", b"alice")],
                }
            )
        else:
            await send({"type": "http.response.start", "status": 401, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    web = await serve(nursery, ASGIHandler(app), roles={Role.AUTHORIZER})
    params = {**GET, "HTTP_AUTHORIZATION": "Bearer good"}
    await web.request(1, params=params, role=AUTHORIZER)
    assert (await web.read_response(1)).head == b"Status: 200 OK\r\nVariable-REMOTE_USER: alice"
    await web.request(2, params={**GET, "HTTP_AUTHORIZATION": "x"}, role=AUTHORIZER)
    assert (await web.read_response(2)).head == b"Status: 401 Unauthorized"


async def test_asgi_short_body_is_a_disconnect(nursery: trio.Nursery) -> None:
    messages: list[Message] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 400})
        await send({"type": "http.response.body"})

    web = await serve(nursery, ASGIHandler(app))
    await web.request(1, params={**GET, "CONTENT_LENGTH": "100"}, stdin=b"only ten b")
    response = await web.read_response(1)
    assert messages[0] == {"type": "http.request", "body": b"only ten b", "more_body": True}
    assert messages[-1] == {"type": "http.disconnect"}
    assert response.app_status == 0


# -- receive() without a task of its own, the app's task -------------------------------


async def test_asgi_body_already_in_comes_as_one_message(nursery: trio.Nursery) -> None:
    received: list[Message] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        received.append(await receive())
        await send({"type": "http.response.start", "status": 204})
        await send({"type": "http.response.body"})

    web = await serve(nursery, ASGIHandler(app))
    params = {**GET, "CONTENT_LENGTH": "6"}
    # The whole body and its end arrive before the application asks.
    await web.send(
        begin_record(1)
        + params_records(1, params)
        + record(STDIN, 1, b"abc")
        + record(STDIN, 1, b"def")
        + record(STDIN, 1)
    )
    await web.read_response(1)
    assert received == [{"type": "http.request", "body": b"abcdef", "more_body": False}]


async def test_asgi_abort_while_receive_waits_for_body(nursery: trio.Nursery) -> None:
    received: list[Message] = []
    finished = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            received.append(message)
            if message["type"] == "http.disconnect":
                break
        finished.set()

    web = await serve(nursery, ASGIHandler(app))
    params = {**GET, "CONTENT_LENGTH": "100"}
    await web.send(begin_record(1) + params_records(1, params) + record(STDIN, 1, b"part"))
    await trio.testing.wait_all_tasks_blocked()  # the app waits for more body
    await web.send(record(ABORT, 1))
    with trio.fail_after(5):
        response = await web.read_response(1)
    assert finished.is_set()
    assert received == [
        {"type": "http.request", "body": b"part", "more_body": True},
        {"type": "http.disconnect"},
    ]
    assert response.stdout == b""


async def test_asgi_connection_closed_while_receive_waits(nursery: trio.Nursery) -> None:
    received: list[Message] = []
    finished = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        received.append(await receive())
        received.append(await receive())
        finished.set()

    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(trio_fastcgi.serve_connection, ASGIHandler(app), server)
    web = FakeWebServer(client)
    await web.send(begin_record(1) + params_records(1, {**GET, "CONTENT_LENGTH": "9"}))
    await web.send(record(STDIN, 1, b"abc"))
    await trio.testing.wait_all_tasks_blocked()
    await client.aclose()
    with trio.fail_after(5):
        await finished.wait()
    assert received[-1] == {"type": "http.disconnect"}


async def test_asgi_app_runs_in_a_copy_of_the_serving_context(nursery: trio.Nursery) -> None:
    """Each request's application runs in its own task, with a copy of the
    context the connection was served in: its changes stay its own."""
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(var.get())
        var.set(f"changed by request {scope['extensions']['fastcgi']['request_id']}")
        await send({"type": "http.response.start", "status": 204})
        await send({"type": "http.response.body"})

    async def serve_in_context() -> None:
        var.set("served")
        await trio_fastcgi.serve_connection(ASGIHandler(app), server)

    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(serve_in_context)
    web = FakeWebServer(client)
    for request_id in (4, 5):
        await web.request(request_id, params=GET)
        await web.read_response(request_id)
    assert seen == ["served", "served"]


async def test_build_scope_header_names_cache_is_bounded() -> None:
    from trio_fastcgi import asgi

    params = [(f"HTTP_X_{i}".encode(), b"v") for i in range(asgi._HEADER_NAMES_MAX + 50)]
    scope = build_scope(make_request([*params, (b"CONTENT_LENGTH", b"")]))
    assert len(scope["headers"]) == len(params)  # content-length is empty: left out
    assert scope["headers"][-1] == (f"x-{len(params) - 1}".encode(), b"v")
    assert len(asgi._HEADER_NAMES) <= asgi._HEADER_NAMES_MAX


async def test_asgi_last_block_goes_out_before_the_app_returns(nursery: trio.Nursery) -> None:
    proceed = trio.Event()
    returned = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"done"})
        await proceed.wait()  # background work after the response, set once it is out
        returned.set()

    web = await serve(nursery, ASGIHandler(app))
    await web.request(1, params=GET)
    with trio.fail_after(5):
        response = await web.read_response(1)  # the request ends with the response
    assert (response.body, response.stdout_closed, response.app_status) == (b"done", True, 0)
    assert not returned.is_set()
    proceed.set()
    with trio.fail_after(5):
        await returned.wait()


async def test_asgi_failure_after_the_last_block_keeps_the_response(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    failed = trio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 201})
        await send({"type": "http.response.body", "body": b"made"})
        failed.set()
        raise ValueError("after the response")

    web = await serve(nursery, ASGIHandler(app))
    await web.request(1, params=GET)
    response = await web.read_response(1)
    assert (response.head, response.body) == (b"Status: 201 Created", b"made")
    assert response.stdout_closed
    # The complete response ended the request (app status 0); the failure is logged.
    assert response.app_status == 0
    with trio.fail_after(5):
        await failed.wait()
    await trio.testing.wait_all_tasks_blocked()
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.getMessage() for r in errors] == [
        "request 1: the ASGI application failed after its response was complete"
    ]
    assert errors[0].exc_info is not None
    assert isinstance(errors[0].exc_info[1], ValueError)


async def test_asgi_short_response_is_one_write(nursery: trio.Nursery) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"hello"})

    client, server = trio.testing.memory_stream_pair()
    writes: list[bytes] = []
    original = server.send_stream.send_all

    async def counting_send_all(data: bytes | bytearray | memoryview) -> None:
        writes.append(bytes(data))
        await original(data)

    server.send_stream.send_all = counting_send_all  # type: ignore[method-assign]
    nursery.start_soon(trio_fastcgi.serve_connection, ASGIHandler(app), server)
    web = FakeWebServer(client)
    for rid in range(1, 21):
        await web.request(rid, params=GET)
        response = await web.read_response(rid)
        assert response.body == b"hello"
    # Stdout, its end and END_REQUEST of each request in one write.
    assert len(writes) == 20


class CountingSocket(socket.socket):
    """A socket that counts the writes the transport makes on it."""

    writes = 0

    def send(self, data: Any, flags: int = 0) -> int:
        self.writes += 1
        return super().send(data, flags)

    def sendmsg(self, buffers: Any, *args: Any) -> int:
        self.writes += 1
        return super().sendmsg(buffers, *args)


async def test_asgi_short_response_is_one_system_call_on_a_socket(nursery: trio.Nursery) -> None:
    """Sent from the request's task (the lazy writer): its last block, the end
    of stdout and END_REQUEST still go in one write."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"hello"})

    ours, theirs = socket.socketpair()
    counting = CountingSocket(ours.family, ours.type, ours.proto, fileno=ours.detach())
    handler = ASGIHandler(app)
    connection = ServedConnection(
        handler, SocketTransport(counting), Config(), spawn=request_spawner(handler)
    )
    nursery.start_soon(connection.run)
    web = FakeWebServer(trio.SocketStream(trio.socket.from_stdlib_socket(theirs)))
    for rid in range(1, 21):
        await web.request(rid, params=GET)
        assert (await web.read_response(rid)).body == b"hello"
    assert counting.writes == 20
    await web.stream.aclose()
