"""trio_fastcgi.client against Debian's php-fpm: a FastCGI application nobody
here wrote, started by the test with its own config, on a loopback port and on
a unix socket."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.procs import (
    ManagedProcess,
    free_port,
    require_binary,
    wait_for_tcp,
    wait_for_unix,
)
from trio_fastcgi import ProtocolStatus
from trio_fastcgi.client import Client, open_tcp_client, open_unix_client, parse_cgi_response

pytestmark = pytest.mark.integration

SCRIPT = r"""<?php
$mode = $_GET['mode'] ?? 'info';
if ($mode === 'echo') {
    header('Content-Type: application/octet-stream');
    header('X-Content-Length: ' . ($_SERVER['CONTENT_LENGTH'] ?? 'none'));
    echo file_get_contents('php://input');
} elseif ($mode === 'lines') {
    // $n numbered 16-byte lines: any lost, doubled or reordered chunk shows.
    header('Content-Type: application/octet-stream');
    $n = (int) $_GET['n'];
    for ($i = 0; $i < $n; $i++) {
        printf("%015d\n", $i);
    }
} else {
    http_response_code(201);
    header('Content-Type: application/json');
    echo json_encode([
        'method' => $_SERVER['REQUEST_METHOD'],
        'uri' => $_SERVER['REQUEST_URI'],
        'get' => $_GET,
        'pid' => getmypid(),
    ]);
}
"""


def write_config(directory: Path, listen: str) -> Path:
    user = "user = root\ngroup = root\n" if os.geteuid() == 0 else ""
    config = directory / "php-fpm.conf"
    config.write_text(
        f"""[global]
pid = {directory}/php-fpm.pid
error_log = {directory}/php-fpm.log
daemonize = no

