"""Instructions per request, counted by callgrind: a figure that load cannot move.

``run.py`` measures requests per second behind nginx, which is what users see but
moves with whatever else the machine runs. This counts the CPU instructions a
backend executes per request under ``valgrind --tool=callgrind``: repeatable to
a fraction of a percent on the same binaries, whatever the other core is doing,
so a change to the per-request path can be judged on a shared machine.

For each backend: start it under callgrind on a free loopback port, warm it up,
zero the counters (``callgrind_control --zero``), drive a fixed number of
requests from this process with blocking sockets, one request at a time, dump
the counters, stop the backend by its PID. Only the backend is counted; the
client's own work is not. One request at a time gives no batching to any
backend: the figure is the cost of one request, the event loop's included.
With ``--concurrency N`` the requests go out in rounds of N, one on each of N
connections at once: the batching a backend gets under load, which shows the
costs that grow with the requests in flight (one wake-up serving many
connections, more live objects for the garbage collector).

    python benchmarks/instructions.py                       # every backend, every scenario
    python benchmarks/instructions.py -b trio-native -b floor-trio-lazy -s hello-ka
    python benchmarks/instructions.py -b trio-native -b floor-trio-lazy -s hello-ka -c 16
    python benchmarks/instructions.py -b trio-native -s hello-ka --keep DIR  # profiles kept
    python benchmarks/instructions.py -b trio-native -b fcgisgi-asgi -s hello-ka --cache-sim

Needs valgrind (Debian package ``valgrind``). A backend takes 10 to 60 s.
"""

from __future__ import annotations

import argparse
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BACKENDS_DIR = HERE / "backends"
sys.path[:0] = [str(BACKENDS_DIR), str(HERE), str(REPO)]

import compiled_build  # noqa: E402
from common import HELLO, ONE_MIB, POST_SIZE  # noqa: E402
from fcgi_load import RecordReader, body_of, encode_request  # noqa: E402

