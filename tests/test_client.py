"""The FastCGI client: against this project's server over memory streams, TCP and
a unix socket, and against scripted misbehaving applications; plus the sans-IO
client protocol and the CGI response parser."""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import random
import struct
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.lowlevel
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from tests import helpers
from tests.integration.procs import free_port
from trio_fastcgi import (
    NEED_DATA,
    ConnectionClosed,
    LocalProtocolError,
    Overloaded,
    ProtocolStatus,
    RemoteProtocolError,
    Request,
    Role,
    serve_connection,
    serve_tcp,
    serve_unix,
)
from trio_fastcgi._client_connection import FastCGIClientConnection, encode_params
from trio_fastcgi._sender import QUEUE_LIMIT
from trio_fastcgi._wire import RecordReader, RecordType, encode_end_request, encode_stream
from trio_fastcgi.client import (
    CGIResponseError,
    Client,
    GetValuesUnsupported,
    ResponseTooLarge,
    ServerProtocolError,
    open_client,
    open_tcp_client,
    open_unix_client,
    parse_address,
    parse_cgi_response,
)

if sys.version_info < (3, 11):
    from exceptiongroup import ExceptionGroup  # type: ignore[import-not-found,unused-ignore]


@contextlib.asynccontextmanager
async def serving(handler: object, **options: object) -> AsyncIterator[Client]:
    """This project's server on one end of a memory stream, a client on the other."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    # Only a hang (a bug) takes this long; it then fails instead of stalling.
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                functools.partial(serve_connection, handler, server_stream, **options)  # type: ignore[arg-type]
            )
            async with open_client(client_stream) as client:
                yield client
            nursery.cancel_scope.cancel()


def pattern(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


async def echo(request: Request) -> int:
    body = await request.stdin.receive_all(max_size=64 * 1024 * 1024)
    name = request.params.get("NAME", "")
    await request.respond(body, headers={"X-Name": name, "X-Id": str(request.request_id)})
    return len(body) % 256


async def test_client_responder_with_body() -> None:
    async with serving(echo) as client:
        response = await client.request({"NAME": "tr\u00efo", "CONTENT_LENGTH": "5"}, b"hello")
        raw = await client.request([(b"NAME", b"raw"), (b"CONTENT_LENGTH", b"3")], b"abc")
    assert response.app_status == 5
    assert response.protocol_status is ProtocolStatus.REQUEST_COMPLETE
    cgi = response.parse_cgi()
    assert cgi.status == 200
    assert cgi.body == b"hello"
    assert cgi.header("x-name") == "tr\u00efo"  # latin-1 both ways
    assert raw.parse_cgi().header("X-Name") == "raw"
    assert raw.parse_cgi().body == b"abc"
    assert response.request_id == raw.request_id == 1  # id 1 is reused


async def test_client_big_response_and_body_byte_exact() -> None:
    big = pattern(3 * 1024 * 1024 + 7)

    async def handler(request: Request) -> None:
        body = await request.stdin.receive_all()
        await request.stdout.send_all(b"Content-Type: application/octet-stream\r\n\r\n")
        view = memoryview(big)
        for start in range(0, len(big), 100_003):
            await request.stdout.send_all(view[start : start + 100_003])
        await request.stdout.send_all(body)

    upload = pattern(1024 * 1024 + 3, seed=2)
    async with serving(handler) as client:
        response = await client.request({"CONTENT_LENGTH": str(len(upload))}, upload)
    assert response.parse_cgi().body == big + upload


async def test_client_stderr_and_app_status() -> None:
    async def handler(request: Request) -> int:
        await request.stderr.send_all(b"warning: one\n")
        await request.respond(b"ok")
        await request.stderr.send_all(b"warning: two\n")
        return 938

    async with serving(handler) as client:
        response = await client.request()
    assert response.stderr == b"warning: one\nwarning: two\n"
    assert response.app_status == 938
    assert response.parse_cgi().body == b"ok"


async def test_client_multiplexes_concurrent_requests() -> None:
    count = 12
    started = 0
    all_started = trio.Event()

    async def handler(request: Request) -> None:
        nonlocal started
        started += 1
        if started == count:
            all_started.set()
        # Every handler waits until all of them run: only true multiplexing
        # over the one connection can finish this.
        await all_started.wait()
        body = await request.stdin.receive_all()
        await request.respond(body + request.params["N"].encode())

    results: dict[int, tuple[int, bytes]] = {}
    async with serving(handler) as client:

        async def one(n: int) -> None:
            response = await client.request({"N": str(n)}, pattern(n * 1000, seed=n))
            results[n] = (response.request_id, response.parse_cgi().body)

        async with trio.open_nursery() as nursery:
            for n in range(count):
                nursery.start_soon(one, n)
        assert client.active_requests == 0
        again = await client.request({"N": "x"})
    assert sorted(rid for rid, _ in results.values()) == list(range(1, count + 1))
    for n, (_, body) in results.items():
        assert body == pattern(n * 1000, seed=n) + str(n).encode()
    assert again.request_id == 1


async def test_client_max_concurrent_waits_for_a_free_id() -> None:
    running = 0
    most = 0

    async def handler(request: Request) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await trio.lowlevel.checkpoint()
        await trio.testing.wait_all_tasks_blocked()
        running -= 1
        await request.respond(b"done")

    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_connection, handler, server_stream)
        async with open_client(client_stream, max_concurrent=2) as client:
            ids: list[int] = []

            async def one() -> None:
                ids.append((await client.request()).request_id)

            async with trio.open_nursery() as inner:
                for _ in range(6):
                    inner.start_soon(one)
        nursery.cancel_scope.cancel()
    assert most == 2
    assert set(ids) == {1, 2}


async def test_client_get_values() -> None:
    async with serving(echo, max_reqs=7, max_conns=3, mpxs_conns=False) as client:
        values = await client.get_values()
        some = await client.get_values(["FCGI_MPXS_CONNS", "NO_SUCH_NAME"])
    assert values == {"FCGI_MAX_CONNS": "3", "FCGI_MAX_REQS": "7", "FCGI_MPXS_CONNS": "0"}
    assert some == {"FCGI_MPXS_CONNS": "0"}


async def test_client_abort_cancels_handler_and_gets_end_request() -> None:
    started = trio.Event()
    cancelled = trio.Event()
    seen: list[bool] = []

    async def handler(request: Request) -> int:
        if request.params.get("FAST"):
            return 3
        await request.stdout.send_all(b"Content-Type: text/plain\r\n\r\npartial")
        started.set()
        try:
            await trio.sleep_forever()
        finally:
            seen.append(request.aborted)
            cancelled.set()

    async with serving(handler) as client:
        async with client.open_request() as active:
            await started.wait()
            assert await active.stdout.receive_some() == b"Content-Type: text/plain\r\n\r\npartial"
            await active.abort()
            assert active.aborted
            end = await active.wait_ended()
            assert await active.stdout.receive_some() == b""
        assert cancelled.is_set()
        assert seen == [True]
        assert end.protocol_status is ProtocolStatus.REQUEST_COMPLETE
        assert end.request_id == active.request_id
        # The connection goes on; an aborted request's id is not used again
        # while others are free (late records for it could be misread).
        assert (await client.request({"FAST": "1"})).request_id == 2
        assert (await client.request({"FAST": "1"})).request_id == 2


async def test_client_cancelled_request_aborts_it() -> None:
    cancelled = trio.Event()
    started = trio.Event()

    async def handler(request: Request) -> None:
        if request.params.get("SLOW"):
            started.set()
            try:
                await trio.sleep_forever()
            finally:
                cancelled.set()
        await request.respond(b"fast")

    async with serving(handler) as client:
        async with trio.open_nursery() as nursery:

            async def slow() -> None:
                await client.request({"SLOW": "1"})

            nursery.start_soon(slow)
            await started.wait()
            nursery.cancel_scope.cancel()
        await cancelled.wait()
        response = await client.request()
    assert response.parse_cgi().body == b"fast"


async def test_client_leaving_the_block_early_aborts() -> None:
    cancelled = trio.Event()

    async def handler(request: Request) -> None:
        if request.params.get("FAST"):
            return
        await request.stdout.send_all(b"\r\nfirst")
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    async with serving(handler) as client:
        async with client.open_request() as active:
            assert await active.stdout.receive_some() == b"\r\nfirst"
        await cancelled.wait()
        assert active.aborted
        response = await client.request({"FAST": "1"})
        assert response.protocol_status is ProtocolStatus.REQUEST_COMPLETE


async def test_client_streams_stdin_and_stdout_in_lockstep() -> None:
    async def handler(request: Request) -> None:
        await request.stdout.send_all(b"\r\n")
        async for chunk in request.stdin:
            await request.stdout.send_all(chunk.upper())

    send, receive = trio.open_memory_channel[bytes](0)

    async def body() -> AsyncIterator[bytes]:
        async with receive:
            async for chunk in receive:
                yield chunk

    async with serving(handler) as client, client.open_request(stdin=body()) as active:
        assert await active.stdout.receive_some() == b"\r\n"
        # Each chunk is answered before the next is sent: both directions stream.
        async with send:
            for word in (b"one", b"two", b"three"):
                await send.send(word)
                assert await active.stdout.receive_some() == word.upper()
        assert await active.stdout.receive_some() == b""
        assert (await active.wait_ended()).app_status == 0


async def test_client_authorizer() -> None:
    seen: dict[str, object] = {}

    async def handler(request: Request) -> None:
        seen["role"] = request.role
        seen["stdin"] = await request.stdin.receive_all()
        if request.params.get("HTTP_AUTHORIZATION") == "Bearer good":
            await request.authorize({"USER": "alice"})
        else:
            await request.respond(b"no", status=403)

    async with serving(handler, roles={Role.AUTHORIZER}) as client:
        ok = await client.request({"HTTP_AUTHORIZATION": "Bearer good"}, role=Role.AUTHORIZER)
        denied = await client.request({"HTTP_AUTHORIZATION": "bad"}, role=Role.AUTHORIZER)
        wrong_role = await client.request()
    assert seen == {"role": Role.AUTHORIZER, "stdin": b""}
    assert ok.parse_cgi().status == 200
    assert ok.parse_cgi().header("Variable-USER") == "alice"
    assert denied.parse_cgi().status == 403
    assert wrong_role.protocol_status is ProtocolStatus.UNKNOWN_ROLE
    with pytest.raises(ValueError, match="no stdin"):
        await client.request(role=Role.AUTHORIZER, stdin=b"x")


async def test_client_filter_with_data() -> None:
    document = pattern(200_000, seed=5)

    async def handler(request: Request) -> None:
        stdin = await request.stdin.receive_all()
        data = await request.data.receive_all()
        head = f"X-Data-Length: {request.data_length}\r\nX-Mod: {request.data_last_mod}\r\n\r\n"
        await request.stdout.send_all(head.encode() + stdin + b"|" + data[::-1])

    params = {
        "FCGI_DATA_LENGTH": str(len(document)),
        "FCGI_DATA_LAST_MOD": "1700000000",
        "CONTENT_LENGTH": "3",
    }
    async with serving(handler, roles={Role.FILTER}) as client:
        response = await client.request(params, b"in:", role=Role.FILTER, data=document)
        streamed = await client.request(
            params, b"in:", role=Role.FILTER, data=chunks_of(document, 7777)
        )
    for result in (response, streamed):
        cgi = result.parse_cgi()
        assert cgi.header("X-Data-Length") == str(len(document))
        assert cgi.header("X-Mod") == "1700000000"
        assert cgi.body == b"in:|" + document[::-1]


async def chunks_of(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        await trio.lowlevel.checkpoint()
        yield data[start : start + size]


async def test_client_overloaded_protocol_status() -> None:
    async def handler(request: Request) -> None:
        raise Overloaded()

    async with serving(handler) as client:
        response = await client.request()
    assert response.protocol_status is ProtocolStatus.OVERLOADED
    assert response.stdout == b""


async def test_client_keep_conn_false_is_the_last_request() -> None:
    async with serving(echo) as client:
        response = await client.request({"NAME": "last"}, keep_conn=False)
        assert response.parse_cgi().header("X-Name") == "last"
        assert not client.is_usable
        with pytest.raises(trio.ClosedResourceError, match="keep_conn"):
            await client.request()


async def test_client_stdin_iterable_error_fails_the_request() -> None:
    async def handler(request: Request) -> None:
        await request.stdin.receive_all()
        await request.respond()

    async def broken() -> AsyncIterator[bytes]:
        yield b"some"
        raise OSError("disk on fire")

    async with serving(handler) as client:
        with pytest.raises(OSError, match="disk on fire"):
            await client.request(stdin=broken())
        # The failed request was aborted; the connection still works.
        assert (await client.request()).app_status == 0


async def test_client_limits_raise_response_too_large() -> None:
    async def handler(request: Request) -> None:
        await request.stderr.send_all(b"e" * 5000)
        await request.respond(b"x" * 5000)

    async with serving(handler) as client:
        with pytest.raises(ResponseTooLarge, match="stderr"):
            await client.request(max_stderr_size=1000)
        with pytest.raises(ResponseTooLarge, match="max_size"):
            await client.request(max_size=1000)
        assert len((await client.request()).stdout) > 5000


async def test_client_body_errors_are_not_wrapped_in_groups() -> None:
    client_stream, _server_stream = trio.testing.memory_stream_pair()
    with pytest.raises(KeyError):
        async with open_client(client_stream):
            raise KeyError("mine")


async def test_client_as_async_context_manager() -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_connection, echo, server_stream)
        client = Client(client_stream)
        async with client:
            assert (await client.request({"NAME": "cm"})).parse_cgi().header("X-Name") == "cm"
            with pytest.raises(RuntimeError, match="entered already"):
                await client.__aenter__()
        assert not client.is_usable
        nursery.cancel_scope.cancel()


async def test_client_body_exception_groups_stay_groups() -> None:
    client_stream, _server_stream = trio.testing.memory_stream_pair()
    with pytest.raises(ExceptionGroup) as info:
        async with open_client(client_stream):
            raise ExceptionGroup("mine", [ValueError("inner")])
    assert info.value.message == "mine"


async def test_client_unread_stdout_is_bounded(nursery: trio.Nursery) -> None:
    big = pattern(8 * 1024 * 1024, seed=4)

    async def handler(request: Request) -> None:
        await request.stdout.send_all(b"\r\n" + big)

    client_stream, server_stream = trio.testing.memory_stream_pair()
    nursery.start_soon(serve_connection, handler, server_stream)
    async with (
        open_client(client_stream, stdout_buffer_size=100_000) as client,
        client.open_request() as active,
    ):
        await trio.testing.wait_all_tasks_blocked()
        # The reader stopped reading: what the client holds stays near the
        # buffer size (plus the record that crossed it), not 8 MiB.
        assert active._state.buffered <= 100_000 + 65535
        received = b"".join([chunk async for chunk in active.stdout])
        assert received == b"\r\n" + big
        assert (await active.wait_ended()).app_status == 0


async def test_client_closed_client_refuses_requests() -> None:
    async with serving(echo) as client:
        await client.aclose()
        with pytest.raises(trio.ClosedResourceError):
            await client.request()
        with pytest.raises(trio.ClosedResourceError):
            await client.get_values()


# -- real sockets -----------------------------------------------------------------


async def test_client_over_tcp(nursery: trio.Nursery) -> None:
    listeners = await nursery.start(functools.partial(serve_tcp, echo, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    upload = pattern(2 * 1024 * 1024, seed=9)
    async with open_tcp_client("127.0.0.1", port) as client:
        results: list[bytes] = []

        async def one(n: int) -> None:
            body = upload[: n * 300_000]
            response = await client.request({"CONTENT_LENGTH": str(len(body))}, body)
            results.append(response.parse_cgi().body)
            assert response.parse_cgi().body == body

        async with trio.open_nursery() as inner:
            for n in range(1, 7):
                inner.start_soon(one, n)
        values = await client.get_values(["FCGI_MPXS_CONNS"])
    assert len(results) == 6
    assert values == {"FCGI_MPXS_CONNS": "1"}


async def test_client_over_unix_socket(nursery: trio.Nursery, tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    await nursery.start(serve_unix, echo, str(path))
    body = pattern(1024 * 1024, seed=3)
    async with open_unix_client(path) as client:
        response = await client.request({"NAME": "unix"}, body)
    assert response.parse_cgi().body == body
    assert response.parse_cgi().header("X-Name") == "unix"


async def test_client_connect_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        async with open_unix_client(tmp_path / "missing.sock"):
            pass
    with pytest.raises(OSError, match="connect"):
        async with open_tcp_client("127.0.0.1", free_port()):
            pass


# -- misbehaving applications -----------------------------------------------------


class ScriptedApp:
    """Plays a FastCGI application by hand on one end of a memory stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = b""
        self.records: list[helpers.Record] = []

    async def read_until(self, record_type: int, request_id: int | None = None) -> None:
        while not any(
            r.type == record_type and request_id in (None, r.request_id) for r in self.records
        ):
            data = await self.stream.receive_some(65536)
            assert data, "client closed"
            self.buffer += data
            records, self.buffer = helpers.parse_records(self.buffer)
            self.records.extend(records)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)


