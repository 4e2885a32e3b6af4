"""trio_fastcgi.client against a Go ``net/http/fcgi`` server: the standard
library's FastCGI application side, built here from a tiny .go file with
Debian's Go toolchain (no module downloads: GOPROXY=off)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator

import pytest
import trio

from tests import helpers
from tests.integration.procs import ManagedProcess, free_port, require_binary, wait_for_tcp
from trio_fastcgi import ProtocolStatus
from trio_fastcgi.client import open_client, open_tcp_client

pytestmark = pytest.mark.integration

SERVER_GO = r"""package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/fcgi"
	"os"
	"strconv"
)

func main() {
	listener, err := net.Listen("tcp", os.Args[1])
	if err != nil {
		panic(err)
	}
	http.HandleFunc("/info", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]interface{}{
			"method": r.Method,
			"url":    r.URL.String(),
			"query":  r.URL.Query(),
			"trace":  r.Header.Get("X-Trace"),
			"length": len(body),
		})
	})
	http.HandleFunc("/echo", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		io.Copy(w, r.Body)
	})
	http.HandleFunc("/lines", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("n"))
		w.WriteHeader(203)
		for i := 0; i < n; i++ {
			fmt.Fprintf(w, "%015d\n", i)
		}
	})
	http.HandleFunc("/wait", func(w http.ResponseWriter, r *http.Request) {
		// Blocks reading a body the client never ends; an abort closes it.
		fmt.Fprint(w, "waiting\n")
		w.(http.Flusher).Flush()
		_, err := io.ReadAll(r.Body)
		fmt.Fprintf(w, "read ended: %v", err)
	})
	if err := fcgi.Serve(listener, nil); err != nil {
		panic(err)
	}
}
"""


@pytest.fixture(scope="module")
def go_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    go = require_binary("go")
    directory = tmp_path_factory.mktemp("go-fcgi")
    (directory / "go.mod").write_text("module fcgitest\n\ngo 1.19\n")
    (directory / "main.go").write_text(SERVER_GO)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(directory),
        "GOCACHE": str(directory / "cache"),
        "GOPATH": str(directory / "gopath"),
        "GOPROXY": "off",
        "GOTOOLCHAIN": "local",
        # Debian ships the standard library prebuilt for cgo builds, which need
        # gcc (it is on the CI machine): a build then takes seconds. Without a C
        # compiler the standard library is compiled anew (about 30 s).
        "CGO_ENABLED": "1" if shutil.which("gcc") else "0",
    }
    build = subprocess.run(
        [go, "build", "-o", str(directory / "server"), "."],
        cwd=directory,
        env=env,
        capture_output=True,
        timeout=300,
        check=False,
    )
    if build.returncode != 0:
        pytest.fail(f"go build failed:\n{build.stderr.decode(errors='replace')}")
    port = free_port()
    with ManagedProcess(
        [str(directory / "server"), f"127.0.0.1:{port}"], log_path=directory / "server.log"
    ) as server:
        wait_for_tcp(port, process=server.process)
        yield port


async def test_go_fcgi_get_with_query(go_server: int) -> None:
    params = {
        "REQUEST_METHOD": "GET",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REQUEST_URI": "/info?a=1&b=x+y",
        "SCRIPT_NAME": "",
        "QUERY_STRING": "a=1&b=x+y",
        "HTTP_HOST": "example.org",
        "HTTP_X_TRACE": "t-1",
    }
    async with open_tcp_client("127.0.0.1", go_server) as client:
        response = await client.request(params, keep_conn=False)
    assert response.protocol_status is ProtocolStatus.REQUEST_COMPLETE
    cgi = response.parse_cgi()
    assert cgi.status == 200
    assert cgi.header("Content-Type") == "application/json"
    answer = json.loads(cgi.body)
    assert answer["method"] == "GET"
    assert answer["query"] == {"a": ["1"], "b": ["x y"]}
    assert answer["trace"] == "t-1"


def post(path: str, size: int) -> dict[str, str]:
    return {
        "REQUEST_METHOD": "POST",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REQUEST_URI": path,
        "CONTENT_LENGTH": str(size),
        "HTTP_HOST": "example.org",
    }


async def test_go_fcgi_multiplexed_echo_and_big_response(go_server: int) -> None:
    bodies = {n: os.urandom(n * 150_000 + n) for n in range(8)}
    results: dict[int, tuple[int, bytes]] = {}
    lines = 5 * 1024 * 1024 // 16
    async with open_tcp_client("127.0.0.1", go_server) as client:

        async def echo(n: int) -> None:
            response = await client.request(post("/echo", len(bodies[n])), bodies[n])
            results[n] = (response.request_id, response.parse_cgi().body)

        async with trio.open_nursery() as nursery:
            for n in bodies:
                nursery.start_soon(echo, n)
            big = await client.request(
                {
                    **post(f"/lines?n={lines}", 0),
                    "REQUEST_METHOD": "GET",
                    "QUERY_STRING": f"n={lines}",
                }
            )
    assert {n: body for n, (_, body) in results.items()} == bodies
    assert len({rid for rid, _ in results.values()}) > 1  # several ids in flight at once
    cgi = big.parse_cgi()
    assert cgi.status == 203
    assert cgi.body == b"".join(b"%015d\n" % i for i in range(lines))


async def test_go_fcgi_get_values(go_server: int) -> None:
    async with open_tcp_client("127.0.0.1", go_server) as client:
        # Go answers with FCGI_MPXS_CONNS only, then an extra empty
        # FCGI_GET_VALUES_RESULT, which must not confuse what follows.
        assert await client.get_values() == {"FCGI_MPXS_CONNS": "1"}
        assert await client.get_values(["FCGI_MPXS_CONNS"]) == {"FCGI_MPXS_CONNS": "1"}
        response = await client.request(post("/echo", 3), b"abc")
    assert response.parse_cgi().body == b"abc"


class RecordTap(trio.abc.HalfCloseableStream):
    """A TCP stream that notes every record the application sends."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""
        self.records: list[helpers.Record] = []
        self.changed = trio.Event()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = await self.stream.receive_some(max_bytes)
        self.buffer += data
        records, self.buffer = helpers.parse_records(self.buffer)
        if records:
            self.records += records
            self.changed.set()
            self.changed = trio.Event()
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()

    def ends(self, request_id: int) -> int:
        return sum(r.type == helpers.END and r.request_id == request_id for r in self.records)


