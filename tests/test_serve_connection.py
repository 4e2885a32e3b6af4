"""The Trio connection layer over in-memory streams: requests, aborts,
multiplexing, keep-alive, errors, limits and timeouts."""

from __future__ import annotations

import functools
import logging
from typing import Any

import pytest
import trio
import trio.testing

from tests import helpers
from tests.helpers import FakeWebServer
from trio_fastcgi import (
    Handler,
    IncompleteInput,
    InputTooLarge,
    Overloaded,
    ProtocolStatus,
    Request,
    Role,
    UnknownRole,
    serve_connection,
)
from trio_fastcgi.testing import make_request


def start(nursery: trio.Nursery, handler: Handler, **options: object) -> FakeWebServer:
    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(functools.partial(serve_connection, handler, server, **options))  # type: ignore[arg-type]
    return FakeWebServer(client)


async def echo(request: Request) -> int:
    body = await request.stdin.receive_all()
    await request.respond(body, headers={"X-Id": str(request.request_id)})
    return len(body)


async def test_responder_round_trip(nursery: trio.Nursery) -> None:
    web = start(nursery, echo)
    await web.request(1, params={"CONTENT_LENGTH": "5"}, stdin=b"hello")
    response = await web.read_response(1)
    assert response.stdout == (
        b"Status: 200 OK\r\nX-Id: 1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhello"
    )
    assert (response.app_status, response.protocol_status) == (5, 0)
    assert response.stdout_closed
    assert response.records[-2].type == helpers.STDOUT
    assert response.records[-2].content == b""


async def test_params_mapping_and_raw_bytes(nursery: trio.Nursery) -> None:
    seen: dict[str, object] = {}

    async def handler(request: Request) -> None:
        seen["params"] = dict(request.params)
        seen["raw"] = request.raw_params
        seen["content_length"] = request.content_length
        await request.respond()

    pairs = [
        (b"PATH_INFO", b"/caf\xc3\xa9/\xff"),
        (b"X", b"1"),
        (b"X", b"2"),
        (b"CONTENT_LENGTH", b""),
    ]
    web = start(nursery, handler)
    await web.send(helpers.begin_record(1) + helpers.params_records(1, pairs))
    await web.send(helpers.record(helpers.STDIN, 1))
    await web.read_response(1)
    assert seen["params"] == {
        "PATH_INFO": "/café/\udcff",
        "X": "2",
        "CONTENT_LENGTH": "",
    }
    assert seen["raw"] == tuple(pairs)
    assert seen["content_length"] is None  # nginx sends "" for bodiless requests


async def test_keep_conn_false_closes_after_end(nursery: trio.Nursery) -> None:
    web = start(nursery, echo)
    await web.request(1, stdin=b"x", keep_conn=False)
    assert (await web.read_response(1)).app_status == 1
    await web.read_eof()


async def test_keep_conn_serves_many_requests_in_sequence(nursery: trio.Nursery) -> None:
    web = start(nursery, echo)
    for i in range(20):
        await web.request(1, stdin=b"x" * i)
        assert (await web.read_response(1)).body == b"x" * i


async def test_hello_is_written_in_one_send(nursery: trio.Nursery) -> None:
    sends: list[bytes] = []
    client, server = trio.testing.memory_stream_pair()
    original = server.send_stream.send_all

    async def recording_send_all(data: bytes | bytearray | memoryview) -> None:
        sends.append(bytes(data))
        await original(data)

    server.send_stream.send_all = recording_send_all  # type: ignore[method-assign]
    nursery.start_soon(serve_connection, echo, server)
    web = FakeWebServer(client)
    await web.request(1, stdin=b"hi")
    await web.read_response(1)
    # STDOUT data, the empty STDOUT and END_REQUEST coalesced into one write.
    assert len(sends) == 1
    records, _ = helpers.parse_records(sends[0])
    assert [r.type for r in records] == [helpers.STDOUT, helpers.STDOUT, helpers.END]


