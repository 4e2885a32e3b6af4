"""ByteBuffer (trio_fastcgi._buffer): bytes in and out against a model, room and
backpressure, the two ways a producer ends (EOF, breaking off) and the two ways
a consumer stops (discard, close)."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from trio_fastcgi._buffer import ByteBuffer

chunks = st.lists(st.binary(min_size=0, max_size=300), max_size=30)
read_sizes = st.lists(st.none() | st.integers(1, 400), min_size=1, max_size=20)

# The tests that wait for a wake-up run on autojump_clock inside fail_after:
# a missed wake-up fails them at once (in virtual time) instead of hanging.
WAKE_UP_DEADLINE = 60


@given(
    max_size=st.integers(1, 64),
    operations=st.lists(
        st.tuples(st.just("append"), st.binary(max_size=40))
        | st.tuples(st.sampled_from(["take", "take coalesced"]), st.none() | st.integers(1, 50)),
        max_size=60,
    ),
)
def test_byte_buffer_append_and_take_match_a_model(
    max_size: int, operations: list[tuple[str, bytes | int | None]]
) -> None:
    buffer = ByteBuffer(max_size)
    model: list[bytes] = []  # the chunks not taken yet, in order
    for operation, argument in operations:
        size = sum(map(len, model))
        if operation == "append":
            assert isinstance(argument, bytes)
            assert buffer.room_for(len(argument)) == (size == 0 or size + len(argument) <= max_size)
            buffer.append(argument)
            if argument:
                model.append(argument)
        else:
            assert argument is None or isinstance(argument, int)
            expected = b""
            if model:
                first = model.pop(0)
                if argument is not None and len(first) > argument:
                    model.insert(0, first[argument:])
                    expected = first[:argument]
                else:
                    expected = first
                    # Coalesced: the whole chunks after it, while they fit.
                    while (
                        operation == "take coalesced"
                        and model
                        and (argument is None or len(expected) + len(model[0]) <= argument)
                    ):
                        expected += model.pop(0)
            assert buffer.take(argument, coalesce=operation == "take coalesced") == expected
        assert buffer.size == sum(map(len, model))
        assert buffer.room_for() == (buffer.size <= max_size)
    assert not buffer.ended


@given(max_size=st.integers(1, 500), pieces=chunks, reads=read_sizes)
def test_byte_buffer_delivers_every_byte_in_order_under_backpressure(
    max_size: int, pieces: list[bytes], reads: list[int | None]
) -> None:
    buffer = ByteBuffer(max_size)
    received: list[bytes] = []
    largest = max((len(piece) for piece in pieces), default=0)

    async def produce() -> None:
        for piece in pieces:
            buffer.append(piece)
            await buffer.wait_room_for()
            # Back within the bound before the producer goes on.
            assert buffer.size <= max_size
        buffer.put_eof()

    async def run() -> None:
        with trio.fail_after(WAKE_UP_DEADLINE):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(produce)
                turn = 0
                while True:
                    await buffer.wait_readable()
                    # Never more than the bound plus the one chunk that crossed it.
                    assert buffer.size <= max_size + largest
                    max_bytes = reads[turn % len(reads)]
                    turn += 1
                    data = buffer.take(max_bytes)
                    if not data:
                        break
                    assert max_bytes is None or len(data) <= max_bytes
                    received.append(data)

    # A fresh run per example, on a clock that jumps when every task waits.
    trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0))
    assert buffer.at_eof
    assert b"".join(received) == b"".join(pieces)


async def test_byte_buffer_producer_waits_while_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    buffer = ByteBuffer(10)
    progress: list[str] = []

    async def produce() -> None:
        buffer.append(b"x" * 8)
        await buffer.wait_room_for()
        progress.append("first")
        buffer.append(b"y" * 8)
        await buffer.wait_room_for()
        progress.append("second")

    with trio.fail_after(WAKE_UP_DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce)
            await trio.testing.wait_all_tasks_blocked()
            # 8 bytes fit; 16 do not, so the producer waits after the second append.
            assert progress == ["first"]
            assert buffer.size == 16
            assert not buffer.room_for()
            assert buffer.take(3) == b"xxx"
            await trio.testing.wait_all_tasks_blocked()
            assert progress == ["first"]  # 13 bytes: still over
            assert buffer.take() == b"xxxxx"
            await trio.testing.wait_all_tasks_blocked()
            assert progress == ["first", "second"]
    assert buffer.take() == b"y" * 8


async def test_byte_buffer_producer_may_wait_for_room_before_adding(
    autojump_clock: trio.testing.MockClock,
) -> None:
    buffer = ByteBuffer(10)
    buffer.append(b"x" * 6)
    added = trio.Event()

    async def produce() -> None:
        await buffer.wait_room_for(5)
        buffer.append(b"y" * 5)
        added.set()

    with trio.fail_after(WAKE_UP_DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce)
            await trio.testing.wait_all_tasks_blocked()
            assert not added.is_set()  # 6 + 5 > 10: nothing added yet
            assert buffer.size == 6
            assert buffer.take(1) == b"x"
    assert added.is_set()
    assert buffer.size == 10


async def test_byte_buffer_waits_are_not_checkpoints_when_ready() -> None:
    buffer = ByteBuffer(4)
    with trio.testing.assert_no_checkpoints():
        await buffer.wait_room_for(4)
        buffer.append(b"abc")
        await buffer.wait_room_for()
        await buffer.wait_readable()


def test_byte_buffer_room_at_the_exact_bound() -> None:
    buffer = ByteBuffer(10)
    buffer.append(b"x" * 6)
    assert buffer.room_for(4)
    assert not buffer.room_for(5)
    buffer.append(b"y" * 4)
    assert buffer.room_for()  # exactly full is within the bound
    buffer.append(b"z")
    assert not buffer.room_for()


def test_byte_buffer_empty_buffer_takes_a_chunk_larger_than_max_size() -> None:
    buffer = ByteBuffer(4)
    assert buffer.room_for(100)
    buffer.append(b"0123456789")
    assert not buffer.room_for(1)
    assert buffer.take() == b"0123456789"


def test_byte_buffer_max_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_size"):
        ByteBuffer(0)


async def test_byte_buffer_eof_wakes_the_reader_after_the_bytes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    buffer = ByteBuffer(100)
    buffer.append(b"last")
    taken: list[bytes] = []

    async def consume() -> None:
        while True:
            await buffer.wait_readable()
            data = buffer.take()
            taken.append(data)
            if not data:
                return

    with trio.fail_after(WAKE_UP_DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            await trio.testing.wait_all_tasks_blocked()
            assert taken == [b"last"]  # and waiting for more
            buffer.put_eof()
    assert taken == [b"last", b""]
    assert buffer.at_eof
    assert buffer.ended
    with pytest.raises(RuntimeError):
        buffer.append(b"more")


async def test_byte_buffer_break_off_keeps_buffered_bytes_and_drops_later_ones(
    autojump_clock: trio.testing.MockClock,
) -> None:
    buffer = ByteBuffer(4)
    buffer.append(b"early bytes")
    released = trio.Event()

    async def produce() -> None:
        await buffer.wait_room_for()
        released.set()

    with trio.fail_after(WAKE_UP_DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce)
            await trio.testing.wait_all_tasks_blocked()
            assert not released.is_set()
            buffer.break_off()
    assert released.is_set()
    buffer.append(b"late")
    assert buffer.ended
    assert not buffer.at_eof
    with trio.testing.assert_no_checkpoints():
        await buffer.wait_readable()
    assert buffer.take() == b"early bytes"
    assert buffer.take() == b""
    buffer.put_eof()  # too late: the stream was broken off
    assert not buffer.at_eof


async def test_byte_buffer_break_off_wakes_a_waiting_reader(
    autojump_clock: trio.testing.MockClock,
) -> None:
    buffer = ByteBuffer(4)
    with trio.fail_after(WAKE_UP_DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(buffer.wait_readable)
            await trio.testing.wait_all_tasks_blocked()
            buffer.break_off()
    assert buffer.take() == b""


def test_byte_buffer_break_off_after_eof_keeps_the_eof() -> None:
    buffer = ByteBuffer(4)
    buffer.put_eof()
    buffer.break_off()
    assert buffer.at_eof


async def test_byte_buffer_discard_releases_the_producer_but_not_the_reader(
    autojump_clock: trio.testing.MockClock,
) -> None:
    buffer = ByteBuffer(4)
    buffer.append(b"0123456789")
    released = trio.Event()
    read = trio.Event()

    async def produce() -> None:
        await buffer.wait_room_for()
        released.set()

    async def consume() -> None:
        await buffer.wait_readable()
        read.set()

    with trio.fail_after(WAKE_UP_DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce)
            await trio.testing.wait_all_tasks_blocked()
            buffer.discard()
            await trio.testing.wait_all_tasks_blocked()
            assert released.is_set()
            assert buffer.size == 0
            buffer.append(b"dropped")
            assert buffer.size == 0
            assert buffer.discarding
            assert not buffer.closed
            # A reader of a discarding buffer waits for the end of the stream.
            nursery.start_soon(consume)
            await trio.testing.wait_all_tasks_blocked()
            assert not read.is_set()
            buffer.put_eof()
    assert read.is_set()


async def test_byte_buffer_close_wakes_the_reader(
    autojump_clock: trio.testing.MockClock,
) -> None:
    buffer = ByteBuffer(4)
    with trio.fail_after(WAKE_UP_DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(buffer.wait_readable)
            await trio.testing.wait_all_tasks_blocked()
            buffer.close()
    assert buffer.closed
    assert buffer.discarding
    assert not buffer.ended
    buffer.append(b"dropped")
    assert buffer.take() == b""


async def test_wait_full_or_ended_sleeps_through_chunks_below_the_bound() -> None:
    buffer = ByteBuffer(10)
    woke = trio.Event()

    async def consumer() -> None:
        await buffer.wait_full_or_ended()
        woke.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consumer)
        await trio.testing.wait_all_tasks_blocked()
        buffer.append(b"abc")
        buffer.append(b"def")
        await trio.testing.wait_all_tasks_blocked()
        assert not woke.is_set()  # chunks alone do not wake it
        buffer.put_eof()
    assert woke.is_set()
    assert buffer.take(coalesce=True) == b"abcdef"


async def test_wait_full_or_ended_wakes_when_the_producer_must_wait() -> None:
    buffer = ByteBuffer(10)
    taken: list[bytes] = []

    async def producer() -> None:
        for chunk in (b"12345", b"67890", b"abcde", b""):
            if chunk:
                await buffer.wait_room_for(len(chunk))
                buffer.append(chunk)
            else:
                buffer.put_eof()

    async def consumer() -> None:
        while True:
            await buffer.wait_full_or_ended()
            data = buffer.take(coalesce=True)
            if not data and buffer.at_eof:
                return
            taken.append(data)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consumer)
            nursery.start_soon(producer)
    # One take per buffer-full, and every byte, in order.
    assert taken == [b"1234567890", b"abcde"]


async def test_an_emptied_buffer_is_not_full_while_the_producer_is_still_parked() -> None:
    """Taking everything while the producer waits for room must not make an
    empty, unended buffer look finished (a bulk reader would see b"" as EOF)."""
    buffer = ByteBuffer(4)
    buffer.append(b"abcd")

    async def producer() -> None:
        await buffer.wait_room_for(4)
        buffer.append(b"efgh")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(producer)
        await trio.testing.wait_all_tasks_blocked()
        assert buffer.full_or_ended
        assert buffer.take() == b"abcd"
        assert not buffer.full_or_ended  # the producer has not run yet
    assert buffer.take() == b"efgh"
