"""``trio-fastcgi dev``: the h11 HTTP front end talking FastCGI to the app."""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import h11
import httpx
import pytest
import trio

from examples.flask_app import app as flask_app
from examples.hello import handler as hello_handler
from examples.starlette_app import app as starlette_app
from tests.integration.procs import ManagedProcess, free_port, wait_for_tcp
from trio_fastcgi import Request
from trio_fastcgi._app import AppOptions, CLIError, make_handler
from trio_fastcgi._cli import build_parser
from trio_fastcgi._cli import main as cli_main
from trio_fastcgi._dev import build_parser as build_dev_parser
from trio_fastcgi._dev import cgi_params, serve_dev
from trio_fastcgi._workers import LoadedApp
from trio_fastcgi.asgi import ASGIHandler
from trio_fastcgi.wsgi import WSGIHandler

REPO = Path(__file__).resolve().parents[1]

# The dev server is an HTTP front end on a real loopback socket talking to the
# application over another one: every test here but the first uses sockets.
pytestmark = pytest.mark.integration


async def start_dev(nursery: trio.Nursery, loaded: LoadedApp) -> int:
    listeners = await nursery.start(partial(serve_dev, loaded, port=0))
    return int(listeners[0].socket.getsockname()[1])


def http(port: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10)


def test_cgi_params_like_nginx() -> None:
    request = h11.Request(
        method="POST",
        target="/a%20b/c?x=1&y=%2F",
        headers=[
            ("Host", "example.org:8000"),
            ("Content-Type", "text/plain"),
            ("Content-Length", "3"),
            ("X-Forwarded-For", "1.1.1.1"),
            ("Accept", "a"),
            ("Accept", "b"),
            ("X_Sneaky", "dropped"),
            ("Proxy", "http://evil"),
        ],
    )
    params = dict(cgi_params(request, server=("127.0.0.1", 8000), client=("127.0.0.1", 5000)))
    assert params[b"REQUEST_METHOD"] == b"POST"
    assert params[b"REQUEST_URI"] == b"/a%20b/c?x=1&y=%2F"
    assert params[b"SCRIPT_NAME"] == b""
    assert params[b"PATH_INFO"] == b"/a b/c"
    assert params[b"QUERY_STRING"] == b"x=1&y=%2F"
    assert params[b"SERVER_NAME"] == b"example.org"
    assert params[b"SERVER_PORT"] == b"8000"
    assert params[b"REMOTE_ADDR"] == b"127.0.0.1"
    assert params[b"REMOTE_PORT"] == b"5000"
    assert params[b"CONTENT_TYPE"] == b"text/plain"
    assert params[b"CONTENT_LENGTH"] == b"3"
    assert params[b"HTTP_HOST"] == b"example.org:8000"
    assert params[b"HTTP_X_FORWARDED_FOR"] == b"1.1.1.1"
    assert params[b"HTTP_ACCEPT"] == b"a, b"
    assert params[b"SERVER_PROTOCOL"] == b"HTTP/1.1"
    assert b"HTTP_X_SNEAKY" not in params
    assert b"HTTP_PROXY" not in params


async def test_dev_hello_example(nursery: trio.Nursery) -> None:
    port = await start_dev(nursery, (hello_handler, None))
    async with http(port) as client:
        response = await client.get("/some/page?x=1")
    assert response.status_code == 200
    assert response.text == "Hello from trio-fastcgi! You asked for /some/page?x=1\n"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["server"].startswith("trio-fastcgi-dev/")


async def test_dev_flask_body_and_content_length(nursery: trio.Nursery) -> None:
    port = await start_dev(nursery, (WSGIHandler(flask_app), None))
    body = bytes(range(256)) * 4096  # 1 MiB
    async with http(port) as client:
        response = await client.post("/echo", content=body)
        info = await client.get("/headers?q=1", headers={"User-Agent": "dev-test"})
    assert response.status_code == 200
    assert response.headers["content-length"] == str(len(body))
    assert "transfer-encoding" not in response.headers
    assert response.content == body
    assert info.json()["args"] == {"q": "1"}
    assert info.json()["user_agent"] == "dev-test"


async def test_dev_chunked_request_and_streamed_chunked_response(nursery: trio.Nursery) -> None:
    handler = ASGIHandler(starlette_app)
    port = await start_dev(nursery, (handler, handler.lifespan()))

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(5):
            yield f"piece {i};".encode()

    async with http(port) as client:
        echoed = await client.post("/echo", content=pieces())  # chunked upload
        async with client.stream("GET", "/stream?n=3&delay=0.05") as streamed:
            assert streamed.headers["transfer-encoding"] == "chunked"
            chunks = [chunk async for chunk in streamed.aiter_raw()]
        info = await client.get("/info")
    assert echoed.content == b"".join(f"piece {i};".encode() for i in range(5))
    assert b"".join(chunks) == b"line 0\nline 1\nline 2\n"
    assert len(chunks) >= 2  # the lines arrived as they were produced
    assert info.json()["lifespan_started"] is True


