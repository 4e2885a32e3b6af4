"""``python -m trio_fastcgi.client`` run as a real subprocess against servers
started in the test: output, stderr and exit statuses."""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.integration.procs import free_port
from trio_fastcgi import Request, Role, serve_tcp, serve_unix

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]


async def run_cli(
    *args: str, stdin: bytes = b"", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    environment = {**os.environ, **(env or {})}
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO), environment.get("PYTHONPATH")])
    )
    with trio.fail_after(60):
        return await trio.run_process(
            [sys.executable, "-m", "trio_fastcgi.client", *args],
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=environment,
        )


async def show(request: Request) -> int:
    """Answer with the params and body as JSON; appStatus from ?status=N."""
    body = await request.stdin.receive_all()
    data = b""
    if request.role is Role.FILTER:
        data = await request.data.receive_all()
    await request.stderr.send_all(b"stderr line\n")
    payload = {"params": dict(request.params), "body": body.decode(), "data": data.decode()}
    await request.respond(json.dumps(payload), content_type="application/json")
    query = dict(part.partition("=")[::2] for part in request.params["QUERY_STRING"].split("&"))
    return int(query.get("status") or 0)


async def start_tcp(nursery: trio.Nursery, handler: object = show, host: str = "127.0.0.1") -> int:
    listeners = await nursery.start(
        functools.partial(serve_tcp, handler, 0, host=host, roles=set(Role))  # type: ignore[arg-type]
    )
    return int(listeners[0].socket.getsockname()[1])


def body_json(stdout: bytes) -> dict[str, object]:
    head, _, body = stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"Status: 200 OK\r\n")
    return json.loads(body)  # type: ignore[no-any-return]


