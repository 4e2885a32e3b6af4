"""trio-fastcgi with a native handler, one process."""

from __future__ import annotations

import os
from typing import Any

import trio
from common import (
    CHUNK,
    CHUNKS_PER_MIB,
    HELLO,
    MAX_POST,
    ONE_MIB,
    cgi_head,
    headers_for,
    parse_args,
)

import trio_fastcgi

HELLO_HEADERS = headers_for(len(HELLO))
ONE_MIB_HEAD = cgi_head(200, headers_for(len(ONE_MIB)))
NOT_FOUND = cgi_head(404, headers_for(0))
UPLOAD_DIR = os.environ.get("BENCH_UPLOAD_DIR")


async def handler(request: trio_fastcgi.Request) -> None:
    path = request.params.get("PATH_INFO") or request.params.get("DOCUMENT_URI", "")
    if path == "/hello":
        await request.respond(HELLO, headers=HELLO_HEADERS, content_type=None)
    elif path == "/1m":
        stdout = request.stdout
        await stdout.send_all(ONE_MIB_HEAD)
        for _ in range(CHUNKS_PER_MIB):
            await stdout.send_all(CHUNK)
        await stdout.aclose()
    elif path == "/post":
        body = await request.stdin.receive_all(max_size=MAX_POST)
        answer = str(len(body)).encode()
        await request.respond(answer, headers=headers_for(len(answer)), content_type=None)
    elif path == "/upload" and UPLOAD_DIR:
        # Stream the body to disk chunk by chunk: memory stays bounded by the
        # connection's input buffer, whatever the upload's size.
        size = 0
        target = os.path.join(UPLOAD_DIR, f"upload-{request.request_id}.bin")
        async with await trio.open_file(target, "wb") as file:
            async for chunk in request.stdin:
                await file.write(chunk)
                size += len(chunk)
        answer = str(size).encode()
        await request.respond(answer, headers=headers_for(len(answer)), content_type=None)
    else:
        await request.stdout.send_all(NOT_FOUND)
        await request.stdout.aclose()


async def main() -> None:
    args = parse_args(__doc__ or "")
    options: dict[str, Any] = {}
    if args.max_conns:
        options["max_conns"] = args.max_conns
    await trio_fastcgi.serve_tcp(handler, args.port, host=args.host, **options)


if __name__ == "__main__":
    trio.run(main)
