"""Backend CPU per request of one benchmark backend, without a web server.

Starts ``benchmarks/backends/<backend>.py`` on a free port, keeps *conns*
kept-alive FastCGI connections busy from as many client threads (one request
at a time each, like nginx with ``fastcgi_keep_conn``) for *seconds*, and reads
the backend's user+system CPU time from ``/proc``. Several short runs; the
minimum and median of CPU microseconds per request are printed, which a shared
noisy machine disturbs much less than requests per second.

Usage (from the repo root)::

    PYTHONPATH=. python benchmarks/adapters_load.py trio_wsgi fcgisgi_wsgi \
        --path /hello --runs 5 --seconds 3

Paths: ``/hello``, ``/1m``, ``/post`` (a 256 KiB body). Linux only. A client
that gets no answer for 10 s fails the run instead of hanging it.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.fcgi_load import RecordReader, body_of, encode_request

HERE = Path(__file__).resolve().parent
POST_BODY = bytes(range(256)) * 1024  # 256 KiB
EXPECT = {
    "/hello": b"Hello, World!\n",
    "/1m": bytes(range(256)) * 4096,
    "/post": str(len(POST_BODY)).encode(),
}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat(5); index 11, 12 after ")"
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wait_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"backend did not listen on {port}")


def client(port: int, path: str, stop_at: float, counts: list[int], slot: int) -> None:
    if path == "/post":
        request = encode_request(1, path, method="POST", body=POST_BODY)
    else:
        request = encode_request(1, path)
    expect = EXPECT[path]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = RecordReader()
        while time.monotonic() < stop_at:
            sock.sendall(request)
            while not reader.feed(sock.recv(1 << 20)):
                pass
            if body_of(reader.take_stdout(1)) != expect:
                raise AssertionError(f"wrong answer from {path}")
            counts[slot] += 1


def one_run(pid: int, port: int, path: str, conns: int, seconds: float) -> float:
    counts = [0] * conns
    stop_at = time.monotonic() + seconds
    before = cpu_seconds(pid)
    threads = [
        threading.Thread(target=client, args=(port, path, stop_at, counts, i)) for i in range(conns)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    used = cpu_seconds(pid) - before
    return used / sum(counts) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("backends", nargs="+")
    parser.add_argument("--path", default="/hello", choices=sorted(EXPECT))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--conns", type=int, default=4)
    args = parser.parse_args()
    # Stop the backends on SIGTERM (a `timeout` around this script) too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE / "backends")])}
    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for name in args.backends:
            port = free_port()
            # A name, or the path of a script taking the backends' arguments.
            script = Path(name) if name.endswith(".py") else HERE / "backends" / f"{name}.py"
            proc = subprocess.Popen([sys.executable, str(script), "--port", str(port)], env=env)
            wait_port(port, time.monotonic() + 20)
            procs[name] = (proc, port)
        results: dict[str, list[float]] = {name: [] for name in procs}
        for _ in range(args.runs):  # interleaved, so noise hits every backend alike
            for name, (proc, port) in procs.items():
                results[name].append(one_run(proc.pid, port, args.path, args.conns, args.seconds))
        for name, values in results.items():
            print(
                f"{name:16} {args.path:6} cpu us/req min {min(values):7.1f} "
                f"median {statistics.median(values):7.1f}  runs {[round(v) for v in values]}"
            )
    finally:
        for proc, _port in procs.values():
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
