"""Measure the server's memory with many idle keep-alive connections open.

Starts a trio_fastcgi server (``serve_tcp``, ``max_conns`` raised to fit) in a
child process, opens N loopback connections to it, sends one keep-alive
request on each and reads its response, so every connection has served a
request and now waits idle, as nginx's upstream keepalive pool leaves them.
Prints the server's RSS before and after, and the cost per connection::

    python tests/fuzz/idle_conns.py --connections 10000

Raises RLIMIT_NOFILE (soft limit up to the hard limit) in both processes; the
hard limit must allow N + a few dozen descriptors. Bounded: it stops after the
measurement, or after --timeout seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import trio

from trio_fastcgi._config import DEFAULT_HIBERNATE_AFTER

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.helpers import FakeWebServer


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise SystemExit(f"RLIMIT_NOFILE hard limit {hard} < {needed} needed")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def server_main(connections: int) -> None:
    import trio_fastcgi

    raise_fd_limit(connections + 64)

    async def hello(request: trio_fastcgi.Request) -> None:
        await request.respond(b"hello")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                lambda task_status: trio_fastcgi.serve_tcp(
                    hello,
                    0,
                    host="127.0.0.1",
                    max_conns=connections + 16,
                    idle_timeout=None,
                    task_status=task_status,
                )
            )
            print(listeners[0].socket.getsockname()[1], flush=True)

    trio.run(main)


async def open_idle(port: int, count: int, batch: int) -> list[trio.SocketStream]:
    streams: list[trio.SocketStream] = []

    async def one() -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        web = FakeWebServer(stream)
        await web.request(1, keep_conn=True)
        response = await web.read_response(1)
        assert response.body == b"hello", response
        streams.append(stream)

    for start in range(0, count, batch):
        async with trio.open_nursery() as nursery:
            for _ in range(min(batch, count - start)):
                nursery.start_soon(one)
    return streams


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        server_main(args.connections)
        return
    raise_fd_limit(args.connections + 64)
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", "--connections", str(args.connections)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        time.sleep(0.5)
        before = rss_kib(server.pid)

        async def measure() -> dict[str, float]:
            with trio.fail_after(args.timeout):
                started = time.monotonic()
                streams = await open_idle(port, args.connections, args.batch)
                opened = time.monotonic() - started
                # Idle for longer than hibernate_after: the connections have
                # handed their tasks back, as idle ones do.
                await trio.sleep(DEFAULT_HIBERNATE_AFTER + 2)
                after = rss_kib(server.pid)
                still_open = len(os.listdir(f"/proc/{server.pid}/fd"))
                for stream in streams:
                    await stream.aclose()
            return {
                "connections": len(streams),
                "server_fds_open": still_open,
                "rss_kib_before": before,
                "rss_kib_after": after,
                "rss_kib_delta": after - before,
                "bytes_per_connection": round((after - before) * 1024 / len(streams)),
                "seconds_to_open_and_serve": round(opened, 1),
            }

        print(json.dumps(trio.run(measure)))
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
