"""The connection's one sender: direct sends, the writer task, order, room,
failure; the server's Writer and the Sender under it, which the client uses too."""

from __future__ import annotations

import functools
import socket
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from tests.helpers import END, STDOUT, FakeWebServer, Response, parse_records
from trio_fastcgi import Request, serve_connection
from trio_fastcgi._alarm import Alarm
from trio_fastcgi._connection import FastCGIConnection
from trio_fastcgi._events import NEED_DATA, EndRequest, Stdout
from trio_fastcgi._sender import QUEUE_LIMIT, Sender
from trio_fastcgi._transport import SocketTransport, Transport
from trio_fastcgi._wire import (
    KEEP_CONN_FLAG,
    RecordType,
    Role,
    encode_begin_request_body,
    encode_pairs,
    encode_record,
)
from trio_fastcgi._writer import Writer
from trio_fastcgi.client import Client


class FakeTransport(Transport):
    """Takes at most *per_send* bytes per non-blocking send (None: all of it);
    its waiting sends finish only when the test allows them."""

    def __init__(self, per_send: int | None = None) -> None:
        super().__init__()
        self.per_send = per_send
        self.wire = bytearray()
        self.sends_nowait = 0
        self.waiting_sends = 0
        self.allow = trio.Event()
        self.fail_with: BaseException | None = None

    def send_nowait(self, parts: list[bytes | memoryview]) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.sends_nowait += 1
        data = b"".join(parts)
        taken = len(data) if self.per_send is None else min(self.per_send, len(data))
        self.wire += data[:taken]
        parts[:] = [memoryview(data)[taken:]] if taken < len(data) else []

    async def send_parts(self, parts: list[bytes | memoryview]) -> None:
        self.waiting_sends += 1
        await self.allow.wait()
        if self.fail_with is not None:
            raise self.fail_with
        self.wire += b"".join(parts)
        parts.clear()

    async def receive_some(self, max_bytes: int, alarm: Alarm | None = None) -> bytes:
        raise NotImplementedError

    async def send_all(self, data: bytes) -> None:
        raise NotImplementedError

    async def send_eof(self) -> bool:
        return True

    async def close(self) -> None:
        pass


def core_with_requests(*request_ids: int, keep_conn: bool = True) -> FastCGIConnection:
    """A sans-IO core in which *request_ids* have begun and have their params."""
    conn = FastCGIConnection(roles=(Role.RESPONDER,))
    for request_id in request_ids:
        flags = KEEP_CONN_FLAG if keep_conn else 0
        body = encode_begin_request_body(Role.RESPONDER, flags)
        conn.receive_data(encode_record(RecordType.BEGIN_REQUEST, request_id, body))
        params = encode_pairs([(b"REQUEST_METHOD", b"GET")])
        conn.receive_data(encode_record(RecordType.PARAMS, request_id, params))
        conn.receive_data(encode_record(RecordType.PARAMS, request_id, b""))
        while conn.next_event() is not NEED_DATA:
            pass
    return conn


class Harness:
    def __init__(self, transport: Transport, conn: FastCGIConnection) -> None:
        self.closing = False
        self.half_closed = 0
        self.half_closed_now = 0
        self.can_half_close_now = False
        self.failed = 0
        self.writer = Writer(
            conn,
            transport,
            name="conn-test",
            should_close=lambda: self.closing,
            half_close=self.half_close,
            half_close_nowait=self.half_close_nowait,
            fail=self.fail,
        )

    def half_close_nowait(self) -> bool:
        if not self.can_half_close_now:
            return False
        self.half_closed_now += 1
        return True

    async def half_close(self) -> None:
        self.half_closed += 1
        await trio.lowlevel.checkpoint()

    def fail(self) -> None:
        self.failed += 1


def records_of(wire: bytes) -> list[tuple[int, int]]:
    """(type, request id) of each record on *wire*, which must hold whole records."""
    records, rest = parse_records(wire)
    assert rest == b""
    return [(r.type, r.request_id) for r in records]


def stdout_of(wire: bytes, request_id: int) -> bytes:
    records, _ = parse_records(wire)
    return b"".join(r.content for r in records if r.type == STDOUT and r.request_id == request_id)