def end_record(rid: int, app_status: int = 0, protocol_status: int = 0) -> bytes:
    return helpers.record(helpers.END, rid, struct.pack(">IB3x", app_status, protocol_status))


@contextlib.asynccontextmanager
async def scripted() -> AsyncIterator[tuple[Client, ScriptedApp]]:
    client_stream, app_stream = trio.testing.memory_stream_pair()
    async with open_client(client_stream) as client:
        yield client, ScriptedApp(app_stream)


async def test_client_server_closes_mid_response() -> None:
    async with scripted() as (client, app):
        async with client.open_request() as active:
            await app.read_until(helpers.STDIN, 1)
            await app.send(helpers.record(helpers.STDOUT, 1, b"Status: 200\r\n\r\npart"))
            await app.stream.aclose()
            assert await active.stdout.receive_some() == b"Status: 200\r\n\r\npart"
            with pytest.raises(trio.BrokenResourceError, match="before FCGI_END_REQUEST"):
                await active.stdout.receive_some()
            with pytest.raises(trio.BrokenResourceError, match=r"request\(s\) 1"):
                await active.wait_ended()
        with pytest.raises(trio.BrokenResourceError, match="closed the connection"):
            await client.request()


async def test_client_garbage_from_server() -> None:
    async with scripted() as (client, app):
        async with trio.open_nursery() as nursery:

            async def answer() -> None:
                await app.read_until(helpers.STDIN, 1)
                await app.send(b"HTTP/1.1 400 Bad Request\r\n\r\n")

            nursery.start_soon(answer)
            with pytest.raises(ServerProtocolError, match="unsupported FastCGI version 72"):
                await client.request()
        with pytest.raises(RemoteProtocolError):
            await client.request()


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (helpers.record(helpers.STDOUT, 9, b"x"), "request 9, which is not active"),
        (helpers.record(helpers.STDIN, 1, b"x"), "may only send"),
        (helpers.record(helpers.STDOUT, 0, b"x"), "management request id 0"),
        (helpers.record(helpers.END, 1, b"\0\0"), "2-byte body"),
        (end_record(1, protocol_status=9), "unknown protocolStatus 9"),
        (
            helpers.record(helpers.STDOUT, 1) + helpers.record(helpers.STDOUT, 1, b"late"),
            "after the end of its stdout",
        ),
        (helpers.record(helpers.STDOUT, 1, b"abc")[:9], "middle of a record"),
    ],
)
async def test_client_protocol_violations(reply: bytes, message: str) -> None:
    async with scripted() as (client, app), trio.open_nursery() as nursery:

        async def answer() -> None:
            await app.read_until(helpers.STDIN, 1)
            await app.send(reply)
            await app.stream.aclose()

        nursery.start_soon(answer)
        with pytest.raises(ServerProtocolError, match=message):
            await client.request()


