"""flup's threaded FastCGI WSGI server, with TCP_NODELAY on accepted sockets.

Stock flup leaves Nagle on: each response goes out as several small writes and,
on a kept-alive connection, the last one waits for nginx's delayed ACK (about
40 ms per request, PROTOCOL.md item 31). Setting TCP_NODELAY is the only change.
"""

from __future__ import annotations

import socket
from typing import Any

from common import parse_args, wsgi_app
from flup.server.fcgi import WSGIServer  # type: ignore[import-untyped]
from flup.server.fcgi_base import Connection  # type: ignore[import-untyped]


class NoDelayConnection(Connection):  # type: ignore[misc]
    def __init__(self, sock: socket.socket, *args: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().__init__(sock, *args)


if __name__ == "__main__":
    args = parse_args(__doc__ or "")
    server = WSGIServer(wsgi_app, bindAddress=(args.host, args.port))
    # flup picks its connection class in __init__; swap in ours before run().
    server._jobClass = NoDelayConnection
    server.run()