async def test_output_that_the_socket_takes_goes_out_from_the_writing_task() -> None:
    transport = FakeTransport()
    harness = Harness(transport, core_with_requests(1))
    async with trio.open_nursery() as nursery:
        harness.writer.nursery = nursery
        await harness.writer.send(Stdout(1, b"hello"))
        # Sent before send() returned, with no writer task.
        assert stdout_of(bytes(transport.wire), 1) == b"hello"
        assert harness.writer.idle
        assert len(nursery.child_tasks) == 0


async def test_send_many_is_one_write() -> None:
    transport = FakeTransport()
    harness = Harness(transport, core_with_requests(1))
    async with trio.open_nursery() as nursery:
        harness.writer.nursery = nursery
        await harness.writer.send_many([Stdout(1, b"body"), Stdout(1, b"")])
        assert transport.sends_nowait == 1
        assert records_of(bytes(transport.wire)) == [(STDOUT, 1), (STDOUT, 1)]


async def test_what_the_socket_does_not_take_is_queued_and_sent_in_order() -> None:
    transport = FakeTransport(per_send=10)
    harness = Harness(transport, core_with_requests(1, 2))
    writer = harness.writer
    async with trio.open_nursery() as nursery:
        writer.nursery = nursery
        await writer.send(Stdout(1, b"a" * 100))  # 10 bytes out, the rest queued
        assert not writer.idle
        # Everything after that is queued behind it, even what would fit.
        await writer.send(Stdout(2, b"b" * 5))
        await writer.send(Stdout(1, b"c" * 5))
        assert transport.sends_nowait == 1
        await trio.testing.wait_all_tasks_blocked()
        transport.allow.set()
    assert writer.idle
    wire = bytes(transport.wire)
    assert stdout_of(wire, 1) == b"a" * 100 + b"c" * 5
    assert stdout_of(wire, 2) == b"b" * 5


async def test_senders_wait_for_room_while_the_queue_is_full() -> None:
    transport = FakeTransport(per_send=0)
    harness = Harness(transport, core_with_requests(1, 2))
    writer = harness.writer
    sent_second = False
    async with trio.open_nursery() as nursery:
        writer.nursery = nursery
        await writer.send(Stdout(1, b"x" * QUEUE_LIMIT))

        async def second() -> None:
            nonlocal sent_second
            await writer.send(Stdout(2, b"y"))
            sent_second = True

        nursery.start_soon(second)
        await trio.testing.wait_all_tasks_blocked()
        assert not sent_second  # waits for room
        transport.allow.set()
    assert sent_second
    assert stdout_of(bytes(transport.wire), 2) == b"y"


async def test_a_closed_writer_fails_sends_at_once_and_wakes_waiters() -> None:
    transport = FakeTransport(per_send=0)
    harness = Harness(transport, core_with_requests(1, 2))
    writer = harness.writer
    async with trio.open_nursery() as nursery:
        writer.nursery = nursery
        await writer.send(Stdout(1, b"x" * QUEUE_LIMIT))
        outcome: list[str] = []

        async def waiter() -> None:
            try:
                await writer.send(Stdout(2, b"y"))
            except trio.BrokenResourceError:
                outcome.append("broken")

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        writer.close()
        await trio.testing.wait_all_tasks_blocked()
        assert outcome == ["broken"]
        with pytest.raises(trio.BrokenResourceError):
            await writer.send(Stdout(2, b"z"))
        nursery.cancel_scope.cancel()


async def test_a_send_that_fails_raises_at_once_and_fails_the_connection() -> None:
    transport = FakeTransport()
    transport.fail_with = trio.BrokenResourceError("reset")
    harness = Harness(transport, core_with_requests(1))
    async with trio.open_nursery() as nursery:
        harness.writer.nursery = nursery
        with pytest.raises(trio.BrokenResourceError):
            await harness.writer.send(Stdout(1, b"lost"))
        assert harness.failed == 1
        assert harness.writer.closed