async def test_client_get_values_quirks() -> None:
    async with scripted() as (client, app), trio.open_nursery() as nursery:

        async def answer() -> None:
            await app.read_until(helpers.GET_VALUES)
            # Go's net/http/fcgi: the answer, then a spurious empty one.
            pairs = helpers.nv_pairs([(b"FCGI_MPXS_CONNS", b"1")])
            await app.send(
                helpers.record(helpers.GET_VALUES_RESULT, 0, pairs)
                + helpers.record(helpers.GET_VALUES_RESULT, 0)
            )
            app.records.clear()
            await app.read_until(helpers.GET_VALUES)
            await app.send(helpers.record(helpers.UNKNOWN_TYPE, 0, bytes([9]) + bytes(7)))

        nursery.start_soon(answer)
        assert await client.get_values(["FCGI_MPXS_CONNS"]) == {"FCGI_MPXS_CONNS": "1"}
        with pytest.raises(GetValuesUnsupported):
            await client.get_values()


async def test_client_ignores_a_second_end_request_after_abort() -> None:
    async with scripted() as (client, app):
        async with client.open_request() as active:
            await app.read_until(helpers.STDIN, 1)
            await active.abort()
            await app.read_until(helpers.ABORT, 1)
            # Go answers an abort at once and again when the handler returns.
            await app.send(end_record(1) + end_record(1, app_status=1))
            assert (await active.wait_ended()).app_status == 0
        async with trio.open_nursery() as nursery:

            async def answer() -> None:
                app.records.clear()
                await app.read_until(helpers.STDIN, 2)
                # Late output for the aborted id, then the answer to the new one.
                await app.send(
                    helpers.record(helpers.STDOUT, 1, b"late")
                    + end_record(1, 1)
                    + helpers.record(helpers.STDOUT, 2, b"\r\nnext")
                    + end_record(2, 4)
                )

            nursery.start_soon(answer)
            response = await client.request()
        assert (response.request_id, response.stdout, response.app_status) == (2, b"\r\nnext", 4)