async def test_dev_keep_alive_serves_several_requests_on_one_connection(
    nursery: trio.Nursery,
) -> None:
    async def whoami(request: Request) -> None:
        await request.respond(request.params["REMOTE_PORT"])

    port = await start_dev(nursery, (whoami, None))
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    local_port = str(stream.socket.getsockname()[1]).encode()
    conn = h11.Connection(h11.CLIENT)
    answers = []
    async with stream:
        for _ in range(3):
            request = h11.Request(method="GET", target="/", headers=[("Host", "x")])
            await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
            body = b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    assert isinstance(event, h11.Response)
                    assert event.status_code == 200
            answers.append(body)
            conn.start_next_cycle()
    assert answers == [local_port] * 3


async def test_dev_head_request_has_no_body(nursery: trio.Nursery) -> None:
    port = await start_dev(nursery, (hello_handler, None))
    async with http(port) as client:
        response = await client.head("/x")
    assert response.status_code == 200
    assert response.content == b""


async def test_dev_bad_gateway_when_the_app_breaks_cgi(nursery: trio.Nursery) -> None:
    async def garbage(request: Request) -> None:
        await request.stdout.send_all(b"this is not a CGI response")

    port = await start_dev(nursery, (garbage, None))
    async with http(port) as client:
        response = await client.get("/")
    assert response.status_code == 502
    assert "Bad Gateway" in response.text


async def test_dev_app_exception_is_500_not_a_hang(nursery: trio.Nursery) -> None:
    async def broken(request: Request) -> None:
        raise RuntimeError("boom")

    port = await start_dev(nursery, (broken, None))
    async with http(port) as client:
        response = await client.get("/")
        again = await client.get("/")
    assert response.status_code == 500
    assert again.status_code == 500


async def test_dev_bad_http_gets_400(nursery: trio.Nursery) -> None:
    port = await start_dev(nursery, (hello_handler, None))
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"NOT HTTP AT ALL\r\n\r\n")
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400 ")


async def test_dev_command_serves_hello_and_warns(tmp_path: Path) -> None:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "trio_fastcgi",
        "dev",
        "examples.hello:handler",
        "--port",
        str(port),
    ]
    with ManagedProcess(argv, cwd=REPO, log_path=tmp_path / "dev.log") as process:
        await trio.to_thread.run_sync(partial(wait_for_tcp, port, process=process.process))
        async with http(port) as client:
            response = await client.get("/")
        log = process.log()
    assert response.text == "Hello from trio-fastcgi! You asked for /\n"
    assert "DEVELOPMENT server. Do not use it in production" in log
    assert f"http://127.0.0.1:{port}/" in log


def test_dev_help_says_development_only() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trio_fastcgi", "dev", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    assert "DEVELOPMENT ONLY" in result.stdout
    assert "--port" in result.stdout


def _interrupted(argv: list[str], port: int, tmp_path: Path) -> tuple[int, str]:
    """Start *argv*, wait until it listens on *port*, press Ctrl+C (SIGINT):
    its exit status and what it wrote."""
    log_path = tmp_path / "interrupted.log"
    with ManagedProcess(argv, cwd=REPO, log_path=log_path) as process:
        wait_for_tcp(port, process=process.process)
        process.process.send_signal(signal.SIGINT)
        status = process.process.wait(timeout=30)
        return status, process.log()


def test_dev_ctrl_c_exits_0_quietly(tmp_path: Path) -> None:
    port = free_port()
    argv = [sys.executable, "-m", "trio_fastcgi", "dev", "examples.hello:handler"]
    status, log = _interrupted([*argv, "--port", str(port)], port, tmp_path)
    assert status == 0, log
    assert "Traceback" not in log
    assert "KeyboardInterrupt" not in log
    assert log.rstrip().endswith("INFO trio_fastcgi.dev: stopped")


@pytest.mark.parametrize("script", ["examples/tutorial/hello.py", "examples/hello.py"])
def test_hello_examples_ctrl_c_exits_0_quietly(script: str, tmp_path: Path) -> None:
    port = free_port()
    if script == "examples/hello.py":
        port = 9000  # the example's fixed port
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                pytest.skip("port 9000 is taken on this machine")
        argv = [sys.executable, script]
    else:
        argv = [sys.executable, script, str(port)]
    status, log = _interrupted(argv, port, tmp_path)
    assert status == 0, log
    assert "Traceback" not in log
    assert log.rstrip().endswith("stopped")