async def test_client_cli_get_with_params(nursery: trio.Nursery) -> None:
    port = await start_tcp(nursery)
    result = await run_cli(
        f"127.0.0.1:{port}",
        "/srv/app/index.php?a=1&b=2",
        "-p",
        "CUSTOM=x=y",
        "-H",
        "X-Trace: abc",
        "-p",
        "SERVER_NAME=example.org",
    )
    assert result.returncode == 0, result.stderr
    answer = body_json(result.stdout)
    params = answer["params"]
    assert isinstance(params, dict)
    assert params["REQUEST_METHOD"] == "GET"
    assert params["SCRIPT_FILENAME"] == "/srv/app/index.php"
    assert params["SCRIPT_NAME"] == "/srv/app/index.php"
    assert params["REQUEST_URI"] == "/srv/app/index.php?a=1&b=2"
    assert params["QUERY_STRING"] == "a=1&b=2"
    assert params["GATEWAY_INTERFACE"] == "CGI/1.1"
    assert params["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert params["CUSTOM"] == "x=y"
    assert params["HTTP_X_TRACE"] == "abc"
    assert params["SERVER_NAME"] == "example.org"
    assert "CONTENT_LENGTH" not in params
    assert result.stderr == b"stderr line\n"


async def test_client_cli_post_from_stdin_body_only(nursery: trio.Nursery) -> None:
    port = await start_tcp(nursery)
    body = bytes(range(256)).decode("latin-1").encode() * 300
    result = await run_cli(f"127.0.0.1:{port}", "/post", "-X", "POST", "--body-only", stdin=body)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["params"]["REQUEST_METHOD"] == "POST"
    assert answer["params"]["CONTENT_LENGTH"] == str(len(body))
    assert answer["body"] == body.decode()
    piped = await run_cli(f"127.0.0.1:{port}", "/", "--stdin", "--body-only", stdin=b"abc")
    assert json.loads(piped.stdout)["body"] == "abc"
    inline = await run_cli(f"127.0.0.1:{port}", "/", "-d", "xyz", "-X", "PUT", "--body-only")
    answer = json.loads(inline.stdout)
    assert (answer["params"]["REQUEST_METHOD"], answer["body"]) == ("PUT", "xyz")


async def test_client_cli_app_status_is_the_exit_status(nursery: trio.Nursery) -> None:
    port = await start_tcp(nursery)
    three = await run_cli(f"127.0.0.1:{port}", "/?status=3")
    big = await run_cli(f"127.0.0.1:{port}", "/?status=4000")
    assert three.returncode == 3
    assert big.returncode == 255
    assert body_json(three.stdout)["params"]["QUERY_STRING"] == "status=3"  # type: ignore[index]


async def test_client_cli_env_and_roles(nursery: trio.Nursery, tmp_path: Path) -> None:
    port = await start_tcp(nursery)
    env_result = await run_cli(
        f"127.0.0.1:{port}", "/", "--env", "--body-only", env={"FROM_ENV": "yes"}
    )
    assert json.loads(env_result.stdout)["params"]["FROM_ENV"] == "yes"
    document = tmp_path / "doc.txt"
    document.write_bytes(b"filter me")
    filtered = await run_cli(
        f"127.0.0.1:{port}", "/doc", "--role", "filter", "--filter-data", str(document)
    )
    assert filtered.returncode == 0, filtered.stderr
    answer = body_json(filtered.stdout)
    assert answer["data"] == "filter me"
    assert answer["params"]["FCGI_DATA_LENGTH"] == "9"  # type: ignore[index]
    authorized = await run_cli(f"127.0.0.1:{port}", "/", "--role", "authorizer", "--body-only")
    params = json.loads(authorized.stdout)["params"]
    assert "CONTENT_LENGTH" not in params
    assert "SCRIPT_NAME" not in params


async def test_client_cli_get_values(nursery: trio.Nursery) -> None:
    port = await start_tcp(nursery)
    result = await run_cli(f"127.0.0.1:{port}", "--get-values")
    assert result.returncode == 0
    assert result.stdout == b"FCGI_MAX_CONNS=1024\nFCGI_MAX_REQS=100\nFCGI_MPXS_CONNS=1\n"
    one = await run_cli(f"127.0.0.1:{port}", "--get-values", "FCGI_MPXS_CONNS", "UNKNOWN")
    assert one.stdout == b"FCGI_MPXS_CONNS=1\n"


async def test_client_cli_unix_socket_and_ipv6(nursery: trio.Nursery, tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    await nursery.start(functools.partial(serve_unix, show, str(path)))
    result = await run_cli(str(path), "/unix?status=5")
    assert result.returncode == 5
    assert body_json(result.stdout)["params"]["REQUEST_URI"] == "/unix?status=5"  # type: ignore[index]
    prefixed = await run_cli(f"unix:{path}", "/")
    assert prefixed.returncode == 0
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return  # no IPv6 loopback on this machine
    port = await start_tcp(nursery, host="::1")
    v6 = await run_cli(f"[::1]:{port}", "/v6")
    assert v6.returncode == 0, v6.stderr
    assert body_json(v6.stdout)["params"]["REQUEST_URI"] == "/v6"  # type: ignore[index]


async def test_client_cli_unreachable(tmp_path: Path) -> None:
    port = free_port()
    tcp = await run_cli(f"127.0.0.1:{port}", "/")
    assert tcp.returncode == 69
    assert tcp.stderr.decode().splitlines() == [
        f"python -m trio_fastcgi.client: cannot connect to 127.0.0.1:{port}: Connection refused"
    ]
    unix = await run_cli(str(tmp_path / "none.sock"), "/")
    assert unix.returncode == 69
    assert b"No such file or directory" in unix.stderr
    assert len(unix.stderr.splitlines()) == 1


async def read_whole_request(stream: trio.SocketStream) -> None:
    """Read up to the empty FCGI_STDIN of request 1. Closing with unread input
    would make the kernel reset the connection, and the client would see a
    reset instead of the early close these tests are about."""
    received = b""
    while b"\x01\x05\x00\x01\x00\x00\x00\x00" not in received:
        chunk = await stream.receive_some()
        if not chunk:
            return
        received += chunk


async def test_client_cli_server_closes_early(nursery: trio.Nursery) -> None:
    async def hang_up(stream: trio.SocketStream) -> None:
        await read_whole_request(stream)
        await stream.send_all(b"\x01\x06\x00\x01\x00\x04\x04\x00part\x00\x00\x00\x00")
        await stream.aclose()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, hang_up, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    result = await run_cli(f"127.0.0.1:{port}", "/")
    assert result.returncode == 74
    assert result.stdout == b"part"
    message = result.stderr.decode().splitlines()
    assert len(message) == 1
    assert "lost" in message[0]
    assert "before FCGI_END_REQUEST" in message[0]


async def test_client_cli_garbage_and_refusal(nursery: trio.Nursery) -> None:
    async def http_server(stream: trio.SocketStream) -> None:
        await read_whole_request(stream)
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await stream.aclose()

    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, http_server, 0, host="127.0.0.1")
    )
    port = listeners[0].socket.getsockname()[1]
    garbage = await run_cli(f"127.0.0.1:{port}", "/")
    assert garbage.returncode == 76
    assert b"protocol error" in garbage.stderr
    assert b"unsupported FastCGI version 72" in garbage.stderr

    async def responder(request: Request) -> None:
        await request.respond(b"never")

    responder_listeners = await nursery.start(
        functools.partial(serve_tcp, responder, 0, host="127.0.0.1")
    )
    responder_port = responder_listeners[0].socket.getsockname()[1]
    refused = await run_cli(f"127.0.0.1:{responder_port}", "/", "--role", "authorizer")
    assert refused.returncode == 75
    assert b"refused the request: FCGI_UNKNOWN_ROLE" in refused.stderr


async def test_client_cli_timeout_and_usage(nursery: trio.Nursery) -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    slow = await run_cli(f"127.0.0.1:{port}", "/", "--timeout", "0.3")
    assert slow.returncode == 124
    assert b"no complete response within 0.3 s" in slow.stderr
    usage = await run_cli("localhost", "/")
    assert usage.returncode == 2
    assert b"bad address 'localhost'" in usage.stderr
    bad_param = await run_cli("127.0.0.1:9", "/", "-p", "NOEQUALS")
    assert bad_param.returncode == 2
    assert b"expected NAME=VALUE" in bad_param.stderr
