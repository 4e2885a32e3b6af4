"""Load-independent cost per request of a benchmark backend: instructions and
context switches.

Requests per second and CPU seconds move with whatever else the machine runs;
these two counts barely do:

- ``--callgrind``: the backend runs under ``valgrind --tool=callgrind`` and
  serves two fixed batches of requests (*warmup*, then *count* more); the
  instructions it executed (user space, all threads) are read from the dumps
  taken after each batch, so start-up and warm-up cancel out. Valgrind runs one
  thread at a time, so this counts the work, not the lock waits.
- otherwise: the backend runs natively and the voluntary context switches of
  all its threads (``/proc/PID/task/*/status``: each is a thread that waited,
  for a lock, a condition or epoll) are counted over *count* requests, with the
  CPU time (user+system, noisy) for reference.

- ``--micro``: no sockets and no core loop: ``benchmarks/adapters_micro.py``
  (one request at a time, straight into the handler) runs under callgrind
  with *warmup* and with *warmup* + *count* requests; the difference is the
  handler's own instructions per request. The backends are then handler names
  (``native``, ``asgi``, ``wsgi``), and ``--wsgi-module`` compares a saved copy
  of an older ``trio_fastcgi/wsgi.py``.

The load: *conns* kept-alive FastCGI connections, one request at a time on
each (as nginx with ``fastcgi_keep_conn``), from as many client threads.

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/wsgi_cost.py trio_wsgi fcgisgi_wsgi --callgrind
    PYTHONPATH=. python benchmarks/wsgi_cost.py trio_wsgi fcgisgi_wsgi --count 20000
    PYTHONPATH=. python benchmarks/wsgi_cost.py native wsgi --micro

Linux only; the callgrind mode needs valgrind (``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.adapters_load import EXPECT, POST_BODY, cpu_seconds, free_port, wait_port
from benchmarks.fcgi_load import RecordReader, body_of, encode_request
from benchmarks.run import uwsgi_binary

HERE = Path(__file__).resolve().parent


def context_switches(pid: int) -> int:
    """Voluntary context switches (waits: a lock, a condition, epoll) of the
    threads alive in *pid*. Involuntary ones (preemption) depend on the
    machine's load, not on the backend, and are left out."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue  # the thread ended meanwhile
        for line in text.splitlines():
            if line.startswith("voluntary_ctxt_switches"):
                total += int(line.split()[1])
    return total


def load(port: int, path: str, conns: int, count: int, *, new_conn: bool = False) -> None:
    """*count* requests to *path* over *conns* connections, each answer checked;
    with *new_conn*, a new connection per request (``FCGI_KEEP_CONN`` unset)."""
    keep_conn = not new_conn
    if path == "/post":
        request = encode_request(1, path, method="POST", body=POST_BODY, keep_conn=keep_conn)
    else:
        request = encode_request(1, path, keep_conn=keep_conn)
    expect = EXPECT[path]
    errors: list[BaseException] = []

    def one_connection(requests: int) -> None:
        try:
            if new_conn:
                for _ in range(requests):
                    one_connection_of(1)
            else:
                one_connection_of(requests)
        except BaseException as exc:
            errors.append(exc)

    def one_connection_of(requests: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=600) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            reader = RecordReader()
            for _ in range(requests):
                sock.sendall(request)
                while True:
                    data = sock.recv(1 << 20)
                    if not data:
                        raise ConnectionError(f"the backend closed the connection on {path}")
                    if reader.feed(data):
                        break
                if body_of(reader.take_stdout(1)) != expect:
                    raise AssertionError(f"wrong answer from {path}")

    shares = [count // conns + (1 if i < count % conns else 0) for i in range(conns)]
    threads = [threading.Thread(target=one_connection, args=(share,)) for share in shares]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def start(
    name: str, port: int, wrapper: list[str], *, quiet: bool = False
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE / "backends")])}
    if name == "uwsgi":
        # As benchmarks/run.py starts it: FastCGI socket, 1 process, 1 thread.
        binary = uwsgi_binary()
        if binary is None:
            raise SystemExit("uWSGI is not installed (pip install pyuwsgi)")
        command = [
            *wrapper,
            binary,
            *("--fastcgi-socket", f"127.0.0.1:{port}", "--module", "common:wsgi_app"),
            *("--pythonpath", str(HERE / "backends"), "--processes", "1", "--threads", "1"),
            *("--listen", "1024", "--die-on-term", "--disable-logging"),
        ]
    else:
        script = Path(name) if name.endswith(".py") else HERE / "backends" / f"{name}.py"
        command = [*wrapper, sys.executable, str(script), "--port", str(port)]
    # Quiet: the backend's KeyboardInterrupt traceback when stopped is noise.
    stderr = subprocess.DEVNULL if quiet else None
    return subprocess.Popen(command, env=env, stderr=stderr)


