"""Soak: mixed traffic for a bounded time, every response checked byte for byte.

The application runs in its own process (so its memory can be sampled alone)
and serves two kinds of request:

- ``POST /echo``: the body comes back unchanged;
- ``GET /gen?n=SIZE&seed=SEED``: SIZE bytes from ``random.Random(SEED)``,
  written in chunks of random size, so the response is known in advance.

Two kinds of web server drive it at once for ``SOAK_SECONDS`` (default 20):

- nginx from ``docs/deploy/nginx-keepalive.conf`` (kept-alive upstream
  connections), fed over HTTP by several workers; some requests are cancelled
  half-way, which makes nginx drop its upstream connection mid-request;
- the project's own client (``trio_fastcgi.client``) on multiplexed
  connections, with many requests in flight per connection; some leave early
  (``FCGI_ABORT_REQUEST``) and now and then a whole connection is closed with
  requests in flight.

Bodies are random sizes up to 4 MiB (mostly small). For the last quarter of
the run (at most 4 s) the application is stopping gracefully (SIGTERM: stop
accepting, finish what is in flight): new connections are refused, but a
request it had accepted (it had started answering, or had it for half a
second before the stop) must still complete byte for byte, and the process
must then exit with status 0. Every response that
completes is compared with what it must be: any corrupted, truncated or
interleaved response fails the test. The application's RSS is sampled every
second. Peaks come and go with the multi-MiB bodies in flight; a leak raises the
floor, so the lowest RSS of the last third of the run may not exceed the lowest
of the middle third by more than 16 MiB (the run moves several GiB; a leak of
even a thousandth of it would show). The figures are printed at the end
(``pytest -s``) and written to ``$SOAK_REPORT`` if set.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import pytest
import trio
import trio.lowlevel

import trio_fastcgi
from tests.integration.configs import render
from tests.integration.harness import IS_ROOT, http_client, running
from tests.integration.procs import ManagedProcess, free_port, require_binary, wait_for_tcp
from trio_fastcgi.client import open_client

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
REPO_ROOT = Path(__file__).resolve().parents[2]


# -- the application (runs in a child process) ------------------------------------------


def generated(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


async def soak_app(request: trio_fastcgi.Request) -> None:
    path = request.params.get("SCRIPT_NAME", "") or request.params.get("DOCUMENT_URI", "")
    query = dict(
        item.split("=", 1) for item in request.params.get("QUERY_STRING", "").split("&") if item
    )
    if path.endswith("/gen"):
        size, seed = int(query["n"]), int(query["seed"])
        body = generated(size, seed)
        await request.stdout.send_all(
            b"Status: 200 OK\r\nContent-Type: application/octet-stream\r\n"
            b"Content-Length: %d\r\n\r\n" % size
        )
        chunks = random.Random(seed + 1)
        start = 0
        while start < size:
            step = chunks.randint(1, 300_000)
            await request.stdout.send_all(body[start : start + step])
            start += step
            if chunks.random() < 0.2:
                await trio.lowlevel.checkpoint()
        return
    body = await request.stdin.receive_all(max_size=16 * MiB)
    await request.respond(body, content_type="application/octet-stream")


def serve_main(port: int) -> None:
    """Entry point of the application process: serve until SIGTERM, then stop
    gracefully (stop accepting, finish what is in flight) and exit 0."""

    async def main() -> None:
        shutdown = trio.Event()
        async with trio.open_nursery() as nursery:

            async def on_sigterm() -> None:
                with trio.open_signal_receiver(signal.SIGTERM) as signals:
                    async for _ in signals:
                        shutdown.set()
                        return

            nursery.start_soon(on_sigterm)
            await trio_fastcgi.serve_tcp(
                soak_app, port, host="127.0.0.1", shutdown_event=shutdown, grace_period=30
            )
            nursery.cancel_scope.cancel()

    trio.run(main)


# -- traffic ------------------------------------------------------------------------


@dataclass
class Tally:
    checked: Counter[str] = field(default_factory=Counter)  # completed and verified
    bytes_checked: int = 0
    aborted: Counter[str] = field(default_factory=Counter)  # cut short on purpose
    connection_closes: int = 0
    corrupted: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # failures we did not cause
    rss_samples_kib: list[int] = field(default_factory=list)
    #: When the application was told to stop (SIGTERM: graceful shutdown).
    stop_time: float = math.inf
    #: Requests that failed because the application had stopped accepting.
    refused_after_stop: Counter[str] = field(default_factory=Counter)
    exit_time: float = math.inf

    def failure(self, kind: str, accepted: bool, message: str) -> None:
        """A request failed. Before the stop that is a failure; after it, a
        request the application had *accepted* (it had answered part of it,
        or had it for half a second before the stop) must still complete."""
        if trio.current_time() < self.stop_time or accepted:
            self.failed.append(f"{kind}: {message}")
        else:
            self.refused_after_stop[kind] += 1

    def verify(self, kind: str, got: bytes, expected: bytes) -> None:
        if got == expected:
            self.checked[kind] += 1
            self.bytes_checked += len(got)
        else:
            pairs = zip(got, expected, strict=False)
            first = next((i for i, (a, b) in enumerate(pairs) if a != b), None)
            self.corrupted.append(
                f"{kind}: {len(got)} bytes, expected {len(expected)}; first difference at {first}"
            )


def body_size(rng: random.Random) -> int:
    roll = rng.random()
    if roll < 0.6:
        return rng.randint(0, 4096)
    if roll < 0.9:
        return rng.randint(4096, 256 * 1024)
    return rng.randint(256 * 1024, 4 * MiB)


async def nginx_worker(
    client: httpx.AsyncClient, rng: random.Random, tally: Tally, deadline: float
) -> None:
    while trio.current_time() < deadline:
        size = body_size(rng)
        cut = rng.random() < 0.05
        kind = "nginx-" + ("echo" if rng.random() < 0.5 else "gen")
        # nginx may have sent it on a kept-alive connection the application
        # was closing: only a response that started counts as accepted.
        accepted = False
        with trio.move_on_after(rng.random() * 0.05 if cut else 60) as scope:
            try:
                if kind == "nginx-echo":
                    body = rng.randbytes(size)
                    request = client.build_request("POST", "/echo", content=body)
                    expected = body
                else:
                    seed = rng.getrandbits(32)
                    request = client.build_request("GET", f"/gen?n={size}&seed={seed}")
                    expected = generated(size, seed)
                response = await client.send(request, stream=True)
                try:
                    accepted = response.status_code == 200
                    content = await response.aread()
                finally:
                    await response.aclose()
            except httpx.HTTPError as exc:
                if not cut:
                    tally.failure(kind, accepted, repr(exc))
                continue
        if scope.cancelled_caught:
            if cut:
                tally.aborted[kind] += 1
            else:
                tally.failed.append(f"{kind}: no response in 60 s")
            continue
        if response.status_code != 200:
            tally.failure(kind, accepted, f"HTTP {response.status_code}")
            continue
        tally.verify(kind, content, expected)


async def direct_connection(port: int, rng: random.Random, tally: Tally, deadline: float) -> None:
    """One multiplexed client connection after another until the deadline."""
    while trio.current_time() < deadline:
        life = rng.uniform(1, 5)
        try:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
        except OSError as exc:
            tally.failure("direct-connect", False, repr(exc))
            await trio.sleep(0.1)
            continue
        async with open_client(stream) as client, trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(direct_requests, client, rng, tally, deadline)
            with trio.move_on_after(life) as scope:
                await trio.sleep(deadline - trio.current_time())
            if scope.cancelled_caught and rng.random() < 0.5:
                # Close the connection with requests in flight.
                tally.connection_closes += 1
                nursery.cancel_scope.cancel()


async def direct_requests(
    client: trio_fastcgi.client.Client, rng: random.Random, tally: Tally, deadline: float
) -> None:
    while trio.current_time() < deadline:
        size = body_size(rng)
        abort = rng.random() < 0.1
        if rng.random() < 0.5:
            kind, body = "direct-echo", rng.randbytes(size)
            params = {"REQUEST_METHOD": "POST", "SCRIPT_NAME": "/echo", "CONTENT_LENGTH": str(size)}
            expected_body = body
        else:
            seed = rng.getrandbits(32)
            kind, body = "direct-gen", b""
            params = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "/gen"}
            params["QUERY_STRING"] = f"n={size}&seed={seed}"
            expected_body = generated(size, seed)
        started = trio.current_time()
        stdout = bytearray()
        try:
            async with client.open_request(params, stdin=body) as active:
                if abort:
                    await active.stdout.receive_some(rng.randint(1, 100))
                    tally.aborted[kind] += 1
                    continue  # leaving the block sends FCGI_ABORT_REQUEST
                async for chunk in active.stdout:
                    stdout += chunk
                end = await active.wait_ended()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            accepted = bool(stdout) or started < tally.stop_time - 0.5
            tally.failure(kind, accepted, f"{exc!r} after {len(stdout)} bytes")
            return  # this connection is gone
        if end.app_status != 0:
            tally.failed.append(f"{kind}: appStatus {end.app_status}")
            continue
        _, _, got = bytes(stdout).partition(b"\r\n\r\n")
        tally.verify(kind, got, expected_body)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def sample_rss_then_stop(app: ManagedProcess, tally: Tally, stop_at: float) -> None:
    """Sample the application's RSS every second; at *stop_at*, SIGTERM it."""
    while trio.current_time() < stop_at:
        tally.rss_samples_kib.append(rss_kib(app.pid))
        await trio.sleep(min(1, max(stop_at - trio.current_time(), 0)))
    tally.rss_samples_kib.append(rss_kib(app.pid))
    tally.stop_time = trio.current_time()
    os.kill(app.pid, signal.SIGTERM)
    await trio.to_thread.run_sync(app.process.wait, 60, abandon_on_cancel=True)
    tally.exit_time = trio.current_time()


