"""Floor (c): trio in the design card's shape.

Per connection a nursery with a reader task (sole caller of ``recv``) and a
writer task (sole caller of ``send``) fed by a memory channel of whole answers;
per request a task and a cancel scope (kept by id, cancelled by ABORT_REQUEST).
The request task is started once the request's STDIN has ended. See
floor_common.py.
"""

from __future__ import annotations

import trio
from common import parse_args
from floor_common import Done, Parser, abort_answer, answer, serve_trio

#: ``None`` on the channel: close the connection once everything before it is sent.
Outgoing = bytes | None


async def send_all(sock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        sent = await sock.send(view)
        view = view[sent:]


async def writer(
    sock: trio.socket.SocketType,
    queue: trio.MemoryReceiveChannel[Outgoing],
    connection: trio.CancelScope,
) -> None:
    async for data in queue:
        if data is None:
            return
        try:
            await send_all(sock, data)
        except OSError:
            break
    connection.cancel()


async def request_task(
    request: Done,
    scope: trio.CancelScope,
    scopes: dict[int, trio.CancelScope],
    out: trio.MemorySendChannel[Outgoing],
) -> None:
    with scope:
        await out.send(answer(request))
    del scopes[request.request_id]
    if scope.cancelled_caught:
        await out.send(abort_answer(request.request_id))
    if not request.keep:
        await out.send(None)


async def reader(
    sock: trio.socket.SocketType,
    out: trio.MemorySendChannel[Outgoing],
    nursery: trio.Nursery,
) -> None:
    parser = Parser()
    scopes: dict[int, trio.CancelScope] = {}
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
            nursery.start_soon(request_task, request, scope, scopes, out)
            if not request.keep:
                # Without FCGI_KEEP_CONN this is the connection's last request:
                # nothing more to read, and the connection ends with the tasks.
                return
        for request_id in aborted:
            if request_id in scopes:
                scopes[request_id].cancel()
            else:
                await out.send(abort_answer(request_id))


async def connection(sock: trio.socket.SocketType) -> None:
    out, queue = trio.open_memory_channel[Outgoing](64)
    with sock:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer, sock, queue, nursery.cancel_scope)
            nursery.start_soon(reader, sock, out, nursery)


if __name__ == "__main__":
    trio.run(serve_trio, connection, parse_args(__doc__ or ""))
