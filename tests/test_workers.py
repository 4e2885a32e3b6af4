"""The pre-fork supervisor and the single-process server, run as the real
``trio-fastcgi`` command: worker replacement, SIGHUP reload, --max-requests
recycling, graceful stop under load, boot failure."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
import trio

from tests.integration.procs import ManagedProcess, free_port, wait_for_tcp, wait_for_unix
from trio_fastcgi.client import ClientError, open_tcp_client, open_unix_client

pytestmark = pytest.mark.integration

APP = """
import os
import trio

async def handler(request):
    query = request.params.get("QUERY_STRING", "")
    if query.startswith("sleep="):
        # The head and a first line at once, the rest after the sleep: a
        # client can tell a request in flight from one not started.
        await request.stdout.send_all(b"Status: 200 OK\\r\\n\\r\\nstart\\n")
        await trio.sleep(float(query[len("sleep="):]))
        await request.stdout.send_all(b"end\\n")
        return
    await request.respond(f"{os.getpid()}\\n")
"""


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "pidapp.py").write_text(APP)
    (tmp_path / "brokenapp.py").write_text("import no_such_module_here\n")
    return tmp_path


@dataclass
class Server:
    process: ManagedProcess
    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, count: int = 1, timeout: float = 30.0) -> list[str]:
        """Block until *pattern* matched *count* times in the log (for threads)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.findall(pattern, self.log())
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not seen {count} times in:\n{self.log()}")

    async def log_matches(self, pattern: str, count: int = 1) -> list[str]:
        return await trio.to_thread.run_sync(partial(self.wait_for_log, pattern, count))


@asynccontextmanager
async def run_server(app_dir: Path, *args: str) -> AsyncIterator[Server]:
    port = free_port()
    log_path = app_dir / "server.log"
    argv = [
        sys.executable, "-m", "trio_fastcgi", "pidapp:handler", "--app-dir", str(app_dir),
        f"--bind=127.0.0.1:{port}", *args,
    ]  # fmt: skip
    process = ManagedProcess(argv, log_path=log_path)
    try:
        await trio.to_thread.run_sync(partial(wait_for_tcp, port, process=process.process))
        yield Server(process, port, log_path)
    finally:
        await trio.to_thread.run_sync(process.stop)


async def get_pid(port: int) -> int:
    async with open_tcp_client("127.0.0.1", port) as client:
        response = await client.request({"REQUEST_URI": "/"})
    assert response.app_status == 0
    return int(response.parse_cgi().body)


def serving_pids(server: Server, generation: int) -> list[int]:
    pattern = rf"worker (\d+) \(generation {generation}\) is serving"
    return [int(pid) for pid in re.findall(pattern, server.log())]


async def test_workers_replace_a_killed_worker(app_dir: Path) -> None:
    async with run_server(app_dir, "--workers=2") as server:
        await server.log_matches(r"generation 1\) is serving", 2)
        first, _ = serving_pids(server, 1)
        os.kill(first, signal.SIGKILL)
        await server.log_matches(rf"worker {first} was killed by SIGKILL; starting a new one")
        await server.log_matches(r"generation 1\) is serving", 3)
        pids = {await get_pid(server.port) for _ in range(20)}
        assert first not in pids
        assert pids <= set(serving_pids(server, 1))
        assert server.process.process.poll() is None


async def test_workers_sighup_reload_keeps_serving(app_dir: Path) -> None:
    failures: list[BaseException] = []
    served = 0

    async def keep_asking(port: int, stop: trio.Event) -> None:
        nonlocal served
        while not stop.is_set():
            try:
                await get_pid(port)
                served += 1
            except Exception as exc:
                failures.append(exc)

    async with run_server(app_dir, "--workers=2") as server:
        await server.log_matches(r"generation 1\) is serving", 2)
        old = set(serving_pids(server, 1))
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_asking, server.port, stop)
            os.kill(server.process.pid, signal.SIGHUP)
            await server.log_matches(r"generation 2\) is serving", 2)
            for pid in old:
                await server.log_matches(rf"worker {pid} exited with status 0")
            stop.set()
        new = set(serving_pids(server, 2))
        assert not new & old
        assert {await get_pid(server.port) for _ in range(10)} <= new
    assert failures == []
    assert served > 0


