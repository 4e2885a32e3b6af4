"""The WSGI adapter: PEP 3333 environ, streaming both ways, errors, abort."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator

import pytest
import trio
import trio.testing

import trio_fastcgi
from examples.flask_app import app as flask_app
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
from tests.serving import serve
from trio_fastcgi import Request, Role, testing
from trio_fastcgi.wsgi import ClientDisconnected, WSGIHandler, build_environ

Environ = dict[str, object]
StartResponse = Callable[..., Callable[[bytes], object]]

GET = {"REQUEST_METHOD": "GET", "SERVER_PROTOCOL": "HTTP/1.1", "SERVER_NAME": "example.org"}


def make_request(raw_params: Iterable[tuple[bytes, bytes]]) -> Request:
    request, _ = testing.make_request(raw_params, input_buffer_size=1024)
    return request


def capture_environ(seen: list[Environ]) -> Callable[[Environ, StartResponse], Iterable[bytes]]:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        seen.append(environ)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    return app


# -- environ --------------------------------------------------------------------


async def test_build_environ_native_strings_are_latin1_of_raw_bytes() -> None:
    path = "/caf\u00e9".encode()  # UTF-8 bytes, as nginx passes a decoded URI
    request = make_request(
        [
            (b"REQUEST_METHOD", b"POST"),
            (b"SCRIPT_NAME", b""),
            (b"PATH_INFO", path + b"\xff"),
            (b"HTTP_X_RAW", b"\xe9t\xe9"),
            (b"CONTENT_LENGTH", b""),
            (b"CONTENT_TYPE", b""),
        ]
    )
    environ = build_environ(request)
    assert environ["PATH_INFO"] == (path + b"\xff").decode("latin-1")
    assert environ["HTTP_X_RAW"] == "\xe9t\xe9"
    assert all(type(key) is str and type(value) is str for key, value in environ.items())
    # Empty CONTENT_LENGTH/CONTENT_TYPE (nginx on a GET) are dropped.
    assert "CONTENT_LENGTH" not in environ
    assert "CONTENT_TYPE" not in environ
    for required in ("QUERY_STRING", "SERVER_NAME", "SERVER_PORT", "SERVER_PROTOCOL"):
        assert required in environ


@pytest.mark.parametrize(
    ("script_name", "path_info", "override", "expected"),
    [
        # nginx stock fastcgi_params: whole path in SCRIPT_NAME, no PATH_INFO
        ("/users/7", None, None, ("", "/users/7")),
        # the web server split it (fastcgi_split_path_info, Apache)
        ("/app.fcgi", "/users/7", None, ("/app.fcgi", "/users/7")),
        ("/app.fcgi", "", None, ("/app.fcgi", "")),
        # mod_fcgid setups: the mount point given on the command line
        ("/app.fcgi/users/7", None, "/app.fcgi", ("/app.fcgi", "/users/7")),
        ("/app.fcgi", "/users/7", "/app.fcgi/", ("/app.fcgi", "/users/7")),
        ("/app.fcgi", None, "/app.fcgi", ("/app.fcgi", "")),
        ("/elsewhere", None, "/app.fcgi", ("/app.fcgi", "/elsewhere")),
    ],
)
async def test_build_environ_splits_script_name_and_path_info(
    script_name: str,
    path_info: str | None,
    override: str | None,
    expected: tuple[str, str],
) -> None:
    params = [(b"SCRIPT_NAME", script_name.encode())]
    if path_info is not None:
        params.append((b"PATH_INFO", path_info.encode()))
    environ = build_environ(make_request(params), script_name=override)
    assert (environ["SCRIPT_NAME"], environ["PATH_INFO"]) == expected


async def test_wsgi_environ_has_wsgi_keys_and_https_scheme(nursery: trio.Nursery) -> None:
    seen: list[Environ] = []
    web = await serve(nursery, WSGIHandler(capture_environ(seen), multiprocess=True))
    await web.request(1, params={**GET, "HTTPS": "on"})
    response = await web.read_response(1)
    assert response.body == b"ok"
    environ = seen[0]
    assert environ["wsgi.version"] == (1, 0)
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["wsgi.multithread"] is True
    assert environ["wsgi.multiprocess"] is True
    assert environ["wsgi.run_once"] is False
    assert environ["wsgi.input_terminated"] is True
    assert isinstance(environ["trio_fastcgi.request"], Request)


@pytest.mark.parametrize(
    ("params", "scheme"),
    [({}, "http"), ({"HTTPS": "off"}, "http"), ({"REQUEST_SCHEME": "https"}, "https")],
)
async def test_wsgi_url_scheme(nursery: trio.Nursery, params: dict[str, str], scheme: str) -> None:
    seen: list[Environ] = []
    web = await serve(nursery, WSGIHandler(capture_environ(seen)))
    await web.request(1, params={**GET, **params})
    await web.read_response(1)
    assert seen[0]["wsgi.url_scheme"] == scheme


# -- Flask ------------------------------------------------------------------------


async def test_wsgi_flask_post_body_echoed(nursery: trio.Nursery) -> None:
    web = await serve(nursery, WSGIHandler(flask_app))
    body = bytes(range(256)) * 1000  # 256 kB, several records
    params = {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "/echo",
        "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": "application/octet-stream",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
    }
    await web.request(1, params=params, stdin=body)
    response = await web.read_response(1)
    assert response.app_status == 0
    assert b"Status: 200 OK" in response.head
    assert b"X-Length: 256000" in response.head
    assert response.body == body


async def test_wsgi_flask_sees_headers_path_and_query(nursery: trio.Nursery) -> None:
    web = await serve(nursery, WSGIHandler(flask_app))
    params = {
        **GET,
        "SCRIPT_NAME": "/headers",
        "QUERY_STRING": "a=1&b=two",
        "HTTP_USER_AGENT": "test-agent/1.0",
    }
    await web.request(1, params=params)
    response = await web.read_response(1)
    assert json.loads(response.body) == {
        "path": "/headers",
        "script_root": "",
        "args": {"a": "1", "b": "two"},
        "user_agent": "test-agent/1.0",
        "scheme": "http",
    }


async def test_wsgi_flask_streamed_lines(nursery: trio.Nursery) -> None:
    web = await serve(nursery, WSGIHandler(flask_app))
    await web.request(1, params={**GET, "SCRIPT_NAME": "/stream", "QUERY_STRING": "n=4"})
    response = await web.read_response(1)
    assert response.body == b"line 0\nline 1\nline 2\nline 3\n"
    # One STDOUT record per yielded line (plus the head and the end): streamed.
    data_records = [r for r in response.records if r.type == STDOUT and r.content]
    assert len(data_records) >= 4


async def test_wsgi_flask_error_is_500_and_logged(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    flask_app.logger.disabled = True  # Flask's own logging is not what we test
    try:
        web = await serve(nursery, WSGIHandler(flask_app))
        await web.request(1, params={**GET, "SCRIPT_NAME": "/fail"})
        response = await web.read_response(1)
    finally:
        flask_app.logger.disabled = False
    assert response.head.startswith(b"Status: 500")

    # An application that raises before start_response: the core's 500, logged.
    def broken(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        raise ValueError("broken application")

    web = await serve(nursery, WSGIHandler(broken))
    with caplog.at_level(logging.ERROR, logger="trio_fastcgi"):
        await web.request(1, params=GET)
        response = await web.read_response(1)
    assert response.head.startswith(b"Status: 500")
    assert response.app_status == 1
    assert any("broken application" in str(r.exc_info and r.exc_info[1]) for r in caplog.records)


# -- streaming and the PEP 3333 rules --------------------------------------------


async def test_wsgi_each_chunk_is_sent_before_the_next_is_asked_for(
    nursery: trio.Nursery,
) -> None:
    first_seen = threading.Event()

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"first"
        # Blocks until the web server has the first chunk: a buffering
        # adapter would never get there.
        assert first_seen.wait(10)
        yield b"second"

    web = await serve(nursery, WSGIHandler(app))
    await web.request(1, params=GET)
    with trio.fail_after(10):
        while 1 not in web.responses or b"first" not in web.responses[1].stdout:
            await web._read_more()
    first_seen.set()
    response = await web.read_response(1)
    assert response.body == b"firstsecond"


async def test_wsgi_write_callable_and_iterable_closed(nursery: trio.Nursery) -> None:
    closed: list[bool] = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            yield b" iterated"

        def close(self) -> None:
            closed.append(True)

    def app(environ: Environ, start_response: StartResponse) -> Body:
        write = start_response("201 Created", [("X-A", "1")])
        write(b"written")
        return Body()

    web = await serve(nursery, WSGIHandler(app))
    await web.request(1, params=GET)
    response = await web.read_response(1)
    assert response.head.split(b"\r\n")[0] == b"Status: 201 Created"
    assert response.body == b"written iterated"
    assert closed == [True]


async def test_wsgi_iterable_closed_when_iteration_fails(nursery: trio.Nursery) -> None:
    closed: list[bool] = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            yield b"part"
            raise RuntimeError("mid-body failure")

        def close(self) -> None:
            closed.append(True)

    def app(environ: Environ, start_response: StartResponse) -> Body:
        start_response("200 OK", [])
        return Body()

    web = await serve(nursery, WSGIHandler(app))
    await web.request(1, params=GET)
    response = await web.read_response(1)
    assert response.body == b"part"
    assert response.app_status == 1
    assert closed == [True]


async def test_wsgi_start_response_exc_info_replaces_unsent_headers(
    nursery: trio.Nursery,
) -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("X-Before", "1")])
        try:
            raise KeyError("late failure")
        except KeyError:
            import sys

            start_response("503 Service Unavailable", [("X-After", "1")], sys.exc_info())
        return [b"sorry"]

    web = await serve(nursery, WSGIHandler(app))
    await web.request(1, params=GET)
    response = await web.read_response(1)
    assert response.head == b"Status: 503 Service Unavailable\r\nX-After: 1"
    assert response.body == b"sorry"


async def test_wsgi_start_response_exc_info_after_head_reraises(nursery: trio.Nursery) -> None:
    reraised: list[BaseException] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"sent"
        try:
            raise KeyError("too late")
        except KeyError:
            import sys

            try:
                start_response("500 Oops", [], sys.exc_info())
            except KeyError as exc:
                reraised.append(exc)
                raise

    web = await serve(nursery, WSGIHandler(app))
    await web.request(1, params=GET)
    response = await web.read_response(1)
    assert response.body == b"sent"
    assert response.app_status == 1
    assert len(reraised) == 1


async def test_wsgi_start_response_twice_without_exc_info_fails(nursery: trio.Nursery) -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [])
        start_response("200 OK", [])
        return []

    web = await serve(nursery, WSGIHandler(app))
    await web.request(1, params=GET)
    response = await web.read_response(1)
    assert response.head.startswith(b"Status: 500")
    assert response.app_status == 1


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        ("OK 200", []),
        ("200 OK\r\nX: y", []),
        ("200 OK", [("Bad\nName", "v")]),
        ("200 OK", [("X", "line\r\nbreak")]),
        ("200 OK", [("X", "\u20ac")]),  # not latin-1
        ("200 OK", (("X", "tuple, not list"),)),
    ],
)
async def test_wsgi_bad_status_or_headers_is_500(
    nursery: trio.Nursery, status: str, headers: object
) -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response(status, headers)
        return [b"body"]

    web = await serve(nursery, WSGIHandler(app))
    await web.request(1, params=GET)
    response = await web.read_response(1)
    assert response.head.startswith(b"Status: 500")


async def test_wsgi_repeated_head_is_checked_each_time(nursery: trio.Nursery) -> None:
    # The second response's head equals the first's but for the types: a head
    # made before is reused only for a status and headers checked again.
    class Text(str):
        pass

    answers = iter(
        [
            ("200 OK", [("X-Same", "1")]),
            ("200 OK", [("X-Same", Text("1"))]),
            (Text("200 OK"), [("X-Same", "1")]),
            ("200 OK", [("X-Same", "1")]),
        ]
    )

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response(*next(answers))
        return [b"body"]

    web = await serve(nursery, WSGIHandler(app))
    heads = []
    for request_id in range(1, 5):
        await web.request(request_id, params=GET)
        heads.append((await web.read_response(request_id)).head)
    assert heads[0] == heads[3] == b"Status: 200 OK\r\nX-Same: 1"
    assert heads[1].startswith(b"Status: 500")
    assert heads[2].startswith(b"Status: 500")


async def test_wsgi_no_start_response_is_500(nursery: trio.Nursery) -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        return []

    web = await serve(nursery, WSGIHandler(app))
    await web.request(1, params=GET)
    response = await web.read_response(1)
    assert response.head.startswith(b"Status: 500")


async def test_wsgi_empty_body_sends_head(nursery: trio.Nursery) -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("204 No Content", [])
        return [b"", b""]

    web = await serve(nursery, WSGIHandler(app))
    await web.request(1, params=GET)
    response = await web.read_response(1)
    assert response.head == b"Status: 204 No Content"
    assert response.body == b""
    assert response.stdout_closed


# -- input and errors -------------------------------------------------------------


async def test_wsgi_input_read_readline_iteration_without_content_length(
    nursery: trio.Nursery,
) -> None:
    results: dict[str, object] = {}

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        stream = environ["wsgi.input"]
        results["first"] = stream.readline()  # type: ignore[attr-defined]
        results["limited"] = stream.readline(3)  # type: ignore[attr-defined]
        results["four"] = stream.read(4)  # type: ignore[attr-defined]
        results["rest"] = list(stream)  # type: ignore[call-overload]
        results["after"] = stream.read()  # type: ignore[attr-defined]
        start_response("200 OK", [])
        return []

    web = await serve(nursery, WSGIHandler(app))
    # No CONTENT_LENGTH (a chunked upload through nginx): read to the end.
    body = b"line one\nabcdefgh\nthird\nlast without newline"
    await web.send(begin_record(1) + params_records(1, GET))
    for i in range(0, len(body), 5):  # many small records
        await web.send(record(STDIN, 1, body[i : i + 5]))
    await web.send(record(STDIN, 1))
    await web.read_response(1)
    assert results == {
        "first": b"line one\n",
        "limited": b"abc",
        "four": b"defg",
        "rest": [b"h\n", b"third\n", b"last without newline"],
        "after": b"",
    }


async def test_wsgi_input_short_body_is_an_oserror(nursery: trio.Nursery) -> None:
    errors: list[BaseException] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        try:
            environ["wsgi.input"].read()  # type: ignore[attr-defined]
        except OSError as exc:
            errors.append(exc)
        start_response("400 Bad Request", [])
        return []

    web = await serve(nursery, WSGIHandler(app))
    await web.request(1, params={**GET, "CONTENT_LENGTH": "100"}, stdin=b"only ten b")
    response = await web.read_response(1)
    assert response.head == b"Status: 400 Bad Request"
    assert len(errors) == 1


async def test_wsgi_errors_go_to_fastcgi_stderr(nursery: trio.Nursery) -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        errors = environ["wsgi.errors"]
        errors.write("something odd\n")  # type: ignore[attr-defined]
        errors.writelines(["a", "b\n"])  # type: ignore[attr-defined]
        errors.flush()  # type: ignore[attr-defined]
        start_response("200 OK", [])
        return [b"fine"]

    web = await serve(nursery, WSGIHandler(app))
    await web.request(1, params=GET)
    response = await web.read_response(1)
    assert response.stderr == b"something odd\nab\n"
    assert response.body == b"fine"


async def test_wsgi_abort_raises_client_disconnected_in_app(nursery: trio.Nursery) -> None:
    raised: list[BaseException] = []
    reading = threading.Event()

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        reading.set()
        try:
            environ["wsgi.input"].read()  # type: ignore[attr-defined]
        except ClientDisconnected as exc:
            raised.append(exc)
            raise
        start_response("200 OK", [])
        return [b"unreachable"]

    web = await serve(nursery, WSGIHandler(app))
    await web.send(begin_record(1) + params_records(1, GET) + record(STDIN, 1, b"partial"))
    await trio.to_thread.run_sync(reading.wait)
    await web.send(record(ABORT, 1))
    with trio.fail_after(10):
        response = await web.read_response(1)
    assert len(raised) == 1
    assert response.stdout == b""
    # The next request on the connection is served normally.
    await web.request(2, params=GET)
    second = await web.read_response(2)
    assert (second.app_status, second.body) == (0, b"unreachable")
    assert len(raised) == 1


async def test_wsgi_limiter_bounds_threads(nursery: trio.Nursery) -> None:
    lock = threading.Lock()
    running = 0
    peak = 0
    two_running = threading.Event()
    release = threading.Event()

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            if running == 2:
                two_running.set()
        release.wait(10)
        with lock:
            running -= 1
        start_response("200 OK", [])
        return [b"x"]

    limiter = trio.CapacityLimiter(2)
    web = await serve(nursery, WSGIHandler(app, limiter=limiter))
    for rid in range(1, 6):
        await web.request(rid, params=GET)
    assert await trio.to_thread.run_sync(two_running.wait, 10)
    await trio.testing.wait_all_tasks_blocked()
    # Three requests wait for a thread while two run; the loop is not blocked.
    assert limiter.borrowed_tokens == 2
    assert limiter.statistics().tasks_waiting == 3
    release.set()
    for rid in range(1, 6):
        assert (await web.read_response(rid)).body == b"x"
    assert peak == 2


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 0, 2)])
async def test_wsgi_concurrent_requests_each_woken_whatever_order_threads_end(
    nursery: trio.Nursery, order: tuple[int, int, int]
) -> None:
    # One request's task waits as the wake-up reader, the others to be
    # rescheduled; whichever thread ends first, each task is woken in turn.
    started = threading.Semaphore(0)
    releases = [threading.Event() for _ in range(3)]

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        index = int(str(environ["QUERY_STRING"]))
        started.release()
        releases[index].wait(10)
        start_response("200 OK", [])
        return [str(index).encode()]

    handler = WSGIHandler(app, queue_delay=0)
    web = await serve(nursery, handler)
    with trio.fail_after(10):
        for index in range(3):
            await web.request(index + 1, params={**GET, "QUERY_STRING": str(index)})
        for _ in range(3):
            assert await trio.to_thread.run_sync(started.acquire, True, 10)
        await trio.testing.wait_all_tasks_blocked()
        for index in order:
            releases[index].set()
            assert (await web.read_response(index + 1)).body == str(index).encode()
    assert handler._threads.threads == 3


async def test_wsgi_authorizer_variables_pass_through(nursery: trio.Nursery) -> None:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        if environ.get("HTTP_AUTHORIZATION") == "Bearer good":
            start_response("200 OK", [("Variable-REMOTE_USER", "alice")])
            return []
        start_response("403 Forbidden", [("Content-Type", "text/plain")])
        return [b"denied\n"]

    web = await serve(nursery, WSGIHandler(app), roles={Role.AUTHORIZER})
    params = {**GET, "FCGI_ROLE": "AUTHORIZER", "HTTP_AUTHORIZATION": "Bearer good"}
    await web.request(1, params=params, role=AUTHORIZER)
    allowed = await web.read_response(1)
    assert allowed.head == b"Status: 200 OK\r\nVariable-REMOTE_USER: alice"
    await web.request(2, params={**params, "HTTP_AUTHORIZATION": "Bearer bad"}, role=AUTHORIZER)
    denied = await web.read_response(2)
    assert denied.head.startswith(b"Status: 403 Forbidden")
    assert denied.body == b"denied\n"


async def test_wsgi_input_read_all_after_partial_reads(nursery: trio.Nursery) -> None:
    results: list[bytes] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        stream = environ["wsgi.input"]
        results.append(stream.readline(0))  # type: ignore[attr-defined]
        # Leaves most of a 64 KiB chunk buffered, which read() must not repeat.
        results.append(stream.readline())  # type: ignore[attr-defined]
        results.append(stream.read())  # type: ignore[attr-defined]
        start_response("200 OK", [])
        return []

    web = await serve(nursery, WSGIHandler(app))
    body = bytes(range(256)) * 2000  # many records, read to the end at once
    await web.request(1, params={**GET, "CONTENT_LENGTH": str(len(body))}, stdin=body)
    await web.read_response(1)
    assert results == [b"", body[:11], body[11:]]


# -- the body read before the application, and the hand-off of output ----------------


@pytest.mark.parametrize("preread_limit", [0, 100])
async def test_wsgi_input_short_body_is_an_oserror_either_way(
    nursery: trio.Nursery, preread_limit: int
) -> None:
    # CONTENT_LENGTH 100: read before the application (limit 100) or as it asks (0).
    seen: list[object] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        stream = environ["wsgi.input"]
        seen.append(stream.read(4))  # type: ignore[attr-defined]
        try:
            stream.read()  # type: ignore[attr-defined]
        except OSError as exc:
            seen.append(type(exc))
        seen.append(stream.read())  # type: ignore[attr-defined]
        start_response("400 Bad Request", [])
        return []

    web = await serve(nursery, WSGIHandler(app, preread_limit=preread_limit))
    await web.request(1, params={**GET, "CONTENT_LENGTH": "100"}, stdin=b"only ten b")
    response = await web.read_response(1)
    assert response.head == b"Status: 400 Bad Request"
    assert seen == [b"only", OSError, b""]


async def test_wsgi_short_body_read_before_the_application_starts(nursery: trio.Nursery) -> None:
    seen: list[int] = []
    body = bytes(range(256)) * 40  # 10 KiB, in two records sent apart

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        request = environ["trio_fastcgi.request"]
        seen.append(request.stdin.received)  # type: ignore[attr-defined]
        data = environ["wsgi.input"].read()  # type: ignore[attr-defined]
        start_response("200 OK", [])
        return [str(len(data)).encode(), b" ", data[-3:]]

    web = await serve(nursery, WSGIHandler(app, preread_limit=len(body)))
    params = {**GET, "REQUEST_METHOD": "POST", "CONTENT_LENGTH": str(len(body))}
    await web.send(begin_record(1) + params_records(1, params) + record(STDIN, 1, body[:100]))
    await trio.testing.wait_all_tasks_blocked()
    assert seen == []  # still waiting for the rest of the body
    await web.send(record(STDIN, 1, body[100:]) + record(STDIN, 1))
    response = await web.read_response(1)
    assert seen == [len(body)]  # all of it was in before the application ran
    assert response.body == f"{len(body)} ".encode() + body[-3:]


async def test_wsgi_body_over_the_preread_limit_streams(nursery: trio.Nursery) -> None:
    started = threading.Event()
    seen: list[int] = []
    body = b"x" * 300

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        started.set()
        seen.append(environ["trio_fastcgi.request"].stdin.received)  # type: ignore[attr-defined]
        data = environ["wsgi.input"].read(len(body))  # type: ignore[attr-defined]
        start_response("200 OK", [])
        return [data]

    web = await serve(nursery, WSGIHandler(app, preread_limit=len(body) - 1))
    params = {**GET, "REQUEST_METHOD": "POST", "CONTENT_LENGTH": str(len(body))}
    await web.send(begin_record(1) + params_records(1, params) + record(STDIN, 1, body[:10]))
    # The application starts without the rest of the body, then reads it.
    assert await trio.to_thread.run_sync(started.wait, 10)
    await web.send(record(STDIN, 1, body[10:]) + record(STDIN, 1))
    response = await web.read_response(1)
    assert seen[0] < len(body)
    assert response.body == body


def test_wsgi_preread_limit_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="preread_limit"):
        WSGIHandler(capture_environ([]), preread_limit=-1)


async def test_wsgi_many_small_chunks_in_order(nursery: trio.Nursery) -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        for i in range(2000):
            yield b"%d," % i

    web = await serve(nursery, WSGIHandler(app))
    await web.request(1, params=GET)
    response = await web.read_response(1)
    assert response.body == b"".join(b"%d," % i for i in range(2000))
    assert response.app_status == 0


async def test_wsgi_list_body_goes_out_with_the_end(nursery: trio.Nursery) -> None:
    big = b"y" * (100 * 1024)  # over the size kept back: handed off on its own

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("X-A", "1")])
        return [b"a", b"", b"b", big, b"c"]

    web = await serve(nursery, WSGIHandler(app))
    await web.request(1, params=GET)
    response = await web.read_response(1)
    assert response.head == b"Status: 200 OK\r\nX-A: 1"
    assert response.body == b"ab" + big + b"c"
    # The head and the small blocks before the big one went out as one write.
    first = next(r for r in response.records if r.type == STDOUT)
    assert first.content == b"Status: 200 OK\r\nX-A: 1\r\n\r\nab"


def record_waits(monkeypatch: pytest.MonkeyPatch, blocked: threading.Event) -> None:
    """Sets *blocked* whenever an application thread waits for room (or for the
    Trio side) in trio_fastcgi.wsgi's hand-off."""
    from trio_fastcgi import wsgi

    wait = wsgi._Pipe._wait

    def recording_wait(pipe: wsgi._Pipe) -> None:
        blocked.set()
        wait(pipe)

    monkeypatch.setattr(wsgi._Pipe, "_wait", recording_wait)