async def test_large_output_is_split_and_byte_exact(nursery: trio.Nursery) -> None:
    payload = bytes(i % 253 for i in range(3 * 1024 * 1024 + 17))

    async def handler(request: Request) -> None:
        await request.stdout.send_all(payload[:1000])
        await request.stdout.send_all(memoryview(payload)[1000:])

    web = start(nursery, handler)
    await web.request(1)
    response = await web.read_response(1)
    assert response.stdout == payload
    assert max(len(r.content) for r in response.records) <= 65535


async def test_multiplexed_requests_finish_out_of_order(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async def handler(request: Request) -> None:
        await trio.sleep(int(request.params["DELAY"]))
        await request.stdout.send_all(request.params["DELAY"].encode() * 100_000)

    web = start(nursery, handler)
    await web.request(1, params={"DELAY": "3"})
    await web.request(2, params={"DELAY": "1"})
    await web.request(3, params={"DELAY": "2"})
    ends = []
    for rid in (2, 3, 1):
        response = await web.read_response(rid)
        ends.append(rid)
        assert response.stdout == str(response.records[0].content[:1].decode()).encode() * 100_000
    assert ends == [2, 3, 1]
    # Whole records only, never interleaved within one: each record belongs to one id.
    end_positions = [i for i, r in enumerate(web.all_records) if r.type == helpers.END]
    assert [web.all_records[i].request_id for i in end_positions] == [2, 3, 1]


async def test_mpxs_off_refuses_second_request(nursery: trio.Nursery) -> None:
    release = trio.Event()

    async def handler(request: Request) -> None:
        await release.wait()
        await request.respond("first")

    web = start(nursery, handler, mpxs_conns=False)
    await web.request(1)
    await web.request(2)
    refused = await web.read_response(2)
    assert (refused.protocol_status, refused.stdout, len(refused.records)) == (
        ProtocolStatus.CANT_MPX_CONN,
        b"",
        1,
    )
    release.set()
    assert (await web.read_response(1)).body == b"first"


async def test_max_reqs_overloaded(nursery: trio.Nursery) -> None:
    release = trio.Event()

    async def handler(request: Request) -> None:
        await release.wait()

    web = start(nursery, handler, max_reqs=2)
    for rid in (1, 2, 3):
        await web.request(rid)
    assert (await web.read_response(3)).protocol_status == ProtocolStatus.OVERLOADED
    release.set()
    for rid in (1, 2):
        assert (await web.read_response(rid)).protocol_status == ProtocolStatus.REQUEST_COMPLETE


async def test_unaccepted_role_never_reaches_handler(nursery: trio.Nursery) -> None:
    called = []

    async def handler(request: Request) -> None:
        called.append(request)

    web = start(nursery, handler)  # Responder only by default
    await web.request(1, role=helpers.AUTHORIZER)
    assert (await web.read_response(1)).protocol_status == ProtocolStatus.UNKNOWN_ROLE
    await web.request(2, role=helpers.FILTER, data=b"x")
    assert (await web.read_response(2)).protocol_status == ProtocolStatus.UNKNOWN_ROLE
    assert called == []


@pytest.mark.parametrize("lighttpd_style", [False, True])
async def test_authorizer(nursery: trio.Nursery, lighttpd_style: bool) -> None:
    async def handler(request: Request) -> None:
        assert request.role is Role.AUTHORIZER
        assert await request.stdin.receive_some() == b""
        if request.params.get("REMOTE_USER") == "alice":
            await request.authorize({"USER_ID": "42"})
        else:
            await request.respond("go away", status=403)

    web = start(nursery, handler, roles={Role.AUTHORIZER})
    for rid, user in ((1, "alice"), (2, "mallory")):
        await web.send(helpers.begin_record(rid, helpers.AUTHORIZER))
        await web.send(helpers.params_records(rid, {"REMOTE_USER": user}))
        if lighttpd_style:
            await web.send(helpers.record(helpers.STDIN, rid))
    allowed = await web.read_response(1)
    denied = await web.read_response(2)
    assert allowed.stdout == b"Status: 200 OK\r\nVariable-USER_ID: 42\r\n\r\n"
    assert denied.stdout.startswith(b"Status: 403 Forbidden\r\n")
    assert denied.body == b"go away"


async def test_filter_reads_stdin_and_data(nursery: trio.Nursery) -> None:
    async def handler(request: Request) -> None:
        assert request.role is Role.FILTER
        stdin = await request.stdin.receive_all()
        data = await request.data.receive_all()
        await request.respond(
            f"{stdin!r} {len(data)} {request.data_length} {request.data_last_mod}"
        )

    web = start(nursery, handler, roles={Role.FILTER})
    params = {"FCGI_DATA_LENGTH": "70000", "FCGI_DATA_LAST_MOD": "1700000000"}
    await web.request(1, params=params, stdin=b"q", role=helpers.FILTER, data=b"d" * 70000)
    assert (await web.read_response(1)).body == b"b'q' 70000 70000 1700000000"


async def test_filter_data_shorter_than_announced(nursery: trio.Nursery) -> None:
    async def handler(request: Request) -> None:
        with pytest.raises(IncompleteInput, match="data ended after 3 bytes, but 10"):
            await request.data.receive_all()
        await request.respond("checked")

    web = start(nursery, handler, roles={Role.FILTER})
    await web.request(1, params={"FCGI_DATA_LENGTH": "10"}, role=helpers.FILTER, data=b"abc")
    assert (await web.read_response(1)).body == b"checked"


async def test_abort_cancels_only_that_request(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    cancelled = []

    async def handler(request: Request) -> None:
        try:
            await trio.sleep(int(request.params["SLEEP"]))
        except trio.Cancelled:
            cancelled.append((request.request_id, request.aborted))
            raise
        await request.respond("done")

    web = start(nursery, handler)
    await web.request(1, params={"SLEEP": "100"})
    await web.request(2, params={"SLEEP": "10"})
    await trio.testing.wait_all_tasks_blocked()
    await web.send(helpers.record(helpers.ABORT, 1))
    aborted = await web.read_response(1)
    assert (aborted.app_status, aborted.protocol_status) == (0, 0)
    assert cancelled == [(1, True)]
    assert (await web.read_response(2)).body == b"done"
    # Exactly one END_REQUEST per request, even after the abort.
    assert [r.request_id for r in web.all_records if r.type == helpers.END] == [1, 2]
    # A late record for the aborted id is ignored; the connection still works.
    await web.send(helpers.stream_records(helpers.STDIN, 1, b"late"))
    await web.request(1, params={"SLEEP": "0"})
    assert (await web.read_response(1)).body == b"done"


async def test_abort_before_params_complete(nursery: trio.Nursery) -> None:
    called = []

    async def handler(request: Request) -> None:
        called.append(request)

    web = start(nursery, handler)
    await web.send(helpers.begin_record(1) + helpers.record(helpers.ABORT, 1))
    response = await web.read_response(1)
    assert [r.type for r in response.records] == [helpers.END]
    assert called == []


async def test_handler_exception_is_logged_and_contained(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(request: Request) -> None:
        if request.request_id == 1:
            raise ValueError("boom")
        await request.respond("ok")

    web = start(nursery, handler)
    await web.request(1)
    await web.request(2)
    failed = await web.read_response(1)
    assert failed.app_status == 1
    assert failed.stdout.startswith(b"Status: 500 Internal Server Error\r\n")
    assert b"boom" not in failed.stdout  # no traceback leaks to the client
    assert (await web.read_response(2)).body == b"ok"
    (record,) = [
        r for r in caplog.records if r.name == "trio_fastcgi" and r.levelno >= logging.ERROR
    ]
    assert "handler failed on request 1" in record.getMessage()
    assert record.exc_info is not None
    assert "boom" in str(record.exc_info[1])


async def test_handler_exception_after_output_sends_no_500(nursery: trio.Nursery) -> None:
    async def handler(request: Request) -> None:
        await request.stdout.send_all(b"Status: 200 OK\r\n\r\npartial")
        raise RuntimeError("late failure")

    web = start(nursery, handler)
    await web.request(1)
    response = await web.read_response(1)
    assert (response.stdout, response.app_status) == (b"Status: 200 OK\r\n\r\npartial", 1)


@pytest.mark.parametrize(
    ("exception", "status"),
    [(Overloaded(), ProtocolStatus.OVERLOADED), (UnknownRole(), ProtocolStatus.UNKNOWN_ROLE)],
)
async def test_handler_raises_protocol_status(
    nursery: trio.Nursery, exception: Exception, status: ProtocolStatus
) -> None:
    async def handler(request: Request) -> None:
        raise exception

    web = start(nursery, handler)
    await web.request(1)
    assert (await web.read_response(1)).protocol_status == status


@pytest.mark.parametrize(
    ("result", "status"),
    [
        (None, 0),
        (0, 0),
        (7, 7),
        (2**32 - 1, 2**32 - 1),
        (-1, 1),
        ("x", 1),
        (True, 1),  # ints of another type count as their value
        (ProtocolStatus.OVERLOADED, 2),
    ],
)
async def test_return_value_is_app_status(
    nursery: trio.Nursery, result: object, status: int
) -> None:
    async def handler(request: Request) -> object:
        return result

    web = start(nursery, handler)  # type: ignore[arg-type]
    await web.request(1)
    assert (await web.read_response(1)).app_status == status


async def test_peer_disconnect_cancels_requests_quietly(caplog: pytest.LogCaptureFixture) -> None:
    cancelled = trio.Event()

    async def handler(request: Request) -> None:
        try:
            await request.stdout.send_all(b"Status: 200\r\n\r\n")
            await trio.sleep_forever()
        finally:
            cancelled.set()

    client, server = trio.testing.memory_stream_pair()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_connection, handler, server)
            web = FakeWebServer(client)
            await web.request(1)
            await web._read_more()
            await client.aclose()
            await cancelled.wait()
    # serve_connection returned by itself; nothing above DEBUG was logged.
    assert [r for r in caplog.records if r.levelno > logging.DEBUG] == []


@pytest.mark.parametrize(
    ("garbage", "message"),
    [
        (b"\x09" + bytes(15), "unsupported FastCGI version 9"),
        (helpers.begin_record(1) + helpers.begin_record(1), "already active"),
        (
            helpers.begin_record(1)
            + helpers.record(helpers.PARAMS, 1, b"\x7f\xff\xff\xff\xff")
            + helpers.record(helpers.PARAMS, 1),
            "malformed FCGI_PARAMS",
        ),
    ],
)
async def test_protocol_error_closes_with_one_log_line(
    caplog: pytest.LogCaptureFixture, garbage: bytes, message: str
) -> None:
    client, server = trio.testing.memory_stream_pair()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_connection, echo, server)
            web = FakeWebServer(client)
            await web.send(garbage)
            await web.read_eof()
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1
    assert message in lines[0].getMessage()
    assert lines[0].exc_info is None


async def test_truncated_record_then_eof(caplog: pytest.LogCaptureFixture) -> None:
    client, server = trio.testing.memory_stream_pair()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_connection, echo, server)
            await client.send_all(helpers.begin_record(1)[:5])
            await client.send_eof()
    assert [
        "middle of a record" in r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING
    ] == [True]


