"""Timeouts of waiting receives, kept by one task for many connections.

A served connection's reader waits for input until its lifecycle's deadline.
Giving each of those waits a trio deadline of its own costs more than the rest
of a keep-alive request's wait (registering and moving the deadline on every
request), and the deadline is almost never reached: the next request comes
first; and even a cancel scope without a deadline, made for each wait, costs
a tenth of the request. So the reader reads inside one cancel scope that lasts
from one timeout to the next, and each wait is bounded by an :class:`Alarm`:
the :class:`AlarmClock` keeps the alarms' times in a heap and, from one task,
cancels the reader's scope when the deadline of a wait has come.

An alarm's time may be earlier than the connection's deadline, never later:
a deadline that moved later (the usual case, each request pushes the idle time
on) costs nothing until the alarm rings, and then it is set again for the new
deadline. A cancellation can only strike the waiting receive itself, never the
code that dispatches what it received: the alarm rings only while the receive
waits, and a reader that finds its scope cancelled when a receive returns (the
alarm rang just as input came) leaves the scope before it dispatches the
input, and reads on in a new one.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
from collections.abc import Callable
from typing import Final, final

import trio

_INF: Final = math.inf


@final
class AlarmClock:
    """The alarms of many connections, rung from one task.

    A server runs :meth:`run` for as long as it serves. Without it (a
    connection served alone), or once it has stopped while connections go on
    (in the caller's ``handler_nursery``), a task started in :attr:`nursery`
    rings the alarms while one is set, and ends when none is.
    """

    __slots__ = ("_heap", "_live", "_order", "_resident", "_running", "_scope", "nursery")

    def __init__(self, nursery: trio.Nursery | None = None) -> None:
        # (time, tie-breaker, alarm); an entry whose time is no longer its
        # alarm's (set again earlier, rung, or stopped) is stale and skipped.
        self._heap: list[tuple[float, int, Alarm]] = []
        self._order = itertools.count()
        #: Alarms with a time set.
        self._live = 0
        self._resident = False
        self._running = False
        self._scope: trio.CancelScope | None = None
        #: Where a task is started to ring alarms when :meth:`run` is not
        #: running (set before the first alarm is).
        self.nursery = nursery

    def alarm(self, deadline: Callable[[], float]) -> Alarm:
        """A new alarm for a connection whose deadline *deadline()* returns."""
        return Alarm(self, deadline)

    async def run(self) -> None:
        """Ring alarms until cancelled; then hand the alarms still set to a
        task in :attr:`nursery`."""
        self._resident = self._running = True
        try:
            await self._ring_alarms()
        finally:
            self._resident = self._running = False
            self._scope = None
            if self._live:
                # A closed nursery has no connections left to ring for.
                with contextlib.suppress(RuntimeError):
                    self._start()

    def _set(self, alarm: Alarm, when: float) -> None:
        if alarm._time == _INF:
            self._live += 1
        alarm._time = when
        heap = self._heap
        if len(heap) > 4 * self._live + 64:
            heap[:] = [entry for entry in heap if entry[2]._time == entry[0]]
            heapq.heapify(heap)
        heapq.heappush(heap, (when, next(self._order), alarm))
        if not self._running:
            self._start()
        elif self._scope is not None and when < self._scope.deadline:
            self._scope.deadline = when

    def _unset(self, alarm: Alarm) -> None:
        if alarm._time != _INF:
            alarm._time = _INF
            self._live -= 1
            if not self._live and not self._resident and self._scope is not None:
                self._scope.cancel()  # nothing left to ring: the task ends

    def _start(self) -> None:
        assert self.nursery is not None
        self.nursery.start_soon(self._on_demand, name="trio_fastcgi.alarm_clock")
        self._running = True

    async def _on_demand(self) -> None:
        try:
            await self._ring_alarms()
        finally:
            self._running = False
            self._scope = None

    async def _ring_alarms(self) -> None:
        heap = self._heap
        while self._resident or self._live:
            while heap and heap[0][2]._time != heap[0][0]:
                heapq.heappop(heap)  # stale: sleep until a live one
            with trio.CancelScope(deadline=heap[0][0] if heap else _INF) as self._scope:
                await trio.sleep_forever()
            self._scope = None
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                when, _, alarm = heapq.heappop(heap)
                if alarm._time == when:
                    alarm._time = _INF
                    self._live -= 1
                    alarm._ring(now)
        heap.clear()  # only stale entries are left


@final
class Alarm:
    """Bounds one reader's waits for input by its connection's deadline.

    The reader gives :meth:`read_in` the cancel scope it reads in; the
    receive calls :meth:`watch` when it must wait and :meth:`unwatch` when the
    wait ends; whoever makes the deadline earlier while it waits calls
    :meth:`update`. When the deadline comes during a wait, :attr:`scope` is
    cancelled and :attr:`rang` is set.
    """

    __slots__ = ("_clock", "_deadline", "_time", "_waiting", "rang", "scope")

    def __init__(self, clock: AlarmClock, deadline: Callable[[], float]) -> None:
        self._clock = clock
        self._deadline = deadline
        #: When the clock rings this alarm next (inf: not set).
        self._time = _INF
        self._waiting = False
        #: What the alarm cancels: the scope the reader reads in.
        self.scope: trio.CancelScope | None = None
        #: Whether the alarm has cancelled :attr:`scope`: the reader's test
        #: after each receive (``scope.cancel_called`` reads trio's clock).
        self.rang = False

    def read_in(self, scope: trio.CancelScope) -> None:
        """The reader reads in *scope* from now on (the alarm has not rung for it)."""
        self.scope = scope
        self.rang = False

    def watch(self) -> None:
        """A receive begins to wait: cancel :attr:`scope` when the deadline comes."""
        assert self.scope is not None
        self._waiting = True
        deadline = self._deadline()
        if deadline < self._time:
            self._clock._set(self, deadline)

    def unwatch(self) -> None:
        """The wait has ended (not a checkpoint: the alarm cannot ring now)."""
        self._waiting = False

    def update(self) -> None:
        """The deadline may be earlier now: ring by then if a receive waits."""
        if self._waiting:
            deadline = self._deadline()
            if deadline < self._time:
                self._clock._set(self, deadline)

    def stop(self) -> None:
        """The reader has stopped: forget the time and the scope."""
        self._waiting = False
        self.scope = None
        self._clock._unset(self)

    def _ring(self, now: float) -> None:
        if not self._waiting:
            return  # the next wait sets the alarm again
        deadline = self._deadline()
        if deadline <= now:
            assert self.scope is not None
            self.rang = True
            self.scope.cancel()
        elif deadline != _INF:
            self._clock._set(self, deadline)