def test_dev_busy_port_is_one_line_naming_the_address(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "trio_fastcgi",
                "dev",
                "examples.hello:handler",
                f"--port={port}",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.rstrip().splitlines()[-1] == (
        f"trio-fastcgi dev: error: cannot listen on http://127.0.0.1:{port}/: "
        "the address is already in use (is another server running there?)"
    )


@pytest.mark.parametrize("bad", [["--threads=0"], ["--port=http"], ["--log-level=loud"]])
def test_dev_parser_rejects_what_the_main_command_rejects(
    bad: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # --threads 0 once started, and then every WSGI request waited for ever.
    with pytest.raises(SystemExit) as info:
        build_dev_parser().parse_args(["m:app", *bad])
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_dev_threads_0_is_refused_with_a_clear_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["dev", "examples.flask_app:app", "--threads", "0", "--app-dir", str(REPO)]
    with pytest.raises(SystemExit) as info:
        cli_main(argv)
    assert info.value.code == 2
    assert capsys.readouterr().err.rstrip().splitlines()[-1] == (
        "trio-fastcgi dev: error: argument --threads: '0': expected a whole number >= 1"
    )


def test_threads_0_is_refused_however_the_handler_is_built() -> None:
    # The check the parsers make is also the one of the loading code itself.
    message = "--threads 0: a WSGI application needs at least 1 thread"
    with pytest.raises(CLIError, match=message):
        make_handler(flask_app, "wsgi", threads=0)
    with pytest.raises(CLIError, match=message):
        AppOptions(spec="examples.flask_app:app", threads=0)


SHARED_OPTIONS = [
    "--interface", "--app-dir", "--script-name", "--threads", "--lifespan", "--asgi-loop",
    "--log-level", "--log-config", "--access-log",
]  # fmt: skip


def _option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    (action,) = [a for a in parser._actions if flag in a.option_strings]
    return action


@pytest.mark.parametrize("flag", SHARED_OPTIONS)
def test_both_commands_take_the_shared_options_alike(flag: str) -> None:
    main_option, dev_option = _option(build_parser(), flag), _option(build_dev_parser(), flag)
    for field in ("option_strings", "dest", "choices", "default", "metavar", "help"):
        assert getattr(main_option, field) == getattr(dev_option, field), field


@pytest.mark.parametrize(
    "bad",
    [
        ["--threads=0"],
        ["--threads=many"],
        ["--interface=cgi"],
        ["--lifespan=maybe"],
        ["--asgi-loop=curio"],
        ["--log-level=loud"],
    ],
)
def test_both_commands_refuse_bad_shared_options_alike(
    bad: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    errors = []
    for parser in (build_parser(), build_dev_parser()):
        with pytest.raises(SystemExit) as info:
            parser.parse_args(["m:app", *bad])
        assert info.value.code == 2
        errors.append(capsys.readouterr().err.rstrip().splitlines()[-1])
    main_error, dev_error = errors
    assert main_error.startswith("trio-fastcgi: error: argument ")
    assert dev_error == main_error.replace("trio-fastcgi:", "trio-fastcgi dev:", 1)


@pytest.mark.parametrize("level", ["DEBUG", "Info", "warning"])
def test_log_level_is_case_insensitive(level: str) -> None:
    assert build_dev_parser().parse_args(["m:app", f"--log-level={level}"]).log_level == (
        level.lower()
    )
    assert build_parser().parse_args(["m:app", f"--log-level={level}"]).log_level == level.lower()


# -- --reload --------------------------------------------------------------------------

RELOAD_APP = """
import os

async def app(request):
    await request.respond(f"{{VERSION}} from {{os.getpid()}}")

VERSION = {version!r}
"""


def _get_until(port: int, process: subprocess.Popen[bytes], wanted: str) -> str:
    """GET / until the body starts with *wanted* (bounded): the body."""
    deadline = time.monotonic() + 20
    body = ""
    while not body.startswith(wanted):
        if time.monotonic() > deadline:
            raise AssertionError(f"still {body!r}, not {wanted!r}, after 20 s")
        if process.poll() is not None:
            raise AssertionError(f"the reloader exited with {process.returncode}")
        try:
            body = httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text
        except httpx.TransportError:
            body = ""  # between two servers, or not started yet
        time.sleep(0.1)
    return body


def test_dev_reload_restarts_when_the_app_changes(tmp_path: Path) -> None:
    app_dir = tmp_path / "project"
    app_dir.mkdir()
    module = app_dir / "reloadme.py"
    module.write_text(RELOAD_APP.format(version="first"))
    port = free_port()
    argv = [
        sys.executable, "-m", "trio_fastcgi", "dev", "reloadme:app", "--reload",
        "--port", str(port), "--app-dir", str(app_dir),
    ]  # fmt: skip
    with ManagedProcess(argv, cwd=tmp_path, log_path=tmp_path / "dev.log") as reloader:
        first = _get_until(port, reloader.process, "first")
        # Another length as well: a same-size source in the same second could
        # look unchanged to the bytecode cache.
        module.write_text(RELOAD_APP.format(version="second, edited"))
        second = _get_until(port, reloader.process, "second, edited")
        reloader.process.send_signal(signal.SIGTERM)
        status = reloader.process.wait(timeout=30)
        log = reloader.log()
    assert status == 0, log
    first_pid, second_pid = int(first.rsplit(" ", 1)[1]), int(second.rsplit(" ", 1)[1])
    assert first_pid != second_pid != reloader.pid  # a fresh process imported it afresh
    assert re.search(r"WARNING trio_fastcgi.dev: changed: \S*reloadme.py; restarting", log)
    assert "Traceback" not in log
    assert "WARNING watchfiles" not in log  # a stop is not news
    assert log.rstrip().endswith("INFO trio_fastcgi.dev: stopped")
    for pid in (first_pid, second_pid):  # both servers are gone with the reloader
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_dev_reload_without_watchfiles_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from trio_fastcgi._dev import main as dev_main

    monkeypatch.setitem(sys.modules, "watchfiles", None)  # as if not installed
    with pytest.raises(SystemExit) as info:
        dev_main(["examples.hello:handler", "--reload"])
    assert info.value.code == 2
    assert "--reload needs the watchfiles package: pip install 'trio-fastcgi[reload]'" in (
        capsys.readouterr().err
    )


def test_dev_app_spec_is_checked(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_dev_parser().parse_args(["app.py:app"])
    assert "use the module name, not the file name: app:app" in capsys.readouterr().err


# -- --asgi-loop -----------------------------------------------------------------------

#: Like Django's ASGI handler (through asgiref): needs a running asyncio loop and
#: gathers, but is not a class the asyncio-loop detection knows.
ASYNCIO_APP = """
import asyncio

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    loop = asyncio.get_running_loop()  # raises RuntimeError on Trio
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    word, _ = await asyncio.gather(
        asyncio.sleep(0, b"gathered "), loop.run_in_executor(None, bytes, 2)
    )
    headers = [(b"content-type", b"text/plain")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": word + body})
"""


def test_dev_asgi_loop_option_builds_the_asyncio_bridge(tmp_path: Path) -> None:
    (tmp_path / "asyncioapp.py").write_text(ASYNCIO_APP)
    argv = ["asyncioapp:app", "--app-dir", str(tmp_path)]
    on_asyncio = AppOptions.from_args(
        build_dev_parser().parse_args([*argv, "--asgi-loop=asyncio"]), access_log=False
    ).load()[0]
    on_trio = AppOptions.from_args(build_dev_parser().parse_args(argv), access_log=False).load()[0]
    assert isinstance(on_asyncio, ASGIHandler)
    assert isinstance(on_trio, ASGIHandler)
    assert type(on_asyncio.app).__name__ == "AsyncioApp"
    assert type(on_trio.app).__name__ != "AsyncioApp"  # auto: not known to need asyncio


@pytest.mark.parametrize(("loop", "status"), [("asyncio", 200), ("auto", 500)])
async def test_dev_serves_an_asyncio_app_with_asgi_loop_asyncio(
    tmp_path: Path, loop: str, status: int
) -> None:
    (tmp_path / "asyncioapp.py").write_text(ASYNCIO_APP)
    port = free_port()
    argv = [
        sys.executable, "-m", "trio_fastcgi", "dev", "asyncioapp:app", f"--asgi-loop={loop}",
        "--app-dir", str(tmp_path), "--port", str(port), "--lifespan=off",
    ]  # fmt: skip
    with ManagedProcess(argv, cwd=REPO, log_path=tmp_path / "dev.log") as process:
        await trio.to_thread.run_sync(partial(wait_for_tcp, port, process=process.process))
        async with http(port) as client:
            response = await client.post("/", content=b"body")
        log = process.log()
    assert response.status_code == status, log
    if status == 200:
        assert response.text == "gathered body"
    else:  # on Trio the app cannot find its asyncio loop
        assert "no running event loop" in log