# -- sans-IO protocol ---------------------------------------------------------------


def test_client_protocol_params_never_split_small_pairs() -> None:
    pairs = [(f"NAME_{i}".encode(), b"v" * 1000) for i in range(200)]
    records, rest = helpers.parse_records(encode_params(3, pairs))
    assert rest == b""
    assert [r.type for r in records] == [helpers.PARAMS] * len(records)
    assert records[-1].content == b""
    decoded: list[tuple[bytes, bytes]] = []
    for rec in records[:-1]:
        assert len(rec.content) <= 65535
        decoded.extend(decode_nv(rec.content))  # each record decodes on its own
    assert decoded == pairs


def test_client_protocol_params_huge_pair_spans_records() -> None:
    pairs = [(b"A", b"1"), (b"BIG", b"x" * 200_000), (b"Z", b"2")]
    records, _ = helpers.parse_records(encode_params(1, pairs))
    assert all(len(r.content) <= 65535 for r in records)
    assert decode_nv(b"".join(r.content for r in records)) == pairs


def test_client_protocol_stdin_records_fit() -> None:
    conn = FastCGIClientConnection()
    conn.begin_request(1, Role.RESPONDER, keep_conn=True)
    records, _ = helpers.parse_records(conn.stdin(1, bytes(200_000)) + conn.stdin(1, b""))
    assert all(len(r.content) <= 65535 for r in records)
    assert sum(len(r.content) for r in records) == 200_000
    assert records[-1].content == b""
    with pytest.raises(LocalProtocolError, match="closed"):
        conn.stdin(1, b"more")
    with pytest.raises(LocalProtocolError, match="no Filter"):
        conn.data(1, b"x")
    with pytest.raises(LocalProtocolError, match="already active"):
        conn.begin_request(1, Role.RESPONDER, keep_conn=True)
    with pytest.raises(LocalProtocolError, match="outside"):
        conn.begin_request(0, Role.RESPONDER, keep_conn=True)


