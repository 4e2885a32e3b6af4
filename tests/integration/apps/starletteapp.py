"""A Starlette application, as docs/howto/fastapi.rst shows it.

The integration tests (tests/integration/test_frameworks_prefix.py) serve this
file with ``trio-fastcgi tests.integration.apps.starletteapp:app`` behind a
real nginx, at the root of the site and mounted under a prefix.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route


async def index(request: Request) -> PlainTextResponse:
    return PlainTextResponse("Hello from Starlette over FastCGI!\n")


async def hello(request: Request) -> JSONResponse:
    """A query string, and the absolute URLs Starlette builds for this request."""
    name = request.query_params.get("name", "world")
    return JSONResponse(
        {
            "greeting": f"Hello, {name}!",
            "url": str(request.url),
            "index_url": str(request.url_for("index")),
            "hello_url": str(request.url_for("hello").include_query_params(name=name)),
        }
    )


async def items(request: Request) -> JSONResponse:
    """A JSON body: how many items it has, and the SHA-256 of the raw body."""
    body = await request.body()
    return JSONResponse(
        {"count": len(json.loads(body)["items"]), "sha256": hashlib.sha256(body).hexdigest()}
    )


async def lines(request: Request) -> StreamingResponse:
    """``count`` numbered lines, each sent on as soon as it is made."""
    count = int(request.query_params.get("count", "10"))

    async def numbered() -> AsyncIterator[str]:
        for number in range(count):
            yield f"line {number}\n"

    # X-Accel-Buffering: nginx passes each line on at once instead of buffering.
    headers = {"X-Accel-Buffering": "no"}
    return StreamingResponse(numbered(), media_type="text/plain", headers=headers)


app = Starlette(
    routes=[
        Route("/", index, name="index"),
        Route("/hello", hello, name="hello"),
        Route("/items", items, methods=["POST"]),
        Route("/lines", lines),
    ]
)