async def test_management_records(nursery: trio.Nursery) -> None:
    web = start(nursery, echo, max_conns=10, max_reqs=20)
    query = helpers.nv_pairs(
        [(b"FCGI_MAX_CONNS", b""), (b"FCGI_UNKNOWN", b""), (b"FCGI_MPXS_CONNS", b"")]
    )
    await web.send(helpers.record(helpers.GET_VALUES, 0, query))
    result = await web.read_management()
    assert (result.type, result.request_id) == (helpers.GET_VALUES_RESULT, 0)
    assert result.content == helpers.nv_pairs(
        [(b"FCGI_MAX_CONNS", b"10"), (b"FCGI_MPXS_CONNS", b"1")]
    )
    await web.send(helpers.record(42, 0, b"?"))
    unknown = await web.read_management()
    assert (unknown.type, unknown.content) == (helpers.UNKNOWN_TYPE, b"\x2a" + bytes(7))
    await web.send(helpers.begin_record(0))  # id 0 is never a request
    unknown = await web.read_management()
    assert (unknown.type, unknown.content[0]) == (helpers.UNKNOWN_TYPE, helpers.BEGIN)
    # The connection carries on.
    await web.request(1, stdin=b"still here")
    assert (await web.read_response(1)).body == b"still here"


async def test_unread_input_is_discarded_when_handler_ends(nursery: trio.Nursery) -> None:
    async def handler(request: Request) -> None:
        await request.respond("ignored your body")

    web = start(nursery, handler, input_buffer_size=1024)
    # 1 MiB of stdin the handler never reads: the connection keeps going.
    await web.request(1, stdin=b"z" * (1 << 20))
    assert (await web.read_response(1)).body == b"ignored your body"
    await web.request(2, stdin=b"small")
    assert (await web.read_response(2)).body == b"ignored your body"