def test_client_protocol_begin_request_bytes() -> None:
    conn = FastCGIClientConnection()
    assert conn.begin_request(258, Role.FILTER, keep_conn=True) == (
        bytes([1, 1, 1, 2, 0, 8, 0, 0]) + bytes([0, 3, 1, 0, 0, 0, 0, 0])
    )
    assert conn.abort_request(258) == bytes([1, 2, 1, 2, 0, 0, 0, 0])


def drain(pieces: list[bytes]) -> list[object]:
    """Feed *pieces* (then EOF) to a client connection with requests 1-3 begun."""
    conn = FastCGIClientConnection()
    for rid in (1, 2, 3):
        conn.begin_request(rid, Role.RESPONDER, keep_conn=True)
    conn.abort_request(3)
    events: list[object] = []
    for piece in [*pieces, b""]:
        conn.receive_data(piece)
        while (event := conn.next_event()) is not NEED_DATA:
            events.append(event)
            if isinstance(event, ConnectionClosed):
                return events
    return events


def app_records() -> st.SearchStrategy[bytes]:
    record_types = st.sampled_from([3, 6, 7, 10, 11, 1, 5, 99])
    return st.builds(
        lambda rtype, rid, content, padding: helpers.record(rtype, rid, content, padding),
        record_types,
        st.sampled_from([0, 1, 2, 3, 4]),
        st.one_of(st.binary(max_size=20), st.just(struct.pack(">IB3x", 7, 0))),
        st.integers(0, 9),
    )


