"""fcgisgi (asyncio) running the ASGI app, one process."""

from __future__ import annotations

import asyncio

from common import asgi_app, parse_args
from fcgisgi import run_asgi_server  # type: ignore[import-untyped]

if __name__ == "__main__":
    args = parse_args(__doc__ or "")
    asyncio.run(run_asgi_server(asgi_app, bind_address=(args.host, args.port)))
