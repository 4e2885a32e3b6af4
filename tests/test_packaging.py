"""The README's install, done the way a new user does it.

A copy of the checkout gets the README's first command, piece by piece: a
virtual environment without ensurepip, the checkout installed into it
(editable) by the outer pip, then the development server on the hello example,
which must answer over HTTP. The user's program next to it must then
type-check against that install: setuptools' editable import hook is invisible
to mypy and pyright, so this fails unless the install puts a plain path on
``sys.path`` (``package-dir`` in pyproject.toml).

Needs the network (or a pip index) for the build backend and trio's wheels.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.integration.procs import ManagedProcess, free_port, wait_for_tcp
from tests.test_docs import REPO, readme_commands

pytestmark = pytest.mark.integration

# What a user's program does with the package: serve a handler, read a Request.
USER_PROGRAM = """\
import functools

import trio

import trio_fastcgi


async def handler(request: trio_fastcgi.Request) -> None:
    body = await request.stdin.receive_all(max_size=1 << 20)
    await request.respond(f"{request.params.get('REMOTE_ADDR')} sent {len(body)} bytes\\n")


def main() -> None:
    trio.run(functools.partial(trio_fastcgi.serve_tcp, handler, 9000, host="127.0.0.1"))
"""

# The same program and a type error that only the package's annotations reveal.
WRONG_LINES = """

async def wrong(request: trio_fastcgi.Request) -> None:
    await request.respond(len(request.params))
"""
WRONG_PROGRAM = USER_PROGRAM + WRONG_LINES

# Not copied: what a clone does not have (.gitignore) and what the install makes.
_NOT_IN_A_CLONE = shutil.ignore_patterns(
    ".git", ".venv", "venv", ".nox", "__pycache__", "*.egg-info", "build", "dist", "_build",
    ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis", "results",
)  # fmt: skip


def _clean_env() -> dict[str, str]:
    """The environment without this suite's own import path."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the checkout after the README's first command, and a user's
    programs beside it; the dev server it starts answered and was stopped."""
    root = tmp_path_factory.mktemp("packaging")
    checkout = root / "trio-fastcgi"
    shutil.copytree(REPO, checkout, ignore=_NOT_IN_A_CLONE)
    example, _ = readme_commands()
    *setup, serve = example.split(" && ")
    env = _clean_env()
    for command in setup:
        argv = shlex.split(command)  # python3 from PATH, as for the user
        result = subprocess.run(
            argv, cwd=checkout, env=env, capture_output=True, timeout=600, check=False
        )
        assert result.returncode == 0, (command, result.stdout.decode(), result.stderr.decode())
    port = free_port()
    argv = [*shlex.split(serve), "--port", str(port)]
    with ManagedProcess(argv, cwd=checkout, env=env, log_path=root / "dev.log") as server:
        try:
            wait_for_tcp(port, process=server.process, timeout=60)
        except (RuntimeError, TimeoutError) as exc:
            raise AssertionError(f"{serve} did not start: {exc}\n{server.log()}") from exc
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/x", timeout=30) as response:
            assert response.read() == b"Hello from trio-fastcgi! You asked for /x\n"
    user = root / "user"
    user.mkdir()
    (user / "myapp.py").write_text(USER_PROGRAM)
    (user / "wrong.py").write_text(WRONG_PROGRAM)
    return user


def _venv_python(user_dir: Path) -> str:
    return str(user_dir.parent / "trio-fastcgi" / ".venv" / "bin" / "python")


def _mypy(user_dir: Path, program: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "mypy", "--strict", "--no-incremental"]
    argv += ["--cache-dir", str(user_dir / ".mypy_cache"), "--python-executable"]
    argv += [_venv_python(user_dir), program]
    return subprocess.run(
        argv, cwd=user_dir, env=_clean_env(), capture_output=True, text=True, timeout=300
    )


def test_mypy_strict_sees_the_installed_package(user_dir: Path) -> None:
    result = _mypy(user_dir, "myapp.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found in 1 source file" in result.stdout


def test_mypy_reads_the_package_annotations(user_dir: Path) -> None:
    # Not Any: an int passed as the body of respond() is an error.
    result = _mypy(user_dir, "wrong.py")
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'Argument 1 to "respond" of "Request" has incompatible type "int"' in result.stdout


def _pyright(user_dir: Path, program: str) -> subprocess.CompletedProcess[str]:
    pyright = shutil.which("pyright")
    if pyright is None:
        pytest.skip("pyright is not installed (it is not in the test extra)")
    argv = [pyright, "--pythonpath", _venv_python(user_dir), program]
    return subprocess.run(
        argv, cwd=user_dir, env=_clean_env(), capture_output=True, text=True, timeout=300
    )


def test_pyright_sees_the_installed_package(user_dir: Path) -> None:
    result = _pyright(user_dir, "myapp.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 errors" in result.stdout


def test_pyright_reads_the_package_annotations(user_dir: Path) -> None:
    result = _pyright(user_dir, "wrong.py")
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'cannot be assigned to parameter "body"' in result.stdout