async def test_workers_max_requests_recycles(app_dir: Path) -> None:
    async with run_server(app_dir, "--workers=1", "--max-requests=4") as server:
        pids = [await get_pid(server.port) for _ in range(10)]
        log = server.log()
    # Every request answered, by successive workers, each recycled once it
    # served 4. A connection the kernel accepted while the worker began to
    # stop is still served by it (it is not reset), so one may serve a 5th:
    # 4 + 4 + 2 most often, 5 + 4 + 1 at times.
    counts = [pids.count(pid) for pid in dict.fromkeys(pids)]
    assert sum(counts) == 10
    assert all(4 <= count <= 5 for count in counts[:-1])
    assert 1 <= counts[-1] <= 5
    recycled = sum(count >= 4 for count in counts)
    assert log.count("recycling this worker") == recycled
    # The last worker, if it served 4, may be retiring as the server stops.
    retired = log.count("retired (exited with status 0); starting a new one")
    assert retired == len(counts) - 1 or (retired == len(counts) and counts[-1] >= 4)


@dataclass
class Outcomes:
    complete: int = 0
    refused: int = 0
    truncated: list[str] = field(default_factory=list)


async def slow_request(
    port: int, outcomes: Outcomes, in_flight: trio.Semaphore | None, seconds: float = 1
) -> None:
    """One request; a complete answer, a refusal before any byte, or (the bug
    this test looks for) a truncated answer."""
    received = b""
    try:
        async with (
            open_tcp_client("127.0.0.1", port) as client,
            client.open_request({"QUERY_STRING": f"sleep={seconds}"}) as active,
        ):
            async for chunk in active.stdout:
                if not received and in_flight is not None:
                    in_flight.release()
                received += chunk
            end = await active.wait_ended()
    except (OSError, trio.BrokenResourceError) as exc:
        if received:
            outcomes.truncated.append(f"{received!r} then {exc!r}")
        else:
            outcomes.refused += 1
        return
    if end.app_status == 0 and received == b"Status: 200 OK\r\n\r\nstart\nend\n":
        outcomes.complete += 1
    else:
        outcomes.truncated.append(f"{received!r} status {end.app_status}")


@pytest.mark.parametrize("workers", ["--workers=2", "--workers=0"])
async def test_graceful_stop_under_load_loses_no_request(app_dir: Path, workers: str) -> None:
    in_flight_count = 30
    in_flight = trio.Semaphore(0)
    early = Outcomes()
    late = Outcomes()
    async with run_server(app_dir, workers, "--graceful-timeout=20") as server:
        async with trio.open_nursery() as nursery:
            for _ in range(in_flight_count):
                nursery.start_soon(slow_request, server.port, early, in_flight)
            for _ in range(in_flight_count):
                with trio.fail_after(30):
                    await in_flight.acquire()
            # Every early request is being handled: stop now, and keep sending
            # new requests while the server stops.
            os.kill(server.process.pid, signal.SIGTERM)
            started = trio.current_time()
            while server.process.process.poll() is None:
                nursery.start_soon(slow_request, server.port, late, None)
                await trio.sleep(0.02)  # pacing the late requests
                assert trio.current_time() - started < 30, server.log()
        assert server.process.process.returncode == 0, server.log()
    assert early.truncated == []
    assert late.truncated == []
    assert early.complete == in_flight_count
    assert late.complete + late.refused > 0


async def test_workers_boot_failure_stops_the_supervisor(app_dir: Path) -> None:
    port = free_port()
    log_path = app_dir / "boot.log"
    argv = [
        sys.executable, "-m", "trio_fastcgi", "brokenapp:app", "--app-dir", str(app_dir),
        f"--bind=127.0.0.1:{port}", "--workers=2",
    ]  # fmt: skip
    with ManagedProcess(argv, log_path=log_path) as process:
        status = await trio.to_thread.run_sync(partial(process.process.wait, 30))
    log = log_path.read_text()
    assert status == 3, log
    assert "failed to boot" in log
    assert "No module named 'no_such_module_here'" in log


async def test_workers_stop_when_the_supervisor_is_killed(app_dir: Path) -> None:
    async with run_server(app_dir, "--workers=2") as server:
        await server.log_matches(r"generation 1\) is serving", 2)
        os.kill(server.process.pid, signal.SIGKILL)
        await server.log_matches(r"the supervisor is gone: graceful stop", 2)
        await server.log_matches(r"\] INFO trio_fastcgi.workers: stopped", 2)


