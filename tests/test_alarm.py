"""The alarm clock that bounds the readers' waits (MockClock, no sockets)."""

from __future__ import annotations

import math
import random

import trio
import trio.testing

from trio_fastcgi._alarm import Alarm, AlarmClock


async def wait_for_alarm(alarm: Alarm) -> float | None:
    """Wait as a reader does, until the alarm cancels the wait: the time it
    rang, or None if the wait ended without it (cancelled from outside)."""
    with trio.CancelScope() as scope:
        alarm.read_in(scope)
        alarm.watch()
        try:
            await trio.sleep_forever()
        finally:
            alarm.unwatch()
    # What the reader tests instead of scope.cancel_called (no clock read).
    assert alarm.rang is scope.cancel_called
    return trio.current_time() if scope.cancelled_caught else None


async def test_an_alarm_rings_at_its_deadline(autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        alarm = AlarmClock(nursery).alarm(lambda: start + 7)
        assert await wait_for_alarm(alarm) == start + 7


async def test_a_deadline_that_moved_later_rings_then_not_before(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    deadline = start + 2
    rang: list[float | None] = []
    async with trio.open_nursery() as nursery:
        alarm = AlarmClock(nursery).alarm(lambda: deadline)

        async def reader() -> None:
            rang.append(await wait_for_alarm(alarm))

        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        deadline = start + 5  # later: no update needed, it is set again at +2
    assert rang == [start + 5]


async def test_an_alarm_rings_only_while_its_reader_waits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        alarm = AlarmClock(nursery).alarm(lambda: start + 1)
        with trio.CancelScope() as scope:
            alarm.read_in(scope)
            alarm.watch()
            alarm.unwatch()  # the wait ended before the deadline
            await trio.sleep(10)  # the reader's own work, past the deadline
        assert not scope.cancel_called
        assert not alarm.rang
        alarm.stop()


async def test_a_new_scope_starts_with_the_alarm_not_rung(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        alarm = AlarmClock(nursery).alarm(lambda: start + 1)
        assert await wait_for_alarm(alarm) == start + 1
        assert alarm.rang
        alarm.read_in(trio.CancelScope())  # the reader reads on in a new scope
        assert not alarm.rang
        alarm.stop()


async def test_update_makes_a_waiting_alarm_ring_earlier(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    deadline = math.inf
    rang: list[float | None] = []
    async with trio.open_nursery() as nursery:
        alarm = AlarmClock(nursery).alarm(lambda: deadline)

        async def reader() -> None:
            rang.append(await wait_for_alarm(alarm))

        nursery.start_soon(reader)
        await trio.sleep(100)  # no deadline: it waits as long as it takes
        deadline = trio.current_time() + 3
        alarm.update()
    assert rang == [start + 103]


async def test_the_task_ends_when_no_alarm_is_set(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        clock = AlarmClock(nursery)
        alarm = clock.alarm(lambda: start + 1000)
        with trio.CancelScope() as scope:
            alarm.read_in(scope)
            alarm.watch()
            await trio.testing.wait_all_tasks_blocked()
            assert len(nursery.child_tasks) == 1  # the clock's task
            alarm.stop()
            await trio.testing.wait_all_tasks_blocked()
        assert not nursery.child_tasks
    # The nursery closed at once: nothing waited for the deadline.
    assert trio.current_time() == start


async def test_a_resident_clock_hands_its_alarms_over_when_it_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    async with trio.open_nursery() as connections:
        clock = AlarmClock(connections)
        async with trio.open_nursery() as server:
            server.start_soon(clock.run)
            await trio.testing.wait_all_tasks_blocked()
            alarm = clock.alarm(lambda: start + 10)
            rang: list[float | None] = []

            async def reader() -> None:
                rang.append(await wait_for_alarm(alarm))

            connections.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            server.cancel_scope.cancel()  # the server stops; its reader goes on
    assert rang == [start + 10]


async def test_many_alarms_each_ring_at_their_own_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rng = random.Random(7)
    start = trio.current_time()
    deadlines = [start + rng.choice([0.5, 1, 2, 2, 3.25, 10]) for _ in range(60)]
    rang: dict[int, float | None] = {}
    began: dict[int, float] = {}
    async with trio.open_nursery() as nursery:
        clock = AlarmClock(nursery)
        nursery.start_soon(clock.run)

        async def reader(index: int) -> None:
            await trio.sleep(rng.random())  # readers start waiting at different times
            began[index] = trio.current_time()
            alarm = clock.alarm(lambda: deadlines[index])
            rang[index] = await wait_for_alarm(alarm)
            alarm.stop()

        async with trio.open_nursery() as readers:
            for index in range(len(deadlines)):
                readers.start_soon(reader, index)
        nursery.cancel_scope.cancel()
    # Each at its deadline; one that had passed when its reader began, at once.
    assert rang == {index: max(deadline, began[index]) for index, deadline in enumerate(deadlines)}