async def test_the_writer_task_failing_fails_the_connection() -> None:
    transport = FakeTransport(per_send=1)
    harness = Harness(transport, core_with_requests(1))
    async with trio.open_nursery() as nursery:
        harness.writer.nursery = nursery
        await harness.writer.send(Stdout(1, b"partly"))
        await trio.testing.wait_all_tasks_blocked()
        transport.fail_with = trio.BrokenResourceError("reset")
        transport.allow.set()
    assert harness.failed == 1
    with pytest.raises(trio.BrokenResourceError):
        await harness.writer.send(Stdout(1, b"more"))


async def test_half_close_follows_the_last_end_request_once_sent() -> None:
    transport = FakeTransport(per_send=4)
    harness = Harness(transport, core_with_requests(1))
    async with trio.open_nursery() as nursery:
        harness.writer.nursery = nursery
        harness.closing = True
        await harness.writer.send(EndRequest(1))
        assert harness.half_closed == 0  # the END_REQUEST is still queued
        transport.allow.set()
    assert harness.half_closed == 1
    assert records_of(bytes(transport.wire))[-1] == (END, 1)
    with pytest.raises(trio.BrokenResourceError):  # nothing may follow a half-close
        await harness.writer.send(Stdout(1, b"late"))


async def test_wake_half_closes_an_idle_connection_that_should_close() -> None:
    harness = Harness(FakeTransport(), core_with_requests())
    async with trio.open_nursery() as nursery:
        harness.writer.nursery = nursery
        harness.writer.wake()
        assert harness.half_closed == 0
        harness.closing = True
        harness.writer.wake()
    assert harness.half_closed == 1


async def test_a_full_socket_queues_and_the_writer_task_delivers_in_order() -> None:
    """A real socket pair with a small buffer: two requests' large outputs
    arrive whole, each in order, no record interleaved."""
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    transport = SocketTransport(ours)
    harness = Harness(transport, core_with_requests(1, 2))
    chunks = {rid: [bytes([rid]) * size for size in (70_000, 3, 65_535, 200_000)] for rid in (1, 2)}
    received = bytearray()
    with theirs:
        theirs.setblocking(False)
        async with trio.open_nursery() as nursery:
            harness.writer.nursery = nursery

            async def write(rid: int) -> None:
                for chunk in chunks[rid]:
                    await harness.writer.send(Stdout(rid, chunk))

            async def read() -> None:
                expected = sum(len(c) for cs in chunks.values() for c in cs)
                while (
                    len(stdout_of(bytes(received), 1)) + len(stdout_of(bytes(received), 2))
                    < expected
                ):
                    await trio.lowlevel.wait_readable(theirs)
                    received.extend(theirs.recv(1 << 20))

            nursery.start_soon(write, 1)
            nursery.start_soon(write, 2)
            nursery.start_soon(read)
    ours.close()
    for rid in (1, 2):
        assert stdout_of(bytes(received), rid) == b"".join(chunks[rid])


async def test_a_transport_that_half_closes_at_once_needs_no_writer_task() -> None:
    transport = FakeTransport()
    harness = Harness(transport, core_with_requests(1))
    harness.can_half_close_now = True
    async with trio.open_nursery() as nursery:
        harness.writer.nursery = nursery
        harness.closing = True
        await harness.writer.send(EndRequest(1))
        assert harness.half_closed_now == 1
        assert len(nursery.child_tasks) == 0
    assert harness.half_closed == 0
    with pytest.raises(trio.BrokenResourceError):  # nothing may follow a half-close
        await harness.writer.send(Stdout(1, b"late"))


# -- a response leaves when it is written, not when the handler returns -------


async def serve_on_socket(
    nursery: trio.Nursery, handler: Callable[[Request], Awaitable[None]], **options: object
) -> FakeWebServer:
    ours, theirs = trio.socket.socketpair()
    nursery.start_soon(
        functools.partial(serve_connection, handler, trio.SocketStream(ours), **options)  # type: ignore[arg-type]
    )
    return FakeWebServer(trio.SocketStream(theirs))


