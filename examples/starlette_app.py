"""A Starlette (ASGI) application served over FastCGI by the ``trio-fastcgi``
command. Starlette runs on anyio, so it runs on Trio as it is.

Behind a web server (see docs/deploy/ for nginx)::

    trio-fastcgi examples.starlette_app:app --bind 127.0.0.1:9000 --workers 2

Or in a browser with no web server (development only)::

    trio-fastcgi dev examples.starlette_app:app
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, object]]:
    # Runs once per worker process, before it serves (ASGI lifespan).
    yield {"started": True}


async def index(request: Request) -> Response:
    return PlainTextResponse("Hello from Starlette over FastCGI!\n")


async def echo(request: Request) -> Response:
    """The request body back, read as a stream."""
    body = b""
    async for chunk in request.stream():
        body += chunk
    return Response(
        body, media_type="application/octet-stream", headers={"X-Length": str(len(body))}
    )


async def info(request: Request) -> Response:
    """What the application saw of the request."""
    return JSONResponse(
        {
            "path": request.url.path,
            "root_path": request.scope.get("root_path", ""),
            "query": dict(request.query_params),
            "user_agent": request.headers.get("user-agent", ""),
            "lifespan_started": bool(getattr(request.state, "started", False)),
            "fastcgi_role": request.scope["extensions"]["fastcgi"]["role"],
        }
    )


async def stream(request: Request) -> Response:
    """A streamed response: each line is sent as it is produced."""
    count = int(request.query_params.get("n", "5"))
    delay = float(request.query_params.get("delay", "0"))

    async def lines() -> AsyncIterator[bytes]:
        for i in range(count):
            if delay:
                await trio.sleep(delay)
            yield f"line {i}\n".encode()

    # X-Accel-Buffering: nginx passes each line on at once instead of buffering.
    headers = {"X-Accel-Buffering": "no"}
    return StreamingResponse(lines(), media_type="text/plain", headers=headers)


async def slow(request: Request) -> Response:
    """Takes a while (for graceful-stop demos)."""
    await trio.sleep(float(request.query_params.get("seconds", "0.5")))
    return PlainTextResponse("done\n")


async def fail(request: Request) -> Response:
    raise RuntimeError("this endpoint fails on purpose")


app = Starlette(
    routes=[
        Route("/", index),
        Route("/echo", echo, methods=["POST"]),
        Route("/info", info),
        Route("/stream", stream),
        Route("/slow", slow),
        Route("/fail", fail),
    ],
    lifespan=lifespan,
)