@given(
    blob=st.lists(st.one_of(app_records(), st.binary(max_size=12)), max_size=12).map(b"".join),
    data=st.data(),
)
def test_client_protocol_only_server_protocol_error_escapes(
    blob: bytes, data: st.DataObject
) -> None:
    try:
        whole = drain([blob])
    except ServerProtocolError:
        with pytest.raises(ServerProtocolError):
            drain(list(split(blob, data)))
        return
    assert drain(list(split(blob, data))) == whole


def split(blob: bytes, data: st.DataObject) -> list[bytes]:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(blob)), max_size=6)))
    bounds = [0, *cuts, len(blob)]
    return [blob[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def decode_nv(buf: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    pos = 0
    while pos < len(buf):
        lengths = []
        for _ in range(2):
            if buf[pos] < 128:
                lengths.append(buf[pos])
                pos += 1
            else:
                lengths.append(struct.unpack(">I", buf[pos : pos + 4])[0] & 0x7FFFFFFF)
                pos += 4
        name = buf[pos : pos + lengths[0]]
        value = buf[pos + lengths[0] : pos + lengths[0] + lengths[1]]
        pos += lengths[0] + lengths[1]
        out.append((name, value))
    return out


# -- CGI response parsing and addresses -------------------------------------------


def test_parse_cgi_response_status_and_headers() -> None:
    cgi = parse_cgi_response(b"Status: 404 Not Found\r\nX-A: 1\r\nX-A: 2\r\n\r\nbody\r\n\r\nmore")
    assert cgi.status == 404
    assert cgi.headers == [("X-A", "1"), ("X-A", "2")]
    assert cgi.header_values("x-a") == ["1", "2"]
    assert cgi.body == b"body\r\n\r\nmore"


def test_parse_cgi_response_defaults() -> None:
    assert parse_cgi_response(b"Content-Type: text/html\n\nhi").status == 200
    redirect = parse_cgi_response(b"Location: /elsewhere\r\n\r\n")
    assert (redirect.status, redirect.header("location"), redirect.body) == (302, "/elsewhere", b"")
    both = parse_cgi_response(b"Status: 301\r\nLocation: /x\r\n\r\n")
    assert both.status == 301
    assert parse_cgi_response(b"\r\nno headers") == parse_cgi_response(b"\nno headers")
    assert parse_cgi_response(b"\r\nno headers").body == b"no headers"


@pytest.mark.parametrize(
    "stdout",
    [b"no blank line", b"Content-Type: x\r\n", b"Status: abc\r\n\r\n", b"junk line\r\n\r\n"],
)
def test_parse_cgi_response_errors(stdout: bytes) -> None:
    with pytest.raises(CGIResponseError):
        parse_cgi_response(stdout)


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:9000") == ("127.0.0.1", 9000)
    assert parse_address("[::1]:9000") == ("::1", 9000)
    assert parse_address("localhost:80") == ("localhost", 80)
    assert parse_address("/run/php.sock") == "/run/php.sock"
    assert parse_address("unix:app.sock") == "app.sock"
    for bad in ("localhost", "host:port", "[::1]", "h:0", "h:70000"):
        with pytest.raises(ValueError, match=r"address|port"):
            parse_address(bad)


async def test_client_sends_no_input_for_a_request_that_ended_while_the_input_waited() -> None:
    # Request 1's stdin end waits for room in the client's full output queue;
    # meanwhile the application answers request 1 without reading its stdin.
    # Once request 1 has ended its id may be a new request's, so the waiting
    # record must not go out at all (it would end that request's stdin).
    client_stream, app = trio.testing.lockstep_stream_pair()
    records: list[tuple[int, int, int]] = []
    reader = RecordReader()

    async def read_until(record_type: int, request_id: int, *, empty: bool) -> None:
        while True:
            while (record := reader.next_record()) is not None:
                records.append((record[0], record[1], len(record[2])))
                if record[:2] == (record_type, request_id) and (not record[2]) == empty:
                    return
            reader.feed(await app.receive_some(1 << 20))

    release = trio.Event()

    async def late_empty_body() -> AsyncIterator[bytes]:
        await release.wait()
        return
        yield b""  # an async generator that yields nothing

    ended: list[int] = []
    big_body = b"z" * (3 * QUEUE_LIMIT)
    async with Client(client_stream) as client, trio.open_nursery() as nursery:

        async def request(stdin: bytes | AsyncIterator[bytes]) -> None:
            async with client.open_request({"SCRIPT_NAME": "/x"}, stdin=stdin) as active:
                ended.append((await active.wait_ended()).app_status)

        nursery.start_soon(request, late_empty_body())
        await read_until(RecordType.PARAMS, 1, empty=True)
        nursery.start_soon(request, big_body)  # request 2 fills the queue
        await read_until(RecordType.PARAMS, 2, empty=True)
        await trio.testing.wait_all_tasks_blocked()
        assert client._sender._queued >= QUEUE_LIMIT  # a record waits for room now
        release.set()  # request 1's stdin ends, its record waits for room
        await trio.testing.wait_all_tasks_blocked()
        await app.send_all(
            encode_stream(RecordType.STDOUT, 1, b"")
            + encode_end_request(1, 7, ProtocolStatus.REQUEST_COMPLETE)
        )
        await trio.testing.wait_all_tasks_blocked()
        assert ended == [7]
        await read_until(RecordType.STDIN, 2, empty=True)  # all of request 2's body
        await app.send_all(
            encode_stream(RecordType.STDOUT, 2, b"")
            + encode_end_request(2, 0, ProtocolStatus.REQUEST_COMPLETE)
        )
        # Everything the client still sends (each send waits for this reader).
        await trio.testing.wait_all_tasks_blocked()
        while True:
            with trio.move_on_after(0.2):
                reader.feed(await app.receive_some(1 << 20))
                await read_until(RecordType.STDIN, 1, empty=True)
                continue
            break
    assert ended == [7, 0]
    assert (RecordType.STDIN, 2, 0) in records
    assert [r for r in records if r[0] == RecordType.STDIN and r[1] == 1] == []


async def test_a_closed_client_is_freed_without_the_garbage_collector() -> None:
    """A client that closed leaves nothing in reference cycles (its sender
    held its bound method until it closed)."""
    from trio_fastcgi.client import Client

    def alive() -> set[int]:
        return {id(o) for o in gc.get_objects() if type(o) is Client}

    gc.collect()
    earlier = alive()  # other tests' (a test's traceback may hold some)
    gc.disable()
    try:
        for _ in range(2):
            async with serving(echo) as client:
                response = await client.request({"CONTENT_LENGTH": "2"}, b"hi")
                assert response.parse_cgi().body == b"hi"
            del client
        assert alive() - earlier == set()
    finally:
        gc.enable()