async def test_a_response_leaves_before_the_handler_returns(nursery: trio.Nursery) -> None:
    release = trio.Event()

    async def handler(request: Request) -> None:
        await request.respond(b"early")
        await release.wait()

    web = await serve_on_socket(nursery, handler)
    await web.request(1)
    with trio.fail_after(5):
        while b"early" not in web.responses.get(1, Response()).stdout:
            assert await web._read_more()
    assert web.responses[1].app_status is None  # no END_REQUEST yet
    release.set()
    response = await web.read_response(1)
    assert response.body == b"early"
    assert response.app_status == 0
    await web.stream.aclose()


async def test_a_response_leaves_while_the_reader_waits_for_the_handler_to_read(
    nursery: trio.Nursery,
) -> None:
    """The reader blocked on a full input buffer: a response written then
    still goes out at once."""
    release = trio.Event()

    async def handler(request: Request) -> None:
        await trio.testing.wait_all_tasks_blocked()  # the reader is stuck feeding
        await request.respond(b"too large")
        await release.wait()

    web = await serve_on_socket(nursery, handler, input_buffer_size=16)

    async def send_body() -> None:
        await web.request(1, stdin=b"x" * 100_000)

    nursery.start_soon(send_body)
    with trio.fail_after(5):
        while b"too large" not in web.responses.get(1, Response()).stdout:
            assert await web._read_more()
    release.set()
    response = await web.read_response(1)
    assert response.app_status == 0
    await web.stream.aclose()


# -- the shared Sender, as the client uses it --------------------------------


def get_values_record() -> bytes:
    return encode_record(RecordType.GET_VALUES, 0, encode_pairs([(b"FCGI_MAX_CONNS", b"")]))


class StallingStream(trio.abc.Stream):
    """Records each send_all; a send waits while *stalled* is clear, and
    raises *fail_with* if set. Receives wait forever."""

    def __init__(self) -> None:
        self.sends: list[bytes] = []
        self.stalled = trio.Event()
        self.stalled.set()
        self.fail_with: BaseException | None = None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sends.append(bytes(data))
        await self.stalled.wait()
        if self.fail_with is not None:
            raise self.fail_with

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_sender_a_client_over_a_socket_stream_sends_from_the_sending_task() -> None:
    ours, theirs = socket.socketpair()
    with theirs:
        theirs.setblocking(False)
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
        async with Client(stream) as client:
            record = get_values_record()
            await client._send(record)
            # On the wire before any other task could run: no writer task.
            assert theirs.recv(1000) == record
            assert client._sender.idle
            # The stream is still the caller's: its socket was not taken.
            assert stream.socket.fileno() != -1
            assert stream.socket.getpeername() == theirs.getsockname()
        # Closed with the client, the duplicate and the stream both.
        assert stream.socket.fileno() == -1
        assert theirs.recv(1000) == b""


async def test_sender_a_client_over_a_full_socket_queues_behind_what_waits() -> None:
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    big, small = b"a" * 200_000, b"b" * 10
    received = bytearray()
    with theirs:
        theirs.setblocking(False)
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
        async with Client(stream) as client:
            await client._send(big)  # the socket takes part; the rest is queued
            assert not client._sender.idle
            # Room in the socket now, but the writer task has not run: what
            # comes next must still go after what is queued.
            received += theirs.recv(1 << 20)
            await client._send(small)
            with trio.fail_after(5):
                while len(received) < len(big) + len(small):
                    await trio.lowlevel.wait_readable(theirs)
                    received += theirs.recv(1 << 20)
    assert bytes(received) == big + small


async def test_sender_a_client_whose_stream_stalls_queues_and_coalesces_in_order() -> None:
    stream = StallingStream()
    stream.stalled = trio.Event()
    first, second, third = b"1" * 10, b"2" * 20, b"3" * 30
    async with Client(stream) as client:
        await client._send(first)
        await trio.testing.wait_all_tasks_blocked()
        assert stream.sends == [first]  # the writer task is stuck in it
        await client._send(second)
        client._send_soon(third)
        assert not client._sender.idle
        stream.stalled.set()
        await trio.testing.wait_all_tasks_blocked()
        # What queued behind the stalled send went out in one write, in order.
        assert stream.sends == [first, second + third]
        assert client._sender.idle


