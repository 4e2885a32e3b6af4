"""Floor (d): the design card's shape with a lazy writer.

As floor_trio_shape.py (nursery per connection, reader task, a task and a
cancel scope per request), but a request task sends its own records when
nothing is queued: one non-blocking ``send`` right after encoding, with no
checkpoint in between. Only when the kernel would block, or output is already
queued, is the rest queued and a writer task started, which drains the queue
in order and ends. One sender at a time, records in order, none interleaved.
See floor_common.py.
"""

from __future__ import annotations

import socket
from collections import deque

import trio
from common import parse_args
from floor_common import Done, Parser, abort_answer, answer, serve_trio


class Connection:
    """The socket's output side: direct sends, or a queue and a writer task."""

    def __init__(self, raw: socket.socket, nursery: trio.Nursery) -> None:
        self.raw = raw
        self.nursery = nursery
        self.queue: deque[memoryview] = deque()
        self.writing = False

    def send(self, data: bytes) -> None:
        """Send *data* now if the socket takes it, else queue it (never blocks)."""
        view = memoryview(data)
        if not self.writing:
            try:
                sent = self.raw.send(view)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.nursery.cancel_scope.cancel()
                return
            if sent == len(view):
                return
            view = view[sent:]
            self.writing = True
            self.nursery.start_soon(self.writer)
        self.queue.append(view)

    async def writer(self) -> None:
        queue = self.queue
        while queue:
            view = queue[0]
            try:
                sent = self.raw.send(view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.raw)
                continue
            except OSError:
                self.nursery.cancel_scope.cancel()
                return
            if sent == len(view):
                queue.popleft()
            else:
                queue[0] = view[sent:]
        self.writing = False


async def request_task(
    request: Done,
    scope: trio.CancelScope,
    scopes: dict[int, trio.CancelScope],
    conn: Connection,
) -> None:
    with scope:
        conn.send(answer(request))
    del scopes[request.request_id]
    if scope.cancelled_caught:
        conn.send(abort_answer(request.request_id))


async def reader(sock: trio.socket.SocketType, conn: Connection) -> None:
    parser = Parser()
    scopes: dict[int, trio.CancelScope] = {}
    nursery = conn.nursery
    while True:
        try:
            data = await sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            nursery.cancel_scope.cancel()
            return
        done, aborted = parser.feed(data)
        for request in done:
            scope = trio.CancelScope()
            scopes[request.request_id] = scope
            nursery.start_soon(request_task, request, scope, scopes, conn)
            if not request.keep:
                # Without FCGI_KEEP_CONN this is the connection's last request:
                # nothing more to read, and the connection ends with the tasks.
                return
        for request_id in aborted:
            if request_id in scopes:
                scopes[request_id].cancel()
            else:
                conn.send(abort_answer(request_id))


async def connection(accepted: trio.socket.SocketType) -> None:
    # One stdlib socket object under the trio one: recv goes through trio,
    # the lazy writer's non-blocking send straight to the stdlib socket.
    raw = socket.socket(fileno=accepted.detach())
    sock = trio.socket.from_stdlib_socket(raw)
    with sock:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader, sock, Connection(raw, nursery))


if __name__ == "__main__":
    trio.run(serve_trio, connection, parse_args(__doc__ or ""))
