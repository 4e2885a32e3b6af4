"""Real processes for integration tests: find a binary, start it in the
foreground with its own config in a temp dir, wait until it listens, stop it by
its PID.

Outside CI a missing binary skips the test; under CI (``CI=true``) it fails it,
because CI installs every server the suite needs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

# Debian keeps daemons in sbin, which is not on a non-root PATH.
_EXTRA_PATH = ["/usr/sbin", "/sbin", "/usr/local/sbin"]


def require_binary(name: str, *alternatives: str) -> str:
    """The path of the first of *name*/*alternatives* found, else skip (fail in CI)."""
    search = os.pathsep.join([os.environ.get("PATH", ""), *_EXTRA_PATH])
    for candidate in (name, *alternatives):
        found = shutil.which(candidate, path=search)
        if found:
            return found
    message = f"{name} is not installed"
    if IN_CI:
        pytest.fail(f"{message} (CI must install it)")
    pytest.skip(message)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_tcp(
    port: int,
    host: str = "127.0.0.1",
    timeout: float = 15.0,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


def wait_for_unix(path: str | Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.connect(str(path))
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {path} after {timeout} s")


class ManagedProcess:
    """A child process started in the foreground, stopped by its PID."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        cwd: str | Path | None = None,
        env: dict[str, str] | None = None,
        log_path: str | Path | None = None,
        pass_fds: Sequence[int] = (),
        stdin: int | None = subprocess.DEVNULL,
    ) -> None:
        self.argv = list(argv)
        self.log_path = Path(log_path) if log_path else None
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            self.argv,
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=stdin,
            pass_fds=pass_fds,
            start_new_session=True,
        )
        if log is not subprocess.DEVNULL:
            log.close()  # type: ignore[union-attr]

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")
        return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM by PID, then SIGKILL if it does not exit within *timeout*."""
        if self.process.poll() is not None:
            return
        os.kill(self.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.process.wait(timeout)

    def __enter__(self) -> ManagedProcess:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def process_exists(pid: int) -> bool:
    """True if a process with *pid* exists (a zombie counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def wait_until_gone(pid: int, what: str, seconds: float = 10.0) -> None:
    """Wait until process *pid* has exited, or fail the test naming *what*.
    Polled, and bounded: a process's exit has no event a test can wait on."""
    for _ in range(round(seconds / 0.05)):
        if not process_exists(pid):
            return
        await trio.sleep(0.05)
    pytest.fail(f"{what} (pid {pid}) is still running after {seconds:g} s")
