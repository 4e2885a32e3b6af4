"""trio-fastcgi's WSGI adapter (app in worker threads), one process."""

from __future__ import annotations

from typing import Any

import trio
from common import parse_args, wsgi_app

import trio_fastcgi
from trio_fastcgi.wsgi import WSGIHandler


async def main() -> None:
    args = parse_args(__doc__ or "")
    options: dict[str, Any] = {}
    if args.max_conns:
        options["max_conns"] = args.max_conns
    await trio_fastcgi.serve_tcp(WSGIHandler(wsgi_app), args.port, host=args.host, **options)


if __name__ == "__main__":
    trio.run(main)
