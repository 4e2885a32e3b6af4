"""HAProxy (fcgi-app) in front of the application, end to end.

HAProxy is the one mainstream web server that multiplexes requests over a
FastCGI connection, asks FCGI_GET_VALUES and sends FCGI_ABORT_REQUEST. It runs
from docs/deploy/haproxy.cfg, exactly as the docs show it. The application is
served behind a record tap, so the tests can show what HAProxy really sent.
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

from tests.integration.apps.echo import GREETING, EchoApp, blob
from tests.integration.configs import render
from tests.integration.harness import Served, http_client, running, serve_app_counted
from tests.integration.procs import free_port, require_binary

pytestmark = pytest.mark.integration

BEGIN, ABORT, END, GET_VALUES, GET_VALUES_RESULT = 1, 2, 3, 9, 10


def name_value_pairs(content: bytes) -> dict[bytes, bytes]:
    """Decode FastCGI name-value pairs (test-side, independent of _wire)."""
    pairs: dict[bytes, bytes] = {}
    pos = 0

    def length() -> int:
        nonlocal pos
        if content[pos] < 0x80:
            pos += 1
            return content[pos - 1]
        (value,) = struct.unpack_from(">I", content, pos)
        pos += 4
        return int(value) & 0x7FFFFFFF

    while pos < len(content):
        name_length, value_length = length(), length()
        name = content[pos : pos + name_length]
        pos += name_length
        pairs[name] = content[pos : pos + value_length]
        pos += value_length
    return pairs


@asynccontextmanager
async def haproxy(
    tmp_path: Path,
    app_port: int,
    *,
    limits: httpx.Limits | None = None,
    one_thread: bool = False,
) -> AsyncIterator[tuple[int, httpx.AsyncClient]]:
    """Run HAProxy from docs/deploy/haproxy.cfg; yield its port and a client.

    With *one_thread*, HAProxy is bound to one CPU, so it runs one thread (its
    default is one per CPU) and every client lands on the same thread.
    """
    port = free_port()
    config = render("haproxy.cfg", tmp_path, tmp=tmp_path, port=port, app_port=app_port)
    argv = [require_binary("haproxy"), "-db", "-f", str(config)]
    if one_thread:
        cpu = min(os.sched_getaffinity(0))
        argv = [require_binary("taskset"), "-c", str(cpu), *argv]
    async with (
        running(argv, port=port, log_path=tmp_path / "haproxy.out"),
        http_client(port, limits=limits or httpx.Limits()) as client,
    ):
        yield port, client


LOAD_REQUESTS = 400
LOAD_CONCURRENCY = 32


async def _load(client: httpx.AsyncClient, max_body: int) -> list[str]:
    """LOAD_REQUESTS requests at LOAD_CONCURRENCY, half echo POSTs and half
    blob GETs of random sizes up to *max_body*; the responses that differ."""
    rng = random.Random(32)
    sizes = [rng.randrange(max_body + 1) for _ in range(LOAD_REQUESTS)]
    failures: list[str] = []
    work = iter(range(LOAD_REQUESTS))

    async def worker() -> None:
        for i in work:
            if i % 2:
                body = random.Random(i).randbytes(sizes[i])
                response = await client.post("/echo", content=body)
            else:
                body = blob(sizes[i], i)
                response = await client.get("/blob", params={"size": sizes[i], "seed": i})
            if response.status_code != 200 or response.content != body:
                failures.append(f"request {i}: {response.status_code}, {len(response.content)}")

    with trio.fail_after(120):
        async with trio.open_nursery() as workers:
            for _ in range(LOAD_CONCURRENCY):
                workers.start_soon(worker)
    return failures


async def test_haproxy_multiplexed_load_byte_exact(
    nursery: trio.Nursery, app: EchoApp, tmp_path: Path
) -> None:
    """Concurrent load over multiplexed connections, every byte checked.

    Bodies stay at most 4 KiB: Debian 12's HAProxy 2.6.12 has bugs in its
    FastCGI multiplexer with larger request bodies. Some requests then fail
    inside HAProxy with a 500 ("IH" in its log; it sends ABORT_REQUEST before
    the params are complete), and HAProxy can crash on BUG_ON "c_empty(ic)"
    (haproxy/haproxy#2150, fixed in 2.6.14). Without multiplexing the same
    load passes (next test).
    """
    served = await serve_app_counted(nursery, app, tap=True)
    limits = httpx.Limits(max_connections=LOAD_CONCURRENCY)
    async with haproxy(tmp_path, served.port, limits=limits) as (_, client):
        # One request first, so that a connection with FCGI_MPXS_CONNS=1 is
        # there to share when the load starts.
        assert (await client.get("/hello")).content == GREETING
        failures = await _load(client, max_body=4096)
    assert failures == []
    assert app.stats.requests == LOAD_REQUESTS + 1
    assert set(app.stats.connections_with_keep_conn) == set(range(1, served.connections + 1))
    _assert_get_values_answered(served, mpxs_conns=b"1")


async def test_haproxy_honours_mpxs_conns_0_large_bodies(
    nursery: trio.Nursery, app: EchoApp, tmp_path: Path
) -> None:
    """Served with ``mpxs_conns=False`` the application answers
    FCGI_MPXS_CONNS=0, and HAProxy then sends one request at a time per
    connection, even with ``option mpxs-conns``. Large bodies pass then."""
    served = await serve_app_counted(nursery, app, tap=True, mpxs_conns=False)
    limits = httpx.Limits(max_connections=LOAD_CONCURRENCY)
    async with haproxy(tmp_path, served.port, limits=limits) as (_, client):
        assert (await client.get("/hello")).content == GREETING
        failures = await _load(client, max_body=64 * 1024)
    assert failures == []
    assert app.stats.requests == LOAD_REQUESTS + 1
    assert app.stats.max_active_on_one_connection == 1
    _assert_get_values_answered(served, mpxs_conns=b"0")


def _assert_get_values_answered(served: Served, *, mpxs_conns: bytes) -> None:
    asked = [record for record in served.wire.from_server if record.type == GET_VALUES]
    answers = [record for record in served.wire.from_app if record.type == GET_VALUES_RESULT]
    assert asked, "HAProxy sent no FCGI_GET_VALUES"
    assert len(answers) == len(asked)
    names = set(name_value_pairs(asked[0].content))
    assert b"FCGI_MPXS_CONNS" in names
    answer = name_value_pairs(answers[0].content)
    assert set(answer) <= names
    assert answer[b"FCGI_MPXS_CONNS"] == mpxs_conns
    assert all(record.request_id == 0 for record in asked + answers)


GATE_SIZE = 16


async def test_haproxy_multiplexes_requests_on_one_connection(
    nursery: trio.Nursery, app: EchoApp, tmp_path: Path
) -> None:
    """GATE_SIZE requests that can only finish once all of them are in the
    handler at the same time, all over one FastCGI connection.

    HAProxy keeps its server connections per thread, so it runs one thread
    here: with one per CPU, on a machine with many CPUs each client could land
    on a thread of its own, which has no connection to share yet.
    """
    served = await serve_app_counted(nursery, app, tap=True)
    app.stats.gate_size = GATE_SIZE
    responses: list[httpx.Response] = []

    async def one(client: httpx.AsyncClient) -> None:
        responses.append(await client.get("/gate"))

    limits = httpx.Limits(max_connections=GATE_SIZE)
    async with haproxy(tmp_path, served.port, limits=limits, one_thread=True) as (_, client):
        # HAProxy shares a FastCGI connection only once the application has
        # answered its FCGI_GET_VALUES (FCGI_MPXS_CONNS=1); a burst that comes
        # before any connection exists opens one connection per request.
        assert (await client.get("/hello")).content == GREETING
        with trio.fail_after(30):
            async with trio.open_nursery() as clients:
                for _ in range(GATE_SIZE):
                    clients.start_soon(one, client)
    expected = f"through the gate with {GATE_SIZE - 1} others\n".encode()
    assert [response.content for response in responses] == [expected] * GATE_SIZE
    # All of them on the one connection the first request opened.
    assert served.connections == 1
    assert app.stats.max_active_on_one_connection == GATE_SIZE
    _assert_get_values_answered(served, mpxs_conns=b"1")


async def test_haproxy_client_disconnect_mid_body_aborts_handler(
    nursery: trio.Nursery, app: EchoApp, tmp_path: Path
) -> None:
    """A client that goes away while its request body is still arriving makes
    HAProxy send FCGI_ABORT_REQUEST, which cancels the handler.

    What HAProxy 2.6 really does (mux_fcgi): it sends ABORT_REQUEST only for a
    request whose stdin it has not finished forwarding, and then closes that
    FastCGI connection at once (with a reset) instead of waiting for the
    END_REQUEST. Once a request was forwarded whole, a client's disconnect
    sends no ABORT_REQUEST: HAProxy just drops the stream and ignores the
    response. HAProxy also holds a request back until its body is complete or
    fills a buffer (16 KiB), so the client sends more than that first.
    """
    served = await serve_app_counted(nursery, app, tap=True)
    async with haproxy(tmp_path, served.port) as (port, client):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(
            b"POST /sleep HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n\r\n"
            + b"x" * 65536
        )
        with trio.fail_after(10):
            await app.stats.sleeping.wait()
        await stream.aclose()  # the client gives up halfway through its upload
        with trio.fail_after(10):
            await app.stats.cancelled.wait()
        # The application is fine: the next request (on a new FastCGI
        # connection, HAProxy closed the first one) works.
        after = await client.get("/hello")
    assert after.status_code == 200
    assert after.content == GREETING
    assert [cancellation.aborted for cancellation in app.stats.cancellations] == [True]
    assert app.stats.cancellations[0].connection == 1
    aborts = [record for record in served.wire.from_server if record.type == ABORT]
    assert len(aborts) == 1
    begins = [record for record in served.wire.from_server if record.type == BEGIN]
    assert aborts[0].request_id == begins[0].request_id