[app]
{user}listen = {listen}
listen.mode = 0600
pm = static
pm.max_children = 2
clear_env = yes
catch_workers_output = yes
"""
    )
    (directory / "php.ini").write_text(
        "memory_limit = 128M\npost_max_size = 16M\noutput_buffering = 0\n"
        "display_errors = stderr\nlog_errors = On\n"
    )
    (directory / "index.php").write_text(SCRIPT)
    return config


def start_php_fpm(directory: Path, listen: str) -> ManagedProcess:
    binary = require_binary("php-fpm8.2", "php-fpm")
    config = write_config(directory, listen)
    argv = [binary, "-F", "-y", str(config), "-c", str(directory / "php.ini")]
    if os.geteuid() == 0:
        argv.append("-R")
    # No system conf.d: the test's php.ini is the whole configuration.
    env = {"PATH": os.environ.get("PATH", ""), "PHP_INI_SCAN_DIR": ""}
    return ManagedProcess(argv, env=env, log_path=directory / "stdout.log")


@pytest.fixture(scope="module")
def php_tcp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    directory = tmp_path_factory.mktemp("php-fpm-tcp")
    port = free_port()
    with start_php_fpm(directory, f"127.0.0.1:{port}") as fpm:
        try:
            wait_for_tcp(port, process=fpm.process)
        except (RuntimeError, TimeoutError) as exc:
            error_log = directory / "php-fpm.log"
            log = error_log.read_text() if error_log.exists() else ""
            pytest.fail(f"php-fpm did not start: {exc}\n{fpm.log()}\n{log}")
        yield port, directory


def params(directory: Path, query: str, method: str = "GET", **extra: str) -> dict[str, str]:
    script = str(directory / "index.php")
    return {
        "GATEWAY_INTERFACE": "CGI/1.1",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REQUEST_METHOD": method,
        "SCRIPT_FILENAME": script,
        "SCRIPT_NAME": "/index.php",
        "REQUEST_URI": f"/index.php?{query}",
        "QUERY_STRING": query,
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "REMOTE_ADDR": "127.0.0.1",
        **extra,
    }


async def test_php_fpm_get_with_query(php_tcp: tuple[int, Path]) -> None:
    port, directory = php_tcp
    async with open_tcp_client("127.0.0.1", port) as client:
        response = await client.request(params(directory, "a=1&b=two%20words"), keep_conn=False)
    assert response.protocol_status is ProtocolStatus.REQUEST_COMPLETE
    assert response.app_status == 0
    cgi = response.parse_cgi()
    assert cgi.status == 201
    assert cgi.header("content-type") == "application/json"
    answer = json.loads(cgi.body)
    assert answer["method"] == "GET"
    assert answer["get"] == {"a": "1", "b": "two words"}
    assert answer["uri"] == "/index.php?a=1&b=two%20words"


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 200_003, 1024 * 1024])
async def test_php_fpm_post_echo(php_tcp: tuple[int, Path], size: int) -> None:
    port, directory = php_tcp
    body = os.urandom(size)
    request_params = params(
        directory,
        "mode=echo",
        "POST",
        CONTENT_LENGTH=str(size),
        CONTENT_TYPE="application/octet-stream",
    )
    async with open_tcp_client("127.0.0.1", port) as client:
        response = await client.request(request_params, body, keep_conn=False)
    cgi = response.parse_cgi()
    assert cgi.status == 200
    assert cgi.header("X-Content-Length") == str(size)
    assert cgi.body == body


async def test_php_fpm_big_response_streamed_byte_exact(php_tcp: tuple[int, Path]) -> None:
    port, directory = php_tcp
    lines = 5 * 1024 * 1024 // 16
    expected = b"".join(b"%015d\n" % i for i in range(lines))
    async with (
        open_tcp_client("127.0.0.1", port, stdout_buffer_size=64 * 1024) as client,
        client.open_request(params(directory, f"mode=lines&n={lines}")) as active,
    ):
        chunks = [chunk async for chunk in active.stdout]
        end = await active.wait_ended()
    assert end.protocol_status is ProtocolStatus.REQUEST_COMPLETE
    assert len(chunks) > 1  # it arrived in pieces, while PHP was still writing
    cgi = parse_cgi_response(b"".join(chunks))
    assert cgi.header("content-type") == "application/octet-stream"
    assert len(cgi.body) == len(expected)
    assert cgi.body == expected


async def test_php_fpm_get_values(php_tcp: tuple[int, Path]) -> None:
    port, _ = php_tcp
    async with open_tcp_client("127.0.0.1", port) as client:
        values = await client.get_values()
    # php-fpm knows only FCGI_MPXS_CONNS (php-cgi also answers the other two);
    # names it does not know are left out of the answer, as the spec says.
    assert values == {"FCGI_MPXS_CONNS": "0"}


async def sequential_requests(client: Client, directory: Path, count: int) -> set[int]:
    pids = set()
    for n in range(count):
        response = await client.request(params(directory, f"n={n}"))
        assert response.request_id == 1
        answer = json.loads(response.parse_cgi().body)
        assert answer["get"] == {"n": str(n)}
        pids.add(answer["pid"])
    return pids


async def test_php_fpm_keep_conn_sequential_requests(php_tcp: tuple[int, Path]) -> None:
    port, directory = php_tcp
    async with open_tcp_client("127.0.0.1", port, max_concurrent=1) as client:
        pids = await sequential_requests(client, directory, 6)
        assert client.is_usable
    # One kept connection is served by one worker from start to end.
    assert len(pids) == 1


async def test_php_fpm_unix_socket(tmp_path: Path) -> None:
    socket_path = tmp_path / "php.sock"
    with start_php_fpm(tmp_path, str(socket_path)):
        wait_for_unix(socket_path)
        async with open_unix_client(socket_path, max_concurrent=1) as client:
            pids = await sequential_requests(client, tmp_path, 3)
            body = os.urandom(300_000)
            response = await client.request(
                params(tmp_path, "mode=echo", "POST", CONTENT_LENGTH=str(len(body))), body
            )
            values = await client.get_values(["FCGI_MPXS_CONNS"])
    assert len(pids) == 1
    assert response.parse_cgi().body == body
    assert values == {"FCGI_MPXS_CONNS": "0"}
