"""The access log: the line format (pure), the status and size read from a
response, the handler wrapper in memory, and ``--access-log`` in the command."""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from tests.integration.procs import ManagedProcess, free_port, wait_for_tcp
from trio_fastcgi import Request
from trio_fastcgi._access_log import (
    AccessLogHandler,
    escape,
    format_access_line,
    format_time,
    response_summary,
)
from trio_fastcgi.client import open_tcp_client
from trio_fastcgi.testing import open_test_client
from trio_fastcgi.wsgi import WSGIHandler

REPO = Path(__file__).resolve().parents[1]
WHEN = datetime(2026, 12, 3, 6, 17, 49, 123456, tzinfo=timezone(timedelta(hours=1)))

# -- the line --------------------------------------------------------------------------


def test_format_access_line_is_combined_plus_id_and_duration() -> None:
    params = {
        "REMOTE_ADDR": "192.0.2.7",
        "REMOTE_USER": "alice",
        "REQUEST_METHOD": "GET",
        "REQUEST_URI": "/a/b?c=1",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_REFERER": "https://example.org/",
        "HTTP_USER_AGENT": "curl/8.5.0",
    }
    line = format_access_line(
        params, status=404, body_bytes=512, request_id=3, when=WHEN, duration=0.0012345
    )
    assert line == (
        '192.0.2.7 - alice [03/Dec/2026:06:17:49 +0100] "GET /a/b?c=1 HTTP/1.1" 404 512 '
        '"https://example.org/" "curl/8.5.0" request_id=3 duration=0.001234'
    )


def test_format_access_line_marks_what_is_unknown() -> None:
    line = format_access_line({}, status=None, body_bytes=None, request_id=1, when=WHEN, duration=0)
    assert (
        line
        == '- - - [03/Dec/2026:06:17:49 +0100] "- - -" - - "-" "-" request_id=1 duration=0.000000'
    )


def test_format_access_line_builds_the_uri_without_request_uri() -> None:
    # Apache's mod_fcgid and lighttpd send the parts; an Authorizer may too.
    params = {"SCRIPT_NAME": "/app", "PATH_INFO": "/x y", "QUERY_STRING": "q=1"}
    line = format_access_line(params, status=200, body_bytes=0, request_id=1, when=WHEN, duration=1)
    assert '"- /app/x\\x20y?q=1 -"' not in line  # a space is printable: kept
    assert '"- /app/x y?q=1 -"' in line


def test_escape_keeps_one_request_on_one_line() -> None:
    assert escape("plain /path?x=1") == "plain /path?x=1"
    assert escape('say "hi"\\') == "say \\x22hi\\x22\\x5C"
    assert escape("a\r\nb\tc\x7f") == "a\\x0D\\x0Ab\\x09c\\x7F"
    assert escape("café") == "caf\\xC3\\xA9"  # bytes, as nginx writes them
    # A param that was not UTF-8 (decoded with surrogateescape): its bytes.
    assert escape(b"\xff/".decode("utf-8", "surrogateescape")) == "\\xFF/"


@pytest.mark.parametrize(
    ("when", "text"),
    [
        (datetime(2027, 1, 9, 0, 0, 0, tzinfo=timezone.utc), "09/Jan/2027:00:00:00 +0000"),
        (
            datetime(2026, 7, 31, 23, 5, 1, tzinfo=timezone(-timedelta(hours=4, minutes=30))),
            "31/Jul/2026:23:05:01 -0430",
        ),
    ],
)
def test_format_time(when: datetime, text: str) -> None:
    assert format_time(when) == text


# -- status and size from the response ------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "sent", "expected"),
    [
        (b"Status: 404 Not Found\r\nContent-Type: text/plain\r\n\r\nnope", 60, (404, 60 - 51)),
        (b"Content-Type: text/html\r\n\r\n<p>", 100, (200, 100 - 27)),
        (b"Content-Type: text/html\n\nhi", 27, (200, 2)),
        (b"Location: https://example.org/\r\n\r\n", 34, (302, 0)),
        (b"Location: /local\r\n\r\n", 20, (200, 0)),
        (b"status:201\r\n\r\n", 14, (201, 0)),
        (b"Status: 503\r\nRetry-After: 1", 40, (503, None)),  # head goes on
        (b"Content-Type: text/plain\r\n", 40, (None, None)),
        (b"Status: abc\r\n\r\n", 15, (None, 0)),
    ],
)
def test_response_summary(first: bytes, sent: int, expected: tuple[int | None, int | None]) -> None:
    assert response_summary(first, sent) == expected


# -- the wrapper, in memory ----------------------------------------------------------------


@pytest.fixture
def access_records() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("trio_fastcgi.access")
    keep = Keep()
    previous = logger.level
    logger.addHandler(keep)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(keep)
    logger.setLevel(previous)


