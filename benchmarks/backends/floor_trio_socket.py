"""Floor (a): trio, one task per connection, the socket driven directly.

The task reads, parses and sends the answers itself (trio.socket, no Stream,
no nursery per connection, no task per request). See floor_common.py.
"""

from __future__ import annotations

import trio
from common import parse_args
from floor_common import Parser, abort_answer, answer, serve_trio


async def send_all(sock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        sent = await sock.send(view)
        view = view[sent:]


async def connection(sock: trio.socket.SocketType) -> None:
    parser = Parser()
    with sock:
        while True:
            try:
                data = await sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            done, aborted = parser.feed(data)
            out = b"".join([answer(r) for r in done] + [abort_answer(i) for i in aborted])
            if out:
                try:
                    await send_all(sock, out)
                except OSError:
                    return
            if any(not r.keep for r in done):
                return


if __name__ == "__main__":
    trio.run(serve_trio, connection, parse_args(__doc__ or ""))