async def test_input_buffer_applies_backpressure(nursery: trio.Nursery) -> None:
    release = trio.Event()
    got = []

    async def handler(request: Request) -> None:
        await release.wait()
        got.append(len(await request.stdin.receive_all()))
        await request.respond()

    client, server = trio.testing.lockstep_stream_pair()
    nursery.start_soon(
        functools.partial(serve_connection, handler, server, input_buffer_size=100_000)
    )
    web = FakeWebServer(client)
    payload = helpers.request_bytes(1, stdin=b"y" * 1_000_000)
    sent = 0

    async def web_server_sends() -> None:
        nonlocal sent
        for i in range(0, len(payload), 4096):
            await web.send(payload[i : i + 4096])
            sent += len(payload[i : i + 4096])

    nursery.start_soon(web_server_sends)
    await trio.testing.wait_all_tasks_blocked()
    # The reader stopped reading near the buffer limit: the web server is stuck.
    assert 100_000 <= sent < 400_000
    release.set()
    response = await web.read_response(1)
    assert got == [1_000_000]
    assert response.app_status == 0


async def test_slow_reader_does_not_stall_other_requests(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    async def handler(request: Request) -> None:
        if request.request_id == 1:
            await trio.sleep(1000)  # never reads its (small) body
        await request.respond("fast")

    web = start(nursery, handler)
    await web.request(1, stdin=b"a" * 10_000)
    await web.request(2, stdin=b"b" * 10_000)
    assert (await web.read_response(2)).body == b"fast"


async def test_receive_all_limits(nursery: trio.Nursery) -> None:
    results = []

    async def handler(request: Request) -> None:
        try:
            await request.stdin.receive_all(max_size=10)
        except InputTooLarge as exc:
            results.append(str(exc))
        await request.respond()

    web = start(nursery, handler)
    await web.request(1, params={"CONTENT_LENGTH": "11"}, stdin=b"x" * 11)
    await web.request(2, stdin=b"x" * 11)  # no CONTENT_LENGTH: counted while reading
    await web.read_response(1)
    await web.read_response(2)
    assert results == [
        "stdin announces 11 bytes, more than the 10 allowed",
        "stdin is longer than the 10 bytes allowed",
    ]


async def test_short_body_raises_incomplete_input(nursery: trio.Nursery) -> None:
    errors = []

    async def handler(request: Request) -> None:
        try:
            async for _chunk in request.stdin:
                pass
        except IncompleteInput as exc:
            errors.append(str(exc))
        await request.respond()

    web = start(nursery, handler)
    await web.request(1, params={"CONTENT_LENGTH": "100"}, stdin=b"x" * 40)
    await web.read_response(1)
    assert errors == ["stdin ended after 40 bytes, but 100 were announced"]


async def test_stdin_that_only_ended_is_made_when_read(nursery: trio.Nursery) -> None:
    """A GET's stdin only ever ends: no stream is made for that (a hello's
    cheapest path). Made later, it is the stream that the eager path made:
    ended, checked against CONTENT_LENGTH, read more than once."""
    seen: dict[str, object] = {}
    gate = trio.Event()

    async def handler(request: Request) -> None:
        await gate.wait()  # stdin's end has arrived by now
        seen[f"made before, {request.request_id}"] = request._stdin is not None
        stdin = request.stdin
        assert request.stdin is stdin  # made once
        try:
            seen[f"body {request.request_id}"] = await stdin.receive_all()
            seen[f"again {request.request_id}"] = await stdin.receive_some()
        except IncompleteInput as exc:
            seen[f"error {request.request_id}"] = str(exc)
        seen[f"length {request.request_id}"] = request.content_length
        await request.respond()

    web = start(nursery, handler)
    await web.request(1, params={"REQUEST_METHOD": "GET", "CONTENT_LENGTH": ""})
    await web.request(2, params={"CONTENT_LENGTH": "5"})  # announced, never sent
    await web.request(3, params={"CONTENT_LENGTH": "5"}, stdin=b"hello")
    await trio.testing.wait_all_tasks_blocked()
    gate.set()
    for request_id in (1, 2, 3):
        await web.read_response(request_id)
    assert seen == {
        "made before, 1": False,
        "body 1": b"",
        "again 1": b"",
        "length 1": None,
        "made before, 2": False,
        "error 2": "stdin ended after 0 bytes, but 5 were announced",
        "length 2": 5,
        "made before, 3": True,  # input arrived: the stream holds it
        "body 3": b"hello",
        "again 3": b"",
        "length 3": 5,
    }


async def test_stdin_made_after_its_request_ended_or_its_connection_closed() -> None:
    """A task of the handler's may read stdin after the request ended (its
    input is dropped) or after the connection closed (ClosedResourceError),
    whether or not the stream was made before."""
    _, output = make_request()

    def new_request(made_before: bool) -> Request:
        request = Request._create(
            request_id=1,
            role=Role.RESPONDER,
            keep_conn=True,
            raw_params=((b"CONTENT_LENGTH", b"4" if made_before else b""),),
            outbox=output,
            input_buffer_size=1024,
        )
        if made_before:
            assert request._offer_stdin(b"body")
        assert request._offer_stdin(b"")
        assert (request._stdin is not None) is made_before
        return request

    for made_before in (False, True):
        ended = new_request(made_before)
        ended._finish()
        assert await ended.stdin.receive_some() == b""
        closed = new_request(made_before)
        closed._close_input()
        with pytest.raises(trio.ClosedResourceError, match="stdin was closed"):
            await closed.stdin.receive_some()


async def test_stdin_streams_in_chunks(nursery: trio.Nursery) -> None:
    sizes = []

    async def handler(request: Request) -> None:
        while chunk := await request.stdin.receive_some(1000):
            sizes.append(len(chunk))
        await request.respond()

    web = start(nursery, handler)
    await web.request(1, stdin=b"s" * 2500)
    await web.read_response(1)
    assert sum(sizes) == 2500
    assert max(sizes) <= 1000


async def test_stderr_and_stdout_interleave(nursery: trio.Nursery) -> None:
    async def handler(request: Request) -> int:
        await request.stdout.send_all(b"Status: 200\r\n\r\n")
        await request.stderr.send_all(b"warning 1\n")
        await request.stdout.send_all(b"body")
        await request.stderr.send_all(b"warning 2\n")
        return 938

    web = start(nursery, handler)
    await web.request(1)
    response = await web.read_response(1)
    assert (response.stdout, response.stderr, response.app_status) == (
        b"Status: 200\r\n\r\nbody",
        b"warning 1\nwarning 2\n",
        938,
    )
    # Both streams were ended before END_REQUEST.
    tail = [(r.type, r.content) for r in response.records[-3:]]
    assert tail == [
        (helpers.STDOUT, b""),
        (helpers.STDERR, b""),
        (helpers.END, (938).to_bytes(4, "big") + bytes(4)),
    ]


async def test_writing_after_request_end_raises_closed(nursery: trio.Nursery) -> None:
    kept: list[Request] = []

    async def handler(request: Request) -> None:
        kept.append(request)
        await request.respond("ok")

    web = start(nursery, handler)
    await web.request(1)
    await web.read_response(1)
    with pytest.raises(trio.ClosedResourceError):
        await kept[0].stdout.send_all(b"too late")
    with pytest.raises(trio.ClosedResourceError):
        await kept[0].stderr.send_all(b"too late")


async def test_idle_timeout_closes_connection(autojump_clock: trio.testing.MockClock) -> None:
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(serve_connection, echo, server, idle_timeout=30))
        web = FakeWebServer(client)
        await web.request(1, stdin=b"x")
        await web.read_response(1)
        start_time = trio.current_time()
        await web.read_eof()
        assert 29 < trio.current_time() - start_time < 31


