"""The byte I/O under a served connection: a socket driven directly, or any stream."""

from __future__ import annotations

import math
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator

import pytest
import trio
import trio.testing

from trio_fastcgi._alarm import Alarm, AlarmClock
from trio_fastcgi._transport import (
    EAGER_CALLS_PER_YIELD,
    Acceptor,
    SocketTransport,
    StreamTransport,
    Transport,
    WriteTimeout,
    open_transport,
)


def socket_pair() -> tuple[SocketTransport, socket.socket]:
    ours, theirs = socket.socketpair()
    return SocketTransport(ours), theirs


async def read_into(peer: socket.socket, received: bytearray, size: int) -> None:
    """Read *size* bytes from *peer* into *received*, as trio would."""
    peer.setblocking(False)
    while len(received) < size:
        await trio.lowlevel.wait_readable(peer)
        received.extend(peer.recv(1 << 20))


async def test_a_receive_after_a_short_read_waits_instead_of_trying_recv() -> None:
    # A read that returned less than asked emptied the socket: the next
    # receive waits for readability (a schedule point) instead of trying a
    # recv(2) that would fail, and still returns what came meanwhile.
    transport, peer = socket_pair()
    with peer:
        peer.sendall(b"first")
        with trio.testing.assert_no_checkpoints():
            assert await transport.receive_some(100) == b"first"  # eager, no wait
        peer.sendall(b"second")
        with trio.testing.assert_checkpoints():
            assert await transport.receive_some(100) == b"second"
        peer.sendall(b"x" * 10)
        assert await transport.receive_some(4) == b"xxxx"  # a full read: more may wait
        with trio.testing.assert_no_checkpoints():
            assert await transport.receive_some(100) == b"x" * 6
        await transport.close()


async def test_transport_receives_and_sends_on_a_socket() -> None:
    transport, peer = socket_pair()
    with peer:
        peer.sendall(b"request")
        assert await transport.receive_some(100) == b"request"
        await transport.send_all(b"response")
        assert peer.recv(100) == b"response"
        peer.shutdown(socket.SHUT_WR)
        assert await transport.receive_some(100) == b""
        await transport.close()
        assert transport.socket is not None
        assert transport.socket.fileno() == -1


async def test_transport_waits_for_data_that_is_not_there_yet() -> None:
    transport, peer = socket_pair()
    with peer:
        async with trio.open_nursery() as nursery:

            async def send_later() -> None:
                await trio.testing.wait_all_tasks_blocked()
                peer.sendall(b"late")

            nursery.start_soon(send_later)
            assert await transport.receive_some(100) == b"late"
        await transport.close()


async def test_transport_send_all_waits_while_the_kernel_buffer_is_full() -> None:
    transport, peer = socket_pair()
    payload = os.urandom(8 * 1024 * 1024)  # far more than a socket buffer holds
    received = bytearray()
    with peer:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_into, peer, received, len(payload))
            await transport.send_all(payload)
        assert bytes(received) == payload
        await transport.close()


async def test_transport_yields_every_so_many_receives_that_did_not_wait() -> None:
    # A peer that keeps the socket full must not starve other tasks.
    transport, peer = socket_pair()
    with peer:
        peer.sendall(b"x" * (EAGER_CALLS_PER_YIELD * 2))
        with trio.testing.assert_no_checkpoints():
            for _ in range(EAGER_CALLS_PER_YIELD - 1):
                await transport.receive_some(1)
        with trio.testing.assert_checkpoints():
            await transport.receive_some(1)
        await transport.close()


async def test_transport_reset_is_broken_resource() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listening:
        client = socket.create_connection(listening.getsockname())
        ours, _ = listening.accept()
    transport = SocketTransport(ours)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # RST
    with pytest.raises(trio.BrokenResourceError):
        await transport.receive_some(100)
    await transport.close()


async def test_transport_takes_the_socket_of_a_plain_socket_stream() -> None:
    a, b = trio.socket.socketpair()
    stream = trio.SocketStream(a)
    transport = open_transport(stream)
    assert stream.socket.fileno() == -1  # detached: the transport owns it now
    assert transport.socket is not None
    with b:
        await b.send(b"ping")
        assert await transport.receive_some(10) == b"ping"
        await transport.close()


async def test_transport_drives_any_other_stream_through_its_methods() -> None:
    client, server = trio.testing.memory_stream_pair()
    transport = open_transport(server)
    assert transport.socket is None
    await client.send_all(b"ping")
    assert await transport.receive_some(10) == b"ping"
    await transport.send_all(b"pong")
    assert await client.receive_some(10) == b"pong"
    assert await transport.send_eof()
    assert await client.receive_some(10) == b""
    await transport.close()


async def test_acceptor_accepts_and_leaves_the_listener_open() -> None:
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    acceptor = Acceptor(listener)
    with socket.create_connection(("127.0.0.1", port)) as client:
        transport = await acceptor.accept()
        assert transport.peer == client.getsockname()
        sock = transport.socket
        assert sock is not None
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        client.sendall(b"hi")
        assert await transport.receive_some(10) == b"hi"
        await transport.close()
    acceptor.close()
    # The listener itself still accepts.
    with socket.create_connection(("127.0.0.1", port)):
        stream = await listener.accept()
        await stream.aclose()
    await listener.aclose()