async def test_go_fcgi_abort(go_server: int) -> None:
    never = trio.Event()

    async def endless_body() -> AsyncIterator[bytes]:
        yield b"start"
        await never.wait()

    tap = RecordTap(await trio.open_tcp_stream("127.0.0.1", go_server))
    with trio.fail_after(30):
        async with open_client(tap) as client:
            async with client.open_request(post("/wait", 1000), endless_body()) as active:
                # The handler runs (Go starts it at the first stdin record).
                head = b""
                while not head.endswith(b"\r\n\r\nwaiting\n"):
                    head += await active.stdout.receive_some()
                await active.abort()
                end = await active.wait_ended()
            assert end.protocol_status is ProtocolStatus.REQUEST_COMPLETE
            # Go answers the abort at once; its handler, which sees the body
            # fail, then writes output and a second FCGI_END_REQUEST for the
            # same id. The client ignores them and the connection goes on.
            while tap.ends(active.request_id) < 2:
                await tap.changed.wait()
            late = [r for r in tap.records if r.request_id == active.request_id]
            assert helpers.STDOUT in {r.type for r in late[1:]}
            for size in (10, 100_000):
                body = os.urandom(size)
                response = await client.request(post("/echo", size), body)
                assert response.parse_cgi().body == body
                assert response.request_id != active.request_id
