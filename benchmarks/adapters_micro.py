"""CPU per request of the WSGI/ASGI adapters alone: no sockets, no core loop.

Each iteration makes a :class:`trio_fastcgi.Request` for ``/hello`` with the
params nginx sends, calls the handler in the current task, and drops the
output records from an unbounded outbox. Compared with the benchmark's native
handler, the difference is the adapter's own cost per request.

Usage: ``PYTHONPATH=.:benchmarks/backends python benchmarks/adapters_micro.py [COUNT]``;
``--only wsgi --rounds 1`` runs one handler once (for ``valgrind --tool=callgrind``,
see ``benchmarks/wsgi_cost.py --micro``), ``--wsgi-module`` takes the WSGI handler
from another module (a saved copy of an older ``trio_fastcgi/wsgi.py``, to compare).
"""

from __future__ import annotations

import argparse
import importlib
import resource
import statistics
from collections.abc import Awaitable, Callable

import trio
from common import asgi_app, wsgi_app
from trio_native import handler as native_handler

from trio_fastcgi import Request, Role
from trio_fastcgi._events import OutputEvent
from trio_fastcgi._streams import Outbox
from trio_fastcgi.asgi import ASGIHandler

PARAMS = (
    (b"SCRIPT_FILENAME", b"/srv/app"),
    (b"QUERY_STRING", b""),
    (b"REQUEST_METHOD", b"GET"),
    (b"CONTENT_TYPE", b""),
    (b"CONTENT_LENGTH", b""),
    (b"SCRIPT_NAME", b""),
    (b"PATH_INFO", b"/hello"),
    (b"REQUEST_URI", b"/hello"),
    (b"DOCUMENT_URI", b"/hello"),
    (b"DOCUMENT_ROOT", b"/usr/share/nginx/html"),
    (b"SERVER_PROTOCOL", b"HTTP/1.1"),
    (b"REQUEST_SCHEME", b"http"),
    (b"GATEWAY_INTERFACE", b"CGI/1.1"),
    (b"SERVER_SOFTWARE", b"nginx/1.22.1"),
    (b"REMOTE_ADDR", b"127.0.0.1"),
    (b"REMOTE_PORT", b"40000"),
    (b"SERVER_ADDR", b"127.0.0.1"),
    (b"SERVER_PORT", b"8080"),
    (b"SERVER_NAME", b"localhost"),
    (b"REDIRECT_STATUS", b"200"),
    (b"HTTP_HOST", b"127.0.0.1:8080"),
    (b"HTTP_CONNECTION", b"keep-alive"),
)
Handler = Callable[[Request], Awaitable[object]]


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class DiscardingOutbox(Outbox):
    """Takes a request's output events and forgets them, as fast as it can."""

    async def send(self, event: OutputEvent) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()


async def per_request(handler: Handler, count: int) -> float:
    outbox = DiscardingOutbox()
    start = cpu()
    for _ in range(count):
        request = Request._create(
            request_id=1,
            role=Role.RESPONDER,
            keep_conn=True,
            raw_params=PARAMS,
            outbox=outbox,
            input_buffer_size=256 * 1024,
        )
        request.stdin._feed_eof()
        await handler(request)
    return (cpu() - start) / count * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("count", type=int, nargs="?", default=3000)
    parser.add_argument("--only", choices=["native", "asgi", "wsgi"], action="append")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--wsgi-module", default="trio_fastcgi.wsgi")
    args = parser.parse_args()
    wsgi_handler = importlib.import_module(args.wsgi_module).WSGIHandler
    handlers: dict[str, Handler] = {
        "native": native_handler,
        "asgi": ASGIHandler(asgi_app),
        "wsgi": wsgi_handler(wsgi_app),
    }
    if args.only:
        handlers = {name: handlers[name] for name in args.only}
    results: dict[str, list[float]] = {name: [] for name in handlers}
    for _ in range(args.rounds):
        for name, handler in handlers.items():
            results[name].append(await per_request(handler, args.count))
    for name, values in results.items():
        median = statistics.median(values)
        print(f"{name:8} cpu us/request min {min(values):6.1f} median {median:6.1f}")


if __name__ == "__main__":
    trio.run(main)