async def test_sender_a_client_waits_for_room_while_its_queue_is_full() -> None:
    stream = StallingStream()
    stream.stalled = trio.Event()
    sent_more = False
    async with Client(stream) as client, trio.open_nursery() as nursery:
        await client._send(b"x")
        await trio.testing.wait_all_tasks_blocked()
        await client._send(b"y" * QUEUE_LIMIT)

        async def more() -> None:
            nonlocal sent_more
            await client._send(b"z")
            sent_more = True

        nursery.start_soon(more)
        await trio.testing.wait_all_tasks_blocked()
        assert not sent_more
        stream.stalled.set()
        await trio.testing.wait_all_tasks_blocked()
        assert sent_more
        assert b"".join(stream.sends) == b"x" + b"y" * QUEUE_LIMIT + b"z"


async def test_sender_a_client_whose_send_failed_fails_later_sends_at_once() -> None:
    stream = StallingStream()
    stream.fail_with = trio.BrokenResourceError("reset")
    async with Client(stream) as client:
        await client._send(b"lost")  # queued: the writer task's send fails
        await trio.testing.wait_all_tasks_blocked()
        assert not client.is_usable
        for _ in range(2):
            with pytest.raises(
                trio.BrokenResourceError, match="sending to the FastCGI application failed"
            ):
                await client._send(b"later")
        client._send_soon(b"dropped")
        await trio.testing.wait_all_tasks_blocked()
        assert stream.sends == [b"lost"]


async def test_sender_a_client_whose_direct_send_fails_raises_the_failure() -> None:
    ours, theirs = socket.socketpair()
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    async with Client(stream) as client:
        await trio.testing.wait_all_tasks_blocked()
        theirs.close()
        # With no schedule point in between, the direct send meets EPIPE
        # before the reader can see the EOF.
        with pytest.raises(
            trio.BrokenResourceError, match="sending to the FastCGI application failed"
        ):
            await client._send(get_values_record())
        with pytest.raises(
            trio.BrokenResourceError, match="sending to the FastCGI application failed"
        ):
            await client.get_values()


async def test_sender_send_soon_sends_at_once_or_queues_behind_the_writer_task() -> None:
    transport = FakeTransport(per_send=3)
    failures: list[BaseException] = []
    sender = Sender(transport, fail=failures.append)
    async with trio.open_nursery() as nursery:
        sender.nursery = nursery
        sender.send_soon(b"abc")
        assert bytes(transport.wire) == b"abc"
        assert sender.idle
        sender.send_soon(b"defgh")  # 3 bytes out, the rest queued
        sender.send_soon(b"ij")
        assert bytes(transport.wire) == b"abcdef"
        assert not sender.idle
        transport.allow.set()
    assert bytes(transport.wire) == b"abcdefghij"
    transport.fail_with = trio.BrokenResourceError("reset")
    sender.send_soon(b"lost")
    assert failures == [transport.fail_with]
    assert sender.closed
    with pytest.raises(trio.BrokenResourceError):
        await sender.send_all(b"later")


async def test_sender_send_made_makes_the_bytes_only_once_there_is_room() -> None:
    # A record that is right only while its request is active is made when
    # it can go out, not when its sender began to wait: the request may have
    # ended meanwhile (and its id gone to a new one).
    transport = FakeTransport(per_send=0)  # everything queues behind the writer task
    sender = Sender(transport, fail=lambda exc: None)
    request_active = True
    made_while: list[bool] = []

    def record(data: bytes) -> Callable[[], bytes | None]:
        def make() -> bytes | None:
            made_while.append(request_active)
            return data if request_active else None

        return make

    async with trio.open_nursery() as nursery:
        sender.nursery = nursery
        await sender.send_all(b"q" * QUEUE_LIMIT)  # the queue is full now
        nursery.start_soon(sender.send_made, record(b"stale"))
        await trio.testing.wait_all_tasks_blocked()
        assert made_while == []  # still waiting for room: nothing made yet
        request_active = False  # the request ends while its record waits
        transport.allow.set()
        await trio.testing.wait_all_tasks_blocked()
        assert made_while == [False]
        request_active = True
        await sender.send_made(record(b"fresh"))
    assert bytes(transport.wire) == b"q" * QUEUE_LIMIT + b"fresh"