async def test_single_process_ignores_sighup(app_dir: Path) -> None:
    async with run_server(app_dir, "--workers=0") as server:
        before = await get_pid(server.port)
        os.kill(server.process.pid, signal.SIGHUP)
        await server.log_matches(r"SIGHUP ignored")
        assert await get_pid(server.port) == before == server.process.pid


async def test_single_process_second_signal_stops_at_once(app_dir: Path) -> None:
    in_flight = trio.Semaphore(0)
    outcomes = Outcomes()
    async with run_server(app_dir, "--workers=0", "--graceful-timeout=60") as server:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(slow_request, server.port, outcomes, in_flight, seconds=60))
            with trio.fail_after(30):
                await in_flight.acquire()
            os.kill(server.process.pid, signal.SIGTERM)
            await server.log_matches(r"SIGTERM: graceful stop")
            os.kill(server.process.pid, signal.SIGINT)
            status = await trio.to_thread.run_sync(partial(server.process.process.wait, 30))
        assert status == 0
        assert "SIGINT again: stopping now" in server.log()
    # The 60 s request was cut off: that is what the second signal is for.
    assert len(outcomes.truncated) == 1


async def test_supervisor_second_signal_kills_the_workers(app_dir: Path) -> None:
    in_flight = trio.Semaphore(0)
    outcomes = Outcomes()
    async with run_server(app_dir, "--workers=1", "--graceful-timeout=60") as server:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(slow_request, server.port, outcomes, in_flight, seconds=60))
            with trio.fail_after(30):
                await in_flight.acquire()
            os.kill(server.process.pid, signal.SIGTERM)
            await server.log_matches(r"graceful stop of 1 worker")
            os.kill(server.process.pid, signal.SIGTERM)
            status = await trio.to_thread.run_sync(partial(server.process.process.wait, 30))
        assert status == 0
        assert re.search(r"second stop signal: killing the workers", server.log())
        assert re.search(r"worker \d+ was killed by SIGKILL", server.log())
    assert len(outcomes.truncated) == 1


STUCK_APP = """
import logging
import threading

from flask import Flask

app = Flask(__name__)
never = threading.Event()


@app.route("/stuck/<name>")
def stuck(name):
    logging.getLogger("stuckapp").warning("in the view %s", name)
    never.wait()  # nobody sets it: the thread never leaves the application
    return "unreachable"
"""


async def stuck_request(path: Path, name: str) -> None:
    """A request the server never answers; it ends when the server exits."""
    uri = f"/stuck/{name}"
    try:
        async with open_unix_client(path) as client:
            response = await client.request(
                {"REQUEST_URI": uri, "SCRIPT_NAME": uri, "REQUEST_METHOD": "GET"}
            )
    except (OSError, trio.BrokenResourceError, ClientError):
        return
    raise AssertionError(f"{uri} was answered: {response!r}")


@pytest.mark.parametrize("workers", ["--workers=0", "--workers=1", "--workers=2"])
async def test_stuck_wsgi_request_is_abandoned_after_the_graceful_timeout(
    tmp_path: Path, workers: str
) -> None:
    (tmp_path / "stuckapp.py").write_text(STUCK_APP)
    path = tmp_path / "app.sock"
    log_path = tmp_path / "server.log"
    argv = [
        sys.executable, "-m", "trio_fastcgi", "stuckapp:app", "--app-dir", str(tmp_path),
        f"--bind=unix:{path}", workers, "--graceful-timeout=1",
    ]  # fmt: skip
    process = ManagedProcess(argv, log_path=log_path)
    server = Server(process, 0, log_path)
    try:
        await trio.to_thread.run_sync(wait_for_unix, path)
        async with trio.open_nursery() as nursery:
            for name in ("a", "b"):
                nursery.start_soon(stuck_request, path, name)
            await server.log_matches(r"in the view [ab]", 2)
            os.kill(process.pid, signal.SIGTERM)
            status = await trio.to_thread.run_sync(partial(process.process.wait, 20))
    finally:
        await trio.to_thread.run_sync(process.stop)
    log = server.log()
    assert status == 0, log
    for name in ("a", "b"):
        assert re.search(rf"WARNING .*abandoning .*request \d+ GET /stuck/{name}", log), log
    assert "SIGKILL" not in log
    assert not path.exists()  # removed as on a normal exit
