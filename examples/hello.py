"""The smallest trio-fastcgi application: it greets every request.

Run it with ``python examples/hello.py`` and point a web server's FastCGI
upstream at 127.0.0.1:9000 (see docs/deploy/), or see it in a browser with no
web server at all: ``trio-fastcgi dev examples.hello:handler``.
"""

from __future__ import annotations

import functools

import trio

import trio_fastcgi


async def handler(request: trio_fastcgi.Request) -> None:
    uri = request.params.get("REQUEST_URI", "/")
    await request.respond(f"Hello from trio-fastcgi! You asked for {uri}\n")


if __name__ == "__main__":
    print("serving FastCGI on 127.0.0.1:9000; Ctrl+C stops")
    try:
        trio.run(functools.partial(trio_fastcgi.serve_tcp, handler, 9000, host="127.0.0.1"))
    except KeyboardInterrupt:  # Ctrl+C
        print("stopped")
