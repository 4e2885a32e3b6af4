"""Per-request cost of the ASGI adapter on each loop, and before the asyncio bridge.

The same ASGI hello app (``benchmarks/backends/common.py``) is served by
``serve_tcp`` with ``ASGIHandler(app, loop="trio")`` and with
``ASGIHandler(app, loop="asyncio")`` (the app on an asyncio loop in a thread,
``receive``/``send`` handed between the loops), and, with ``--before DIR``,
by the code in each DIR as ``ASGIHandler(app)`` (a checkout from before the
bridge, whose ``ASGIHandler`` has no ``loop`` and runs the app on Trio; or any
other commit, where the default loop is Trio for this app). Each backend is its own process on a
free loopback port; this process sends ``GET /hello`` on one kept-alive
connection, one request at a time, and counts only the backend's cost:

- ``--mode cpu`` (default): CPU time of all the backend's threads
  (``/proc/PID/task/*/schedstat``, nanoseconds), per request, over
  ``--rounds`` rounds of ``--requests`` requests that go round the backends in
  turn (so load on the machine falls on all of them alike); medians;
- ``--mode callgrind``: instructions per request under ``valgrind
  --tool=callgrind`` (counters zeroed after a warm-up, dumped after the
  requests), which load cannot move.

    git worktree add --detach /tmp/pre-bridge a5c9df6^1   # main before the bridge
    git worktree add --detach /tmp/bridge-merge a5c9df6   # the bridge's merge
    python benchmarks/asgi_loops.py --before /tmp/pre-bridge --before /tmp/bridge-merge
    python benchmarks/asgi_loops.py --before /tmp/pre-bridge --mode callgrind
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BACKENDS_DIR = HERE / "backends"


def serve(variant: str, port: int) -> None:
    """The backend: serve the hello app on *port* with the given loop."""
    import trio
    from common import asgi_app

    import trio_fastcgi
    from trio_fastcgi.asgi import ASGIHandler

    # Before the bridge ASGIHandler had no loop argument: it ran the app on Trio.
    loop = {} if variant == "before" else {"loop": variant}
    handler = ASGIHandler(asgi_app, **loop)  # type: ignore[arg-type]

    async def main() -> None:
        async with handler.lifespan():
            await trio_fastcgi.serve_tcp(handler, port, host="127.0.0.1")

    trio.run(main)


@dataclass
class Backend:
    label: str
    variant: str
    code: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    out_dir: Path | None = None


def start(backend: Backend, callgrind: bool, tmp: Path) -> None:
    from instructions import free_port, wait_for_port

    backend.port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(backend.code), str(BACKENDS_DIR)])
    argv = [
        # The interpreter itself (a shim has exec'd it already); its path,
        # not the symlink's target, keeps a virtual environment's packages.
        sys.executable,
        str(Path(__file__).resolve()),
        "--serve",
        backend.variant,
        "--port",
        str(backend.port),
    ]
    stderr = subprocess.DEVNULL
    if callgrind:
        backend.out_dir = Path(tempfile.mkdtemp(prefix=f"{backend.variant}-", dir=tmp))
        argv = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={backend.out_dir}/cg.%p",
            *argv,
        ]
        stderr = (backend.out_dir / "valgrind.log").open("wb")  # type: ignore[assignment]
    backend.process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    wait_for_port(backend.port, backend.process, timeout=300 if callgrind else 30)


def stop(backend: Backend) -> None:
    if backend.process is None:
        return
    backend.process.send_signal(signal.SIGTERM)
    try:
        backend.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        backend.process.kill()
        backend.process.wait()


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of *pid* so far, in nanoseconds."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread ended
            total += int((task / "schedstat").read_text().split()[0])
    return total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--serve", choices=("trio", "asyncio", "before"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--before",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="a checkout to compare, served as ASGIHandler(app) (repeatable)",
    )
    parser.add_argument("--mode", choices=("cpu", "callgrind"), default="cpu")
    parser.add_argument("--rounds", type=int, default=7, help="cpu mode: rounds (default 7)")
    parser.add_argument("--requests", type=int, default=0, help="requests per round")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return

    sys.path[:0] = [str(BACKENDS_DIR), str(HERE)]
    from instructions import SCENARIOS, callgrind_control, drive, read_total

    scenario = SCENARIOS["hello-ka"]
    callgrind = args.mode == "callgrind"
    requests = args.requests or (300 if callgrind else 3000)
    backends = []
    for code in args.before:
        commit = subprocess.run(
            ["git", "-C", str(code), "log", "-1", "--format=%h"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        backends.append(Backend(f"{commit or code.name}, default loop", "before", code.resolve()))
    backends += [
        Backend('loop="trio"', "trio", REPO),
        Backend('loop="asyncio"', "asyncio", REPO),
    ]
    unit = "k instructions/request" if callgrind else "CPU us/request (median)"
    results: dict[str, list[float]] = {backend.label: [] for backend in backends}
    with tempfile.TemporaryDirectory(prefix="asgi-loops-") as tmp:
        try:
            for backend in backends:
                start(backend, callgrind, Path(tmp))
                drive(backend.port, scenario, max(20, requests // 5))  # warm-up
            for _ in range(1 if callgrind else args.rounds):
                for backend in backends:
                    assert backend.process is not None
                    pid = backend.process.pid
                    if callgrind:
                        assert backend.out_dir is not None
                        callgrind_control("--zero", pid)
                        drive(backend.port, scenario, requests)
                        callgrind_control("--dump", pid)
                        value = read_total(backend.out_dir, pid) / requests / 1000
                    else:
                        before = cpu_ns(pid)
                        drive(backend.port, scenario, requests)
                        value = (cpu_ns(pid) - before) / requests / 1000
                    results[backend.label].append(value)
        finally:
            for backend in backends:
                stop(backend)
    print(f"GET /hello, one kept-alive connection, {requests} requests a round; {unit}")
    base = statistics.median(results[backends[0].label])
    print(f"  (x: ratio to {backends[0].label})")
    for backend in backends:
        values = results[backend.label]
        median = statistics.median(values)
        spread = f"  (min {min(values):.1f}, max {max(values):.1f})" if len(values) > 1 else ""
        print(f"  {backend.label:26} {median:9.1f}  x{median / base:.2f}{spread}")


if __name__ == "__main__":
    main()