async def native(request: Request) -> None:
    if request.params.get("PATH_INFO") == "/fail":
        raise RuntimeError("fails on purpose")
    if request.params.get("PATH_INFO") == "/slow":
        await trio.sleep(0.01)
    await request.respond("x" * 10, status=201, headers={"X-A": "b"})


async def test_access_log_handler_logs_each_request(
    access_records: list[logging.LogRecord],
) -> None:
    async with open_test_client(AccessLogHandler(native), raise_server_exceptions=False) as client:
        created = await client.get("/slow?z=9", headers={"User-Agent": "tester"})
        failed = await client.get("/fail")
    assert created.status == 201
    assert failed.status == 500
    lines = [r.getMessage() for r in access_records]
    assert len(lines) == 2
    assert re.fullmatch(
        r'127\.0\.0\.1 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "GET /slow\?z=9 HTTP/1.1" '
        r'201 10 "-" "tester" request_id=\d+ duration=\d+\.\d{6}',
        lines[0],
    ), lines[0]
    assert float(lines[0].rpartition("=")[2]) >= 0.01
    assert '"GET /fail HTTP/1.1" 500 - ' in lines[1]


def wsgi_app(environ: dict[str, object], start_response: object) -> list[bytes]:
    start_response("418 I'm a teapot", [("Content-Type", "text/plain")])  # type: ignore[operator]
    return [b"short", b" and stout"]


async def test_access_log_handler_reads_wsgi_responses(
    access_records: list[logging.LogRecord],
) -> None:
    handler = AccessLogHandler(WSGIHandler(wsgi_app))
    async with open_test_client(handler) as client:
        response = await client.post("/tea", body=b"x")
    assert response.status == 418
    assert '"POST /tea HTTP/1.1" 418 15 ' in access_records[0].getMessage()


# -- through the command -----------------------------------------------------------------


@pytest.mark.integration
async def test_access_log_file_through_the_command_with_workers(tmp_path: Path) -> None:
    log_path = tmp_path / "access.log"
    port = free_port()
    argv = [
        sys.executable, "-m", "trio_fastcgi", "examples.hello:handler",
        f"--bind=127.0.0.1:{port}", "--workers=2", f"--access-log={log_path}",
    ]  # fmt: skip
    with ManagedProcess(argv, cwd=REPO, log_path=tmp_path / "server.log") as process:
        await trio.to_thread.run_sync(partial(wait_for_tcp, port, process=process.process))
        async with open_tcp_client("127.0.0.1", port) as client:
            for n in range(3):
                params = {
                    "REQUEST_METHOD": "GET",
                    "REQUEST_URI": f"/n/{n}",
                    "SERVER_PROTOCOL": "HTTP/1.1",
                    "REMOTE_ADDR": "198.51.100.9",
                }
                response = await client.request(params)
                assert response.parse_cgi().status == 200
        await trio.to_thread.run_sync(process.stop)
        assert process.process.returncode == 0, process.log()
        assert "GET /n/" not in process.log()  # not on stderr as well
    lines = log_path.read_text().splitlines()
    assert [line.split('"')[1] for line in lines] == [f"GET /n/{n} HTTP/1.1" for n in range(3)]
    for line in lines:
        assert re.fullmatch(
            r'198\.51\.100\.9 - - \[[^]]+\] "GET /n/\d HTTP/1.1" 200 \d+ "-" "-" '
            r"request_id=1 duration=\d+\.\d{6}",
            line,
        ), line


@pytest.mark.integration
def test_access_log_to_stdout_in_the_dev_server(tmp_path: Path) -> None:
    port = free_port()
    argv = [
        sys.executable, "-m", "trio_fastcgi", "dev", "examples.hello:handler",
        "--port", str(port), "--access-log", "-",
    ]  # fmt: skip
    process = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_tcp(port, process=process)
        seen = httpx.get(f"http://127.0.0.1:{port}/seen?a=1", headers={"User-Agent": "probe"})
        assert seen.status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    lines = out.decode().splitlines()
    assert len(lines) == 1, out
    assert re.fullmatch(
        r'127\.0\.0\.1 - - \[[^]]+\] "GET /seen\?a=1 HTTP/1.1" 200 \d+ "-" "probe" '
        r"request_id=\d+ duration=\d+\.\d{6}",
        lines[0],
    ), lines[0]


def test_access_log_that_cannot_be_opened_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "dir" / "access.log"
    result = subprocess.run(
        [sys.executable, "-m", "trio_fastcgi", "examples.hello:handler",
         "--bind=127.0.0.1:0", f"--access-log={missing}"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.rstrip().splitlines()[-1] == (
        f"trio-fastcgi: error: --access-log {missing}: cannot open it: No such file or directory"
    )


def test_access_log_handler_passes_abandon_on() -> None:
    class Stuck:
        async def __call__(self, request: Request) -> None: ...

        def abandon(self) -> list[Request]:
            return given

    given: list[Request] = []
    assert AccessLogHandler(Stuck()).abandon() is given
    assert AccessLogHandler(native).abandon() == []  # nothing to abandon
