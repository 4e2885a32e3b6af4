"""trio-fastcgi's ASGI adapter, one process."""

from __future__ import annotations

from typing import Any

import trio
from common import asgi_app, parse_args

import trio_fastcgi
from trio_fastcgi.asgi import ASGIHandler


async def main() -> None:
    args = parse_args(__doc__ or "")
    options: dict[str, Any] = {}
    if args.max_conns:
        options["max_conns"] = args.max_conns
    handler = ASGIHandler(asgi_app)
    async with handler.lifespan():
        await trio_fastcgi.serve_tcp(handler, args.port, host=args.host, **options)


if __name__ == "__main__":
    trio.run(main)
