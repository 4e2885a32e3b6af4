"""A FastAPI application, as docs/howto/fastapi.rst shows it.

The integration tests (tests/integration/test_frameworks_prefix.py) serve this
file with ``trio-fastcgi tests.integration.apps.fastapi_prefix_app:app``
behind a real nginx, at the root of the site and mounted under a prefix.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel

app = FastAPI()


class Items(BaseModel):
    items: list[str]


@app.get("/", response_class=PlainTextResponse)
def index() -> str:
    """A plain ``def``: FastAPI runs it in a worker thread."""
    return "Hello from FastAPI over FastCGI!\n"


@app.get("/hello")
async def hello(request: Request, name: str = "world") -> dict[str, str]:
    """A query string, and the absolute URLs FastAPI builds for this request."""
    return {
        "greeting": f"Hello, {name}!",
        "url": str(request.url),
        "index_url": str(request.url_for("index")),
        "hello_url": str(request.url_for("hello").include_query_params(name=name)),
    }


@app.post("/items")
async def items(request: Request, body: Items) -> dict[str, object]:
    """A JSON body: how many items it has, and the SHA-256 of the raw body."""
    return {"count": len(body.items), "sha256": hashlib.sha256(await request.body()).hexdigest()}


@app.get("/lines")
async def lines(count: int = 10) -> StreamingResponse:
    """``count`` numbered lines, each sent on as soon as it is made."""

    async def numbered() -> AsyncIterator[str]:
        for number in range(count):
            yield f"line {number}\n"

    # X-Accel-Buffering: nginx passes each line on at once instead of buffering.
    headers = {"X-Accel-Buffering": "no"}
    return StreamingResponse(numbered(), media_type="text/plain", headers=headers)
