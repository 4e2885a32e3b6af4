"""Serve an ASGI application from your own Trio program, with its lifespan.

``python examples/embed_asgi.py`` serves examples/starlette_app.py on
127.0.0.1:9000, as ``trio-fastcgi examples.starlette_app:app`` would, but the
Trio program is yours: you can run other tasks beside the server.
"""

from __future__ import annotations

import functools

import trio

import trio_fastcgi
from examples.starlette_app import app
from trio_fastcgi.asgi import ASGIHandler


async def main(
    port: int = 9000,
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    handler = ASGIHandler(app)
    async with handler.lifespan():  # the app's startup before, its shutdown after
        await trio_fastcgi.serve_tcp(handler, port, host="127.0.0.1", task_status=task_status)


if __name__ == "__main__":
    trio.run(functools.partial(main, 9000))
