"""Serving a handler in a test: the web server's end of one connection.

Apart from tests/helpers.py, which must not import the library (its encoder is
written independently of ``trio_fastcgi._wire``).
"""

from __future__ import annotations

from functools import partial

import trio
import trio.testing

from tests.helpers import FakeWebServer
from trio_fastcgi import Handler, serve_connection


async def serve(nursery: trio.Nursery, handler: Handler, **options: object) -> FakeWebServer:
    """Serve one connection with *handler* (and the ``serve_connection``
    *options*) in *nursery*, over a memory stream: the web server's end."""
    client, server = trio.testing.memory_stream_pair()
    nursery.start_soon(partial(serve_connection, handler, server, **options))  # type: ignore[arg-type]
    return FakeWebServer(client)
