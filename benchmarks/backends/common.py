"""What every benchmark backend serves, and the WSGI/ASGI apps the Python peers run.

Routes (the same on every backend, checked byte for byte by the runner):

- ``/hello``: ``Hello, World!\\n`` (14 bytes).
- ``/1m``: 1 MiB (the bytes 0..255 repeated), written as 16 chunks of 64 KiB.
- ``/post``: reads the whole request body, answers its length in decimal.

Every answer is status 200 with ``Content-Type: text/plain`` and a
``Content-Length``. ``/upload`` (native trio-fastcgi backend only) streams the
body to a file in ``$BENCH_UPLOAD_DIR`` and is used by the 1 GiB upload test.
"""

from __future__ import annotations

import argparse
import resource
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from typing import Any

HELLO = b"Hello, World!\n"
CHUNK_SIZE = 64 * 1024
CHUNK = bytes(range(256)) * (CHUNK_SIZE // 256)
CHUNKS_PER_MIB = 16
ONE_MIB = CHUNK * CHUNKS_PER_MIB
POST_SIZE = 256 * 1024
CONTENT_TYPE = "text/plain"
#: Largest body /post accepts (bounded, as every body read must be).
MAX_POST = 64 * 1024 * 1024


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-conns", type=int, default=None)
    parser.add_argument(
        "--nofile", type=int, default=None, help="raise RLIMIT_NOFILE to this (soft) value"
    )
    args = parser.parse_args()
    if args.nofile:
        raise_nofile(args.nofile)
    return args


def raise_nofile(wanted: int) -> int:
    """Raise the soft fd limit to *wanted* (capped by the hard limit); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return max(target, soft)


def headers_for(length: int) -> list[tuple[str, str]]:
    return [("Content-Type", CONTENT_TYPE), ("Content-Length", str(length))]


def cgi_head(status: int, headers: list[tuple[str, str]]) -> bytes:
    """A CGI response head (``Status:`` line, headers, blank line)."""
    lines = [f"Status: {status}", *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# -- WSGI ------------------------------------------------------------------------

StartResponse = Callable[..., Any]


def wsgi_app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    if path == "/hello":
        start_response("200 OK", headers_for(len(HELLO)))
        return [HELLO]
    if path == "/1m":
        start_response("200 OK", headers_for(len(ONE_MIB)))
        return _chunks()
    if path == "/post":
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if length > MAX_POST:
            start_response("413 Content Too Large", headers_for(0))
            return [b""]
        body = environ["wsgi.input"].read(length)
        answer = str(len(body)).encode()
        start_response("200 OK", headers_for(len(answer)))
        return [answer]
    start_response("404 Not Found", headers_for(0))
    return [b""]


def _chunks() -> Iterator[bytes]:
    for _ in range(CHUNKS_PER_MIB):
        yield CHUNK


# -- ASGI ------------------------------------------------------------------------

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def _asgi_headers(length: int) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", CONTENT_TYPE.encode()), (b"content-length", str(length).encode())]


async def asgi_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/hello":
        await send({"type": "http.response.start", "status": 200, "headers": _asgi_headers(14)})
        await send({"type": "http.response.body", "body": HELLO})
    elif path == "/1m":
        await send(
            {"type": "http.response.start", "status": 200, "headers": _asgi_headers(len(ONE_MIB))}
        )
        for i in range(CHUNKS_PER_MIB):
            more = i < CHUNKS_PER_MIB - 1
            await send({"type": "http.response.body", "body": CHUNK, "more_body": more})
    elif path == "/post":
        parts = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # disconnected
            body = message.get("body", b"")
            size += len(body)
            if size > MAX_POST:
                await send(
                    {"type": "http.response.start", "status": 413, "headers": _asgi_headers(0)}
                )
                await send({"type": "http.response.body", "body": b""})
                return
            parts.append(body)
            if not message.get("more_body", False):
                break
        answer = str(len(b"".join(parts))).encode()
        await send(
            {"type": "http.response.start", "status": 200, "headers": _asgi_headers(len(answer))}
        )
        await send({"type": "http.response.body", "body": answer})
    else:
        await send({"type": "http.response.start", "status": 404, "headers": _asgi_headers(0)})
        await send({"type": "http.response.body", "body": b""})