BLOCK = b"z" * (64 * 1024)
BLOCKS = 128  # 8 MiB: far more than the adapter and the core may hold


def producing_app(
    produced: list[int], closed: list[bool], raised: list[BaseException], *, use_write: bool
) -> Callable[[Environ, StartResponse], Iterable[bytes]]:
    """Makes 8 MiB of body in 64 KiB blocks, yielded or passed to write()."""

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            for _ in range(BLOCKS):
                yield BLOCK
                produced[0] += len(BLOCK)

        def close(self) -> None:
            closed.append(True)

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        write = start_response("200 OK", [])
        if not use_write:
            return Body()
        try:
            for _ in range(BLOCKS):
                write(BLOCK)
                produced[0] += len(BLOCK)
        except ClientDisconnected as exc:
            raised.append(exc)
            raise
        return Body()

    return app


async def test_wsgi_output_handed_off_is_bounded(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trio_fastcgi import wsgi

    blocked = threading.Event()
    record_waits(monkeypatch, blocked)
    produced, closed, raised = [0], [], []  # type: ignore[var-annotated]
    client, server = trio.testing.lockstep_stream_pair()
    nursery.start_soon(
        trio_fastcgi.serve_connection,
        WSGIHandler(producing_app(produced, closed, raised, use_write=False)),
        server,
    )
    web = FakeWebServer(client)
    await web.request(1, params=GET)
    # Nothing is read: the application must come to wait for room.
    assert await trio.to_thread.run_sync(blocked.wait, 10)
    # What it got out: the hand-off buffer, the core's outbox (32 writes) and
    # the writes in progress; not the 8 MiB it would make.
    assert produced[0] <= wsgi.OUTPUT_BUFFER + 40 * len(BLOCK)
    response = await web.read_response(1)
    assert len(response.body) == BLOCKS * len(BLOCK)
    assert (closed, raised) == ([True], [])


@pytest.mark.parametrize("use_write", [True, False])
async def test_wsgi_abort_while_output_waits_for_room(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, use_write: bool
) -> None:

    blocked = threading.Event()
    record_waits(monkeypatch, blocked)
    produced, closed, raised = [0], [], []  # type: ignore[var-annotated]
    client, server = trio.testing.lockstep_stream_pair()
    nursery.start_soon(
        trio_fastcgi.serve_connection,
        WSGIHandler(producing_app(produced, closed, raised, use_write=use_write)),
        server,
    )
    web = FakeWebServer(client)
    await web.request(1, params=GET)
    assert await trio.to_thread.run_sync(blocked.wait, 10)
    await web.send(record(ABORT, 1))
    with trio.fail_after(10):
        response = await web.read_response(1)
    # A waiting write() raises ClientDisconnected in the application; a
    # waiting block of the iterable gets it closed. The request ended without
    # the rest of the body.
    assert (len(raised), closed) == ((1, []) if use_write else (0, [True]))
    assert len(response.body) < BLOCKS * len(BLOCK)
    assert produced[0] < BLOCKS * len(BLOCK)


async def test_wsgi_abandon_ends_the_request_and_keeps_the_token(nursery: trio.Nursery) -> None:
    entered = threading.Event()
    release = threading.Event()
    returned = threading.Event()

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        entered.set()
        release.wait(10)
        returned.set()
        start_response("200 OK", [])
        return [b"late"]

    limiter = trio.CapacityLimiter(1)
    handler = WSGIHandler(app, limiter=limiter)
    web = await serve(nursery, handler)
    await web.request(1, params={**GET, "REQUEST_URI": "/stuck"})
    assert await trio.to_thread.run_sync(entered.wait, 10)
    await trio.testing.wait_all_tasks_blocked()
    abandoned = handler.abandon()
    assert [r.params["REQUEST_URI"] for r in abandoned] == ["/stuck"]
    # The request ends at once, though its thread is still in the application.
    with trio.fail_after(10):
        response = await web.read_response(1)
    assert response.app_status == 0
    assert response.stdout == b""
    assert not returned.is_set()
    assert limiter.borrowed_tokens == 1  # the thread still holds it
    assert handler.abandon() == []
    release.set()
    assert await trio.to_thread.run_sync(returned.wait, 10)
    with trio.fail_after(10):
        async with limiter:  # given back once the thread returned
            pass


# -- the worker threads ------------------------------------------------------------


def blocking_app(
    entered: list[int], release: threading.Event
) -> Callable[[Environ, StartResponse], list[bytes]]:
    """Records its thread; the request /first waits for *release*."""

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        entered.append(threading.get_ident())
        if environ["PATH_INFO"] == "/first":
            assert release.wait(10)
        start_response("200 OK", [])
        return [str(environ["PATH_INFO"]).encode()]

    return app


async def test_wsgi_request_waits_for_the_busy_thread_and_runs_on_it(
    nursery: trio.Nursery,
) -> None:
    entered: list[int] = []
    release = threading.Event()
    handler = WSGIHandler(blocking_app(entered, release), queue_delay=60)
    web = await serve(nursery, handler)
    await web.request(1, params={**GET, "PATH_INFO": "/first"})
    await trio.testing.wait_all_tasks_blocked()
    await web.request(2, params={**GET, "PATH_INFO": "/second"})
    await trio.testing.wait_all_tasks_blocked()
    # A thread is running: the second request is queued for it, not given another.
    assert len(entered) == 1
    release.set()
    with trio.fail_after(10):
        assert (await web.read_response(1)).body == b"/first"
        assert (await web.read_response(2)).body == b"/second"
    assert entered[0] == entered[1]


@pytest.mark.parametrize("queue_delay", [0, 0.01])
async def test_wsgi_blocked_thread_does_not_hold_up_the_queue(
    nursery: trio.Nursery, queue_delay: float
) -> None:
    # /first waits for /second to run: /second must get a thread of its own
    # (at once with queue_delay=0, from the watchdog after the delay otherwise:
    # no later request comes to notice).
    entered: list[int] = []
    release = threading.Event()
    second_ran = threading.Event()
    app = blocking_app(entered, release)

    def releasing_app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        if environ["PATH_INFO"] == "/second":
            release.set()
            second_ran.set()
        return app(environ, start_response)

    handler = WSGIHandler(releasing_app, queue_delay=queue_delay)
    web = await serve(nursery, handler)
    await web.request(1, params={**GET, "PATH_INFO": "/first"})
    await trio.testing.wait_all_tasks_blocked()
    await web.request(2, params={**GET, "PATH_INFO": "/second"})
    with trio.fail_after(10):
        assert (await web.read_response(2)).body == b"/second"
        assert (await web.read_response(1)).body == b"/first"
    assert second_ran.is_set()
    assert entered[0] != entered[1]


async def test_wsgi_request_abandoned_while_queued_never_runs(nursery: trio.Nursery) -> None:
    entered: list[int] = []
    release = threading.Event()
    limiter = trio.CapacityLimiter(2)
    handler = WSGIHandler(blocking_app(entered, release), limiter=limiter, queue_delay=60)
    web = await serve(nursery, handler)
    await web.request(1, params={**GET, "PATH_INFO": "/first"})
    await trio.testing.wait_all_tasks_blocked()
    await web.request(2, params={**GET, "PATH_INFO": "/second"})
    await trio.testing.wait_all_tasks_blocked()
    assert len(handler.abandon()) == 2
    with trio.fail_after(10):
        assert (await web.read_response(1)).stdout == b""
        assert (await web.read_response(2)).stdout == b""
    release.set()
    with trio.fail_after(10):
        for borrower in range(2):  # both tokens come back once the thread is done
            await limiter.acquire_on_behalf_of(borrower)
    assert len(entered) == 1  # the queued request's application was not called


@pytest.mark.parametrize("queue_delay", [-1.0, float("nan")])
def test_wsgi_queue_delay_must_not_be_negative(queue_delay: float) -> None:
    with pytest.raises(ValueError, match="queue_delay"):
        WSGIHandler(capture_environ([]), queue_delay=queue_delay)


async def test_wsgi_idle_threads_exit_and_new_ones_start(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trio_fastcgi import wsgi

    monkeypatch.setattr(wsgi, "_IDLE_TIMEOUT", 0.05)
    entered: list[int] = []
    handler = WSGIHandler(blocking_app(entered, threading.Event()))
    web = await serve(nursery, handler)
    await web.request(1, params={**GET, "PATH_INFO": "/a"})
    with trio.fail_after(10):
        assert (await web.read_response(1)).body == b"/a"
        while handler._threads.threads:  # noqa: ASYNC110 (a thread exits: no Trio event)
            await trio.sleep(0.01)
    await web.request(2, params={**GET, "PATH_INFO": "/b"})
    with trio.fail_after(10):
        assert (await web.read_response(2)).body == b"/b"
    assert len(entered) == 2


def test_wsgi_handler_serves_in_successive_runs() -> None:
    # Each Trio run gets its own wake-up pair and task; the first run's are
    # gone with it, and its worker thread serves the second run's request.
    handler = WSGIHandler(capture_environ([]))

    async def one_request() -> bytes:
        with trio.fail_after(10):  # a lost wake-up would hang
            async with testing.open_test_client(handler) as client:
                return (await client.get("/")).body

    assert trio.run(one_request) == b"ok"
    assert trio.run(one_request) == b"ok"
    assert handler._threads.threads == 1