async def test_idle_timeout_counts_from_the_end_of_the_last_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def handler(request: Request) -> None:
        await trio.sleep(float(request.params["SLEEP"]))
        await request.respond("slept")

    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(serve_connection, handler, server, idle_timeout=30))
        web = FakeWebServer(client)
        await web.request(1, params={"SLEEP": "75"})  # longer than idle_timeout
        await web.read_response(1)
        ended = trio.current_time()
        await web.request(1, params={"SLEEP": "0"})
        await web.read_response(1)
        await web.read_eof()
        assert trio.current_time() - ended == pytest.approx(30, abs=0.5)


async def test_read_timeout_closes_slow_loris(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    client, server = trio.testing.memory_stream_pair()
    data = helpers.request_bytes(1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(serve_connection, echo, server, read_timeout=10))

        async def trickle() -> None:
            for i in range(len(data)):
                await client.send_all(data[i : i + 1])
                await trio.sleep(1)

        nursery.start_soon(trickle)
        web = FakeWebServer(client)
        start_time = trio.current_time()
        with pytest.raises(AssertionError, match="EOF before END_REQUEST"):
            await web.read_response(1)
        assert trio.current_time() - start_time == pytest.approx(10, abs=1.5)
        nursery.cancel_scope.cancel()
    assert any("read_timeout" in r.getMessage() for r in caplog.records)


async def test_read_timeout_does_not_count_time_the_handler_takes_to_read(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A slow handler keeps the stdin buffer full for longer than read_timeout
    # while the next record is half here: the web server is not the slow one,
    # so the connection stays open and the body arrives whole.
    async def slow_reader(request: Request) -> None:
        await trio.sleep(100)
        body = await request.stdin.receive_all()
        await request.respond(str(len(body)))

    record = helpers.record(helpers.STDIN, 1, b"x" * 1000)
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            functools.partial(
                serve_connection, slow_reader, server, read_timeout=60, input_buffer_size=1024
            )
        )
        web = FakeWebServer(client)
        head = helpers.begin_record(1) + helpers.params_records(1, {"CONTENT_LENGTH": "3000"})
        await web.send(head + record * 2 + record[:500])
        await trio.sleep(150)  # the handler read at 100; the rest comes 50 s later
        await web.send(record[500:] + helpers.record(helpers.STDIN, 1))
        response = await web.read_response(1)
        assert response.body == b"3000"
        nursery.cancel_scope.cancel()


async def test_write_timeout_closes_a_connection_whose_web_server_stopped_reading(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    outcome: list[str] = []

    async def flood(request: Request) -> None:
        try:
            while True:
                await request.stdout.send_all(bytes(65536))
        except trio.Cancelled:
            outcome.append("cancelled")
            raise

    ours, theirs = trio.socket.socketpair()
    web = FakeWebServer(trio.SocketStream(theirs))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            functools.partial(serve_connection, flood, trio.SocketStream(ours), write_timeout=20)
        )
        await web.request(1)  # and read nothing of the response for a while
        await trio.sleep(19)
        assert outcome == []
        await trio.sleep(2)
        assert outcome == ["cancelled"]
        # What was sent before is still there, then the end of the connection.
        while await web.stream.receive_some(1 << 20):
            pass
    assert any("write_timeout (20 s)" in r.getMessage() for r in caplog.records)
    await web.stream.aclose()


async def test_no_timeout_while_a_handler_runs(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    async def handler(request: Request) -> None:
        await trio.sleep(1000)
        await request.respond("patience")

    web = start(nursery, handler, idle_timeout=5, read_timeout=5)
    await web.request(1)
    assert (await web.read_response(1)).body == b"patience"


async def test_half_close_then_drain(nursery: trio.Nursery) -> None:
    # After the last response without KEEP_CONN the app half-closes and keeps
    # reading, so trailing bytes from the web server cannot cause a reset.
    web = start(nursery, echo)
    await web.request(1, stdin=b"x", keep_conn=False)
    await web.read_response(1)
    await web.read_eof()
    await web.send(b"trailing bytes are read and dropped")
    await web.stream.send_eof()  # type: ignore[attr-defined]


async def test_shutdown_event_cancels_after_grace_period(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    shutdown = trio.Event()
    cancelled_at: list[float] = []

    async def stuck(request: Request) -> None:
        try:
            await trio.sleep_forever()
        finally:
            cancelled_at.append(trio.current_time())

    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            functools.partial(
                serve_connection, stuck, server, shutdown_event=shutdown, grace_period=7
            )
        )
        web = FakeWebServer(client)
        await web.request(1)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        shutdown.set()
        await web.read_eof()
    assert cancelled_at == [pytest.approx(start + 7)]
    assert "still busy after 7 s" in caplog.text


async def test_shutdown_waits_for_the_first_request_of_a_fresh_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A connection accepted just before the shutdown has its first request on
    # the way: it is served, not closed under it.
    shutdown = trio.Event()
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            functools.partial(serve_connection, echo, server, shutdown_event=shutdown)
        )
        web = FakeWebServer(client)
        shutdown.set()
        await trio.sleep(1)
        await web.request(1, stdin=b"late but welcome")
        assert (await web.read_response(1)).body == b"late but welcome"
        await web.read_eof()  # then closed, being idle during shutdown


async def test_shutdown_closes_a_fresh_connection_that_stays_silent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    shutdown = trio.Event()
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            functools.partial(serve_connection, echo, server, shutdown_event=shutdown)
        )
        web = FakeWebServer(client)
        shutdown.set()
        start = trio.current_time()
        await web.read_eof()
        assert trio.current_time() - start == pytest.approx(2.0)