#: key -> (label, script in backends/)
BACKENDS: dict[str, tuple[str, str]] = {
    "trio-native": ("trio-fastcgi, native handler", "trio_native.py"),
    "trio-asgi": ("trio-fastcgi ASGI adapter", "trio_asgi.py"),
    "trio-wsgi": ("trio-fastcgi WSGI adapter", "trio_wsgi.py"),
    "fcgisgi-asgi": ("fcgisgi (asyncio, ASGI)", "fcgisgi_asgi.py"),
    "fcgisgi-wsgi": ("fcgisgi WSGI adapter", "fcgisgi_wsgi.py"),
    "floor-trio-socket": ("floor (a): trio, task per connection", "floor_trio_socket.py"),
    "floor-asyncio": ("floor (b): asyncio Protocol", "floor_asyncio.py"),
    "floor-trio-shape": ("floor (c): trio, design card shape", "floor_trio_shape.py"),
    "floor-trio-lazy": ("floor (d): design card shape, lazy writer", "floor_trio_lazy.py"),
}
#: The trio-fastcgi rows again, on the compiled build (compiled_build.py).
MYPYC = "-mypyc"
BACKENDS.update(
    {
        key + MYPYC: (f"{label}, compiled (mypyc)", script)
        for key, (label, script) in list(BACKENDS.items())
        if key.startswith("trio-")
    }
)
#: Backends that serve /post and /1m (every one here does).
FULL_ROUTES = {
    *(k for k in BACKENDS if k.startswith("trio-")),
    "fcgisgi-asgi",
    "fcgisgi-wsgi",
    *(k for k in BACKENDS if k.startswith("floor")),
}
POST_BODY = bytes(range(256)) * (POST_SIZE // 256)


@dataclass(frozen=True)
class Scenario:
    path: str
    keep_conn: bool
    body: bytes
    expected: bytes
    requests: int


SCENARIOS: dict[str, Scenario] = {
    "hello-ka": Scenario("/hello", True, b"", HELLO, 500),
    "hello-new": Scenario("/hello", False, b"", HELLO, 300),
    "1m-ka": Scenario("/1m", True, b"", ONE_MIB, 40),
    "post-ka": Scenario("/post", True, POST_BODY, str(POST_SIZE).encode(), 60),
}


def drive(port: int, scenario: Scenario, count: int) -> None:
    """Send *count* requests one at a time and check every answer's body."""
    sock: socket.socket | None = None
    request = encode_request(
        1,
        scenario.path,
        keep_conn=scenario.keep_conn,
        method="POST" if scenario.body else "GET",
        body=scenario.body,
    )
    try:
        for _ in range(count):
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(request)
            reader = RecordReader()
            while not reader.feed(_receive(sock)):
                pass
            body = body_of(reader.take_stdout(1))
            if body != scenario.expected:
                raise RuntimeError(f"{scenario.path}: wrong answer ({len(body)} bytes)")
            if not scenario.keep_conn:
                while _receive(sock, eof_ok=True):
                    pass
                sock.close()
                sock = None
    finally:
        if sock is not None:
            sock.close()


def drive_concurrently(port: int, scenario: Scenario, count: int, concurrency: int) -> None:
    """Send *count* requests in rounds of *concurrency*: one request on each of
    *concurrency* connections at once, then every answer before the next round.

    What the backend sees under load (many connections ready in one wake-up of
    its event loop), which one request at a time never shows it.
    """
    request = encode_request(
        1,
        scenario.path,
        keep_conn=scenario.keep_conn,
        method="POST" if scenario.body else "GET",
        body=scenario.body,
    )
    socks: list[socket.socket | None] = [None] * concurrency
    try:
        done = 0
        while done < count:
            batch = min(concurrency, count - done)
            readers = {}
            with selectors.DefaultSelector() as selector:
                for slot in range(batch):
                    sock = socks[slot]
                    if sock is None:
                        sock = socks[slot] = socket.create_connection(("127.0.0.1", port))
                    sock.sendall(request)
                    readers[slot] = RecordReader()
                    selector.register(sock, selectors.EVENT_READ, slot)
                while readers:
                    for key, _ in selector.select():
                        slot = key.data
                        sock = socks[slot]
                        assert sock is not None
                        if not readers[slot].feed(_receive(sock)):
                            continue
                        body = body_of(readers.pop(slot).take_stdout(1))
                        if body != scenario.expected:
                            raise RuntimeError(f"{scenario.path}: wrong answer ({len(body)} bytes)")
                        selector.unregister(sock)
                        if not scenario.keep_conn:
                            while _receive(sock, eof_ok=True):
                                pass
                            sock.close()
                            socks[slot] = None
            done += batch
    finally:
        for sock in socks:
            if sock is not None:
                sock.close()


def _receive(sock: socket.socket, *, eof_ok: bool = False) -> bytes:
    data = sock.recv(256 * 1024)
    if not data and not eof_ok:
        raise RuntimeError("the backend closed the connection")
    return data


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the backend exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the backend did not listen on {port} within {timeout} s")


def callgrind_control(command: str, pid: int) -> None:
    subprocess.run(
        ["callgrind_control", command, str(pid)],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=120,
    )


#: The simulated cache's events that --cache-sim reports.
CACHE_EVENTS: dict[str, str] = {
    "I1mr": "first-level instruction cache misses",
    "D1mr": "first-level data cache read misses",
    "D1mw": "first-level data cache write misses",
}


def read_totals(out_dir: Path, pid: int) -> dict[str, int]:
    """Every event's total in the counters' last dump (the file ``cg.PID.1``):
    ``Ir`` (instructions), and with ``--cache-sim=yes`` the simulated cache's
    ``I1mr``, ``D1mr``, ``D1mw`` (first-level misses) and the rest."""
    text = (out_dir / f"cg.{pid}.1").read_text()
    events = re.search(r"^events:\s*(.+)$", text, re.MULTILINE)
    match = re.search(r"^summary:\s*(.+)$", text, re.MULTILINE) or re.search(
        r"^totals:\s*(.+)$", text, re.MULTILINE
    )
    if events is None or match is None:
        raise RuntimeError("no totals in callgrind's dump")
    return dict(zip(events.group(1).split(), map(int, match.group(1).split()), strict=False))


def read_total(out_dir: Path, pid: int) -> int:
    """The instruction total of the counters' last dump (the file ``cg.PID.1``)."""
    return read_totals(out_dir, pid)["Ir"]


def measure(
    key: str,
    scenario: Scenario,
    requests: int,
    log: Callable[[str], None],
    concurrency: int = 1,
    keep_as: Path | None = None,
    cache_sim: bool = False,
) -> dict[str, float]:
    """Callgrind's events per request (``Ir``: instructions; with
    *cache_sim*, the simulated cache's misses too) of backend *key* in
    *scenario*, with *concurrency* connections served at once. With
    *keep_as*, the profile of the counted requests is copied to that file."""
    _label, script = BACKENDS[key]
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="instructions-") as tmp:
        out_dir = Path(tmp)
        env = dict(os.environ)
        package = compiled_build.compiled_tree() if key.endswith(MYPYC) else REPO
        env["PYTHONPATH"] = os.pathsep.join(
            [str(BACKENDS_DIR), str(package), *filter(None, [env.get("PYTHONPATH")])]
        )
        proc = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                f"--cache-sim={'yes' if cache_sim else 'no'}",
                f"--callgrind-out-file={out_dir}/cg.%p",
                # sys.executable is the interpreter itself (a shim such as
                # pyenv's has exec'd it already), and its path, not the
                # symlink's target, keeps a virtual environment's packages.
                sys.executable,
                str(BACKENDS_DIR / script),
                "--port",
                str(port),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(out_dir / "valgrind.log").open("wb"),
        )
        try:
            wait_for_port(port, proc, timeout=180)

            def run(count: int) -> None:
                if concurrency == 1:
                    drive(port, scenario, count)
                else:
                    drive_concurrently(port, scenario, count, concurrency)

            run(max(10, requests // 5))  # warm-up: imports, caches
            callgrind_control("--zero", proc.pid)
            run(requests)
            callgrind_control("--dump", proc.pid)
            per_request = {
                event: total / requests for event, total in read_totals(out_dir, proc.pid).items()
            }
            if keep_as is not None:
                shutil.copyfile(out_dir / f"cg.{proc.pid}.1", keep_as)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    misses = "".join(
        f"  {event} {per_request[event]:,.0f}" for event in CACHE_EVENTS if event in per_request
    )
    log(
        f"  {key:18} {scenario.path:7} {per_request['Ir'] / 1000:9.1f} k instructions/request"
        + misses
    )
    return per_request


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("-b", "--backend", action="append", choices=sorted(BACKENDS))
    parser.add_argument("-s", "--scenario", action="append", choices=sorted(SCENARIOS))
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every scenario's request count"
    )
    parser.add_argument(
        "-c",
        "--concurrency",
        type=int,
        default=1,
        help="connections served at once, one request on each (default 1: one request at a time)",
    )
    parser.add_argument(
        "--cache-sim",
        action="store_true",
        help="simulate the caches too: first-level misses per request (slower)",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="copy each callgrind profile into DIR (read with callgrind_annotate --inclusive=yes)",
    )
    args = parser.parse_args()
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("needs valgrind (apt-get install valgrind)")
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    backends = args.backend or list(BACKENDS)
    scenarios = args.scenario or list(SCENARIOS)
    results: dict[tuple[str, str], dict[str, float]] = {}
    for name in scenarios:
        scenario = SCENARIOS[name]
        print(f"{name}:", flush=True)
        for key in backends:
            if name != "hello-ka" and name != "hello-new" and key not in FULL_ROUTES:
                continue
            count = max(5, round(scenario.requests * args.scale))
            results[key, name] = measure(
                key,
                scenario,
                count,
                lambda line: print(line, flush=True),
                args.concurrency,
                None if args.keep is None else args.keep / f"{key}-{name}.callgrind",
                args.cache_sim,
            )
    print()
    print_table(results, backends, scenarios, "Ir", "instructions per request (k)", 1000)
    if args.cache_sim:
        for event, title in CACHE_EVENTS.items():
            print()
            print_table(results, backends, scenarios, event, f"{title} per request", 1)


def print_table(
    results: dict[tuple[str, str], dict[str, float]],
    backends: list[str],
    scenarios: list[str],
    event: str,
    title: str,
    unit: float,
) -> None:
    """One event per request for every backend and scenario, then its ratio
    to each reference backend present."""
    print(f"{title}, and ratio to each reference present")
    refs = [ref for ref in ("fcgisgi-asgi", "floor-trio-lazy") if ref in backends]
    header = f"{'backend':18}" + "".join(f"{name:>12}" for name in scenarios)
    print(header)
    for key in backends:
        cells = []
        for name in scenarios:
            value = results.get((key, name), {}).get(event)
            cells.append(f"{value / unit:12.1f}" if value is not None else f"{'-':>12}")
        print(f"{key:18}" + "".join(cells))
    for ref in refs:
        print(f"\nratio to {ref} (below 1.0: fewer than {ref})")
        for key in backends:
            cells = []
            for name in scenarios:
                value = results.get((key, name), {}).get(event)
                base = results.get((ref, name), {}).get(event)
                cells.append(f"{value / base:12.2f}" if value and base else f"{'-':>12}")
            print(f"{key:18}" + "".join(cells))


if __name__ == "__main__":
    main()