async def test_transport_send_parts_writes_every_piece_in_order() -> None:
    # More pieces than one sendmsg takes, more bytes than a socket buffer
    # holds: partial writes that end inside a piece and between pieces.
    transport, peer = socket_pair()
    pieces: list[bytes | memoryview] = [os.urandom(size) for size in range(1, 3000, 3)]
    pieces[500] = memoryview(os.urandom(4 * 1024 * 1024))[7:]
    expected = b"".join(pieces)
    received = bytearray()
    with peer:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_into, peer, received, len(expected))
            parts: list[bytes | memoryview] = list(pieces)
            await transport.send_parts(parts)
            assert parts == []  # consumed
        assert bytes(received) == expected
        await transport.close()


async def test_transport_send_parts_joins_them_for_any_other_stream() -> None:
    client, server = trio.testing.memory_stream_pair()
    transport = open_transport(server)
    parts: list[bytes | memoryview] = [b"a", memoryview(b"bcd")[1:], b"e"]
    await transport.send_parts(parts)
    assert parts == []
    assert await client.receive_some(10) == b"acde"
    await transport.close()


async def test_transport_send_gives_up_when_the_peer_stops_reading(
    autojump_clock: trio.testing.MockClock,
) -> None:
    transport, peer = socket_pair()
    transport.write_timeout = 30
    with peer:
        started = trio.current_time()
        with pytest.raises(WriteTimeout):
            await transport.send_all(bytes(16 * 1024 * 1024))  # nobody reads it
        assert trio.current_time() - started == pytest.approx(30)
        with pytest.raises(WriteTimeout):
            await transport.send_parts([bytes(16 * 1024 * 1024)])
        await transport.close()


async def test_transport_write_timeout_bounds_a_generic_stream_too(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, server = trio.testing.lockstep_stream_pair()  # a send waits for a reader
    transport = open_transport(server)
    transport.write_timeout = 30
    with pytest.raises(WriteTimeout):
        await transport.send_all(b"nobody reads this")
    await transport.close()
    await client.aclose()


@pytest.fixture
def peers() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def transport_pair(
    kind: str, peers: list[socket.socket]
) -> tuple[Transport, Callable[[bytes], Awaitable[None]]]:
    """A transport of *kind*, and how the peer sends to it."""
    if kind == "socket":
        ours, theirs = socket.socketpair()
        peers.append(theirs)

        async def send_socket(data: bytes) -> None:
            theirs.sendall(data)
            await trio.lowlevel.checkpoint()

        return SocketTransport(ours), send_socket
    client, server = trio.testing.memory_stream_pair()
    return StreamTransport(server), client.send_all


async def receive_until(transport: Transport, alarm: Alarm) -> bytes | None:
    """Receive as the connection's reader does: in a scope that *alarm*
    cancels at its deadline. None if it rang first."""
    with trio.CancelScope() as scope:
        alarm.read_in(scope)
        data = await transport.receive_some(100, alarm)
        if not scope.cancel_called:
            alarm.stop()
            return data
    alarm.stop()
    return None


@pytest.mark.parametrize("kind", ["socket", "stream"])
async def test_receive_alarm_rings_with_nothing_received(
    kind: str, autojump_clock: trio.testing.MockClock, peers: list[socket.socket]
) -> None:
    transport, send = transport_pair(kind, peers)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        clock = AlarmClock(nursery)
        alarm = clock.alarm(lambda: start + 5)
        assert await receive_until(transport, alarm) is None
        assert trio.current_time() == start + 5
        await send(b"later")  # nothing was taken: the next receive gets it all
        assert await receive_until(transport, clock.alarm(lambda: start + 10)) == b"later"
    await transport.close()


@pytest.mark.parametrize("kind", ["socket", "stream"])
async def test_receive_with_a_passed_deadline_still_returns_what_is_there(
    kind: str, autojump_clock: trio.testing.MockClock, peers: list[socket.socket]
) -> None:
    # Data that is already waiting is returned even if the deadline passed
    # (a socket is read without waiting); if the alarm wins instead, the
    # data stays for the next receive. Either way nothing is lost.
    transport, send = transport_pair(kind, peers)
    await send(b"waiting")
    async with trio.open_nursery() as nursery:
        clock = AlarmClock(nursery)
        past = trio.current_time() - 1
        data = await receive_until(transport, clock.alarm(lambda: past))
        if data is None:
            assert kind == "stream"
            data = await transport.receive_some(100)
    assert data == b"waiting"
    await transport.close()


@pytest.mark.parametrize("kind", ["socket", "stream"])
async def test_alarm_update_moves_the_waiting_receive(
    kind: str, autojump_clock: trio.testing.MockClock, peers: list[socket.socket]
) -> None:
    transport, send = transport_pair(kind, peers)
    results: list[tuple[bytes | None, float]] = []
    start = trio.current_time()
    deadline = start + 100
    async with trio.open_nursery() as nursery:
        alarm = AlarmClock(nursery).alarm(lambda: deadline)

        async def receive() -> None:
            results.append((await receive_until(transport, alarm), trio.current_time()))

        alarm.update()  # no receive waiting: nothing happens
        nursery.start_soon(receive)
        await trio.testing.wait_all_tasks_blocked()
        deadline = start + 3  # earlier: it rings then, not at start + 100
        alarm.update()
    assert results == [(None, start + 3)]
    async with trio.open_nursery() as nursery:
        deadline = math.inf
        nursery.start_soon(receive)
        await trio.sleep(1000)
        await send(b"in time")
    assert [data for data, _ in results] == [None, b"in time"]
    await transport.close()