# httpx leaves the body generator of a request we cancel on purpose to the
# garbage collector; that is the HTTP client's business, not the server's.
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <async_generator object ByteStream"
    ":pytest.PytestUnraisableExceptionWarning"
)
async def test_soak_mixed_traffic_is_byte_exact_and_memory_flat(tmp_path: Path) -> None:
    seconds = float(os.environ.get("SOAK_SECONDS", "20"))
    nginx = require_binary("nginx")
    app_port, http_port = free_port(), free_port()
    app = ManagedProcess(
        [
            sys.executable,
            "-c",
            f"from tests.integration.test_soak import serve_main; serve_main({app_port})",
        ],
        cwd=REPO_ROOT,
        log_path=tmp_path / "app.log",
    )
    tally = Tally()
    with app:
        await trio.to_thread.run_sync(
            lambda: wait_for_tcp(app_port, process=app.process, timeout=30)
        )
        config = render(
            "nginx-keepalive.conf", tmp_path, tmp=tmp_path, port=http_port, app_port=app_port
        )
        argv = [nginx, "-c", str(config), "-e", str(tmp_path / "startup.log")]
        if IS_ROOT:
            argv += ["-g", "user root;"]
        rng = random.Random(int(os.environ.get("SOAK_SEED", "1125")))
        async with (
            running(argv, port=http_port, log_path=tmp_path / "nginx.out"),
            http_client(http_port) as client,
        ):
            deadline = trio.current_time() + seconds
            # The last quarter (at most 4 s) runs during a graceful stop.
            stop_at = deadline - min(4.0, seconds / 4)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sample_rss_then_stop, app, tally, stop_at)
                for _ in range(6):
                    nursery.start_soon(
                        nginx_worker, client, random.Random(rng.random()), tally, deadline
                    )
                for _ in range(2):
                    nursery.start_soon(
                        direct_connection, app_port, random.Random(rng.random()), tally, deadline
                    )
        # Graceful stop: everything in flight finished, then the process exits
        # 0 (the multiplexing clients keep their connections busy to the end).
        assert app.process.wait(1) == 0, app.log()
    samples = tally.rss_samples_kib
    third = max(len(samples) // 3, 1)
    # Transient peaks come from the multi-MiB bodies in flight; a leak shows
    # as a rising floor, so compare the lowest RSS of the middle and last thirds.
    floor_middle = min(samples[third : 2 * third] or samples)
    floor_end = min(samples[-third:])
    report = {
        "seconds": seconds,
        "requests_checked": sum(tally.checked.values()),
        "by_kind": dict(tally.checked),
        "bytes_checked": tally.bytes_checked,
        "aborted_on_purpose": dict(tally.aborted),
        "connections_closed_on_purpose": tally.connection_closes,
        "corrupted": len(tally.corrupted),
        "failed": len(tally.failed),
        "refused_after_stop": dict(tally.refused_after_stop),
        "exit_seconds_after_sigterm": round(tally.exit_time - tally.stop_time, 2),
        "exit_seconds_after_load": round(tally.exit_time - deadline, 2),
        "rss_kib_first": samples[0],
        "rss_kib_floor_middle_third": floor_middle,
        "rss_kib_floor_last_third": floor_end,
        "rss_kib_peak": max(samples),
    }
    print("\nsoak:", json.dumps(report))
    if os.environ.get("SOAK_REPORT"):
        await trio.Path(os.environ["SOAK_REPORT"]).write_text(
            json.dumps(report | asdict(tally), indent=1)
        )
    assert tally.corrupted == []
    assert tally.failed == [], tally.failed[:10]
    assert sum(tally.checked.values()) > 0
    assert all(tally.checked[k] for k in ("nginx-echo", "nginx-gen", "direct-echo", "direct-gen"))
    assert floor_end - floor_middle < 16 * 1024, samples
