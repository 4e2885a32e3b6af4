"""Idle connections without tasks: one watcher for all of them.

A served connection costs two tasks (reader and writer), a nursery and a few
cancel scopes: some kilobytes that an idle keep-alive connection does nothing
with. Once a connection has been idle for a while (the ``hibernate_after``
option) its tasks end and it is handed to the server's :class:`Hibernation`, which watches
every such socket with one selector from one task. When a socket becomes
readable (a new request, or the web server closing) or the connection's next
timeout comes (idle_timeout), the connection is run again exactly where it
left off.
"""

from __future__ import annotations

import heapq
import itertools
import math
import selectors
from collections.abc import Callable
from typing import TYPE_CHECKING, final

import trio

if TYPE_CHECKING:
    from ._served_connection import ServedConnection


def hibernation_supported() -> bool:
    """Whether this platform's selector can be waited on by trio (Linux's epoll
    and the BSDs' kqueue can)."""
    selector = selectors.DefaultSelector()
    try:
        return hasattr(selector, "fileno")
    finally:
        selector.close()


@final
class Hibernation:
    """The hibernating connections of one server.

    *wake* is called with a connection that must run again; *stopped* with each
    connection still hibernating when the watcher stops (cancelled with its
    server).
    """

    def __init__(
        self,
        wake: Callable[[ServedConnection], None],
        stopped: Callable[[ServedConnection], None],
    ) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake = wake
        self._stopped_with = stopped
        self._sleeping: dict[ServedConnection, float] = {}
        # (deadline, tie-breaker, connection); entries of connections that woke
        # early stay until they come up or the heap is rebuilt.
        self._deadlines: list[tuple[float, int, ServedConnection]] = []
        self._order = itertools.count()
        self._scope: trio.CancelScope | None = None
        self._stopped = False

    def add(self, connection: ServedConnection) -> bool:
        """Watch a connection whose tasks just ended; False (and nothing
        done) if the watcher has stopped."""
        if self._stopped:
            return False
        sock = connection.socket
        assert sock is not None
        deadline = connection.wake_deadline()
        self._selector.register(sock, selectors.EVENT_READ, connection)
        self._sleeping[connection] = deadline
        if len(self._deadlines) > 2 * len(self._sleeping) + 64:
            self._deadlines = [
                (when, next(self._order), conn) for conn, when in self._sleeping.items()
            ]
            heapq.heapify(self._deadlines)
        else:
            heapq.heappush(self._deadlines, (deadline, next(self._order), connection))
        if self._scope is not None and deadline < self._scope.deadline:
            self._scope.deadline = deadline
        return True

    def wake(self, connection: ServedConnection) -> None:
        """Run a hibernating connection again now (no-op if it is awake)."""
        if self._sleeping.pop(connection, None) is None:
            return
        self._selector.unregister(connection.socket)  # type: ignore[arg-type]
        self._wake(connection)

    def wake_all(self) -> None:
        """Run every hibernating connection again (graceful shutdown)."""
        for connection in list(self._sleeping):
            self.wake(connection)

    async def watch(self) -> None:
        """Wake connections as their sockets or deadlines require; on exit
        (cancellation) hand each one still hibernating to *stopped*."""
        try:
            while True:
                deadline = self._deadlines[0][0] if self._deadlines else math.inf
                with trio.CancelScope(deadline=deadline) as scope:
                    self._scope = scope
                    await trio.lowlevel.wait_readable(self._selector)
                self._scope = None
                for key, _ in self._selector.select(0):
                    self.wake(key.data)
                now = trio.current_time()
                while self._deadlines and self._deadlines[0][0] <= now:
                    when, _, connection = heapq.heappop(self._deadlines)
                    if self._sleeping.get(connection) == when:
                        self.wake(connection)
        finally:
            self._stopped = True
            for connection in list(self._sleeping):
                del self._sleeping[connection]
                self._selector.unregister(connection.socket)  # type: ignore[arg-type]
                self._stopped_with(connection)
            self._deadlines.clear()
            trio.lowlevel.notify_closing(self._selector)
            self._selector.close()
