"""fcgisgi's WSGI adapter (asyncio server, app in its thread pool), one process."""

from __future__ import annotations

import asyncio

from common import parse_args, wsgi_app
from fcgisgi import run_wsgi_server  # type: ignore[import-untyped]

if __name__ == "__main__":
    args = parse_args(__doc__ or "")
    asyncio.run(run_wsgi_server(wsgi_app, bind_address=(args.host, args.port)))
