"""The tutorial's finished application.

- ``GET /?name=Trio`` greets by name;
- ``POST /upper`` answers with the request body in upper case;
- ``GET /countdown`` streams a countdown, one line every half second;
- SIGTERM or Ctrl+C stop it gracefully: requests in flight finish first.

Run: python3 app.py [PORT]   (PORT defaults to 9000)
"""

import functools
import logging
import signal
import sys
import urllib.parse

import trio

import trio_fastcgi

MAX_BODY = 1024 * 1024


async def app(request: trio_fastcgi.Request) -> None:
    method = request.params.get("REQUEST_METHOD", "GET")
    url = urllib.parse.urlsplit(request.params.get("REQUEST_URI", "/"))
    if url.path == "/" and method == "GET":
        query = urllib.parse.parse_qs(url.query)
        name = query.get("name", ["world"])[0]
        await request.respond(f"Hello, {name}!\n")
    elif url.path == "/upper" and method == "POST":
        try:
            body = await request.stdin.receive_all(max_size=MAX_BODY)
        except trio_fastcgi.InputTooLarge:
            await request.respond("Too large\n", status=413)
            return
        await request.respond(body.upper(), content_type="application/octet-stream")
    elif url.path == "/countdown" and method == "GET":
        await countdown(request)
    else:
        await request.respond("Not found\n", status=404)


async def countdown(request: trio_fastcgi.Request) -> None:
    # X-Accel-Buffering: no asks nginx to pass each piece on at once
    # instead of collecting the whole response first.
    head = b"Status: 200 OK\r\nContent-Type: text/plain\r\nX-Accel-Buffering: no\r\n\r\n"
    await request.stdout.send_all(head)
    try:
        for n in range(5, 0, -1):
            await request.stdout.send_all(f"{n}...\n".encode())
            await trio.sleep(0.5)
        await request.stdout.send_all(b"liftoff!\n")
    except trio.Cancelled:
        logging.info("countdown cancelled: the client went away")
        raise


async def main(port: int) -> None:
    shutdown = trio.Event()
    serve = functools.partial(
        trio_fastcgi.serve_tcp, app, port, host="127.0.0.1", shutdown_event=shutdown
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(serve)
        logging.info("serving FastCGI on 127.0.0.1:%d", port)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                logging.info("%s: finishing the requests in flight", signal.Signals(signum).name)
                shutdown.set()
                break
    logging.info("stopped")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 9000)
