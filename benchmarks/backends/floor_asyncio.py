"""Floor (b): an asyncio Protocol answering in ``data_received``.

No tasks at all: each chunk is parsed and answered by ``transport.write`` in
the callback. See floor_common.py.
"""

from __future__ import annotations

import asyncio

from common import parse_args
from floor_common import Parser, abort_answer, answer


class FloorProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.parser = Parser()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        done, aborted = self.parser.feed(data)
        out = b"".join([answer(r) for r in done] + [abort_answer(i) for i in aborted])
        if out:
            self.transport.write(out)
        if any(not r.keep for r in done):
            self.transport.close()


async def main() -> None:
    args = parse_args(__doc__ or "")
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FloorProtocol, args.host, args.port, backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
