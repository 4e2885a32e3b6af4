"""A FastAPI application with background tasks and a lifespan.

tests/integration/test_fastapi.py serves it with ``trio-fastcgi
tests.integration.apps.fastapiapp:app`` behind a real nginx. The test and the
application talk through marker files in ``$FASTAPI_TEST_DIR``: each
background task waits for ``NAME.go``, which the test creates once it has the
whole response, then takes :data:`OUTLIVE` seconds more (longer than the
adapter's grace after an abort, so a task tied to its request would be
cancelled) and writes ``NAME.done``. The lifespan writes ``startup`` and
``shutdown``.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.responses import StreamingResponse

MARKERS = Path(os.environ["FASTAPI_TEST_DIR"])
#: Seconds a task goes on after its go marker: twice trio_fastcgi.asgi's
#: DISCONNECT_GRACE.
OUTLIVE = 2.0
#: How long a task waits for its go marker before it gives up.
GO_TIMEOUT = 60.0
POLL = 0.05


def mark(name: str, text: str) -> None:
    """Write the marker *name* whole: the test polls for it, and a file that
    ``write_text`` has created but not yet filled would read as empty."""
    partial = MARKERS / f".{name}.partial"
    partial.write_text(text)
    partial.replace(MARKERS / name)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, int]]:
    mark("startup", str(os.getpid()))
    yield {"pid": os.getpid()}
    mark("shutdown", str(os.getpid()))


app = FastAPI(lifespan=lifespan)


async def wait_then_mark(name: str) -> None:
    """An async task: FastAPI runs it on the event loop after the response."""
    for _ in range(int(GO_TIMEOUT / POLL)):
        if (MARKERS / f"{name}.go").exists():
            break
        await anyio.sleep(POLL)
    else:
        raise TimeoutError(f"no {name}.go")
    await anyio.sleep(OUTLIVE)
    mark(f"{name}.done", "async")


def wait_then_mark_in_thread(name: str) -> None:
    """A plain ``def`` task: FastAPI runs it in a worker thread."""
    deadline = time.monotonic() + GO_TIMEOUT
    while not (MARKERS / f"{name}.go").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {name}.go")
        time.sleep(POLL)
    time.sleep(OUTLIVE)
    mark(f"{name}.done", "thread")


@app.get("/json")
async def json_then_task(name: str, request: Request, tasks: BackgroundTasks) -> dict[str, object]:
    """A JSON (Content-Length) response, then a background task."""
    tasks.add_task(wait_then_mark, name)
    return {"name": name, "root_path": request.scope["root_path"], "pid": request.state.pid}


@app.get("/stream")
async def stream_then_task(name: str, tasks: BackgroundTasks) -> StreamingResponse:
    """A streamed (chunked) response, then a background task in a thread."""

    async def lines() -> AsyncIterator[bytes]:
        for number in range(100):
            yield b"line %d\n" % number

    tasks.add_task(wait_then_mark_in_thread, name)
    return StreamingResponse(lines(), media_type="text/plain", background=tasks)