def instructions(dump: Path) -> int:
    """The total instruction count (``summary:`` line) of a callgrind dump."""
    for line in dump.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise ValueError(f"no totals in {dump}")


def dump_now(pid: int, out: Path, before: set[Path]) -> Path:
    """Have callgrind write its counts so far; the new dump file."""
    subprocess.run(["callgrind_control", "--dump", str(pid)], check=True, capture_output=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        new = set(out.parent.glob(out.name + "*")) - before
        for path in new:
            text = path.read_text()
            if "totals:" in text or "summary:" in text:
                return path
        time.sleep(0.2)
    raise TimeoutError("callgrind wrote no dump")


def measure_callgrind(
    name: str, path: str, conns: int, warmup: int, count: int, new_conn: bool
) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        port = free_port()
        proc = start(
            name,
            port,
            ["valgrind", "--tool=callgrind", "--quiet", f"--callgrind-out-file={out}"],
            quiet=True,
        )
        try:
            wait_port(port, time.monotonic() + 120)
            load(port, path, conns, warmup, new_conn=new_conn)
            first = dump_now(proc.pid, out, set())
            load(port, path, conns, count, new_conn=new_conn)
            second = dump_now(proc.pid, out, {first})
            # Each dump counts from the previous one.
            return instructions(second) / count
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def measure_micro(handler: str, warmup: int, count: int, wsgi_module: str) -> float:
    totals = []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE / "backends")])}
    for requests in (warmup, warmup + count):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "callgrind.out"
            command = [
                *("valgrind", "--tool=callgrind", "--quiet", f"--callgrind-out-file={out}"),
                *(sys.executable, str(HERE / "adapters_micro.py"), str(requests)),
                *("--only", handler, "--rounds", "1", "--wsgi-module", wsgi_module),
            ]
            subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
            totals.append(sum(instructions(path) for path in Path(tmp).glob("callgrind.out*")))
    return (totals[1] - totals[0]) / count


def measure_native(
    name: str, path: str, conns: int, warmup: int, count: int, new_conn: bool
) -> tuple[float, float, float]:
    """Voluntary context switches and CPU microseconds per request, requests/s."""
    port = free_port()
    proc = start(name, port, [], quiet=name == "uwsgi")
    try:
        wait_port(port, time.monotonic() + 20)
        load(port, path, conns, warmup, new_conn=new_conn)
        switches, cpu = context_switches(proc.pid), cpu_seconds(proc.pid)
        started = time.monotonic()
        load(port, path, conns, count, new_conn=new_conn)
        elapsed = time.monotonic() - started
        switches = context_switches(proc.pid) - switches
        cpu = cpu_seconds(proc.pid) - cpu
        return switches / count, cpu / count * 1e6, count / elapsed
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("backends", nargs="+")
    parser.add_argument("--path", default="/hello", choices=sorted(EXPECT))
    parser.add_argument("--conns", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--count", type=int, default=None, help="2000 (callgrind), 20000")
    parser.add_argument("--callgrind", action="store_true")
    parser.add_argument("--micro", action="store_true")
    parser.add_argument(
        "--new-conn", action="store_true", help="a connection per request (always for uwsgi)"
    )
    parser.add_argument("--wsgi-module", default="trio_fastcgi.wsgi")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    for name in args.backends:
        if args.micro:
            count = args.count or 2000
            per_request = measure_micro(name, args.warmup, count, args.wsgi_module)
            print(f"{name:8} micro instructions/req {per_request:9.0f}  ({count} requests)")
        elif args.callgrind:
            count = args.count or 2000
            new_conn = args.new_conn or name == "uwsgi"  # uWSGI closes after each request
            per_request = measure_callgrind(
                name, args.path, args.conns, args.warmup, count, new_conn
            )
            print(
                f"{name:16} {args.path:6} instructions/req {per_request:9.0f}  ({count} requests)"
            )
        else:
            count = args.count or 20000
            new_conn = args.new_conn or name == "uwsgi"  # uWSGI closes after each request
            switches, cpu, rate = measure_native(
                name, args.path, args.conns, args.warmup, count, new_conn
            )
            print(
                f"{name:16} {args.path:6} voluntary context switches/req {switches:5.2f}  "
                f"cpu us/req {cpu:6.1f}  req/s {rate:6.0f}  ({count} requests)"
            )


if __name__ == "__main__":
    main()