# -- requests in tasks of their handler's own (spawn_request) -------------------


@pytest.mark.parametrize("how", ["peer closes", "serving cancelled"])
async def test_a_request_in_its_own_task_is_cancelled_when_the_connection_ends(
    how: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A handler whose requests run in tasks of its own (as the ASGI
    adapter's do) is stopped like one in the connection's nursery: while it
    waits for room in the output queue, the connection's end gives it
    Cancelled, not BrokenResourceError (which would log "handler failed")."""
    outcome: list[str] = []

    class OwnTasks:
        def spawn_request(self, run: Any, request: Request) -> None:
            trio.lowlevel.spawn_system_task(run, request)

        async def __call__(self, request: Request) -> None:
            try:
                while True:
                    await request.stdout.send_all(b"x" * 65536)
            except BaseException as exc:
                outcome.append(type(exc).__name__)
                raise

    client, server = trio.testing.lockstep_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_connection, OwnTasks(), server)
        await client.send_all(helpers.request_bytes(1, params={"REQUEST_METHOD": "GET"}))
        await trio.testing.wait_all_tasks_blocked()  # nobody reads: the handler waits
        if how == "peer closes":
            await client.aclose()
        else:
            nursery.cancel_scope.cancel()
    await trio.testing.wait_all_tasks_blocked()
    assert outcome == ["Cancelled"]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
